//! A node daemon started, stopped and resumed inside a test: `swarm init`
//! on loopback (real TLS, a real manager, the real session and worker on a
//! fake runtime) runs a service's task; `shutdown` releases the port and
//! stops the daemon's tasks; `resume` with a new worker brings the same
//! swarm back from disk, and the worker adopts the task's container.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use shoal_agent::fake_runtime::FakeRuntime;
use shoal_agent::worker::Worker;
use shoal_agent::{Daemon, DaemonConfig};
use shoal_manager::state::Command;
use shoal_proto::model::NodeState;
use shoal_proto::pb;
use shoal_proto::service::{ServiceSpec, TaskState};
use tokio_util::sync::CancellationToken;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A daemon `node1` with its data and socket under `dir`, listening on a free
/// loopback port; its config and that address.
fn node1(dir: &std::path::Path) -> anyhow::Result<(DaemonConfig, String)> {
    let addr = format!("127.0.0.1:{}", free_port()?);
    let cfg = DaemonConfig {
        data_root: dir.join("data"),
        socket: dir.join("shoal.sock"),
        listen_addr: addr.clone(),
        advertise_addr: Some(addr.clone()),
        hostname: "node1".into(),
    };
    Ok((cfg, addr))
}

/// Waits until this node's manager sees the node ready (its session is up).
async fn wait_ready(d: &Daemon, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let ready = d.manager().is_some_and(|m| {
            let id = d.info().node_id;
            m.store.read().nodes.get(&id).is_some_and(|n| n.status.state == NodeState::Ready)
        });
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the node did not become ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition with a deadline
    }
}

/// Waits until the manager port can be bound again: its server stopped.
async fn wait_port_free(addr: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if std::net::TcpListener::bind(addr).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} is still taken {within:?} after shutdown");
        }
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition with a deadline
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_starts_stops_and_resumes_in_process() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, addr) = node1(dir.path())?;
    let within = Duration::from_secs(20);
    let fake = FakeRuntime::new();
    let cancel = CancellationToken::new();
    let worker = Worker::with_runtime(fake.clone(), "node1");
    let worker_task = tokio::spawn(worker.clone().run_until(cancel.clone()));

    let d = Daemon::new(cfg.clone());
    d.set_worker(worker);
    let info = d.init(pb::SwarmInitRequest::default()).await.map_err(|s| anyhow::anyhow!("init: {}", s.message()))?;
    ensure!(info.is_manager && info.swarm_state == "active", "init: {info:?}");
    wait_ready(&d, within).await.context("after init")?;
    let mgr = d.manager().context("no manager after init")?;
    let mut spec = ServiceSpec { name: "web".into(), replicas: 1, ..Default::default() };
    spec.task.image = "img".into();
    mgr.write(Command::CreateService { id: "web".into(), spec, auth: None })
        .await
        .map_err(|s| anyhow::anyhow!("create: {}", s.message()))?;
    let deadline = Instant::now() + within;
    while !mgr.store.read().tasks.values().any(|t| t.status.state == TaskState::Running) {
        ensure!(Instant::now() < deadline, "the task never ran");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition with a deadline
    }
    ensure!(fake.runs().len() == 1, "runs: {:?}", fake.runs());
    // `swarm init` made the ingress network, and the leader's allocator gave it VNI 4096 and the ingress subnet.
    while !mgr.store.read().networks.values().any(|n| n.spec.ingress && n.alloc.is_some()) {
        ensure!(Instant::now() < deadline, "ingress never allocated: {:?}", mgr.store.read().networks);
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition with a deadline
    }
    let state = mgr.store.read();
    let ingress = state.networks.values().find(|n| n.spec.ingress).context("ingress")?;
    let alloc = ingress.alloc.as_ref().context("allocated")?;
    ensure!(ingress.spec.name == "ingress" && alloc.vni == 4096, "{ingress:?}");
    ensure!(alloc.subnet.to_string() == "10.255.0.0/16", "{alloc:?}");
    // The node's hello gave its data address (the advertise address's host).
    let me = state.nodes.get(&info.node_id).context("the node")?;
    ensure!(me.description.net.data_addr == Some(std::net::Ipv4Addr::LOCALHOST), "{:?}", me.description.net);
    drop(state);
    drop(mgr);

    d.shutdown().await;
    cancel.cancel();
    tokio::time::timeout(within, worker_task).await.context("the worker ignored its cancellation")??;
    ensure!(!d.in_swarm() && d.manager().is_none(), "still in the swarm after shutdown");
    wait_port_free(&addr, within).await?;

    // The same swarm, from disk, in a new daemon with a new worker, as after a restart.
    let cancel = CancellationToken::new();
    let worker = Worker::with_runtime(fake.clone(), "node1");
    let worker_task = tokio::spawn(worker.clone().run_until(cancel.clone()));
    let listed = fake.listings();
    let d = Daemon::new(cfg);
    d.set_worker(worker);
    d.resume().await?;
    ensure!(d.info().node_id == info.node_id, "resumed as another node");
    // Passes come only after the first whole set: the session is up again.
    let deadline = Instant::now() + within;
    while fake.listings() < listed + 2 {
        ensure!(Instant::now() < deadline, "the new worker got no assignment set");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition with a deadline
    }
    ensure!(fake.runs().len() == 1, "the task was started again: {:?}", fake.runs());
    ensure!(fake.containers().len() == 1, "containers: {:?}", fake.containers());
    d.shutdown().await;
    wait_port_free(&addr, within).await?;
    cancel.cancel();
    tokio::time::timeout(within, worker_task).await.context("the worker ignored its cancellation")??;
    Ok(())
}

