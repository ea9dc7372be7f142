//! The adaptive poll after a worker hands a packet on (pure, table-tested).
//!
//! A round trip through the encrypted overlay is six wake-ups in a row
//! (client, netd A, netd B, server, netd B, netd A), and on this VM's
//! vCPUs (no guest halt-polling) waking a halted vCPU is most of their
//! cost. The answer to a packet a worker handed on usually comes back to
//! the same worker soon: to a packet written to a TUN, the local
//! container's (the TUN steers a flow to the queue that last wrote it),
//! within ~10–20 µs; to one sent to a peer, the peer's, within ~30–40 µs
//! when that peer polls too. So after a hand-off the worker polls its epoll
//! set without sleeping, yielding the CPU between polls so that under load
//! other work runs, for a window sized to the waits it saw for that kind
//! of answer from that peer; the vCPU stays awake and the answer costs no
//! wake-up. A peer that does not answer (a ping's last reply, a one-way
//! stream's end, a slow server) misses: after `MISSES` misses in a row the
//! worker stops polling for it for a pause that doubles while the misses
//! go on, so an idle or one-way peer costs a few windows a second at most.

use std::time::{Duration, Instant};

/// The longest a worker polls after a hand-off.
pub const MAX_WINDOW: Duration = Duration::from_micros(100);
/// The shortest window, however quick the answers were.
pub const MIN_WINDOW: Duration = Duration::from_micros(10);
/// Misses in a row before the peer's polling pauses.
pub const MISSES: u32 = 3;
/// The first pause; doubled at each pause with no answer between, up to `MAX_PAUSE`.
pub const PAUSE: Duration = Duration::from_millis(20);
pub const MAX_PAUSE: Duration = Duration::from_secs(1);

/// One peer's polling state in one worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spin {
    /// The smoothed wait of the answers seen; `None`: none yet, or a miss
    /// since (the next window is the longest).
    wait: Option<Duration>,
    misses: u32,
    /// The next pause's length.
    pause: Duration,
    paused_until: Option<Instant>,
}

impl Default for Spin {
    fn default() -> Spin {
        Spin { wait: None, misses: 0, pause: PAUSE, paused_until: None }
    }
}

impl Spin {
    /// How long to poll after a hand-off at `now`; `None` while paused.
    pub fn window(&self, now: Instant) -> Option<Duration> {
        if self.paused_until.is_some_and(|until| now < until) {
            return None;
        }
        Some(self.wait.map_or(MAX_WINDOW, |w| (w * 2).clamp(MIN_WINDOW, MAX_WINDOW)))
    }

    /// Work came `waited` after the hand-off.
    pub fn hit(&mut self, waited: Duration) {
        self.misses = 0;
        self.pause = PAUSE;
        self.paused_until = None;
        self.wait = Some(self.wait.map_or(waited, |w| (w * 3 + waited) / 4));
    }

    /// Nothing came within the window that started at `now`'s hand-off.
    pub fn miss(&mut self, now: Instant) {
        self.wait = None;
        self.misses += 1;
        if self.misses >= MISSES {
            self.misses = 0;
            self.paused_until = Some(now + self.pause);
            self.pause = (self.pause * 2).min(MAX_PAUSE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Ev {
        /// A hand-off `at` µs, answered after `waited` µs: expect this window (µs; 0 = paused).
        Hit { at: u64, waited: u64, window: u64 },
        /// A hand-off `at` µs with no answer: expect this window (0 = paused).
        Miss { at: u64, window: u64 },
    }
    use Ev::*;

    /// Each case: events in order; the window offered at each hand-off.
    #[test]
    fn the_window_follows_the_answers_and_unanswered_peers_pause() {
        const MS: u64 = 1000;
        let cases: &[(&str, &[Ev])] = &[
            (
                "quick answers shrink the window to twice their smoothed wait, never below the floor",
                &[
                    Hit { at: 0, waited: 15, window: 100 },
                    Hit { at: 100, waited: 15, window: 30 },
                    Hit { at: 200, waited: 3, window: 30 },
                    Hit { at: 300, waited: 1, window: 24 },
                    Hit { at: 400, waited: 1, window: 18 },
                    Hit { at: 500, waited: 1, window: 14 },
                    Hit { at: 600, waited: 1, window: 11 },
                    Hit { at: 700, waited: 1, window: 10 },
                ],
            ),
            (
                "slow answers are capped at the longest window",
                &[Hit { at: 0, waited: 70, window: 100 }, Hit { at: 100, waited: 70, window: 100 }],
            ),
            (
                "a miss widens the window again; three in a row pause, and the pause doubles",
                &[
                    Hit { at: 0, waited: 5, window: 100 },
                    Miss { at: 100, window: 10 },
                    Miss { at: 200, window: 100 },
                    Miss { at: 300, window: 100 },
                    // Paused 20 ms from 300 µs.
                    Miss { at: 10 * MS, window: 0 },
                    Miss { at: 21 * MS, window: 100 },
                    Miss { at: 22 * MS, window: 100 },
                    Miss { at: 23 * MS, window: 100 },
                    // Paused 40 ms from 23 ms.
                    Miss { at: 60 * MS, window: 0 },
                    Hit { at: 64 * MS, waited: 10, window: 100 },
                    // An answer ends the streak: the next pause is 20 ms again.
                    Miss { at: 65 * MS, window: 20 },
                    Miss { at: 66 * MS, window: 100 },
                    Miss { at: 67 * MS, window: 100 },
                    Miss { at: 86 * MS, window: 0 },
                    Miss { at: 88 * MS, window: 100 },
                ],
            ),
            (
                "misses apart from each other never pause",
                &[
                    Miss { at: 0, window: 100 },
                    Hit { at: 100, waited: 20, window: 100 },
                    Miss { at: 200, window: 40 },
                    Miss { at: 300, window: 100 },
                    Hit { at: 400, waited: 20, window: 100 },
                    Miss { at: 500, window: 40 },
                ],
            ),
        ];
        for (name, evs) in cases {
            let base = Instant::now();
            let at = |us: u64| base + Duration::from_micros(us);
            let mut s = Spin::default();
            for (i, ev) in evs.iter().enumerate() {
                let (t, want) = match ev {
                    Hit { at, window, .. } | Miss { at, window } => (*at, *window),
                };
                let got = s.window(at(t)).map_or(0, |w| w.as_micros() as u64);
                assert_eq!(got, want, "{name}: event {i}");
                if got == 0 {
                    continue; // paused: no poll, so neither a hit nor a miss
                }
                match ev {
                    Hit { waited, .. } => s.hit(Duration::from_micros(*waited)),
                    Miss { .. } => s.miss(at(t)),
                }
            }
        }
    }

    #[test]
    fn the_pause_stops_growing_at_its_cap() {
        let base = Instant::now();
        let mut s = Spin::default();
        let mut t = base;
        for _ in 0..40 {
            while s.window(t).is_none() {
                t += Duration::from_millis(1);
            }
            s.miss(t);
        }
        assert_eq!(s.pause, MAX_PAUSE);
    }
}
