//! A foreground `run --rm` hears its container's exit before the slow part
//! of the removal. The container is first *retired*: its directory renamed
//! out of the containers' root (one `rename`, under the runtime's lock), so
//! no listing, lookup or name check sees it from then on; its destroy event
//! is announced, its anonymous volumes removed, and its endpoints released
//! if the next container could claim something of them (a published port, an
//! `--ip`, a name in a network's DNS, a cluster lease). The client is told the
//! exit, and only then is the rest undone (`finish_removal`): the root's
//! overlay unmounted (the kernel waits out an RCU grace period there), the
//! files removed, a default-bridge endpoint released. A daemon that stopped
//! in between finishes it at its next start (`finish_leftovers`).
//!
//! `Containers::remove` (`rm`) goes the same way, finishing before it
//! returns but outside the runtime's lock, and the worker's `remove_soon`
//! finishes on a thread of its own. `remove_soon` leaves even endpoints
//! that hold something for that thread (netd's detach is a pass, ~50 ms
//! when the node is busy): what they hold is recorded (`Releasing`) until
//! they are released, and only a create that asks for some of it (an
//! address or a name on the same network, a host port) waits for that; a
//! killed task's replacement, with its own address, does not. That thread
//! first lets the node's creates in flight finish (2 s at most, and not
//! while one of them waits for a release): an update stops and removes a
//! node's tasks while it makes their replacements, and the teardown of a
//! namespace and its veths holds the kernel's locks their creates need.

use super::*;

/// A `--rm` container taken out of the containers' root (see `Containers::retire`):
/// gone for every listing, lookup and name check; `Containers::finish_removal`
/// undoes the rest.
#[must_use = "a retired container's root stays mounted until finish_removal"]
#[derive(Debug)]
pub struct Retired {
    dir: PathBuf,
    /// Its endpoints are still in netd (nothing of them can be claimed, see
    /// `release_later`, or what they hold is in `Containers::releasing`).
    endpoints_left: bool,
}

/// How long a create waits for a removal to release what it asks for, at
/// most; then it asks anyway (netd refuses what is still held, saying why).
pub(super) const RELEASE_WAIT: Duration = Duration::from_secs(30);

/// How long a worker's removal lets the node's creates go first, at most
/// (`Releasing::yield_to_creates`).
pub(super) const CLEANUP_YIELD: Duration = Duration::from_secs(2);

/// What removed containers' endpoints still hold in netd, by container id,
/// until their removal finishes (see the module's text); and the node's
/// creates in flight, which a worker's removal lets go first.
#[derive(Debug, Default)]
pub(super) struct Releasing {
    held: Mutex<std::collections::HashMap<String, Held>>,
    released: std::sync::Condvar,
    creates: Mutex<Creates>,
    creates_changed: std::sync::Condvar,
}

/// The creates in flight, and how many of them wait for a release.
#[derive(Debug, Default)]
struct Creates {
    running: usize,
    waiting: usize,
}

/// A create in flight (`Releasing::creating`), until dropped.
pub(super) struct Creating<'a>(&'a Releasing);

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.0.creates_changed(|c| c.running -= 1);
    }
}

/// A removed container's name and attachments.
#[derive(Debug)]
struct Held {
    name: String,
    networks: Vec<Attachment>,
}

