//! Python exceptions, generated from the core's status table.
//!
//! `PolybusError` is the base; every [`ErrorKind`] gets one subclass whose `code` class attribute
//! is the C name of the status (`ClosedError.code == "POLYBUS_ERR_CLOSED"`). Where a builtin
//! exception fits, the subclass also extends it (`PolybusTimeoutError` is a `TimeoutError`).

use polybus::{Error, ErrorKind};
use pyo3::{
    prelude::*,
    sync::PyOnceLock,
    types::{PyDict, PyTuple, PyType},
};

/// The exception classes, created once when the module is imported.
struct Classes {
    base: Py<PyType>,
    kinds: Vec<(ErrorKind, Py<PyType>)>,
}

static CLASSES: PyOnceLock<Classes> = PyOnceLock::new();

/// The Python class name of `kind` and the builtin exception it also extends, if any.
fn class_of(kind: ErrorKind) -> (String, Option<&'static str>) {
    match kind {
        ErrorKind::Timeout => ("PolybusTimeoutError".into(), Some("TimeoutError")),
        ErrorKind::Connection => ("PolybusConnectionError".into(), Some("ConnectionError")),
        _ => {
            let builtin = match kind {
                ErrorKind::InvalidArgument
                | ErrorKind::InvalidConfig
                | ErrorKind::InvalidTopic
                | ErrorKind::InvalidPattern
                | ErrorKind::Payload => Some("ValueError"),
                ErrorKind::Auth => Some("PermissionError"),
                _ => None,
            };
            // "POLYBUS_ERR_INVALID_TOPIC" -> "InvalidTopicError"
            let words = kind.name().trim_start_matches("POLYBUS_ERR_").split('_');
            let mut name: String = words
                .map(|w| {
                    let lower = w.to_ascii_lowercase();
                    let mut chars = lower.chars();
                    chars
                        .next()
                        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                        .unwrap_or_default()
                })
                .collect();
            name.push_str("Error");
            (name, builtin)
        }
    }
}

/// Creates `class name(*bases)` in module `polybus` with a docstring and a `code`.
fn new_class<'py>(
    py: Python<'py>,
    name: &str,
    bases: Vec<Bound<'py, PyAny>>,
    doc: &str,
    code: Option<&str>,
) -> PyResult<Bound<'py, PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__module__", "polybus")?;
    ns.set_item("__doc__", doc)?;
    ns.set_item("code", code)?;
    if code.is_none() {
        // Set on the errors of `publish_batch` only.
        ns.set_item("published", py.None())?;
    }
    let class = py
        .get_type::<PyType>()
        .call1((name, PyTuple::new(py, bases)?, ns))?;
    Ok(class.cast_into()?)
}

/// Creates the exception classes and adds them to `module`.
pub(crate) fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    let builtins = py.import("builtins")?;
    let classes = CLASSES.get_or_try_init(py, || -> PyResult<Classes> {
        let base = new_class(
            py,
            "PolybusError",
            vec![builtins.getattr("Exception")?],
            "The base of every polybus error; `code` is the C name of the status.",
            None,
        )?;
        let mut kinds = Vec::with_capacity(ErrorKind::ALL.len());
        for &kind in ErrorKind::ALL {
            let (name, builtin) = class_of(kind);
            let mut bases = vec![base.clone().into_any()];
            if let Some(b) = builtin {
                bases.push(builtins.getattr(b)?);
            }
            let doc = format!("{} ({}).", capitalise(kind.description()), kind.name());
            let class = new_class(py, &name, bases, &doc, Some(kind.name()))?;
            kinds.push((kind, class.unbind()));
        }
        Ok(Classes {
            base: base.unbind(),
            kinds,
        })
    })?;
    module.add("PolybusError", classes.base.bind(py))?;
    for (kind, class) in &classes.kinds {
        module.add(class_of(*kind).0, class.bind(py))?;
    }
    Ok(())
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

/// A Python exception of the class for `kind`. Its text is the core's (`Display` of
/// [`Error`]): `kind: message`, the same in every language.
pub(crate) fn new_error(py: Python<'_>, kind: ErrorKind, message: impl Into<String>) -> PyErr {
    let message = message.into();
    let message = if message.is_empty() {
        kind.description().to_owned()
    } else {
        format!("{}: {message}", kind.description())
    };
    match CLASSES
        .get(py)
        .and_then(|c| c.kinds.iter().find(|(k, _)| *k == kind))
    {
        Some((_, class)) => PyErr::from_type(class.bind(py).clone(), message),
        None => pyo3::exceptions::PyRuntimeError::new_err(format!("{}: {message}", kind.name())),
    }
}

/// The kind of a polybus exception, from its `code`.
pub(crate) fn kind_of(value: &Bound<'_, PyAny>) -> Option<ErrorKind> {
    let code: String = value.getattr("code").ok()?.extract().ok()?;
    ErrorKind::ALL.iter().copied().find(|k| k.name() == code)
}

/// Converts a core error into the matching Python exception; the error of a batch publish
/// carries `published`, how many events from the first were published.
pub(crate) fn to_py(err: Error) -> PyErr {
    Python::attach(|py| {
        let e = new_error(py, err.kind(), err.message());
        if let Some(n) = err.published() {
            let _ = e.value(py).setattr("published", n);
        }
        e
    })
}
