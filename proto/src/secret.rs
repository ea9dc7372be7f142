//! Secrets and configs: small named blobs the managers keep in Raft and hand
//! to the nodes whose tasks use them, and the references a task spec makes
//! to them (by id and name, with the file's target, owner and mode: never
//! the data). A secret's payload lives in [`Payload`], a field of its own, so
//! that encryption at rest can wrap exactly it; its `Debug` never shows it.
//!
//! Architecture Invariant: a payload never reaches a log line, an inspect
//! answer of a secret, a service or a task spec.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::Meta;

/// Docker's limit: a secret or config holds less than 500 KiB.
pub const MAX_SIZE: usize = 500 * 1024;

/// Where a secret's relative target lands in the container.
pub const SECRETS_DIR: &str = "/run/secrets";

/// The only template driver (`config create --template-driver golang`).
pub const TEMPLATE_DRIVER: &str = "golang";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Secret,
    Config,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Config => "config",
        }
    }

    pub fn parse(s: &str) -> Result<Kind, String> {
        match s {
            "secret" => Ok(Kind::Secret),
            "config" => Ok(Kind::Config),
            _ => Err(format!("unknown object kind {s:?}: secret or config")),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The bytes of a secret or config: base64 in JSON (Raft entries, snapshots),
/// `<redacted>` in `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Payload(pub Vec<u8>);

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        use base64::Engine;
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD.decode(s).map(Payload).map_err(serde::de::Error::custom)
    }
}

/// What the user gives: a name, labels and (configs) a template driver.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSpec {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `golang` for a templated config; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template_driver: String,
}

/// A secret or config as the managers store it. Immutable but for its labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub id: String,
    pub spec: ObjectSpec,
    pub meta: Meta,
    /// The payload: kept apart from the spec, never in an answer for a secret.
    pub data: Payload,
}

impl Object {
    /// Docker's inspect shape (`ID`, `Version.Index`, `CreatedAt`, `UpdatedAt`,
    /// `Spec.Name`, `Spec.Labels`); a config's `Spec.Data` (base64) and
    /// `Spec.Templating` too. A secret's data never.
    pub fn view(&self, kind: Kind) -> serde_json::Value {
        use base64::Engine;
        let mut spec = serde_json::json!({ "Name": self.spec.name, "Labels": self.spec.labels });
        if kind == Kind::Config {
            spec["Data"] = base64::engine::general_purpose::STANDARD.encode(&self.data.0).into();
        }
        if !self.spec.template_driver.is_empty() {
            spec["Templating"] = serde_json::json!({ "Name": self.spec.template_driver });
        }
        serde_json::json!({
            "ID": self.id,
            "Version": { "Index": self.meta.version },
            "CreatedAt": crate::model::rfc3339(self.meta.created_ms),
            "UpdatedAt": crate::model::rfc3339(self.meta.updated_ms),
            "Spec": spec,
        })
    }
}

/// Docker's rule for secret and config names: 1 to 64 characters, letters,
/// digits, `-`, `_` and `.`, starting and ending with a letter or digit.
pub fn validate_name(kind: Kind, name: &str) -> Result<(), String> {
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && ends_ok(name.chars().next())
        && ends_ok(name.chars().last());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} name {name:?}: 1 to 64 letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit"
        ))
    }
}

/// What `create` refuses: a bad name, no data or too much, an unknown
/// template driver, a template that does not parse.
pub fn validate_create(kind: Kind, spec: &ObjectSpec, data: &[u8]) -> Result<(), String> {
    validate_name(kind, &spec.name)?;
    if data.is_empty() {
        return Err(format!("{kind} data is empty: give a file (or - for standard input) with something in it"));
    }
    if data.len() >= MAX_SIZE {
        return Err(format!("{kind} data must be smaller than 500 KiB ({} bytes given)", data.len()));
    }
    match (kind, spec.template_driver.as_str()) {
        (_, "") => Ok(()),
        (Kind::Config, TEMPLATE_DRIVER) => {
            let text = std::str::from_utf8(data).map_err(|_| "a template must be UTF-8 text".to_string())?;
            crate::template::Template::parse(text).map(|_| ())
        }
        (Kind::Config, other) => Err(format!("unknown template driver {other:?}: the only one is golang")),
        (Kind::Secret, _) => Err("secrets take no template driver: template a config instead".into()),
    }
}

/// What an update with the object's data again (Docker's stack deploy sends
/// the file's each time) refuses: other bytes than the stored ones, since
/// only the labels of a secret or config may change.
pub fn check_same_data(kind: Kind, stored: &Object, data: &[u8]) -> Result<(), String> {
    // Compared in time that does not depend on where they differ.
    let same =
        stored.data.0.len() == data.len() && stored.data.0.iter().zip(data).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0;
    if same {
        return Ok(());
    }
    Err(format!(
        "only updates to Labels are allowed: {kind} {} holds other data, and {kind}s are immutable: \
         create one under a new name and point the services at it",
        stored.spec.name
    ))
}

