//! Everything one node runs: its identity on disk (`identity`), the local API
//! on the unix socket (`local`), the session with the leader's dispatcher
//! (`session`) and the lifecycle that joins, leaves, and starts or stops the
//! manager role when the cluster says so (`daemon`), and the local image
//! store: loading, unpacking and stacking image layers (`images`).
//! Containers and netd arrive in later modules; this crate never writes
//! cluster state except through a manager's API.

pub mod daemon;
pub mod engine;
pub mod identity;
pub mod images;
pub mod local;
pub mod registry;
pub mod runtime;
pub mod volumes;
pub mod session;

pub use daemon::{Daemon, DaemonConfig};
