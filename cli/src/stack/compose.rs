//! Compose files as `docker stack deploy` reads them: YAML read into a tree,
//! variables interpolated, several files merged (a later file overrides or
//! adds, as Docker merges them), then typed. The types keep every key they
//! do not know in `extra`, so the translation can report them ("Ignoring
//! unsupported options: build") instead of failing or dropping them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_yaml_ng::{Mapping, Value};

pub use super::interpolate::Vars;
use super::interpolate::{interpolate_value, parse_dotenv};

/// Keys a file holds that this type does not know.
pub type Extra = BTreeMap<String, Value>;

/// A scalar as text, whatever YAML made of it (`replicas: 2`, `cpus: '0.5'`,
/// `attachable: true`): interpolation yields strings, so every scalar is read
/// as text and parsed where it is used, with the key's name in the error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Scalar(s)),
            Value::Number(n) => Ok(Scalar(n.to_string())),
            Value::Bool(b) => Ok(Scalar(b.to_string())),
            other => Err(de::Error::custom(format!("expected a single value, found {}", kind(&other)))),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        _ => "a value",
    }
}

/// A string or a list of strings (`command`, `env_file`, `tmpfs`, healthcheck `test`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StrOrList {
    Str(String),
    List(Vec<String>),
}

impl<'de> Deserialize<'de> for StrOrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Sequence(items) => items
                .into_iter()
                .map(|v| Scalar::deserialize(v).map(|s| s.0).map_err(de::Error::custom))
                .collect::<Result<_, _>>()
                .map(StrOrList::List),
            v => Scalar::deserialize(v).map(|s| StrOrList::Str(s.0)).map_err(de::Error::custom),
        }
    }
}

impl StrOrList {
    pub fn items(&self) -> Vec<String> {
        match self {
            StrOrList::Str(s) => vec![s.clone()],
            StrOrList::List(l) => l.clone(),
        }
    }
}

/// A `KEY=VALUE` list or a mapping (`environment`, `labels`): kept as a
/// mapping; a value of `None` is a key given alone.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOrMap(pub BTreeMap<String, Option<String>>);

impl<'de> Deserialize<'de> for ListOrMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let m = list_to_map(v).map_err(de::Error::custom)?;
        let mut out = BTreeMap::new();
        for (k, v) in m {
            let k = Scalar::deserialize(k).map_err(de::Error::custom)?.0;
            let v = match v {
                Value::Null => None,
                v => Some(Scalar::deserialize(v).map_err(de::Error::custom)?.0),
            };
            out.insert(k, v);
        }
        Ok(ListOrMap(out))
    }
}

