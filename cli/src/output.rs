//! Docker-style tables and JSON for scripts.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use shoal_proto::pb;

use crate::args::Format;

/// An id as Docker lists it: its first 12 characters.
pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Columns separated by three spaces, padded to the widest cell (as Docker's
/// tabwriter does).
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut lines = vec![headers.iter().map(|h| h.to_string()).collect()];
    lines.extend_from_slice(rows);
    align(&lines)
}

/// Lines of cells, each column padded to its widest cell and three spaces
/// (the last cell of a line is not padded).
fn align(lines: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for l in lines {
        for (i, c) in l.iter().enumerate().take(l.len().saturating_sub(1)) {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: &Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let pad = widths[i] - c.chars().count();
                s.push_str(&format!("{c}{}   ", " ".repeat(pad)));
            }
        }
        s.trim_end().to_string()
    };
    lines.iter().map(line).collect::<Vec<_>>().join("\n")
}

/// A column of a listing: Docker's name for it in templates (`{{.Names}}`),
/// its header, and whether the default table shows it.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub field: &'static str,
    pub header: &'static str,
    pub in_table: bool,
}

/// A column of the default table.
pub const fn col(field: &'static str, header: &'static str) -> Column {
    Column { field, header, in_table: true }
}

/// A column only templates show (`{{.State}}` in `ps`), as in Docker.
pub const fn extra(field: &'static str, header: &'static str) -> Column {
    Column { field, header, in_table: false }
}

/// A listing's rows as `--format` asks: the table Docker prints, or a Go
/// template over each row whose fields are Docker's names for the columns,
/// a `table` template with the headers of the fields it shows (rendered
/// over the headers, as the docker CLI does) and its tabs aligned; JSON
/// is the rows' fields (listings with a JSON document of their own print it
/// instead). Nothing at all when a template has no row to show.
pub fn print_rows(format: Format, columns: &[Column], rows: &[Vec<String>]) -> anyhow::Result<()> {
    print!("{}", rows_text(format, columns, rows)?);
    Ok(())
}

/// A listing's `Labels` cell (its column's field is `Labels`): the labels
/// themselves, which `print_rows` shows as Docker's `k=v,k2=v2` and a
/// template's `{{.Label "key"}}` reads (a value may hold `,` and `=`).
pub fn labels_cell<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    serde_json::to_string(&labels.into_iter().collect::<BTreeMap<_, _>>()).unwrap_or_default()
}

/// What `print_rows` prints, each line ended.
fn rows_text(format: Format, columns: &[Column], rows: &[Vec<String>]) -> anyhow::Result<String> {
    let object = |cells: &mut dyn Iterator<Item = String>| {
        Value::Object(columns.iter().map(|c| c.field.to_string()).zip(cells.map(Value::String)).collect())
    };
    // Each row's labels out of its `labels_cell`, which then reads as Docker's.
    let at = columns.iter().position(|c| c.field == "Labels");
    let mut labels: Vec<Option<BTreeMap<String, String>>> = Vec::new();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut r = r.clone();
            let map = at.and_then(|i| r.get(i)).and_then(|c| serde_json::from_str::<BTreeMap<String, String>>(c).ok());
            if let (Some(i), Some(m)) = (at, &map) {
                r[i] = m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
            }
            labels.push(map);
            r
        })
        .collect();
    let ended = |text: String| if text.is_empty() { text } else { text + "\n" };
    match format {
        Format::Template(t) => {
            let mut lines = Vec::new();
            if t.table {
                let header = t.render_row(&object(&mut columns.iter().map(|c| c.header.to_string())), None, true);
                lines.push(header.map_err(anyhow::Error::msg)?);
            }
            for (r, l) in rows.iter().zip(&labels) {
                lines.push(
                    t.render_row(&object(&mut r.iter().cloned()), l.as_ref(), false).map_err(anyhow::Error::msg)?,
                );
            }
            if t.table {
                let cells: Vec<Vec<String>> =
                    lines.iter().map(|l| l.split('\t').map(str::to_string).collect()).collect();
                Ok(ended(align(&cells)))
            } else {
                Ok(lines.iter().map(|l| format!("{l}\n")).collect())
            }
        }
        Format::Json => {
            let all: Vec<Value> = rows.iter().map(|r| object(&mut r.iter().cloned())).collect();
            Ok(ended(serde_json::to_string_pretty(&all)?))
        }
        Format::Table => {
            let shown: Vec<usize> = (0..columns.len()).filter(|&i| columns[i].in_table).collect();
            let headers: Vec<&str> = shown.iter().map(|&i| columns[i].header).collect();
            let rows: Vec<Vec<String>> =
                rows.iter().map(|r| shown.iter().filter_map(|&i| r.get(i).cloned()).collect()).collect();
            Ok(ended(table(&headers, &rows)))
        }
    }
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

