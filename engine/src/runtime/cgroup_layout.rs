//! Where containers' cgroups go, made valid before the first container starts.
//!
//! cgroup v2 has a rule v1 lacks: a cgroup whose children use domain
//! controllers (memory, io) holds no process of its own, and enabling a
//! threaded controller (cpu, pids) in a cgroup that has processes turns it
//! into a thread root, under which no container can be placed
//! (`cgroup.procs: Operation not supported`). libcontainer enables the
//! controllers down to each container's cgroup on its own but ignores
//! failures, so a bad layout shows only at the first container, as an
//! obscure error. The daemon therefore lays out the containers' parent once
//! at start: every cgroup from the mount root down to the parent gets the
//! controllers the containers need, and none of them below the root may hold
//! a process. When the daemon's own cgroup is the parent or above it (a
//! systemd service with `Delegate=yes` and a `--cgroup-parent` inside the
//! service's cgroup), the daemon moves itself into a leaf of its own
//! (`<own>/daemon`), as systemd's delegation rules ask a delegated service
//! to do. The default parent `/shoal` is a sibling of systemd's slices, as
//! Docker's cgroupfs driver puts `/docker`, and needs no move.
//!
//! v1 has no such rule: every hierarchy is independent and libcontainer
//! creates the directories per controller, so the plan is empty there.
//!
//! [`plan`] is pure (it takes the mount root, what the kernel offers and the
//! daemon's own cgroup, and returns the steps), [`apply`] carries the steps
//! out, [`prepare`] observes the host and does both. Tests run them on a
//! temp dir.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Controllers that containers' limits use, in the order they are enabled:
/// the domain controllers (io, memory, hugetlb) first, so that a cgroup that
/// still has processes fails with EBUSY before a threaded controller can turn
/// it into a thread root.
const WANTED: [&str; 6] = ["memory", "io", "hugetlb", "cpuset", "cpu", "pids"];

/// The leaf the daemon moves into when its own cgroup would hold the
/// containers' cgroups (container cgroups are named by 64 hex digits, so
/// this name never collides with one).
pub const DAEMON_LEAF: &str = "daemon";

/// The cgroup v2 mount on a host.
pub const HOST_ROOT: &str = "/sys/fs/cgroup";

/// One step of laying out the containers' parent cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create this cgroup (a directory) if it is missing; its parent exists
    /// (steps come top-down).
    Mkdir(PathBuf),
    /// This cgroup must hold no process: the containers' cgroups go below it.
    NoProcesses(PathBuf),
    /// Write `text` to `file` (`cgroup.subtree_control` or `cgroup.procs`).
    Write { file: PathBuf, text: String },
}

/// What [`plan`] needs to know about the host.
#[derive(Clone, Debug)]
pub struct Host<'a> {
    /// Whether the mount is cgroup v2 (the unified hierarchy).
    pub v2: bool,
    /// Where the hierarchy is mounted (/sys/fs/cgroup; a temp dir in tests).
    pub root: &'a Path,
    /// The controllers the root offers (its `cgroup.controllers`).
    pub controllers: &'a [String],
    /// The daemon's own cgroup (from /proc/self/cgroup), relative to `root`.
    pub own: Option<&'a str>,
    /// The daemon's pid, for moving it into a leaf.
    pub pid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("invalid --cgroup-parent {parent:?}: {why}")]
    BadParent { parent: String, why: &'static str },
    #[error(
        "cgroup {path} holds processes ({pids}) and would also hold the containers' cgroups, which cgroup v2 \
         forbids; move those processes to a leaf cgroup (for example {path}/init) or pick a --cgroup-parent outside it"
    )]
    Busy { path: PathBuf, pids: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// The components of a cgroup path (`/a/b`, `a/b/` → `[a, b]`); `/` and ""
/// are the root (no components).
fn components<'p>(parent: &str, path: &'p str) -> Result<Vec<&'p str>, CgroupError> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        return Err(CgroupError::BadParent { parent: parent.to_owned(), why: "it must not contain . or .." });
    }
    Ok(parts)
}

