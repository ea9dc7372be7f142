//! What the control API's service and task lists say, and what a watcher of
//! one service is told as the store changes (`WatchService`). Pure: computed
//! from a `State` (and the keys a change touched), so tests drive it without
//! a cluster.

use std::collections::{BTreeSet, HashMap};

use shoal_proto::service::{Mode, ServiceListEntry, ServiceWatch, Task, TaskListEntry, TaskState};

use crate::state::{ObjKey, State};

/// The list entries of every service (`only`: of that service id alone),
/// with their counts, in one pass over the tasks.
pub fn service_entries(state: &State, only: Option<&str>) -> Vec<ServiceListEntry> {
    // (running, completed, live) per service.
    let mut counts: HashMap<&str, (u64, u64, u64)> = HashMap::new();
    for t in state.tasks.values().filter(|t| only.is_none_or(|id| t.service_id == id)) {
        let c = counts.entry(t.service_id.as_str()).or_default();
        let live = t.desired == TaskState::Running;
        c.0 += u64::from(live && t.status.state == TaskState::Running);
        c.1 += u64::from(t.status.state == TaskState::Complete);
        c.2 += u64::from(live);
    }
    let services: Box<dyn Iterator<Item = _>> = match only {
        Some(id) => Box::new(state.services.get(id).into_iter()),
        None => Box::new(state.services.values()),
    };
    let held = crate::orchestrator::held(state);
    services
        .map(|s| {
            let (running, completed, live) = counts.get(s.id.as_str()).copied().unwrap_or_default();
            let desired = match s.spec.mode {
                Mode::Replicated | Mode::ReplicatedJob => s.spec.replicas,
                Mode::Global | Mode::GlobalJob => live,
            };
            // Registry credentials never leave the managers but for the nodes that pull.
            let waiting = held.get(&s.id).cloned().unwrap_or_default();
            ServiceListEntry { service: s.redacted(), running, desired, completed, waiting }
        })
        .collect()
}

/// A task as the task list shows it: with its node's hostname and address.
pub fn task_entry(state: &State, t: &Task) -> TaskListEntry {
    let node = state.nodes.get(&t.node_id);
    TaskListEntry {
        task: t.clone(),
        node: node.map(|n| n.description.hostname.clone()).unwrap_or_default(),
        node_addr: node.map(|n| n.description.addr.clone()).unwrap_or_default(),
    }
}

/// One watcher of one service: remembers which of its tasks it has told, so
/// that a change says only what is new, changed or gone.
#[derive(Debug)]
pub struct Watcher {
    service_id: String,
    told: BTreeSet<String>,
}

impl Watcher {
    pub fn new(service_id: &str) -> Watcher {
        Watcher { service_id: service_id.to_string(), told: BTreeSet::new() }
    }

    /// Everything: the first message, and the one after the watcher lost track (a lagged or reset store).
    pub fn whole(&mut self, state: &State) -> ServiceWatch {
        let tasks: Vec<TaskListEntry> =
            state.tasks.values().filter(|t| t.service_id == self.service_id).map(|t| task_entry(state, t)).collect();
        self.told = tasks.iter().map(|e| e.task.id.clone()).collect();
        ServiceWatch { service: self.entry(state), tasks, removed: Vec::new(), whole: true }
    }

    /// What changed for this service when `keys` changed; `None` when none of it concerns it.
    pub fn changed(&mut self, state: &State, keys: &[ObjKey]) -> Option<ServiceWatch> {
        let mut tasks = Vec::new();
        let mut removed = Vec::new();
        let mut service = false;
        for key in keys {
            match key {
                ObjKey::Service(id) if *id == self.service_id => service = true,
                ObjKey::Task(id) => match state.tasks.get(id) {
                    Some(t) if t.service_id == self.service_id => {
                        self.told.insert(id.clone());
                        tasks.push(task_entry(state, t));
                    }
                    _ if self.told.remove(id) => removed.push(id.clone()),
                    _ => {}
                },
                _ => {}
            }
        }
        if !service && tasks.is_empty() && removed.is_empty() {
            return None;
        }
        Some(ServiceWatch { service: self.entry(state), tasks, removed, whole: false })
    }

