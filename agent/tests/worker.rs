//! The real `Worker` on a fake runtime: it starts what it is assigned,
//! reports each task forward only, fails an exited task, removes what is no
//! longer assigned, and a restarted worker adopts the containers that run
//! instead of starting them again.

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
