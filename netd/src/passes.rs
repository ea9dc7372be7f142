//! Which callers share a reconcile pass (pure; the pass itself is
//! `service::Netd::pass_after`).
//!
//! Every caller is numbered when it asks; a pass covers every ask numbered
//! up to the last one made before it started, since it reads the state
//! after them. A caller that finds, once it may run a pass, that a finished
//! pass of the kind it needs already covers it takes that pass's outcome
//! instead of running one: the callers that queue while a pass runs are all
//! served by the next one.
//!
//! Two kinds: a *whole* pass (the host's links, addresses and rules, then
//! everything that follows the view) serves attaches, detaches, the
//! engine's syncs and the periodic resync; a *view* pass (what follows the
//! network view only) serves new views. A whole pass serves views too, but
//! a view pass never serves a whole caller: an attach's veth is made in the
//! host part. The periodic resync is a whole pass that also observes the
//! overlays' sandboxes afresh (other passes may plan against what the last
//! sync saw and did): only a resync serves it. Attaches share passes with
//! one another, so twenty endpoints
//! asked for at once cost one or two host passes (one netlink burst and one
//! rule update), not twenty.
//!
//! The VIP balancers follow the passes rather than run inside them
//! ([`Latest`]): each pass publishes what every namespace's table must
//! balance, and one sync at a time takes the newest want, so a burst of
//! views costs one batch per namespace, and no attach waits behind the
//! balancer updates of other containers' namespaces.

/// What a pass is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A whole pass that also observes the overlays' sandboxes afresh
    /// (the periodic resync: it repairs drift); served only by another.
    Resync,
    Whole,
    View,
}

/// What a caller does once it holds the pass lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begin<F> {
    /// A pass that started after its ask has finished: its outcome (the
    /// host steps that failed in it; none for a view) is the caller's.
    Served(Vec<F>),
    /// Run a pass; it covers the asks numbered up to `covers`.
    Run { covers: u64 },
}

/// The asks (numbered in order) and what the finished passes covered.
#[derive(Debug)]
pub struct Passes<F> {
    asked: u64,
    /// The highest ask a finished pass of either kind covered.
    done: u64,
    /// The highest ask a finished whole pass covered, and what failed in the
    /// last whole pass.
    done_whole: u64,
    failed: Vec<F>,
    /// The highest ask a finished resync covered.
    done_resync: u64,
}

impl<F> Default for Passes<F> {
    fn default() -> Self {
        Passes { asked: 0, done: 0, done_whole: 0, failed: Vec::new(), done_resync: 0 }
    }
}

impl<F: Clone> Passes<F> {
    /// A caller asks for a pass (after changing the state it needs): its number.
    pub fn ask(&mut self) -> u64 {
        self.asked += 1;
        self.asked
    }

    /// Ask `mine` of `kind` holds the pass lock: served already, or run one.
    pub fn begin(&self, kind: Kind, mine: u64) -> Begin<F> {
        match kind {
            Kind::Resync if self.done_resync >= mine => Begin::Served(self.failed.clone()),
            Kind::Whole if self.done_whole >= mine => Begin::Served(self.failed.clone()),
            Kind::View if self.done >= mine => Begin::Served(Vec::new()),
            _ => Begin::Run { covers: self.asked },
        }
    }

    /// A pass of `kind` that covered the asks up to `covers` finished.
    pub fn finish(&mut self, kind: Kind, covers: u64, failed: Vec<F>) {
        self.done = self.done.max(covers);
        if kind != Kind::View {
            self.done_whole = self.done_whole.max(covers);
            self.failed = failed;
        }
        if kind == Kind::Resync {
            self.done_resync = self.done_resync.max(covers);
        }
    }
}

/// The balancers' queue (driven by `lb_sys::Follower`): wants published in
/// order, numbered, and one sync at a time that takes the newest. The wants
/// published while a sync runs are all served by the next one, and a sync
/// never takes a want older than one an earlier sync took.
#[derive(Debug)]
pub struct Latest<W> {
    published: u64,
    /// The newest want no sync has taken yet.
    want: Option<W>,
    /// Whether a sync loop runs (it takes `want` before it stops).
    running: bool,
    /// The newest want a finished sync covered.
    done: u64,
}

impl<W> Default for Latest<W> {
    fn default() -> Self {
        Latest { published: 0, want: None, running: false, done: 0 }
    }
}

