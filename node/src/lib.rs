//! Node bindings of polybus (in progress).
