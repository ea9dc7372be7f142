//! Following a rollout until it converges, as Docker's progress display does.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use shoal_proto::pb;
use shoal_proto::service::{Service, ServiceListEntry, ServiceSpec, ServiceWatch, Task, TaskState, UpdateState};

use super::Control;

/// How long a rollout is followed before the command gives up watching.
const FOLLOW_FOR: Duration = Duration::from_secs(300);

/// Follows a rollout like Docker's progress display, one line per change,
/// until every slot runs an up-to-date task (or the job completed).
/// `before`: the service before this command (its update state and message), so
/// an older rollback is not taken for this one's.
pub(super) async fn follow(control: &mut Control, id: &str, before: Option<&Service>) -> anyhow::Result<()> {
    let deadline = Instant::now() + FOLLOW_FOR;
    let mut last = String::new();
    let mut rolling_back = false;
    let mut verifying = false;
    // On a terminal the block of bars is redrawn in place: how many lines it took.
    let tty = std::io::stdout().is_terminal();
    let mut drawn = 0usize;
    let mut watched = Watched::open(control, id).await?;
    loop {
        let entry = watched.next(control, deadline).await?;
        let ts: Vec<&(Task, String)> = watched.tasks.values().collect();
        let svc = &entry.service;
        let spec = &svc.spec;
        // A task of the service's spec version has its spec (as the orchestrator takes it):
        // hundreds of tasks per message are not compared field by field.
        let up_to_date = |t: &Task| t.spec_version == svc.spec_version || t.spec == spec.task;
        let live: Vec<&Task> = ts.iter().map(|(t, _)| t).filter(|t| t.desired == TaskState::Running).collect();
        let current = live.iter().filter(|t| up_to_date(t) && t.status.state == TaskState::Running).count() as u64;
        let completed = entry.completed;
        let wanted = if spec.mode.is_global() { live.len() as u64 } else { spec.replicas };
        let (done, line) = if spec.mode.is_job() {
            (
                completed >= wanted && live.iter().all(|t| t.status.state.is_terminal()),
                format!("job progress: {completed} out of {wanted} complete"),
            )
        } else {
            (
                current == wanted && live.len() as u64 == wanted && live.iter().all(|t| up_to_date(t)),
                format!("overall progress: {current} out of {wanted} tasks"),
            )
        };
        let problems: Vec<String> = live
            .iter()
            .filter(|t| !t.status.err.is_empty() && !t.status.state.is_terminal())
            .map(|t| format!("{}: {}", t.name(), t.status.err))
            .collect();
        let mut block = vec![line];
        if tty && !spec.mode.is_job() {
            block.extend(progress_bars(spec, &ts));
        }
        block.extend(problems);
        let shown = block.join("\n");
        if shown != last {
            if drawn > 0 {
                print!("\x1b[{drawn}A\x1b[J"); // up over the last block, and clear it
            }
            println!("{shown}");
            drawn = if tty { block.len() } else { 0 };
            last = shown;
        }
        let update_state = svc.update_state.clone();
        // An update or rollback is over once the server says so: after its monitor window.
        let rolling = matches!(update_state, UpdateState::Updating | UpdateState::RollbackStarted);
        if done && rolling && !verifying {
            verifying = true;
            let cfg = if update_state == UpdateState::RollbackStarted { &spec.rollback } else { &spec.update };
            println!("verify: Waiting {} to verify that tasks are stable...", human_ms(cfg.monitor_ms));
            drawn = 0; // the block stays above this line; a change prints a new one below
        }
        let done = done && !rolling;
        if update_state == UpdateState::Paused {
            bail!("update paused: {}", svc.update_message);
        }
        let rolled_back = matches!(update_state, UpdateState::RollbackStarted | UpdateState::RollbackCompleted);
        let news =
            Some((&svc.update_state, &svc.update_message)) != before.map(|b| (&b.update_state, &b.update_message));
        if rolled_back && news && !rolling_back && svc.update_message.contains("rolled back due to") {
            rolling_back = true;
            println!("rollback: {}", svc.update_message);
            drawn = 0;
        }
        if done && rolling_back {
            bail!("{}: the update failed and was rolled back: {}", spec.name, svc.update_message);
        }
        if done {
            println!("verify: Service {} converged", spec.name);
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} has not converged after {} s; `shoal service ps {}` shows why",
                spec.name,
                FOLLOW_FOR.as_secs(),
                spec.name
            );
        }
    }
}

/// The service and its tasks as the managers' watch stream says they are
/// (`WatchService`): each message is applied to what came before.
struct Watched {
    id: String,
    stream: tonic::Streaming<pb::JsonDoc>,
    entry: Option<ServiceListEntry>,
    tasks: BTreeMap<String, (Task, String)>,
}

impl Watched {
    async fn open(control: &mut Control, id: &str) -> anyhow::Result<Watched> {
        let stream = Self::subscribe(control, id).await?;
        Ok(Watched { id: id.to_string(), stream, entry: None, tasks: BTreeMap::new() })
    }

