//! What a container asks of the host that runs it beyond its image, process
//! and limits: kernel settings, resource limits of its processes, extra
//! names and resolvers, an init, its root's write access, its capabilities
//! and its log. Docker calls this the container's host config; `shoal run`
//! fills it from its flags, a service from `service create` or a Compose
//! file, and the engine applies it the same way for both.
//!
//! The parsers here are Docker's spellings (`--ulimit nofile=1024:2048`,
//! `--add-host name:ip`, `--sysctl k=v`); `HostConfig::validate` is what the
//! managers and the engine both check before anything is stored or started.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostConfig {
    /// `--sysctl`: namespaced kernel settings (see [`check_sysctl`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// `--ulimit`, at most one per name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
    /// `--add-host` / `--host`: extra `/etc/hosts` lines, as `name:ip`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    /// `--dns`: the resolvers the container's names go to (after the
    /// cluster's own names, on a network with the embedded DNS).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<IpAddr>,
    /// `--dns-search`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    /// `--dns-option` (`ndots:2`, `timeout:1`...), as resolv.conf spells them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dns_options: Vec<String>,
    /// `--init`: a minimal init runs as the container's PID 1, reaps zombies
    /// and passes signals on to the process.
    #[serde(skip_serializing_if = "is_false")]
    pub init: bool,
    /// `--read-only`: the root filesystem is mounted read-only.
    #[serde(skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// `--cap-add`, `--cap-drop`: Docker's names, with or without `CAP_`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// `--log-driver`: `json-file` (empty means it), `local` (the same
    /// files here) or `none`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub log_driver: String,
    /// `--log-opt k=v` (`max-size`, `max-file`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub log_opts: BTreeMap<String, String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The log drivers a container may ask for.
pub const LOG_DRIVERS: &[&str] = &["json-file", "local", "none"];

impl HostConfig {
    pub fn is_default(&self) -> bool {
        *self == HostConfig::default()
    }

    /// Everything a host could refuse later, refused now with what to do.
    pub fn validate(&self) -> Result<(), String> {
        for c in self.cap_add.iter().chain(&self.cap_drop) {
            check_capability(c)?;
        }
        for (k, v) in &self.sysctls {
            check_sysctl(k, v)?;
        }
        let mut names = std::collections::BTreeSet::new();
        for u in &self.ulimits {
            u.check()?;
            if !names.insert(u.name.as_str()) {
                return Err(format!("ulimit {:?} is given twice: give each name once", u.name));
            }
        }
        for h in &self.extra_hosts {
            parse_extra_host(h)?;
        }
        for s in &self.dns_search {
            if s.is_empty() || s.contains(char::is_whitespace) {
                return Err(format!("invalid dns search domain {s:?}: a domain name without spaces"));
            }
        }
        for o in &self.dns_options {
            if o.is_empty() || o.contains(char::is_whitespace) {
                return Err(format!("invalid dns option {o:?}: one resolv.conf option such as ndots:2"));
            }
        }
        if !self.log_driver.is_empty() && !LOG_DRIVERS.contains(&self.log_driver.as_str()) {
            return Err(format!(
                "log driver {:?} is not supported: use one of {}",
                self.log_driver,
                LOG_DRIVERS.join(", ")
            ));
        }
        if self.log_driver == "none" && !self.log_opts.is_empty() {
            return Err("log driver \"none\" takes no --log-opt".into());
        }
        Ok(())
    }
}

impl HostConfig {
    /// As the engine API carries it.
    pub fn to_pb(&self) -> crate::pb::HostConfig {
        crate::pb::HostConfig {
            sysctls: self.sysctls.clone().into_iter().collect(),
            ulimits: self
                .ulimits
                .iter()
                .map(|u| crate::pb::Ulimit { name: u.name.clone(), soft: u.soft, hard: u.hard })
                .collect(),
            extra_hosts: self.extra_hosts.clone(),
            dns: self.dns.iter().map(|d| d.to_string()).collect(),
            dns_search: self.dns_search.clone(),
            dns_options: self.dns_options.clone(),
            init: self.init,
            read_only: self.read_only,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            log_driver: self.log_driver.clone(),
            log_opts: self.log_opts.clone().into_iter().collect(),
        }
    }

