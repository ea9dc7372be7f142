//! Node liveness as the leader's dispatcher judges it. Pure: it is fed what the
//! sessions see (heartbeats, session ends, goodbyes), the probe results and
//! the clock, and answers with the probes to send and the nodes to declare down.
//!
//! A node becomes *suspect* when its session ends without a goodbye, or when
//! its heartbeats stop for `grace`. A suspect is probed in rounds, by the leader
//! itself and through up to `indirect` other connected nodes (see
//! `shoal_proto::probe`). It is declared down only when two rounds in a row got
//! no answer and a refusal or a timeout from at least one prober, and it has
//! been suspect for `confirm`. One answer keeps it up: its process is alive and
//! only its path to the leader (or its CPU) is slow. That lasts until
//! `max_silence`, after which a node that still has no session is down anyway.
//! A goodbye (a daemon stopping on purpose, to restart) defers suspicion by
//! `restart_grace`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use shoal_proto::probe::Outcome;

#[derive(Clone, Debug)]
pub struct Timing {
    /// How often nodes send heartbeats.
    pub period: Duration,
    /// Silence after the last heartbeat before a connected node is suspect.
    pub grace: Duration,
    /// How long a node stays suspect, failing probes, before it is down.
    pub confirm: Duration,
    /// How long one prober waits for an answer.
    pub probe_timeout: Duration,
    /// Other nodes asked to probe a suspect.
    pub indirect: usize,
    /// Silence allowed after a goodbye.
    pub restart_grace: Duration,
    /// Silence after which a node is down even though it answers probes.
    pub max_silence: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing::with_period(Duration::from_millis(shoal_proto::model::HEARTBEAT_PERIOD_MS))
    }
}

impl Timing {
    /// The timing for a heartbeat period (the cluster's `--dispatcher-heartbeat`):
    /// suspect after three silent periods, down after one more of failed probes.
    pub fn with_period(period: Duration) -> Timing {
        Timing {
            period,
            grace: period * 3,
            confirm: period,
            probe_timeout: Duration::from_millis(700),
            indirect: 3,
            restart_grace: Duration::from_secs(15),
            max_silence: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Probe `target`: the leader itself and each of `probers` (node ids), as round `round`.
    Probe { round: u64, target: String, probers: Vec<String> },
    /// Declare `node` down.
    Down { node: String, message: String },
}

#[derive(Debug)]
struct Peer {
    last_heard: Instant,
    connected: bool,
    /// When the session ended, and whether with a goodbye.
    ended: Option<(Instant, bool)>,
    round: Option<Round>,
    /// Completed rounds in a row that got no answer and some failure.
    failed_rounds: u32,
    /// The last prober count that failed it, for the message.
    failed_by: usize,
    next_round: Option<Instant>,
    /// Whether a round of this suspicion got an answer (logged once).
    answered: bool,
}

#[derive(Debug)]
struct Round {
    id: u64,
    started: Instant,
    waiting: usize,
    alive: bool,
    failed: usize,
}

/// What one call of [`Liveness::tick`] observed besides its actions, for logs and figures.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Nodes that became suspect.
    pub suspected: Vec<String>,
    /// Suspects that answered a probe for the first time in their suspicion.
    pub answered: Vec<String>,
}

pub struct Liveness {
    timing: Timing,
    peers: HashMap<String, Peer>,
    next_round: u64,
}

impl Liveness {
    pub fn new(timing: Timing) -> Liveness {
        Liveness { timing, peers: HashMap::new(), next_round: 1 }
    }

    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// Follows a new heartbeat period (`swarm update --dispatcher-heartbeat`):
    /// the grace and confirmation times scale with it.
    pub fn set_period(&mut self, period: Duration) {
        if self.timing.period != period {
            let t = Timing::with_period(period);
            self.timing = Timing { period, grace: t.grace, confirm: t.confirm, ..self.timing.clone() };
        }
    }

    /// A new leadership: forgets what the last one saw, so every node gets a
    /// whole grace from the first tick to find this leader.
    pub fn reset(&mut self) {
        self.peers.clear();
    }

    /// A node first seen now (at a new leadership's first tick, or just
    /// joined) gets a whole grace from now.
    fn peer(&mut self, node: &str, now: Instant) -> &mut Peer {
        self.peers.entry(node.to_string()).or_insert_with(|| Peer {
            last_heard: now,
            connected: false,
            ended: None,
            round: None,
            failed_rounds: 0,
            failed_by: 0,
            next_round: None,
            answered: false,
        })
    }

