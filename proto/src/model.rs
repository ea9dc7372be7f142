//! Domain types stored in the Raft state machine. Field ownership: `spec` is
//! written by the API from user input only; `status` only from the node's own
//! reports through the dispatcher (or the dispatcher's down detection);
//! `raft_id` once, by the state machine, when a node first becomes a manager.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            _ => Err(format!("invalid role {s:?}: expected manager or worker")),
        }
    }
}

/// Whether the scheduler may place work on a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    #[default]
    Active,
    Pause,
    Drain,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
}

impl FromStr for Availability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(Availability::Active),
            "pause" => Ok(Availability::Pause),
            "drain" => Ok(Availability::Drain),
            _ => Err(format!("invalid availability {s:?}: expected active, pause or drain")),
        }
    }
}

/// Liveness of a node as the dispatcher sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    #[default]
    Unknown,
    Ready,
    Down,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Unknown => "unknown",
            NodeState::Ready => "ready",
            NodeState::Down => "down",
        }
    }
}

/// What the user asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub role: Role,
    pub availability: Availability,
    pub labels: BTreeMap<String, String>,
}

/// What the node says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeDescription {
    pub hostname: String,
    /// Advertise address, `host:port`.
    pub addr: String,
    pub engine_version: String,
    /// Expiry of the node's current certificate, unix milliseconds.
    pub cert_expiry_ms: u64,
    /// What the scheduler may reserve on it.
    #[serde(default)]
    pub nano_cpus: u64,
    #[serde(default)]
    pub memory_bytes: u64,
    /// The key its probe responder answers with, hex (see `probe`); new at each daemon start.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub probe_key: String,
    /// Its platform (`node.platform.os|arch` constraints); empty until it says.
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub arch: String,
    /// Its data-path address and own subnets (what cluster networks must avoid).
    #[serde(default)]
    pub net: crate::network::NodeNet,
}

impl NodeDescription {
    /// The probe key's bytes (empty when the node gave none).
    pub fn probe_key(&self) -> Vec<u8> {
        (0..self.probe_key.len() / 2)
            .filter_map(|i| u8::from_str_radix(self.probe_key.get(2 * i..2 * i + 2)?, 16).ok())
            .collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub state: NodeState,
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Raft log index of the last change (optimistic concurrency).
    pub version: u64,
    pub created_ms: u64,
    pub updated_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    /// Raft member id; 0 until the node first becomes a manager. Never reused.
    pub raft_id: u64,
    pub spec: NodeSpec,
    pub description: NodeDescription,
    pub status: NodeStatus,
    pub meta: Meta,
    /// Its leg on the ingress network (the routing mesh), written by the
    /// allocator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<crate::network::NodeAttachment>,
}

/// The root of trust, replicated only among managers (Raft never reaches workers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootCa {
    pub cert_pem: String,
    pub key_pem: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    pub id: String,
    pub root_ca: RootCa,
    /// Join token secrets (the digest part comes from the root CA).
    pub worker_secret: String,
    pub manager_secret: String,
    /// Lifetime of node certificates, seconds; 0 means the default (90 days).
    #[serde(default)]
    pub node_cert_ttl_secs: u64,
    /// Address pools, the ingress subnet and ports (defaults for clusters made before them).
    #[serde(default)]
    pub net: crate::network::ClusterNet,
    /// Autolock: the unlock key (`SWMKEY-1-...`) that seals every manager's
    /// Raft data key; empty: no autolock. Only in Raft (encrypted at rest).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unlock_key: String,
    /// The orchestrator's and the dispatcher's settings (`swarm init|update
    /// --task-history-limit`, `--dispatcher-heartbeat`).
    #[serde(default)]
    pub settings: ClusterSettings,
    pub meta: Meta,
}

/// Ended tasks each slot keeps by default (Docker's `--task-history-limit`).
pub const TASK_HISTORY: u64 = 5;
/// How often nodes send heartbeats by default. Docker's is 5 s; Shoal's
/// liveness is built on a shorter one (a node is suspect after 3 periods).
pub const HEARTBEAT_PERIOD_MS: u64 = 500;
/// The bounds of `--dispatcher-heartbeat`: below, heartbeats cost more than
/// they tell; above, a dead node would go unnoticed for more than 30 s.
pub const HEARTBEAT_MIN_MS: u64 = 100;
pub const HEARTBEAT_MAX_MS: u64 = 10_000;

/// Cluster-wide settings `swarm update` changes, live.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// Ended tasks the reaper keeps per slot (Docker's
    /// `Orchestration.TaskHistoryRetentionLimit`); 0 keeps none.
    #[serde(default = "task_history")]
    pub task_history_limit: u64,
    /// The nodes' heartbeat period (Docker's `Dispatcher.HeartbeatPeriod`);
    /// the leader's liveness timing follows it.
    #[serde(default = "heartbeat_period")]
    pub heartbeat_period_ms: u64,
}

fn task_history() -> u64 {
    TASK_HISTORY
}