    /// From the engine API; the rest is checked by [`HostConfig::validate`].
    pub fn from_pb(p: &crate::pb::HostConfig) -> Result<HostConfig, String> {
        let dns = p
            .dns
            .iter()
            .map(|d| d.trim().parse().map_err(|_| format!("invalid dns server {d:?}: give an IP address")))
            .collect::<Result<Vec<IpAddr>, String>>()?;
        Ok(HostConfig {
            sysctls: p.sysctls.clone().into_iter().collect(),
            ulimits: p.ulimits.iter().map(|u| Ulimit { name: u.name.clone(), soft: u.soft, hard: u.hard }).collect(),
            extra_hosts: p.extra_hosts.clone(),
            dns,
            dns_search: p.dns_search.clone(),
            dns_options: p.dns_options.clone(),
            init: p.init,
            read_only: p.read_only,
            cap_add: p.cap_add.clone(),
            cap_drop: p.cap_drop.clone(),
            log_driver: p.log_driver.clone(),
            log_opts: p.log_opts.clone().into_iter().collect(),
        })
    }

    /// `--log-opt`s as `k=v` strings, in key order.
    pub fn log_opt_strings(&self) -> Vec<String> {
        self.log_opts.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Docker's `HostConfig` in `inspect` for these fields.
    pub fn docker_json(&self) -> serde_json::Value {
        let driver = if self.log_driver.is_empty() { "json-file" } else { self.log_driver.as_str() };
        serde_json::json!({
            "Sysctls": self.sysctls,
            "Ulimits": self.ulimits.iter().map(|u| serde_json::json!({"Name": u.name, "Soft": u.soft, "Hard": u.hard})).collect::<Vec<_>>(),
            "ExtraHosts": self.extra_hosts,
            "Dns": self.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            "DnsSearch": self.dns_search,
            "DnsOptions": self.dns_options,
            "Init": self.init,
            "ReadonlyRootfs": self.read_only,
            "CapAdd": self.cap_add,
            "CapDrop": self.cap_drop,
            "LogConfig": {"Type": driver, "Config": self.log_opts},
        })
    }
}

/// A resource limit of the container's processes (`setrlimit`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// Docker's name: `nofile`, `nproc`, `core`...
    pub name: String,
    pub soft: i64,
    pub hard: i64,
}

/// Docker's ulimit names (each an `RLIMIT_` resource).
pub const ULIMITS: &[&str] = &[
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

impl Ulimit {
    /// `nofile=1024:2048`, or `nofile=1024` (soft and hard alike); `-1` is
    /// unlimited.
    pub fn parse(s: &str) -> Result<Ulimit, String> {
        let bad = || format!("invalid ulimit {s:?}: use NAME=SOFT[:HARD], for example nofile=1024:2048");
        let (name, vals) = s.split_once('=').ok_or_else(bad)?;
        let num = |v: &str| v.trim().parse::<i64>().map_err(|_| bad());
        let (soft, hard) = match vals.split_once(':') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => (num(vals)?, num(vals)?),
        };
        let u = Ulimit { name: name.trim().to_string(), soft, hard };
        u.check()?;
        Ok(u)
    }

    fn check(&self) -> Result<(), String> {
        if !ULIMITS.contains(&self.name.as_str()) {
            return Err(format!("unknown ulimit {:?}: use one of {}", self.name, ULIMITS.join(", ")));
        }
        if self.soft < -1 || self.hard < -1 {
            return Err(format!("ulimit {}: values are -1 (unlimited) or more", self.name));
        }
        let unl = |v: i64| if v == -1 { i64::MAX } else { v };
        if unl(self.soft) > unl(self.hard) {
            return Err(format!(
                "ulimit {}: the soft limit {} is above the hard limit {}",
                self.name, self.soft, self.hard
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Ulimit {
    /// As Docker prints it: `nofile=1024:2048`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}:{}", self.name, self.soft, self.hard)
    }
}

/// `name:ip` (Docker's `--add-host`; also `name=ip`, and an IPv6 address
/// after the first colon). Returns the names and the address.
pub fn parse_extra_host(s: &str) -> Result<(String, HostAddr), String> {
    let bad = |why: &str| {
        format!("invalid extra host {s:?}: {why}; use NAME:IP (for example db:10.0.0.5) or NAME:{HOST_GATEWAY}")
    };
    let (name, ip) = s.split_once('=').or_else(|| s.split_once(':')).ok_or_else(|| bad("no address"))?;
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(bad("the name is empty or has spaces"));
    }
    let ip = ip.trim().trim_start_matches('[').trim_end_matches(']');
    if ip == HOST_GATEWAY {
        return Ok((name.to_string(), HostAddr::HostGateway));
    }
    let addr: IpAddr = ip.parse().map_err(|_| bad("not an IP address"))?;
    Ok((name.to_string(), HostAddr::Ip(addr)))
}

/// Docker's special `--add-host` address: the host itself.
pub const HOST_GATEWAY: &str = "host-gateway";

/// Where an `--add-host` entry points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostAddr {
    Ip(IpAddr),
    /// `host-gateway`: the host, by the daemon's `--host-gateway-ip`, else
    /// its default bridge's gateway address (as Docker's).
    HostGateway,
}

impl std::fmt::Display for HostAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostAddr::Ip(ip) => ip.fmt(f),
            HostAddr::HostGateway => f.write_str(HOST_GATEWAY),
        }
    }
}

