//! Multi-host lab tests: `lab` drives `deploy/lab` (lab hosts in network namespaces)
//! for the tests in `tests/`. The in-process cluster harness lives with the manager
//! (`manager/tests/cluster_sim.rs`).

pub mod lab;
pub mod overlay;
