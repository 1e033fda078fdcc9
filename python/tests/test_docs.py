"""The examples in the docstrings run (the modules' docs and the type stubs')."""

from __future__ import annotations

import ast
import doctest
import importlib.resources

import pytest

import polybus
import polybus.aio


@pytest.mark.parametrize("module", [polybus, polybus.aio], ids=lambda m: m.__name__)
def test_module_examples(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def stub_docstrings() -> list[tuple[str, str]]:
    tree = ast.parse((importlib.resources.files("polybus") / "_polybus.pyi").read_text())
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
            doc = ast.get_docstring(node)
            if doc and ">>>" in doc:
                docs.append((getattr(node, "name", "_polybus"), doc))
    return docs


@pytest.mark.parametrize(
    ("name", "doc"), stub_docstrings(), ids=lambda v: v if "\n" not in v else ""
)
def test_stub_examples(name: str, doc: str) -> None:
    globs = {"connect": polybus.connect, "Event": polybus.Event}
    test = doctest.DocTestParser().get_doctest(doc, globs, name, "_polybus.pyi", 0)
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