/// `["A=1", "B"]` as `{A: "1", B: null}`; a mapping as it is.
fn list_to_map(v: Value) -> Result<Mapping, String> {
    match v {
        Value::Null => Ok(Mapping::new()),
        Value::Mapping(m) => Ok(m),
        Value::Sequence(items) => {
            let mut m = Mapping::new();
            for item in items {
                let s = Scalar::deserialize(item).map_err(|e| e.to_string())?.0;
                match s.split_once('=') {
                    Some((k, v)) => m.insert(Value::String(k.into()), Value::String(v.into())),
                    None => m.insert(Value::String(s), Value::Null),
                };
            }
            Ok(m)
        }
        other => Err(format!("expected a list or a mapping, found {}", kind(&other))),
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Compose {
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub networks: BTreeMap<String, NetworkDef>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub volumes: BTreeMap<String, VolumeDef>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub secrets: BTreeMap<String, ObjectDef>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub configs: BTreeMap<String, ObjectDef>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A mapping whose values may be left empty (`networks: {back: }`): each empty one its default.
fn null_as_default<'de, D, T>(d: D) -> Result<BTreeMap<String, T>, D::Error>
where
    D: Deserializer<'de>,
    T: Default + serde::de::DeserializeOwned,
{
    let m = Option::<BTreeMap<String, Option<Value>>>::deserialize(d)?.unwrap_or_default();
    m.into_iter()
        .map(|(k, v)| {
            let t = match v {
                None | Some(Value::Null) => T::default(),
                Some(v) => serde_yaml_ng::from_value(v).map_err(|e| de::Error::custom(format!("{k}: {e}")))?,
            };
            Ok((k, t))
        })
        .collect()
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Service {
    pub image: Option<Scalar>,
    pub command: Option<StrOrList>,
    #[serde(default)]
    pub environment: ListOrMap,
    pub env_file: Option<StrOrList>,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub volumes: Vec<Mount>,
    pub networks: Option<ServiceNetworks>,
    #[serde(default)]
    pub secrets: Vec<ObjectRef>,
    #[serde(default)]
    pub configs: Vec<ObjectRef>,
    #[serde(default)]
    pub depends_on: DependsOn,
    pub healthcheck: Option<Healthcheck>,
    pub hostname: Option<Scalar>,
    pub user: Option<Scalar>,
    pub working_dir: Option<Scalar>,
    #[serde(default)]
    pub labels: ListOrMap,
    pub stop_grace_period: Option<Scalar>,
    pub stop_signal: Option<Scalar>,
    pub tmpfs: Option<StrOrList>,
    pub deploy: Option<Deploy>,
    /// What the container asks of its host, kept as read: their several
    /// forms are read where they are translated, with the key in the error.
    #[serde(flatten)]
    pub host: HostKeys,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `depends_on:` a list of services (`[db]`), or a mapping with each one's
/// condition (`{db: {condition: service_healthy}}`), by service key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DependsOn(pub BTreeMap<String, DependsOnLong>);

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct DependsOnLong {
    pub condition: Option<Scalar>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl<'de> Deserialize<'de> for DependsOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Null => Ok(DependsOn::default()),
            Value::Sequence(items) => items
                .into_iter()
                .map(|v| Scalar::deserialize(v).map(|s| (s.0, DependsOnLong::default())).map_err(de::Error::custom))
                .collect::<Result<_, _>>()
                .map(DependsOn),
            v @ Value::Mapping(_) => {
                let m: BTreeMap<String, Option<DependsOnLong>> =
                    serde_yaml_ng::from_value(v).map_err(de::Error::custom)?;
                Ok(DependsOn(m.into_iter().map(|(k, l)| (k, l.unwrap_or_default())).collect()))
            }
            other => {
                Err(de::Error::custom(format!("expected a list or a mapping of services, found {}", kind(&other))))
            }
        }
    }
}

/// A service's `entrypoint`, `cap_add`, `sysctls`, `extra_hosts`... (see
/// `translate::host_settings`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct HostKeys {
    pub entrypoint: Option<Value>,
    pub cap_add: Option<Value>,
    pub cap_drop: Option<Value>,
    pub sysctls: Option<Value>,
    pub ulimits: Option<Value>,
    pub extra_hosts: Option<Value>,
    pub dns: Option<Value>,
    pub dns_search: Option<Value>,
    pub dns_opt: Option<Value>,
    pub init: Option<Value>,
    pub read_only: Option<Value>,
    pub logging: Option<Value>,
}

/// `ports:` entries: `"8080:80"`, `80`, `"8000-8001:80-81/udp"`, or the long form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Port {
    Short(String),
    Long(LongPort),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct LongPort {
    pub target: Option<Scalar>,
    pub published: Option<Scalar>,
    pub protocol: Option<Scalar>,
    pub mode: Option<Scalar>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            v @ Value::Mapping(_) => serde_yaml_ng::from_value(v).map(Port::Long).map_err(de::Error::custom),
            v => Scalar::deserialize(v).map(|s| Port::Short(s.0)).map_err(de::Error::custom),
        }
    }
}

/// `volumes:` entries of a service: `data:/var/lib/x:ro`, `./conf:/etc/x`, `/cache`, or the long form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mount {
    Short(String),
    Long(LongMount),
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct LongMount {
    #[serde(rename = "type")]
    pub kind: Option<Scalar>,
    pub source: Option<Scalar>,
    pub target: Option<Scalar>,
    pub read_only: Option<Scalar>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl<'de> Deserialize<'de> for Mount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            v @ Value::Mapping(_) => serde_yaml_ng::from_value(v).map(Mount::Long).map_err(de::Error::custom),
            v => Scalar::deserialize(v).map(|s| Mount::Short(s.0)).map_err(de::Error::custom),
        }
    }
}

