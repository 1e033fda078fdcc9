//! The C ABI of polybus.