fn heartbeat_period() -> u64 {
    HEARTBEAT_PERIOD_MS
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings { task_history_limit: TASK_HISTORY, heartbeat_period_ms: HEARTBEAT_PERIOD_MS }
    }
}

impl ClusterSettings {
    /// Why a heartbeat period is refused, with the bounds.
    pub fn heartbeat_problem(ms: u64) -> Option<String> {
        (!(HEARTBEAT_MIN_MS..=HEARTBEAT_MAX_MS).contains(&ms)).then(|| {
            format!(
                "invalid --dispatcher-heartbeat {ms}ms: it must be between {HEARTBEAT_MIN_MS}ms and {}s",
                HEARTBEAT_MAX_MS / 1000
            )
        })
    }
}

/// Node ids as Swarm prints them: 25 lowercase base-36 characters.
pub fn new_node_id() -> String {
    random_base36(25)
}

/// A random string of `len` base-36 characters from the OS RNG.
pub fn random_base36(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..len).map(|_| ALPHABET[rng.random_range(0..36)] as char).collect()
}

/// Milliseconds since the unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// RFC 3339 (UTC, seconds) for unix milliseconds; empty for 0 (never).
pub fn rfc3339(ms: u64) -> String {
    if ms == 0 {
        return String::new();
    }
    let (date, secs) = civil((ms / 1000) as i64);
    format!("{date}T{secs}Z")
}

/// RFC 3339 with nine fraction digits, UTC (Go's RFC3339NanoFixed, as Docker
/// prints log and event times), for nanoseconds since the epoch.
pub fn rfc3339_nanos(ns: i64) -> String {
    let (date, secs) = civil(ns.div_euclid(1_000_000_000));
    format!("{date}T{secs}.{:09}Z", ns.rem_euclid(1_000_000_000))
}

/// The same, for now.
pub fn now_rfc3339_nanos() -> String {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339_nanos(d.as_nanos() as i64)
}

/// `YYYY-MM-DD` and `HH:MM:SS` (UTC) of unix seconds, by Howard Hinnant's civil-from-days.
fn civil(secs: i64) -> (String, String) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), format!("{:02}:{:02}:{:02}", rem / 3600, (rem / 60) % 60, rem % 60))
}

/// Parses an RFC 3339 time (`2026-11-22T10:00:00Z`, with optional
/// fractional seconds and a `Z` or `±HH:MM` offset) to nanoseconds since the epoch.
pub fn parse_rfc3339_ns(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, min, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let digits = s.get(start..i)?;
        if digits.is_empty() {
            return None;
        }
        let padded: String = digits.chars().chain(std::iter::repeat('0')).take(9).collect();
        nanos = padded.parse().ok()?;
    }
    let offset_secs = match s.get(i..)? {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let v = o[1..3].parse::<i64>().ok()? * 3600 + o[4..6].parse::<i64>().ok()? * 60;
            if o.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    // days-from-civil (Howard Hinnant's algorithm)
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "");
        assert_eq!(rfc3339(1_000), "1970-01-01T00:00:01Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_305_600_000), "2026-11-22T00:00:00Z");
        assert_eq!(rfc3339_nanos(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(rfc3339_nanos(-1), "1969-12-31T23:59:59.999999999Z");
        assert_eq!(parse_rfc3339_ns(&rfc3339_nanos(1_795_305_600_123_456_789)), Some(1_795_305_600_123_456_789));
    }

    #[test]
    fn rfc3339_parses_back() {
        for ms in [1_000u64, 951_782_400_000, 1_795_305_600_000, 1_795_345_678_123] {
            let text = rfc3339(ms);
            assert_eq!(parse_rfc3339_ns(&text), Some((ms / 1000 * 1000) as i64 * 1_000_000), "{text}");
        }
        assert_eq!(parse_rfc3339_ns("2026-11-22T00:00:00.123456789Z"), Some(1_795_305_600_123_456_789));
        assert_eq!(parse_rfc3339_ns("2026-11-22T00:00:00.5Z"), Some(1_795_305_600_500_000_000));
        assert_eq!(parse_rfc3339_ns("2026-11-22T01:00:00+01:00"), Some(1_795_305_600_000_000_000));
        for bad in
            ["", "2026-11-22", "2026-13-01T00:00:00Z", "2026-11-22T00:00:00", "2026-11-22T00:00:00.Z", "yesterday"]
        {
            assert_eq!(parse_rfc3339_ns(bad), None, "{bad}");
        }
    }

    #[test]
    fn roles_and_availability_parse() {
        assert_eq!("manager".parse::<Role>(), Ok(Role::Manager));
        assert!("boss".parse::<Role>().is_err());
        assert_eq!("drain".parse::<Availability>(), Ok(Availability::Drain));
        assert!("off".parse::<Availability>().unwrap_err().contains("active, pause or drain"));
    }

    #[test]
    fn node_ids_look_like_swarm() {
        let id = new_node_id();
        assert_eq!(id.len(), 25);
        assert!(id.chars().all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        assert_ne!(id, new_node_id());
    }
}
