//! The small subset of Go's text/template that templated configs use
//! (`config create --template-driver golang`): text, and actions
//! `{{ .Service.Name }}`, `{{ .Service.ID }}`, `{{ .Task.Slot }}`,
//! `{{ .Task.Name }}`, `{{ .Task.ID }}`, `{{ .Node.Hostname }}`,
//! `{{ .Node.ID }}`, `{{ env "K" }}` (the task's environment) and
//! `{{ secret "x" }}` (the service's secret whose target is `x`, as in
//! Docker; the target is the secret's name unless given), with Go's `{{-`
//! and `-}}` trimming. Anything else is refused when the config is created.
//! Parsed by the managers (validation) and rendered on the node, per task.

use std::collections::BTreeMap;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(Field),
    Env(String),
    Secret(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    ServiceName,
    ServiceId,
    TaskSlot,
    TaskName,
    TaskId,
    NodeHostname,
    NodeId,
}

const FIELDS: [(&str, Field); 7] = [
    (".Service.Name", Field::ServiceName),
    (".Service.ID", Field::ServiceId),
    (".Task.Slot", Field::TaskSlot),
    (".Task.Name", Field::TaskName),
    (".Task.ID", Field::TaskId),
    (".Node.Hostname", Field::NodeHostname),
    (".Node.ID", Field::NodeId),
];

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// What a template is rendered with: one task on its node.
#[derive(Clone, Debug, Default)]
pub struct Context<'a> {
    pub service_name: &'a str,
    pub service_id: &'a str,
    pub task_slot: u64,
    pub task_name: &'a str,
    pub task_id: &'a str,
    pub node_hostname: &'a str,
    pub node_id: &'a str,
    /// The task's environment, `KEY=VALUE`.
    pub env: &'a [String],
    /// The task's secrets by target (as given in the reference).
    pub secrets: BTreeMap<&'a str, &'a [u8]>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut trim_next = false;
        while let Some(open) = rest.find("{{") {
            let mut before = &rest[..open];
            if trim_next {
                before = before.trim_start();
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| format!("unclosed action at {:?}", excerpt(&rest[open..])))?;
            let mut action = &after[..close];
            if let Some(a) = action.strip_prefix("- ") {
                before = before.trim_end();
                action = a;
            }
            trim_next = false;
            if let Some(a) = action.strip_suffix(" -") {
                trim_next = true;
                action = a;
            }
            if !before.is_empty() {
                parts.push(Part::Text(before.to_string()));
            }
            parts.push(parse_action(action.trim())?);
            rest = &after[close + 2..];
        }
        let tail = if trim_next { rest.trim_start() } else { rest };
        if !tail.is_empty() {
            parts.push(Part::Text(tail.to_string()));
        }
        Ok(Template { parts })
    }

    /// The targets of the secrets it embeds.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Secret(name) => Some(name.as_str()),
            _ => None,
        })
    }

    pub fn render(&self, cx: &Context<'_>) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::Field(f) => {
                    let v = match f {
                        Field::ServiceName => cx.service_name.to_string(),
                        Field::ServiceId => cx.service_id.to_string(),
                        Field::TaskSlot => cx.task_slot.to_string(),
                        Field::TaskName => cx.task_name.to_string(),
                        Field::TaskId => cx.task_id.to_string(),
                        Field::NodeHostname => cx.node_hostname.to_string(),
                        Field::NodeId => cx.node_id.to_string(),
                    };
                    out.extend_from_slice(v.as_bytes());
                }
                // Go's env: the value, or nothing when unset.
                Part::Env(k) => {
                    let v = cx.env.iter().find_map(|e| e.split_once('=').filter(|(n, _)| n == k).map(|(_, v)| v));
                    out.extend_from_slice(v.unwrap_or("").as_bytes());
                }
                Part::Secret(name) => {
                    let data = cx.secrets.get(name.as_str()).ok_or_else(|| {
                        format!("the template embeds secret {name:?}, which no secret of the service has as its target")
                    })?;
                    out.extend_from_slice(data);
                }
            }
        }
        Ok(out)
    }
}