/// The steps that make `parent` a valid home for containers' cgroups.
///
/// v1: none. v2: if the daemon's own cgroup (other than the root, which may
/// hold processes) is `parent` or above it, the daemon first moves into
/// `<own>/daemon`; then, top-down, the root gets the wanted controllers it
/// offers, and every cgroup from the root's child down to `parent` is
/// created, checked to hold no process, and gets the same controllers.
pub fn plan(host: &Host<'_>, parent: &str) -> Result<Vec<Step>, CgroupError> {
    let parts = components(parent, parent)?;
    if !host.v2 {
        return Ok(Vec::new());
    }
    let mut steps = Vec::new();
    if let Some(own) = host.own {
        let own_parts = components(parent, own)?;
        if !own_parts.is_empty() && parts.starts_with(&own_parts) {
            let leaf = own_parts.iter().fold(host.root.to_path_buf(), |p, c| p.join(c)).join(DAEMON_LEAF);
            steps.push(Step::Mkdir(leaf.clone()));
            steps.push(Step::Write { file: leaf.join("cgroup.procs"), text: format!("{}\n", host.pid) });
        }
    }
    let enable: Vec<&str> = WANTED.iter().copied().filter(|w| host.controllers.iter().any(|c| c == w)).collect();
    let subtree = |dir: &Path, steps: &mut Vec<Step>| {
        for c in &enable {
            steps.push(Step::Write { file: dir.join("cgroup.subtree_control"), text: format!("+{c}\n") });
        }
    };
    subtree(host.root, &mut steps);
    let mut dir = host.root.to_path_buf();
    for c in parts {
        dir.push(c);
        steps.push(Step::Mkdir(dir.clone()));
        steps.push(Step::NoProcesses(dir.clone()));
        subtree(&dir, &mut steps);
    }
    Ok(steps)
}

