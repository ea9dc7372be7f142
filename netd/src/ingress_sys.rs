//! The routing mesh's kernel half: applies `ingress`'s host table in the
//! calling thread's namespace (the host's) and the reply steering in each
//! task's namespace, remembering what it programmed so that a change is an
//! element batch (host) or a table replaced only when the legs changed
//! (tasks). Blocking (short `nft` and `ip` runs): call it from blocking code.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ingress::{self, HostTable, LEG, Steering};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("{what}: running {tool}: {source}")]
    Run { what: String, tool: &'static str, source: std::io::Error },
    #[error("{what}: {tool} said: {stderr}")]
    Tool { what: String, tool: &'static str, stderr: String },
}

/// Runs `tool ARGS` with `stdin` in the calling thread's namespace.
fn run(tool: &'static str, args: &[&str], stdin: &str, what: &str) -> Result<(), MeshError> {
    let spawn = || -> std::io::Result<std::process::Output> {
        let mut child =
            Command::new(tool).args(args).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        if let Some(mut s) = child.stdin.take() {
            s.write_all(stdin.as_bytes())?;
        }
        child.wait_with_output()
    };
    let out = spawn().map_err(|source| MeshError::Run { what: what.into(), tool, source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(MeshError::Tool { what: what.into(), tool, stderr: String::from_utf8_lossy(&out.stderr).trim().into() })
    }
}

/// Sets an interface's sysctl in the calling thread's namespace.
fn sysctl(ifname: &str, key: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(format!("/proc/sys/net/ipv4/conf/{ifname}/{key}"), value)
}

/// What netd programmed of the mesh.
#[derive(Debug, Default)]
pub struct Mesh {
    host: Option<HostTable>,
    /// Whether a table of an earlier netd was looked for.
    cleared: bool,
    steered: BTreeMap<PathBuf, Steering>,
}

impl Mesh {
    /// Brings the host table of the calling thread's namespace to `want`
    /// (None: no mesh, the table goes), and sets the leg's sysctls when it
    /// is there: `route_localnet` (the host's 127.0.0.1 clients) and loose
    /// `rp_filter`.
    pub fn sync_host(&mut self, want: Option<&HostTable>) -> Result<(), MeshError> {
        let Some(want) = want else {
            // One a netd before this one left (netd's first pass) goes too.
            if self.host.take().is_some() || !std::mem::replace(&mut self.cleared, true) {
                let script = format!("table ip {t}\ndelete table ip {t}\n", t = ingress::TABLE);
                run("nft", &["-f", "-"], &script, "removing the ingress table")?;
            }
            return Ok(());
        };
        // A table removed behind netd's back is written whole again.
        if self.host.is_some() && run("nft", &["list", "table", "ip", ingress::TABLE], "", "listing").is_err() {
            self.host = None;
        }
        let (script, made) = ingress::host_script(want, self.host.as_ref());
        if !script.is_empty() {
            if let Err(e) = run("nft", &["-f", "-"], &script, "the ingress table") {
                self.host = None; // written whole next time
                return Err(e);
            }
            tracing::debug!(ports = want.ports.len(), whole = self.host.is_none(), "ingress table updated");
        }
        self.host = Some(made);
        if Path::new(&format!("/proc/sys/net/ipv4/conf/{LEG}")).exists() {
            let set = sysctl(LEG, "route_localnet", "1").and_then(|()| sysctl(LEG, "rp_filter", "2"));
            set.map_err(|source| MeshError::Run { what: format!("{LEG}'s sysctls"), tool: "sysctl", source })?;
        }
        Ok(())
    }

    /// Steers every namespace of `want` (from `ingress::steering`); the
    /// namespaces that left lose their table and rules (nothing to do when
    /// the namespace itself is gone). Returns what failed; a failed
    /// namespace is tried again next time.
    pub fn sync_steering(&mut self, want: BTreeMap<PathBuf, Steering>) -> Vec<MeshError> {
        let mut failed = Vec::new();
        for (netns, had) in std::mem::take(&mut self.steered) {
            if let Some(w) = want.get(&netns) {
                if *w == had {
                    self.steered.insert(netns, had);
                } else {
                    // Programmed again below, taking away the legs that left.
                    let gone: Vec<u32> =
                        had.legs.iter().map(|l| l.mark).filter(|m| !w.legs.iter().any(|l| l.mark == *m)).collect();
                    if let Err(e) = steer(&netns, w, &gone) {
                        failed.push(e);
                    } else {
                        self.steered.insert(netns, w.clone());
                    }
                }
            } else if netns.exists() {
                let gone: Vec<u32> = had.legs.iter().map(|l| l.mark).collect();
                if let Err(e) = unsteer(&netns, &had.ifname, &gone) {
                    failed.push(e);
                    self.steered.insert(netns, had);
                }
            }
        }
        for (netns, w) in want {
            if self.steered.contains_key(&netns) {
                continue;
            }
            match steer(&netns, &w, &[]) {
                Ok(()) => {
                    self.steered.insert(netns, w);
                }
                Err(e) => failed.push(e),
            }
        }
        failed
    }
}

/// The steering table, the rules and routes of `s` in `netns`, and loose
/// `rp_filter` on its ingress interface.
pub fn steer(netns: &Path, s: &Steering, gone: &[u32]) -> Result<(), MeshError> {
    let what = format!("steering in {}", netns.display());
    let (table, routes, ifname) = (ingress::steer_script(s), ingress::route_batch(s, gone), s.ifname.clone());
    let w = what.clone();
    sys::in_netns(netns, move || {
        Ok((|| {
            sysctl(&ifname, "rp_filter", "2").map_err(|source| MeshError::Run {
                what: format!("{w}: {ifname}'s rp_filter"),
                tool: "sysctl",
                source,
            })?;
            run("nft", &["-f", "-"], &table, &w)?;
            let _ = run("ip", &["-force", "-batch", "-"], &routes.0, &w); // misses expected
            run("ip", &["-batch", "-"], &routes.1, &w)
        })())
    })
    .map_err(|source| MeshError::Run { what, tool: "setns", source })?
}

/// Takes the steering out of `netns`.
pub fn unsteer(netns: &Path, ifname: &str, marks: &[u32]) -> Result<(), MeshError> {
    let what = format!("unsteering {}", netns.display());
    let none = Steering { ifname: ifname.into(), addr: std::net::Ipv4Addr::UNSPECIFIED, legs: vec![] };
    let routes = ingress::route_batch(&none, marks);
    let table = format!("table ip {t}\ndelete table ip {t}\n", t = ingress::STEER_TABLE);
    let w = what.clone();
    sys::in_netns(netns, move || {
        Ok((|| {
            run("nft", &["-f", "-"], &table, &w)?;
            let _ = run("ip", &["-force", "-batch", "-"], &routes.0, &w); // misses expected
            Ok(())
        })())
    })
    .map_err(|source| MeshError::Run { what, tool: "setns", source })?
}