/// `run --network` on an attachable network, through the real session of a
/// daemon inited on loopback: the node's `ClusterAttach` asks the managers,
/// waits until the attachment's address is in the view its worker handed to
/// (fake) netd, and gives it back on detach; a network only services may use
/// is refused, and an unknown one is not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_joins_an_attachable_network_through_the_session() -> anyhow::Result<()> {
    use shoal_agent::attach::ClusterAttach;
    use shoal_engine::network::ClusterNetworks as _;
    use shoal_proto::network::NetworkSpec;

    let dir = tempfile::tempdir()?;
    let (cfg, addr) = node1(dir.path())?;
    let within = Duration::from_secs(20);
    let fake = FakeRuntime::new();
    let cancel = CancellationToken::new();
    let worker = Worker::with_runtime(fake.clone(), "node1");
    let worker_task = tokio::spawn(worker.clone().run_until(cancel.clone()));
    let d = Daemon::new(cfg);
    d.set_worker(worker.clone());
    let attach = std::sync::Arc::new(ClusterAttach {
        calls: d.attach_calls(),
        view: worker.clone(),
        rt: tokio::runtime::Handle::current(),
        timeout: within,
    });
    // Not in a swarm yet: no cluster network by that name.
    let a = attach.clone();
    let outside = tokio::task::spawn_blocking(move || a.attach("app", "c1", "probe", &[], "")).await?;
    ensure!(outside == Ok(None), "{outside:?}");

    let info = d.init(pb::SwarmInitRequest::default()).await.map_err(|s| anyhow::anyhow!("init: {}", s.message()))?;
    wait_ready(&d, within).await.context("after init")?;
    let mgr = d.manager().context("no manager after init")?;
    for (id, name, attachable) in [("app000000000001", "app", true), ("cls000000000002", "closed", false)] {
        let spec = NetworkSpec { name: name.into(), attachable, ..Default::default() };
        mgr.write(Command::CreateNetwork { id: id.into(), spec })
            .await
            .map_err(|s| anyhow::anyhow!("network create: {}", s.message()))?;
    }
    let a = attach.clone();
    let (joined, closed, missing) = tokio::task::spawn_blocking(move || {
        (
            a.attach("app", "c1", "probe", &["p".to_string()], ""),
            a.attach("closed", "c1", "probe", &[], ""),
            a.attach("nosuch", "c1", "probe", &[], ""),
        )
    })
    .await?;
    let lease = joined.map_err(anyhow::Error::msg)?.context("app not found")?;
    ensure!(lease.network_id == "app000000000001", "{lease:?}");
    {
        let state = mgr.store.read();
        let a = state.attachments.get(&lease.lease).context("the attachment in the state")?;
        ensure!(a.node_id == info.node_id && a.container_id == "c1" && a.name == "probe", "{a:?}");
        ensure!(a.addr.map(|x| x.to_string()) == Some(lease.ip.clone()), "{a:?} vs {lease:?}");
        ensure!(a.aliases == ["p"], "{a:?}");
    }
    ensure!(closed.as_ref().is_err_and(|e| e.contains("not manually attachable")), "{closed:?}");
    ensure!(missing == Ok(None), "{missing:?}");

    attach.detach(&lease.lease);
    let deadline = Instant::now() + within;
    while !mgr.store.read().attachments.is_empty() {
        ensure!(Instant::now() < deadline, "the attachment was not removed");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition with a deadline
    }
    drop(mgr);
    d.shutdown().await;
    cancel.cancel();
    tokio::time::timeout(within, worker_task).await.context("the worker ignored its cancellation")??;
    wait_port_free(&addr, within).await?;
    Ok(())
}

