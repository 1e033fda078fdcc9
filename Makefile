# polybus: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(CURDIR)/target
export PATH := $(CURDIR)/build/tools/bin:$(PATH)

.PHONY: demo test header lib bench fmt

## Runs a publisher and a subscriber in each language (POLYBUS_URL picks the backend;
## the default is the in-process memory://).
demo:
	@bash examples/run.sh

## The whole test suite (installs what it needs, builds once, runs every runner).
test:
	@bash tests/run.sh

## Regenerates include/polybus.h from ffi/src.
header:
	@bash tests/harness/setup.sh
	cbindgen --config ffi/cbindgen.toml --crate polybus-ffi --output include/polybus.h

## The C library (static and shared) in target/release.
lib:
	cargo build --release -p polybus-ffi

## The benchmarks; results go to BENCHMARKS.md.
bench:
	@bash bench/run.sh

fmt:
	cargo fmt --all
