//! `shoal events`: the daemon's event stream, printed as Docker prints it
//! (`TIME TYPE ACTION ID (k=v, ...)`) or as one JSON object a line.

use clap::Args;
use serde_json::{Value, json};
use shoal_proto::pb;

use crate::args::{Cli, Format};
use crate::client;

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Events since: a duration back (10m, 1h30m), an RFC 3339 time or unix seconds.
    #[arg(long)]
    pub since: Option<String>,
    /// Stop at: same forms as --since; without it, follow until interrupted.
    #[arg(long)]
    pub until: Option<String>,
    /// KEY=VALUE: type=container|image|volume|network|service|node, event=start, container=NAME,
    /// image=, volume=, network=, service=, node=, label=KEY[=VALUE], scope=local|swarm.
    #[arg(short, long = "filter")]
    pub filter: Vec<String>,
    /// json: one JSON object a line.
    #[arg(long, value_parser = Format::parse, default_value = "table")]
    pub format: Format,
}

pub async fn run(cli: &Cli, a: &EventsArgs) -> anyhow::Result<()> {
    let since_ns = a.since.as_deref().map(|s| crate::parse::time_ns(s, "--since")).transpose()?.unwrap_or(0);
    let until_ns = a.until.as_deref().map(|s| crate::parse::time_ns(s, "--until")).transpose()?.unwrap_or(0);
    let mut engine = client::engine(cli).await?;
    let mut stream =
        engine.events(pb::EventsRequest { since_ns, until_ns, filters: a.filter.clone() }).await?.into_inner();
    use std::io::Write;
    while let Some(e) = stream.message().await? {
        if !e.warning.is_empty() {
            eprintln!("warning: {}", e.warning);
            continue;
        }
        let line = match a.format {
            Format::Json => json_line(&e).to_string(),
            Format::Template(t) => t.render(&template_doc(&e), false).map_err(anyhow::Error::msg)?,
            Format::Table => text_line(&e),
        };
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(()); // the reader went away (`| head`)
        }
    }
    Ok(())
}

/// Docker's text line: `2026-12-04T18:00:00.123456789Z container start ID (image=busybox, name=web)`.
pub fn text_line(e: &pb::Event) -> String {
    let mut attrs: Vec<(&String, &String)> = e.attributes.iter().collect();
    attrs.sort();
    let mut s = format!("{} {} {} {}", shoal_proto::model::rfc3339_nanos(e.time_nano), e.r#type, e.action, e.actor_id);
    if !attrs.is_empty() {
        let inner: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        s.push_str(&format!(" ({})", inner.join(", ")));
    }
    s
}

/// Docker's JSON message (`docker events --format json`), with the legacy
/// `status`/`id`/`from` of container events.
pub fn json_line(e: &pb::Event) -> Value {
    let attrs: std::collections::BTreeMap<&String, &String> = e.attributes.iter().collect();
    let mut v = json!({
        "Type": e.r#type,
        "Action": e.action,
        "Actor": {"ID": e.actor_id, "Attributes": attrs},
        "scope": e.scope,
        "time": e.time_nano.div_euclid(1_000_000_000),
        "timeNano": e.time_nano,
    });
    if e.r#type == "container" {
        v["status"] = json!(e.action);
        v["id"] = json!(e.actor_id);
        v["from"] = json!(e.attributes.get("image").cloned().unwrap_or_default());
    }
    v
}

/// What an event template sees: Docker's Go field names (`{{.Status}}`,
/// `{{.ID}}`, `{{.Time}}`), beside the JSON's.
fn template_doc(e: &pb::Event) -> Value {
    let mut v = json_line(e);
    for (go, json) in [("Status", "status"), ("ID", "id"), ("From", "from"), ("Scope", "scope"), ("Time", "time")] {
        v[go] = v.get(json).cloned().unwrap_or_default();
    }
    v["TimeNano"] = v["timeNano"].clone();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> pb::Event {
        pb::Event {
            r#type: "container".into(),
            action: "die".into(),
            actor_id: "abc123".into(),
            attributes: [("name", "web"), ("image", "busybox"), ("exitCode", "3")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            scope: "local".into(),
            time_nano: 1_796_407_200_123_456_789,
            warning: String::new(),
        }
    }

    #[test]
    fn text_lines_are_dockers() {
        assert_eq!(
            text_line(&event()),
            "2026-12-04T18:00:00.123456789Z container die abc123 (exitCode=3, image=busybox, name=web)"
        );
        let bare = pb::Event {
            r#type: "image".into(),
            action: "pull".into(),
            actor_id: "busybox:latest".into(),
            time_nano: 0,
            ..Default::default()
        };
        assert_eq!(text_line(&bare), "1970-01-01T00:00:00.000000000Z image pull busybox:latest");
        assert_eq!(shoal_proto::model::rfc3339_nanos(951_782_400_000_000_001), "2000-02-29T00:00:00.000000001Z");
    }

    #[test]
    fn json_lines_carry_dockers_fields() {
        let v = json_line(&event());
        assert_eq!(v["Type"], "container");
        assert_eq!(v["Action"], "die");
        assert_eq!(v["Actor"]["ID"], "abc123");
        assert_eq!(v["Actor"]["Attributes"]["exitCode"], "3");
        assert_eq!(v["status"], "die");
        assert_eq!(v["from"], "busybox");
        assert_eq!(v["time"], 1_796_407_200i64);
        assert_eq!(v["timeNano"], 1_796_407_200_123_456_789i64);
        assert_eq!(v["scope"], "local");
    }

    #[test]
    fn templates_see_dockers_field_names() {
        let t = crate::gotemplate::Template::parse(
            "{{.ID}} {{.Status}} {{.Type}} {{.Actor.Attributes.exitCode}} {{.Time}}",
        );
        assert_eq!(
            t.expect("parse").render(&template_doc(&event()), false).as_deref(),
            Ok("abc123 die container 3 1796407200")
        );
    }
}
