//! The real `Worker` on a fake runtime: it starts what it is assigned,
//! reports each task forward only, fails an exited task, removes what is no
//! longer assigned, and a restarted worker adopts the containers that run
//! instead of starting them again. The node's network view reaches netd
//! before a task on a cluster network starts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use shoal_agent::fake_runtime::FakeRuntime;
use shoal_agent::worker::Worker;
use shoal_engine::runtime::Status;
use shoal_proto::service::{Task, TaskState, TaskStatus};
use tokio_util::sync::CancellationToken;

fn task(id: &str, slot: u64, state: TaskState) -> Task {
    Task {
        id: id.into(),
        service_id: "svc".into(),
        service_name: "web".into(),
        slot,
        node_id: "n1".into(),
        desired: TaskState::Running,
        status: TaskStatus { state, ..Default::default() },
        ..Default::default()
    }
}

fn json(ts: &[Task]) -> Vec<String> {
    ts.iter().map(|t| serde_json::to_string(t).expect("task json")).collect()
}

/// Every report so far, by task, in order.
#[derive(Default)]
struct Reports(HashMap<String, Vec<TaskStatus>>);

impl Reports {
    fn take(&mut self, w: &Worker) -> anyhow::Result<()> {
        for r in w.take_reports() {
            let s: TaskStatus = serde_json::from_str(&r.status_json).context("report json")?;
            let seen = self.0.entry(r.task_id.clone()).or_default();
            if let Some(last) = seen.last()
                && !last.state.can_move_to(s.state)
            {
                bail!("task {} reported {} after {}", r.task_id, s.state, last.state);
            }
            seen.push(s);
        }
        Ok(())
    }

    fn last(&self, task: &str) -> Option<TaskState> {
        self.0.get(task).and_then(|s| s.last()).map(|s| s.state)
    }
}

/// Waits (taking reports) until `done` holds, or fails after `within`.
async fn wait_for(
    w: &Worker,
    reports: &mut Reports,
    within: Duration,
    what: &str,
    mut done: impl FnMut(&Reports) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        reports.take(w)?;
        if done(reports) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::timeout(Duration::from_millis(50), w.outbox_ready.notified()).await.ok();
    }
}