/// Linux's capabilities, by Docker's names (without `CAP_`).
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// `--cap-add`/`--cap-drop`: a capability as Docker names it (any case,
/// with or without `CAP_`), or `ALL`.
pub fn check_capability(c: &str) -> Result<(), String> {
    let up = c.trim().to_ascii_uppercase();
    let name = up.strip_prefix("CAP_").unwrap_or(&up);
    if name == "ALL" || CAPABILITIES.contains(&name) {
        Ok(())
    } else {
        Err(format!("unknown capability {c:?}: use a Linux capability such as NET_ADMIN or SYS_PTRACE, or ALL"))
    }
}

/// `--sysctl k=v` as Docker takes it: only settings that belong to the
/// container's own namespaces (`net.*`, the IPC ones, `fs.mqueue.*`), so a
/// container can never change its host.
pub fn check_sysctl(key: &str, value: &str) -> Result<(), String> {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    let namespaced = key.starts_with("net.") || key.starts_with("fs.mqueue.") || IPC.contains(&key);
    let named = !key.ends_with('.') && !key.contains("..") && !key.contains('/');
    if !namespaced || !named {
        return Err(format!(
            "sysctl {key:?} is not allowed: only the container's own namespaces' settings (net.*, fs.mqueue.*, kernel.msg*, kernel.sem, kernel.shm*)"
        ));
    }
    if value.is_empty() || value.contains('\n') {
        return Err(format!("sysctl {key}: give a value, as {key}=VALUE"));
    }
    Ok(())
}

