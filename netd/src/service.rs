//! The netd process: its state (networks, endpoints, addresses, the node's
//! overlay view; saved to `<root>/state.json` after every change), the
//! reconcile pass that makes the kernel match it (on every change and every
//! `RESYNC`), and the local gRPC API the daemon calls. The predefined
//! `bridge` network always exists.
//!
//! A container attaches to a cluster network (one of the view's, by id or
//! name) with the address the managers gave it: its endpoint is kept with
//! the others (`State::endpoints`, its `network` the cluster network's id),
//! and the overlay planner makes its veth in the network's sandbox (on a
//! macvlan network, the macvlan planner its link on the parent, with the
//! LAN's gateway as its default route). Unless the network is internal or
//! macvlan, the container also gets a leg on
//! `docker_gwbridge`, a local bridge network netd makes on first need
//! (masqueraded, `icc` off, as Docker's), which carries its default route;
//! the leg goes with its last non-internal cluster endpoint.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_proto::net::{NetView, OverlayNetwork};
use shoal_proto::network::NodeKeys;
use shoal_proto::pb;
use tonic::{Request, Response, Status};

use crate::dns::Table;
use crate::dnsd::Dns;
use crate::encrypted::Encryption;
use crate::ipam::{Ipam, default_pools};
use crate::model::{Desired, EndpointSpec, NetworkSpec, ObservedLink, PortMap, veth_name};
use crate::net::{Subnet, mac_for, mac_string};
use crate::overlay::OverlayAction;
use crate::passes::{Begin, Kind, Passes};
use crate::plan::{Action, plan};
use crate::sys;
use crate::{ingress, ingress_sys, lb, lb_sys};

/// How often netd re-checks the kernel even when nothing was asked.
pub const RESYNC: Duration = Duration::from_secs(5);
/// How long a caller that needs the balancers' tables synced waits for them
/// (a sync takes milliseconds; this only bounds one that hangs).
const BALANCED_WAIT: Duration = Duration::from_secs(5);
/// The local network whose legs carry the default route of containers on
/// cluster networks (Docker's name).
pub const GWBRIDGE: &str = "docker_gwbridge";
/// Where a published port without a host port gets one.
const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct State {
    pub networks: Vec<NetworkSpec>,
    pub endpoints: Vec<EndpointSpec>,
    pub ipam: Ipam,
    /// The node's overlay view as last handed down (`SyncCluster`); until
    /// one comes, netd leaves overlays alone.
    #[serde(default)]
    pub view: Option<NetView>,
    /// Cluster networks that left the view while containers here were still
    /// attached: programmed as before until the last one is detached
    /// (`overlay::kept_networks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<OverlayNetwork>,
    /// The cluster key epoch this host's WireGuard keys were made for
    /// (`None` until the first view; see `encrypted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_key_epoch: Option<u64>,
}

impl State {
    fn network(&self, reference: &str) -> Option<&NetworkSpec> {
        self.networks.iter().find(|n| n.name == reference || n.id == reference).or_else(|| {
            let by_prefix: Vec<&NetworkSpec> =
                self.networks.iter().filter(|n| !reference.is_empty() && n.id.starts_with(reference)).collect();
            if by_prefix.len() == 1 { Some(by_prefix[0]) } else { None }
        })
    }

    /// The cluster networks netd programs: the view's, then those kept.
    fn cluster_networks(&self) -> impl Iterator<Item = &OverlayNetwork> {
        self.view.iter().flat_map(|v| v.networks.iter()).chain(&self.kept)
    }

    /// A cluster network by id, name or unique id prefix (a local network
    /// of the same name is found first, by `network`).
    fn cluster_network(&self, reference: &str) -> Option<&OverlayNetwork> {
        self.cluster_networks().find(|n| n.id == reference || n.name == reference).or_else(|| {
            let by_prefix: Vec<&OverlayNetwork> =
                self.cluster_networks().filter(|n| !reference.is_empty() && n.id.starts_with(reference)).collect();
            if by_prefix.len() == 1 { Some(by_prefix[0]) } else { None }
        })
    }

    /// What the overlay planner works from: the view with the kept networks.
    fn overlay_view(&self) -> Option<NetView> {
        let mut v = self.view.clone()?;
        v.networks.extend(self.kept.iter().cloned());
        Some(v)
    }

    /// Takes a new view, keeping the networks that left it while local
    /// endpoints still use them.
    fn set_view(&mut self, view: NetView) {
        let known: Vec<OverlayNetwork> = self.cluster_networks().cloned().collect();
        self.kept = crate::overlay::kept_networks(&known, &view, &self.endpoints);
        self.view = Some(view);
    }

    /// Whether a container's endpoints need a gateway bridge leg: it has one
    /// on an overlay that is not internal (a macvlan network's gateway is
    /// the LAN's own).
    fn needs_gw_leg(&self, container: &str) -> bool {
        self.endpoints
            .iter()
            .filter(|e| e.container == container)
            .any(|e| self.cluster_networks().any(|n| n.id == e.network && !n.internal && n.macvlan.is_none()))
    }

    /// Those of `endpoints` on macvlan networks.
    fn on_macvlan(&self, endpoints: Vec<EndpointSpec>) -> Vec<EndpointSpec> {
        let macvlan = |e: &EndpointSpec| self.cluster_networks().any(|n| n.id == e.network && n.macvlan.is_some());
        endpoints.into_iter().filter(macvlan).collect()
    }

    /// Removes an endpoint and frees its address (a cluster network's
    /// addresses are the managers': nothing to free here).
    fn release(&mut self, e: &EndpointSpec) {
        if let Some(name) = self.networks.iter().find(|n| n.id == e.network).map(|n| n.name.clone()) {
            self.ipam.release(&name, &e.container);
        }
        self.endpoints.retain(|x| !(x.container == e.container && x.network == e.network));
    }

    /// After endpoints went: gateway bridge legs no cluster endpoint needs
    /// go, and so do kept networks no endpoint uses.
    fn tidy(&mut self) {
        if let Some(gw) = self.network(GWBRIDGE).map(|n| n.id.clone()) {
            let legs: Vec<EndpointSpec> = self
                .endpoints
                .iter()
                .filter(|e| e.network == gw && !self.needs_gw_leg(&e.container))
                .cloned()
                .collect();
            for e in &legs {
                self.release(e);
            }
        }
        let endpoints = &self.endpoints;
        self.kept.retain(|n| endpoints.iter().any(|e| e.network == n.id));
    }

    /// What the kernel should show: endpoints whose namespace is gone are left out.
    fn desired(&self) -> Desired {
        Desired {
            networks: self.networks.clone(),
            endpoints: self.endpoints.iter().filter(|e| e.netns.exists()).cloned().collect(),
        }
    }
}

