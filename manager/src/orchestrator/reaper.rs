//! The reaper: ended tasks beyond each slot's history go.

use std::collections::HashMap;

use shoal_proto::service::{Task, TaskState};

use super::{HISTORY, node_up};
use crate::state::{State, TaskChange};

/// Each slot keeps its `HISTORY` newest ended tasks.
pub(super) fn reap(state: &State, out: &mut Vec<TaskChange>) {
    let mut by_slot: HashMap<(String, u64, String), Vec<&Task>> = HashMap::new();
    for t in state
        .tasks
        .values()
        .filter(|t| t.desired >= TaskState::Shutdown && (t.status.state.is_terminal() || !node_up(state, &t.node_id)))
    {
        let node = if t.slot == 0 { t.node_id.clone() } else { String::new() };
        by_slot.entry((t.service_id.clone(), t.slot, node)).or_default().push(t);
    }
    for tasks in by_slot.values_mut() {
        if tasks.len() > HISTORY {
            tasks.sort_by_key(|t| std::cmp::Reverse(t.created_index));
            for t in &tasks[HISTORY..] {
                if !out.iter().any(|c| matches!(c, TaskChange::Delete { id } if *id == t.id)) {
                    out.push(TaskChange::Delete { id: t.id.clone() });
                }
            }
        }
    }
}
