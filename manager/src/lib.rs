//! The manager role: the Raft-replicated cluster state (`raft`, `store`,
//! `state`, with cluster networks and what they hold in `networks`), the APIs that change it (`api`), the certificate authority
//! (`ca`), agent sessions (`dispatcher`: their state, `drain`: when a stop may go; `session`: their gRPC face), the pure orchestrator and scheduler
//! (`orchestrator`), the leader-only loops that write their results (`leader`)
//! and the server that exposes them.
//! It never runs containers or touches the host's network.

pub mod allocator;
pub mod api;
pub mod auth;
pub mod ca;
pub mod constraint;
pub mod dispatcher;
pub mod drain;
pub mod leader;
pub mod listing;
pub mod liveness;
pub mod manager;
pub mod netview;
pub mod networks;
pub mod orchestrator;
pub mod raft;
pub mod server;
pub mod session;
pub mod state;
pub mod store;

pub use manager::{Manager, ManagerConfig};
