//! The OCI runtime config for a container, built with `oci-spec` from what a
//! user asked for (`RunSpec`) and the image's defaults. Pure: no I/O beyond
//! reading the container's own /etc/passwd and /etc/group for user names.
//! Defaults follow Docker's: its capability set, masked and read-only /proc
//! paths, minimal /dev, no-new-privileges, pid/mnt/uts/ipc/net namespaces.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
    LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Spec, UserBuilder,
};
use shoal_proto::container::Ulimit;

/// What to run and with which limits, after the image's defaults were applied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// `USER[:GROUP]`, names or numbers; empty means root.
    pub user: String,
    pub hostname: String,
    pub memory_bytes: Option<i64>,
    /// CPUs as a fraction (0.5 = half a core).
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub read_only: bool,
    pub network: NetworkMode,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub mounts: Vec<SpecMount>,
    /// `-t`: the process gets a pseudo-terminal.
    pub terminal: bool,
    /// Join this network namespace (made and plumbed by netd) instead of a new one.
    pub netns: Option<std::path::PathBuf>,
    /// `--sysctl`: written by the container's init in its own namespaces.
    pub sysctls: BTreeMap<String, String>,
    /// `--ulimit`: the process's rlimits (each replaces the default of its kind).
    pub ulimits: Vec<Ulimit>,
    /// `--init`: the host's static init, bound read-only at `/sbin/docker-init`
    /// (the args already start with it).
    pub init: Option<std::path::PathBuf>,
}

/// A resolved mount: a host directory bound in, or a fresh tmpfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecMount {
    /// None: a tmpfs.
    pub source: Option<std::path::PathBuf>,
    pub target: String,
    pub read_only: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// Its own network namespace with only loopback.
    #[default]
    None,
    /// The host's network namespace.
    Host,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("unable to find user {0}: no matching entries in the container's /etc/passwd")]
    NoUser(String),
    #[error("unable to find group {0}: no matching entries in the container's /etc/group")]
    NoGroup(String),
    #[error("invalid capability {0:?}: use names like NET_ADMIN or CAP_NET_ADMIN, or ALL")]
    BadCapability(String),
    #[error("no command specified: the image has no Cmd or Entrypoint; give one after the image name")]
    NoCommand,
    #[error("building the OCI config: {0}")]
    Build(String),
}

fn build_err(e: impl std::fmt::Display) -> SpecError {
    SpecError::Build(e.to_string())
}

/// Docker's default capability set.
pub const DEFAULT_CAPS: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

fn cap_name(s: &str) -> String {
    let up = s.trim().to_ascii_uppercase();
    up.strip_prefix("CAP_").map(str::to_string).unwrap_or(up)
}

/// The effective capability names after `--cap-add` / `--cap-drop`.
pub fn capabilities(add: &[String], drop: &[String]) -> Result<BTreeSet<String>, SpecError> {
    let all: Vec<String> = all_caps().iter().map(|c| cap_name(&c.to_string())).collect();
    let valid = |n: &str| n == "ALL" || all.iter().any(|a| a == n);
    let mut set: BTreeSet<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
    for d in drop {
        let n = cap_name(d);
        if !valid(&n) {
            return Err(SpecError::BadCapability(d.clone()));
        }
        if n == "ALL" {
            set.clear();
        } else {
            set.remove(&n);
        }
    }
    for a in add {
        let n = cap_name(a);
        if !valid(&n) {
            return Err(SpecError::BadCapability(a.clone()));
        }
        if n == "ALL" {
            set.extend(all.iter().cloned());
        } else {
            set.insert(n);
        }
    }
    Ok(set)
}

fn all_caps() -> Vec<Capability> {
    use Capability::*;
    vec![
        AuditControl,
        AuditRead,
        AuditWrite,
        BlockSuspend,
        Bpf,
        CheckpointRestore,
        Chown,
        DacOverride,
        DacReadSearch,
        Fowner,
        Fsetid,
        IpcLock,
        IpcOwner,
        Kill,
        Lease,
        LinuxImmutable,
        MacAdmin,
        MacOverride,
        Mknod,
        NetAdmin,
        NetBindService,
        NetBroadcast,
        NetRaw,
        Perfmon,
        Setgid,
        Setfcap,
        Setpcap,
        Setuid,
        SysAdmin,
        SysBoot,
        SysChroot,
        SysModule,
        SysNice,
        SysPacct,
        SysPtrace,
        SysRawio,
        SysResource,
        SysTime,
        SysTtyConfig,
        Syslog,
        WakeAlarm,
    ]
}