    /// The node spoke on its session (hello, heartbeat, report): it is alive and connected.
    pub fn heard(&mut self, node: &str, now: Instant) {
        let p = self.peer(node, now);
        p.last_heard = now;
        p.connected = true;
        p.ended = None;
        clear(p);
    }

    /// The node's session ended; `goodbye` when the node said it will be back.
    pub fn ended(&mut self, node: &str, now: Instant, goodbye: bool) {
        let p = self.peer(node, now);
        p.connected = false;
        p.ended = Some((now, goodbye));
    }

    /// A prober's result for a round.
    pub fn result(&mut self, target: &str, round: u64, outcome: Outcome) {
        let Some(r) = self.peers.get_mut(target).and_then(|p| p.round.as_mut()).filter(|r| r.id == round) else {
            return;
        };
        r.waiting = r.waiting.saturating_sub(1);
        match outcome {
            Outcome::Alive => r.alive = true,
            Outcome::Refused | Outcome::Timeout => r.failed += 1,
            Outcome::Error => {}
        }
    }

    /// When the node becomes (or became) suspect.
    fn suspect_at(&self, p: &Peer) -> Instant {
        match p.ended {
            Some((t, true)) => t + self.timing.restart_grace,
            Some((t, false)) => t,
            None => p.last_heard + self.timing.grace,
        }
    }

