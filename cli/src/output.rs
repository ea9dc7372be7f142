//! Docker-style tables and JSON for scripts.

use serde_json::{Value, json};
use shoal_proto::pb;

/// An id as Docker lists it: its first 12 characters.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Columns separated by three spaces, padded to the widest cell (as Docker's
/// tabwriter does).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

pub fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

pub fn node_json(n: &pb::Node) -> Value {
    json!({
        "id": n.id,
        "hostname": n.hostname,
        "role": n.role,
        "availability": n.availability,
        "labels": n.labels,
        "status": n.status,
        "status_message": n.status_message,
        "addr": n.addr,
        "manager_status": n.manager_status,
        "raft_id": n.raft_id,
        "version": n.version,
        "created_at": n.created_at,
        "updated_at": n.updated_at,
        "cert_expiry": n.cert_expiry,
        "engine_version": n.engine_version,
        "os": n.os,
        "arch": n.arch,
        "wg_public_key": n.wg_public_key,
        "wg_public_key_prev": n.wg_public_key_prev,
        "key_epoch": n.key_epoch,
    })
}

pub fn info_json(i: &pb::LocalInfo) -> Value {
    json!({
        "node_id": i.node_id,
        "hostname": i.hostname,
        "role": i.role,
        "swarm_state": i.swarm_state,
        "cluster_id": i.cluster_id,
        "addr": i.addr,
        "managers": i.managers,
        "is_manager": i.is_manager,
        "raft_term": i.raft_term,
        "raft_id": i.raft_id,
        "raft_leader": i.raft_leader,
        "raft_state": i.raft_state,
        "cert_expiry": i.cert_expiry,
        "version": i.version,
    })
}

/// Prints several objects' JSON documents as one array, as `docker inspect` does.
pub fn print_docs(docs: Vec<pb::JsonDoc>) -> anyhow::Result<()> {
    let values = docs.iter().map(|d| serde_json::from_str(&d.json)).collect::<Result<Vec<Value>, _>>()?;
    println!("{}", serde_json::to_string_pretty(&values)?);
    Ok(())
}

/// Runs `op` on every item, printing the lines it returns or its error, and
/// fails at the end if any item failed (like `docker rm a b c`).
pub async fn for_each_item(
    items: &[String],
    what: &str,
    mut op: impl AsyncFnMut(&str) -> Result<Vec<String>, tonic::Status>,
) -> anyhow::Result<()> {
    let mut failed = false;
    for item in items {
        match op(item).await {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(e) => {
                eprintln!("Error: {}", e.message());
                failed = true;
            }
        }
    }
    if failed {
        anyhow::bail!("some {what} could not be removed");
    }
    Ok(())
}

/// A user-facing error line: gRPC errors show only their message.
pub fn error_message(e: &anyhow::Error) -> String {
    if let Some(s) = e.downcast_ref::<tonic::Status>() {
        let msg = s.message();
        if s.code() == tonic::Code::Unavailable && (msg.contains("transport") || msg.contains("connect")) {
            return format!("cannot reach the daemon or manager: {msg}");
        }
        return msg.to_string();
    }
    format!("{e:#}")
}

/// Docker's three shapes of a listing: ids only (`-q`), a JSON array
/// (`--format json`), or a table with `rows` lines for each item.
pub fn print_listing<T>(
    items: &[T],
    quiet: bool,
    format: crate::args::Format,
    id: impl Fn(&T) -> String,
    json: impl Fn(&T) -> serde_json::Value,
    headers: &[&str],
    rows: impl Fn(&T) -> Vec<Vec<String>>,
) -> anyhow::Result<()> {
    if quiet {
        for i in items {
            println!("{}", id(i));
        }
    } else if format == crate::args::Format::Json {
        println!("{}", serde_json::to_string_pretty(&items.iter().map(json).collect::<Vec<_>>())?);
    } else {
        println!("{}", table(headers, &items.iter().flat_map(rows).collect::<Vec<_>>()));
    }
    Ok(())
}

pub const DECIMAL: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
pub const BINARY: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// A size as Docker prints it: in the largest unit of `base` below it, with
/// `precision` significant digits and no trailing zeros (Go's `%.Ng`).
pub fn size(bytes: u64, base: f64, units: &[&str], precision: usize) -> String {
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= base && i + 1 < units.len() {
        v /= base;
        i += 1;
    }
    let int_digits = if v < 1.0 { 1 } else { v.log10().floor() as usize + 1 };
    let text = format!("{v:.*}", precision.saturating_sub(int_digits));
    let text = if text.contains('.') { text.trim_end_matches('0').trim_end_matches('.') } else { &text };
    format!("{text}{}", units[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_like_docker() {
        let t = table(&["ID", "HOSTNAME", "STATUS"], &[vec!["abc *".into(), "h1".into(), "Ready".into()]]);
        assert_eq!(t, "ID      HOSTNAME   STATUS\nabc *   h1         Ready");
    }

    #[test]
    fn capitalize_words() {
        assert_eq!(capitalize("leader"), "Leader");
        assert_eq!(capitalize(""), "");
    }
}
