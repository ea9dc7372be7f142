//! What is asked of a container (`shoal run`, a task) as typed values, and
//! its resolution: `resolve` is the one place Docker's rules for
//! entrypoint and command, environment, mounts, limits, user, working
//! directory, hostname, stop signal and timeout, ports, restart policy,
//! health and the host config (sysctls, ulimits, init, read-only root,
//! capabilities, log driver) are applied to a request and an image's
//! config. It is pure (the host comes in as `Host`); `Containers::run` does
//! what it settles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use shoal_proto::container::HostConfig;
use shoal_proto::health::{HealthCheck, HealthSetting, ImageHealthcheck};
use shoal_proto::mount::{BindFlag, MountReq, MountSource};
use shoal_proto::net::PortMap;
use shoal_proto::parse::signal_number;

use super::ContainerError;
use super::restart::RestartPolicy;
use super::shim::LogConfig;
use super::spec::{NetworkMode, RunSpec};
use crate::images::ContainerConfig as ImageConfig;
use crate::network::Attachment;

/// What `shoal run` asks for, parsed: the API edge reads Docker's flags
/// into it, the worker builds it from a task's spec.
#[derive(Clone, Debug, Default)]
pub struct RunRequest {
    pub image: String,
    pub name: String,
    pub command: Vec<String>,
    /// `--entrypoint`, or a service's (Docker's `ContainerSpec.Command`):
    /// replaces the image's; `Some(vec![])` clears it; None: the image's.
    pub entrypoint: Option<Vec<String>>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub hostname: String,
    /// `--memory` in bytes.
    pub memory: Option<i64>,
    /// `--cpus`.
    pub cpus: Option<f64>,
    pub pids_limit: i64,
    pub network: String,
    pub auto_remove: bool,
    /// `-v`, `--tmpfs` and `--mount`, in that order.
    pub mounts: Vec<RequestedMount>,
    /// `--restart`.
    pub restart: RestartPolicy,
    /// `--stop-signal`; None: the image's, else SIGTERM.
    pub stop_signal: Option<i32>,
    /// `--stop-timeout` in seconds; None: the image's, else 10.
    pub stop_timeout: Option<u64>,
    /// `-t`: a pseudo-terminal.
    pub tty: bool,
    /// `-i`: stdin stays open for an attached client.
    pub interactive: bool,
    /// The client attaches as soon as it runs (`run -i`/`-t` without `-d`).
    pub attach: bool,
    /// `-p`.
    pub publish: Vec<PortMap>,
    /// `--ip`.
    pub ip: String,
    /// `--network-alias`.
    pub network_aliases: Vec<String>,
    /// A task's cluster networks, each by id with the address the managers
    /// gave the task on it and its aliases: when there are any, the
    /// container joins them (through netd) instead of `network`.
    pub cluster_networks: Vec<Attachment>,
    /// The cluster task this container runs, if it is one (the worker's).
    pub task_id: String,
    /// `-l`/`--label`; a task's container also gets its service's and task's.
    pub labels: BTreeMap<String, String>,
    /// `shoal create`: everything but the start (`shoal start` does that).
    pub create_only: bool,
    /// `--health-*`, `--no-healthcheck`, a service's health; laid over the image's.
    pub health: HealthSetting,
    /// A task's secrets and configs, as files (see `taskfiles`).
    pub files: Vec<super::taskfiles::TaskFile>,
    /// `--sysctl`, `--ulimit`, `--add-host`, `--dns*`, `--init`, `--read-only`,
    /// `--cap-add`/`--cap-drop`, `--log-driver`, `--log-opt`: checked by `resolve`.
    pub host_config: shoal_proto::container::HostConfig,
}

/// A mount as asked, and the flag that asked for it: `-v` makes a missing
/// bind source, `--mount` (and a service's mounts) refuses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestedMount {
    pub mount: MountReq,
    pub flag: BindFlag,
}

impl RequestedMount {
    /// `-v SPEC`.
    pub fn volume(spec: &str) -> Result<RequestedMount, ContainerError> {
        Ok(RequestedMount { mount: shoal_proto::mount::parse_volume_flag(spec)?, flag: BindFlag::Volume })
    }

    /// `--tmpfs SPEC`.
    pub fn tmpfs(spec: &str) -> Result<RequestedMount, ContainerError> {
        Ok(RequestedMount { mount: shoal_proto::mount::parse_tmpfs_flag(spec)?, flag: BindFlag::Volume })
    }

    /// `--mount SPEC`.
    pub fn mount(spec: &str) -> Result<RequestedMount, ContainerError> {
        Ok(RequestedMount { mount: shoal_proto::mount::parse_mount_flag(spec)?, flag: BindFlag::Mount })
    }
}