/// A service's `networks:`, a list of names or a mapping with aliases (kept as the mapping).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceNetworks(pub BTreeMap<String, ServiceNetwork>);

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ServiceNetwork {
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl<'de> Deserialize<'de> for ServiceNetworks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let m = list_to_map(Value::deserialize(d)?).map_err(de::Error::custom)?;
        let mut out = BTreeMap::new();
        for (k, v) in m {
            let k = Scalar::deserialize(k).map_err(de::Error::custom)?.0;
            let n = match v {
                Value::Null => ServiceNetwork::default(),
                v => serde_yaml_ng::from_value(v).map_err(|e| de::Error::custom(format!("network {k}: {e}")))?,
            };
            out.insert(k, n);
        }
        Ok(ServiceNetworks(out))
    }
}

/// A service's `secrets:`/`configs:` entry: a name, or `source`, `target`, `uid`, `gid`, `mode`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObjectRef {
    pub source: String,
    pub target: Option<String>,
    pub uid: Option<String>,
    pub gid: Option<String>,
    pub mode: Option<String>,
    pub extra: Extra,
}

#[derive(Deserialize)]
struct LongRef {
    source: Scalar,
    target: Option<Scalar>,
    uid: Option<Scalar>,
    gid: Option<Scalar>,
    mode: Option<Scalar>,
    #[serde(flatten)]
    extra: Extra,
}

