//! Python bindings of polybus (in progress).
