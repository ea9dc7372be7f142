//! Multi-host lab tests and the in-process cluster harness.

pub mod lab;
