//! netd: the only process that changes a host's network (links, addresses,
//! routes, netfilter), as a level-triggered reconcile loop: the daemon hands
//! it the desired state (`model`), it observes the kernel, `plan` computes
//! the actions with a pure function, and the system layer applies them.
//! Addresses come from `ipam`; netfilter rules are generated whole by
//! `rules`. It touches only objects it named (`model::is_ours`).
//!
//! So far: the pure parts (subnets, IPAM, planner, rules) and the system
//! layer (`sys`: rtnetlink in the host's and containers' namespaces, one
//! `nft -f` per sync). The netd process's API and loop, the daemon's
//! hand-over and the embedded DNS come next (issue 4).

pub mod ipam;
pub mod model;
pub mod net;
pub mod plan;
pub mod rules;
pub mod service;
pub mod sys;
