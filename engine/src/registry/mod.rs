//! Registry pull, push and login (the OCI Distribution / Docker Registry
//! HTTP API v2), done by the daemon for the CLI, which sends the user's
//! credentials with each request (Docker's `X-Registry-Auth`).
//!
//! `Registries` is the daemon's registry configuration: which registries
//! may be reached insecurely (plain HTTP or an unchecked certificate:
//! `--insecure-registry`, plus 127.0.0.0/8, ::1 and localhost as in
//! Docker) and where extra CAs live (`<data_root>/certs.d/<host:port>/*.crt`).
//! `Session` is one conversation with one registry: it pings `/v2/`,
//! answers the `WWW-Authenticate` challenge (a bearer token from the realm,
//! with Basic credentials when given, anonymous otherwise; or Basic) and
//! sends the requests. `pull` and `push` drive sessions and the image store.
//!
//! Architecture Invariant: what a registry sends reaches the image store
//! only through `ImageStore::commit_pull`, after each blob is checked
//! against its digest while it streams into the store's staging area.

mod auth;
mod http;
mod pull;
mod push;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ::http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Uri, header};
use hyper::body::Incoming;
use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::mpsc;

pub use auth::{Challenge, Credentials, parse_challenges};
pub use pull::{pull, resolve};

/// A user's image reference, or the registry error that says what is wrong with it.
fn parse_reference(input: &str) -> Result<crate::images::Reference, RegistryError> {
    crate::images::Reference::parse(input)
        .map_err(|reason| RegistryError::InvalidReference { input: input.to_string(), reason })
}
pub use push::push;

use crate::images::{Digest, ImageError};
use http::{Body, HttpError};

/// Docker Hub: `docker.io` names it, this host serves it.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
/// Manifests and indexes larger than this are refused.
const MAX_MANIFEST: usize = 4 << 20;
const MAX_REDIRECTS: usize = 5;

/// One progress line, as Docker prints them: `id: status` (`id` a short
/// layer id, or empty for a line about the whole image).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub id: String,
    pub status: String,
}

pub type ProgressTx = mpsc::UnboundedSender<Progress>;

fn say(tx: &ProgressTx, id: &str, status: impl Into<String>) {
    // The client may have gone; the work goes on, as Docker's does.
    let _ = tx.send(Progress { id: id.to_string(), status: status.into() });
}

fn short(d: &Digest) -> &str {
    &d.hex()[..12]
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid reference format: {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },

    #[error("cannot reach registry {registry}: {reason}")]
    Unreachable { registry: String, reason: String },

    #[error(
        "TLS with registry {registry} failed: {reason}. If it uses a private CA, put the CA certificate at \
         {certs}/{registry}/ca.crt; if it has no valid TLS at all, start the daemon with --insecure-registry {registry}"
    )]
    Tls { registry: String, reason: String, certs: String },

    #[error("unauthorized: {registry} requires authentication; run `shoal login{login}`")]
    Unauthorized { registry: String, login: String },

    #[error("unauthorized: incorrect username or password for {registry}")]
    BadCredentials { registry: String },

    #[error("denied: {registry} refused access to {what}{detail}; log in as a user allowed to {action} it")]
    Denied { registry: String, what: String, detail: String, action: &'static str },

    #[error("manifest for {reference} not found: manifest unknown")]
    ManifestUnknown { reference: String },

    #[error("no matching manifest for linux/{arch} in the manifest list entries of {reference} (it has: {available})")]
    NoPlatform { reference: String, arch: String, available: String },

    #[error("{reference}: {reason}")]
    Unsupported { reference: String, reason: String },

    #[error(
        "digest mismatch for {what} from {registry}: expected {expected}, the content hashes to {actual}; \
         the pull was refused and nothing was stored"
    )]
    DigestMismatch { registry: String, what: String, expected: String, actual: Digest },

    #[error("registry {registry}: {what}: {reason}")]
    Protocol { registry: String, what: String, reason: String },

    #[error("{0}")]
    Image(#[from] ImageError),
}

/// The daemon's registry settings.
pub struct Registries {
    certs_dir: PathBuf,
    insecure: Vec<String>,
    native_roots: OnceLock<Vec<CertificateDer<'static>>>,
    /// Where pulls are announced (`shoal events`), once the daemon says.
    events: OnceLock<std::sync::Arc<crate::events::EventLog>>,
}

