//! Docker's mount flags (`-v`, `--tmpfs`, `--mount`) read into typed mounts:
//! pure parsing, shared by the engine (`shoal run`, a task's mounts) and the
//! managers' validation of a service's spec. Whether a bind source exists is
//! the engine's business (`shoal_engine::volumes::bind_source`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A mount flag that does not parse: which one and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid mount {spec:?}: {why}")]
pub struct MountError {
    pub spec: String,
    pub why: String,
}

/// One mount a container asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountSource {
    Volume(String),
    Bind(PathBuf),
    Tmpfs,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountReq {
    pub source: MountSource,
    pub target: String,
    pub read_only: bool,
    /// The labels a volume made for this mount gets (`volume-label=K=V`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volume_labels: BTreeMap<String, String>,
}

/// Where a bind mount's host path came from: `-v` creates a missing directory,
/// `--mount type=bind` (and a service's mounts) refuses it, as Docker does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindFlag {
    Volume,
    Mount,
}

/// A volume's name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn valid_volume_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && n.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// `-v NAME:/path[:ro|rw]`, `-v /host:/path[:ro|rw]` or `-v /path` (anonymous).
pub fn parse_volume_flag(spec: &str) -> Result<MountReq, MountError> {
    let bad = |why: &str| MountError { spec: spec.to_string(), why: why.to_string() };
    let parts: Vec<&str> = spec.split(':').collect();
    let (src, target, mode) = match parts.as_slice() {
        [t] => (None, *t, None),
        [s, t] => (Some(*s), *t, None),
        [s, t, m] => (Some(*s), *t, Some(*m)),
        _ => return Err(bad("expected [SOURCE:]TARGET[:ro|rw]")),
    };
    if !target.starts_with('/') {
        return Err(bad("the target must be an absolute path in the container"));
    }
    if target == "/" {
        return Err(bad("the target cannot be /"));
    }
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => return Err(bad(&format!("unknown mode {m:?}: use ro or rw"))),
    };
    let source = match src {
        None => MountSource::Volume(String::new()), // anonymous
        Some(s) if s.starts_with('/') => MountSource::Bind(PathBuf::from(s)),
        Some(s) if valid_volume_name(s) => MountSource::Volume(s.to_string()),
        Some(s) => return Err(bad(&format!("{s:?} is neither an absolute host path nor a volume name"))),
    };
    Ok(MountReq { source, target: target.to_string(), read_only, volume_labels: BTreeMap::new() })
}

/// `--tmpfs /path`.
pub fn parse_tmpfs_flag(spec: &str) -> Result<MountReq, MountError> {
    let target = spec.split(':').next().unwrap_or("");
    if !target.starts_with('/') || target == "/" {
        return Err(MountError { spec: spec.into(), why: "expected an absolute path other than /".into() });
    }
    Ok(MountReq {
        source: MountSource::Tmpfs,
        target: target.to_string(),
        read_only: false,
        volume_labels: BTreeMap::new(),
    })
}

/// `--mount type=volume|bind|tmpfs,source=S,target=T[,readonly][,volume-label=K=V…]`,
/// with Docker's aliases (src, dst/destination, ro, readonly=true|false); a
/// field may be quoted as in CSV (`"volume-label=note=a,b"`), as Docker's.
pub fn parse_mount_flag(spec: &str) -> Result<MountReq, MountError> {
    let bad = |why: String| MountError { spec: spec.to_string(), why };
    let (mut kind, mut source, mut target, mut read_only) =
        ("volume".to_string(), None::<String>, None::<String>, false);
    let mut volume_labels = BTreeMap::new();
    for field in csv_fields(spec).map_err(|why| bad(why.into()))?.iter().filter(|f| !f.is_empty()) {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (field.trim(), None),
        };
        match (k, v) {
            ("type", Some(v)) => kind = v.to_string(),
            ("source" | "src", Some(v)) => source = Some(v.to_string()),
            ("target" | "dst" | "destination", Some(v)) => target = Some(v.to_string()),
            ("readonly" | "ro", None | Some("true" | "1")) => read_only = true,
            ("readonly" | "ro", Some("false" | "0")) => read_only = false,
            ("volume-label", Some(_)) => {
                // The value as given, spaces and all (Docker's).
                let l = field.trim_start().strip_prefix("volume-label=").unwrap_or_default();
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                if k.is_empty() {
                    return Err(bad(format!("invalid {field:?}: use volume-label=KEY=VALUE")));
                }
                volume_labels.insert(k.to_string(), v.to_string());
            }
            _ => {
                return Err(bad(format!(
                    "unknown or malformed field {field:?}: use type=, source=, target=, readonly, volume-label="
                )));
            }
        }
    }
    if !volume_labels.is_empty() && kind != "volume" {
        return Err(bad(format!("volume-label is for type=volume, not type={kind}")));
    }
    let target = target.ok_or_else(|| bad("target= is required".into()))?;
    if !target.starts_with('/') || target == "/" {
        return Err(bad("the target must be an absolute path in the container other than /".into()));
    }
    let source = match (kind.as_str(), source) {
        ("volume", None) => MountSource::Volume(String::new()),
        ("volume", Some(s)) if valid_volume_name(&s) => MountSource::Volume(s),
        ("volume", Some(s)) => return Err(bad(format!("invalid volume name {s:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]"))),
        ("bind", Some(s)) if s.starts_with('/') => MountSource::Bind(PathBuf::from(s)),
        ("bind", _) => return Err(bad("a bind mount needs source=/absolute/host/path".into())),
        ("tmpfs", None) => MountSource::Tmpfs,
        ("tmpfs", Some(_)) => return Err(bad("a tmpfs mount takes no source".into())),
        (other, _) => return Err(bad(format!("unknown type {other:?}: use volume, bind or tmpfs"))),
    };
    Ok(MountReq { source, target, read_only, volume_labels })
}

