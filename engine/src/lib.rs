//! The single-host, Docker-like engine: the local image store (`images`,
//! `registry`), containers (`runtime`, `volumes`) and their networks, through
//! netd (`network`), the node's event log (`events`), `system df`/`prune`
//! (`prune`), and the gRPC API the CLI calls for all of them (`api`); its
//! kernel calls are in `sys`. It knows nothing of swarms: it never links the
//! manager or netd, and the node (`shoal-agent`) drives it through its public
//! API. It never changes the host's network itself; netd does that on its
//! behalf.

pub mod api;
pub mod events;
pub mod files;
pub mod images;
pub mod network;
pub mod prune;
pub mod registry;
pub mod runtime;
mod sys;
pub mod volumes;