impl Releasing {
    fn hold(&self, id: &str, name: &str, networks: &[Attachment]) {
        let held = Held { name: name.to_string(), networks: networks.to_vec() };
        self.held.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), held);
    }

    fn release(&self, id: &str) {
        if self.held.lock().unwrap_or_else(|p| p.into_inner()).remove(id).is_some() {
            self.released.notify_all();
        }
    }

    /// Waits, `limit` at most, until no removal holds anything a container
    /// `name` asking for `want` would claim. While it waits, the removals
    /// that yield to creates go on (`yield_to_creates`).
    pub(super) fn wait_for(&self, name: &str, want: &[Attachment], limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if !held.values().any(|h| claims_overlap(name, want, h)) {
            return;
        }
        self.creates_changed(|c| c.waiting += 1);
        let _waited = Waited(self);
        while held.values().any(|h| claims_overlap(name, want, h)) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    container = name,
                    "a removed container still holds what this one asks for: asking anyway"
                );
                return;
            }
            held = self.released.wait_timeout(held, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Counts a create in flight until the guard is dropped.
    pub(super) fn creating(&self) -> Creating<'_> {
        self.creates_changed(|c| c.running += 1);
        Creating(self)
    }

    /// Waits, `limit` at most, while creates are in flight and none of them
    /// waits for a release: a worker's removal undoes its container (netd's
    /// detach, the namespace's and the root's teardown, all of it under the
    /// kernel's locks that a create's namespace and veths need) after the
    /// node's starts rather than among them.
    pub(super) fn yield_to_creates(&self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        let mut c = self.creates.lock().unwrap_or_else(|p| p.into_inner());
        while c.running > 0 && c.waiting == 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return;
            }
            c = self.creates_changed.wait_timeout(c, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    fn creates_changed(&self, f: impl FnOnce(&mut Creates)) {
        f(&mut self.creates.lock().unwrap_or_else(|p| p.into_inner()));
        self.creates_changed.notify_all();
    }

    #[cfg(test)]
    fn holds(&self, id: &str) -> bool {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).contains_key(id)
    }
}

/// A create waiting for a release, until dropped.
struct Waited<'a>(&'a Releasing);

impl Drop for Waited<'_> {
    fn drop(&mut self) {
        self.0.creates_changed(|c| c.waiting -= 1);
    }
}

/// Whether a container `name` asking for `want` claims something `held`
/// still holds: a host port (any network), or on a network they share its
/// address or its container name (a DNS name no other container answers
/// to; aliases are shared, as a service's tasks share theirs).
fn claims_overlap(name: &str, want: &[Attachment], held: &Held) -> bool {
    let ports = |a: &Attachment| {
        a.ports.iter().filter(|p| p.host_port != 0).map(|p| (p.host_port, p.proto)).collect::<Vec<_>>()
    };
    let held_ports: Vec<_> = held.networks.iter().flat_map(ports).collect();
    want.iter().any(|w| {
        ports(w).iter().any(|p| held_ports.contains(p))
            || held
                .networks
                .iter()
                .filter(|h| h.network == w.network)
                .any(|h| (!w.ip.is_empty() && w.ip == h.ip) || name == held.name)
    })
}

/// Whether a removed container's endpoints may go after its client heard the
/// exit: only on the default bridge (whose endpoints have no names in a DNS),
/// without published ports, `--ip` or a cluster lease, so nothing a next
/// container asks for is still held.
pub(super) fn release_later(networks: &[Attachment]) -> bool {
    networks.iter().all(|a| a.network == "bridge" && a.ports.is_empty() && a.ip.is_empty() && a.lease.is_empty())
}

impl Containers {
    /// Where retired containers' directories wait for `finish_removal`: a
    /// sibling of the containers' root (on its filesystem, for `rename`).
    fn retired_root(&self) -> PathBuf {
        let mut s = self.root.clone().into_os_string();
        s.push(".removing");
        PathBuf::from(s)
    }

    /// Takes an ended `--rm` container out of view (see the module's text)
    /// and returns what is left to undo. NotFound if another removal took it first.
    pub(super) fn retire(&self, id: &str) -> Result<Retired, ContainerError> {
        self.retire_as(id, false, true, false)
    }

