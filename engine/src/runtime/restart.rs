//! Restart policies, Docker's: `no`, `always`, `unless-stopped` and
//! `on-failure[:N]`, with a doubling back-off between restarts that resets
//! once a container stayed up for a while. `decide` is a pure function of
//! the policy, how the container ended and the restart bookkeeping; the
//! daemon's supervisor (`Containers::supervise`) acts on its answer.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    #[default]
    No,
    Always,
    UnlessStopped,
    /// Restart after a non-zero exit, at most `max` times (0: no limit).
    OnFailure {
        max: u32,
    },
}

impl std::str::FromStr for RestartPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, count) = match s.split_once(':') {
            Some((n, c)) => (n, Some(c)),
            None => (s, None),
        };
        let policy = match name {
            "" | "no" => RestartPolicy::No,
            "always" => RestartPolicy::Always,
            "unless-stopped" => RestartPolicy::UnlessStopped,
            "on-failure" => {
                let max = match count {
                    None => 0,
                    Some(c) => c.parse::<u32>().map_err(|_| format!("invalid restart count {c:?}: a whole number"))?,
                };
                return Ok(RestartPolicy::OnFailure { max });
            }
            other => {
                return Err(format!(
                    "invalid restart policy {other:?}: use no, always, unless-stopped or on-failure[:N]"
                ));
            }
        };
        if count.is_some() {
            return Err(format!(
                "maximum retry count cannot be used with restart policy {name:?}: only on-failure takes one"
            ));
        }
        Ok(policy)
    }
}

impl fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RestartPolicy::No => f.write_str("no"),
            RestartPolicy::Always => f.write_str("always"),
            RestartPolicy::UnlessStopped => f.write_str("unless-stopped"),
            RestartPolicy::OnFailure { max: 0 } => f.write_str("on-failure"),
            RestartPolicy::OnFailure { max } => write!(f, "on-failure:{max}"),
        }
    }
}

/// The daemon's bookkeeping for one container (`restart.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartState {
    /// Restarts by the policy since the user last started the container.
    pub count: u32,
    /// Stopped by `stop` (or killed) by a user: the policy does not bring it back.
    pub manually_stopped: bool,
    /// The next back-off delay.
    pub backoff_ms: u64,
    /// When the pending restart is due (ms since the epoch); 0 when none is pending.
    pub due_ms: u64,
}

/// The first delay between restarts, doubled each time up to `MAX_BACKOFF`.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(100);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A container that ran this long before it ended starts over at `FIRST_BACKOFF`.
pub const RESET_AFTER: Duration = Duration::from_secs(10);

/// How the container's last run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ended {
    pub exit_code: i32,
    /// How long it ran.
    pub ran: Duration,
}

/// What the supervisor should do about a container that is not running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Leave it stopped.
    Stay,
    /// Start it again after this delay; the state to record.
    Restart { after: Duration },
}

/// Whether and when to restart a container that ended. `daemon_starting`:
/// the daemon is coming up, where `always` also restarts a container a user
/// stopped (that is what sets it apart from `unless-stopped`).
pub fn decide(policy: RestartPolicy, ended: Ended, state: &RestartState, daemon_starting: bool) -> Decision {
    let wanted = match policy {
        RestartPolicy::No => false,
        RestartPolicy::Always => !state.manually_stopped || daemon_starting,
        RestartPolicy::UnlessStopped => !state.manually_stopped,
        RestartPolicy::OnFailure { max } => {
            !state.manually_stopped && ended.exit_code != 0 && (max == 0 || state.count < max)
        }
    };
    if !wanted {
        return Decision::Stay;
    }
    Decision::Restart { after: next_backoff(state.backoff_ms, ended.ran) }
}

/// The delay before this restart: the recorded one, or the first one when
/// there is none yet or the container ran long enough to reset it.
fn next_backoff(recorded_ms: u64, ran: Duration) -> Duration {
    if recorded_ms == 0 || ran >= RESET_AFTER {
        FIRST_BACKOFF
    } else {
        Duration::from_millis(recorded_ms).min(MAX_BACKOFF)
    }
}

/// The bookkeeping after a restart that waited `after`: one more restart,
/// and the next delay doubled.
pub fn after_restart(state: &RestartState, after: Duration) -> RestartState {
    RestartState {
        count: state.count + 1,
        manually_stopped: false,
        backoff_ms: (after * 2).min(MAX_BACKOFF).as_millis() as u64,
        due_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(code: i32, ran_ms: u64) -> Ended {
        Ended { exit_code: code, ran: Duration::from_millis(ran_ms) }
    }

    fn restarts(d: Decision) -> bool {
        matches!(d, Decision::Restart { .. })
    }

    #[test]
    fn policies_parse_and_print_like_docker() {
        for s in ["no", "always", "unless-stopped", "on-failure", "on-failure:3"] {
            assert_eq!(s.parse::<RestartPolicy>().unwrap().to_string(), s);
        }
        assert_eq!("on-failure:3".parse(), Ok(RestartPolicy::OnFailure { max: 3 }));
        assert!("sometimes".parse::<RestartPolicy>().unwrap_err().contains("on-failure[:N]"));
        assert!("always:3".parse::<RestartPolicy>().unwrap_err().contains("only on-failure"));
        assert!("on-failure:x".parse::<RestartPolicy>().is_err());
    }

    #[test]
    fn the_table_of_decisions() {
        let fresh = RestartState::default();
        let stopped = RestartState { manually_stopped: true, ..Default::default() };
        let thrice = RestartState { count: 3, backoff_ms: 800, ..Default::default() };
        use RestartPolicy::*;
        // (policy, exit code, state, daemon starting) → restarts?
        let table: &[(RestartPolicy, i32, &RestartState, bool, bool)] = &[
            (No, 1, &fresh, false, false),
            (No, 1, &fresh, true, false),
            (Always, 0, &fresh, false, true),
            (Always, 1, &fresh, false, true),
            (Always, 0, &stopped, false, false),
            (Always, 0, &stopped, true, true),
            (UnlessStopped, 0, &fresh, false, true),
            (UnlessStopped, 0, &stopped, false, false),
            (UnlessStopped, 0, &stopped, true, false),
            (OnFailure { max: 0 }, 0, &fresh, false, false),
            (OnFailure { max: 0 }, 1, &fresh, false, true),
            (OnFailure { max: 0 }, 1, &thrice, false, true),
            (OnFailure { max: 3 }, 1, &thrice, false, false),
            (OnFailure { max: 4 }, 137, &thrice, false, true),
            (OnFailure { max: 4 }, 1, &stopped, false, false),
        ];
        for (i, (policy, code, state, starting, want)) in table.iter().enumerate() {
            assert_eq!(
                restarts(decide(*policy, ended(*code, 5), state, *starting)),
                *want,
                "row {i}: {policy} exit {code}"
            );
        }
    }

    #[test]
    fn backoff_doubles_up_to_a_minute_and_resets_after_a_long_run() {
        let mut state = RestartState::default();
        let mut delays = vec![];
        for _ in 0..12 {
            let Decision::Restart { after } = decide(RestartPolicy::Always, ended(1, 50), &state, false) else {
                panic!()
            };
            delays.push(after.as_millis() as u64);
            state = after_restart(&state, after);
        }
        assert_eq!(&delays[..6], &[100, 200, 400, 800, 1600, 3200]);
        assert_eq!(*delays.last().unwrap(), 60_000);
        assert_eq!(state.count, 12);
        let Decision::Restart { after } = decide(RestartPolicy::Always, ended(1, 10_000), &state, false) else {
            panic!()
        };
        assert_eq!(after, FIRST_BACKOFF);
    }
}
