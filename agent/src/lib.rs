//! Everything one node runs: its identity on disk (`identity`), the local API
//! on the unix socket (`local`), the session with the leader's dispatcher
//! (`session`) and the lifecycle that joins, leaves, and starts or stops the
//! manager role when the cluster says so (`daemon`), and the local image
//! store (`images`, `registry`), containers (`runtime`, `volumes`) and their
//! networks, through netd (`network`). This crate never writes cluster state
//! except through a manager's API, and never changes the host's network.

pub mod daemon;
pub mod engine;
pub mod events;
pub mod prune;
pub mod identity;
pub mod images;
pub mod local;
pub mod network;
pub mod registry;
pub mod runtime;
pub mod volumes;
pub mod session;
pub mod worker;

pub use daemon::{Daemon, DaemonConfig};