impl Registries {
    /// `insecure`: `HOST[:PORT]` or an IPv4 CIDR (`10.0.0.0/8`), as given to
    /// `--insecure-registry`.
    pub fn new(certs_dir: PathBuf, insecure: Vec<String>) -> Result<Registries, String> {
        for i in &insecure {
            let bad = i.is_empty() || i.contains("://") || i.contains('/') && parse_cidr(i).is_none();
            if bad {
                return Err(format!(
                    "invalid --insecure-registry {i:?}: use HOST[:PORT] or an IPv4 CIDR like 10.0.0.0/8"
                ));
            }
        }
        Ok(Registries { certs_dir, insecure, native_roots: OnceLock::new(), events: OnceLock::new() })
    }

    /// Announces pulls in the daemon's event log.
    pub fn set_events(&self, events: std::sync::Arc<crate::events::EventLog>) {
        let _ = self.events.set(events);
    }

    pub(crate) fn events(&self) -> Option<&std::sync::Arc<crate::events::EventLog>> {
        self.events.get()
    }

    pub fn certs_dir(&self) -> &Path {
        &self.certs_dir
    }

    /// Whether `host` (`host[:port]`) may use plain HTTP or an unchecked
    /// certificate.
    pub fn is_insecure(&self, host: &str) -> bool {
        let name = host_part(host);
        if name == "localhost" || name == "::1" || name.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback()) {
            return true;
        }
        self.insecure.iter().any(|i| {
            i == host
                || (!i.contains(':') && i == name)
                || parse_cidr(i).zip(name.parse::<std::net::Ipv4Addr>().ok()).is_some_and(|((net, bits), ip)| {
                    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
                    u32::from(ip) & mask == u32::from(net) & mask
                })
        })
    }

    /// A TLS config for `host`: the system's roots plus `certs.d/<host>/*.crt`,
    /// or no certificate check at all for an insecure registry.
    fn tls_config(&self, host: &str, insecure: bool) -> Result<Arc<ClientConfig>, RegistryError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = self.native_roots.get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::debug!(error = %e, "loading a system CA certificate");
            }
            found.certs
        });
        roots.add_parsable_certificates(native.iter().cloned());
        let dir = self.certs_dir.join(host);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "crt") {
                    continue;
                }
                let bad = |reason: String| RegistryError::Tls {
                    registry: host.to_string(),
                    reason: format!("cannot use {}: {reason}", p.display()),
                    certs: self.certs_dir.display().to_string(),
                };
                let pem = std::fs::read(&p).map_err(|e| bad(e.to_string()))?;
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    roots.add(cert.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))?;
                }
            }
        }
        let cfg = http::client_config(roots, insecure).map_err(|e| RegistryError::Tls {
            registry: host.to_string(),
            reason: e.to_string(),
            certs: self.certs_dir.display().to_string(),
        })?;
        Ok(Arc::new(cfg))
    }
}

fn host_part(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

fn parse_cidr(s: &str) -> Option<(std::net::Ipv4Addr, u32)> {
    let (ip, bits) = s.split_once('/')?;
    let bits: u32 = bits.parse().ok().filter(|b| *b <= 32)?;
    Some((ip.parse().ok()?, bits))
}

/// The host serving a registry domain (Docker Hub's differs from its name).
pub fn endpoint_host(domain: &str) -> &str {
    if domain == DOCKER_HUB { DOCKER_HUB_HOST } else { domain }
}

/// One conversation with one registry, authenticated for one scope.
pub(crate) struct Session<'a> {
    regs: &'a Registries,
    /// As the user names it (`docker.io`, `localhost:5000`).
    registry: String,
    /// `https://host[:port]` or `http://…`.
    base: String,
    tls: Arc<ClientConfig>,
    creds: Option<Credentials>,
    auth: Option<HeaderValue>,
}