/// `k=v` into a map (for `--sysctl` and `--log-opt`); `what` names the flag.
pub fn parse_kv(s: &str, what: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("invalid {what} {s:?}: use KEY=VALUE")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn ulimits_parse_as_docker_spells_them() {
        let ok = [
            ("nofile=1024:2048", ("nofile", 1024, 2048)),
            ("nproc=512", ("nproc", 512, 512)),
            ("core=-1", ("core", -1, -1)),
            ("memlock=64:-1", ("memlock", 64, -1)),
        ];
        for (s, (n, soft, hard)) in ok {
            assert_eq!(Ulimit::parse(s), Ok(Ulimit { name: n.into(), soft, hard }), "{s}");
        }
        for (s, why) in [
            ("nofile", "NAME=SOFT"),
            ("files=1", "unknown ulimit"),
            ("nofile=2048:1024", "above the hard"),
            ("nofile=x", "NAME=SOFT"),
            ("nofile=-2", "-1 (unlimited)"),
        ] {
            let e = Ulimit::parse(s).expect_err(s);
            assert!(e.contains(why), "{s}: {e}");
        }
        assert_eq!(Ulimit::parse("nofile=1:2").expect("ok").to_string(), "nofile=1:2");
    }

    #[test]
    fn extra_hosts_take_docker_forms() {
        let ip = |s: &str| HostAddr::Ip(s.parse().expect("ip"));
        assert_eq!(parse_extra_host("db:10.0.0.5"), Ok(("db".into(), ip("10.0.0.5"))));
        assert_eq!(parse_extra_host("db=10.0.0.5"), Ok(("db".into(), ip("10.0.0.5"))));
        assert_eq!(parse_extra_host("v6:fd00::1"), Ok(("v6".into(), ip("fd00::1"))));
        assert_eq!(parse_extra_host("v6:[fd00::1]"), Ok(("v6".into(), ip("fd00::1"))));
        assert_eq!(
            parse_extra_host("host.docker.internal:host-gateway"),
            Ok(("host.docker.internal".into(), HostAddr::HostGateway))
        );
        for s in ["db", ":1.2.3.4", "db:nowhere", "a b:1.2.3.4", "db:host-gw"] {
            assert!(parse_extra_host(s).expect_err(s).contains("NAME:IP"), "{s}");
        }
    }

    #[test]
    fn only_namespaced_sysctls_pass() {
        for k in ["net.core.somaxconn", "net.ipv4.ip_forward", "fs.mqueue.msg_max", "kernel.shmmax"] {
            assert_eq!(check_sysctl(k, "1"), Ok(()), "{k}");
        }
        for k in
            ["kernel.hostname", "vm.swappiness", "fs.file-max", "net/../../x", "kernel.panic", "net.", "fs.mqueue."]
        {
            assert!(check_sysctl(k, "1").is_err(), "{k}");
        }
        assert!(check_sysctl("net.core.somaxconn", "").expect_err("empty").contains("give a value"));
    }

    #[test]
    fn validate_refuses_what_a_host_would() {
        let ok = HostConfig {
            sysctls: [("net.core.somaxconn".into(), "1024".into())].into(),
            ulimits: vec![Ulimit::parse("nofile=10:20").expect("u")],
            extra_hosts: vec!["db:10.0.0.5".into()],
            dns_search: vec!["example.org".into()],
            dns_options: vec!["ndots:2".into()],
            log_driver: "json-file".into(),
            log_opts: [("max-size".into(), "1m".into())].into(),
            ..HostConfig::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let caps = HostConfig {
            cap_add: vec!["cap_net_admin".into(), "ALL".into()],
            cap_drop: vec!["CAP_CHOWN".into()],
            ..ok.clone()
        };
        assert_eq!(caps.validate(), Ok(()));
        let cases: Vec<(HostConfig, &str)> = vec![
            (HostConfig { sysctls: [("vm.x".into(), "1".into())].into(), ..ok.clone() }, "not allowed"),
            (HostConfig { ulimits: vec![ok.ulimits[0].clone(), ok.ulimits[0].clone()], ..ok.clone() }, "given twice"),
            (HostConfig { extra_hosts: vec!["nope".into()], ..ok.clone() }, "NAME:IP"),
            (HostConfig { dns_options: vec!["a b".into()], ..ok.clone() }, "resolv.conf option"),
            (HostConfig { log_driver: "syslog".into(), ..ok.clone() }, "json-file, local, none"),
            (HostConfig { cap_add: vec!["NET_ADMN".into()], ..ok.clone() }, "unknown capability"),
            (HostConfig { cap_drop: vec!["cap_chwon".into()], ..ok.clone() }, "unknown capability"),
            (HostConfig { log_driver: "none".into(), ..ok.clone() }, "no --log-opt"),
        ];
        for (hc, why) in cases {
            let e = hc.validate().expect_err(why);
            assert!(e.contains(why), "{why}: {e}");
        }
    }

    /// A host config with every field set (for this crate's round-trip tests).
    pub(crate) fn every_field_set() -> HostConfig {
        HostConfig {
            sysctls: [("net.core.somaxconn".into(), "1024".into())].into(),
            ulimits: vec![Ulimit::parse("nofile=10:20").expect("u")],
            extra_hosts: vec!["db:10.0.0.5".into()],
            dns: vec!["10.0.0.53".parse().expect("ip"), "fd00::53".parse().expect("ip")],
            dns_search: vec!["example.org".into()],
            dns_options: vec!["ndots:2".into()],
            init: true,
            read_only: true,
            cap_add: vec!["NET_ADMIN".into()],
            cap_drop: vec!["ALL".into()],
            log_driver: "local".into(),
            log_opts: [("max-size".into(), "1m".into())].into(),
        }
    }

    #[test]
    fn the_wire_form_round_trips_and_dns_must_be_addresses() {
        let hc = every_field_set();
        assert_eq!(HostConfig::from_pb(&hc.to_pb()), Ok(hc.clone()));
        let bad = crate::pb::HostConfig { dns: vec!["resolver".into()], ..hc.to_pb() };
        assert!(HostConfig::from_pb(&bad).expect_err("dns").contains("invalid dns server \"resolver\""));
        let j = hc.docker_json();
        assert_eq!(j["Ulimits"], serde_json::json!([{"Name": "nofile", "Soft": 10, "Hard": 20}]));
        assert_eq!(j["LogConfig"], serde_json::json!({"Type": "local", "Config": {"max-size": "1m"}}));
        assert_eq!(HostConfig::default().docker_json()["LogConfig"]["Type"], "json-file");
    }

    #[test]
    fn a_default_config_stores_as_nothing() {
        assert_eq!(serde_json::to_string(&HostConfig::default()).expect("json"), "{}");
        let hc: HostConfig = serde_json::from_str("{}").expect("parse");
        assert!(hc.is_default());
    }
}