fn running(fake: &FakeRuntime) -> Vec<String> {
    let mut v: Vec<String> = fake
        .containers()
        .into_iter()
        .filter(|c| matches!(c.status, Status::Running { .. }))
        .map(|c| c.task_id)
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_starts_reports_removes_and_readopts() -> anyhow::Result<()> {
    let fake = FakeRuntime::new();
    let cancel = CancellationToken::new();
    let w = Worker::with_runtime(fake.clone(), "host1");
    let run = tokio::spawn(w.clone().run_until(cancel.clone()));
    let mut reports = Reports::default();
    let within = Duration::from_secs(10);

    w.assign(true, &json(&[task("a", 1, TaskState::Assigned), task("b", 2, TaskState::Assigned)]), &[], HashMap::new());
    wait_for(&w, &mut reports, within, "both run", |r| {
        r.last("a") == Some(TaskState::Running) && r.last("b") == Some(TaskState::Running)
    })
    .await?;
    assert_eq!(running(&fake), ["a", "b"]);
    let states: Vec<TaskState> = reports.0["a"].iter().map(|s| s.state).collect();
    assert_eq!(states, [TaskState::Preparing, TaskState::Starting, TaskState::Running]);

    assert!(fake.exit("a", 3));
    wait_for(&w, &mut reports, within, "a failed", |r| r.last("a") == Some(TaskState::Failed)).await?;
    let failed = reports.0["a"].last().cloned().unwrap_or_default();
    assert_eq!((failed.exit_code, failed.err.as_str()), (Some(3), "task: non-zero exit (3)"));

    // A restarted worker: it keeps what runs until its first set, then adopts it.
    cancel.cancel();
    run.await?;
    let before = fake.runs();
    let cancel = CancellationToken::new();
    let w = Worker::with_runtime(fake.clone(), "host1");
    let run = tokio::spawn(w.clone().run_until(cancel.clone()));
    let mut reports = Reports::default();
    let listed = fake.listings();
    w.assign(true, &json(&[task("a", 1, TaskState::Failed), task("b", 2, TaskState::Running)]), &[], HashMap::new());
    // Two whole passes after the set: time enough to (wrongly) start anything.
    let deadline = Instant::now() + within;
    while fake.listings() < listed + 2 {
        assert!(Instant::now() < deadline, "the restarted worker made no pass");
        tokio::time::timeout(Duration::from_millis(20), w.outbox_ready.notified()).await.ok();
    }
    reports.take(&w)?;
    assert_eq!(fake.runs(), before, "nothing started again");
    assert!(reports.0.is_empty(), "nothing new to report: {:?}", reports.0);
    assert_eq!(running(&fake), ["b"]);

    // No longer assigned: its container goes.
    w.assign(false, &[], &["b".to_string()], HashMap::new());
    let deadline = Instant::now() + within;
    while fake.containers().iter().any(|c| c.task_id == "b") {
        assert!(Instant::now() < deadline, "b's container was not removed");
        tokio::time::timeout(Duration::from_millis(20), w.outbox_ready.notified()).await.ok();
    }
    cancel.cancel();
    tokio::time::timeout(within, run).await??;
    Ok(())
}

fn net(id: &str) -> shoal_proto::net::OverlayNetwork {
    shoal_proto::net::OverlayNetwork {
        id: id.into(),
        name: format!("net-{id}"),
        vni: 4097,
        subnet: "10.10.0.0".parse().expect("an address"),
        prefix: 24,
        gateway: "10.10.0.1".parse().expect("an address"),
        mtu: 1450,
        internal: false,
        encrypted: false,
        macvlan: None,
    }
}

fn net_view(networks: &[&str]) -> shoal_proto::net::NetView {
    shoal_proto::net::NetView {
        node: "n1".into(),
        data_addr: "10.98.0.11".parse().expect("an address"),
        networks: networks.iter().map(|n| net(n)).collect(),
        peers: vec![],
        endpoints: vec![],
        services: vec![],
        ingress: None,
        wg_port: 0,
        key_epoch: 0,
    }
}

fn on_network(mut t: Task, network: &str, addr: &str) -> Task {
    t.networks.push(shoal_proto::network::TaskNetwork {
        network: network.into(),
        aliases: vec!["api".into()],
        addr: Some(addr.parse().expect("an address")),
    });
    t
}

/// The session hands the worker the view, then the tasks of the same
/// message: the view reaches netd before a task on a cluster network
/// starts, and such a task waits while netd does not take it (a task
/// without networks does not wait). The task's container is asked with its
/// network by id, its address and its aliases. The managers hear of each
/// numbered view netd applied, once (`take_view_applied`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_view_reaches_netd_before_a_task_on_it_starts() -> anyhow::Result<()> {
    let fake = FakeRuntime::new();
    let cancel = CancellationToken::new();
    let w = Worker::with_runtime(fake.clone(), "host1");
    let run = tokio::spawn(w.clone().run_until(cancel.clone()));
    let mut reports = Reports::default();
    let within = Duration::from_secs(10);

    fake.netd_down(Some("netd is restarting"));
    w.set_net_view(net_view(&["net1"]), 7);
    let a = on_network(task("a", 1, TaskState::Assigned), "net1", "10.10.0.2");
    w.assign(true, &json(&[a, task("b", 2, TaskState::Assigned)]), &[], HashMap::new());
    wait_for(&w, &mut reports, within, "b runs", |r| r.last("b") == Some(TaskState::Running)).await?;
    assert!(!fake.runs().contains(&"a".to_string()), "a waits for netd to take the view");
    assert!(fake.views().is_empty());
    assert_eq!(w.take_view_applied(), None, "netd did not apply it");

    // netd is back: the next pass hands it the view, then a starts.
    fake.netd_down(None);
    wait_for(&w, &mut reports, within, "a runs", |r| r.last("a") == Some(TaskState::Running)).await?;
    let calls = fake.calls();
    let (view, run_a) = (calls.iter().position(|c| c == "view 1"), calls.iter().position(|c| c == "run a"));
    assert!(view.is_some() && view < run_a, "{calls:?}");
    let applied = w.take_view_applied().context("view 7 applied")?;
    assert_eq!(applied.version, 7);
    let keys = applied.keys.context("netd's keys go with the first view")?;
    assert_eq!((keys.wg_key, keys.key_epoch), (vec![1; 32], 0));
    assert_eq!(w.take_view_applied(), None, "told once");
    let req = fake.requests().into_iter().find(|r| r.task_id == "a").context("a's request")?;
    let attached: Vec<(String, String, Vec<String>)> =
        req.cluster_networks.iter().map(|n| (n.network.clone(), n.ip.clone(), n.aliases.clone())).collect();
    assert_eq!(attached, vec![("net1".to_string(), "10.10.0.2".to_string(), vec!["api".to_string()])]);
    assert!(fake.requests().iter().find(|r| r.task_id == "b").is_some_and(|r| r.cluster_networks.is_empty()));

    // A message with a new network and a task on it: the view goes first.
    w.set_net_view(net_view(&["net1", "net2"]), 8);
    let c = on_network(task("c", 3, TaskState::Assigned), "net2", "10.20.0.2");
    w.assign(false, &json(&[c]), &[], HashMap::new());
    wait_for(&w, &mut reports, within, "c runs", |r| r.last("c") == Some(TaskState::Running)).await?;
    let calls = fake.calls();
    let (view, run_c) = (calls.iter().position(|c| c == "view 2"), calls.iter().position(|c| c == "run c"));
    assert!(view.is_some() && view < run_c, "{calls:?}");
    assert_eq!(fake.views().last().map(|v| v.networks.len()), Some(2));
    // Taken once: not handed again on every pass.
    assert_eq!(calls.iter().filter(|c| *c == "view 2").count(), 1, "{calls:?}");
    assert_eq!(w.take_view_applied().map(|a| (a.version, a.keys)), Some((8, None)), "the same keys are not said again");

    // A view past the keys' epoch: netd rotates, and the new keys are said.
    let mut rotated = net_view(&["net1", "net2"]);
    rotated.key_epoch = 1;
    w.set_net_view(rotated, 9);
    wait_for(&w, &mut reports, within, "view 9 taken", |_| fake.views().last().is_some_and(|v| v.key_epoch == 1))
        .await?;
    let applied = tokio::time::timeout(within, async {
        loop {
            if let Some(a) = w.take_view_applied() {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    assert_eq!((applied.version, applied.keys.map(|k| (k.wg_key, k.key_epoch))), (9, Some((vec![2; 32], 1))));

    cancel.cancel();
    run.await?;
    Ok(())
}