impl<'a> Session<'a> {
    /// Pings `/v2/` and authenticates for `scope` (`repository:NAME:pull`;
    /// none for a login check).
    pub async fn open(
        regs: &'a Registries,
        domain: &str,
        scope: Option<&str>,
        creds: Option<Credentials>,
    ) -> Result<Session<'a>, RegistryError> {
        let host = endpoint_host(domain);
        let insecure = regs.is_insecure(host);
        let tls = regs.tls_config(host, insecure)?;
        let mut s =
            Session { regs, registry: domain.to_string(), base: format!("https://{host}"), tls, creds, auth: None };
        let ping = match s.send_once(Method::GET, "/v2/", HeaderMap::new(), http::empty(), false).await {
            Err(HttpError::Tls(reason)) if insecure => {
                tracing::debug!(registry = %domain, %reason, "no TLS; trying plain HTTP (insecure registry)");
                s.base = format!("http://{host}");
                s.send_once(Method::GET, "/v2/", HeaderMap::new(), http::empty(), false).await
            }
            other => other,
        };
        let ping = ping.map_err(|e| s.http_error(e, "ping /v2/"))?;
        match ping.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => {
                let challenges = parse_challenges(&header_values(ping.headers(), header::WWW_AUTHENTICATE));
                if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
                    let token = s.fetch_token(bearer, scope).await?;
                    s.auth = Some(header_value(&format!("Bearer {token}"))?);
                } else if challenges.iter().any(|c| c.scheme == "basic") {
                    let Some(c) = &s.creds else { return Err(s.unauthorized()) };
                    s.auth = Some(header_value(&c.basic())?);
                    let check = s.send_once(Method::GET, "/v2/", HeaderMap::new(), http::empty(), true).await;
                    match check.map_err(|e| s.http_error(e, "ping /v2/"))?.status() {
                        StatusCode::OK => {}
                        StatusCode::UNAUTHORIZED => return Err(RegistryError::BadCredentials { registry: s.registry }),
                        other => return Err(s.protocol("ping /v2/", format!("unexpected status {other}"))),
                    }
                } else {
                    let reason =
                        format!("unsupported authentication challenge {:?}", challenges.first().map(|c| &c.scheme));
                    return Err(s.protocol("ping /v2/", reason));
                }
            }
            other => {
                let what = "ping /v2/ (is this a registry speaking the v2 API?)";
                return Err(s.protocol(what, format!("unexpected status {other}")));
            }
        }
        Ok(s)
    }

    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// GETs a token from the challenge's realm, with Basic credentials if
    /// the user gave some.
    async fn fetch_token(&self, c: &Challenge, scope: Option<&str>) -> Result<String, RegistryError> {
        let what = "token request";
        let realm =
            c.params.get("realm").ok_or_else(|| self.protocol(what, "bearer challenge without a realm".into()))?;
        let url = auth::token_url(realm, c.params.get("service").map(String::as_str), scope);
        let uri: Uri = url.parse().map_err(|e| self.protocol(what, format!("bad realm {realm:?}: {e}")))?;
        let realm_host = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
        let tls = if realm_host == endpoint_host(&self.registry) {
            self.tls.clone()
        } else {
            self.regs.tls_config(&realm_host, self.regs.is_insecure(&realm_host))?
        };
        let mut headers = HeaderMap::new();
        if let Some(c) = &self.creds {
            headers.insert(header::AUTHORIZATION, header_value(&c.basic())?);
        }
        let resp =
            http::send(&tls, Method::GET, &uri, &headers, http::empty()).await.map_err(|e| self.http_error(e, what))?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if self.creds.is_some() => {
                return Err(RegistryError::BadCredentials { registry: self.registry.clone() });
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Err(self.unauthorized()),
            other => return Err(self.protocol(what, format!("unexpected status {other}"))),
        }
        let body = http::read_limited(resp.into_body(), 1 << 20).await.map_err(|e| self.http_error(e, what))?;
        auth::parse_token(&body).map_err(|reason| self.protocol(what, reason))
    }

    /// One request to `target` (a path on this registry, or an absolute
    /// URL it sent), with this session's credentials when `authed`.
    async fn send_once(
        &self,
        method: Method,
        target: &str,
        mut headers: HeaderMap,
        body: Body,
        authed: bool,
    ) -> Result<Response<Incoming>, HttpError> {
        let url = if target.starts_with("http://") || target.starts_with("https://") {
            target.to_string()
        } else {
            format!("{}{target}", self.base)
        };
        let uri: Uri = url.parse().map_err(|e| HttpError::Protocol(format!("bad URL {url:?}: {e}")))?;
        let own = uri.authority().map(|a| a.as_str()) == Some(&self.base[self.base.find("//").map_or(0, |i| i + 2)..]);
        if authed
            && own
            && let Some(a) = &self.auth
        {
            headers.insert(header::AUTHORIZATION, a.clone());
        }
        let tls = if own {
            self.tls.clone()
        } else {
            // A redirect to storage elsewhere: that host's own trust settings.
            let host = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
            self.regs.tls_config(&host, self.regs.is_insecure(&host)).map_err(|e| HttpError::Tls(e.to_string()))?
        };
        http::send(&tls, method, &uri, &headers, body).await
    }

    /// A request with credentials; GET and HEAD follow redirects. A 401
    /// becomes `Unauthorized`; other statuses are the caller's to judge.
    pub async fn request(
        &self,
        method: Method,
        target: &str,
        headers: HeaderMap,
        body: Body,
        what: &str,
    ) -> Result<Response<Incoming>, RegistryError> {
        let follow = method == Method::GET || method == Method::HEAD;
        let mut target = target.to_string();
        let mut body = Some(body);
        for _ in 0..=MAX_REDIRECTS {
            let b = body.take().unwrap_or_else(http::empty);
            let resp = self
                .send_once(method.clone(), &target, headers.clone(), b, true)
                .await
                .map_err(|e| self.http_error(e, what))?;
            if resp.status() == StatusCode::UNAUTHORIZED {
                return Err(match &self.creds {
                    Some(_) => RegistryError::BadCredentials { registry: self.registry.clone() },
                    None => self.unauthorized(),
                });
            }
            if follow && resp.status().is_redirection() {
                let loc = header_values(resp.headers(), header::LOCATION);
                if loc.is_empty() {
                    return Err(self.protocol(what, "redirect without a Location".into()));
                }
                target = self.absolute(&loc);
                continue;
            }
            return Ok(resp);
        }
        Err(self.protocol(what, format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// `Location` values may be relative to the registry.
    fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{location}", self.base)
        }
    }

    /// The error for an unexpected response, with the registry's own
    /// `errors[].message` when it sent one.
    async fn status_error(&self, resp: Response<Incoming>, what: &str, action: &'static str) -> RegistryError {
        let status = resp.status();
        let body = http::read_limited(resp.into_body(), 64 << 10).await.unwrap_or_default();
        let detail = registry_errors(&body);
        if status == StatusCode::FORBIDDEN {
            let detail = if detail.is_empty() { String::new() } else { format!(" ({detail})") };
            return RegistryError::Denied { registry: self.registry.clone(), what: what.to_string(), detail, action };
        }
        let reason =
            if detail.is_empty() { format!("unexpected status {status}") } else { format!("{status}: {detail}") };
        self.protocol(what, reason)
    }

    fn unauthorized(&self) -> RegistryError {
        let login = if self.registry == DOCKER_HUB { String::new() } else { format!(" {}", self.registry) };
        RegistryError::Unauthorized { registry: self.registry.clone(), login }
    }

    fn protocol(&self, what: &str, reason: String) -> RegistryError {
        RegistryError::Protocol { registry: self.registry.clone(), what: what.to_string(), reason }
    }

    fn http_error(&self, e: HttpError, what: &str) -> RegistryError {
        match e {
            HttpError::Connect(reason) => RegistryError::Unreachable { registry: self.registry.clone(), reason },
            HttpError::Tls(reason) => RegistryError::Tls {
                registry: self.registry.clone(),
                reason,
                certs: self.regs.certs_dir.display().to_string(),
            },
            HttpError::Protocol(reason) => self.protocol(what, reason),
        }
    }
}

fn header_values(h: &HeaderMap, name: header::HeaderName) -> String {
    h.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(", ")
}

fn header_value(s: &str) -> Result<HeaderValue, RegistryError> {
    HeaderValue::from_str(s).map_err(|_| RegistryError::Protocol {
        registry: String::new(),
        what: "credentials".into(),
        reason: "they hold characters a header cannot carry".into(),
    })
}

/// `MANIFEST_UNKNOWN: manifest unknown; …` from a registry's error body.
fn registry_errors(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    match serde_json::from_slice::<Errors>(body) {
        Ok(e) => e.errors.iter().map(|e| format!("{}: {}", e.code, e.message)).collect::<Vec<_>>().join("; "),
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string(),
    }
}

/// `shoal login`: checks the credentials against the registry (`domain`:
/// `docker.io` or `host[:port]`).
pub async fn login(regs: &Registries, domain: &str, creds: Credentials) -> Result<(), RegistryError> {
    Session::open(regs, domain, None, Some(creds)).await.map(drop)
}