/// The pids in a cgroup (none when its `cgroup.procs` is missing: a fresh
/// directory in a test).
fn procs(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn busy(dir: &Path) -> CgroupError {
    CgroupError::Busy { path: dir.to_path_buf(), pids: procs(dir).join(" ") }
}

/// Carries out the steps of [`plan`], in order. A controller the kernel
/// refuses for another reason than processes in the way (EBUSY) is logged and
/// skipped: the limits that need it fail when a container asks for them, as
/// they would without this step.
pub fn apply(steps: &[Step]) -> Result<(), CgroupError> {
    for step in steps {
        match step {
            Step::Mkdir(dir) => {
                if !dir.is_dir() {
                    std::fs::create_dir(dir).map_err(|source| CgroupError::Io {
                        what: "creating cgroup",
                        path: dir.clone(),
                        source,
                    })?;
                }
            }
            Step::NoProcesses(dir) => {
                if !procs(dir).is_empty() {
                    return Err(busy(dir));
                }
            }
            Step::Write { file, text } => {
                let written = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(file)
                    .and_then(|mut f| f.write_all(text.as_bytes()));
                let Err(source) = written else { continue };
                let dir = file.parent().unwrap_or(Path::new("/"));
                let is_subtree = file.file_name().is_some_and(|n| n == "cgroup.subtree_control");
                if is_subtree && source.raw_os_error() == Some(libc::EBUSY) {
                    return Err(busy(dir));
                }
                if is_subtree {
                    tracing::warn!(path = %file.display(), controller = text.trim(), error = %source,
                        "cannot enable a cgroup controller; container limits that need it will fail");
                } else {
                    return Err(CgroupError::Io { what: "writing", path: file.clone(), source });
                }
            }
        }
    }
    Ok(())
}

/// This process's cgroup v2 path from the text of /proc/self/cgroup (the
/// `0::PATH` line); None on a v1-only host.
pub fn own_cgroup(proc_self_cgroup: &str) -> Option<&str> {
    proc_self_cgroup.lines().find_map(|l| l.strip_prefix("0::")).map(str::trim)
}

/// Observes the host's cgroup mount at `root` and this process, then plans
/// and applies the layout for `parent`. Idempotent: a restarted daemon finds
/// everything in place.
pub fn prepare(root: &Path, parent: &str) -> Result<(), CgroupError> {
    let v2 = root.join("cgroup.controllers").exists();
    let controllers: Vec<String> = std::fs::read_to_string(root.join("cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let host = Host { v2, root, controllers: &controllers, own: own_cgroup(&self_cgroup), pid: std::process::id() };
    let steps = plan(&host, parent)?;
    apply(&steps)?;
    for step in &steps {
        if let Step::Write { file, .. } = step
            && file.ends_with("cgroup.procs")
        {
            tracing::info!(cgroup = %file.parent().unwrap_or(root).display(),
                "moved the daemon into a leaf cgroup: its own cgroup holds the containers' cgroups (cgroup v2)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<String> {
        "cpuset cpu io memory hugetlb pids rdma misc".split(' ').map(str::to_owned).collect()
    }

    fn host<'a>(v2: bool, root: &'a Path, controllers: &'a [String], own: Option<&'a str>) -> Host<'a> {
        Host { v2, root, controllers, own, pid: 4242 }
    }

    fn enable(dir: &Path, cs: &[&str]) -> Vec<Step> {
        cs.iter().map(|c| Step::Write { file: dir.join("cgroup.subtree_control"), text: format!("+{c}\n") }).collect()
    }

    fn level(dir: &Path, cs: &[&str]) -> Vec<Step> {
        let mut v = vec![Step::Mkdir(dir.to_path_buf()), Step::NoProcesses(dir.to_path_buf())];
        v.extend(enable(dir, cs));
        v
    }

    const DOMAIN_FIRST: [&str; 6] = ["memory", "io", "hugetlb", "cpuset", "cpu", "pids"];

    #[test]
    fn plans_by_version_parent_and_own_cgroup() {
        let r = Path::new("/cg");
        let all = all();
        let some: Vec<String> = vec!["pids".into(), "memory".into(), "cpu".into()];
        let none: Vec<String> = Vec::new();
        let move_to = |leaf: &str| {
            vec![
                Step::Mkdir(r.join(leaf)),
                Step::Write { file: r.join(leaf).join("cgroup.procs"), text: "4242\n".into() },
            ]
        };
        let cases: Vec<(&str, Host<'_>, &str, Vec<Step>)> = vec![
            ("v1: libcontainer makes each hierarchy's directories", host(false, r, &none, None), "/shoal", vec![]),
            ("v1 ignores the daemon's own cgroup", host(false, r, &none, Some("/shoal")), "/shoal", vec![]),
            (
                "v2, default parent beside the daemon's service",
                host(true, r, &all, Some("/system.slice/shoal.service")),
                "/shoal",
                [enable(r, &DOMAIN_FIRST), level(&r.join("shoal"), &DOMAIN_FIRST)].concat(),
            ),
            (
                "v2, the lab: the host's processes in a leaf beside the containers' parent",
                host(true, r, &some, Some("/shl-h1/host")),
                "/shl-h1/shoal/",
                [
                    enable(r, &["memory", "cpu", "pids"]),
                    level(&r.join("shl-h1"), &["memory", "cpu", "pids"]),
                    level(&r.join("shl-h1/shoal"), &["memory", "cpu", "pids"]),
                ]
                .concat(),
            ),
            (
                "v2, parent inside the daemon's cgroup: the daemon moves to a leaf first",
                host(true, r, &some, Some("/system.slice/shoal.service")),
                "/system.slice/shoal.service/containers",
                [
                    move_to("system.slice/shoal.service/daemon"),
                    enable(r, &["memory", "cpu", "pids"]),
                    level(&r.join("system.slice"), &["memory", "cpu", "pids"]),
                    level(&r.join("system.slice/shoal.service"), &["memory", "cpu", "pids"]),
                    level(&r.join("system.slice/shoal.service/containers"), &["memory", "cpu", "pids"]),
                ]
                .concat(),
            ),
            (
                "v2, parent is the daemon's cgroup itself",
                host(true, r, &none, Some("/a")),
                "/a",
                [move_to("a/daemon"), level(&r.join("a"), &[])].concat(),
            ),
            (
                "v2, daemon in the root cgroup (which may hold processes)",
                host(true, r, &some, Some("/")),
                "/shoal",
                [enable(r, &["memory", "cpu", "pids"]), level(&r.join("shoal"), &["memory", "cpu", "pids"])].concat(),
            ),
            (
                "v2, containers straight under the root",
                host(true, r, &some, None),
                "/",
                enable(r, &["memory", "cpu", "pids"]),
            ),
            (
                "v2, a prefix by name only is not an ancestor",
                host(true, r, &none, Some("/sho")),
                "/shoal",
                level(&r.join("shoal"), &[]),
            ),
        ];
        for (what, h, parent, want) in cases {
            assert_eq!(plan(&h, parent).unwrap(), want, "{what}");
        }
        for bad in ["/shoal/../x", "./shoal"] {
            let e = plan(&host(true, r, &all, None), bad).unwrap_err();
            assert!(e.to_string().contains("invalid --cgroup-parent"), "{bad}: {e}");
        }
    }

    #[test]
    fn applies_a_v2_layout_on_a_temp_root() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::write(r.join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        std::fs::create_dir_all(r.join("shl-h1/host")).unwrap();
        std::fs::write(r.join("shl-h1/host/cgroup.procs"), "17\n18\n").unwrap();
        let controllers: Vec<String> = ["cpu", "io", "memory", "pids"].map(String::from).to_vec();
        let h = host(true, r, &controllers, Some("/shl-h1/host"));
        let steps = plan(&h, "/shl-h1/shoal").unwrap();
        apply(&steps).unwrap();
        apply(&steps).unwrap(); // idempotent: a restarted daemon
        assert!(r.join("shl-h1/shoal").is_dir());
        let sub = std::fs::read_to_string(r.join("shl-h1/shoal/cgroup.subtree_control")).unwrap();
        assert_eq!(sub, "+memory\n+io\n+cpu\n+pids\n".repeat(2));
        assert!(r.join("shl-h1/cgroup.subtree_control").exists());
        assert!(r.join("cgroup.subtree_control").exists());
    }

    #[test]
    fn refuses_a_parent_below_a_cgroup_with_processes() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("shl-h1")).unwrap();
        std::fs::write(r.join("shl-h1/cgroup.procs"), "17\n18\n").unwrap();
        let controllers: Vec<String> = vec!["memory".into()];
        let steps = plan(&host(true, r, &controllers, Some("/other")), "/shl-h1/shoal").unwrap();
        let e = apply(&steps).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CgroupError::Busy { .. }), "{msg}");
        assert!(msg.contains("shl-h1 holds processes (17 18)"), "{msg}");
        assert!(!r.join("shl-h1/shoal").exists(), "nothing below the busy cgroup is made");
        assert!(!r.join("shl-h1/cgroup.subtree_control").exists(), "no controller enabled in the busy cgroup");
    }

    #[test]
    fn moves_the_daemon_into_a_leaf_when_its_cgroup_holds_the_parent() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("svc")).unwrap();
        let controllers: Vec<String> = vec!["pids".into()];
        apply(&plan(&host(true, r, &controllers, Some("/svc")), "/svc/containers").unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(r.join("svc/daemon/cgroup.procs")).unwrap(), "4242\n");
        assert_eq!(std::fs::read_to_string(r.join("svc/containers/cgroup.subtree_control")).unwrap(), "+pids\n");
    }

    #[test]
    fn reads_the_own_cgroup() {
        assert_eq!(own_cgroup("0::/system.slice/shoal.service\n"), Some("/system.slice/shoal.service"));
        assert_eq!(own_cgroup("12:pids:/shl-h1\n1:name=systemd:/x\n0::/shl-h1\n"), Some("/shl-h1"));
        assert_eq!(own_cgroup("12:pids:/shl-h1\n1:name=systemd:/x\n"), None);
    }
}
