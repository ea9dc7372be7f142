//! When a task's stop may go to its node: only once no node's load
//! balancers or DNS can still pick it, or after a cap. Pure bookkeeping (time
//! comes in as a parameter), table-tested below; the dispatcher feeds it.
//!
//! The dispatcher numbers every network view it sends (`sent`), and each
//! node says which one its netd applied (`applied`); a view is known by the
//! backend addresses it lists. A node *may list* an address when the last
//! view it applied lists it, or any view sent to it since (it may be applying
//! that one now; a node applies only its latest view, so an ack of version v
//! supersedes everything sent before v). The stop of a task whose addresses
//! some node may list is held (`hold`) until none does, or until `cap` has
//! passed since it was first held: a dead, slow or old node (one that never
//! acknowledges) costs at most the cap, never a stop.
//!
//! Architecture Invariant: a held stop is released within `cap` of being
//! first held, whatever the nodes say.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// How long a task's stop waits at most for the views to drop it.
pub const CAP: Duration = Duration::from_secs(2);

/// Views sent to a node and not yet acknowledged are kept up to this many;
/// older ones are merged (their addresses joined), which only holds more.
const MAX_PENDING: usize = 16;

#[derive(Debug)]
pub struct Drain {
    cap: Duration,
    nodes: HashMap<String, NodeViews>,
    /// Tasks whose stop is held, since when.
    since: HashMap<String, Instant>,
}

#[derive(Debug, Default)]
struct NodeViews {
    /// The backend addresses of the last view the node applied.
    applied: HashSet<Ipv4Addr>,
    /// Views sent since, oldest first: (version, backend addresses).
    pending: VecDeque<(u64, HashSet<Ipv4Addr>)>,
}

impl NodeViews {
    fn lists(&self, addrs: &[Ipv4Addr]) -> bool {
        let has = |set: &HashSet<Ipv4Addr>| addrs.iter().any(|a| set.contains(a));
        has(&self.applied) || self.pending.iter().any(|(_, set)| has(set))
    }
}

impl Drain {
    pub fn new(cap: Duration) -> Drain {
        Drain { cap, nodes: HashMap::new(), since: HashMap::new() }
    }

    /// The view numbered `version`, listing `backends`, went to `node`.
    pub fn sent(&mut self, node: &str, version: u64, backends: HashSet<Ipv4Addr>) {
        let views = self.nodes.entry(node.to_string()).or_default();
        views.pending.push_back((version, backends));
        if views.pending.len() > MAX_PENDING
            && let Some((_, oldest)) = views.pending.pop_front()
            && let Some((_, next)) = views.pending.front_mut()
        {
            next.extend(oldest);
        }
    }

    /// `node`'s netd applied the view numbered `version`. True when that
    /// told something new (a view this bookkeeping sent and not yet
    /// superseded): held stops may be released now.
    pub fn applied(&mut self, node: &str, version: u64) -> bool {
        let Some(views) = self.nodes.get_mut(node) else { return false };
        let Some(at) = views.pending.iter().position(|(v, _)| *v == version) else { return false };
        let mut gone = views.pending.drain(..=at);
        if let Some((_, backends)) = gone.next_back() {
            views.applied = backends;
        }
        true
    }

    /// `node` is down (or gone): what it applied no longer holds stops. It
    /// gets its whole view again when it comes back.
    pub fn forget(&mut self, node: &str) {
        self.nodes.remove(node);
    }

