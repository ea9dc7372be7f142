//! Rolling updates and rollbacks: their progress, the failures they tolerate,
//! and the settings of the rollout in progress.

use shoal_proto::service::{Service, Task, TaskState, UpdateState};

use super::slot::Orchestrator;
use crate::state::TaskChange;

impl Orchestrator<'_> {
    /// An update is complete when every live task is up to date and running,
    /// and the last one started has run for the monitor window; it pauses or
    /// rolls back when more of its new tasks fail within their window than it
    /// tolerates.
    pub(super) fn update_progress(&mut self) {
        let svc = self.svc;
        if !matches!(svc.update_state, UpdateState::Updating | UpdateState::RollbackStarted) {
            return;
        }
        let cfg = rollout(svc);
        let mine = || self.tasks.iter().copied();
        // New tasks that failed before or within their monitor window, against the ratio tolerated.
        let new: Vec<&Task> = mine().filter(|t| t.spec_version == svc.spec_version).collect();
        let failed_early = |t: &&&Task| {
            matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
                && (t.started_ms == 0 || t.status.at_ms < t.started_ms + cfg.monitor_ms)
        };
        let failed = new.iter().filter(failed_early).count();
        let tolerated = (cfg.max_failure_ratio * new.len().max(1) as f64).floor() as usize;
        let what = if svc.update_state == UpdateState::Updating { "update" } else { "rollback" };
        if failed > tolerated
            && let Some(bad) = new.iter().find(failed_early)
        {
            let why = if bad.status.err.is_empty() { bad.status.state.to_string() } else { bad.status.err.clone() };
            use shoal_proto::service::FailureAction;
            // A rollback that fails pauses rather than rolling back again.
            let rolling_back = svc.update_state == UpdateState::RollbackStarted;
            match (cfg.failure_action, rolling_back) {
                (FailureAction::Continue, _) => {}
                (FailureAction::Rollback, false) => {
                    self.out.push(TaskChange::Rollback {
                        service_id: svc.id.clone(),
                        message: format!(
                            "update rolled back due to failure or early termination of task {}: {why}",
                            bad.id
                        ),
                    });
                    return;
                }
                _ => {
                    self.out.push(TaskChange::UpdateState {
                        service_id: svc.id.clone(),
                        state: UpdateState::Paused,
                        message: format!("{what} paused due to failure or early termination of task {}: {why}", bad.id),
                    });
                    return;
                }
            }
        }
        let live: Vec<&Task> = mine().filter(|t| t.desired == TaskState::Running).collect();
        let enough = if svc.spec.mode.is_global() { !live.is_empty() } else { live.len() as u64 == svc.spec.replicas };
        let stable = live.iter().map(|t| t.started_ms).max().is_none_or(|last| self.now_ms >= last + cfg.monitor_ms);
        let done = enough
            && stable
            && !self.out.iter().any(|c| matches!(c, TaskChange::Create(t) if t.service_id == svc.id))
            && live.iter().all(|t| !self.outdated(t) && t.status.state == TaskState::Running);
        if done {
            let (state, message) = if svc.update_state == UpdateState::Updating {
                (UpdateState::Completed, "update completed")
            } else {
                (UpdateState::RollbackCompleted, "rollback completed")
            };
            // An automatic rollback keeps saying why it happened.
            let message = if svc.update_message.contains("rolled back due to") {
                svc.update_message.clone()
            } else {
                message.to_string()
            };
            self.out.push(TaskChange::UpdateState { service_id: svc.id.clone(), state, message });
        }
    }
}

pub(super) fn spec_delay(svc: &Service) -> u64 {
    if matches!(svc.update_state, UpdateState::Updating | UpdateState::RollbackStarted) {
        rollout(svc).delay_ms
    } else {
        0
    }
}

/// The settings of the rollout in progress: the rollback's while rolling back.
pub(super) fn rollout(svc: &Service) -> &shoal_proto::service::UpdateConfig {
    if svc.update_state == UpdateState::RollbackStarted { &svc.spec.rollback } else { &svc.spec.update }
}
