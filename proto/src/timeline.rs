//! The steps a task passes from `service create` to running, as `tracing`
//! events on one target ([`TARGET`], level debug) that carry the step and
//! the task's id. They cost nothing unless that target is enabled
//! (`RUST_LOG=…,shoal::timeline=debug`); `bench/run create_timeline` turns
//! it on and `bench/timeline.py` reads every host's log into a table of how
//! long tasks spend in each step. Lab hosts share one clock, so the times of
//! events from different hosts compare directly.
//!
//! Each step is emitted once per task where it happens (the first event of a
//! step counts if it repeats), in this order; a step a task does not pass
//! (no cluster network: no allocation) is absent.

/// The target of the timeline's events.
pub const TARGET: &str = "shoal::timeline";

/// Orchestrator (leader): the task is in a pass's plan, about to be proposed.
pub const CREATED: &str = "created";
/// Allocator (leader): its addresses on its cluster networks are in a pass's plan.
pub const ALLOCATED: &str = "allocated";
/// Scheduler (leader): its node is chosen, about to be proposed.
pub const SCHEDULED: &str = "scheduled";
/// Raft: the entry that places it is committed and applied on the leader.
pub const COMMITTED: &str = "committed";
/// Dispatcher (leader): it is in an assignment sent to its node's session.
pub const DISPATCHED: &str = "dispatched";
/// Node: its worker has it.
pub const ACCEPTED: &str = "accepted";
/// Node: a start slot took it (starts run a few at a time).
pub const STARTING: &str = "starting";
/// Node: its image is here (the pull check, or the pull).
pub const PULLED: &str = "pulled";
/// Engine: its netns is made (in a create slot) and netd attached its endpoints.
pub const ATTACHED: &str = "attached";
/// Engine: a create slot is held for its root (at most one per core makes a
/// network namespace or a root at once; netd's attaches run outside them).
pub const LOCKED: &str = "locked";
/// Engine: its root is mounted, its spec and record written (its create slot is let go).
pub const PREPARED: &str = "prepared";
/// Engine: its shim process is spawned (keyed by container: `bench/timeline.py`
/// maps it to the task through `prepared`'s `container` field).
pub const SHIM: &str = "shim";
/// Engine: the shim says it runs (libcontainer created and started it).
pub const RUNNING: &str = "running";
/// Node: its running report is handed to the session stream.
pub const REPORTED: &str = "reported";
/// Dispatcher (leader): that report is committed and applied.
pub const WRITTEN: &str = "written";
/// The CLI: `service ps` shows it running (the figure's own poll, not an event).
pub const SEEN: &str = "seen";

/// Every step, in the order a task passes them.
pub const STEPS: [&str; 16] = [
    CREATED, ALLOCATED, SCHEDULED, COMMITTED, DISPATCHED, ACCEPTED, STARTING, PULLED, ATTACHED, LOCKED, PREPARED, SHIM,
    RUNNING, REPORTED, WRITTEN, SEEN,
];

/// The steps the engine emits (a test of the node with a fake runtime sees none of them).
pub const ENGINE_STEPS: [&str; 5] = [ATTACHED, LOCKED, PREPARED, SHIM, RUNNING];

/// Whether the timeline's events are wanted: guards loops that only emit them.
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::DEBUG)
}

/// Emits a timeline event: `timeline!(STEP, task = %id)` (more fields may follow;
/// `bench/timeline.py` reads `step`, `task` and `container`). The calling crate
/// depends on `tracing` itself.
#[macro_export]
macro_rules! timeline {
    ($step:expr, $($field:tt)+) => {
        ::tracing::debug!(target: $crate::timeline::TARGET, step = %$step, $($field)+, "timeline")
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_distinct_and_engine_steps_among_them() {
        let set: std::collections::BTreeSet<&str> = STEPS.iter().copied().collect();
        assert_eq!(set.len(), STEPS.len());
        assert!(ENGINE_STEPS.iter().all(|s| set.contains(s)));
    }
}
