//! Raft for the managers: openraft's type configuration, timeouts, durable
//! storage (`storage`), the gRPC transport (`network`, `service`) and the fast
//! path that notices a dead leader (`liveness`). Nothing outside this module
//! names an openraft type except through the aliases here.

pub mod atrest;
pub mod mem;
pub mod network;
pub mod service;
pub mod storage;

use std::sync::Arc;

use crate::state::{Request, Response};

openraft::declare_raft_types!(
    /// Shoal's Raft types: requests are [`Request`]s, members are addressed by
    /// their advertise address. The standard leader id keeps classic Raft's
    /// rule of at most one leader per term (openraft's default allows several).
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

pub type Raft = openraft::Raft<TypeConfig, storage::StateMachine>;

/// Timeouts, the same on every manager (a cluster-wide constant). The heartbeat
/// is frequent and the election timeout generous, so a saturated CPU does not
/// cause spurious elections; a leader that dies outright is noticed much faster
/// through its closed connections (see `Manager::watch_leader_liveness`).
pub const HEARTBEAT_MS: u64 = 150;
pub const ELECTION_MIN_MS: u64 = 1500;
pub const ELECTION_MAX_MS: u64 = 3000;

pub fn config() -> Result<Arc<openraft::Config>, openraft::ConfigError> {
    let cfg = openraft::Config {
        cluster_name: "shoal".to_string(),
        heartbeat_interval: HEARTBEAT_MS,
        election_timeout_min: ELECTION_MIN_MS,
        election_timeout_max: ELECTION_MAX_MS,
        enable_pre_vote: Some(true),
        install_snapshot_timeout: 10_000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
        max_in_snapshot_log_to_keep: 1000,
        purge_batch_size: 256,
        ..Default::default()
    };
    Ok(Arc::new(cfg.validate()?))
}
