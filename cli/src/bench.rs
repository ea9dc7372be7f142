//! `shoal bench`: load generators for the figures in bench/ (they measure,
//! never assert). Bounded in time and count; they only talk to the daemon or
//! manager the CLI is pointed at.

use std::time::{Duration, Instant};

use shoal_proto::pb;

use crate::args::{BenchCmd, Cli};
use crate::client;

pub async fn run(cli: &Cli, cmd: &BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Writes { clients, seconds, node } => writes(cli, *clients, *seconds, node).await,
    }
}

/// Durable writes through the control API: `clients` concurrent callers each
/// add a label to `node` in a loop. Every acknowledged call is one committed
/// Raft entry (fsync'd on a quorum).
async fn writes(cli: &Cli, clients: usize, seconds: u64, node: &str) -> anyhow::Result<()> {
    let control = client::control(cli).await?;
    let deadline = Instant::now() + Duration::from_secs(seconds.clamp(1, 600));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients.clamp(1, 1024) {
        let mut control = control.clone();
        let node = node.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let req = pb::UpdateNodeRequest {
                    id: node.clone(),
                    label_add: [(format!("bench-{c}"), n.to_string())].into(),
                    ..Default::default()
                };
                let t = Instant::now();
                match control.update_node(req).await {
                    Ok(_) => {
                        ok += 1;
                        lat.push(t.elapsed());
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, failed, lat)
        }));
    }
    let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
    for t in tasks {
        let (o, f, l) = t.await?;
        ok += o;
        failed += f;
        lat.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({
            "writes": ok, "failed": failed, "seconds": secs, "clients": clients,
            "per_second": ok as f64 / secs, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
        })
    );
    // Clean up the labels the benchmark added (one more write per client).
    let mut control = control;
    let rm: Vec<String> = (0..clients).map(|c| format!("bench-{c}")).collect();
    let _ = control.update_node(pb::UpdateNodeRequest { id: node.to_string(), label_rm: rm, ..Default::default() }).await;
    Ok(())
}
