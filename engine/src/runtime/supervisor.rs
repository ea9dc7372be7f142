//! The supervisor: restarts containers by their policy, removes `--rm`
//! containers that ended, and answers `wait`.

use super::*;
use tokio_util::sync::CancellationToken;

/// The longest a foreground client's hold keeps a `--rm` container.
pub(super) const HOLD_FOR: Duration = Duration::from_secs(600);

/// How many auto-removed containers' exits `wait` can still report.
pub(super) const REAPED_KEPT: usize = 256;
/// The supervisor wakes when a container's shim records a start or an exit,
/// when a restart is due, and at least this often (for shims that died
/// without recording anything, and expired holds).
pub(super) const SUPERVISE_RESCAN: Duration = Duration::from_secs(2);

impl Containers {
    pub(super) fn mark_stopped(&self, c: &Container) -> Result<(), ContainerError> {
        // Without a restart policy nothing reads the mark (a policy is set at
        // create, for good): no need to wait for the runtime's lock, which
        // the node's creates hold while netd attaches them (a stop-first
        // update stops a node's tasks while their replacements are made).
        if c.record.restart == RestartPolicy::No {
            return Ok(());
        }
        let _g = self.lock.write().unwrap_or_else(|p| p.into_inner());
        let current: RestartState = read_json(&self.dir(&c.record.id).join("restart.json")).unwrap_or_default();
        let state = RestartState { manually_stopped: true, due_ms: 0, ..current };
        self.write_restart(&c.record.id, &state)
    }

    pub(super) fn write_restart(&self, id: &str, state: &RestartState) -> Result<(), ContainerError> {
        let path = self.dir(id).join("restart.json");
        let bytes = json_of(state, &path)?;
        crate::files::write_replace(&path, &bytes).map_err(io("writing", &path))
    }

