//! `shoal pull`, `push`, `login`, `logout`. Credentials live client-side in
//! Docker's format (`<config dir>/config.json`, `{"auths": {"host:port":
//! {"auth": base64(user:password)}}}`, mode 0600; Docker Hub under
//! `https://index.docker.io/v1/`) and travel with each pull and push to the
//! daemon, which does the HTTP.

use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use clap::Args;
use serde_json::{Map, Value, json};
use shoal_proto::pb;

use crate::args::Cli;
use crate::client;

const HUB_DOMAIN: &str = "docker.io";
const HUB_KEY: &str = "https://index.docker.io/v1/";

#[derive(Args, Debug, Clone)]
pub struct PullArgs {
    /// Only print the image's name at the end.
    #[arg(short, long)]
    pub quiet: bool,
    /// NAME[:TAG|@DIGEST]
    pub reference: String,
}

#[derive(Args, Debug, Clone)]
pub struct PushArgs {
    #[arg(short, long)]
    pub quiet: bool,
    /// NAME[:TAG]
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password (prefer --password-stdin: a password on the command line is visible to others).
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// HOST[:PORT]; Docker Hub if left out.
    pub server: Option<String>,
}

/// `~/.shoal` unless `--config` / `SHOAL_CONFIG` says otherwise.
fn config_dir(cli: &Cli) -> anyhow::Result<PathBuf> {
    if let Some(d) = &cli.config {
        return Ok(d.clone());
    }
    let home = std::env::var_os("HOME").context("HOME is not set: pass --config DIR")?;
    Ok(PathBuf::from(home).join(".shoal"))
}

/// The registry a `login`/`logout` argument names, as the daemon reaches it
/// (`docker.io` or `host[:port]`).
pub fn server_domain(server: Option<&str>) -> String {
    let Some(s) = server else { return HUB_DOMAIN.into() };
    let s = s.trim_start_matches("https://").trim_start_matches("http://");
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "" | "docker.io" | "index.docker.io" | "registry-1.docker.io" => HUB_DOMAIN.into(),
        h => h.to_string(),
    }
}

/// The key a registry's credentials are stored under (Docker's).
pub fn auth_key(domain: &str) -> String {
    if domain == HUB_DOMAIN { HUB_KEY.into() } else { domain.to_string() }
}

/// The client's config.json: registry credentials, other keys kept as found.
pub struct AuthConfig {
    path: PathBuf,
    doc: Map<String, Value>,
}

