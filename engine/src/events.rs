//! `shoal events`: what happens on this node (containers, images, volumes,
//! networks) and, while it is a manager, to the cluster's services and nodes,
//! with Docker's event names and fields.
//!
//! The daemon keeps the last [`KEPT`] events in a ring (enough for `--since`)
//! and publishes each one on a broadcast channel. `subscribe` takes the ring's
//! copy and a receiver under one lock, so a client sees every event once: the
//! remembered ones, then the new ones. Filters (`parse_filters`, `matches`)
//! are pure and tested here. The cluster's events come from the node
//! (`shoal_agent::cluster_events`), which pushes them into this log while it
//! runs a manager.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use shoal_proto::pb;
use tokio::sync::broadcast;

/// How many events the ring remembers.
pub const KEPT: usize = 1000;

/// One event, as Docker's API has it (`Type`, `Action`, `Actor`, `scope`, `timeNano`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: &'static str,
    pub action: String,
    pub id: String,
    pub attributes: BTreeMap<String, String>,
    /// `local` for this node's objects, `swarm` for the cluster's.
    pub scope: &'static str,
    pub time_nano: i64,
}

impl Event {
    pub fn to_pb(&self) -> pb::Event {
        pb::Event {
            r#type: self.kind.into(),
            action: self.action.clone(),
            actor_id: self.id.clone(),
            attributes: self.attributes.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            scope: self.scope.into(),
            time_nano: self.time_nano,
            warning: String::new(),
        }
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// The daemon's events: a ring of the recent ones and a broadcast of new ones.
pub struct EventLog {
    ring: Mutex<VecDeque<Event>>,
    tx: broadcast::Sender<Event>,
    cap: usize,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new(KEPT)
    }
}

impl EventLog {
    pub fn new(cap: usize) -> EventLog {
        EventLog { ring: Mutex::new(VecDeque::with_capacity(cap)), tx: broadcast::channel(cap.max(16)).0, cap }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Event>> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an event of this node (`local` scope) happening now.
    pub fn emit(&self, kind: &'static str, action: &str, id: &str, attributes: BTreeMap<String, String>) {
        self.push(Event {
            kind,
            action: action.into(),
            id: id.into(),
            attributes,
            scope: "local",
            time_nano: now_ns(),
        });
    }

    /// Records an event; its time is made no earlier than the last one's, so
    /// the ring stays in time order (what `--since`/`--until` rely on).
    pub fn push(&self, mut e: Event) {
        let mut ring = self.lock();
        if let Some(last) = ring.back() {
            e.time_nano = e.time_nano.max(last.time_nano);
        }
        tracing::debug!(kind = e.kind, action = %e.action, id = %e.id, "event");
        if ring.len() == self.cap {
            ring.pop_front();
        }
        ring.push_back(e.clone());
        // Sent under the lock: a subscriber gets each event either in its copy or on its receiver.
        let _ = self.tx.send(e);
    }

    /// The remembered events, and a receiver of every later one.
    pub fn subscribe(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let ring = self.lock();
        (ring.iter().cloned().collect(), self.tx.subscribe())
    }
}

/// Attributes from `(key, value)` pairs, leaving out empty values.
pub fn attrs<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> BTreeMap<String, String> {
    pairs.into_iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.to_string(), v)).collect()
}

/// `--filter KEY=VALUE` flags: values of one key are alternatives, keys must all match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    by_key: BTreeMap<String, Vec<String>>,
}

const FILTER_KEYS: [&str; 10] =
    ["type", "event", "container", "image", "volume", "network", "service", "node", "label", "scope"];
const TYPES: [&str; 6] = ["container", "image", "volume", "network", "service", "node"];

/// Parses Docker's event filters; an unknown key or type is refused with the known ones.
pub fn parse_filters(filters: &[String]) -> Result<Filter, String> {
    let mut f = Filter::default();
    for raw in filters {
        let (k, v) =
            raw.split_once('=').ok_or_else(|| format!("bad format of filter {raw:?} (expected name=value)"))?;
        let k = k.trim().to_ascii_lowercase();
        if !FILTER_KEYS.contains(&k.as_str()) {
            return Err(format!("invalid filter {k:?}: use one of {}", FILTER_KEYS.join(", ")));
        }
        if k == "type" && !TYPES.contains(&v) {
            return Err(format!("invalid event type {v:?}: use one of {}", TYPES.join(", ")));
        }
        if k == "scope" && !matches!(v, "local" | "swarm") {
            return Err(format!("invalid scope {v:?}: use local or swarm"));
        }
        f.by_key.entry(k).or_default().push(v.to_string());
    }
    Ok(f)
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        self.by_key.iter().all(|(k, values)| values.iter().any(|v| self.one(k, v, e)))
    }

    fn one(&self, key: &str, v: &str, e: &Event) -> bool {
        // An object named by id (or a prefix of it, as Docker allows) or by name.
        let names = |kind: &str| {
            e.kind == kind
                && (e.id == v
                    || (v.len() >= 4 && e.id.starts_with(v))
                    || e.attributes.get("name").is_some_and(|n| n == v))
        };
        match key {
            "type" => e.kind == v,
            // Docker matches `exec_start: sh` by its prefix before the colon too.
            "event" => e.action == v || e.action.split(':').next() == Some(v),
            "container" => {
                names("container")
                    || (e.kind == "network" || e.kind == "volume")
                        && e.attributes.get("container").is_some_and(|c| c == v || (v.len() >= 4 && c.starts_with(v)))
            }
            "image" => {
                let image = if e.kind == "container" { e.attributes.get("image").map(String::as_str) } else { None };
                names("image") || image.is_some_and(|i| i == v || i.split(':').next() == Some(v) && !v.contains(':'))
            }
            "volume" => names("volume"),
            "network" => names("network"),
            "service" => names("service"),
            "node" => names("node"),
            "label" => match v.split_once('=') {
                Some((lk, lv)) => e.attributes.get(lk).is_some_and(|x| x == lv),
                None => e.attributes.contains_key(v),
            },
            "scope" => e.scope == v,
            _ => false,
        }
    }
}

