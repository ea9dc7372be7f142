//! The reaper: ended tasks beyond each slot's history (the cluster's
//! `task_history_limit`, `swarm update --task-history-limit`) go, except an
//! orphan still holding its addresses (quarantined: `allocator::reclaim`).

use std::collections::HashMap;

use shoal_proto::model::TASK_HISTORY;
use shoal_proto::service::{Task, TaskState};

use super::with_its_node;
use crate::state::{State, TaskChange};

/// Each slot keeps its `task_history_limit` newest ended tasks.
pub(super) fn reap(state: &State, out: &mut Vec<TaskChange>) {
    let keep = state.cluster.as_ref().map_or(TASK_HISTORY, |c| c.settings.task_history_limit);
    let keep = usize::try_from(keep).unwrap_or(usize::MAX);
    let mut by_slot: HashMap<(String, u64, String), Vec<&Task>> = HashMap::new();
    for t in state
        .tasks
        .values()
        .filter(|t| t.desired >= TaskState::Shutdown && (t.status.state.is_terminal() || !with_its_node(state, t)))
        .filter(|t| !(t.status.state == TaskState::Orphaned && crate::networks::holds_addrs(t)))
    {
        let node = if t.slot == 0 { t.node_id.clone() } else { String::new() };
        by_slot.entry((t.service_id.clone(), t.slot, node)).or_default().push(t);
    }
    for tasks in by_slot.values_mut() {
        if tasks.len() > keep {
            tasks.sort_by_key(|t| std::cmp::Reverse(t.created_index));
            for t in &tasks[keep..] {
                if !out.iter().any(|c| matches!(c, TaskChange::Delete { id } if *id == t.id)) {
                    out.push(TaskChange::Delete { id: t.id.clone() });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::network::TaskNetwork;
    use shoal_proto::service::TaskStatus;

    use super::*;

    #[test]
    fn an_orphan_holding_addresses_outlives_its_slots_history() {
        let mut state = State::default();
        let extra = 3;
        for i in 0..(TASK_HISTORY + extra) {
            let addr = (i == 0).then(|| "10.0.3.2".parse().expect("ip"));
            let t = Task {
                id: format!("t{i}"),
                service_id: "s".into(),
                slot: 1,
                node_id: "gone".into(),
                desired: TaskState::Shutdown,
                status: TaskStatus { state: TaskState::Orphaned, ..Default::default() },
                created_index: i + 1,
                networks: vec![TaskNetwork { network: "app".into(), aliases: vec![], addr }],
                ..Default::default()
            };
            state.tasks.insert(t.id.clone(), t.into());
        }
        let mut out = Vec::new();
        reap(&state, &mut out);
        let mut gone: Vec<String> = out
            .iter()
            .filter_map(|c| if let TaskChange::Delete { id } = c { Some(id.clone()) } else { None })
            .collect();
        gone.sort();
        // t0 is the oldest but holds its address: the next oldest go instead.
        assert_eq!(gone, vec!["t1".to_string(), "t2".to_string()]);
    }

    /// Ended tasks of one slot, newest last.
    fn ended(n: u64) -> State {
        let mut state = State::default();
        for i in 0..n {
            let t = Task {
                id: format!("t{i}"),
                service_id: "s".into(),
                slot: 1,
                desired: TaskState::Shutdown,
                status: TaskStatus { state: TaskState::Shutdown, ..Default::default() },
                created_index: i + 1,
                ..Default::default()
            };
            state.tasks.insert(t.id.clone(), t.into());
        }
        state
    }

    #[test]
    fn the_cluster_says_how_many_ended_tasks_a_slot_keeps() {
        // (limit, ended tasks, kept): none set (no cluster) keeps Docker's 5.
        let table: &[(Option<u64>, u64, &[&str])] = &[
            (None, 7, &["t2", "t3", "t4", "t5", "t6"]),
            (Some(1), 4, &["t3"]),
            (Some(0), 3, &[]),
            (Some(10), 3, &["t0", "t1", "t2"]),
        ];
        for (limit, n, kept) in table {
            let mut state = ended(*n);
            if let Some(l) = limit {
                let mut c = crate::state::tests::cluster();
                c.settings.task_history_limit = *l;
                state.cluster = Some(c);
            }
            let mut out = Vec::new();
            reap(&state, &mut out);
            for c in &out {
                if let TaskChange::Delete { id } = c {
                    state.tasks.remove(id);
                }
            }
            let mut left: Vec<&str> = state.tasks.keys().map(String::as_str).collect();
            left.sort();
            assert_eq!(left, *kept, "limit {limit:?}");
        }
    }
}