/// Autolock in process: a manager of an autolocked swarm resumes locked
/// (its Raft data key is sealed by the unlock key, no key file is kept),
/// refuses a wrong key and starts with the right one. (Its `swarm init`
/// also sets the WireGuard key rotation period, after a refused one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autolocked_manager_resumes_locked_until_unlocked() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (cfg, addr) = node1(dir.path())?;
    let within = Duration::from_secs(20);
    let kek = cfg.data_root.join("certs").join("raft.kek");
    let d = Daemon::new(cfg.clone());
    d.set_worker(Worker::with_runtime(FakeRuntime::new(), "node1"));
    // A key rotation period under an hour is refused before anything is made; the init after it
    // keeps the one it is given.
    let short = pb::SwarmInitRequest { network_key_rotation_secs: Some(600), ..Default::default() };
    let e = d.init(short).await.err().context("a 10 minute key rotation was taken")?;
    ensure!(e.message().contains("at least 1h") && !d.in_swarm(), "{}", e.message());
    let req = pb::SwarmInitRequest { autolock: true, network_key_rotation_secs: Some(7_200), ..Default::default() };
    d.init(req).await.map_err(|s| anyhow::anyhow!("init: {}", s.message()))?;
    let (key, rotation) = {
        let m = d.manager().context("manager")?;
        let state = m.store.read();
        let c = state.cluster.as_ref().context("cluster")?;
        (c.unlock_key.clone(), c.net.key_rotation_secs)
    };
    ensure!(key.starts_with("SWMKEY-1-"), "{key}");
    ensure!(rotation == 7_200, "the key rotation period swarm init was given: {rotation}");
    let deadline = Instant::now() + within;
    while kek.exists() {
        ensure!(Instant::now() < deadline, "the key file stayed under autolock");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition with a deadline
    }
    d.shutdown().await;
    wait_port_free(&addr, within).await?;
    // Raft's storage tasks release the database shortly after shutdown (a
    // restarted process never sees that; this one resumes in the same process).
    let db = cfg.data_root.join("raft").join("raft.redb");
    let deadline = Instant::now() + within;
    while let Err(e) = shoal_manager::raft::storage::needs_unlock(&db) {
        ensure!(Instant::now() < deadline && e.to_string().contains("already open"), "{e}");
        tokio::time::sleep(Duration::from_millis(20)).await; // polling a condition with a deadline
    }

    let d = Daemon::new(cfg);
    d.set_worker(Worker::with_runtime(FakeRuntime::new(), "node1"));
    d.resume().await?;
    ensure!(d.is_locked() && d.in_swarm() && d.manager().is_none());
    ensure!(d.info().swarm_state == "locked", "{:?}", d.info());
    let wrong = format!("SWMKEY-1-{}", "A".repeat(43));
    for bad in [wrong.as_str(), "nonsense"] {
        let e = d.unlock(bad).await.err().context("a wrong key unlocked")?;
        ensure!(e.message() == "invalid key", "{}", e.message());
    }
    ensure!(d.is_locked());
    d.unlock(&key).await.map_err(|s| anyhow::anyhow!("unlock: {}", s.message()))?;
    ensure!(!d.is_locked() && d.info().swarm_state == "active" && d.info().is_manager);
    wait_ready(&d, within).await.context("after unlock")?;
    let e = d.unlock(&key).await.err().context("unlocked twice")?;
    ensure!(e.message().contains("not locked"), "{}", e.message());
    d.shutdown().await;
    Ok(())
}