impl AuthConfig {
    pub fn load(dir: &Path) -> anyhow::Result<AuthConfig> {
        let path = dir.join("config.json");
        let doc = match std::fs::read(&path) {
            Ok(b) => {
                match serde_json::from_slice(&b).with_context(|| format!("{} is not valid JSON", path.display()))? {
                    Value::Object(m) => m,
                    _ => bail!("{} is not a JSON object", path.display()),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(AuthConfig { path, doc })
    }

    /// (user, password) for a registry key.
    pub fn get(&self, key: &str) -> Option<(String, String)> {
        let entry = self.doc.get("auths")?.get(key)?;
        if let Some(auth) = entry.get("auth").and_then(Value::as_str).filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD.decode(auth).ok()?;
            let text = String::from_utf8(raw).ok()?;
            let (u, p) = text.split_once(':')?;
            return Some((u.to_string(), p.to_string()));
        }
        let u = entry.get("username")?.as_str()?;
        let p = entry.get("password")?.as_str()?;
        Some((u.to_string(), p.to_string()))
    }

    pub fn set(&mut self, key: &str, user: &str, password: &str) {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let auths = self.doc.entry("auths").or_insert_with(|| json!({}));
        if !auths.is_object() {
            *auths = json!({});
        }
        if let Some(m) = auths.as_object_mut() {
            m.insert(key.to_string(), json!({ "auth": auth }));
        }
    }

    /// Whether there was something to remove.
    pub fn remove(&mut self, key: &str) -> bool {
        self.doc.get_mut("auths").and_then(Value::as_object_mut).is_some_and(|m| m.remove(key).is_some())
    }

    /// Writes the file (0600, its directory 0700) through a temporary file.
    pub fn save(&self) -> anyhow::Result<()> {
        let dir = self.path.parent().context("config path has no directory")?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let tmp = self.path.with_extension("json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(serde_json::to_string_pretty(&Value::Object(self.doc.clone()))?.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path).with_context(|| format!("writing {}", self.path.display()))
    }
}

/// The stored credentials for the registry `reference` lives on, if any.
fn auth_for(cli: &Cli, reference: &str) -> anyhow::Result<Option<pb::RegistryAuth>> {
    let Ok(r) = shoal_engine::images::Reference::parse(reference) else { return Ok(None) };
    let cfg = AuthConfig::load(&config_dir(cli)?)?;
    Ok(cfg.get(&auth_key(r.domain())).map(|(username, password)| pb::RegistryAuth { username, password }))
}

async fn print_progress(stream: tonic::Streaming<pb::Progress>, quiet: bool) -> anyhow::Result<()> {
    let last = follow_progress(stream, |line| {
        if !quiet {
            println!("{line}");
        }
    })
    .await?;
    if quiet && !last.is_empty() {
        println!("{last}");
    }
    Ok(())
}

/// Shows each progress line as it comes; returns the last one.
async fn follow_progress(
    mut stream: tonic::Streaming<pb::Progress>,
    mut show: impl FnMut(&str),
) -> anyhow::Result<String> {
    let mut last = String::new();
    while let Some(p) = stream.message().await? {
        let line = if p.id.is_empty() { p.status } else { format!("{}: {}", p.id, p.status) };
        show(&line);
        last = line;
    }
    Ok(last)
}

/// The pull `run`/`create` make for an image the daemon lacks: the same
/// daemon-side pull as `shoal pull`, with this client's login for the
/// registry, its progress on stderr (stdout is the container's).
pub async fn pull_for_run(cli: &Cli, engine: &mut Engine, reference: &str) -> anyhow::Result<()> {
    let auth = auth_for(cli, reference)?;
    let stream = engine.image_pull(pb::ImagePullRequest { reference: reference.to_string(), auth }).await?.into_inner();
    follow_progress(stream, |line| eprintln!("{line}")).await?;
    Ok(())
}

/// `busybox` as Docker names it in messages: `busybox:latest`.
pub fn familiar(reference: &str) -> String {
    shoal_engine::images::Reference::parse(reference).map_or_else(|_| reference.to_string(), |r| r.to_string())
}

/// The image pinned to the digest its registry has for the tag now, with the
/// client's login when `auth` is given; None (and a warning, as Docker's)
/// when the registry cannot say, so each node resolves the tag itself.
pub async fn resolve_for_service(cli: &Cli, reference: &str) -> Option<String> {
    let resolved = async {
        let auth = auth_for(cli, reference)?;
        let mut engine = client::engine(cli).await?;
        let r = engine.image_resolve(pb::ImagePullRequest { reference: reference.to_string(), auth }).await?;
        anyhow::Ok(r.into_inner().reference)
    }
    .await;
    match resolved {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!(
                "image {reference} could not be accessed on a registry to record its digest ({e:#}). Each node will access \
                 {reference} independently, possibly leading to different nodes running different versions of the image."
            );
            None
        }
    }
}

/// This client's login for the registry of `reference` (`--with-registry-auth`):
/// an empty one when it has none.
pub fn registry_auth_for(cli: &Cli, reference: &str) -> anyhow::Result<pb::RegistryAuth> {
    Ok(auth_for(cli, reference)?.unwrap_or_default())
}

type Engine = pb::engine_client::EngineClient<tonic::transport::Channel>;

pub async fn pull(cli: &Cli, a: &PullArgs) -> anyhow::Result<()> {
    let auth = auth_for(cli, &a.reference)?;
    let mut engine = client::engine(cli).await?;
    let stream = engine.image_pull(pb::ImagePullRequest { reference: a.reference.clone(), auth }).await?.into_inner();
    print_progress(stream, a.quiet).await
}

pub async fn push(cli: &Cli, a: &PushArgs) -> anyhow::Result<()> {
    let auth = auth_for(cli, &a.reference)?;
    let mut engine = client::engine(cli).await?;
    let stream = engine.image_push(pb::ImagePushRequest { reference: a.reference.clone(), auth }).await?.into_inner();
    print_progress(stream, a.quiet).await
}

pub async fn login(cli: &Cli, a: &LoginArgs) -> anyhow::Result<()> {
    let domain = server_domain(a.server.as_deref());
    let mut cfg = AuthConfig::load(&config_dir(cli)?)?;
    let key = auth_key(&domain);
    let stored = cfg.get(&key);
    let username = match (&a.username, &stored) {
        (Some(u), _) => u.clone(),
        (None, Some((u, _))) if a.password.is_none() && !a.password_stdin => u.clone(),
        _ if std::io::stdin().is_terminal() && !a.password_stdin => crate::terminal::prompt("Username: ", true)?,
        _ => bail!("give a username with -u USER"),
    };
    let password = if let Some(p) = &a.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p.clone()
    } else if a.password_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading the password from standard input")?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else if a.username.is_none()
        && let Some((_, p)) = &stored
    {
        p.clone()
    } else if std::io::stdin().is_terminal() {
        crate::terminal::prompt("Password: ", false)?
    } else {
        bail!("give a password with --password-stdin (or -p PASSWORD)");
    };
    if username.is_empty() || password.is_empty() {
        bail!("login needs a non-empty username and password");
    }
    let mut engine = client::engine(cli).await?;
    let auth = Some(pb::RegistryAuth { username: username.clone(), password: password.clone() });
    engine.registry_login(pb::RegistryLoginRequest { registry: domain, auth }).await?;
    cfg.set(&key, &username, &password);
    cfg.save()?;
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(cli: &Cli, server: Option<&str>) -> anyhow::Result<()> {
    let domain = server_domain(server);
    let key = auth_key(&domain);
    let mut cfg = AuthConfig::load(&config_dir(cli)?)?;
    if cfg.remove(&key) {
        cfg.save()?;
        println!("Removing login credentials for {key}");
    } else {
        println!("Not logged in to {key}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn servers_and_keys() {
        let cases = [
            (None, "docker.io", HUB_KEY),
            (Some("docker.io"), "docker.io", HUB_KEY),
            (Some("https://index.docker.io/v1/"), "docker.io", HUB_KEY),
            (Some("localhost:5000"), "localhost:5000", "localhost:5000"),
            (Some("https://10.98.0.1:5443/"), "10.98.0.1:5443", "10.98.0.1:5443"),
        ];
        for (input, domain, key) in cases {
            assert_eq!(server_domain(input), domain, "{input:?}");
            assert_eq!(auth_key(domain), key);
        }
    }

    #[test]
    fn config_round_trip_keeps_other_keys_and_mode() {
        let dir = tempfile::tempdir().expect("tmp");
        let conf = dir.path().join("conf");
        std::fs::create_dir(&conf).expect("mkdir");
        std::fs::write(
            conf.join("config.json"),
            r#"{"psFormat":"x","auths":{"old:1":{"username":"u","password":"p"}}}"#,
        )
        .expect("write");
        let mut c = AuthConfig::load(&conf).expect("load");
        assert_eq!(c.get("old:1"), Some(("u".into(), "p".into())));
        c.set("reg:5000", "alice", "pa:ss");
        c.save().expect("save");

        let text = std::fs::read_to_string(conf.join("config.json")).expect("read");
        let v: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["psFormat"], "x");
        assert_eq!(v["auths"]["reg:5000"]["auth"], "YWxpY2U6cGE6c3M=");
        let mode = std::fs::metadata(conf.join("config.json")).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let mut c = AuthConfig::load(&conf).expect("load");
        assert_eq!(c.get("reg:5000"), Some(("alice".into(), "pa:ss".into())));
        assert!(c.remove("reg:5000"));
        assert!(!c.remove("reg:5000"));
        c.save().expect("save");
        assert_eq!(AuthConfig::load(&conf).expect("load").get("reg:5000"), None);
        // A fresh directory is created 0700.
        let fresh = dir.path().join("new");
        let mut c = AuthConfig::load(&fresh).expect("load");
        c.set(HUB_KEY, "bob", "pw");
        c.save().expect("save");
        let mode = std::fs::metadata(&fresh).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(AuthConfig { path: fresh.join("config.json"), doc: Map::new() }.get(HUB_KEY).is_none());
    }
}