/// The host of `host:port` (Docker's `NodeAddr`, `Status.Addr`); an address without a port as it is.
pub fn addr_host(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

/// What an `info` template sees: `info_json` with Docker's names beside it
/// (`{{.ServerVersion}}`, `{{.Swarm.LocalNodeState}}`, `{{.Swarm.NodeID}}`,
/// `{{.Swarm.ControlAvailable}}`, `{{.Swarm.Cluster.ID}}`).
pub fn info_template_doc(i: &pb::LocalInfo) -> Value {
    let mut v = info_json(i);
    let remote: Vec<Value> = i.managers.iter().map(|a| json!({"Addr": a})).collect();
    v["ServerVersion"] = i.version.clone().into();
    v["Name"] = i.hostname.clone().into();
    v["Swarm"] = json!({
        "NodeID": i.node_id,
        "NodeAddr": addr_host(&i.addr),
        "LocalNodeState": i.swarm_state,
        "ControlAvailable": i.is_manager,
        "Cluster": {"ID": i.cluster_id},
        "Managers": i.managers.len(),
        "RemoteManagers": remote,
    });
    v
}

/// Prints several objects' JSON documents as one array, as `docker inspect`
/// does, or a template (`-f '{{.State.Status}}'`) over each, a line each.
pub fn print_docs(docs: Vec<pb::JsonDoc>, format: Option<Format>) -> anyhow::Result<()> {
    let values = docs.iter().map(|d| serde_json::from_str(&d.json)).collect::<Result<Vec<Value>, _>>()?;
    print_values(&values, format)
}

/// Inspected objects as `-f/--format` asks: JSON (the default) or a template over each.
pub fn print_values(values: &[Value], format: Option<Format>) -> anyhow::Result<()> {
    match format {
        None | Some(Format::Json) => println!("{}", serde_json::to_string_pretty(values)?),
        Some(Format::Template(t)) => {
            for v in values {
                println!("{}", t.render(v, false).map_err(anyhow::Error::msg)?);
            }
        }
        Some(Format::Table) => anyhow::bail!("inspect prints JSON: give --format json or a template ({{{{.Name}}}})"),
    }
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

/// Docker's shapes of a listing: ids only (`-q`), a JSON array
/// (`--format json`), or `rows` lines for each item as a table or a
/// template (`print_rows`; `columns`: each column's field and header).
pub fn print_listing<T>(
    items: &[T],
    quiet: bool,
    format: Format,
    id: impl Fn(&T) -> String,
    json: impl Fn(&T) -> serde_json::Value,
    columns: &[Column],
    rows: impl Fn(&T) -> Vec<Vec<String>>,
) -> anyhow::Result<()> {
    if quiet {
        for i in items {
            println!("{}", id(i));
        }
    } else if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&items.iter().map(json).collect::<Vec<_>>())?);
    } else {
        print_rows(format, columns, &items.iter().flat_map(rows).collect::<Vec<_>>())?;
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
    fn a_listing_takes_docker_s_templates_over_its_columns() {
        let columns =
            [col("ID", "CONTAINER ID"), col("Image", "IMAGE"), col("Names", "NAMES"), extra("State", "STATE")];
        let rows = vec![
            vec!["0123456789ab".to_string(), "busybox:local".into(), "web".into(), "running".into()],
            vec!["ba9876543210".to_string(), "nginx".into(), "db".into(), "exited".into()],
        ];
        let text = |f: &str| rows_text(Format::parse(f).expect("format"), &columns, &rows).map_err(|e| e.to_string());
        assert_eq!(text("{{.Names}}").as_deref(), Ok("web\ndb\n"));
        let none = rows_text(Format::parse("{{.Names}}").expect("format"), &columns, &[]).expect("no rows");
        assert_eq!(none, "", "no row, no line (a shell loop over it runs no time)");
        assert_eq!(
            text("table {{.Names}}\\t{{.Image}}").as_deref(),
            Ok("NAMES   IMAGE\nweb     busybox:local\ndb      nginx\n")
        );
        assert_eq!(
            text("{{json .}}").as_deref().map(|t| t.lines().next()),
            Ok(Some(r#"{"ID":"0123456789ab","Image":"busybox:local","Names":"web","State":"running"}"#))
        );
        assert_eq!(text("{{.Name}}"), Err("no field .Name here: there are .ID .Image .Names .State".into()));
        assert_eq!(text("{{.Names}} {{.State}}").as_deref(), Ok("web running\ndb exited\n"));
        assert_eq!(
            text("table {{.Names}}\\t{{.State}}").as_deref(),
            Ok("NAMES   STATE\nweb     running\ndb      exited\n")
        );
        assert_eq!(
            text("table").as_deref(),
            Ok(
                "CONTAINER ID   IMAGE           NAMES\n0123456789ab   busybox:local   web\nba9876543210   nginx           db\n"
            )
        );
    }

    #[test]
    fn a_labels_cell_prints_as_docker_s_and_label_reads_it_whole() {
        let columns = [col("Names", "NAMES"), extra("Labels", "LABELS")];
        let labels: BTreeMap<String, String> =
            [("com.docker.compose.project.config_files", "a.yml,b.yml"), ("rule", "x=1,y=2")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let rows = vec![vec!["web".to_string(), labels_cell(&labels)], vec!["db".to_string(), labels_cell([])]];
        let text = |f: &str| rows_text(Format::parse(f).expect("format"), &columns, &rows).map_err(|e| e.to_string());
        assert_eq!(
            text("{{.Labels}}").as_deref(),
            Ok("com.docker.compose.project.config_files=a.yml,b.yml,rule=x=1,y=2\n\n")
        );
        assert_eq!(text("{{.Names}}:{{.Label \"rule\"}}").as_deref(), Ok("web:x=1,y=2\ndb:\n"));
        assert_eq!(
            text("table {{.Names}}\\t{{.Label \"com.docker.compose.project.config_files\"}}").as_deref(),
            Ok("NAMES   CONFIG FILES\nweb     a.yml,b.yml\ndb\n")
        );
    }

    #[test]
    fn format_takes_table_json_or_a_template_and_says_why_one_does_not_parse() {
        assert_eq!(Format::parse("table"), Ok(Format::Table));
        assert_eq!(Format::parse("json"), Ok(Format::Json));
        assert!(matches!(Format::parse("{{.ID}}"), Ok(Format::Template(t)) if !t.table));
        assert!(Format::parse("{{.ID").expect_err("unclosed").contains("unclosed action"));
    }

    #[test]
    fn capitalize_words() {
        assert_eq!(capitalize("leader"), "Leader");
        assert_eq!(capitalize(""), "");
    }
}