    /// Runs a stopped container's shim again on its bundle and root.
    pub(super) fn respawn(&self, c: &Container) -> Result<(), ContainerError> {
        let id = &c.record.id;
        let dir = self.dir(id);
        if matches!(c.status, Status::Dead { .. }) {
            // Its shim died without recording the end: nothing of it may linger.
            for pid in self.cgroups.pids(&c.record.cgroups_path) {
                // A process of this container's own cgroup.
                let _ = crate::sys::kill(pid, libc::SIGKILL);
            }
        }
        // The last run's shim may still be cleaning up after recording the exit.
        if let Some(s) = read_json::<Started>(&dir.join("started.json")) {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while shim_alive(&s) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        for f in ["started.json", "exit.json", "error.json"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        // libcontainer's state of the last run, if its shim could not delete it.
        let _ = std::fs::remove_dir_all(self.state_root.join(id));
        // Nobody is waiting to attach to a restart.
        let shim_json = dir.join("shim.json");
        if let Some(mut cfg) = read_json::<ShimConfig>(&shim_json).filter(|c| c.wait_attach) {
            cfg.wait_attach = false;
            let bytes = json_of(&cfg, &shim_json)?;
            crate::files::write_atomic(&shim_json, &bytes, 0o644).map_err(io("writing", &shim_json))?;
        }
        if let (Some(nets), false) = (self.networks.get(), c.record.networks.is_empty()) {
            self.replumb(nets, c)?;
        }
        let rootfs = dir.join("rootfs");
        if !is_mount_point(&rootfs, &dir) {
            // After a host reboot: mount the root again.
            self.mount_root(&c.record.image_id, &dir)?;
        }
        self.spawn_shim(id, &dir)
    }

    /// Starts the supervisor thread: restarts containers by their policy and
    /// removes `--rm` containers that ended. Its first pass is the daemon's
    /// start-up one (where `always` brings back stopped containers too).
    /// A pass woken by a shim's record looks only at the containers whose
    /// directories changed; one that comes due (a restart, the rescan, lost
    /// events) looks at all: a node starting a hundred containers would
    /// otherwise read every one of them after each start.
    pub fn supervise(self: &Arc<Self>, cancel: CancellationToken) {
        let this = self.clone();
        std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || {
                let watch = watch::DirWatch::renames(&this.root);
                let mut watched = Watched::default();
                let mut starting = true;
                let mut only: Option<std::collections::BTreeSet<String>> = None;
                let mut last_full = std::time::Instant::now();
                let mut next_due: Option<u64> = None;
                while !cancel.is_cancelled() {
                    let due = this.supervise_once(starting, watch.as_ref(), only.as_ref(), &mut watched);
                    // A pass over some containers keeps the restarts the last full one found due.
                    next_due = match (&only, due, next_due.filter(|d| *d > now_ms())) {
                        (None, due, _) => due,
                        (Some(_), Some(a), Some(b)) => Some(a.min(b)),
                        (Some(_), a, b) => a.or(b),
                    };
                    if only.is_none() {
                        last_full = std::time::Instant::now();
                    }
                    starting = false;
                    let until_due = next_due.map(|d| Duration::from_millis(d.saturating_sub(now_ms())));
                    let wait = until_due.unwrap_or(SUPERVISE_RESCAN).clamp(Duration::from_millis(1), SUPERVISE_RESCAN);
                    only = match &watch {
                        Some(w) => match w.wait_events(wait) {
                            Some(events) if !events.is_empty() && last_full.elapsed() < SUPERVISE_RESCAN => {
                                Some(watched.containers_of(events))
                            }
                            // Come due, or events lost: everything.
                            _ => None,
                        },
                        None => {
                            std::thread::sleep(wait.min(Duration::from_millis(100)));
                            None
                        }
                    };
                }
            })
            .expect("spawning the supervisor thread");
    }

    /// One pass of the supervisor over every container (`only`: over those);
    /// returns when the soonest pending restart is due. Each container's
    /// directory joins `watch` (renames only: a shim's started and exit
    /// records, not its log writes) before it is read.
    pub fn supervise_once(
        &self,
        daemon_starting: bool,
        watch: Option<&watch::DirWatch>,
        only: Option<&std::collections::BTreeSet<String>>,
        watched: &mut Watched,
    ) -> Option<u64> {
        let now = now_ms();
        let mut soonest: Option<u64> = None;
        let mut due_at = |ms: u64| soonest = Some(soonest.map_or(ms, |s| s.min(ms)));
        if daemon_starting {
            self.finish_leftovers();
        }
        let all = match only {
            None => {
                let all = self.list();
                let ids: std::collections::HashSet<&str> = all.iter().map(|c| c.record.id.as_str()).collect();
                self.monitors.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| ids.contains(id.as_str()));
                watched.ids.retain(|_, id| ids.contains(id.as_str()));
                if let Some(w) = watch {
                    for c in &all {
                        watched.add(w, &self.dir(&c.record.id), &c.record.id);
                    }
                }
                all
            }
            Some(ids) => ids
                .iter()
                .filter_map(|id| {
                    // Watched first, then read: a record written in between is seen by one or the other.
                    if let Some(w) = watch {
                        watched.add(w, &self.dir(id), id);
                    }
                    self.load(id)
                })
                .collect(),
        };
        for c in all {
            self.keep_health(&c);
            self.observe(&c);
            if ended(&c.status).is_none() {
                continue;
            }
            let id = c.record.id.clone();
            let held =
                self.holds.lock().unwrap_or_else(|p| p.into_inner()).get(&id).is_some_and(|t| t.elapsed() < HOLD_FOR);
            if c.record.auto_remove && held {
                continue;
            }
            if c.record.auto_remove {
                self.holds.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                if self.remove(&id, false, true).is_ok() {
                    self.remember_reaped(&id, &c.status);
                }
                continue;
            }
            if c.record.restart == RestartPolicy::No {
                continue;
            }
            // Decide under the lock, on a fresh read: a user's stop or start wins.
            let _g = self.lock.write().unwrap_or_else(|p| p.into_inner());
            let Some((c, ended)) = self.load(&id).and_then(|c| ended(&c.status).map(|e| (c, e))) else {
                continue;
            };
            if c.restart.due_ms == 0 {
                match restart::decide(c.record.restart, ended, &c.restart, daemon_starting) {
                    Decision::Stay => {}
                    Decision::Restart { after } => {
                        let state = RestartState {
                            manually_stopped: false,
                            backoff_ms: after.as_millis() as u64,
                            due_ms: now + after.as_millis() as u64,
                            ..c.restart.clone()
                        };
                        match self.write_restart(&id, &state) {
                            Ok(()) => due_at(state.due_ms),
                            Err(e) => tracing::warn!(container = %id, error = %e, "cannot record a pending restart"),
                        }
                    }
                }
            } else if now >= c.restart.due_ms {
                let after = Duration::from_millis(c.restart.backoff_ms);
                let state = restart::after_restart(&c.restart, after);
                let result = self.write_restart(&id, &state).and_then(|()| self.respawn(&c));
                match result {
                    Ok(()) => {
                        tracing::info!(container = %c.record.name, count = state.count, "restarted by its policy")
                    }
                    Err(e) => tracing::warn!(container = %c.record.name, error = %e, "restart by its policy failed"),
                }
            } else {
                due_at(c.restart.due_ms);
            }
        }
        soonest
    }