/// The `RLIMIT_` resource of a Docker ulimit name (`HostConfig::validate` checked it).
fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    use PosixRlimitType::*;
    Some(match name {
        "core" => RlimitCore,
        "cpu" => RlimitCpu,
        "data" => RlimitData,
        "fsize" => RlimitFsize,
        "locks" => RlimitLocks,
        "memlock" => RlimitMemlock,
        "msgqueue" => RlimitMsgqueue,
        "nice" => RlimitNice,
        "nofile" => RlimitNofile,
        "nproc" => RlimitNproc,
        "rss" => RlimitRss,
        "rtprio" => RlimitRtprio,
        "rttime" => RlimitRttime,
        "sigpending" => RlimitSigpending,
        "stack" => RlimitStack,
        _ => return None,
    })
}

/// The process's rlimits: the defaults, each kind the user gave replaced
/// (-1 is unlimited: `RLIM_INFINITY`).
fn rlimits(defaults: Vec<PosixRlimit>, ulimits: &[Ulimit]) -> Result<Vec<PosixRlimit>, SpecError> {
    let limit = |v: i64| u64::try_from(v).unwrap_or(u64::MAX);
    let mut out: Vec<PosixRlimit> = Vec::new();
    for u in ulimits {
        let typ = rlimit_type(&u.name).ok_or_else(|| SpecError::Build(format!("unknown ulimit {:?}", u.name)))?;
        let r = PosixRlimitBuilder::default().typ(typ).soft(limit(u.soft)).hard(limit(u.hard)).build();
        out.push(r.map_err(build_err)?);
    }
    let given: Vec<PosixRlimitType> = out.iter().map(|r| r.typ()).collect();
    let kept = defaults.into_iter().filter(|d| !given.contains(&d.typ()));
    Ok(kept.chain(out).collect())
}

fn to_caps(names: &BTreeSet<String>) -> Result<oci_spec::runtime::Capabilities, SpecError> {
    names.iter().map(|n| n.parse::<Capability>().map_err(|_| SpecError::BadCapability(n.clone()))).collect()
}

/// Resolves `USER[:GROUP]` against the container's /etc/passwd and /etc/group.
pub fn resolve_user(user: &str, passwd: &str, group: &str) -> Result<(u32, u32, Vec<u32>), SpecError> {
    if user.is_empty() {
        return Ok((0, 0, vec![]));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let pw: Vec<Vec<&str>> =
        passwd.lines().map(|l| l.split(':').collect()).filter(|f: &Vec<&str>| f.len() >= 4).collect();
    let gr: Vec<Vec<&str>> =
        group.lines().map(|l| l.split(':').collect()).filter(|f: &Vec<&str>| f.len() >= 3).collect();
    let (uid, name, primary) = match u.parse::<u32>() {
        Ok(uid) => {
            let entry = pw.iter().find(|f| f[2] == u);
            (uid, entry.map(|f| f[0].to_string()), entry.and_then(|f| f[3].parse().ok()))
        }
        Err(_) => {
            let f = pw.iter().find(|f| f[0] == u).ok_or_else(|| SpecError::NoUser(u.to_string()))?;
            (f[2].parse().map_err(|_| SpecError::NoUser(u.to_string()))?, Some(u.to_string()), f[3].parse().ok())
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => gr
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| SpecError::NoGroup(g.to_string()))?,
        },
        None => primary.unwrap_or(0),
    };
    // Supplementary groups: the groups that list the user by name.
    let extra = match (&name, g) {
        (Some(n), None) => gr
            .iter()
            .filter(|f| f.get(3).is_some_and(|m| m.split(',').any(|x| x == n)))
            .filter_map(|f| f[2].parse().ok())
            .filter(|x| *x != gid)
            .collect(),
        _ => vec![],
    };
    Ok((uid, gid, extra))
}