    async fn subscribe(control: &mut Control, id: &str) -> anyhow::Result<tonic::Streaming<pb::JsonDoc>> {
        let resp = control.watch_service(pb::ServiceRef { id: id.to_string() }).await;
        Ok(resp.with_context(|| format!("watching service {id}"))?.into_inner())
    }

    /// Waits for the next change (the whole service first), until `deadline`;
    /// the tasks as changed are then in `tasks`. A stream that breaks (a new
    /// leader) is opened again: it starts whole.
    async fn next(&mut self, control: &mut Control, deadline: Instant) -> anyhow::Result<ServiceListEntry> {
        let msg = loop {
            let wait = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            match tokio::time::timeout(wait, self.stream.message()).await {
                Err(_) => break None, // the deadline: the caller says what did not converge
                Ok(Ok(Some(doc))) => break Some(doc),
                Ok(Ok(None)) => bail!("service {} was removed", self.id),
                Ok(Err(_)) if Instant::now() >= deadline => break None,
                // A new leader: open it again (it starts whole); a manager that refuses is the error.
                Ok(Err(status)) => {
                    self.stream = Self::subscribe(control, &self.id).await.context(status.message().to_string())?
                }
            }
        };
        if let Some(doc) = msg {
            let w: ServiceWatch = serde_json::from_str(&doc.json).context("the managers' watch answer")?;
            if w.whole {
                self.tasks.clear();
            }
            for id in &w.removed {
                self.tasks.remove(id);
            }
            for e in w.tasks {
                self.tasks.insert(e.task.id.clone(), (e.task, e.node));
            }
            match w.service {
                Some(entry) => self.entry = Some(entry),
                None => bail!("service {} was removed", self.id),
            }
        }
        self.entry.clone().with_context(|| format!("service {} not found", self.id))
    }
}

/// Docker shows one bar per slot (or node) up to this many; past it, the overall line only.
const MAX_BARS: usize = 20;

/// Docker's progress bars, one per slot (replicated) or node (global): the
/// state of its newest live task, as far along `new → running` as it got.
fn progress_bars(spec: &ServiceSpec, ts: &[&(Task, String)]) -> Vec<String> {
    let mut newest: BTreeMap<(u64, String), &Task> = BTreeMap::new();
    for (t, node) in ts.iter().filter(|(t, _)| t.desired == TaskState::Running) {
        let key = if spec.mode.is_global() { (0, node.clone()) } else { (t.slot, String::new()) };
        let e = newest.entry(key).or_insert(t);
        if (t.spec == spec.task, t.created_index) > (e.spec == spec.task, e.created_index) {
            *e = t;
        }
    }
    if newest.len() > MAX_BARS {
        return Vec::new();
    }
    let steps = TaskState::Running as usize + 1;
    newest
        .iter()
        .map(|((slot, node), t)| {
            let done = if t.spec != spec.task || t.status.state > TaskState::Running {
                0
            } else {
                t.status.state as usize + 1
            };
            let filled = done * 50 / steps;
            let bar = if filled == 0 {
                " ".repeat(50)
            } else {
                format!("{}>{}", "=".repeat(filled - 1), " ".repeat(50 - filled))
            };
            let who = if spec.mode.is_global() { node.clone() } else { format!("{slot}/{}", spec.replicas) };
            format!("{who}: {:<9} [{bar}]", t.status.state.as_str())
        })
        .collect()
}

/// A monitor window as Docker says it: "5 seconds".
pub(super) fn human_ms(ms: u64) -> String {
    match ms {
        1000 => "1 second".into(),
        _ if ms.is_multiple_of(1000) => format!("{} seconds", ms / 1000),
        _ => format!("{} seconds", ms as f64 / 1000.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bars_show_each_slot_as_far_as_its_newest_task_got() {
        let mut spec = ServiceSpec { replicas: 3, ..Default::default() };
        spec.task.image = "new".into();
        let task = |slot, image: &str, state, created_index| {
            let mut t = Task { slot, desired: TaskState::Running, created_index, ..Default::default() };
            t.spec.image = image.into();
            t.status.state = state;
            (t, "h1".to_string())
        };
        let ts = [
            task(1, "new", TaskState::Running, 5),
            task(1, "old", TaskState::Running, 1),
            task(2, "new", TaskState::Preparing, 6),
            task(3, "old", TaskState::Running, 2),
        ];
        let bars = progress_bars(&spec, &ts.iter().collect::<Vec<_>>());
        assert_eq!(bars.len(), 3, "{bars:?}");
        assert_eq!(bars[0], format!("1/3: running   [{}>]", "=".repeat(49)));
        assert!(bars[1].starts_with("2/3: preparing [=") && bars[1].contains("> "), "{}", bars[1]);
        assert_eq!(bars[2], format!("3/3: running   [{}]", " ".repeat(50)), "an old task is no progress");
        spec.replicas = 30;
        let many: Vec<(Task, String)> = (1..=30).map(|s| task(s, "new", TaskState::New, s)).collect();
        assert!(progress_bars(&spec, &many.iter().collect::<Vec<_>>()).is_empty(), "past 20, the overall line only");
    }
}