impl<W> Latest<W> {
    /// Publishes `want`: its number, and whether the caller must start the
    /// sync loop (none runs).
    pub fn publish(&mut self, want: W) -> (u64, bool) {
        self.published += 1;
        self.want = Some(want);
        let start = !self.running;
        self.running = true;
        (self.published, start)
    }

    /// The sync loop's next want (the newest, with its number); None when
    /// there is none, and the loop stops (the next publish starts one).
    pub fn take(&mut self) -> Option<(u64, W)> {
        match self.want.take() {
            Some(w) => Some((self.published, w)),
            None => {
                self.running = false;
                None
            }
        }
    }

    /// For a sync that gave way mid-course: the newest want if one was
    /// published since (with its number), to go on with instead. Unlike
    /// `take`, None leaves the loop running.
    pub fn take_newer(&mut self) -> Option<(u64, W)> {
        self.want.take().map(|w| (self.published, w))
    }

    /// A sync of want `n` finished.
    pub fn finished(&mut self, n: u64) {
        self.done = self.done.max(n);
    }

    /// The sync loop ended without taking `take`'s None (it panicked): the
    /// next publish starts another.
    pub fn abandoned(&mut self) {
        self.running = false;
    }

    /// Whether a want waits for the sync loop to take it.
    pub fn waiting(&self) -> bool {
        self.want.is_some()
    }

    /// The newest want published, and the newest a finished sync covered.
    pub fn published(&self) -> u64 {
        self.published
    }