/// What `resolve` needs to know of this machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// CPUs the host has (a CPU limit cannot exceed them).
    pub cpus: usize,
    /// Whether this daemon uses netd (bridge networks, published ports).
    pub netd: bool,
    /// The static init `--init` binds in (see `find_init`); None: there is none.
    pub init: Option<PathBuf>,
}

/// Where `--init`'s binary is bound in the container, as Docker has it.
pub const INIT_TARGET: &str = "/sbin/docker-init";

/// The static init for `--init`: the daemon's `--init-path` if given, else
/// `docker-init` or `tini-static` on `path` (a `PATH` value). Debian's
/// `tini` package has `/usr/bin/tini-static`.
pub fn find_init(configured: Option<&Path>, path: &str) -> Option<PathBuf> {
    if let Some(p) = configured {
        return Some(p.to_path_buf());
    }
    ["docker-init", "tini-static"]
        .iter()
        .flat_map(|name| std::env::split_paths(path).map(move |dir| dir.join(name)))
        .find(|p| p.is_file())
}

/// A container as `resolve` settled it: everything `run` needs beyond
/// volumes, the network namespace and files.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerConfig {
    pub name: String,
    /// The OCI config's inputs; `mounts` and `netns` are left for `run`.
    pub run: RunSpec,
    /// The user's mounts, then the image's VOLUMEs as anonymous volumes.
    pub mounts: Vec<RequestedMount>,
    pub restart: RestartPolicy,
    /// The signal `stop` sends first (a number).
    pub stop_signal: i32,
    /// Seconds `stop` waits before SIGKILL.
    pub stop_timeout: u64,
    /// The log's size bounds (from `--log-opt`), for `json-file` and `local`.
    pub log: LogConfig,
    /// The request's host config, checked (recorded for inspect, the /etc files and the log driver).
    pub host: HostConfig,
    /// The network mode as recorded (`host`, `none`, or a network).
    pub network: String,
    /// The netd networks it joins, in order (the first is the one it was
    /// run with).
    pub attachments: Vec<Attachment>,
    pub health: Option<HealthCheck>,
}

fn invalid(what: &'static str, value: impl Into<String>) -> impl FnOnce(String) -> ContainerError {
    let value = value.into();
    move |why| ContainerError::Invalid { what, value, why }
}

/// A published port as Docker's `-p` spells it.
fn publish_spec(p: &PortMap) -> String {
    let ip = p.host_ip.map(|ip| format!("{ip}:")).unwrap_or_default();
    format!("{ip}{}:{}/{}", p.host_port, p.container_port, p.proto.as_str())
}

