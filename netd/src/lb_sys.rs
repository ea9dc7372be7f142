//! The VIP load balancer's kernel half: reads a container namespace's
//! `shoal_lb` table (`nft -j list`) and runs `lb::plan`'s script there
//! (`nft -f -`, one transaction), both from a thread that entered the
//! namespace (`sys::in_netns`), so the root namespace is never touched.
//!
//! Not done yet: flushing the conntrack entries of flows to a backend that
//! left (`Plan::removed`). There is no `conntrack` tool on the hosts and
//! ctnetlink is not spoken in-process yet; until it is, such a flow keeps
//! its backend until it ends or times out (a stopped task's peer answers
//! RST, a node that is down leaves it to the TCP timeouts).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::lb::{self, LbService, Plan};
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("{netns}: running nft (install nftables): {source}")]
    Run { netns: PathBuf, source: std::io::Error },
    #[error("{netns}: nft refused {what}: {stderr}")]
    Nft { netns: PathBuf, what: &'static str, stderr: String },
    #[error("{netns}: reading the load balancer's table: {why}")]
    Read { netns: PathBuf, why: String },
}

/// Runs `nft ARGS` with `stdin` in the namespace at `netns`: (success, stdout, stderr).
fn nft(netns: &Path, args: &'static [&'static str], stdin: String) -> Result<(bool, String, String), LbError> {
    let run = move || -> std::io::Result<(bool, String, String)> {
        let mut child = Command::new("nft")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut s) = child.stdin.take() {
            s.write_all(stdin.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    };
    sys::in_netns(netns, run).map_err(|source| LbError::Run { netns: netns.to_path_buf(), source })
}

/// The table in the namespace: None when it has none, or one not of netd's shape.
pub fn observe(netns: &Path) -> Result<Option<lb::Elements>, LbError> {
    let (ok, out, err) = nft(netns, &["-j", "list", "table", "ip", lb::TABLE], String::new())?;
    if !ok {
        if err.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(LbError::Nft { netns: netns.to_path_buf(), what: "listing the table", stderr: err });
    }
    lb::parse_json(&out).map_err(|why| LbError::Read { netns: netns.to_path_buf(), why })
}

/// Runs a script of `lb::plan` in the namespace, in one transaction.
pub fn apply(netns: &Path, script: &str) -> Result<(), LbError> {
    if script.is_empty() {
        return Ok(());
    }
    let (ok, _, err) = nft(netns, &["-f", "-"], script.to_string())?;
    if ok {
        Ok(())
    } else {
        Err(LbError::Nft { netns: netns.to_path_buf(), what: "the load balancer's batch", stderr: err })
    }
}

/// Makes the namespace's table balance `services` (from `lb::services_for`):
/// observe, plan, apply. Returns what was done (an empty script: nothing).
/// Blocking (two short `nft` runs at most): call it from blocking code.
pub fn sync(netns: &Path, services: &[LbService]) -> Result<Plan, LbError> {
    let current = observe(netns)?;
    let plan = lb::plan(services, current.as_ref());
    apply(netns, &plan.script)?;
    Ok(plan)
}

/// Removes the table from the namespace (the container left its last
/// network with services); nothing when it has none.
pub fn remove(netns: &Path) -> Result<(), LbError> {
    let script = format!("table ip {t}\ndelete table ip {t}\n", t = lb::TABLE);
    let (ok, _, err) = nft(netns, &["-f", "-"], script)?;
    if ok { Ok(()) } else { Err(LbError::Nft { netns: netns.to_path_buf(), what: "removing the table", stderr: err }) }
}

/// The namespaces netd balanced in, across passes: each pass makes every
/// wanted namespace's table right and removes the tables of namespaces
/// no longer wanted (a container that left its last cluster network).
#[derive(Debug, Default)]
pub struct Balancers {
    programmed: BTreeMap<PathBuf, Vec<LbService>>,
}

impl Balancers {
    /// One pass over `want` (from `lb::by_namespace`): observe, plan and
    /// apply in each namespace (drift is repaired, an unchanged table costs
    /// one `nft -j list`); then the tables of the namespaces that left are
    /// removed (nothing to do when the namespace itself is gone). Returns
    /// what failed; a failed namespace is tried again next pass.
    pub fn sync(&mut self, want: BTreeMap<PathBuf, Vec<LbService>>) -> Vec<LbError> {
        let mut failed = Vec::new();
        let mut kept = BTreeMap::new();
        for (netns, services) in std::mem::take(&mut self.programmed) {
            if want.contains_key(&netns) || !netns.exists() {
                continue;
            }
            if let Err(e) = remove(&netns) {
                failed.push(e);
                kept.insert(netns, services);
            }
        }
        for (netns, services) in &want {
            match sync(netns, services) {
                Ok(p) if !p.script.is_empty() => {
                    tracing::debug!(netns = %netns.display(), whole = p.whole, removed = ?p.removed, "load balancer updated");
                }
                Ok(_) => {}
                Err(e) => failed.push(e),
            }
        }
        self.programmed = want;
        self.programmed.extend(kept);
        failed
    }
}