    /// Whether the stop of `task` (its addresses `addrs`) is held at `now`:
    /// the time it is held until at most, or None when it may go. A task is
    /// held from the first call that finds a node that may list it.
    pub fn hold(&mut self, task: &str, addrs: &[Ipv4Addr], now: Instant) -> Option<Instant> {
        // Forget tasks whose session stopped asking long ago.
        let stale = self.cap * 4;
        self.since.retain(|_, at| now.saturating_duration_since(*at) < stale);
        if !self.nodes.values().any(|v| v.lists(addrs)) {
            self.since.remove(task);
            return None;
        }
        let until = *self.since.entry(task.to_string()).or_insert(now) + self.cap;
        if now >= until {
            self.since.remove(task);
            return None;
        }
        Some(until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("ip")
    }

    fn set(addrs: &[&str]) -> HashSet<Ipv4Addr> {
        addrs.iter().map(|a| ip(a)).collect()
    }

    const T: &str = "10.0.1.4";

    /// n1 and n2 both applied a view listing T and another backend.
    fn both_listing(now: Instant) -> Drain {
        let mut d = Drain::new(CAP);
        for (n, v) in [("n1", 1), ("n2", 2)] {
            d.sent(n, v, set(&[T, "10.0.1.3"]));
            assert!(d.applied(n, v));
        }
        assert!(d.hold("t", &[ip(T)], now).is_some());
        d
    }

    #[test]
    fn a_stop_waits_until_every_node_applied_a_view_without_the_backend() {
        let t0 = Instant::now();
        let mut d = both_listing(t0);
        d.sent("n1", 3, set(&["10.0.1.3"]));
        d.sent("n2", 4, set(&["10.0.1.3"]));
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(d.hold("t", &[ip(T)], ms(10)), Some(t0 + CAP), "sent, not applied: held");
        assert!(d.applied("n1", 3));
        assert_eq!(d.hold("t", &[ip(T)], ms(20)), Some(t0 + CAP), "n2 has not applied it yet");
        assert!(d.applied("n2", 4));
        assert_eq!(d.hold("t", &[ip(T)], ms(30)), None, "every node applied a view without it");
    }

    #[test]
    fn a_node_that_never_acknowledges_costs_the_cap_and_no_more() {
        let t0 = Instant::now();
        let mut d = both_listing(t0);
        d.sent("n1", 3, set(&[]));
        assert!(d.applied("n1", 3));
        // n2 is dead, slow or too old to acknowledge.
        d.sent("n2", 4, set(&[]));
        assert_eq!(d.hold("t", &[ip(T)], t0 + CAP - Duration::from_millis(1)), Some(t0 + CAP));
        assert_eq!(d.hold("t", &[ip(T)], t0 + CAP), None, "the cap released it");
        // Once n2 is known to be down, it holds nothing.
        d.forget("n2");
        assert_eq!(d.hold("u", &[ip(T)], t0 + CAP), None);
        // Held again later (a new stop of the same task id never happens, but
        // the count starts afresh if it did).
        d.sent("n1", 5, set(&[T]));
        assert_eq!(d.hold("t", &[ip(T)], t0 + CAP * 2), Some(t0 + CAP * 3));
    }

    #[test]
    fn a_view_sent_but_not_applied_may_still_be_applied() {
        let t0 = Instant::now();
        let mut d = Drain::new(CAP);
        d.sent("n1", 1, set(&[]));
        assert!(d.applied("n1", 1));
        assert_eq!(d.hold("t", &[ip(T)], t0), None, "no node lists it: the stop goes at once");
        // T became a backend, then left: n1 may be applying the view with T now.
        d.sent("n1", 2, set(&[T]));
        d.sent("n1", 3, set(&[]));
        assert!(d.hold("t", &[ip(T)], t0).is_some());
        // Applying the latest view supersedes the one in between.
        assert!(d.applied("n1", 3));
        assert_eq!(d.hold("t", &[ip(T)], t0), None);
        assert!(!d.applied("n1", 2), "an older view, already superseded: nothing new");
    }

    #[test]
    fn acknowledgements_of_unknown_views_change_nothing() {
        let t0 = Instant::now();
        let mut d = both_listing(t0);
        assert!(!d.applied("n1", 99), "a version never sent (another leader's)");
        assert!(!d.applied("n9", 1), "a node never sent a view");
        assert!(d.hold("t", &[ip(T)], t0).is_some());
        assert_eq!(d.hold("u", &[], t0), None, "a task without addresses is never held");
    }

    #[test]
    fn pending_views_are_bounded_and_merged_conservatively() {
        let t0 = Instant::now();
        let mut d = Drain::new(CAP);
        d.sent("n1", 1, set(&[T]));
        for v in 2..40 {
            d.sent("n1", v, set(&[]));
        }
        assert_eq!(d.nodes["n1"].pending.len(), MAX_PENDING);
        assert!(d.hold("t", &[ip(T)], t0).is_some(), "the merged oldest views still list T");
        assert!(d.applied("n1", 39));
        assert_eq!(d.hold("t", &[ip(T)], t0), None);
    }
}
