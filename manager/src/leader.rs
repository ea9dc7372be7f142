//! The leader-only loops.

use crate::orchestrator::plan;
use crate::state::TaskChange;

/// Leader-only: runs `plan` after every change of the state (and every
/// `RESYNC`), writing each pass's changes in one Raft entry.
pub async fn lead(mgr: std::sync::Arc<crate::Manager>, token: tokio_util::sync::CancellationToken) {
    let mut events = mgr.store.subscribe();
    let mut tick = tokio::time::interval(RESYNC);
    let mut last: Vec<TaskChange> = Vec::new();
    loop {
        let state = mgr.store.read();
        let changes = plan(&state, shoal_proto::model::now_ms(), &mut shoal_proto::model::new_node_id);
        // The same changes again (the state did not take them): wait for news instead of spinning.
        if !changes.is_empty() && changes != last {
            last = changes.clone();
            // Big passes go in several entries, each well under the transport's message limit.
            for chunk in changes.chunks(MAX_CHANGES_PER_ENTRY) {
                if let Err(e) = mgr.write(crate::state::Command::Tasks { changes: chunk.to_vec() }).await {
                    tracing::warn!(error = %e, changes = chunk.len(), "orchestrator write failed; retrying");
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                    }
                    break;
                }
            }
            continue; // look again at the state it made
        }
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
            ev = events.recv() => {
                if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
        }
    }
}

/// A task change is under 1 KiB of JSON: 2,000 keep an entry near 1.5 MiB.
const MAX_CHANGES_PER_ENTRY: usize = 2_000;

/// How often the orchestrator looks even when nothing changed (restart back-offs come due).
const RESYNC: std::time::Duration = std::time::Duration::from_millis(500);