impl<'de> Deserialize<'de> for ObjectRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            v @ Value::Mapping(_) => {
                let l: LongRef = serde_yaml_ng::from_value(v).map_err(de::Error::custom)?;
                let s = |x: Option<Scalar>| x.map(|x| x.0);
                Ok(ObjectRef {
                    source: l.source.0,
                    target: s(l.target),
                    uid: s(l.uid),
                    gid: s(l.gid),
                    mode: s(l.mode),
                    extra: l.extra,
                })
            }
            v => Ok(ObjectRef { source: Scalar::deserialize(v).map_err(de::Error::custom)?.0, ..Default::default() }),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Healthcheck {
    pub test: Option<StrOrList>,
    pub interval: Option<Scalar>,
    pub timeout: Option<Scalar>,
    pub retries: Option<Scalar>,
    pub start_period: Option<Scalar>,
    pub disable: Option<Scalar>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Deploy {
    pub mode: Option<Scalar>,
    pub replicas: Option<Scalar>,
    pub resources: Option<Resources>,
    pub restart_policy: Option<RestartPolicy>,
    pub update_config: Option<UpdateConfig>,
    pub rollback_config: Option<UpdateConfig>,
    pub placement: Option<Placement>,
    #[serde(default)]
    pub labels: ListOrMap,
    pub endpoint_mode: Option<Scalar>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Resources {
    pub limits: Option<Resource>,
    pub reservations: Option<Resource>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Resource {
    pub cpus: Option<Scalar>,
    pub memory: Option<Scalar>,
    pub pids: Option<Scalar>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RestartPolicy {
    pub condition: Option<Scalar>,
    pub delay: Option<Scalar>,
    pub max_attempts: Option<Scalar>,
    pub window: Option<Scalar>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct UpdateConfig {
    pub parallelism: Option<Scalar>,
    pub delay: Option<Scalar>,
    pub failure_action: Option<Scalar>,
    pub monitor: Option<Scalar>,
    pub max_failure_ratio: Option<Scalar>,
    pub order: Option<Scalar>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Placement {
    #[serde(default)]
    pub constraints: Vec<String>,
    #[serde(default)]
    pub preferences: Vec<BTreeMap<String, Scalar>>,
    pub max_replicas_per_node: Option<Scalar>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A top-level network.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct NetworkDef {
    pub name: Option<Scalar>,
    pub driver: Option<Scalar>,
    #[serde(default)]
    pub driver_opts: BTreeMap<String, Option<Scalar>>,
    pub external: Option<External>,
    pub attachable: Option<Scalar>,
    pub internal: Option<Scalar>,
    pub ipam: Option<Ipam>,
    #[serde(default)]
    pub labels: ListOrMap,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct Ipam {
    #[serde(default)]
    pub config: Vec<IpamConfig>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct IpamConfig {
    pub subnet: Option<Scalar>,
    pub gateway: Option<Scalar>,
    pub ip_range: Option<Scalar>,
    #[serde(default)]
    pub aux_addresses: BTreeMap<String, Scalar>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// `external: true`, or the old `external: {name: x}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct External {
    pub external: bool,
    pub name: Option<String>,
}

impl<'de> Deserialize<'de> for External {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Mapping(m) => {
                let name = m.get("name").and_then(Value::as_str).map(str::to_string);
                Ok(External { external: true, name })
            }
            v => {
                let s = Scalar::deserialize(v).map_err(de::Error::custom)?.0;
                Ok(External { external: parse_bool(&s).map_err(de::Error::custom)?, name: None })
            }
        }
    }
}

/// A top-level volume.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct VolumeDef {
    pub name: Option<Scalar>,
    pub external: Option<External>,
    #[serde(default)]
    pub labels: ListOrMap,
    #[serde(flatten)]
    pub extra: Extra,
}

/// A top-level secret or config.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObjectDef {
    pub name: Option<Scalar>,
    pub file: Option<Scalar>,
    pub external: Option<External>,
    #[serde(default)]
    pub labels: ListOrMap,
    /// Configs: `golang` renders the file per task.
    pub template_driver: Option<Scalar>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// YAML's and Compose's truth values.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "y" | "on" | "1" => Ok(true),
        "false" | "no" | "n" | "off" | "0" | "" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// The Compose files read, interpolated, merged and typed, with what the
/// reading noticed on the way.
#[derive(Debug, Default)]
pub struct Loaded {
    pub compose: Compose,
    /// The directory of the first file: relative paths are relative to it.
    pub base_dir: PathBuf,
    /// Variables used but set neither in the environment nor in `.env`.
    pub unset: Vec<String>,
}

/// Reads `files` (`-` for stdin), with `env` the process environment (which
/// wins over the `.env` file beside the first file), and reads each service's
/// `env_file`s into its environment (the `environment` entries win; a key
/// given alone takes its value from `env`, and is left out when unset).
pub fn load(files: &[PathBuf], env: &Vars) -> anyhow::Result<Loaded> {
    let first = files.first().context("no Compose file: pass one with -c FILE")?;
    let base_dir = if first.as_os_str() == "-" {
        std::env::current_dir()?
    } else {
        std::path::absolute(first)?.parent().map(Path::to_path_buf).unwrap_or_default()
    };
    let mut vars = Vars::new();
    let dotenv = base_dir.join(".env");
    if let Ok(text) = std::fs::read_to_string(&dotenv) {
        vars = parse_dotenv(&text, &dotenv.display().to_string())?;
    }
    vars.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut texts = Vec::new();
    for f in files {
        let text = if f.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading the Compose file from stdin")?
        } else {
            std::fs::read_to_string(f).with_context(|| format!("reading the Compose file {}", f.display()))?
        };
        texts.push((f.display().to_string(), text));
    }
    let mut loaded = parse(&texts, &vars)?;
    loaded.base_dir = base_dir;
    read_env_files(&mut loaded.compose, &loaded.base_dir, env)?;
    Ok(loaded)
}

/// The pure part of [`load`]: `(name, text)` files, interpolated with `vars` and merged in order.
pub fn parse(files: &[(String, String)], vars: &Vars) -> anyhow::Result<Loaded> {
    let mut merged = Value::Null;
    let mut unset = Vec::new();
    for (name, text) in files {
        let mut v: Value = serde_yaml_ng::from_str(text).with_context(|| format!("{name}: not a valid YAML file"))?;
        if !matches!(v, Value::Mapping(_)) {
            anyhow::bail!("{name}: a Compose file is a mapping with services: at the top");
        }
        interpolate_value(&mut v, vars, "", &mut unset).with_context(|| name.clone())?;
        normalize(&mut v);
        merge(&mut merged, v, "");
    }
    let compose: Compose = serde_yaml_ng::from_value(merged).context("reading the Compose file")?;
    Ok(Loaded { compose, base_dir: PathBuf::new(), unset })
}

/// Lists that merge as mappings (`environment`, `labels`, a service's
/// `networks`) become mappings before files merge.
fn normalize(v: &mut Value) {
    let Some(services) = v.get_mut("services").and_then(Value::as_mapping_mut) else { return };
    for (_, svc) in services.iter_mut() {
        let Some(svc) = svc.as_mapping_mut() else { continue };
        for key in ["environment", "labels", "networks"] {
            if let Some(x) = svc.get_mut(key)
                && let Ok(m) = list_to_map(x.clone())
            {
                *x = Value::Mapping(m);
            }
        }
        if let Some(l) = svc.get_mut("deploy").and_then(|d| d.get_mut("labels"))
            && let Ok(m) = list_to_map(l.clone())
        {
            *l = Value::Mapping(m);
        }
    }
}

/// Lays `over` on `base` as Docker merges a later Compose file: mappings
/// merge key by key; a service's `ports` add to the earlier ones, its
/// `volumes` replace those with the same target and `secrets`/`configs`
/// those with the same source; other lists add what they lack, except
/// `command`, `entrypoint` and a health check's `test`, which replace; a
/// scalar replaces.
fn merge(base: &mut Value, over: Value, path: &str) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                let key = k.as_str().unwrap_or_default();
                let p = if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v, &p),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (Value::Sequence(b), Value::Sequence(o)) => {
            let field = path.rsplit('.').next().unwrap_or_default();
            let in_service = path.starts_with("services.");
            let keyed: Option<fn(&Value) -> Option<String>> = match field {
                "volumes" if in_service => Some(mount_target),
                "secrets" | "configs" if in_service => Some(ref_source),
                _ => None,
            };
            if matches!(field, "command" | "entrypoint" | "test") {
                *b = o;
            } else if let Some(key) = keyed {
                for v in o {
                    let k = key(&v);
                    match b.iter_mut().find(|x| k.is_some() && key(x) == k) {
                        Some(x) => *x = v,
                        None => b.push(v),
                    }
                }
            } else {
                for v in o {
                    if !b.contains(&v) {
                        b.push(v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// The target of a service volume entry, short or long.
fn mount_target(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            Some(if parts.len() >= 2 { parts[1] } else { parts[0] }.to_string())
        }
        Value::Mapping(m) => m.get("target").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn ref_source(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Mapping(m) => m.get("source").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Each service's `env_file`s under its `environment` (which wins), and the
/// keys given alone resolved from `env`.
fn read_env_files(c: &mut Compose, base: &Path, env: &Vars) -> anyhow::Result<()> {
    for (name, svc) in &mut c.services {
        let mut merged: BTreeMap<String, Option<String>> = BTreeMap::new();
        for f in svc.env_file.take().map(|f| f.items()).unwrap_or_default() {
            let path = base.join(&f);
            let lines = crate::container::read_env_file(&path).with_context(|| format!("service {name}: env_file"))?;
            for l in lines {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                merged.insert(k.to_string(), Some(v.to_string()));
            }
        }
        for (k, v) in std::mem::take(&mut svc.environment.0) {
            match v {
                Some(v) => {
                    merged.insert(k, Some(v));
                }
                None => {
                    if let Some(v) = env.get(&k) {
                        merged.insert(k, Some(v.clone()));
                    }
                }
            }
        }
        svc.environment = ListOrMap(merged);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vars {
        list.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn files(list: &[&str]) -> Vec<(String, String)> {
        list.iter().enumerate().map(|(i, t)| (format!("f{i}.yml"), t.to_string())).collect()
    }

    #[test]
    fn an_override_file_merges_as_docker_merges_it() {
        let base = r#"
services:
  web:
    image: nginx:1
    command: ["nginx", "-g", "daemon off;"]
    environment: [A=1, B=2]
    ports: ["80:80"]
    volumes: ["data:/data", "/srv:/srv:ro"]
    labels: {x: "1"}
    deploy:
      replicas: 2
      placement: {constraints: [node.role==worker]}
  db:
    image: postgres
volumes: {data: }
"#;
        let over = r#"
services:
  web:
    image: nginx:2
    command: ["nginx"]
    environment: {B: "3", C: "4"}
    ports: ["443:443"]
    volumes: ["/other:/srv"]
    labels: [y=2]
    deploy:
      replicas: 3
      placement: {constraints: [node.labels.zone==a]}
  api:
    image: api
"#;
        let l = parse(&files(&[base, over]), &Vars::new()).expect("parses");
        let web = &l.compose.services["web"];
        assert_eq!(web.image, Some(Scalar("nginx:2".into())));
        assert_eq!(web.command, Some(StrOrList::List(vec!["nginx".into()])));
        let env: Vec<(&str, Option<&str>)> =
            web.environment.0.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        assert_eq!(env, [("A", Some("1")), ("B", Some("3")), ("C", Some("4"))]);
        assert_eq!(web.ports, [Port::Short("80:80".into()), Port::Short("443:443".into())]);
        assert_eq!(web.volumes, [Mount::Short("data:/data".into()), Mount::Short("/other:/srv".into())]);
        assert_eq!(web.labels.0.len(), 2);
        let d = web.deploy.as_ref().expect("deploy");
        assert_eq!(d.replicas, Some(Scalar("3".into())));
        assert_eq!(d.placement.as_ref().expect("placement").constraints, ["node.role==worker", "node.labels.zone==a"]);
        assert_eq!(l.compose.services.keys().collect::<Vec<_>>(), ["api", "db", "web"]);
    }

    #[test]
    fn values_are_interpolated_before_they_are_typed() {
        let f = "services:\n  web:\n    image: nginx:${TAG:-1}\n    deploy: {replicas: $N}\n    environment: [X=$$Y, Z=$UNSET]\n";
        let l = parse(&files(&[f]), &vars(&[("N", "4")])).expect("parses");
        let web = &l.compose.services["web"];
        assert_eq!(web.image, Some(Scalar("nginx:1".into())));
        assert_eq!(web.deploy.as_ref().and_then(|d| d.replicas.clone()), Some(Scalar("4".into())));
        assert_eq!(web.environment.0["X"].as_deref(), Some("$Y"));
        assert_eq!(l.unset, ["UNSET"]);
        let e = parse(&files(&["services:\n  web:\n    image: ${IMG:?set IMG}\n"]), &Vars::new()).unwrap_err();
        assert_eq!(format!("{e:#}"), "f0.yml: services.web.image: required variable IMG is missing a value: set IMG");
        assert!(parse(&files(&["- a list"]), &Vars::new()).is_err());
        assert!(parse(&files(&["services: [\n"]), &Vars::new()).unwrap_err().to_string().contains("not a valid YAML"));
    }

    #[test]
    fn env_files_dotenv_and_the_environment_come_in_docker_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(".env"), "TAG=from-dotenv\nPORT=81\n").expect("write");
        std::fs::write(dir.path().join("web.env"), "A=file\nB=file\n").expect("write");
        let f = dir.path().join("compose.yml");
        std::fs::write(
            &f,
            "services:\n  web:\n    image: nginx:${TAG}\n    ports: [\"${PORT}:80\"]\n    env_file: web.env\n    environment: {B: env, HOME_DIR: , GONE: }\n",
        )
        .expect("write");
        let env = vars(&[("TAG", "from-shell"), ("HOME_DIR", "/root")]);
        let l = load(std::slice::from_ref(&f), &env).expect("loads");
        let web = &l.compose.services["web"];
        // The process environment wins over .env.
        assert_eq!(web.image, Some(Scalar("nginx:from-shell".into())));
        assert_eq!(web.ports, [Port::Short("81:80".into())]);
        let env: Vec<(&str, Option<&str>)> =
            web.environment.0.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
        assert_eq!(env, [("A", Some("file")), ("B", Some("env")), ("HOME_DIR", Some("/root"))]);
        assert_eq!(l.base_dir, std::path::absolute(dir.path()).expect("abs"));
    }
}