/// A task's use of a secret or config: which one, and the file it becomes.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileRef {
    /// The object's id (the API resolves `source` to it).
    #[serde(default)]
    pub id: String,
    /// The object's name, as given.
    pub source: String,
    /// Secrets: a file name under /run/secrets or an absolute path; configs:
    /// an absolute path (a relative one is under /).
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl FileRef {
    /// `--secret NAME` or `--secret source=S,target=T,uid=U,gid=G,mode=0400`
    /// (and `--config` likewise). Defaults: the target is the name (a
    /// config's `/NAME`), owner 0:0, mode 0444.
    pub fn parse(kind: Kind, flag: &str) -> Result<FileRef, String> {
        let bad = |why: String| format!("invalid --{kind} {flag:?}: {why}");
        let mut r = FileRef { mode: 0o444, ..Default::default() };
        if !flag.contains('=') {
            r.source = flag.to_string();
        } else {
            for field in flag.split(',') {
                let (k, v) = field.split_once('=').ok_or_else(|| bad(format!("{field:?} is not KEY=VALUE")))?;
                let number = |v: &str| v.parse::<u32>().map_err(|_| bad(format!("{k} must be a number, not {v:?}")));
                match k.trim() {
                    "source" | "src" => r.source = v.to_string(),
                    "target" => r.target = v.to_string(),
                    "uid" => r.uid = number(v)?,
                    "gid" => r.gid = number(v)?,
                    "mode" => {
                        r.mode = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                            .map_err(|_| bad(format!("mode must be octal (0400), not {v:?}")))?
                    }
                    other => return Err(bad(format!("unknown key {other:?}: source, target, uid, gid or mode"))),
                }
            }
        }
        if r.source.is_empty() {
            return Err(bad("it needs a source (the name)".into()));
        }
        if r.target.is_empty() {
            r.target = r.source.clone();
        }
        Ok(r)
    }

    /// The file's absolute path in the container.
    pub fn path(&self, kind: Kind) -> String {
        match kind {
            _ if self.target.starts_with('/') => self.target.clone(),
            Kind::Secret => format!("{SECRETS_DIR}/{}", self.target),
            Kind::Config => format!("/{}", self.target),
        }
    }

    /// What the API refuses in a reference (its source is checked apart).
    pub fn validate(&self, kind: Kind) -> Result<(), String> {
        let bad = |why: &str| Err(format!("invalid {kind} target {:?} for {}: {why}", self.target, self.source));
        if self.target.is_empty() || self.target.ends_with('/') {
            return bad("it must name a file");
        }
        if self.target.split('/').any(|c| c == ".." || c == ".") {
            return bad("no . or .. in it");
        }
        if self.target.split('/').skip(1).any(str::is_empty) {
            return bad("no empty path components");
        }
        if self.target.contains('\0') {
            return bad("no NUL in it");
        }
        if self.mode > 0o777 {
            return Err(format!("invalid mode {:o} for {kind} {}: at most 0777", self.mode, self.source));
        }
        Ok(())
    }
}

