//! The containers' events (Docker's names: create, start, kill, oom, die,
//! stop, restart, destroy; a volume's create and mount; a network's connect
//! and disconnect). Starts and ends are read from the shim's files, like
//! everything else about a container: `observe` compares what it sees with
//! what it already announced, so a start or an exit is announced once, in
//! order (start before die), whether `run`, `stop` or the supervisor sees it
//! first.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Container, Containers, Status};
use crate::events::{EventLog, attrs};
use crate::volumes::MountSource;

/// The start and the end (its time) of a container's last run that were announced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Announced {
    started_ms: u64,
    finished_ms: u64,
}

impl Announced {
    /// What the status shows, as already announced (for containers found at start-up).
    pub(super) fn of(status: &Status) -> Announced {
        match status {
            Status::Running { started_ms, .. } => Announced { started_ms: *started_ms, finished_ms: 0 },
            Status::Exited { started_ms, finished_ms, .. } => {
                Announced { started_ms: *started_ms, finished_ms: *finished_ms }
            }
            Status::Dead { .. } => Announced { started_ms: u64::MAX, finished_ms: u64::MAX },
            Status::Created => Announced::default(),
        }
    }
}

/// What to announce going from `seen` to `status`: ("start" | "oom" | "die", exit code).
pub(super) fn transitions(seen: Announced, status: &Status) -> (Vec<(&'static str, Option<i32>)>, Announced) {
    let mut out = Vec::new();
    let mut now = seen;
    match status {
        Status::Created => {}
        Status::Running { started_ms, .. } => {
            if *started_ms != seen.started_ms {
                out.push(("start", None));
                now = Announced { started_ms: *started_ms, finished_ms: 0 };
            }
        }
        Status::Exited { code, oom_killed, started_ms, finished_ms } => {
            if *started_ms != seen.started_ms && *started_ms != 0 {
                out.push(("start", None));
            }
            if *finished_ms != seen.finished_ms || *started_ms != seen.started_ms {
                if *oom_killed {
                    out.push(("oom", None));
                }
                out.push(("die", Some(*code)));
            }
            now = Announced { started_ms: *started_ms, finished_ms: *finished_ms };
        }
        Status::Dead { .. } => {
            if seen != Announced::of(status) {
                out.push(("die", Some(255)));
            }
            now = Announced::of(status);
        }
    }
    (out, now)
}

impl Containers {
    /// The daemon's event log (containers, and what the engine adds).
    pub fn events(&self) -> Arc<EventLog> {
        self.events.clone()
    }

    /// A container event with Docker's attributes: its image, name and labels, and `extra`.
    pub(crate) fn container_event(&self, c: &Container, action: &str, extra: BTreeMap<String, String>) {
        let mut a: BTreeMap<String, String> = c.record.labels.clone();
        a.insert("image".into(), c.record.image.clone());
        a.insert("name".into(), c.record.name.clone());
        a.extend(extra);
        self.events.emit("container", action, &c.record.id, a);
    }

    /// Announces a start or an end of `c` not announced yet.
    pub(crate) fn observe(&self, c: &Container) {
        let mut seen = self.announced.lock().unwrap_or_else(|p| p.into_inner());
        let before = seen.get(&c.record.id).copied().unwrap_or_default();
        let (events, now) = transitions(before, &c.status);
        seen.insert(c.record.id.clone(), now);
        for (action, code) in events {
            let extra = code.map(|code| attrs([("exitCode", code.to_string())])).unwrap_or_default();
            self.container_event(c, action, extra);
        }
    }

    /// The container's current state announced (after a command that changed it).
    pub(crate) fn observe_id(&self, id: &str) {
        if let Some(c) = self.load(id) {
            self.observe(&c);
        }
    }

    /// `create` and what comes with it before the start: its networks' connects, its volumes' mounts.
    pub(crate) fn announce_created(&self, c: &Container) {
        self.container_event(c, "create", BTreeMap::new());
        for e in c.endpoints.iter() {
            let id = if e.network_id.is_empty() { &e.network } else { &e.network_id };
            let a = attrs([("container", c.record.id.clone()), ("name", e.network.clone()), ("type", "bridge".into())]);
            self.events.emit("network", "connect", id, a);
        }
        for m in &c.record.mounts {
            if let MountSource::Volume(name) = &m.source {
                let a = attrs([
                    ("container", c.record.id.clone()),
                    ("destination", m.target.clone()),
                    ("driver", "local".into()),
                    ("read/write", (!m.read_only).to_string()),
                ]);
                self.events.emit("volume", "mount", name, a);
            }
        }
    }

    /// `destroy`, after the networks' disconnects.
    pub(crate) fn announce_destroyed(&self, c: &Container) {
        for e in c.endpoints.iter() {
            let id = if e.network_id.is_empty() { &e.network } else { &e.network_id };
            let a = attrs([("container", c.record.id.clone()), ("name", e.network.clone()), ("type", "bridge".into())]);
            self.events.emit("network", "disconnect", id, a);
        }
        self.announced.lock().unwrap_or_else(|p| p.into_inner()).remove(&c.record.id);
        self.container_event(c, "destroy", BTreeMap::new());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32, oom: bool, started: u64, finished: u64) -> Status {
        Status::Exited { code, oom_killed: oom, started_ms: started, finished_ms: finished }
    }

    #[test]
    fn starts_and_ends_are_announced_once_and_in_order() {
        let running = Status::Running { pid: 1, started_ms: 10 };
        let names = |v: Vec<(&'static str, Option<i32>)>| {
            v.into_iter()
                .map(|(a, c)| format!("{a}{}", c.map(|c| format!("({c})")).unwrap_or_default()))
                .collect::<Vec<_>>()
        };
        let (e, seen) = transitions(Announced::default(), &Status::Created);
        assert!(e.is_empty());
        let (e, seen) = transitions(seen, &running);
        assert_eq!(names(e), ["start"]);
        let (e, seen) = transitions(seen, &running);
        assert!(e.is_empty(), "seen twice, announced once");
        let (e, seen) = transitions(seen, &exited(3, false, 10, 20));
        assert_eq!(names(e), ["die(3)"]);
        let (e, seen) = transitions(seen, &exited(3, false, 10, 20));
        assert!(e.is_empty());
        // A restart that ran and ended between two looks: both, start first.
        let (e, seen) = transitions(seen, &exited(137, true, 30, 40));
        assert_eq!(names(e), ["start", "oom", "die(137)"]);
        let (e, seen) = transitions(seen, &Status::Dead { message: "gone".into() });
        assert_eq!(names(e), ["die(255)"]);
        assert!(transitions(seen, &Status::Dead { message: "gone".into() }).0.is_empty());
        // What was found at start-up is not announced again.
        let found = exited(0, false, 5, 6);
        assert!(transitions(Announced::of(&found), &found).0.is_empty());
    }
}