    /// `retire` for any removal: a container never started (`created`) may
    /// go too, and its anonymous volumes only with `volumes`; with `defer`
    /// every endpoint is left to `finish_removal`, what they hold recorded.
    pub(super) fn retire_as(
        &self,
        id: &str,
        created: bool,
        volumes: bool,
        defer: bool,
    ) -> Result<Retired, ContainerError> {
        let c = self.find(id)?;
        if matches!(c.status, Status::Running { .. }) || (!created && c.status == Status::Created) {
            return Err(ContainerError::Running(c.record.name.clone()));
        }
        self.monitors.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
        let _g = self.lock.write().unwrap_or_else(|p| p.into_inner());
        let from = self.dir(id);
        if !from.exists() {
            return Err(ContainerError::NotFound(id.to_string()));
        }
        let gone = self.retired_root();
        std::fs::create_dir_all(&gone).map_err(io("creating", &gone))?;
        let dir = gone.join(id);
        std::fs::rename(&from, &dir).map_err(io("moving out of the containers' root", &from))?;
        self.forget_name(&c.record.name, id);
        let (networks, later) = (&c.record.networks, release_later(&c.record.networks));
        let endpoints_left = !networks.is_empty() && (defer || later);
        if !endpoints_left {
            self.release_endpoints(&dir);
        } else if !later {
            self.releasing.hold(id, &c.record.name, networks);
        }
        self.announce_destroyed(&c);
        if volumes {
            self.remove_anonymous_volumes(&c);
        }
        Ok(Retired { dir, endpoints_left })
    }

    /// Undoes what is left of a retired container: its endpoints if still
    /// there, its root's mount, its task files and its directory.
    pub fn finish_removal(&self, r: Retired) {
        if r.endpoints_left {
            self.release_endpoints(&r.dir);
            if let Some(id) = r.dir.file_name().and_then(|n| n.to_str()) {
                self.releasing.release(id);
            }
        }
        self.teardown_files(&r.dir);
    }

    /// What every removal does first: a running container killed (with
    /// `force`), its end observed, then retired (`retire_as`, with `defer`).
    /// Returns its id and what is left to undo. Another removal (a `run
    /// --rm` client's, the supervisor's) may have taken it meanwhile: NotFound.
    pub(super) fn take_out(
        &self,
        reference: &str,
        force: bool,
        volumes: bool,
        defer: bool,
    ) -> Result<(String, Retired), ContainerError> {
        let c = self.find(reference)?;
        if matches!(c.status, Status::Running { .. }) {
            if !force {
                return Err(ContainerError::Running(c.record.name.clone()));
            }
            let _ = self.kill(&c.record.id, libc::SIGKILL);
            self.wait_exit(&c.record.id, Duration::from_secs(10));
        }
        self.observe_id(&c.record.id);
        let retired = self.retire_as(&c.record.id, true, volumes, defer).map_err(|e| match e {
            ContainerError::NotFound(_) => ContainerError::NotFound(reference.to_string()),
            e => e,
        })?;
        Ok((c.record.id.clone(), retired))
    }

    /// `remove` (with `force` and anonymous volumes) for the node's worker: it
    /// returns once the container is out of view; its endpoints, root and
    /// files are undone on a thread of its own, so the worker's pass goes on
    /// to its starts (a killed task's replacement waits neither for its
    /// predecessor's detach nor for its unmount; a create that asks for
    /// what the endpoints hold waits for their release).
    pub fn remove_soon(self: &Arc<Self>, id: &str) -> Result<(), ContainerError> {
        let (_, retired) = self.take_out(id, true, true, true)?;
        let this = self.clone();
        std::thread::Builder::new()
            .name("removal".into())
            .spawn(move || {
                this.releasing.yield_to_creates(CLEANUP_YIELD);
                this.finish_removal(retired)
            })
            .map_err(io("starting a thread to finish removing", Path::new(id)))?;
        Ok(())
    }