/// A `--mount` value's comma-separated fields, each of which may be quoted
/// as in CSV (`"a,b"`, a `""` inside standing for `"`).
pub fn csv_fields(spec: &str) -> Result<Vec<String>, &'static str> {
    let mut fields = vec![String::new()];
    let mut chars = spec.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        let cur = fields.last_mut().expect("one field at least");
        match (quoted, c) {
            (false, ',') => fields.push(String::new()),
            (false, '"') if cur.is_empty() => quoted = true,
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cur.push('"');
            }
            (true, '"') => {
                quoted = false;
                if chars.peek().is_some_and(|&c| c != ',') {
                    return Err("a quoted field must end at a comma");
                }
            }
            (_, c) => cur.push(c),
        }
    }
    if quoted {
        return Err("a quoted field has no closing quote");
    }
    Ok(fields)
}

/// `fields` as one `--mount` value, a field quoted where it holds a comma
/// or a quote (what `csv_fields` reads back).
pub fn csv_join<S: AsRef<str>>(fields: &[S]) -> String {
    let quoted = |f: &str| {
        if f.contains([',', '"']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f.to_string() }
    };
    fields.iter().map(|f| quoted(f.as_ref())).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_flags_parse_like_docker() {
        let v = parse_volume_flag("data:/var/lib/data").expect("named");
        assert_eq!(
            (v.source, v.target.as_str(), v.read_only),
            (MountSource::Volume("data".into()), "/var/lib/data", false)
        );
        let v = parse_volume_flag("/srv/www:/www:ro").expect("bind");
        assert_eq!((v.source, v.read_only), (MountSource::Bind("/srv/www".into()), true));
        let v = parse_volume_flag("/cache").expect("anonymous");
        assert_eq!(v.source, MountSource::Volume(String::new()));
        for bad in ["data:rel", "data:/", "data:/x:rw:ro", "da ta:/x", "data:/x:rx", ""] {
            assert!(parse_volume_flag(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_tmpfs_flag("/run").expect("tmpfs").source, MountSource::Tmpfs);
        assert!(parse_tmpfs_flag("run").is_err());
    }

    #[test]
    fn mount_flags_parse_like_docker() {
        let none = BTreeMap::new;
        let m = parse_mount_flag("type=volume,source=data,target=/data,readonly").expect("volume");
        let want = MountReq {
            source: MountSource::Volume("data".into()),
            target: "/data".into(),
            read_only: true,
            volume_labels: none(),
        };
        assert_eq!(m, want);
        let m = parse_mount_flag("type=bind,src=/srv,dst=/www,ro=false").expect("bind");
        let want = MountReq {
            source: MountSource::Bind("/srv".into()),
            target: "/www".into(),
            read_only: false,
            volume_labels: none(),
        };
        assert_eq!(m, want);
        let m =
            parse_mount_flag(r#"src=data,dst=/d,volume-label=tier=db,"volume-label=note=a,""b""",volume-label=flag"#)
                .expect("labels");
        let labels: Vec<(&str, &str)> = m.volume_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(labels, [("flag", ""), ("note", "a,\"b\""), ("tier", "db")]);
        let fields = ["type=volume", "volume-label=note=a,\"b\"", "volume-label=pad= x "];
        assert_eq!(csv_fields(&csv_join(&fields)).as_deref(), Ok(&fields.map(String::from)[..]));
        let m = parse_mount_flag(&csv_join(&["target=/d", "volume-label=pad= x "])).expect("spaces");
        assert_eq!(m.volume_labels.get("pad").map(String::as_str), Some(" x "));
        assert_eq!(parse_mount_flag("type=tmpfs,destination=/run").expect("tmpfs").source, MountSource::Tmpfs);
        assert_eq!(parse_mount_flag("target=/cache").expect("anonymous").source, MountSource::Volume(String::new()));
        for bad in [
            "type=bind,target=/x",
            "type=bind,src=rel,target=/x",
            "source=x",
            "type=nfs,target=/x",
            "target=/x,colour=red",
            "type=tmpfs,src=a,target=/x",
            "type=volume,src=../x,target=/x",
            "target=rel",
            "type=bind,src=/srv,target=/x,volume-label=a=b",
            "target=/x,volume-label==b",
            r#"target=/x,"volume-label=a"#,
            r#"target=/x,"volume-label=a"b"#,
        ] {
            assert!(parse_mount_flag(bad).is_err(), "{bad}");
        }
    }
}