fn random_id() -> String {
    (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// What the overlays' sandboxes follow: the view without its services and
/// the mesh's services (their VIPs and backends are the balancers' and
/// DNS's), and the local endpoints.
#[derive(PartialEq)]
struct OverlayInputs {
    view: NetView,
    endpoints: Vec<EndpointSpec>,
}

impl OverlayInputs {
    fn of(view: &NetView, endpoints: &[EndpointSpec]) -> OverlayInputs {
        let mut view = NetView { services: Vec::new(), ..view.clone() };
        if let Some(i) = &mut view.ingress {
            i.services.clear();
        }
        OverlayInputs { view, endpoints: endpoints.to_vec() }
    }
}

/// How long a pass waited for the one before it, then each of its phases
/// took (a debug line per pass: where an attach's time goes; `host`,
/// `overlays` and `lb` run side by side, each with its own time). Written out only
/// when the line is.
struct Phases {
    last: std::time::Instant,
    took: Vec<(&'static str, std::time::Duration)>,
}

impl Phases {
    fn new(asked: std::time::Instant) -> Phases {
        let mut p = Phases { last: asked, took: Vec::with_capacity(6) };
        p.mark("queued");
        p
    }

    /// Phases that ran at once, from the last mark to now: each with its own time.
    fn side_by_side<const N: usize>(&mut self, took: [(&'static str, std::time::Duration); N]) {
        self.took.extend(took);
        self.last = std::time::Instant::now();
    }

    fn mark(&mut self, phase: &'static str) {
        let now = std::time::Instant::now();
        self.took.push((phase, now.duration_since(self.last)));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (phase, took)) in self.took.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{phase}={:.1}ms", took.as_secs_f64() * 1e3)?;
        }
        Ok(())
    }
}

/// `state.json`, replaced atomically. Writes are serialised: they share one
/// temp file, and each reads the state under the lock so the last write on
/// disk is the newest state (two calls saving at once once made the loser's
/// rename fail with "No such file or directory"). The temp file is written
/// in place and exchanged with `state.json` (`sys::exchange_or_rename`), so
/// it then holds the state before: a node saves with every view and attach
/// (~75 times per node in a `create100_overlay`), and a new file each time
/// made ext4 scan past every inode the saves of the last minutes freed.
struct StateFile {
    path: PathBuf,
    tmp: PathBuf,
    lock: Mutex<()>,
    /// Saves asked for, and the newest of them whose state is on disk:
    /// callers that queue behind a write are served by the next one.
    asked: std::sync::atomic::AtomicU64,
    written: std::sync::atomic::AtomicU64,
}

impl StateFile {
    fn new(root: &Path) -> StateFile {
        StateFile {
            path: root.join("state.json"),
            tmp: root.join("state.json.tmp"),
            lock: Mutex::new(()),
            asked: Default::default(),
            written: Default::default(),
        }
    }

    /// Puts the state that `bytes` encodes on disk, whole, once it returns.
    /// A caller changes the state, then asks: one write after it took the
    /// lock covers every ask made before it read the state, so callers that
    /// queued behind a write (the attaches of one start burst) share one.
    fn write(&self, bytes: impl FnOnce() -> serde_json::Result<Vec<u8>>) -> std::io::Result<()> {
        use std::io::Write;
        use std::sync::atomic::Ordering::SeqCst;
        let mine = self.asked.fetch_add(1, SeqCst) + 1;
        let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.written.load(SeqCst) >= mine {
            return Ok(()); // a write that read the state after this ask is on disk
        }
        let covers = self.asked.load(SeqCst);
        let bytes = bytes()?;
        let mut f = std::fs::File::create(&self.tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        crate::sys::exchange_or_rename(&self.tmp, &self.path)?;
        self.written.store(covers, SeqCst);
        Ok(())
    }
}

pub struct Netd {
    state: Mutex<State>,
    host: rtnetlink::Handle,
    /// The ruleset last applied, so an unchanged one is not applied again.
    rules: Mutex<Option<String>>,
    /// One reconcile pass at a time.
    pass: tokio::sync::Mutex<()>,
    /// Passes asked for and done, so that the callers that queue while a
    /// pass runs share the next one (see `passes`).
    passes: Mutex<Passes<(Action, String)>>,
    /// What the overlays followed in the last overlay sync that left
    /// nothing failed (see `follow_overlays`).
    overlays_synced: Mutex<Option<OverlayInputs>>,
    /// Where the state is kept between runs.
    file: StateFile,
    /// The embedded DNS server, following the endpoints.
    dns: Arc<Dns>,
    /// The overlays' sandboxes (pinned under `<root>/sandboxes`).
    sandboxes: tokio::sync::Mutex<sys::Sandboxes>,
    /// The overlay steps that failed in the last pass, with why (no step:
    /// the sandboxes could not be observed).
    overlay_failures: Mutex<Vec<(Option<OverlayAction>, String)>>,
    /// The VIP load balancers in the containers' namespaces, following
    /// the passes on a blocking thread of their own (netlink requests from
    /// inside each namespace): a pass publishes what they must balance.
    balancers: Arc<lb_sys::Follower>,
    /// The routing mesh: the host table and the reply steering in the
    /// namespaces of local tasks on ingress (blocking too).
    mesh: Arc<Mutex<ingress_sys::Mesh>>,
    /// The encrypted overlays: this host's WireGuard keys and datapath
    /// (blocking: it opens TUN queues in the sandboxes); the error when the
    /// keys could not be loaded.
    encryption: Arc<Mutex<Result<Encryption, String>>>,
    /// Where the sandboxes are pinned.
    sandbox_dir: PathBuf,
    /// The host pass's link dumps, on a socket in the host's namespace (as `host`).
    link_dumps: Arc<crate::linkdump::Dumper>,
    /// The host's links as the last host pass left them, when the next one
    /// may plan against them rather than observe (see `host_pass`).
    host_known: Mutex<Option<HostKnown>>,
    /// The next host pass observes whatever it knows (`forget_host_links`):
    /// a flag, not a cleared `host_known`, which a pass running meanwhile
    /// would set again as it ends.
    observe_next: std::sync::atomic::AtomicBool,
    /// Host veths left to go with their container's namespace (see `going`).
    going: Mutex<crate::going::Going>,
    /// The same for the containers' legs in the overlays' sandboxes.
    going_legs: Mutex<crate::going::Going>,
}

impl Netd {
    /// Loads (or starts) the state under `root` and makes sure `bridge` exists.
    pub fn open(root: &Path, host: rtnetlink::Handle) -> anyhow::Result<Arc<Netd>> {
        std::fs::create_dir_all(root)?;
        let path = root.join("state.json");
        let mut state: State = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                State { ipam: Ipam::new(default_pools()), ..Default::default() }
            }
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
        };
        if state.network("bridge").is_none() {
            let alloc = state
                .ipam
                .add_network("bridge", None, None, None)
                .map_err(|e| anyhow::anyhow!("the default bridge: {e}"))?
                .clone();
            state.networks.push(NetworkSpec {
                id: random_id(),
                name: "bridge".into(),
                subnet: alloc.subnet,
                gateway: alloc.gateway,
                internal: false,
                icc: true,
                mtu: 1500,
            });
        }
        let encryption = Encryption::open(root, state.wg_key_epoch).map_err(|e| {
            tracing::error!(error = %e, "no WireGuard keys: encrypted networks cannot work on this host");
            format!("this host has no WireGuard keys: {e}")
        });
        let netd = Arc::new(Netd {
            state: Mutex::new(state),
            // A socket of their own: the overlays' requests in the host's namespace (the
            // shims' route dump, `vx0`) run beside the host pass's (a socket takes one dump at a time).
            sandboxes: tokio::sync::Mutex::new(sys::Sandboxes::new(sys::connect()?, root.join("sandboxes"))),
            sandbox_dir: root.join("sandboxes"),
            link_dumps: Arc::new(crate::linkdump::Dumper::open()?),
            encryption: Arc::new(Mutex::new(encryption)),
            overlay_failures: Mutex::new(Vec::new()),
            balancers: Arc::default(),
            mesh: Arc::default(),
            host,
            rules: Mutex::new(None),
            pass: tokio::sync::Mutex::new(()),
            passes: Mutex::new(Passes::default()),
            overlays_synced: Mutex::new(None),
            file: StateFile::new(root),
            dns: Dns::new(Path::new("/etc/resolv.conf")),
            host_known: Mutex::new(None),
            observe_next: Default::default(),
            going: Mutex::default(),
            going_legs: Mutex::default(),
        });
        netd.save().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(netd)
    }

    fn save(&self) -> Result<(), Status> {
        self.file
            .write(|| serde_json::to_vec(&*self.state.lock().unwrap_or_else(|p| p.into_inner())))
            .map_err(|e| Status::internal(format!("saving netd's state: {e}")))
    }

    /// Runs `pass` with the state's save (an fsync of every endpoint and
    /// the view) beside it, on a blocking thread: both are done when this
    /// returns, with the pass's outcome and how long the save took. An
    /// attach and a view answer so.
    async fn saved_beside<T>(
        self: &Arc<Self>,
        pass: impl std::future::Future<Output = T>,
    ) -> Result<(T, std::time::Duration), Status> {
        let (netd, started) = (self.clone(), std::time::Instant::now());
        let save = tokio::task::spawn_blocking(move || netd.save().map(|()| started.elapsed()));
        let out = pass.await;
        let saved = save.await.map_err(|e| Status::internal(format!("saving netd's state: {e}")))??;
        Ok((out, saved))
    }

    /// A whole reconcile pass started after this call (the state changes
    /// the caller made before it are in it), shared by the callers queued
    /// behind the pass running now: attaches that arrive together have
    /// their veths made in one host pass, with one rule update. Returns the
    /// actions that failed in it, with why (each caller looks for its own
    /// endpoint's). Attaches, detaches and the periodic resync take this one.
    pub async fn sync(&self) -> Vec<(Action, String)> {
        self.pass_after(Kind::Whole).await
    }

    /// The periodic resync: a whole pass that also observes the overlays'
    /// sandboxes afresh, which repairs what changed behind netd's back
    /// (other passes plan against what the last sync saw and did, when
    /// that is all they change: `sys::Sandboxes::sync_known`).
    pub async fn resync(&self) -> Vec<(Action, String)> {
        self.pass_after(Kind::Resync).await
    }

    /// A pass for a new network view, started after this call and shared:
    /// views that queue while a pass runs are all served by the next one (a
    /// node's view changes with every task the cluster starts). It programs
    /// what follows the view (overlays, DNS, load balancers, the mesh) and
    /// leaves the host's links and rules alone: those follow the local state
    /// only, which a view does not change (attaches, detaches and every
    /// `RESYNC` reconcile them).
    pub async fn sync_shared(&self) -> Vec<(Action, String)> {
        self.pass_after(Kind::View).await
    }

    async fn pass_after(&self, kind: Kind) -> Vec<(Action, String)> {
        let asked = std::time::Instant::now();
        let mine = self.passes.lock().unwrap_or_else(|p| p.into_inner()).ask();
        let _pass = self.pass.lock().await;
        let begin = self.passes.lock().unwrap_or_else(|p| p.into_inner()).begin(kind, mine);
        let covers = match begin {
            Begin::Served(failed) => return failed,
            Begin::Run { covers } => covers,
        };
        let failed = self.pass_once(asked, kind).await;
        self.passes.lock().unwrap_or_else(|p| p.into_inner()).finish(kind, covers, failed.clone());
        failed
    }

    /// One reconcile pass (the caller holds `pass`); the host's part only
    /// in a whole pass. The host's links, the overlays' sandboxes and the
    /// balancers go side by side: they touch different namespaces or
    /// different objects (a container's two legs, its `docker_gwbridge` one
    /// from the host and its overlay one from the sandbox, are made at once,
    /// and its balancer table, which needs no link, meanwhile), and what
    /// follows (DNS, mesh) waits for them. The balancers' want is published
    /// first (`lb_sys::Follower`); a whole pass writes the tables of the
    /// namespaces that are new or on other VIPs itself.
    async fn pass_once(&self, asked: std::time::Instant, kind: Kind) -> Vec<(Action, String)> {
        let host = kind != Kind::View;
        use futures::FutureExt;
        let mut phases = Phases::new(asked);
        // Taken before the state is read: a forget made after this is in a later pass's.
        let observe_host =
            kind == Kind::Resync || (host && self.observe_next.swap(false, std::sync::atomic::Ordering::SeqCst));
        // When it was read, under the lock a detach marks its links going under (see `going`).
        let (desired, read_at) = {
            let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (state.desired(), std::time::Instant::now())
        };
        // One reading of the host's links for both parts (and the macvlan shims).
        let (handle, dumps) = (self.host.clone(), self.link_dumps.clone());
        let links =
            async move { sys::HostLinks::read_with(&handle, &dumps).await.map(Arc::new).map_err(|e| e.to_string()) }
                .shared();
        let host_part = async {
            let start = std::time::Instant::now();
            let failed =
                if host { self.host_pass(&desired, read_at, observe_host, links.clone()).await } else { Vec::new() };
            (failed, start.elapsed())
        };
        let overlays_part = async {
            let start = std::time::Instant::now();
            let view = self.follow_overlays(&desired, read_at, host, kind == Kind::Resync, links.clone()).await;
            (view, start.elapsed())
        };
        // The VIP load balancers of the containers on cluster networks (none without a view).
        // Published first: a sync that takes an older want after `sync_starts` could undo it.
        let view_now = self.state.lock().unwrap_or_else(|p| p.into_inner()).overlay_view();
        let balanced = view_now.as_ref().map(|v| lb::by_namespace(v, &desired.endpoints)).unwrap_or_default();
        let started = host.then(|| balanced.clone());
        self.balancers.follow(balanced);
        let lb_part = async {
            let start = std::time::Instant::now();
            if let Some(balanced) = started {
                let balancers = self.balancers.clone();
                let errors =
                    tokio::task::spawn_blocking(move || balancers.sync_starts(&balanced)).await.unwrap_or_default();
                for e in errors {
                    tracing::warn!(error = %e, "load balancer step failed");
                }
            }
            start.elapsed()
        };
        let ((failed, host_took), (view, overlays_took), lb_took) = tokio::join!(host_part, overlays_part, lb_part);
        phases.side_by_side([("host", host_took), ("overlays", overlays_took), ("lb", lb_took)]);
        self.follow_view(&desired, view, &mut phases).await;
        tracing::debug!(endpoints = desired.endpoints.len(), phases = %phases, "pass");
        failed
    }

    /// The next host pass observes the host's links (see `host_pass`).
    fn forget_host_links(&self) {
        self.observe_next.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The host's links, addresses and rules made to match the local state.
    /// Planned against what the last host pass observed and did, when the
    /// veths it wanted are still wanted, no link is going, no endpoint was
    /// attached again since (`forget_host_links`) and the plan only adds
    /// veths and rules (`plan::after`: a node starting containers);
    /// otherwise, and in every resync (`observe`), against the links as
    /// `observed` reads them now. A dump of every link per attach made a
    /// host's starts cost O(containers²).
    async fn host_pass(
        &self,
        desired: &Desired,
        read_at: std::time::Instant,
        observe: bool,
        observed: impl std::future::Future<Output = Result<Arc<sys::HostLinks>, String>>,
    ) -> Vec<(Action, String)> {
        let wanted: HashSet<String> = desired.endpoints.iter().map(|e| veth_name(&e.container, &e.network)).collect();
        let applied = self.rules.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let known = self.host_known.lock().unwrap_or_else(|p| p.into_inner()).take();
        let from_known = known
            .filter(|k| {
                !observe
                    && k.wanted.is_subset(&wanted)
                    && self.going.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
            })
            .and_then(|k| {
                let actions = plan(desired, &k.links, applied.as_deref());
                let left = crate::plan::after(&k.links, &actions)?;
                Some((actions, Some(left)))
            });
        let (actions, left) = match from_known {
            Some(planned) => planned,
            None => {
                let observed = match observed.await {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot observe the host's links");
                        return vec![];
                    }
                };
                // The veths the kernel is deleting with their namespaces stay out of the plan.
                let links = self.going.lock().unwrap_or_else(|p| p.into_inner()).spare(
                    observed.links.clone(),
                    |n| wanted.contains(n),
                    read_at,
                    std::time::Instant::now(),
                );
                let actions = plan(desired, &links, applied.as_deref());
                let left = crate::plan::after(&links, &actions);
                (actions, left)
            }
        };
        let mut failed = Vec::new();
        for batch in batches(actions) {
            // The new endpoints of a pass (each its own veth and namespace) are made at once:
            // their netlink requests go out together, not one endpoint's round trips after another's.
            let (began, n) = (std::time::Instant::now(), batch.len());
            let results = futures::future::join_all(batch.iter().map(|a| sys::apply(&self.host, a))).await;
            let ms = began.elapsed().as_secs_f64() * 1e3;
            for (action, result) in batch.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        tracing::debug!(?action, batch = n, ms, "applied");
                        if let Action::ApplyRules { ruleset } = &action {
                            *self.rules.lock().unwrap_or_else(|p| p.into_inner()) = Some(ruleset.clone());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(?action, error = %e, "reconcile step failed");
                        failed.push((action, e.to_string()));
                    }
                }
            }
        }
        *self.host_known.lock().unwrap_or_else(|p| p.into_inner()) =
            left.filter(|_| failed.is_empty()).map(|links| HostKnown { links, wanted });
        failed
    }

    /// The overlays' sandboxes (and the encrypted networks' datapath) made to
    /// follow the network view; returns the view (None before one came).
    /// The overlays are left alone in a view pass (not `whole`) when what
    /// they follow is as the last clean overlay sync left it: most new views
    /// only change services' backends (a task started somewhere). The
    /// sandboxes are observed afresh in a resync (`observe`), else only when
    /// the plan against what the last sync saw and did changes more than
    /// entries and new endpoints' veths. `host` reads the host's links
    /// (shared with the host pass).
    async fn follow_overlays(
        &self,
        desired: &Desired,
        read_at: std::time::Instant,
        whole: bool,
        observe: bool,
        host: impl std::future::Future<Output = Result<Arc<sys::HostLinks>, String>>,
    ) -> Option<NetView> {
        let view = self.state.lock().unwrap_or_else(|p| p.into_inner()).overlay_view();
        if let Some(view) = &view {
            let inputs = OverlayInputs::of(view, &desired.endpoints);
            let unchanged = self.overlays_synced.lock().unwrap_or_else(|p| p.into_inner()).as_ref() == Some(&inputs);
            if whole || !unchanged {
                let mut sandboxes = self.sandboxes.lock().await;
                // The legs the kernel deletes with their containers' namespaces stay out of the plan.
                let wanted: HashSet<String> =
                    desired.endpoints.iter().map(|e| veth_name(&e.container, &e.network)).collect();
                let spare = |observed: &mut [crate::overlay::ObservedSandbox]| {
                    let mut links: Vec<&mut Vec<_>> = observed.iter_mut().map(|s| &mut s.links).collect();
                    let mut going = self.going_legs.lock().unwrap_or_else(|p| p.into_inner());
                    going.spare_each(&mut links, |n| wanted.contains(n), read_at, std::time::Instant::now());
                };
                // Planned against what the last sync saw and did, if that is all the plan
                // changes (entries, new endpoints' veths); every RESYNC observes.
                let known = if observe { None } else { sandboxes.sync_known(view, &desired.endpoints, &spare).await };
                let failed = match known {
                    Some(failed) => failed,
                    None => sandboxes.sync_with(view, &desired.endpoints, host, &spare).await,
                };
                drop(sandboxes);
                *self.overlays_synced.lock().unwrap_or_else(|p| p.into_inner()) = failed.is_empty().then_some(inputs);
                *self.overlay_failures.lock().unwrap_or_else(|p| p.into_inner()) = failed;
            }
            // After the sandboxes: the datapath opens the TUNs they hold.
            let errors = self.follow_encryption(view, &desired.endpoints).await;
            if !errors.is_empty() {
                *self.overlays_synced.lock().unwrap_or_else(|p| p.into_inner()) = None;
                let mut failures = self.overlay_failures.lock().unwrap_or_else(|p| p.into_inner());
                failures.extend(errors.into_iter().map(|e| (None, e)));
            }
        }
        view
    }

    /// What follows the network view after the sandboxes: DNS and the
    /// routing mesh (the balancers went beside the sandboxes).
    async fn follow_view(&self, desired: &Desired, view: Option<NetView>, phases: &mut Phases) {
        // DNS follows the endpoints (after them: its sockets need the namespaces' loopback up),
        // with the services of the cluster networks from the view.
        let networks = self.state.lock().unwrap_or_else(|p| p.into_inner()).networks.clone();
        self.dns.set_table(Table::from_state(&networks, &desired.endpoints, view.as_ref()));
        let want = crate::dnsd::listeners(&desired.endpoints);
        for (container, why) in self.dns.reconcile(&want) {
            tracing::debug!(container, error = %why, "cannot serve DNS in the container yet");
        }
        phases.mark("dns");
        // The routing mesh: the host table (in this namespace, the host's: a blocking
        // thread of this runtime is in it) and the steering of the local tasks on ingress.
        let host_table = view.as_ref().and_then(|v| v.ingress.as_ref()).map(ingress::host_table);
        let steering = view.as_ref().map(|v| ingress::steering(v, &desired.endpoints)).unwrap_or_default();
        let mesh = self.mesh.clone();
        let errors = tokio::task::spawn_blocking(move || {
            let mut mesh = mesh.lock().unwrap_or_else(|p| p.into_inner());
            let mut errors: Vec<ingress_sys::MeshError> =
                mesh.sync_host(host_table.as_ref()).err().into_iter().collect();
            errors.extend(mesh.sync_steering(steering));
            errors
        })
        .await
        .unwrap_or_default();
        for e in errors {
            tracing::warn!(error = %e, "routing mesh step failed");
        }
        phases.mark("mesh");
    }

    /// The WireGuard keys and datapath made to follow `view` (a rotation
    /// when its epoch passed the keys'); the epoch is saved with the state.
    async fn follow_encryption(&self, view: &NetView, endpoints: &[EndpointSpec]) -> Vec<String> {
        let (enc, view, endpoints, dir) =
            (self.encryption.clone(), view.clone(), endpoints.to_vec(), self.sandbox_dir.clone());
        let followed = tokio::task::spawn_blocking(move || {
            let mut enc = enc.lock().unwrap_or_else(|p| p.into_inner());
            match enc.as_mut() {
                Ok(e) => Ok((e.follow(&view, &endpoints, &dir), e.epoch())),
                Err(why) => Err(why.clone()),
            }
        })
        .await;
        let (errors, epoch) = match followed {
            Ok(Ok(f)) => f,
            Ok(Err(why)) => return if view_has_encrypted(&self.state) { vec![why] } else { vec![] },
            Err(e) => return vec![format!("the WireGuard step panicked: {e}")],
        };
        let moved = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let moved = state.wg_key_epoch != epoch;
            state.wg_key_epoch = epoch;
            moved
        };
        if moved && let Err(e) = self.save() {
            tracing::warn!(error = %e, "saving the WireGuard key epoch");
        }
        errors
    }

    /// This host's WireGuard public keys (none when they could not be loaded).
    pub fn node_keys(&self) -> Option<NodeKeys> {
        self.encryption.lock().unwrap_or_else(|p| p.into_inner()).as_ref().ok().map(Encryption::node_keys)
    }

    /// Waits (at most [`BALANCED_WAIT`]) until the balancers synced to what
    /// the last pass published.
    async fn balanced(&self) {
        let n = self.balancers.published();
        if !self.balancers.covered(n, BALANCED_WAIT).await {
            tracing::warn!(want = n, "the load balancers did not catch up within {BALANCED_WAIT:?}");
        }
    }

    /// Reconciles the kernel against the state every [`RESYNC`] until `cancel` fires.
    pub async fn run(self: Arc<Self>, cancel: tokio_util::sync::CancellationToken) {
        loop {
            self.resync().await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    fn info(&self, n: &NetworkSpec, state: &State) -> pb::NetworkInfo {
        pb::NetworkInfo {
            id: n.id.clone(),
            name: n.name.clone(),
            driver: "bridge".into(),
            subnet: n.subnet.to_string(),
            gateway: n.gateway.to_string(),
            internal: n.internal,
            icc: n.icc,
            mtu: n.mtu,
            endpoints: state.endpoints.iter().filter(|e| e.network == n.id).count() as u32,
        }
    }
}

/// Whether two published ports would take the same host port.
fn clash(a: &PortMap, b: &PortMap) -> bool {
    a.proto == b.proto
        && a.host_port == b.host_port
        && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
}

/// The host's links as a host pass left them (`plan::after`), and the
/// veths that were wanted then: a later pass that wants fewer observes.
#[derive(Debug)]
struct HostKnown {
    links: Vec<ObservedLink>,
    wanted: HashSet<String>,
}

/// The gRPC face of netd.
pub struct NetdService(pub Arc<Netd>);

#[tonic::async_trait]
impl pb::netd_server::Netd for NetdService {
    async fn network_create(
        &self,
        req: Request<pb::NetworkCreateRequest>,
    ) -> Result<Response<pb::NetworkInfo>, Status> {
        let r = req.into_inner();
        let valid = !r.name.is_empty()
            && r.name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && !r.name.starts_with(['.', '-']);
        if !valid {
            return Err(Status::invalid_argument(format!(
                "invalid network name {:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]",
                r.name
            )));
        }
        let parse_subnet = |s: &str| -> Result<Option<Subnet>, Status> {
            if s.is_empty() { Ok(None) } else { s.parse().map(Some).map_err(Status::invalid_argument) }
        };
        let subnet = parse_subnet(&r.subnet)?;
        let range = parse_subnet(&r.ip_range)?;
        let gateway: Option<Ipv4Addr> = if r.gateway.is_empty() {
            None
        } else {
            Some(r.gateway.parse().map_err(|_| Status::invalid_argument(format!("invalid gateway {:?}", r.gateway)))?)
        };
        let info = {
            let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
            if state.network(&r.name).is_some() {
                return Err(Status::already_exists(format!("network with name {} already exists", r.name)));
            }
            let alloc = state
                .ipam
                .add_network(&r.name, subnet, gateway, range)
                .map_err(|e| Status::invalid_argument(e.to_string()))?
                .clone();
            let mtu = if r.mtu == 0 { 1500 } else { r.mtu };
            if !(576..=65535).contains(&mtu) {
                state.ipam.remove_network(&r.name).ok();
                return Err(Status::invalid_argument(format!("invalid MTU {mtu}: 576 to 65535")));
            }
            let n = NetworkSpec {
                id: random_id(),
                name: r.name.clone(),
                subnet: alloc.subnet,
                gateway: alloc.gateway,
                internal: r.internal,
                icc: !r.icc_disabled,
                mtu,
            };
            state.networks.push(n.clone());
            self.0.info(&n, &state)
        };
        self.0.save()?;
        self.0.sync().await;
        Ok(Response::new(info))
    }

    async fn network_list(&self, _req: Request<pb::Empty>) -> Result<Response<pb::NetworkInfos>, Status> {
        let state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut networks: Vec<pb::NetworkInfo> = state.networks.iter().map(|n| self.0.info(n, &state)).collect();
        networks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::NetworkInfos { networks }))
    }

    async fn network_remove(&self, req: Request<pb::NetworkRef>) -> Result<Response<pb::Empty>, Status> {
        let name = req.into_inner().name;
        {
            let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
            let n =
                state.network(&name).cloned().ok_or_else(|| Status::not_found(format!("network {name} not found")))?;
            if n.name == "bridge" {
                return Err(Status::failed_precondition("bridge is a pre-defined network and cannot be removed"));
            }
            let users: Vec<String> = state
                .endpoints
                .iter()
                .filter(|e| e.network == n.id)
                .map(|e| e.container[..12.min(e.container.len())].to_string())
                .collect();
            if !users.is_empty() {
                return Err(Status::failed_precondition(format!(
                    "network {} is in use by container(s) {}: remove or disconnect them first",
                    n.name,
                    users.join(", ")
                )));
            }
            state.ipam.remove_network(&n.name).map_err(|e| Status::failed_precondition(e.to_string()))?;
            state.networks.retain(|x| x.id != n.id);
        }
        self.0.save()?;
        self.0.sync().await;
        Ok(Response::new(pb::Empty {}))
    }

    async fn attach(&self, req: Request<pb::AttachRequest>) -> Result<Response<pb::AttachResponse>, Status> {
        let r = req.into_inner();
        let (endpoint, n, created) = {
            let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
            ensure(&mut state, &r)?
        };
        if !created {
            // An endpoint attached again (its namespace made anew, say): what the last
            // pass knew of its veth may be gone, so the pass observes.
            self.0.forget_host_links();
        }
        let started = std::time::Instant::now();
        let (failed, saved) = self.0.saved_beside(self.0.sync()).await?;
        tracing::debug!(
            container = short(&r.container),
            save_ms = saved.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "attach"
        );
        let why = match &n {
            Joined::Local(_) => create_failure(&failed, &endpoint),
            Joined::Cluster(_, gw) => {
                // The overlay leg, then the gateway bridge leg.
                let overlay = self.0.overlay_failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
                overlay_create_failure(&overlay, &endpoint)
                    .or_else(|| gw.as_ref().and_then(|g| create_failure(&failed, g)))
            }
        };
        if let Some(why) = why {
            if created {
                self.0.forget(&r.container, Some(n.id()), false).await?;
            }
            return Err(Status::internal(format!(
                "attaching container {} to {}: {why}",
                short(&r.container),
                n.name()
            )));
        }
        Ok(Response::new(n.response(&endpoint)))
    }

    async fn detach(&self, req: Request<pb::DetachRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        let network = if r.network.is_empty() {
            None
        } else {
            let state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
            let (id, name) = match state.network(&r.network) {
                Some(n) => (n.id.clone(), n.name.clone()),
                None => state
                    .cluster_network(&r.network)
                    .map(|n| (n.id.clone(), n.name.clone()))
                    .ok_or_else(|| Status::not_found(format!("network {} not found", r.network)))?,
            };
            if !state.endpoints.iter().any(|e| e.container == r.container && e.network == id) {
                return Err(Status::failed_precondition(format!(
                    "container {} is not connected to network {name}",
                    short(&r.container),
                )));
            }
            Some(id)
        };
        self.0.forget(&r.container, network.as_deref(), r.netns_going).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn sync_cluster(&self, req: Request<pb::NetView>) -> Result<Response<pb::SyncClusterResponse>, Status> {
        let view = NetView::from_pb(&req.into_inner()).map_err(Status::invalid_argument)?;
        // The addresses whose tasks left the view: flows to them are flushed after the
        // pass (a backend merely out of `backends` drains; a gone task's flows move on).
        let (gone, drained): (Vec<Ipv4Addr>, bool) = {
            let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
            let now: HashSet<Ipv4Addr> = view.endpoints.iter().map(|e| e.addr).collect();
            let gone =
                state.view.iter().flat_map(|v| &v.endpoints).map(|e| e.addr).filter(|a| !now.contains(a)).collect();
            let drained = state.view.as_ref().is_some_and(|old| drains(old, &view));
            state.set_view(view);
            (gone, drained)
        };
        self.0.saved_beside(self.0.sync_shared()).await?;
        // The managers stop a task once every node said it applied a view without it
        // (`view_applied`): this answer waits until the tables no longer send to it.
        // A task that ended holds nothing up: the node's worker, which waits for this
        // answer, starts its replacement meanwhile.
        if drained {
            self.0.balanced().await;
        }
        if !gone.is_empty() {
            // After the tables dropped them: a flushed flow is balanced afresh, not onto them again.
            let balancers = self.0.balancers.clone();
            tokio::spawn(async move {
                let n = balancers.published();
                if !balancers.covered(n, BALANCED_WAIT).await {
                    tracing::warn!(want = n, "the load balancers did not catch up within {BALANCED_WAIT:?}");
                }
                let errors = tokio::task::spawn_blocking(move || balancers.flush(&gone)).await.unwrap_or_default();
                for e in errors {
                    tracing::warn!(error = %e, "flushing a gone backend's flows");
                }
            });
        }
        let errors = self
            .0
            .overlay_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(a, why)| match a {
                Some(a) => format!("{a:?}: {why}"),
                None => why.clone(),
            })
            .collect();
        let keys = self.0.node_keys().map(|k| k.to_pb());
        Ok(Response::new(pb::SyncClusterResponse { errors, keys }))
    }

    async fn wg_peers(&self, _req: Request<pb::Empty>) -> Result<Response<pb::WgPeerList>, Status> {
        let enc = self.0.encryption.clone();
        let stats = tokio::task::spawn_blocking(move || {
            enc.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|e| e.stats()).unwrap_or_default()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        let ms = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let peers = stats
            .into_iter()
            .map(|p| pb::WgPeer {
                node: p.node,
                endpoint: p.endpoint.to_string(),
                last_handshake_ms: p.last_handshake.map_or(0, ms),
                tx_bytes: p.tx_bytes,
                rx_bytes: p.rx_bytes,
                spoofed: p.spoofed,
            })
            .collect();
        Ok(Response::new(pb::WgPeerList { peers }))
    }

    async fn sync(&self, req: Request<pb::SyncRequest>) -> Result<Response<pb::SyncResponse>, Status> {
        let reqs = req.into_inner().endpoints;
        // The engine's whole list (after a restart of either): its pass observes.
        self.0.forget_host_links();
        let results: (Vec<Ensured>, Vec<EndpointSpec>) = {
            let mut state = self.0.state.lock().unwrap_or_else(|p| p.into_inner());
            let results: Vec<_> = reqs
                .iter()
                .map(|r| ensure(&mut state, r).map(|(e, n, _)| (e, n)).map_err(|s| s.message().to_string()))
                .collect();
            // Gateway bridge legs are netd's own: `tidy` drops those no one needs.
            let gw = state.network(GWBRIDGE).map(|n| n.id.clone());
            let keep: std::collections::HashSet<(String, String)> =
                results.iter().flatten().map(|(e, _)| (e.container.clone(), e.network.clone())).collect();
            let gone: Vec<EndpointSpec> = state
                .endpoints
                .iter()
                .filter(|e| Some(&e.network) != gw.as_ref())
                .filter(|e| !keep.contains(&(e.container.clone(), e.network.clone())))
                .cloned()
                .collect();
            for e in &gone {
                state.release(e);
            }
            state.tidy();
            (results, state.on_macvlan(gone))
        };
        let (results, unplugged) = results;
        self.0.save()?;
        let failed = self.0.sync().await;
        self.0.unplug(unplugged).await;
        let endpoints = reqs
            .iter()
            .zip(results)
            .map(|(r, result)| match result {
                Ok((e, n)) => {
                    let mut a = n.response(&e);
                    let why = match &n {
                        Joined::Local(_) => create_failure(&failed, &e),
                        Joined::Cluster(..) => overlay_create_failure(
                            &self.0.overlay_failures.lock().unwrap_or_else(|p| p.into_inner()),
                            &e,
                        ),
                    };
                    if let Some(why) = why {
                        a.error = format!("attaching to {}: {why}", n.name());
                    }
                    a
                }
                Err(why) => pb::AttachResponse {
                    container: r.container.clone(),
                    network: r.network.clone(),
                    error: why,
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(pb::SyncResponse { endpoints }))
    }
}

/// One endpoint of a `Sync` request: attached to its network, or why not.
type Ensured = Result<(EndpointSpec, Joined), String>;

/// A host pass's actions in the order planned, the endpoints to create
/// that follow one another taken together (they touch only their own
/// links and namespaces); every other action alone.
/// Whether the view netd holds has an encrypted network.
/// Whether `new` takes a backend out of a service's VIP balancing that `old`
/// had (the same service on the same network, or a service gone) while its
/// task is still there (its endpoint still in `new`): a task the managers
/// are stopping, whose stop waits for the tables to drop it. A backend that
/// left with its endpoint is a task that ended (it died, or was stopped
/// after its drain): nothing waits on that, so neither does the answer.
fn drains(old: &NetView, new: &NetView) -> bool {
    let still: HashSet<Ipv4Addr> = new.endpoints.iter().map(|e| e.addr).collect();
    old.services.iter().any(|o| {
        let kept = new.services.iter().find(|n| n.id == o.id && n.network == o.network).map(|n| &n.backends);
        o.backends.iter().any(|b| still.contains(b) && !kept.is_some_and(|k| k.contains(b)))
    })
}

fn view_has_encrypted(state: &Mutex<State>) -> bool {
    state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .view
        .as_ref()
        .is_some_and(|v| v.networks.iter().any(|n| n.encrypted))
}

fn batches(actions: Vec<Action>) -> Vec<Vec<Action>> {
    let mut out: Vec<Vec<Action>> = Vec::new();
    for a in actions {
        let endpoint = matches!(a, Action::CreateEndpoint { .. });
        match out.last_mut() {
            Some(last) if endpoint && matches!(last.first(), Some(Action::CreateEndpoint { .. })) => last.push(a),
            _ => out.push(vec![a]),
        }
    }
    out
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

/// Why a cluster endpoint's veth could not be made in its sandbox (or its
/// macvlan link in its container) in the last pass, if it could not (or
/// the sandboxes could not be seen).
fn overlay_create_failure(failed: &[(Option<OverlayAction>, String)], e: &EndpointSpec) -> Option<String> {
    use crate::macvlan::MacvlanAction;
    let host = veth_name(&e.container, &e.network);
    failed
        .iter()
        .find(|(a, _)| match a {
            Some(OverlayAction::CreateEndpoint { host: h, .. }) => *h == host,
            Some(OverlayAction::Macvlan(MacvlanAction::CreateChild { endpoint, .. })) => {
                endpoint.container == e.container && endpoint.network == e.network
            }
            Some(_) => false,
            None => true,
        })
        .map(|(_, why)| why.clone())
}

/// Why the endpoint's veth could not be made in this pass, if it could not.
fn create_failure(failed: &[(Action, String)], e: &EndpointSpec) -> Option<String> {
    let host = veth_name(&e.container, &e.network);
    failed
        .iter()
        .find(|(a, _)| matches!(a, Action::CreateEndpoint { host: h, .. } if *h == host))
        .map(|(_, why)| why.clone())
}

/// The network an endpoint joined.
// One per attach answer, never stored: the size of the cluster variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Joined {
    Local(NetworkSpec),
    /// A cluster network, with the container's gateway bridge leg (none on
    /// an internal network).
    Cluster(OverlayNetwork, Option<EndpointSpec>),
}

impl Joined {
    fn id(&self) -> &str {
        match self {
            Joined::Local(n) => &n.id,
            Joined::Cluster(n, _) => &n.id,
        }
    }

    fn name(&self) -> &str {
        match self {
            Joined::Local(n) => &n.name,
            Joined::Cluster(n, _) => &n.name,
        }
    }

    fn response(&self, e: &EndpointSpec) -> pb::AttachResponse {
        match self {
            Joined::Local(n) => attach_response(e, n),
            // The overlay leg has no gateway: the default route is the gateway bridge leg's
            // (a macvlan endpoint's is the LAN's gateway).
            Joined::Cluster(n, _) => pb::AttachResponse {
                network: n.name.clone(),
                network_id: n.id.clone(),
                prefix: n.prefix.into(),
                gateway: if n.macvlan.is_some() { n.gateway.to_string() } else { String::new() },
                ports: vec![],
                ..endpoint_response(e)
            },
        }
    }
}

/// Attaches one endpoint in `state` (or updates the namespace and names of
/// an attached one, keeping its address and ports); says whether it is new.
fn ensure(state: &mut State, r: &pb::AttachRequest) -> Result<(EndpointSpec, Joined, bool), Status> {
    if r.container.is_empty() || r.netns.is_empty() {
        return Err(Status::invalid_argument("attach needs a container and its network namespace"));
    }
    let want: Option<Ipv4Addr> = if r.ip.is_empty() {
        None
    } else {
        Some(r.ip.parse().map_err(|_| Status::invalid_argument(format!("invalid --ip {:?}", r.ip)))?)
    };
    let mut ports: Vec<PortMap> =
        r.ports.iter().map(PortMap::from_pb).collect::<Result<_, _>>().map_err(Status::invalid_argument)?;
    let dns = upstreams(r)?;
    let n = match state.network(&r.network).cloned() {
        Some(n) => n,
        None => {
            let n = state
                .cluster_network(&r.network)
                .cloned()
                .ok_or_else(|| Status::not_found(format!("network {} not found", r.network)))?;
            return ensure_cluster(state, r, n, want, ports, dns);
        }
    };
    if let Some(e) = state.endpoints.iter_mut().find(|e| e.container == r.container && e.network == n.id) {
        e.netns = PathBuf::from(&r.netns);
        e.name = r.name.clone();
        e.aliases = r.aliases.clone();
        e.dns = dns;
        return Ok((e.clone(), Joined::Local(n), false));
    }
    // Host ports: free of every other endpoint's, and chosen when 0.
    let taken: Vec<PortMap> = state.endpoints.iter().flat_map(|e| e.ports.clone()).collect();
    for i in 0..ports.len() {
        if ports[i].host_port == 0 {
            let (before, rest) = ports.split_at(i);
            let p = &rest[0];
            let free = EPHEMERAL.clone().find(|hp| {
                let cand = PortMap { host_port: *hp, ..p.clone() };
                !taken.iter().chain(before).any(|t| clash(t, &cand))
            });
            ports[i].host_port = free.ok_or_else(|| Status::resource_exhausted("no free host port left"))?;
        } else if let Some(t) = taken.iter().chain(&ports[..i]).find(|t| clash(t, &ports[i])) {
            return Err(Status::already_exists(format!(
                "Bind for {}:{} failed: port is already allocated ({}/{})",
                ports[i].host_ip.map_or("0.0.0.0".to_string(), |h| h.to_string()),
                ports[i].host_port,
                t.host_port,
                t.proto.as_str()
            )));
        }
    }
    let ip =
        state.ipam.allocate(&n.name, &r.container, want).map_err(|e| Status::failed_precondition(e.to_string()))?;
    let ifname = free_ifname(state, &r.container);
    let e = EndpointSpec {
        container: r.container.clone(),
        name: r.name.clone(),
        aliases: r.aliases.clone(),
        network: n.id.clone(),
        ip,
        netns: PathBuf::from(&r.netns),
        ifname,
        ports,
        dns,
    };
    state.endpoints.push(e.clone());
    Ok((e, Joined::Local(n), true))
}

/// The container's `--dns` servers from an attach request.
fn upstreams(r: &pb::AttachRequest) -> Result<Vec<std::net::IpAddr>, Status> {
    r.dns
        .iter()
        .map(|d| d.parse().map_err(|_| Status::invalid_argument(format!("invalid dns server {d:?}: an IP address"))))
        .collect()
}

/// The lowest free `ethN` in the container.
fn free_ifname(state: &State, container: &str) -> String {
    let used: Vec<&str> =
        state.endpoints.iter().filter(|e| e.container == container).map(|e| e.ifname.as_str()).collect();
    (0..).map(|i| format!("eth{i}")).find(|n| !used.contains(&n.as_str())).unwrap_or_default()
}

/// `ensure` on cluster network `n`: the address is the managers' (the
/// request must carry it); with a leg on the gateway bridge unless `n` is
/// internal.
fn ensure_cluster(
    state: &mut State,
    r: &pb::AttachRequest,
    n: OverlayNetwork,
    want: Option<Ipv4Addr>,
    ports: Vec<PortMap>,
    dns: Vec<std::net::IpAddr>,
) -> Result<(EndpointSpec, Joined, bool), Status> {
    if !ports.is_empty() && n.internal {
        return Err(Status::invalid_argument(format!(
            "internal network {} has no way in for published ports: publish them on another network",
            n.name
        )));
    }
    let ip = want.ok_or_else(|| {
        Status::invalid_argument(format!(
            "an address on cluster network {} is the managers' to give: attach with the task's address (ip)",
            n.name
        ))
    })?;
    let subnet = Subnet::new(n.subnet, n.prefix).map_err(Status::invalid_argument)?;
    if !subnet.contains(ip) || ip == subnet.network() || ip == subnet.broadcast() || ip == n.gateway {
        return Err(Status::invalid_argument(format!(
            "address {ip} is not a host address of cluster network {} ({subnet}, gateway {})",
            n.name, n.gateway
        )));
    }
    if let Some(other) = state.endpoints.iter().find(|e| e.network == n.id && e.ip == ip && e.container != r.container)
    {
        return Err(Status::already_exists(format!(
            "address {ip} on {} is taken by container {}",
            n.name,
            short(&other.container)
        )));
    }
    let created = match state.endpoints.iter_mut().find(|e| e.container == r.container && e.network == n.id) {
        Some(e) if e.ip != ip => {
            return Err(Status::failed_precondition(format!(
                "container {} is on {} with address {}: detach it first",
                short(&r.container),
                n.name,
                e.ip
            )));
        }
        Some(e) => {
            e.netns = PathBuf::from(&r.netns);
            e.name = r.name.clone();
            e.aliases = r.aliases.clone();
            e.dns = dns;
            false
        }
        None => {
            let ifname = free_ifname(state, &r.container);
            state.endpoints.push(EndpointSpec {
                container: r.container.clone(),
                name: r.name.clone(),
                aliases: r.aliases.clone(),
                network: n.id.clone(),
                ip,
                netns: PathBuf::from(&r.netns),
                ifname,
                ports: vec![],
                dns,
            });
            true
        }
    };
    let e = state.endpoints.iter().find(|e| e.container == r.container && e.network == n.id).cloned();
    let e = e.ok_or_else(|| Status::internal("the endpoint just made is gone"))?;
    // A macvlan endpoint's default route is the LAN's gateway, on the endpoint itself.
    let leg = match n.internal || n.macvlan.is_some() {
        true => None,
        false => match gw_leg(state, r, &ports) {
            Ok(leg) => Some(leg),
            Err(why) => {
                if created {
                    state.release(&e);
                }
                return Err(why);
            }
        },
    };
    Ok((e, Joined::Cluster(n, leg), created))
}

/// The container's leg on the gateway bridge (`GWBRIDGE`, made from the
/// local address pools on first need; a local network of that name made by
/// the user is taken as it is, as Docker does). A task's host-mode ports
/// are published on it (the note's §7.4: DNAT to the task's gateway bridge
/// address), with the first cluster network that asks; a leg made already
/// keeps the ports it has.
fn gw_leg(state: &mut State, r: &pb::AttachRequest, ports: &[PortMap]) -> Result<EndpointSpec, Status> {
    if state.network(GWBRIDGE).is_none() {
        let alloc = state
            .ipam
            .add_network(GWBRIDGE, None, None, None)
            .map_err(|e| Status::resource_exhausted(format!("no subnet for {GWBRIDGE}: {e}")))?
            .clone();
        state.networks.push(NetworkSpec {
            id: random_id(),
            name: GWBRIDGE.into(),
            subnet: alloc.subnet,
            gateway: alloc.gateway,
            internal: false,
            icc: false,
            mtu: 1500,
        });
    }
    let leg = pb::AttachRequest {
        container: r.container.clone(),
        network: GWBRIDGE.into(),
        netns: r.netns.clone(),
        ports: ports.iter().map(PortMap::to_pb).collect(),
        dns: r.dns.clone(),
        ..Default::default()
    };
    ensure(state, &leg).map(|(e, _, _)| e)
}

impl Netd {
    /// Drops a container's endpoints (on one network, or all) and their
    /// addresses, then reconciles.
    /// Drops the container's endpoints (on `network`, or all). With
    /// `netns_going` (its namespace is removed once this answers) their host
    /// veths, overlay legs and macvlan links are left to go with the
    /// namespace (see `going`).
    async fn forget(&self, container: &str, network: Option<&str>, netns_going: bool) -> Result<(), Status> {
        let unplugged = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let gone: Vec<EndpointSpec> = state
                .endpoints
                .iter()
                .filter(|e| e.container == container && network.is_none_or(|n| e.network == n))
                .cloned()
                .collect();
            if netns_going {
                let (local, cluster): (Vec<&EndpointSpec>, Vec<&EndpointSpec>) =
                    gone.iter().partition(|e| state.networks.iter().any(|n| n.id == e.network));
                let names = |es: Vec<&EndpointSpec>| {
                    es.into_iter().map(|e| veth_name(&e.container, &e.network)).collect::<Vec<_>>()
                };
                let now = std::time::Instant::now();
                self.going.lock().unwrap_or_else(|p| p.into_inner()).leave(names(local), now);
                // An overlay endpoint's leg in its network's sandbox is the other end of a veth
                // in the container's namespace: it goes with it too.
                self.going_legs.lock().unwrap_or_else(|p| p.into_inner()).leave(names(cluster), now);
            }
            for e in &gone {
                state.release(e);
            }
            state.tidy();
            state.on_macvlan(gone)
        };
        self.save()?;
        self.sync().await;
        // A container that stays (on other networks) loses the VIPs of the one it left before this returns.
        if network.is_some() {
            self.balanced().await;
        }
        if !netns_going {
            self.unplug(unplugged).await;
        }
        Ok(())
    }

    /// Macvlan endpoints that went while their containers live: their
    /// links there go too (a macvlan link has no end in the host's or a
    /// sandbox's namespace for a pass to find, and left alone it would
    /// still answer for its address on the LAN).
    async fn unplug(&self, gone: Vec<EndpointSpec>) {
        for e in gone.into_iter().filter(|e| e.netns.exists()) {
            let a = crate::macvlan::MacvlanAction::DeleteChild { netns: e.netns.clone(), ifname: e.ifname.clone() };
            if let Err(err) = crate::macvlan_sys::apply(&self.host, &a).await {
                tracing::warn!(container = short(&e.container), error = %err, "removing a macvlan link");
            }
        }
    }
}

fn attach_response(e: &EndpointSpec, n: &NetworkSpec) -> pb::AttachResponse {
    pb::AttachResponse {
        network: n.name.clone(),
        network_id: n.id.clone(),
        prefix: n.subnet.prefix().into(),
        gateway: if n.internal { String::new() } else { n.gateway.to_string() },
        ..endpoint_response(e)
    }
}

/// The endpoint's own part of an attach answer (its network's is the caller's).
fn endpoint_response(e: &EndpointSpec) -> pb::AttachResponse {
    pb::AttachResponse {
        container: e.container.clone(),
        ifname: e.ifname.clone(),
        ip: e.ip.to_string(),
        mac: mac_string(mac_for(e.ip)),
        ports: e.ports.iter().map(PortMap::to_pb).collect(),
        ..Default::default()
    }
}

/// `shoal netd`: owns the host's network. Serves its API on the unix socket
/// `socket`, keeps its state under `data_root/netd`, and reconciles the kernel
/// against that state until `cancel` fires.
pub async fn serve(
    socket: &Path,
    data_root: &Path,
    steer: crate::wg::Steer,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            anyhow::bail!("another netd is already listening on {}", socket.display());
        }
        std::fs::remove_file(socket)?;
    }
    // Containers' traffic is routed through this host's network namespace.
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
        tracing::warn!(error = %e, "cannot turn on IPv4 forwarding: published ports and egress will not work");
    }
    let host = crate::sys::connect()?;
    let netd = Netd::open(&data_root.join("netd"), host)?;
    if let Ok(e) = netd.encryption.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        e.set_steering(steer);
    }
    tokio::spawn(netd.clone().run(cancel.child_token()));
    let listener = tokio::net::UnixListener::bind(socket)?;
    tracing::info!(socket = %socket.display(), "shoal netd ready");
    tonic::transport::Server::builder()
        .add_service(shoal_proto::pb::netd_server::NetdServer::new(NetdService(netd)))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), cancel.cancelled())
        .await?;
    let _ = std::fs::remove_file(socket);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_from_many_threads_at_once_all_succeed_and_the_last_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(StateFile::new(dir.path()));
        let counter = Arc::new(Mutex::new(0u32));
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (file, counter) = (file.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        // As netd does: change the state, then save it.
                        *counter.lock().unwrap() += 1;
                        file.write(|| serde_json::to_vec(&*counter.lock().unwrap())).expect("every save succeeds");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let on_disk: u32 = serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
        assert_eq!(on_disk, 200);
    }

    #[test]
    fn a_save_replaces_the_state_without_making_or_freeing_an_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        let inodes = || {
            let ino = |name: &str| std::fs::metadata(dir.path().join(name)).map(|m| m.ino()).ok();
            [ino("state.json"), ino("state.json.tmp")]
        };
        file.write(|| serde_json::to_vec(&1u32)).unwrap();
        assert_eq!(inodes()[1], None, "the first save renames its file into place");
        file.write(|| serde_json::to_vec(&2u32)).unwrap();
        let [state, tmp] = inodes();
        for n in 3..=5u32 {
            file.write(|| serde_json::to_vec(&n)).unwrap();
            let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
            assert_eq!(serde_json::from_slice::<u32>(&read("state.json")).unwrap(), n);
            assert_eq!(serde_json::from_slice::<u32>(&read("state.json.tmp")).unwrap(), n - 1, "the state before");
            let mut now = inodes();
            let mut before = [state, tmp];
            now.sort();
            before.sort();
            assert_eq!(now, before, "save {n}: the same two files, exchanged");
        }
    }

    #[test]
    fn saves_queued_behind_a_write_share_the_next_one() {
        use std::sync::atomic::Ordering::SeqCst;
        let dir = tempfile::tempdir().unwrap();
        let file = Arc::new(StateFile::new(dir.path()));
        let state = Arc::new(Mutex::new(0u32));
        let encodes = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let save =
            |file: Arc<StateFile>, state: Arc<Mutex<u32>>, encodes: Arc<std::sync::atomic::AtomicU32>, wait: bool| {
                std::thread::spawn(move || {
                    *state.lock().unwrap() += 1;
                    file.write(|| {
                        encodes.fetch_add(1, SeqCst);
                        // The first write holds on until three more saves are asked for behind it.
                        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                        while wait && file.asked.load(SeqCst) < 4 && std::time::Instant::now() < deadline {
                            std::thread::yield_now();
                        }
                        serde_json::to_vec(&*state.lock().unwrap())
                    })
                    .expect("the save")
                })
            };
        let first = save(file.clone(), state.clone(), encodes.clone(), true);
        while file.asked.load(SeqCst) < 1 {
            std::thread::yield_now();
        }
        let rest: Vec<_> = (0..3).map(|_| save(file.clone(), state.clone(), encodes.clone(), false)).collect();
        first.join().unwrap();
        for r in rest {
            r.join().unwrap();
        }
        assert_eq!(encodes.load(SeqCst), 2, "the three queued saves share one write");
        let on_disk: u32 = serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
        assert_eq!(on_disk, 4);
    }

    fn endpoint(container: &str) -> EndpointSpec {
        EndpointSpec {
            container: container.into(),
            name: container.into(),
            aliases: vec![],
            network: "net0".into(),
            ip: "172.18.0.2".parse().unwrap(),
            netns: format!("/run/netns/{container}").into(),
            ifname: "eth0".into(),
            ports: vec![],
            dns: vec![],
        }
    }

    fn create(container: &str) -> Action {
        let e = endpoint(container);
        Action::CreateEndpoint {
            host: veth_name(&e.container, &e.network),
            bridge: "shb-net0".into(),
            endpoint: e,
            prefix: 16,
            gateway: None,
            mtu: 1500,
        }
    }

    #[test]
    fn a_pass_makes_the_new_endpoints_that_follow_one_another_together() {
        let up = |n: &str| Action::SetUp { name: n.into() };
        let rules = Action::ApplyRules { ruleset: "table".into() };
        let kinds = |actions: Vec<Action>| -> Vec<usize> { batches(actions).iter().map(Vec::len).collect() };
        // (planned, the sizes of the batches applied in order)
        let cases: Vec<(Vec<Action>, Vec<usize>)> = vec![
            (vec![], vec![]),
            (vec![create("a")], vec![1]),
            (vec![up("br"), create("a"), create("b"), create("c"), rules.clone()], vec![1, 3, 1]),
            (vec![create("a"), up("x"), create("b"), create("c")], vec![1, 1, 2]),
            (vec![up("x"), up("y"), rules.clone()], vec![1, 1, 1]),
        ];
        for (planned, want) in cases {
            assert_eq!(kinds(planned.clone()), want, "{planned:?}");
        }
        let order: Vec<Action> = batches(vec![up("br"), create("a"), create("b"), rules.clone()]).concat();
        assert_eq!(order, vec![up("br"), create("a"), create("b"), rules], "the plan's order is kept");
    }

    #[test]
    fn in_a_shared_pass_one_endpoint_that_failed_fails_only_its_own_attach() {
        let failed = vec![(create("b"), "moving shv…p into /run/netns/b: no such file".to_string())];
        assert_eq!(create_failure(&failed, &endpoint("a")), None);
        assert_eq!(create_failure(&failed, &endpoint("b")).as_deref(), Some(failed[0].1.as_str()));
        assert_eq!(create_failure(&failed, &endpoint("c")), None);
        // A step that is no endpoint's (the rules) fails no attach.
        let rules = vec![(Action::ApplyRules { ruleset: "t".into() }, "nft: syntax".to_string())];
        assert_eq!(create_failure(&rules, &endpoint("a")), None);
    }

    const NET: &str = "aaaaaaaaaaaa0000";

    fn state() -> State {
        let mut s = State { ipam: Ipam::new(default_pools()), ..Default::default() };
        s.set_view(NetView {
            node: "n1".into(),
            data_addr: "10.98.0.11".parse().unwrap(),
            networks: vec![OverlayNetwork {
                id: NET.into(),
                name: "app".into(),
                vni: 4097,
                subnet: "10.10.0.0".parse().unwrap(),
                prefix: 24,
                gateway: "10.10.0.1".parse().unwrap(),
                mtu: 1450,
                internal: false,
                encrypted: false,
                macvlan: None,
            }],
            peers: vec![],
            endpoints: vec![],
            services: vec![],
            ingress: None,
            wg_port: 0,
            key_epoch: 0,
        });
        s
    }

    /// Service web on the test network, with its VIP and `backends`.
    fn web(backends: &[&str]) -> shoal_proto::net::ViewService {
        shoal_proto::net::ViewService {
            id: "s1".into(),
            name: "web".into(),
            network: NET.into(),
            mode: shoal_proto::network::EndpointMode::Vip,
            vip: Some("10.10.0.2".parse().unwrap()),
            aliases: vec![],
            backends: backends.iter().map(|b| b.parse().unwrap()).collect(),
        }
    }

    /// A view that takes a backend out of a VIP's balancing while its task
    /// is still there is answered only once the tables dropped it (the
    /// managers then stop its task); one that adds backends is not held
    /// back, nor one whose backend left with its task (it ended).
    #[test]
    fn a_view_drains_when_a_backend_or_a_service_with_backends_leaves() {
        let endpoint = |addr: &str| shoal_proto::net::OverlayEndpoint {
            id: format!("t{addr}"),
            network: NET.into(),
            addr: addr.parse().unwrap(),
            node: "n2".into(),
            names: vec![],
        };
        let tasks = |mut v: NetView| {
            v.endpoints = ["10.10.0.3", "10.10.0.4"].map(endpoint).to_vec();
            v
        };
        let with = |backends: &[&str]| {
            let mut v = tasks(state().view.expect("a view"));
            v.services.push(web(backends));
            v
        };
        let none = tasks(state().view.expect("a view"));
        let mut ended = with(&["10.10.0.4"]);
        ended.endpoints.retain(|e| e.addr != "10.10.0.3".parse::<Ipv4Addr>().unwrap());
        assert!(!drains(&with(&["10.10.0.3", "10.10.0.4"]), &ended), "a backend left with its task");
        let (one, two) = (with(&["10.10.0.3"]), with(&["10.10.0.3", "10.10.0.4"]));
        assert!(!drains(&one, &two), "a backend added");
        assert!(!drains(&none, &one), "a service added");
        assert!(!drains(&two, &two), "nothing moved");
        assert!(drains(&two, &one), "a backend left");
        assert!(drains(&one, &with(&["10.10.0.4"])), "one backend replaced by another");
        assert!(drains(&one, &none), "the service left with its backend");
        assert!(!drains(&with(&[]), &none), "a service without backends left");
    }

    #[test]
    fn overlays_follow_the_views_networks_peers_and_endpoints_not_its_services() {
        let view = state().view.expect("a view");
        let before = OverlayInputs::of(&view, &[]);
        let mut backends = view.clone();
        backends.services.push(web(&["10.10.0.3"]));
        assert!(OverlayInputs::of(&backends, &[]) == before, "a service's backends are not the overlays'");
        let mut peers = view.clone();
        peers.peers.push(shoal_proto::net::Peer {
            node: "n2".into(),
            data_addr: "10.98.0.12".parse().unwrap(),
            wg_key: None,
            wg_key_prev: None,
        });
        assert!(OverlayInputs::of(&peers, &[]) != before, "a new peer is");
        let mut endpoints = view.clone();
        endpoints.endpoints.push(shoal_proto::net::OverlayEndpoint {
            id: "t1".into(),
            network: NET.into(),
            addr: "10.10.0.3".parse().unwrap(),
            node: "n2".into(),
            names: vec![],
        });
        assert!(OverlayInputs::of(&endpoints, &[]) != before, "a new endpoint is");
    }

    fn attach(container: &str, network: &str, ip: &str) -> pb::AttachRequest {
        pb::AttachRequest {
            container: container.into(),
            network: network.into(),
            netns: format!("/run/shoal/netns/{container}"),
            ip: ip.into(),
            name: "web.1.x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_cluster_endpoint_takes_the_managers_address_and_a_gateway_bridge_leg() {
        let mut s = state();
        let (e, joined, created) = ensure(&mut s, &attach("c1", "app", "10.10.0.2")).unwrap();
        assert!(created);
        assert_eq!((e.network.as_str(), e.ip, e.ifname.as_str()), (NET, "10.10.0.2".parse().unwrap(), "eth0"));
        let Joined::Cluster(n, Some(leg)) = &joined else { panic!("a leg on a non-internal network") };
        assert_eq!(n.id, NET);
        let gw = s.network(GWBRIDGE).cloned().unwrap();
        assert_eq!(
            (leg.network.as_str(), leg.ifname.as_str(), gw.icc, gw.internal),
            (gw.id.as_str(), "eth1", false, false)
        );
        let r = joined.response(&e);
        assert_eq!((r.prefix, r.gateway.as_str(), r.network_id.as_str()), (24, "", NET));
        // Again (the daemon's sync): the same endpoint and leg, nothing new.
        let (again, _, created) = ensure(&mut s, &attach("c1", NET, "10.10.0.2")).unwrap();
        assert!(!created);
        assert_eq!(again, e);
        assert_eq!(s.endpoints.len(), 2);

        // Refused: no address, one outside the subnet, the gateway's, a taken one, another for the same container.
        for (req, code) in [
            (attach("c2", NET, ""), tonic::Code::InvalidArgument),
            (attach("c2", NET, "10.20.0.2"), tonic::Code::InvalidArgument),
            (attach("c2", NET, "10.10.0.1"), tonic::Code::InvalidArgument),
            (attach("c2", NET, "10.10.0.2"), tonic::Code::AlreadyExists),
            (attach("c1", NET, "10.10.0.9"), tonic::Code::FailedPrecondition),
            (attach("c2", "nope", "10.10.0.3"), tonic::Code::NotFound),
        ] {
            let got = ensure(&mut s, &req).map(|_| ()).unwrap_err();
            assert_eq!(got.code(), code, "{req:?}: {got}");
        }
        assert_eq!(s.endpoints.len(), 2, "nothing was added by a refusal");

        // The network leaves the view: kept while c1 is on it; c1 goes: so do its leg and the network.
        let empty = NetView { networks: vec![], ..s.view.clone().unwrap() };
        s.set_view(empty);
        assert_eq!(s.kept.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(), vec![NET]);
        assert_eq!(s.overlay_view().map(|v| v.networks.len()), Some(1));
        s.release(&e);
        s.tidy();
        assert_eq!((s.endpoints.len(), s.kept.len()), (0, 0));
    }

    /// A host-mode port of a task on cluster networks: on its gateway bridge leg,
    /// so the host DNATs it to the task's address there; an internal network refuses it.
    #[test]
    fn host_mode_ports_of_a_cluster_task_are_published_on_its_gateway_bridge_leg() {
        let port =
            |host_port| PortMap { host_ip: None, host_port, container_port: 80, proto: crate::model::Proto::Tcp };
        let mut s = state();
        let req = pb::AttachRequest { ports: vec![port(8080).to_pb()], ..attach("c1", NET, "10.10.0.2") };
        let (e, joined, _) = ensure(&mut s, &req).unwrap();
        let Joined::Cluster(_, Some(leg)) = &joined else { panic!("a leg on a non-internal network") };
        assert_eq!((e.ports.clone(), leg.ports.clone()), (vec![], vec![port(8080)]));
        let rules = crate::rules::ruleset(&Desired { networks: s.networks.clone(), endpoints: s.endpoints.clone() });
        assert!(rules.contains(&format!("tcp dport 8080 dnat to {}:80", leg.ip)), "{rules}");
        // The port is the host's: another container cannot take it.
        let again = pb::AttachRequest { ports: vec![port(8080).to_pb()], ..attach("c2", NET, "10.10.0.3") };
        assert_eq!(ensure(&mut s, &again).map(|_| ()).unwrap_err().code(), tonic::Code::AlreadyExists);
        assert_eq!(s.endpoints.len(), 2, "nothing was added by a refusal");

        let mut s = state();
        if let Some(v) = s.view.as_mut() {
            v.networks[0].internal = true;
        }
        let got = ensure(&mut s, &req).map(|_| ()).unwrap_err();
        assert_eq!(got.code(), tonic::Code::InvalidArgument, "{got}");
        assert!(got.message().contains("internal network"), "{got}");
    }

    #[test]
    fn an_internal_cluster_network_gets_no_gateway_bridge_leg() {
        let mut s = state();
        if let Some(v) = s.view.as_mut() {
            v.networks[0].internal = true;
        }
        let (_, joined, _) = ensure(&mut s, &attach("c1", NET, "10.10.0.2")).unwrap();
        assert!(matches!(joined, Joined::Cluster(_, None)));
        assert!(s.network(GWBRIDGE).is_none(), "not made before it is needed");
        assert_eq!(s.endpoints.len(), 1);
    }

    #[test]
    fn a_macvlan_endpoint_has_the_lans_gateway_and_no_gateway_bridge_leg() {
        let mut s = state();
        if let Some(v) = s.view.as_mut() {
            v.networks[0].vni = 0;
            v.networks[0].macvlan =
                Some(shoal_proto::net::MacvlanView { parent: "eth0".into(), host_access: false, arp_probe: false });
        }
        let (e, joined, created) = ensure(&mut s, &attach("c1", NET, "10.10.0.2")).unwrap();
        assert!(created && matches!(joined, Joined::Cluster(_, None)));
        assert_eq!(joined.response(&e).gateway, "10.10.0.1", "its default route is the LAN's");
        assert!(s.network(GWBRIDGE).is_none() && !s.needs_gw_leg("c1"));
        // Gone while the container lives: its link is the one to take out.
        assert_eq!(s.on_macvlan(s.endpoints.clone()), vec![e]);
        let mut other = state();
        ensure(&mut other, &attach("c1", NET, "10.10.0.2")).unwrap();
        let overlay: Vec<EndpointSpec> = other.endpoints.iter().filter(|x| x.network == NET).cloned().collect();
        assert!(other.on_macvlan(overlay).is_empty(), "an overlay's veth goes with its sandbox end");
    }
}