    /// Finishes the removals a daemon stopped in the middle of (at its start).
    pub(super) fn finish_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(self.retired_root()) else { return };
        for e in entries.flatten() {
            tracing::info!(container = %e.file_name().to_string_lossy(), "finishing the removal of a --rm container");
            self.finish_removal(Retired { dir: e.path(), endpoints_left: true });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ended `--rm` container `web` whose foreground client holds it, as its shim leaves it.
    fn ended_rm(c: &Containers, id: &str) {
        let dir = c.dir(id);
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        let mut record = crate::runtime::tests::record_json(id, "web");
        record["auto_remove"] = true.into();
        std::fs::write(dir.join("container.json"), record.to_string()).unwrap();
        let started = serde_json::json!({"shim_pid": 1, "pid": 2, "started_ms": 5});
        std::fs::write(dir.join("started.json"), started.to_string()).unwrap();
        let exited = serde_json::json!({"exit_code": 3, "oom_killed": false, "finished_ms": 9});
        std::fs::write(dir.join("exit.json"), exited.to_string()).unwrap();
        c.holds.lock().unwrap().insert(id.into(), std::time::Instant::now());
    }

    fn exit_code(s: &Status) -> Option<i32> {
        match s {
            Status::Exited { code, .. } => Some(*code),
            _ => None,
        }
    }

    #[test]
    fn a_removal_yields_to_the_creates_in_flight_but_not_to_one_waiting_for_a_release() {
        let r = std::sync::Arc::new(Releasing::default());
        let t0 = std::time::Instant::now();
        r.yield_to_creates(Duration::from_secs(30));
        assert!(t0.elapsed() < Duration::from_secs(10), "no create in flight: no wait");
        // A create in flight: the removal waits for it to end, or for its limit.
        let creating = r.creating();
        let t = std::time::Instant::now();
        r.yield_to_creates(Duration::from_millis(100));
        assert!(t.elapsed() >= Duration::from_millis(100), "it waited out its limit");
        let r2 = r.clone();
        let waiter = std::thread::spawn(move || {
            let t = std::time::Instant::now();
            r2.yield_to_creates(Duration::from_secs(30));
            t.elapsed()
        });
        drop(creating);
        let waited = waiter.join().expect("the removal went on once the create ended");
        assert!(waited < Duration::from_secs(10), "woken by the create's end, not its limit: {waited:?}");
        // One of them waits for what a removal holds: removals go on.
        let _creating = r.creating();
        r.hold("old", "web", &[on("bridge")]);
        let (r3, t1) = (r.clone(), std::time::Instant::now());
        let asking = std::thread::spawn(move || r3.wait_for("web", &[on("bridge")], Duration::from_secs(30)));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while r.creates.lock().unwrap().waiting == 0 {
            assert!(std::time::Instant::now() < deadline, "the create never waited");
            std::thread::yield_now();
        }
        r.yield_to_creates(Duration::from_secs(30));
        assert!(t1.elapsed() < Duration::from_secs(10), "a create waits on a release: the removal goes on");
        r.release("old");
        asking.join().expect("the create got what it asked for");
        // Still a create in flight, none waiting: the limit ends the wait.
        let t2 = std::time::Instant::now();
        r.yield_to_creates(Duration::from_millis(50));
        assert!(t2.elapsed() >= Duration::from_millis(50));
    }

    #[test]
    fn a_followed_rm_container_is_out_of_view_before_its_exit_is_told_and_gone_after() {
        let tmp = tempfile::tempdir().unwrap();
        let c = crate::runtime::tests::containers(tmp.path());
        let (_, mut events) = c.events.subscribe();
        ended_rm(&c, "a1");
        let (status, retired) = c.wait_retiring("a1").unwrap();
        assert_eq!(exit_code(&status), Some(3));
        let retired = retired.expect("a held --rm container is retired");
        // What a next command sees before the rest of the removal: nothing of it.
        assert!(c.list().is_empty(), "listed: {:?}", c.list());
        assert!(matches!(c.find("a1"), Err(ContainerError::NotFound(_))));
        assert!(matches!(c.find("web"), Err(ContainerError::NotFound(_))));
        assert!(c.reserve_name("web", "b2").is_ok(), "its name is free");
        assert_eq!(c.wait("a1").ok().as_ref().and_then(exit_code), Some(3), "a later wait still hears its exit");
        let destroyed = std::iter::from_fn(|| events.try_recv().ok()).any(|e| e.action == "destroy" && e.id == "a1");
        assert!(destroyed, "its destroy is announced with it out of view");
        let left = tmp.path().join("containers.removing").join("a1");
        assert!(left.join("rootfs").is_dir(), "its root waits for finish_removal");
        c.finish_removal(retired);
        assert!(!left.exists(), "finish_removal takes the rest");
        assert!(!c.dir("a1").exists());
    }

    #[test]
    fn a_removal_a_daemon_stopped_in_is_finished_at_its_start() {
        let tmp = tempfile::tempdir().unwrap();
        let c = crate::runtime::tests::containers(tmp.path());
        ended_rm(&c, "a1");
        let (_, retired) = c.wait_retiring("a1").unwrap();
        std::mem::forget(retired);
        drop(c); // the daemon stops here
        let c = crate::runtime::tests::containers(tmp.path());
        c.supervise_once(true, None, None, &mut Default::default());
        assert!(!tmp.path().join("containers.removing").join("a1").exists());
        assert!(c.list().is_empty());
    }

    #[test]
    fn an_unheld_or_running_container_is_not_retired_by_wait() {
        let tmp = tempfile::tempdir().unwrap();
        let c = crate::runtime::tests::containers(tmp.path());
        ended_rm(&c, "a1");
        c.holds.lock().unwrap().clear();
        let (status, retired) = c.wait_retiring("a1").unwrap();
        assert_eq!(exit_code(&status), Some(3));
        assert!(retired.is_none(), "the supervisor removes an unheld one");
        assert!(c.dir("a1").exists());
        std::fs::remove_file(c.dir("a1").join("exit.json")).unwrap();
        std::fs::remove_file(c.dir("a1").join("started.json")).unwrap();
        assert!(matches!(c.retire("a1"), Err(ContainerError::Running(_))), "a created one is not retired");
    }

    #[test]
    fn a_removal_is_out_of_view_at_once_and_the_workers_finishes_on_its_own() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Arc::new(crate::runtime::tests::containers(tmp.path()));
        let left = |id: &str| tmp.path().join("containers.removing").join(id);
        // `rm`: a created container, and an ended one, are gone with their files when it returns.
        ended_rm(&c, "a1");
        std::fs::remove_file(c.dir("a1").join("exit.json")).unwrap();
        std::fs::remove_file(c.dir("a1").join("started.json")).unwrap();
        assert_eq!(c.remove("web", false, true).unwrap(), "a1");
        assert!(c.list().is_empty() && !c.dir("a1").exists() && !left("a1").exists());
        assert!(matches!(c.remove("a1", false, true), Err(ContainerError::NotFound(_))));
        // The worker's: out of view when it returns; its root and files follow.
        ended_rm(&c, "b2");
        assert_eq!(c.name_owner("web").as_deref(), Some("b2"));
        c.remove_soon("b2").unwrap();
        assert!(c.list().is_empty() && !c.dir("b2").exists(), "listed: {:?}", c.list());
        let indexed = |name: &str| c.names.lock().unwrap().as_ref().is_some_and(|n| n.contains_key(name));
        assert!(!indexed("web"), "its name left the index with it");
        assert!(c.reserve_name("web", "c3").is_ok(), "its name is free");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while left("b2").exists() {
            assert!(std::time::Instant::now() < deadline, "the rest of its removal never finished");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The worker's removal leaves its endpoints to the finishing thread and
    /// records what they hold; `finish_removal` releases it.
    #[test]
    fn a_deferred_release_is_held_until_the_removal_finishes() {
        let tmp = tempfile::tempdir().unwrap();
        let c = crate::runtime::tests::containers(tmp.path());
        ended_rm(&c, "b2");
        let path = c.dir("b2").join("container.json");
        let mut record: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        record["networks"] = serde_json::json!([{"network": "app", "ip": "10.0.9.2"}]);
        std::fs::write(&path, record.to_string()).unwrap();
        let retired = c.retire_as("b2", true, true, true).unwrap();
        assert!(c.releasing.holds("b2"), "its address is held");
        c.finish_removal(retired);
        assert!(!c.releasing.holds("b2"), "released with the rest");
        // Without `defer` (rm, run --rm) nothing is held: released under the lock.
        ended_rm(&c, "c3");
        std::fs::write(c.dir("c3").join("container.json"), record.to_string().replace("b2", "c3")).unwrap();
        let retired = c.retire_as("c3", true, true, false).unwrap();
        assert!(!c.releasing.holds("c3"));
        c.finish_removal(retired);
    }

    #[test]
    fn a_create_waits_only_for_a_release_of_what_it_asks_for() {
        let port = |s: &str| shoal_proto::net::parse_publish(s).expect("a port mapping");
        let held = Held {
            name: "be.1.old".into(),
            networks: vec![
                Attachment { ip: "10.0.9.2".into(), aliases: vec!["be".into()], ..on("app") },
                Attachment { ports: vec![port("8080:80")], ..on("bridge") },
            ],
        };
        let table: [(&str, &str, Vec<Attachment>, bool); 9] = [
            (
                "another address on the network",
                "be.1.new",
                vec![Attachment { ip: "10.0.9.3".into(), ..on("app") }],
                false,
            ),
            ("its address", "be.1.new", vec![Attachment { ip: "10.0.9.2".into(), ..on("app") }], true),
            (
                "its address on another network",
                "be.1.new",
                vec![Attachment { ip: "10.0.9.2".into(), ..on("db") }],
                false,
            ),
            ("its alias (shared)", "x", vec![Attachment { aliases: vec!["be".into()], ..on("app") }], false),
            ("its name", "be.1.old", vec![on("app")], true),
            ("its name on another network", "be.1.old", vec![on("db")], false),
            (
                "its host port, on another network",
                "x",
                vec![Attachment { ports: vec![port("8080:81")], ..on("db") }],
                true,
            ),
            ("another host port", "x", vec![Attachment { ports: vec![port("8081:80")], ..on("bridge") }], false),
            ("nothing", "x", vec![], false),
        ];
        for (what, name, want, waits) in table {
            assert_eq!(claims_overlap(name, &want, &held), waits, "{what}");
        }
        // The wait ends with the release, or at the limit.
        let r = Arc::new(Releasing::default());
        r.hold("b2", &held.name, &held.networks);
        let asks = vec![Attachment { ip: "10.0.9.2".into(), ..on("app") }];
        let began = std::time::Instant::now();
        r.wait_for("c", &asks, Duration::from_millis(50));
        assert!(began.elapsed() >= Duration::from_millis(50), "it waited for the limit");
        r.wait_for("c", &[on("app")], Duration::from_secs(30));
        let r2 = r.clone();
        let releaser = std::thread::spawn(move || r2.release("b2"));
        let began = std::time::Instant::now();
        r.wait_for("c", &asks, Duration::from_secs(30));
        assert!(began.elapsed() < Duration::from_secs(30), "the release ended the wait");
        releaser.join().unwrap();
    }

    fn on(network: &str) -> Attachment {
        Attachment { network: network.into(), ..Default::default() }
    }

    #[test]
    fn only_endpoints_nothing_can_claim_are_released_after_the_exit() {
        let port = shoal_proto::net::parse_publish("8080:80").expect("a port mapping");
        let table: [(&str, Vec<Attachment>, bool); 7] = [
            ("no network", vec![], true),
            ("the default bridge", vec![on("bridge")], true),
            ("a published port", vec![Attachment { ports: vec![port], ..on("bridge") }], false),
            ("a fixed address", vec![Attachment { ip: "172.17.0.9".into(), ..on("bridge") }], false),
            ("a user network (its DNS names it)", vec![on("web")], false),
            ("a cluster lease", vec![Attachment { lease: "l1".into(), ..on("bridge") }], false),
            ("the bridge and a user network", vec![on("bridge"), on("web")], false),
        ];
        for (what, networks, later) in table {
            assert_eq!(release_later(&networks), later, "{what}");
        }
    }
}