/// The OCI config for `run`, with `rootfs` as the root and the container's
/// cgroup at `cgroups_path`. `etc` reads a file of the container's /etc.
pub fn oci_spec(
    run: &RunSpec,
    rootfs: &Path,
    cgroups_path: &str,
    etc: impl Fn(&str) -> String,
) -> Result<Spec, SpecError> {
    if run.args.is_empty() {
        return Err(SpecError::NoCommand);
    }
    let mut spec = Spec::default();
    spec.set_hostname(Some(run.hostname.clone()));
    let mut root = spec.root().clone().unwrap_or_default();
    root.set_path(rootfs.to_path_buf());
    root.set_readonly(Some(run.read_only));
    spec.set_root(Some(root));

    let (uid, gid, extra) = resolve_user(&run.user, &etc("passwd"), &etc("group"))?;
    let user = UserBuilder::default().uid(uid).gid(gid).additional_gids(extra).build().map_err(build_err)?;
    let cap_names = capabilities(&run.cap_add, &run.cap_drop)?;
    let caps = to_caps(&cap_names)?;
    let caps = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(build_err)?;
    let mut process = spec.process().clone().unwrap_or_default();
    process.set_args(Some(run.args.clone()));
    let mut env = run.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
        env.push(format!("HOSTNAME={}", run.hostname));
    }
    if run.terminal && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    process.set_env(Some(env));
    process.set_cwd(if run.cwd.is_empty() { "/".into() } else { run.cwd.clone().into() });
    process.set_user(user);
    process.set_capabilities(Some(caps));
    process.set_no_new_privileges(Some(true));
    process.set_terminal(Some(run.terminal));
    let defaults = process.rlimits().clone().unwrap_or_default();
    process.set_rlimits(Some(rlimits(defaults, &run.ulimits)?));
    spec.set_process(Some(process));

    // Docker mounts /sys read-only and gives each container its own /dev/shm.
    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    for m in mounts.iter_mut() {
        if m.destination() == Path::new("/sys") {
            let mut opts = m.options().clone().unwrap_or_default();
            if !opts.iter().any(|o| o == "ro") {
                opts.push("ro".into());
            }
            m.set_options(Some(opts));
        }
    }
    for m in &run.mounts {
        let mount = match &m.source {
            Some(src) => oci_spec::runtime::MountBuilder::default()
                .destination(&m.target)
                .typ("bind")
                .source(src)
                .options(vec!["rbind".to_string(), if m.read_only { "ro" } else { "rw" }.to_string()])
                .build(),
            // Docker's --tmpfs defaults.
            None => oci_spec::runtime::MountBuilder::default()
                .destination(&m.target)
                .typ("tmpfs")
                .source("tmpfs")
                .options(["rw", "noexec", "nosuid", "nodev", "size=65536k"].map(String::from).to_vec())
                .build(),
        };
        mounts.push(mount.map_err(build_err)?);
    }
    if let Some(init) = &run.init {
        let mount = oci_spec::runtime::MountBuilder::default()
            .destination(super::request::INIT_TARGET)
            .typ("bind")
            .source(init)
            .options(["bind", "ro"].map(String::from).to_vec())
            .build();
        mounts.push(mount.map_err(build_err)?);
    }
    spec.set_mounts(Some(mounts));

    let mut resources = LinuxResourcesBuilder::default();
    let allow = |t: LinuxDeviceType, major: i64, minor: Option<i64>| {
        let b = LinuxDeviceCgroupBuilder::default().allow(true).typ(t).major(major).access("rwm");
        match minor {
            Some(m) => b.minor(m).build(),
            None => b.build(), // every minor
        }
    };
    let mut devices = vec![LinuxDeviceCgroupBuilder::default().allow(false).access("rwm").build().map_err(build_err)?];
    for (major, minor) in
        [(1, Some(3)), (1, Some(5)), (1, Some(7)), (1, Some(8)), (1, Some(9)), (5, Some(0)), (5, Some(2)), (136, None)]
    {
        devices.push(allow(LinuxDeviceType::C, major, minor).map_err(build_err)?);
    }
    resources = resources.devices(devices);
    if let Some(mem) = run.memory_bytes {
        // Swap equal to memory: no swap, as `docker run --memory` without --memory-swap allows 2x.
        resources = resources.memory(LinuxMemoryBuilder::default().limit(mem).swap(mem).build().map_err(build_err)?);
    }
    if let Some(cpus) = run.cpus {
        let period: u64 = 100_000;
        let quota = (cpus * period as f64).round() as i64;
        resources = resources.cpu(LinuxCpuBuilder::default().period(period).quota(quota).build().map_err(build_err)?);
    }
    if let Some(p) = run.pids_limit {
        resources = resources.pids(LinuxPidsBuilder::default().limit(p).build().map_err(build_err)?);
    }
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_resources(Some(resources.build().map_err(build_err)?));
    linux.set_cgroups_path(Some(cgroups_path.into()));
    if !run.sysctls.is_empty() {
        linux.set_sysctl(Some(run.sysctls.clone().into_iter().collect()));
    }
    let namespaces: Vec<LinuxNamespace> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| !(run.network == NetworkMode::Host && ns.typ() == LinuxNamespaceType::Network))
        .filter(|ns| ns.typ() != LinuxNamespaceType::Cgroup)
        .map(|mut ns| {
            if ns.typ() == LinuxNamespaceType::Network
                && let Some(p) = &run.netns
            {
                ns.set_path(Some(p.clone()));
            }
            ns
        })
        .collect();
    linux.set_namespaces(Some(namespaces));
    linux.set_seccomp(Some(super::seccomp::filter(&cap_names)?));
    spec.set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:www:/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwww:x:34:\nstaff:x:50:www,other\n";

    fn run() -> RunSpec {
        RunSpec { args: vec!["sh".into()], hostname: "c1".into(), ..Default::default() }
    }

    fn build(r: &RunSpec) -> Spec {
        oci_spec(r, Path::new("/r"), "/shoal/c1", |f| match f {
            "passwd" => PASSWD.into(),
            "group" => GROUP.into(),
            _ => String::new(),
        })
        .expect("spec")
    }

    #[test]
    fn users_resolve_by_name_number_and_group() {
        assert_eq!(resolve_user("", PASSWD, GROUP), Ok((0, 0, vec![])));
        assert_eq!(resolve_user("www", PASSWD, GROUP), Ok((33, 34, vec![50])));
        assert_eq!(resolve_user("33", PASSWD, GROUP), Ok((33, 34, vec![50])));
        assert_eq!(resolve_user("1000:1000", PASSWD, GROUP), Ok((1000, 1000, vec![])));
        assert_eq!(resolve_user("www:staff", PASSWD, GROUP), Ok((33, 50, vec![])));
        assert_eq!(resolve_user("nobody", PASSWD, GROUP), Err(SpecError::NoUser("nobody".into())));
        assert_eq!(resolve_user("www:wheel", PASSWD, GROUP), Err(SpecError::NoGroup("wheel".into())));
    }

    #[test]
    fn the_managers_know_the_same_capabilities_as_the_runtime() {
        let ours: BTreeSet<String> = all_caps().iter().map(|c| cap_name(&c.to_string())).collect();
        let theirs: BTreeSet<String> = shoal_proto::container::CAPABILITIES.iter().map(|c| c.to_string()).collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn capabilities_follow_docker() {
        let caps = capabilities(&[], &[]).expect("caps");
        assert_eq!(caps.len(), DEFAULT_CAPS.len());
        assert!(!caps.contains("SYS_ADMIN"));
        let caps = capabilities(&["cap_net_admin".into()], &["NET_RAW".into()]).expect("caps");
        assert!(caps.contains("NET_ADMIN") && !caps.contains("NET_RAW"));
        let caps = capabilities(&["CHOWN".into()], &["ALL".into()]).expect("caps");
        assert_eq!(caps.into_iter().collect::<Vec<_>>(), vec!["CHOWN"]);
        assert!(capabilities(&["ALL".into()], &[]).expect("all").contains("SYS_ADMIN"));
        assert_eq!(capabilities(&["FLY".into()], &[]), Err(SpecError::BadCapability("FLY".into())));
    }

    #[test]
    fn limits_namespaces_and_defaults() {
        let mut r = run();
        r.memory_bytes = Some(64 << 20);
        r.cpus = Some(0.5);
        r.pids_limit = Some(20);
        let s = build(&r);
        let linux = s.linux().as_ref().expect("linux");
        let res = linux.resources().as_ref().expect("resources");
        assert_eq!(res.memory().as_ref().and_then(|m| m.limit()), Some(64 << 20));
        assert_eq!(res.cpu().as_ref().and_then(|c| c.quota()), Some(50_000));
        assert_eq!(res.cpu().as_ref().and_then(|c| c.period()), Some(100_000));
        assert_eq!(res.pids().as_ref().map(|p| p.limit()), Some(20));
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/shoal/c1")));
        let ns: Vec<LinuxNamespaceType> =
            linux.namespaces().clone().unwrap_or_default().iter().map(|n| n.typ()).collect();
        for t in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Network,
        ] {
            assert!(ns.contains(&t), "{t:?} in {ns:?}");
        }
        assert!(linux.masked_paths().as_ref().is_some_and(|p| p.iter().any(|x| x == "/proc/kcore")));
        let p = s.process().as_ref().expect("process");
        assert_eq!(p.no_new_privileges(), Some(true));
        assert!(
            p.env()
                .as_ref()
                .is_some_and(|e| e.iter().any(|x| x.starts_with("PATH=")) && e.contains(&"HOSTNAME=c1".to_string()))
        );
        let sys = s.mounts().as_ref().and_then(|m| m.iter().find(|m| m.destination() == Path::new("/sys")).cloned());
        assert!(sys.and_then(|m| m.options().clone()).is_some_and(|o| o.iter().any(|x| x == "ro")));
        // --network host keeps the host's network namespace
        r.network = NetworkMode::Host;
        let ns = build(&r).linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
        assert!(!ns.iter().any(|n| n.typ() == LinuxNamespaceType::Network));
    }

    #[test]
    fn every_container_gets_the_seccomp_allowlist() {
        let s = build(&run());
        let sc = s.linux().as_ref().and_then(|l| l.seccomp().clone()).expect("a seccomp filter");
        assert_eq!(sc.default_action(), oci_spec::runtime::LinuxSeccompAction::ScmpActErrno);
    }

    #[test]
    fn a_container_needs_a_command() {
        let r = RunSpec::default();
        assert_eq!(oci_spec(&r, Path::new("/r"), "/x", |_| String::new()).unwrap_err(), SpecError::NoCommand);
    }

    #[test]
    fn ulimits_sysctls_and_init_reach_the_oci_config() {
        let mut r = run();
        r.ulimits = ["nofile=100:200", "core=-1"].iter().map(|u| Ulimit::parse(u).expect("ulimit")).collect();
        r.sysctls = [("net.core.somaxconn".to_string(), "1024".to_string())].into();
        r.init = Some("/usr/bin/tini-static".into());
        let s = build(&r);
        let limits: Vec<(PosixRlimitType, u64, u64)> = s
            .process()
            .as_ref()
            .and_then(|p| p.rlimits().clone())
            .unwrap_or_default()
            .iter()
            .map(|l| (l.typ(), l.soft(), l.hard()))
            .collect();
        assert_eq!(
            limits,
            [(PosixRlimitType::RlimitNofile, 100, 200), (PosixRlimitType::RlimitCore, u64::MAX, u64::MAX)],
            "the user's nofile replaces the default one"
        );
        let sysctl = s.linux().as_ref().and_then(|l| l.sysctl().clone()).expect("sysctls");
        assert_eq!(sysctl.get("net.core.somaxconn").map(String::as_str), Some("1024"));
        let init = s
            .mounts()
            .as_ref()
            .and_then(|m| m.iter().find(|m| m.destination() == Path::new("/sbin/docker-init")).cloned());
        let init = init.expect("the init is bound in");
        assert_eq!(init.source().as_deref(), Some(Path::new("/usr/bin/tini-static")));
        assert!(init.options().as_ref().is_some_and(|o| o.iter().any(|x| x == "ro")));
        // Without them: the default nofile, no sysctls, no init.
        let s = build(&run());
        let limits = s.process().as_ref().and_then(|p| p.rlimits().clone()).unwrap_or_default();
        assert_eq!(
            limits.iter().map(|l| (l.typ(), l.soft())).collect::<Vec<_>>(),
            [(PosixRlimitType::RlimitNofile, 1024)]
        );
        assert!(s.linux().as_ref().and_then(|l| l.sysctl().clone()).is_none_or(|m| m.is_empty()));
        assert!(
            !s.mounts().as_ref().is_some_and(|m| m.iter().any(|m| m.destination() == Path::new("/sbin/docker-init")))
        );
    }

    #[test]
    fn every_docker_ulimit_name_has_its_rlimit() {
        for name in shoal_proto::container::ULIMITS {
            assert!(rlimit_type(name).is_some(), "{name}");
        }
    }
}