fn excerpt(s: &str) -> String {
    s.chars().take(30).collect()
}

fn parse_action(action: &str) -> Result<Part, String> {
    if let Some((_, f)) = FIELDS.iter().find(|(name, _)| *name == action) {
        return Ok(Part::Field(*f));
    }
    if action.starts_with('.') {
        let known: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
        return Err(format!("unknown field {action} in template: use one of {}", known.join(", ")));
    }
    let (func, arg) = action.split_once(char::is_whitespace).unwrap_or((action, ""));
    if !matches!(func, "env" | "secret") {
        return Err(format!(
            "unknown action {{{{ {action} }}}} in template: fields, env \"K\" and secret \"name\" only"
        ));
    }
    let arg = string_literal(arg.trim())
        .ok_or_else(|| format!("{func} in template {{{{ {action} }}}} takes one quoted string"))?;
    Ok(if func == "env" { Part::Env(arg) } else { Part::Secret(arg) })
}

/// A Go string literal: "double quoted" (with \" \\ \n \t escapes) or `raw`.
fn string_literal(s: &str) -> Option<String> {
    if let Some(raw) = s.strip_prefix('`').and_then(|r| r.strip_suffix('`')) {
        return (!raw.contains('`')).then(|| raw.to_string());
    }
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return None,
            '\\' => out.push(match chars.next()? {
                'n' => '\n',
                't' => '\t',
                c @ ('"' | '\\') => c,
                _ => return None,
            }),
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx<'a>(env: &'a [String]) -> Context<'a> {
        Context {
            service_name: "web",
            service_id: "s1",
            task_slot: 3,
            task_name: "web.3",
            task_id: "t9",
            node_hostname: "h2",
            node_id: "n2",
            env,
            secrets: [("db", b"hunter2".as_slice())].into(),
        }
    }

    #[test]
    fn renders_fields_env_and_secrets() {
        let env = vec!["MODE=prod".to_string(), "EMPTY=".to_string()];
        let table: &[(&str, &str)] = &[
            ("plain text", "plain text"),
            ("{{ .Service.Name }}.{{.Task.Slot}}", "web.3"),
            ("{{.Task.Name}} {{.Task.ID}} {{.Service.ID}}", "web.3 t9 s1"),
            ("host={{ .Node.Hostname }} id={{ .Node.ID }}", "host=h2 id=n2"),
            ("mode={{ env \"MODE\" }};none={{ env \"NOPE\" }};e={{env `EMPTY`}}", "mode=prod;none=;e="),
            ("pw={{ secret \"db\" }}", "pw=hunter2"),
            ("a  {{- .Task.Slot -}}  b", "a3b"),
            ("a {{ .Task.Slot -}}\n\n b", "a 3b"),
            ("{{.Task.Slot}}{{.Task.Slot}}", "33"),
            ("", ""),
        ];
        for (text, want) in table {
            let t = Template::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(String::from_utf8(t.render(&cx(&env)).unwrap()).unwrap(), *want, "{text}");
        }
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let table: &[(&str, &str)] = &[
            ("{{ .Service.Nope }}", "unknown field .Service.Nope"),
            ("{{ range .X }}", "unknown action"),
            ("{{ env MODE }}", "takes one quoted string"),
            ("{{ env \"A\" \"B\" }}", "takes one quoted string"),
            ("{{ secret }}", "takes one quoted string"),
            ("x {{ .Task.Slot", "unclosed action"),
            ("{{ printf \"%s\" }}", "unknown action"),
        ];
        for (text, want) in table {
            let e = Template::parse(text).expect_err(text);
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn names_the_secrets_it_embeds_and_needs_them_to_render() {
        let t = Template::parse("{{ secret \"db\" }}:{{ secret \"api\" }}").unwrap();
        assert_eq!(t.secrets().collect::<Vec<_>>(), vec!["db", "api"]);
        let e = t.render(&cx(&[])).unwrap_err();
        assert!(e.contains("\"api\""), "{e}");
    }
}