/// Whether a remembered event falls within `--since`/`--until` (0: no bound).
pub fn within(e: &Event, since_ns: i64, until_ns: i64) -> bool {
    (since_ns == 0 || e.time_nano >= since_ns) && (until_ns == 0 || e.time_nano <= until_ns)
}

pub type EventStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Event, tonic::Status>> + Send>>;

/// The `Events` call: the remembered events within the bounds (only when a
/// bound is given, as Docker does), then new ones until `until_ns` or the
/// client goes away. A client too slow for the broadcast is told how many
/// events it missed, and the stream goes on.
pub fn stream(log: &EventLog, req: pb::EventsRequest) -> Result<EventStream, tonic::Status> {
    let filter = parse_filters(&req.filters).map_err(tonic::Status::invalid_argument)?;
    let (since, until) = (req.since_ns, req.until_ns);
    if since > 0 && until > 0 && until < since {
        return Err(tonic::Status::invalid_argument("--until must not be before --since"));
    }
    let (old, mut rx) = log.subscribe();
    let (tx, out) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        if since > 0 || until > 0 {
            for e in old.iter().filter(|e| within(e, since, until) && filter.matches(e)) {
                if tx.send(Ok(e.to_pb())).await.is_err() {
                    return;
                }
            }
        }
        let left = |now: i64| {
            if until > 0 { Some(Duration::from_nanos(until.saturating_sub(now).max(0) as u64)) } else { None }
        };
        loop {
            let wait = left(now_ns());
            if wait == Some(Duration::ZERO) {
                return;
            }
            let got = tokio::select! {
                got = rx.recv() => got,
                _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))) => continue,
                _ = tx.closed() => return,
            };
            match got {
                Ok(e) if until > 0 && e.time_nano > until => return,
                Ok(e) if filter.matches(&e) && (since == 0 || e.time_nano >= since) => {
                    if tx.send(Ok(e.to_pb())).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let warning = format!(
                        "this client fell behind and missed {n} events; run `shoal events --since` again to see them"
                    );
                    if tx.send(Ok(pb::Event { warning, time_nano: now_ns(), ..Default::default() })).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &'static str, action: &str, id: &str, a: &[(&str, &str)]) -> Event {
        Event {
            kind,
            action: action.into(),
            id: id.into(),
            attributes: a.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            scope: "local",
            time_nano: 1,
        }
    }

    #[test]
    fn filters_select_like_docker() {
        let start = ev(
            "container",
            "start",
            "abcdef123456",
            &[("name", "web"), ("image", "busybox:latest"), ("com.example", "x")],
        );
        let pull = ev("image", "pull", "busybox:latest", &[("name", "busybox")]);
        let vol = ev("volume", "mount", "data", &[("container", "abcdef123456"), ("destination", "/data")]);
        let exec = ev("container", "exec_start: sh -c true", "abcdef123456", &[("name", "web")]);
        let cases: Vec<(Vec<&str>, &Event, bool)> = vec![
            (vec![], &start, true),
            (vec!["type=container"], &start, true),
            (vec!["type=image"], &start, false),
            (vec!["type=image", "type=container"], &start, true),
            (vec!["event=start"], &start, true),
            (vec!["event=die"], &start, false),
            (vec!["type=container", "event=die"], &start, false),
            (vec!["event=exec_start"], &exec, true),
            (vec!["container=web"], &start, true),
            (vec!["container=abcd"], &start, true),
            (vec!["container=abc"], &start, false),
            (vec!["container=other"], &start, false),
            (vec!["container=web"], &vol, false),
            (vec!["container=abcdef123456"], &vol, true),
            (vec!["image=busybox"], &start, true),
            (vec!["image=busybox:latest"], &start, true),
            (vec!["image=busybox:1"], &start, false),
            (vec!["image=busybox:latest"], &pull, true),
            (vec!["volume=data"], &vol, true),
            (vec!["label=com.example"], &start, true),
            (vec!["label=com.example=x"], &start, true),
            (vec!["label=com.example=y"], &start, false),
            (vec!["scope=local"], &start, true),
            (vec!["scope=swarm"], &start, false),
        ];
        for (flags, e, want) in cases {
            let f = parse_filters(&flags.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("valid");
            assert_eq!(f.matches(e), want, "{flags:?} on {} {}", e.kind, e.action);
        }
        for bad in ["type", "colour=red", "type=plugin", "scope=world"] {
            assert!(parse_filters(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_in_order_and_subscribers_miss_nothing() {
        let log = EventLog::new(3);
        for i in 0..5 {
            log.emit("container", "start", &format!("c{i}"), BTreeMap::new());
        }
        let (old, mut rx) = log.subscribe();
        assert_eq!(old.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["c2", "c3", "c4"]);
        assert!(old.windows(2).all(|w| w[0].time_nano <= w[1].time_nano));
        log.emit("container", "die", "c5", BTreeMap::new());
        assert_eq!(rx.try_recv().expect("new event").id, "c5");
        let e = ev("container", "start", "x", &[]);
        assert!(within(&Event { time_nano: 10, ..e.clone() }, 10, 10));
        assert!(!within(&Event { time_nano: 9, ..e.clone() }, 10, 0));
        assert!(!within(&Event { time_nano: 11, ..e.clone() }, 0, 10));
        assert!(within(&Event { time_nano: 11, ..e }, 0, 0));
    }
}