    pub fn done(&self) -> u64 {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_that_gave_way_takes_a_newer_want_and_keeps_running() {
        let mut q: Latest<&str> = Latest::default();
        assert_eq!(q.publish("a"), (1, true));
        assert_eq!(q.take(), Some((1, "a")));
        assert_eq!(q.take_newer(), None, "nothing newer");
        assert!(q.running, "a sync still runs");
        assert_eq!(q.publish("b"), (2, false), "no second loop");
        assert_eq!(q.publish("c"), (3, false));
        assert_eq!(q.take_newer(), Some((3, "c")));
        q.finished(3);
        assert_eq!(q.take(), None);
        assert!(!q.running);
        assert_eq!(q.done(), 3);
    }

    #[test]
    fn wants_published_while_a_sync_runs_are_served_by_one_sync_of_the_newest() {
        let mut q: Latest<&str> = Latest::default();
        // The first want starts the loop; it takes it at once.
        assert_eq!(q.publish("v1"), (1, true));
        assert_eq!(q.take(), Some((1, "v1")));
        // Three views while v1 is synced: no second loop, and one sync of the newest.
        assert_eq!(q.publish("v2"), (2, false));
        assert_eq!(q.publish("v3"), (3, false));
        assert_eq!(q.publish("v4"), (4, false));
        q.finished(1);
        assert_eq!((q.published(), q.done()), (4, 1));
        assert_eq!(q.take(), Some((4, "v4")));
        q.finished(4);
        // Nothing newer: the loop stops, and the next want starts one.
        assert_eq!(q.take(), None);
        assert_eq!(q.done(), 4);
        assert_eq!(q.publish("v5"), (5, true));
        assert_eq!(q.take(), Some((5, "v5")));
    }

    #[test]
    fn a_loop_that_died_is_started_again_by_the_next_want() {
        let mut q: Latest<&str> = Latest::default();
        assert_eq!(q.publish("v1"), (1, true));
        assert_eq!(q.take(), Some((1, "v1")));
        q.abandoned();
        assert_eq!(q.publish("v2"), (2, true));
        assert_eq!(q.done(), 0, "v1 was never covered");
    }

    /// One step of a script: a caller asks, a caller takes the pass lock, or the pass running finishes (with the failures it saw).
    enum Step {
        Ask(&'static str, Kind),
        Lock(&'static str),
        Finish(&'static [&'static str]),
    }
    use Step::*;

    /// Runs a script; returns, per caller, whether it ran a pass or was
    /// served, and the failures it got back.
    fn run(script: &[Step]) -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
        let mut p: Passes<&'static str> = Passes::default();
        let mut asks = std::collections::HashMap::new();
        let mut running: Option<(&'static str, Kind, u64)> = None;
        let mut out = Vec::new();
        for step in script {
            match step {
                Ask(who, kind) => {
                    asks.insert(*who, (p.ask(), *kind));
                }
                Lock(who) => {
                    assert!(running.is_none(), "one pass at a time");
                    let (mine, kind) = asks[who];
                    match p.begin(kind, mine) {
                        Begin::Served(f) => out.push((*who, "served", f)),
                        Begin::Run { covers } => running = Some((*who, kind, covers)),
                    }
                }
                Finish(failed) => {
                    let (who, kind, covers) = running.take().expect("a pass runs");
                    p.finish(kind, covers, failed.to_vec());
                    let got = if kind != Kind::View { failed.to_vec() } else { Vec::new() };
                    out.push((who, "ran", got));
                }
            }
        }
        out
    }

    #[test]
    fn attaches_queued_behind_a_pass_share_the_next_one() {
        use Kind::*;
        let got = run(&[
            Ask("a1", Whole),
            Lock("a1"),
            // Three attaches arrive while a1's pass runs.
            Ask("a2", Whole),
            Ask("a3", Whole),
            Ask("a4", Whole),
            Finish(&[]),
            Lock("a2"),
            Finish(&["veth of a3"]),
            Lock("a3"),
            Lock("a4"),
        ]);
        assert_eq!(
            got,
            vec![
                ("a1", "ran", vec![]),
                ("a2", "ran", vec!["veth of a3"]),
                // a3 and a4 take a2's pass and its failures: each caller picks out its own endpoint's.
                ("a3", "served", vec!["veth of a3"]),
                ("a4", "served", vec!["veth of a3"]),
            ]
        );
    }

    #[test]
    fn an_attach_asked_after_a_pass_began_gets_a_pass_of_its_own() {
        use Kind::*;
        let got = run(&[Ask("a1", Whole), Lock("a1"), Ask("a2", Whole), Finish(&[]), Lock("a2"), Finish(&[])]);
        assert_eq!(got, vec![("a1", "ran", vec![]), ("a2", "ran", vec![])]);
    }

    #[test]
    fn views_share_any_later_pass_but_attaches_only_whole_ones() {
        use Kind::*;
        let got = run(&[
            Ask("v1", View),
            Lock("v1"),
            Ask("a1", Whole),
            Ask("v2", View),
            Finish(&[]),
            // a1 cannot take a view pass: its veth is made in the host part.
            Lock("a1"),
            Ask("v3", View),
            Finish(&["x"]),
            Lock("v2"),
            // v3 asked after a1's pass began: a pass of its own.
            Lock("v3"),
            Finish(&[]),
        ]);
        assert_eq!(
            got,
            vec![("v1", "ran", vec![]), ("a1", "ran", vec!["x"]), ("v2", "served", vec![]), ("v3", "ran", vec![]),]
        );
    }

    #[test]
    fn a_resync_is_served_only_by_a_resync_and_serves_everyone() {
        use Kind::*;
        let got = run(&[
            Ask("a1", Whole),
            Lock("a1"),
            Ask("r1", Resync),
            Ask("a2", Whole),
            Finish(&[]),
            // r1 and a2 queued behind a1: r1's pass observes afresh and serves a2 too.
            Lock("r1"),
            Ask("a3", Whole),
            Ask("r2", Resync),
            Finish(&[]),
            Lock("a2"),
            // a3's pass does not serve r2, which asked during r1's pass.
            Lock("a3"),
            Finish(&[]),
            Lock("r2"),
            Finish(&[]),
        ]);
        assert_eq!(
            got,
            vec![
                ("a1", "ran", vec![]),
                ("r1", "ran", vec![]),
                ("a2", "served", vec![]),
                ("a3", "ran", vec![]),
                ("r2", "ran", vec![]),
            ]
        );
    }

    #[test]
    fn a_view_pass_in_between_does_not_lose_the_whole_pass_failures() {
        use Kind::*;
        let got = run(&[
            Ask("a1", Whole),
            Lock("a1"),
            Ask("a2", Whole),
            Ask("a3", Whole),
            Finish(&[]),
            Lock("a2"),
            Ask("v1", View),
            Finish(&["veth of a3"]),
            Lock("v1"),
            Finish(&[]),
            Lock("a3"),
        ]);
        assert_eq!(got[3], ("a3", "served", vec!["veth of a3"]));
    }
}