/// Docker's rules applied to a request for container `id` of an image with
/// config `image`, on `host`.
pub fn resolve(
    id: &str,
    req: &RunRequest,
    image: &ImageConfig,
    host: &Host,
) -> Result<ContainerConfig, ContainerError> {
    let name = if req.name.is_empty() { format!("shoal_{}", &id[..8.min(id.len())]) } else { req.name.clone() };
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) || name.starts_with(['.', '-']) {
        return Err(ContainerError::Invalid {
            what: "container name",
            value: name,
            why: "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed".into(),
        });
    }
    let memory_bytes = match req.memory {
        None => None,
        Some(m) => Some(shoal_proto::parse::memory_limit(m).map_err(invalid("memory", m.to_string()))?),
    };
    let cpus = match req.cpus {
        None => None,
        Some(c) if c.is_nan() || c <= 0.0 => {
            return Err(invalid("cpus", c.to_string())("the number of CPUs must be positive".into()));
        }
        Some(c) => Some(shoal_proto::parse::cpus_within(c, host.cpus).map_err(invalid("cpus", c.to_string()))?),
    };
    let hc = &req.host_config;
    hc.validate().map_err(ContainerError::HostConfig)?;
    let log = LogConfig::parse(&hc.log_opt_strings()).map_err(invalid("log option", hc.log_opt_strings().join(",")))?;
    let restart = req.restart;
    if req.auto_remove && restart != RestartPolicy::No {
        return Err(ContainerError::Invalid {
            what: "options",
            value: format!("--restart {restart} --rm"),
            why: "conflicting options: a container removed when it exits cannot be restarted; drop one of them".into(),
        });
    }
    let image_stop_signal = image.stop_signal.clone().unwrap_or_default();
    let stop_signal = match (req.stop_signal, image_stop_signal.as_str()) {
        (Some(s), _) => s,
        (None, "") => libc::SIGTERM,
        (None, s) => signal_number(s).map_err(invalid("stop signal", s))?,
    };
    let stop_timeout = req.stop_timeout.or(image.stop_timeout.and_then(|t| u64::try_from(t).ok())).unwrap_or(10);
    // Like Docker, the default bridge unless asked otherwise (none without netd).
    let network_name = match req.network.as_str() {
        _ if !req.cluster_networks.is_empty() => cluster_networks(req, host)?,
        "" if host.netd => "bridge",
        "" => "none",
        n => n,
    };
    let network = if network_name == "host" { NetworkMode::Host } else { NetworkMode::None };
    // Docker: the host's network namespace is not the container's to tune.
    if let Some(k) = hc.sysctls.keys().find(|k| k.starts_with("net.")).filter(|_| network == NetworkMode::Host) {
        return Err(invalid("sysctl", k.clone())(
            "net.* sysctls are not allowed with --network host: the network namespace is the host's".into(),
        ));
    }
    if !req.network_aliases.is_empty() && matches!(network_name, "bridge" | "host" | "none") {
        return Err(ContainerError::Invalid {
            what: "network alias",
            value: req.network_aliases.join(","),
            why: "network-scoped aliases are only supported for user-defined networks".into(),
        });
    }
    if !req.publish.is_empty() && !netd_network(network_name) {
        return Err(ContainerError::Invalid {
            what: "port mapping",
            value: req.publish.iter().map(publish_spec).collect::<Vec<_>>().join(" "),
            why: format!("published ports need a bridge network, not --network {network_name}"),
        });
    }
    if netd_network(network_name) && !host.netd {
        return Err(ContainerError::Invalid {
            what: "network",
            value: network_name.into(),
            why: "bridge networks need netd, which this daemon does not use".into(),
        });
    }
    // Command: Docker's rules for Entrypoint and Cmd.
    let cfg = image;
    let entrypoint: Vec<String> = match &req.entrypoint {
        Some(e) => e.clone(),
        None => cfg.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !req.command.is_empty() {
        req.command.clone()
    } else if req.entrypoint.is_some() {
        vec![]
    } else {
        cfg.cmd.clone().unwrap_or_default()
    };
    let mut args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    // `--init`: Docker's tini runs as PID 1 and runs the command (none: the spec refuses it).
    let init = match (&host.init, hc.init) {
        (_, false) => None,
        (None, true) => {
            return Err(invalid("option", "--init")(
                "no init binary on this host: install it (apt-get install tini) or give the daemon --init-path".into(),
            ));
        }
        (Some(p), true) => Some(p.clone()),
    };
    if init.is_some() && !args.is_empty() {
        args.splice(0..0, [INIT_TARGET.to_string(), "--".to_string()]);
    }
    let health = health_check(&req.health, cfg.healthcheck.as_ref())?;
    let mut env = cfg.env.clone().unwrap_or_default();
    for e in &req.env {
        let key = e.split('=').next().unwrap_or("");
        env.retain(|x| x.split('=').next() != Some(key));
        env.push(e.clone());
    }
    // Mounts: what the user asked for, then the image's VOLUMEs as anonymous volumes.
    let mut mounts = req.mounts.clone();
    if let Some(dup) = mounts
        .iter()
        .enumerate()
        .find_map(|(i, m)| mounts[..i].iter().any(|o| o.mount.target == m.mount.target).then_some(&m.mount.target))
    {
        return Err(ContainerError::Invalid {
            what: "mounts",
            value: dup.clone(),
            why: "duplicate mount point".into(),
        });
    }
    for target in cfg.volumes.clone().unwrap_or_default().into_keys() {
        if !mounts.iter().any(|m| m.mount.target == target) {
            let mount = MountReq {
                source: MountSource::Volume(String::new()),
                target,
                read_only: false,
                volume_labels: Default::default(),
            };
            mounts.push(RequestedMount { mount, flag: BindFlag::Volume });
        }
    }
    let run = RunSpec {
        mounts: Vec::new(),
        args,
        env,
        cwd: if req.workdir.is_empty() { cfg.working_dir.clone().unwrap_or_default() } else { req.workdir.clone() },
        user: if req.user.is_empty() { cfg.user.clone().unwrap_or_default() } else { req.user.clone() },
        hostname: if req.hostname.is_empty() { id[..12.min(id.len())].to_string() } else { req.hostname.clone() },
        memory_bytes,
        cpus,
        pids_limit: (req.pids_limit > 0).then_some(req.pids_limit),
        read_only: hc.read_only,
        network,
        cap_add: hc.cap_add.clone(),
        cap_drop: hc.cap_drop.clone(),
        terminal: req.tty,
        netns: None,
        sysctls: hc.sysctls.clone(),
        ulimits: hc.ulimits.clone(),
        init,
    };
    let attachments = if !req.cluster_networks.is_empty() {
        // A task's host-mode ports go with its first network: netd publishes them on the
        // task's gateway bridge leg (DNAT to its address there), refusing an internal one.
        let mut a = req.cluster_networks.clone();
        a[0].ports = req.publish.clone();
        a
    } else if netd_network(network_name) {
        vec![Attachment {
            network: network_name.into(),
            aliases: req.network_aliases.clone(),
            ip: req.ip.clone(),
            ports: req.publish.clone(),
            lease: String::new(),
        }]
    } else {
        vec![]
    };
    Ok(ContainerConfig {
        name,
        run,
        mounts,
        restart,
        stop_signal,
        stop_timeout,
        log,
        host: hc.clone(),
        network: network_name.into(),
        attachments,
        health,
    })
}