    /// Waits for the container to stop running and returns how it ended;
    /// also answers for a `--rm` container removed meanwhile.
    pub fn wait(&self, reference: &str) -> Result<Status, ContainerError> {
        let (status, retired) = self.wait_retiring(reference)?;
        if let Some(r) = retired {
            self.finish_removal(r);
        }
        Ok(status)
    }

    /// `wait`, but a held `--rm` container is only retired (out of every
    /// listing, lookup and name check) before it returns: the caller tells
    /// its client the exit, then calls `finish_removal` (see `removal.rs`).
    pub fn wait_retiring(&self, reference: &str) -> Result<(Status, Option<Retired>), ContainerError> {
        let id = match self.find(reference) {
            Ok(c) => c.record.id.clone(),
            Err(e) => return self.reaped(reference).map(|s| (s, None)).ok_or(e),
        };
        let watch = watch::DirWatch::new(&self.dir(&id));
        loop {
            if !self.dir(&id).exists() {
                return self.reaped(&id).map(|s| (s, None)).ok_or(ContainerError::NotFound(id));
            }
            match self.status_of(&id) {
                Status::Running { .. } | Status::Created => {
                    watch::wait_change(watch.as_ref(), Duration::from_millis(500))
                }
                s => {
                    // Its end is news before the waiting client hears of it.
                    self.observe_id(&id);
                    // The client saw the end: a held `--rm` container is out of
                    // view before the client is told (as `docker run --rm` waits
                    // for its removal); what is left goes after.
                    let held = self.holds.lock().unwrap_or_else(|p| p.into_inner()).remove(&id).is_some();
                    let mut retired = None;
                    if held && self.load(&id).is_some_and(|c| c.record.auto_remove) {
                        match self.retire(&id) {
                            Ok(r) => {
                                self.remember_reaped(&id, &s);
                                retired = Some(r);
                            }
                            Err(ContainerError::NotFound(_)) => {}
                            Err(e) => {
                                tracing::warn!(container = %id, error = %e, "cannot set a --rm container aside; removing it now");
                                if self.remove(&id, false, true).is_ok() {
                                    self.remember_reaped(&id, &s);
                                }
                            }
                        }
                    }
                    return Ok((s, retired));
                }
            }
        }
    }

    pub(super) fn remember_reaped(&self, id: &str, status: &Status) {
        let mut reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        reaped.push_back((id.to_string(), status.clone()));
        while reaped.len() > REAPED_KEPT {
            reaped.pop_front();
        }
    }

    pub(super) fn reaped(&self, reference: &str) -> Option<Status> {
        let reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        reaped.iter().rev().find(|(id, _)| !reference.is_empty() && id.starts_with(reference)).map(|(_, s)| s.clone())
    }
}

/// The containers' directories the supervisor watches, by watch descriptor.
#[derive(Debug, Default)]
pub struct Watched {
    ids: std::collections::HashMap<i32, String>,
}

impl Watched {
    fn add(&mut self, w: &watch::DirWatch, dir: &Path, id: &str) {
        if let Some(wd) = w.add_renames(dir) {
            self.ids.insert(wd, id.to_string());
        }
    }

    /// The containers that events are about: those whose directory changed,
    /// and new entries of the containers' root (a container just made; a
    /// name that is not one is skipped when it is read).
    fn containers_of(&self, events: Vec<(i32, String)>) -> std::collections::BTreeSet<String> {
        events
            .into_iter()
            .map(|(wd, name)| self.ids.get(&wd).cloned().unwrap_or(name))
            .filter(|id| !id.is_empty())
            .collect()
    }
}

/// How a container that is not running ended; None while it runs.
pub(super) fn ended(status: &Status) -> Option<Ended> {
    match status {
        Status::Exited { code, started_ms, finished_ms, .. } => {
            Some(Ended { exit_code: *code, ran: Duration::from_millis(finished_ms.saturating_sub(*started_ms)) })
        }
        Status::Dead { .. } => Some(Ended { exit_code: 255, ran: Duration::ZERO }),
        Status::Running { .. } | Status::Created => None,
    }
}