/// Docker's checks across a spec's references of one kind: each valid, no
/// two at the same file.
pub fn validate_refs(kind: Kind, refs: &[FileRef]) -> Result<(), String> {
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    for r in refs {
        r.validate(kind)?;
        if let Some(other) = seen.insert(r.path(kind), &r.source) {
            return Err(format!(
                "{kind} references '{other}' and '{}' have a conflicting target: '{}'",
                r.source, r.target
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_as_docker_checks_them() {
        for ok in ["a", "db-password", "x.y_z", "A1", &"a".repeat(64)] {
            assert_eq!(validate_name(Kind::Secret, ok), Ok(()), "{ok}");
        }
        for bad in ["", "-a", "a-", ".a", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(validate_name(Kind::Config, bad).unwrap_err().contains("invalid config name"), "{bad}");
        }
    }

    #[test]
    fn create_refuses_empty_big_and_bad_templates() {
        let spec = |name: &str, driver: &str| ObjectSpec {
            name: name.into(),
            labels: Default::default(),
            template_driver: driver.into(),
        };
        let table: &[(Kind, ObjectSpec, Vec<u8>, Option<&str>)] = &[
            (Kind::Secret, spec("s", ""), b"pw".to_vec(), None),
            (Kind::Secret, spec("s", ""), vec![], Some("data is empty")),
            (Kind::Secret, spec("s", ""), vec![1; MAX_SIZE], Some("smaller than 500 KiB")),
            (Kind::Secret, spec("s", ""), vec![1; MAX_SIZE - 1], None),
            (Kind::Secret, spec("s", "golang"), b"x".to_vec(), Some("secrets take no template driver")),
            (Kind::Config, spec("c", "golang"), b"{{ .Service.Name }}".to_vec(), None),
            (Kind::Config, spec("c", "golang"), b"{{ .Nope }}".to_vec(), Some("unknown field")),
            (Kind::Config, spec("c", "jinja"), b"x".to_vec(), Some("unknown template driver")),
            (Kind::Config, spec("c", "golang"), vec![0xff, 0xfe], Some("UTF-8")),
        ];
        for (kind, spec, data, want) in table {
            match (validate_create(*kind, spec, data), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => assert!(e.contains(w), "{e} lacks {w}"),
                (got, _) => panic!("{kind} {spec:?}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn references_parse_with_docker_defaults_and_resolve_their_paths() {
        let r = FileRef::parse(Kind::Secret, "db").unwrap();
        assert_eq!((r.source.as_str(), r.target.as_str(), r.mode, r.uid), ("db", "db", 0o444, 0));
        assert_eq!(r.path(Kind::Secret), "/run/secrets/db");
        assert_eq!(r.path(Kind::Config), "/db");
        let r = FileRef::parse(Kind::Secret, "source=db,target=pw,uid=100,gid=101,mode=0400").unwrap();
        assert_eq!((r.target.as_str(), r.uid, r.gid, r.mode), ("pw", 100, 101, 0o400));
        let r = FileRef::parse(Kind::Config, "src=app,target=/etc/app.conf").unwrap();
        assert_eq!(r.path(Kind::Config), "/etc/app.conf");
        for (flag, want) in [
            ("target=x", "needs a source"),
            ("source=a,mode=9", "octal"),
            ("source=a,uid=x", "uid must be a number"),
            ("source=a,color=red", "unknown key"),
            ("source=a,junk", "not KEY=VALUE"),
        ] {
            assert!(FileRef::parse(Kind::Secret, flag).unwrap_err().contains(want), "{flag}");
        }
    }

    #[test]
    fn targets_are_file_names_or_absolute_paths_and_unique() {
        let r = |source: &str, target: &str| FileRef {
            source: source.into(),
            target: target.into(),
            mode: 0o444,
            ..Default::default()
        };
        for ok in ["pw", "sub/pw", "/etc/pw", "/run/secrets/pw"] {
            assert_eq!(r("a", ok).validate(Kind::Secret), Ok(()), "{ok}");
        }
        for bad in ["", "/", "dir/", "../pw", "/etc/../pw", "a//b", "./pw"] {
            assert!(r("a", bad).validate(Kind::Secret).is_err(), "{bad}");
        }
        assert!(FileRef { mode: 0o1777, ..r("a", "x") }.validate(Kind::Secret).unwrap_err().contains("at most 0777"));
        // `pw` and `/run/secrets/pw` are the same file.
        let err = validate_refs(Kind::Secret, &[r("a", "pw"), r("b", "/run/secrets/pw")]).unwrap_err();
        assert_eq!(err, "secret references 'a' and 'b' have a conflicting target: '/run/secrets/pw'");
        assert_eq!(validate_refs(Kind::Config, &[r("a", "pw"), r("b", "/etc/pw")]), Ok(()));
    }

    #[test]
    fn an_update_with_the_data_again_refuses_other_bytes() {
        let o = Object {
            spec: ObjectSpec { name: "pw".into(), ..Default::default() },
            data: Payload(b"hunter2".to_vec()),
            ..Default::default()
        };
        assert_eq!(check_same_data(Kind::Secret, &o, b"hunter2"), Ok(()));
        for other in [&b"hunter3"[..], b"hunter", b"hunter22", b""] {
            let e = check_same_data(Kind::Secret, &o, other).unwrap_err();
            assert!(e.starts_with("only updates to Labels are allowed: secret pw holds other data"), "{e}");
            assert!(!e.contains("hunter"), "{e}");
        }
    }

    #[test]
    fn payloads_are_base64_in_json_and_redacted_in_debug() {
        let o = Object { id: "i".into(), data: Payload(b"hunter2".to_vec()), ..Default::default() };
        let json = serde_json::to_string(&o).unwrap();
        assert!(json.contains("aHVudGVyMg==") && !json.contains("hunter2"), "{json}");
        assert_eq!(serde_json::from_str::<Object>(&json).unwrap(), o);
        assert!(!format!("{o:?}").contains("hunter2"));
        let v = o.view(Kind::Secret);
        assert!(v["Spec"].get("Data").is_none() && !v.to_string().contains("aHVudGVyMg"), "{v}");
        assert_eq!(o.view(Kind::Config)["Spec"]["Data"], "aHVudGVyMg==");
    }
}