    /// Advances every node in `nodes` (id, whether it is already down) to `now`.
    pub fn tick(&mut self, now: Instant, nodes: &[(String, bool)]) -> (Vec<Action>, Observed) {
        let mut actions = Vec::new();
        let mut seen = Observed::default();
        let down: HashMap<&str, bool> = nodes.iter().map(|(id, d)| (id.as_str(), *d)).collect();
        for (id, _) in nodes {
            self.peer(id, now);
        }
        self.peers.retain(|id, _| down.contains_key(id.as_str()));
        // Who may probe: connected nodes that are not suspect themselves.
        let mut healthy: Vec<String> = self
            .peers
            .iter()
            .filter(|(id, p)| p.connected && now < self.suspect_at(p) && down.get(id.as_str()) == Some(&false))
            .map(|(id, _)| id.clone())
            .collect();
        healthy.sort();
        let mut ids: Vec<&(String, bool)> = nodes.iter().collect();
        ids.sort();
        let t = self.timing.clone();
        for (id, down) in ids {
            let suspect_at = self.suspect_at(&self.peers[id]);
            let p = self.peers.get_mut(id).expect("inserted above");
            if *down || now < suspect_at {
                clear(p);
                continue;
            }
            if p.next_round.is_none() && p.round.is_none() && p.failed_rounds == 0 && !p.answered {
                seen.suspected.push(id.clone());
            }
            // Finish the round in flight once everyone answered or its time is up.
            let over =
                p.round.as_ref().is_some_and(|r| r.waiting == 0 || now >= r.started + t.probe_timeout + t.period);
            if over && let Some(r) = p.round.take() {
                if r.alive {
                    p.failed_rounds = 0;
                    if !p.answered {
                        p.answered = true;
                        seen.answered.push(id.clone());
                    }
                    p.next_round = Some(now + t.period * 2);
                } else {
                    if r.failed > 0 {
                        p.failed_rounds += 1;
                        p.failed_by = r.failed;
                    }
                    p.next_round = Some(now + t.period / 2);
                }
            }
            let silence = now.saturating_duration_since(p.last_heard);
            if silence >= t.max_silence {
                actions.push(Action::Down {
                    node: id.clone(),
                    message: format!("heartbeat failure: no session for {}s", silence.as_secs()),
                });
                clear(p);
                continue;
            }
            if p.failed_rounds >= 2 && now >= suspect_at + t.confirm {
                let others = p.failed_by.saturating_sub(1);
                let message = if p.connected {
                    format!(
                        "heartbeat failure: no heartbeat for {}ms, and no answer to probes by the leader and {others} other node(s)",
                        silence.as_millis()
                    )
                } else {
                    format!(
                        "heartbeat failure: session lost, and no answer to probes by the leader and {others} other node(s)"
                    )
                };
                actions.push(Action::Down { node: id.clone(), message });
                clear(p);
                continue;
            }
            if p.round.is_none() && p.next_round.is_none_or(|t| now >= t) {
                let round = self.next_round;
                self.next_round += 1;
                let candidates: Vec<&String> = healthy.iter().filter(|h| *h != id).collect();
                let take = t.indirect.min(candidates.len());
                let start = if candidates.is_empty() { 0 } else { round as usize % candidates.len() };
                let probers: Vec<String> =
                    (0..take).map(|i| candidates[(start + i) % candidates.len()].clone()).collect();
                p.round = Some(Round { id: round, started: now, waiting: probers.len() + 1, alive: false, failed: 0 });
                actions.push(Action::Probe { round, target: id.clone(), probers });
            }
        }
        (actions, seen)
    }
}

fn clear(p: &mut Peer) {
    p.round = None;
    p.failed_rounds = 0;
    p.failed_by = 0;
    p.next_round = None;
    p.answered = false;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn nodes(ids: &[&str]) -> Vec<(String, bool)> {
        ids.iter().map(|i| (i.to_string(), false)).collect()
    }

    /// A cluster of a, b, c, d (all connected at t0), a clock, and the actions so far.
    struct Sim {
        l: Liveness,
        t0: Instant,
        now: Instant,
        nodes: Vec<(String, bool)>,
    }

    impl Sim {
        fn new() -> Sim {
            let t0 = Instant::now();
            let mut l = Liveness::new(Timing::default());
            l.reset();
            let nodes = nodes(&["a", "b", "c", "d"]);
            for (n, _) in &nodes {
                l.heard(n, t0);
            }
            Sim { l, t0, now: t0, nodes }
        }

        /// Advances in 100 ms steps to `at` ms, with `alive` nodes heartbeating
        /// every period, answering probes for targets with `outcome(target)`.
        fn run(&mut self, at: u64, alive: &[&str], outcome: impl Fn(&str) -> Outcome) -> Vec<Action> {
            let mut all = Vec::new();
            let period = self.l.timing().period;
            while self.now < self.t0 + ms(at) {
                self.now += ms(100);
                let since = self.now - self.t0;
                if since.as_millis().is_multiple_of(period.as_millis()) {
                    for n in alive {
                        self.l.heard(n, self.now);
                    }
                }
                let (actions, _) = self.l.tick(self.now, &self.nodes);
                for a in &actions {
                    match a {
                        Action::Probe { round, target, probers } => {
                            for _ in 0..=probers.len() {
                                self.l.result(target, *round, outcome(target));
                            }
                        }
                        Action::Down { node, .. } => {
                            if let Some(n) = self.nodes.iter_mut().find(|(id, _)| id == node) {
                                n.1 = true;
                            }
                        }
                    }
                }
                all.extend(actions.into_iter().map(|a| (since, a)));
            }
            all.into_iter().map(|(_, a)| a).collect()
        }

        fn downs(actions: &[Action]) -> Vec<String> {
            actions
                .iter()
                .filter_map(|a| if let Action::Down { node, .. } = a { Some(node.clone()) } else { None })
                .collect()
        }
    }

    #[test]
    fn a_crashed_node_is_down_within_a_second_of_its_session_ending() {
        let mut s = Sim::new();
        s.run(1000, &["a", "b", "c", "d"], |_| Outcome::Alive);
        s.l.ended("d", s.now, false);
        let crash = s.now;
        let mut down_at = None;
        while down_at.is_none() && s.now < crash + ms(3000) {
            let at = (s.now - s.t0).as_millis() as u64 + 100;
            let a = s.run(at, &["a", "b", "c"], |_| Outcome::Refused);
            if Sim::downs(&a) == ["d"] {
                down_at = Some(s.now);
            }
        }
        let after = down_at.expect("d declared down") - crash;
        assert!(after >= s.l.timing().confirm && after <= ms(1000), "down after {after:?}");
        assert!(s.nodes.iter().all(|(n, down)| *down == (n == "d")), "only d is down: {:?}", s.nodes);
    }

    #[test]
    fn probes_go_through_other_connected_nodes() {
        let mut s = Sim::new();
        s.l.ended("d", s.t0, false);
        s.now += ms(100);
        let (actions, seen) = s.l.tick(s.now, &s.nodes);
        assert_eq!(seen.suspected, ["d"]);
        let Some(Action::Probe { target, probers, .. }) = actions.first() else { panic!("a probe: {actions:?}") };
        assert_eq!(target, "d");
        let mut p = probers.clone();
        p.sort();
        assert_eq!(p, ["a", "b", "c"], "every other healthy node, up to three");
    }

    #[test]
    fn a_busy_node_that_answers_probes_stays_up_until_max_silence() {
        let mut s = Sim::new();
        // d stops heartbeating (a saturated CPU, or a path to the leader that drops its session) but answers probes.
        let a = s.run(20_000, &["a", "b", "c"], |_| Outcome::Alive);
        assert!(Sim::downs(&a).is_empty(), "{a:?}");
        assert!(a.iter().any(|x| matches!(x, Action::Probe { target, .. } if target == "d")), "d was probed");
        let a = s.run(31_000, &["a", "b", "c"], |_| Outcome::Alive);
        assert_eq!(Sim::downs(&a), ["d"], "down once max_silence passed");
    }

    #[test]
    fn silence_alone_is_suspicion_and_failed_probes_make_it_down() {
        let mut s = Sim::new();
        // A partition: no session end is seen, heartbeats stop, probes time out.
        let a = s.run(1400, &["a", "b", "c"], |_| Outcome::Timeout);
        assert!(a.is_empty(), "within grace nothing happens: {a:?}");
        let a = s.run(4000, &["a", "b", "c"], |_| Outcome::Timeout);
        assert_eq!(Sim::downs(&a), ["d"]);
        let Some(Action::Down { message, .. }) = a.iter().find(|x| matches!(x, Action::Down { .. })) else {
            unreachable!()
        };
        assert!(message.contains("no heartbeat") && message.contains("3 other node(s)"), "{message}");
    }

    #[test]
    fn one_failed_round_or_probes_that_say_nothing_do_not_make_a_node_down() {
        let mut s = Sim::new();
        s.l.ended("d", s.now, false);
        // Every prober's probe errs (no vote): d stays suspect, never down, until max_silence.
        let a = s.run(5000, &["a", "b", "c"], |_| Outcome::Error);
        assert!(Sim::downs(&a).is_empty(), "{a:?}");
        // It comes back: suspicion is over.
        s.l.heard("d", s.now);
        let a = s.run(8000, &["a", "b", "c", "d"], |_| Outcome::Refused);
        assert!(a.is_empty(), "{a:?}");
    }

    #[test]
    fn a_goodbye_defers_suspicion_by_the_restart_grace() {
        let mut s = Sim::new();
        s.l.ended("d", s.now, true);
        let a = s.run(14_000, &["a", "b", "c"], |_| Outcome::Refused);
        assert!(a.is_empty(), "{a:?}");
        let a = s.run(17_000, &["a", "b", "c"], |_| Outcome::Refused);
        assert_eq!(Sim::downs(&a), ["d"]);
    }

    #[test]
    fn a_new_leader_gives_every_node_a_grace_and_a_lone_leader_probes_alone() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Timing::default());
        l.reset();
        let n = nodes(&["a", "b"]);
        let (a, _) = l.tick(t0, &n);
        assert!(a.is_empty(), "{a:?}");
        let (a, _) = l.tick(t0 + ms(1400), &n);
        assert!(a.is_empty(), "{a:?}");
        // Nobody ever connected: both are suspect, and nobody healthy can help.
        let (a, seen) = l.tick(t0 + ms(1600), &n);
        assert_eq!(seen.suspected, ["a", "b"]);
        assert!(a.iter().all(|x| matches!(x, Action::Probe { probers, .. } if probers.is_empty())), "{a:?}");
        // A node that joins later gets its grace from when it is first seen.
        let n = nodes(&["a", "b", "c"]);
        let (a, seen) = l.tick(t0 + ms(5000), &n);
        assert!(
            !seen.suspected.contains(&"c".to_string())
                && a.iter().all(|x| !matches!(x, Action::Probe { target, .. } if target == "c")),
            "{a:?}"
        );
    }

    #[test]
    fn nodes_already_down_are_not_probed() {
        let t0 = Instant::now();
        let mut l = Liveness::new(Timing::default());
        l.reset();
        l.tick(t0, &[("a".to_string(), true)]);
        let (a, _) = l.tick(t0 + ms(5000), &[("a".to_string(), true)]);
        assert!(a.is_empty(), "{a:?}");
    }
}
