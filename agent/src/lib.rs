//! Everything one node runs as a member of a swarm: its identity on disk
//! (`identity`), the local API on the unix socket (`local`), the session with
//! the leader's dispatcher (`session`), the worker that runs the tasks it is
//! assigned on the engine (`worker`), the cluster's events while it runs a
//! manager (`cluster_events`), its kernel calls (`sys`), the lifecycle that
//! joins, leaves, and starts or stops the manager role when the cluster says
//! so (`daemon`), and the wiring that starts all of it in order and stops it
//! on one token (`node`). Tests run the worker on `fake_runtime` instead of
//! the engine. Images,
//! containers, volumes and their networks are `shoal-engine`'s. This crate
//! never writes cluster state except through a manager's API, and never
//! changes the host's network.

pub mod attach;
pub mod cluster_events;
pub mod daemon;
pub mod fake_runtime;
pub mod identity;
pub mod local;
pub mod node;
pub mod session;
pub mod sys;
pub mod worker;

pub use daemon::{Daemon, DaemonConfig};