    fn entry(&self, state: &State) -> Option<ServiceListEntry> {
        service_entries(state, Some(&self.service_id)).pop()
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::service::{Service, ServiceSpec};

    use super::*;

    fn task(id: &str, service: &str, state: TaskState) -> Task {
        let mut t =
            Task { id: id.into(), service_id: service.into(), desired: TaskState::Running, ..Default::default() };
        t.status.state = state;
        t
    }

    fn state() -> State {
        let mut s = State::default();
        for id in ["web", "db"] {
            let spec = ServiceSpec { name: id.into(), replicas: 2, ..Default::default() };
            s.services.insert(id.into(), Service { id: id.into(), spec, ..Default::default() });
        }
        for (id, svc, st) in
            [("w1", "web", TaskState::Running), ("w2", "web", TaskState::Pending), ("d1", "db", TaskState::Running)]
        {
            s.tasks.insert(id.into(), task(id, svc, st).into());
        }
        s
    }

    #[test]
    fn the_first_message_holds_the_service_and_all_its_tasks_only() {
        let mut w = Watcher::new("web");
        let m = w.whole(&state());
        assert!(m.whole);
        let e = m.service.expect("the service");
        assert_eq!((e.service.id.as_str(), e.running, e.desired), ("web", 1, 2));
        let ids: Vec<&str> = m.tasks.iter().map(|e| e.task.id.as_str()).collect();
        assert_eq!(ids, ["w1", "w2"]);
    }

    #[test]
    fn a_change_says_what_changed_for_this_service_and_nothing_else() {
        let mut s = state();
        let mut w = Watcher::new("web");
        w.whole(&s);
        // Another service's task: nothing to say.
        s.task_mut("d1").unwrap().status.state = TaskState::Failed;
        assert_eq!(w.changed(&s, &[ObjKey::Task("d1".into()), ObjKey::Service("db".into())]), None);
        // Its own task runs: that task, with the counts it changed.
        s.task_mut("w2").unwrap().status.state = TaskState::Running;
        let m = w.changed(&s, &[ObjKey::Task("w2".into())]).expect("a message");
        assert!(!m.whole);
        assert_eq!(m.service.as_ref().map(|e| e.running), Some(2));
        assert_eq!(m.tasks.iter().map(|e| e.task.id.as_str()).collect::<Vec<_>>(), ["w2"]);
        // A new task of it, and one of its tasks removed.
        s.tasks.insert("w3".into(), task("w3", "web", TaskState::New).into());
        s.tasks.remove("w1");
        let m = w.changed(&s, &[ObjKey::Task("w3".into()), ObjKey::Task("w1".into())]).expect("a message");
        assert_eq!(m.tasks.iter().map(|e| e.task.id.as_str()).collect::<Vec<_>>(), ["w3"]);
        assert_eq!(m.removed, ["w1"]);
        // A removed task of another service it never told: nothing.
        s.tasks.remove("d1");
        assert_eq!(w.changed(&s, &[ObjKey::Task("d1".into())]), None);
    }

    #[test]
    fn the_service_removed_is_said_with_no_service() {
        let mut s = state();
        let mut w = Watcher::new("web");
        w.whole(&s);
        s.services.remove("web");
        s.tasks.retain(|_, t| t.service_id != "web");
        let keys = [ObjKey::Service("web".into()), ObjKey::Task("w1".into()), ObjKey::Task("w2".into())];
        let m = w.changed(&s, &keys).expect("a message");
        assert_eq!(m.service, None);
        assert_eq!(m.removed, ["w1", "w2"]);
    }

    #[test]
    fn the_list_counts_every_service_in_one_pass() {
        let e = service_entries(&state(), None);
        let got: Vec<(&str, u64, u64)> = e.iter().map(|e| (e.service.id.as_str(), e.running, e.desired)).collect();
        assert_eq!(got, [("db", 1, 2), ("web", 1, 2)]);
    }
}