/// A task's cluster networks checked: netd is there, each has the address
/// the managers gave (a task without one must not start), no ports are
/// asked of them. Returns the first, the network the container is recorded with.
fn cluster_networks<'a>(req: &'a RunRequest, host: &Host) -> Result<&'a str, ContainerError> {
    let first = &req.cluster_networks[0].network;
    if !host.netd {
        return Err(invalid("network", first.clone())(
            "cluster networks need netd, which this daemon does not use".into(),
        ));
    }
    if let Some(a) = req.cluster_networks.iter().find(|a| a.ip.is_empty()) {
        return Err(invalid("network", a.network.clone())(
            "the task has no address on this cluster network yet: the managers give one before placing it".into(),
        ));
    }
    if let Some(a) = req.cluster_networks.iter().find(|a| !a.ports.is_empty()) {
        return Err(invalid("network", a.network.clone())(
            "ports are asked of the task, not of one of its networks (publish)".into(),
        ));
    }
    Ok(first)
}

/// Whether containers on `network` get a namespace of their own from netd.
pub fn netd_network(network: &str) -> bool {
    !matches!(network, "" | "none" | "host")
}

/// The container's check: the user's setting laid over the image's
/// `HEALTHCHECK` (Docker's merge). An image's check Docker would not run
/// is refused unless the user's setting replaces its test.
pub(super) fn health_check(
    user: &HealthSetting,
    image: Option<&serde_json::Value>,
) -> Result<Option<HealthCheck>, ContainerError> {
    let image = match image {
        None => HealthSetting::default(),
        Some(v) => match serde_json::from_value::<ImageHealthcheck>(v.clone())
            .map_err(|e| e.to_string())
            .and_then(|h| h.setting())
        {
            Ok(s) => s,
            Err(_) if user.test != Default::default() => HealthSetting::default(),
            Err(why) => {
                return Err(ContainerError::Invalid {
                    what: "image HEALTHCHECK",
                    value: v.to_string(),
                    why: format!("{why}; run it with --no-healthcheck or a --health-cmd of its own"),
                });
            }
        },
    };
    Ok(shoal_proto::health::resolve(user, &image))
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // each table's row type is spelled out beside its rows
mod tests {
    use super::*;

    #[test]
    fn an_images_healthcheck_is_read_and_a_bad_one_refused_unless_replaced() {
        use shoal_proto::health::HealthTest;
        let image = serde_json::json!({"Test": ["CMD-SHELL", "test -f /ok"], "Interval": 1_000_000_000, "Retries": 1});
        let check = health_check(&HealthSetting::default(), Some(&image)).expect("valid").expect("a check");
        assert_eq!(
            (check.argv(), check.interval_ms, check.retries),
            (vec!["/bin/sh".to_string(), "-c".into(), "test -f /ok".into()], 1_000, 1)
        );
        assert_eq!(health_check(&HealthSetting::default(), None).expect("valid"), None, "no HEALTHCHECK, no check");
        let bad = serde_json::json!({"Test": ["BOGUS", "x"]});
        let err = health_check(&HealthSetting::default(), Some(&bad)).expect_err("refused").to_string();
        assert!(err.contains("unknown health check type") && err.contains("--no-healthcheck"), "{err}");
        let none = HealthSetting { test: HealthTest::None, ..Default::default() };
        assert_eq!(health_check(&none, Some(&bad)).expect("replaced"), None);
        let own = HealthSetting { test: HealthTest::Shell("true".into()), ..Default::default() };
        assert!(health_check(&own, Some(&bad)).expect("replaced").is_some());
    }

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const HOST: Host = Host { cpus: 2, netd: true, init: None };

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["serve".into()]),
            env: Some(vec!["PATH=/bin".into(), "MODE=prod".into()]),
            working_dir: Some("/app".into()),
            user: Some("app".into()),
            volumes: Some([("/data".to_string(), serde_json::json!({}))].into()),
            ..Default::default()
        }
    }

    fn req() -> RunRequest {
        RunRequest { image: "busybox".into(), ..Default::default() }
    }

    fn ok(r: &RunRequest, i: &ImageConfig, h: &Host) -> ContainerConfig {
        resolve(ID, r, i, h).unwrap_or_else(|e| panic!("{r:?}: {e}"))
    }

    fn refused(r: &RunRequest, i: &ImageConfig, h: &Host) -> String {
        resolve(ID, r, i, h).map(|c| format!("resolved: {c:?}")).unwrap_or_else(|e| e.to_string())
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_command_follow_docker() {
        let bare = ImageConfig { entrypoint: None, ..image() };
        let table: [(Option<&[&str]>, &[&str], &ImageConfig, &[&str]); 10] = [
            (None, &[], &image(), &["/entry", "serve"]),
            (None, &["x", "y"], &image(), &["/entry", "x", "y"]),
            (Some(&[]), &[], &image(), &[]),
            (Some(&[]), &["sh"], &image(), &["sh"]),
            (Some(&["/bin/sh"]), &[], &image(), &["/bin/sh"]),
            (Some(&["/bin/sh"]), &["-c", "x"], &image(), &["/bin/sh", "-c", "x"]),
            // A service's entrypoint is a list (Docker's ContainerSpec.Command).
            (Some(&["/bin/sh", "-c"]), &["echo hi"], &image(), &["/bin/sh", "-c", "echo hi"]),
            (Some(&["/bin/sh", "-c", "x"]), &[], &bare, &["/bin/sh", "-c", "x"]),
            (None, &[], &bare, &["serve"]),
            (None, &["top"], &bare, &["top"]),
        ];
        for (entrypoint, command, img, want) in table {
            let r = RunRequest { entrypoint: entrypoint.map(strings), command: strings(command), ..req() };
            assert_eq!(ok(&r, img, &HOST).run.args, strings(want), "{entrypoint:?} {command:?}");
        }
    }

    #[test]
    fn the_users_env_overrides_the_images_by_name() {
        let r = RunRequest { env: strings(&["MODE=dev", "NEW=1", "PATH=/usr/bin"]), ..req() };
        assert_eq!(ok(&r, &image(), &HOST).run.env, strings(&["MODE=dev", "NEW=1", "PATH=/usr/bin"]));
        let r = RunRequest { env: strings(&["NEW=1"]), ..req() };
        assert_eq!(ok(&r, &image(), &HOST).run.env, strings(&["PATH=/bin", "MODE=prod", "NEW=1"]));
        assert_eq!(ok(&req(), &ImageConfig::default(), &HOST).run.env, Vec::<String>::new());
    }

    #[test]
    fn name_hostname_user_and_workdir_default_as_docker_does() {
        let c = ok(&req(), &image(), &HOST);
        assert_eq!(
            (c.name.as_str(), c.run.hostname.as_str(), c.run.user.as_str(), c.run.cwd.as_str()),
            ("shoal_01234567", "0123456789ab", "app", "/app")
        );
        let r = RunRequest {
            name: "web.1".into(),
            hostname: "h".into(),
            user: "1000:1000".into(),
            workdir: "/srv".into(),
            ..req()
        };
        let c = ok(&r, &image(), &HOST);
        assert_eq!(
            (c.name.as_str(), c.run.hostname.as_str(), c.run.user.as_str(), c.run.cwd.as_str()),
            ("web.1", "h", "1000:1000", "/srv")
        );
        let c = ok(&req(), &ImageConfig::default(), &HOST);
        assert_eq!((c.run.user.as_str(), c.run.cwd.as_str()), ("", ""));
        for bad in ["bad name", "-x", ".x", "a/b"] {
            let r = RunRequest { name: bad.into(), ..req() };
            assert!(refused(&r, &image(), &HOST).contains("invalid container name"), "{bad}");
        }
    }

    #[test]
    fn limits_are_checked_against_docker_and_the_host() {
        let table: [(Option<i64>, Option<f64>, i64, Result<(Option<i64>, Option<f64>, Option<i64>), &str>); 8] = [
            (None, None, 0, Ok((None, None, None))),
            (Some(64 << 20), Some(0.5), 100, Ok((Some(64 << 20), Some(0.5), Some(100)))),
            (Some(6 << 20), Some(2.0), -1, Ok((Some(6 << 20), Some(2.0), None))),
            (Some(1 << 20), None, 0, Err("invalid memory \"1048576\": minimum memory limit allowed is 6MB")),
            (None, Some(3.0), 0, Err("only 2 CPUs available")),
            (None, Some(0.0), 0, Err("the number of CPUs must be positive")),
            (None, Some(-1.0), 0, Err("the number of CPUs must be positive")),
            (Some(0), None, 0, Err("minimum memory limit")),
        ];
        for (memory, cpus, pids_limit, want) in table {
            let r = RunRequest { memory, cpus, pids_limit, ..req() };
            match want {
                Ok(limits) => {
                    let c = ok(&r, &image(), &HOST);
                    assert_eq!((c.run.memory_bytes, c.run.cpus, c.run.pids_limit), limits, "{r:?}");
                }
                Err(msg) => assert!(refused(&r, &image(), &HOST).contains(msg), "{r:?}: want {msg}"),
            }
        }
    }

    #[test]
    fn stop_signal_and_timeout_come_from_the_user_then_the_image() {
        let table: [(Option<i32>, Option<&str>, Option<u64>, Option<i64>, Result<(i32, u64), &str>); 7] = [
            (None, None, None, None, Ok((libc::SIGTERM, 10))),
            (None, Some("SIGQUIT"), None, Some(30), Ok((libc::SIGQUIT, 30))),
            (Some(libc::SIGKILL), Some("SIGQUIT"), Some(2), Some(30), Ok((libc::SIGKILL, 2))),
            (None, Some("USR1"), Some(0), None, Ok((libc::SIGUSR1, 0))),
            (None, Some(""), None, Some(-1), Ok((libc::SIGTERM, 10))),
            (None, Some("BOGUS"), None, None, Err("invalid stop signal \"BOGUS\"")),
            (Some(libc::SIGINT), Some("BOGUS"), None, None, Ok((libc::SIGINT, 10))),
        ];
        for (signal, image_signal, timeout, image_timeout, want) in table {
            let r = RunRequest { stop_signal: signal, stop_timeout: timeout, ..req() };
            let img =
                ImageConfig { stop_signal: image_signal.map(String::from), stop_timeout: image_timeout, ..image() };
            match want {
                Ok(w) => {
                    let c = ok(&r, &img, &HOST);
                    assert_eq!((c.stop_signal, c.stop_timeout), w, "{r:?} {img:?}");
                }
                Err(msg) => assert!(refused(&r, &img, &HOST).contains(msg), "want {msg}"),
            }
        }
    }

    #[test]
    fn a_restart_policy_conflicts_with_rm() {
        let table = [
            (RestartPolicy::No, true, None),
            (RestartPolicy::Always, false, None),
            (RestartPolicy::OnFailure { max: 3 }, false, None),
            (RestartPolicy::Always, true, Some("--restart always --rm")),
            (RestartPolicy::UnlessStopped, true, Some("conflicting options")),
            (RestartPolicy::OnFailure { max: 0 }, true, Some("conflicting options")),
        ];
        for (restart, auto_remove, want) in table {
            let r = RunRequest { restart, auto_remove, ..req() };
            match want {
                None => assert_eq!(ok(&r, &image(), &HOST).restart, restart),
                Some(msg) => assert!(refused(&r, &image(), &HOST).contains(msg), "{restart} --rm: want {msg}"),
            }
        }
    }

    #[test]
    fn a_tasks_cluster_networks_replace_the_bridge_and_need_their_addresses() {
        let net = |id: &str, ip: &str| Attachment {
            network: id.into(),
            aliases: strings(&["api"]),
            ip: ip.into(),
            ports: vec![],
            lease: String::new(),
        };
        let r =
            RunRequest { cluster_networks: vec![net("aaaa0000", "10.10.0.2"), net("bbbb0000", "10.20.0.7")], ..req() };
        let c = ok(&r, &image(), &HOST);
        assert_eq!((c.network.as_str(), c.run.network), ("aaaa0000", NetworkMode::None));
        assert_eq!(c.attachments, r.cluster_networks, "by id, with the managers' addresses and the aliases");
        let missing = RunRequest { cluster_networks: vec![net("aaaa0000", "10.10.0.2"), net("bbbb0000", "")], ..req() };
        assert!(refused(&missing, &image(), &HOST).contains("\"bbbb0000\": the task has no address"));
        let no_netd = Host { netd: false, ..HOST };
        assert!(refused(&r, &image(), &no_netd).contains("cluster networks need netd"));
        let port = shoal_proto::net::parse_publish("8080:80").expect("port");
        let ported = RunRequest { publish: vec![port.clone()], ..r.clone() };
        let c = ok(&ported, &image(), &HOST);
        assert_eq!(c.attachments[0].ports, vec![port], "with the first network, for its gateway bridge leg");
        assert!(c.attachments[1].ports.is_empty());
    }

    #[test]
    fn networks_ports_and_aliases_follow_docker() {
        let no_netd = Host { netd: false, ..HOST };
        let port = shoal_proto::net::parse_publish("8080:80").expect("port");
        let table: [(&str, bool, bool, &Host, Result<(&str, NetworkMode, bool), &str>); 11] = [
            ("", false, false, &HOST, Ok(("bridge", NetworkMode::None, true))),
            ("", false, false, &no_netd, Ok(("none", NetworkMode::None, false))),
            ("host", false, false, &HOST, Ok(("host", NetworkMode::Host, false))),
            ("none", false, false, &HOST, Ok(("none", NetworkMode::None, false))),
            ("mynet", true, true, &HOST, Ok(("mynet", NetworkMode::None, true))),
            ("", true, false, &HOST, Ok(("bridge", NetworkMode::None, true))),
            ("mynet", false, false, &no_netd, Err("bridge networks need netd")),
            (
                "host",
                true,
                false,
                &HOST,
                Err("invalid port mapping \"8080:80/tcp\": published ports need a bridge network, not --network host"),
            ),
            ("", true, false, &no_netd, Err("published ports need a bridge network, not --network none")),
            ("bridge", false, true, &HOST, Err("network-scoped aliases are only supported for user-defined networks")),
            ("host", false, true, &HOST, Err("network-scoped aliases")),
        ];
        for (network, publish, alias, host, want) in table {
            let r = RunRequest {
                network: network.into(),
                publish: if publish { vec![port.clone()] } else { vec![] },
                network_aliases: if alias { strings(&["db"]) } else { vec![] },
                ip: "10.0.9.9".into(),
                ..req()
            };
            match want {
                Ok((name, mode, attached)) => {
                    let c = ok(&r, &image(), host);
                    assert_eq!((c.network.as_str(), c.run.network, !c.attachments.is_empty()), (name, mode, attached));
                    if let Some(a) = c.attachments.into_iter().next() {
                        assert_eq!(
                            (a.network, a.aliases, a.ip, a.ports),
                            (name.into(), r.network_aliases, r.ip, r.publish)
                        );
                    }
                }
                Err(msg) => {
                    assert!(refused(&r, &image(), host).contains(msg), "{network} {publish} {alias}: want {msg}")
                }
            }
        }
    }

    #[test]
    fn mounts_are_the_users_then_the_images_volumes() {
        let m = |spec: &str| RequestedMount::volume(spec).expect("a -v spec");
        let img = ImageConfig {
            volumes: Some(
                [("/data".to_string(), serde_json::json!({})), ("/cache".into(), serde_json::json!({}))].into(),
            ),
            ..image()
        };
        let targets = |c: &ContainerConfig| c.mounts.iter().map(|m| m.mount.target.clone()).collect::<Vec<_>>();
        let c = ok(&req(), &img, &HOST);
        assert_eq!(targets(&c), strings(&["/cache", "/data"]));
        assert!(c.mounts.iter().all(|m| m.mount.source == MountSource::Volume(String::new()) && !m.mount.read_only));
        let r = RunRequest {
            mounts: vec![
                m("/srv:/data:ro"),
                RequestedMount::tmpfs("/run").expect("tmpfs"),
                RequestedMount::mount("type=volume,source=logs,target=/logs").expect("--mount"),
            ],
            ..req()
        };
        let c = ok(&r, &img, &HOST);
        assert_eq!(targets(&c), strings(&["/data", "/run", "/logs", "/cache"]));
        assert_eq!(c.mounts[0], m("/srv:/data:ro"), "the user's mount replaces the image's VOLUME");
        assert_eq!(c.mounts[2].flag, BindFlag::Mount);
        assert_eq!(c.run.mounts, vec![], "spec mounts are left to run");
        let r = RunRequest { mounts: vec![m("a:/x"), m("/h:/x")], ..req() };
        assert_eq!(refused(&r, &img, &HOST), "invalid mounts \"/x\": duplicate mount point");
    }

    #[test]
    fn the_rest_of_the_request_is_carried_over() {
        let hc = HostConfig {
            read_only: true,
            cap_add: strings(&["NET_ADMIN"]),
            cap_drop: strings(&["ALL"]),
            log_opts: [("max-size".into(), "4k".into()), ("max-file".into(), "1".into())].into(),
            ..HostConfig::default()
        };
        let r = RunRequest { tty: true, host_config: hc.clone(), ..req() };
        let c = ok(&r, &image(), &HOST);
        assert_eq!(
            (c.run.read_only, c.run.cap_add, c.run.cap_drop, c.run.terminal, c.log, c.run.netns),
            (true, hc.cap_add.clone(), hc.cap_drop.clone(), true, LogConfig { max_size: 4096, max_files: 1 }, None)
        );
        assert_eq!(c.host, hc, "recorded as asked");
        let img = ImageConfig {
            healthcheck: Some(serde_json::json!({"Test": ["CMD", "true"], "Interval": 1_000_000_000})),
            ..image()
        };
        assert_eq!(ok(&req(), &img, &HOST).health.map(|h| h.argv()), Some(strings(&["true"])));
        let none = RunRequest {
            health: HealthSetting { test: shoal_proto::health::HealthTest::None, ..Default::default() },
            ..req()
        };
        assert_eq!(ok(&none, &img, &HOST).health, None);
    }

    #[test]
    fn the_host_config_is_checked_and_carried_into_the_spec() {
        let hc = HostConfig {
            sysctls: [("net.core.somaxconn".into(), "1024".into())].into(),
            ulimits: vec![shoal_proto::container::Ulimit::parse("nofile=100:200").expect("ulimit")],
            ..HostConfig::default()
        };
        let c = ok(&RunRequest { host_config: hc.clone(), ..req() }, &image(), &HOST);
        assert_eq!((c.run.sysctls, c.run.ulimits), (hc.sysctls.clone(), hc.ulimits.clone()));
        let with = |hc: HostConfig, network: &str| RunRequest { host_config: hc, network: network.into(), ..req() };
        let table: [(RunRequest, &str); 5] = [
            (
                with(
                    HostConfig { sysctls: [("kernel.hostname".into(), "x".into())].into(), ..HostConfig::default() },
                    "",
                ),
                "invalid host config: sysctl \"kernel.hostname\" is not allowed",
            ),
            (
                with(hc.clone(), "host"),
                "invalid sysctl \"net.core.somaxconn\": net.* sysctls are not allowed with --network host",
            ),
            (
                with(HostConfig { log_opts: [("max-size".into(), "1".into())].into(), ..HostConfig::default() }, ""),
                "invalid log option \"max-size=1\"",
            ),
            (
                with(HostConfig { log_driver: "syslog".into(), ..HostConfig::default() }, ""),
                "invalid host config: log driver \"syslog\" is not supported",
            ),
            (with(HostConfig { init: true, ..HostConfig::default() }, ""), "apt-get install tini"),
        ];
        for (r, want) in table {
            let got = refused(&r, &image(), &HOST);
            assert!(got.contains(want), "{got}: want {want}");
        }
        // IPC sysctls are the container's own even with the host's network.
        let ipc = HostConfig { sysctls: [("kernel.shmmax".into(), "1".into())].into(), ..HostConfig::default() };
        assert_eq!(ok(&with(ipc, "host"), &image(), &HOST).run.network, NetworkMode::Host);
    }

    #[test]
    fn init_runs_the_command_under_docker_init() {
        let host = Host { init: Some(PathBuf::from("/usr/bin/tini-static")), ..HOST };
        let r = RunRequest { host_config: HostConfig { init: true, ..HostConfig::default() }, ..req() };
        let c = ok(&r, &image(), &host);
        assert_eq!(c.run.args, strings(&["/sbin/docker-init", "--", "/entry", "serve"]));
        assert_eq!(c.run.init, Some(PathBuf::from("/usr/bin/tini-static")));
        let bare = ImageConfig { entrypoint: None, cmd: None, ..image() };
        assert_eq!(ok(&r, &bare, &host).run.args, Vec::<String>::new(), "no command: still refused by the spec");
        assert_eq!(ok(&req(), &image(), &host).run.init, None, "only with --init");
    }

    #[test]
    fn the_init_is_the_daemons_flag_or_found_on_path() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&a).expect("a");
        std::fs::create_dir_all(&b).expect("b");
        let path = std::env::join_paths([&a, &b]).expect("path").into_string().expect("utf-8");
        assert_eq!(find_init(None, &path), None);
        std::fs::write(b.join("tini-static"), "").expect("tini");
        assert_eq!(find_init(None, &path), Some(b.join("tini-static")));
        std::fs::write(b.join("docker-init"), "").expect("docker-init");
        assert_eq!(find_init(None, &path), Some(b.join("docker-init")), "docker-init first");
        assert_eq!(find_init(Some(Path::new("/opt/init")), &path), Some(PathBuf::from("/opt/init")));
    }
}
