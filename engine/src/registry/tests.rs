//! Pull and push against a small in-process registry (hyper, plain HTTP on
//! 127.0.0.1, which is insecure by default): token auth with Basic
//! credentials, in-memory blobs and manifests, monolithic uploads, and
//! switches to serve tampered blobs or a foreign-platform index.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::*;
use crate::images::{ImageStore, manifest};

const USER: &str = "alice";
const PASS: &str = "wonderland";
const TOKEN: &str = "tok-alice";

#[derive(Default)]
struct State {
    blobs: HashMap<String, Vec<u8>>,
    /// (repo, tag or digest) → (bytes, media type)
    manifests: HashMap<(String, String), (Vec<u8>, String)>,
    uploads: usize,
    /// Blob digests served with one byte changed.
    tamper: HashSet<String>,
    /// Requests for blobs, by digest.
    blob_gets: Vec<String>,
}

struct FakeRegistry {
    addr: String,
    state: Arc<Mutex<State>>,
}

impl FakeRegistry {
    async fn start() -> FakeRegistry {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let state = Arc::new(Mutex::new(State::default()));
        let (st, a) = (state.clone(), addr.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (st, a) = (st.clone(), a.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, st.clone(), a.clone()));
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        FakeRegistry { addr, state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("state")
    }
}

fn reply(status: StatusCode, headers: &[(&str, String)], body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, v.as_str());
    }
    r.body(Full::new(Bytes::from(body))).expect("response")
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<Mutex<State>>,
    addr: String,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let ctype = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
    let challenge = format!(r#"Bearer realm="http://{addr}/token",service="fake-registry""#);
    let unauthorized = || {
        let err = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#.to_vec();
        reply(StatusCode::UNAUTHORIZED, &[("www-authenticate", challenge.clone())], err)
    };
    if path == "/token" {
        if auth.is_empty() {
            return Ok(reply(StatusCode::OK, &[], br#"{"token":"anonymous"}"#.to_vec()));
        }
        let good = Credentials { username: USER.into(), password: PASS.into() }.basic();
        return Ok(if auth == good {
            reply(StatusCode::OK, &[], format!(r#"{{"access_token":"{TOKEN}"}}"#).into_bytes())
        } else {
            reply(StatusCode::UNAUTHORIZED, &[], Vec::new())
        });
    }
    if auth != format!("Bearer {TOKEN}") {
        return Ok(unauthorized());
    }
    if path == "/v2/" {
        return Ok(reply(StatusCode::OK, &[], b"{}".to_vec()));
    }
    let Some(rest) = path.strip_prefix("/v2/") else { return Ok(reply(StatusCode::NOT_FOUND, &[], Vec::new())) };
    let mut s = st.lock().expect("state");
    if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
        let key = (repo.to_string(), reference.to_string());
        if method == "PUT" {
            let digest = Digest::of(&body).to_string();
            s.manifests.insert((repo.to_string(), digest.clone()), (body.clone(), ctype.clone()));
            s.manifests.insert(key, (body, ctype));
            return Ok(reply(StatusCode::CREATED, &[("docker-content-digest", digest)], Vec::new()));
        }
        return Ok(match s.manifests.get(&key) {
            Some((b, t)) => reply(StatusCode::OK, &[("content-type", t.clone())], b.clone()),
            None => reply(
                StatusCode::NOT_FOUND,
                &[],
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_vec(),
            ),
        });
    }
    if let Some((repo, digest)) = rest.rsplit_once("/blobs/")
        && !digest.starts_with("uploads")
    {
        let _ = repo;
        let Some(blob) = s.blobs.get(digest).cloned() else {
            return Ok(reply(StatusCode::NOT_FOUND, &[], Vec::new()));
        };
        if method == "HEAD" {
            return Ok(reply(StatusCode::OK, &[("content-length", blob.len().to_string())], Vec::new()));
        }
        s.blob_gets.push(digest.to_string());
        let mut blob = blob;
        if s.tamper.contains(digest)
            && let Some(b) = blob.last_mut()
        {
            *b ^= 0xff;
        }
        return Ok(reply(StatusCode::OK, &[], blob));
    }
    if let Some((repo, _)) = rest.split_once("/blobs/uploads/") {
        if method == "POST" {
            s.uploads += 1;
            let loc = format!("/v2/{repo}/blobs/uploads/u{}?state=x", s.uploads);
            return Ok(reply(StatusCode::ACCEPTED, &[("location", loc)], Vec::new()));
        }
        let want = query.split('&').find_map(|kv| kv.strip_prefix("digest=")).unwrap_or("").replace("%3A", ":");
        let got = Digest::of(&body).to_string();
        if want != got {
            return Ok(reply(StatusCode::BAD_REQUEST, &[], br#"{"errors":[{"code":"DIGEST_INVALID"}]}"#.to_vec()));
        }
        s.blobs.insert(got.clone(), body);
        return Ok(reply(StatusCode::CREATED, &[("location", format!("/v2/{repo}/blobs/{got}"))], Vec::new()));
    }
    Ok(reply(StatusCode::NOT_FOUND, &[], Vec::new()))
}

fn rootfs_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_path("etc/").expect("path");
    h.set_mode(0o755);
    h.set_size(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    b.append(&h, std::io::empty()).expect("dir");
    let data = b"hello from the registry\n";
    let mut h = tar::Header::new_gnu();
    h.set_path("etc/hello").expect("path");
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_600_000_000);
    h.set_cksum();
    b.append(&h, &data[..]).expect("file");
    b.into_inner().expect("tar")
}

fn store(dir: &Path, name: &str) -> Arc<ImageStore> {
    Arc::new(ImageStore::open(&dir.join(name)).expect("open store"))
}

fn creds() -> Option<Credentials> {
    Some(Credentials { username: USER.into(), password: PASS.into() })
}

fn lines(
    result: Result<(), RegistryError>,
    mut rx: mpsc::UnboundedReceiver<Progress>,
) -> Result<Vec<String>, RegistryError> {
    let mut out = Vec::new();
    while let Ok(p) = rx.try_recv() {
        out.push(if p.id.is_empty() { p.status } else { format!("{}: {}", p.id, p.status) });
    }
    result.map(|()| out)
}

/// A pull's progress lines ("id: status"), or its error.
async fn pulled(
    regs: &Registries,
    s: &Arc<ImageStore>,
    name: &str,
    c: Option<Credentials>,
) -> Result<Vec<String>, RegistryError> {
    let (tx, rx) = mpsc::unbounded_channel();
    lines(pull(regs, s.clone(), name, c, &tx).await, rx)
}

async fn pushed(
    regs: &Registries,
    s: &Arc<ImageStore>,
    name: &str,
    c: Option<Credentials>,
) -> Result<Vec<String>, RegistryError> {
    let (tx, rx) = mpsc::unbounded_channel();
    lines(push(regs, s.clone(), name, c, &tx).await, rx)
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_then_pull_with_token_auth() {
    let reg = FakeRegistry::start().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let regs = Registries::new(tmp.path().join("certs.d"), vec![]).expect("regs");
    let (a, b) = (store(tmp.path(), "a"), store(tmp.path(), "b"));
    let name = format!("{}/team/app:v1", reg.addr);
    let img = a.import(&rootfs_tar()[..], &name).expect("import");

    // Anonymous: the token has no rights, so the registry says 401.
    let err = pushed(&regs, &a, &name, None).await.expect_err("anonymous push");
    assert!(err.to_string().contains(&format!("run `shoal login {}`", reg.addr)), "{err}");
    let bad = Some(Credentials { username: USER.into(), password: "nope".into() });
    let err = login(&regs, &reg.addr, bad.clone().expect("creds")).await.expect_err("bad password");
    assert!(matches!(err, RegistryError::BadCredentials { .. }), "{err}");
    login(&regs, &reg.addr, creds().expect("creds")).await.expect("login");

    let out = pushed(&regs, &a, &name, creds()).await.expect("push");
    assert!(out.iter().any(|l| l.ends_with(": Pushed")), "{out:?}");
    let last = out.last().expect("lines");
    assert!(last.starts_with("v1: digest: sha256:") && last.contains(" size: "), "{out:?}");
    let pushed_digest = last.split_whitespace().nth(2).expect("digest").to_string();
    // The layer was a plain tar: it went out gzipped, under a Docker manifest.
    let (m, t) = reg.lock().manifests.get(&("team/app".into(), "v1".into())).cloned().expect("manifest");
    assert_eq!(t, manifest::DOCKER_MANIFEST);
    let m: manifest::Manifest = serde_json::from_slice(&m).expect("parse");
    assert_eq!(m.layers[0].media_type, manifest::DOCKER_LAYER_GZIP);
    assert_eq!(m.config.digest, img.id);
    // Pushing again uploads nothing.
    let uploads = reg.lock().uploads;
    let out = pushed(&regs, &a, &name, creds()).await.expect("push again");
    assert!(out.iter().any(|l| l.ends_with(": Layer already exists")), "{out:?}");
    assert_eq!(reg.lock().uploads, uploads);

    // Pull into another store: same image, its file unpacked.
    let err = pulled(&regs, &b, &name, None).await.expect_err("anonymous pull");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    let out = pulled(&regs, &b, &name, creds()).await.expect("pull");
    assert!(out.iter().any(|l| l.ends_with(": Pull complete")), "{out:?}");
    assert!(out.contains(&format!("Digest: {pushed_digest}")), "{out:?}");
    assert!(out.contains(&format!("Status: Downloaded newer image for {name}")), "{out:?}");
    let details = b.inspect(&name).expect("inspect");
    assert_eq!(details.id, img.id);
    assert_eq!(details.repo_digests, vec![format!("{}/team/app@{pushed_digest}", reg.addr)]);
    let dirs = b.layer_dirs(&name).expect("layers");
    assert_eq!(std::fs::read_to_string(dirs[0].join("etc/hello")).expect("file"), "hello from the registry\n");

    // A second pull downloads nothing and says so.
    let gets = reg.lock().blob_gets.len();
    let out = pulled(&regs, &b, &name, creds()).await.expect("pull again");
    assert!(out.contains(&format!("Status: Image is up to date for {name}")), "{out:?}");
    assert!(out.iter().any(|l| l.ends_with(": Already exists")), "{out:?}");
    assert_eq!(reg.lock().blob_gets.len(), gets);

    // The pulled image pushes back with its own manifest: the digest stays.
    let other = format!("{}/team/copy:v1", reg.addr);
    b.tag(&name, &other).expect("tag");
    let out = pushed(&regs, &b, &other, creds()).await.expect("push copy");
    assert_eq!(out.last().map(|l| l.split_whitespace().nth(2)), Some(Some(pushed_digest.as_str())), "{out:?}");

    // By digest; then a tag that is not there.
    let by_digest = format!("{}/team/app@{pushed_digest}", reg.addr);
    let c = store(tmp.path(), "c");
    pulled(&regs, &c, &by_digest, creds()).await.expect("pull by digest");
    let missing = format!("{}/team/app:nope", reg.addr);
    let err = pulled(&regs, &c, &missing, creds()).await.expect_err("missing tag");
    assert_eq!(err.to_string(), format!("manifest for {missing} not found: manifest unknown"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_blob_is_refused_and_nothing_is_stored() {
    let reg = FakeRegistry::start().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let regs = Registries::new(tmp.path().join("certs.d"), vec![]).expect("regs");
    let a = store(tmp.path(), "a");
    let name = format!("{}/app:v1", reg.addr);
    a.import(&rootfs_tar()[..], &name).expect("import");
    pushed(&regs, &a, &name, creds()).await.expect("push");
    let (m, _) = reg.lock().manifests.get(&("app".into(), "v1".into())).cloned().expect("manifest");
    let m: manifest::Manifest = serde_json::from_slice(&m).expect("parse");
    reg.lock().tamper.insert(m.layers[0].digest.to_string());

    let root = tmp.path().join("b");
    let b = store(tmp.path(), "b");
    let err = pulled(&regs, &b, &name, creds()).await.expect_err("tampered");
    assert!(matches!(err, RegistryError::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains("nothing was stored"), "{err}");
    assert!(b.list().is_empty());
    for d in ["tmp", "blobs/sha256", "layers/sha256"] {
        assert!(is_empty_dir(&root.join(d)), "{d} is not empty");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_without_this_platform_lists_what_it_has() {
    let reg = FakeRegistry::start().await;
    let tmp = tempfile::tempdir().expect("tmp");
    let regs = Registries::new(tmp.path().join("certs.d"), vec![]).expect("regs");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_INDEX,
        "manifests": [
            {"mediaType": manifest::OCI_MANIFEST, "digest": Digest::of(b"x").to_string(), "size": 1,
             "platform": {"os": "linux", "architecture": "riscv64"}},
            {"mediaType": manifest::OCI_MANIFEST, "digest": Digest::of(b"y").to_string(), "size": 1,
             "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
        ],
    });
    reg.lock()
        .manifests
        .insert(("multi".into(), "latest".into()), (index.to_string().into_bytes(), manifest::OCI_INDEX.into()));
    let b = store(tmp.path(), "b");
    let name = format!("{}/multi", reg.addr);
    let err = pulled(&regs, &b, &name, creds()).await.expect_err("no platform");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("linux/{}", crate::images::go_arch())) && msg.contains("linux/riscv64, linux/arm/v6"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_registry_is_named() {
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let tmp = tempfile::tempdir().expect("tmp");
    let regs = Registries::new(tmp.path().join("certs.d"), vec![]).expect("regs");
    let b = store(tmp.path(), "b");
    let name = format!("127.0.0.1:{port}/app");
    let err = pulled(&regs, &b, &name, None).await.expect_err("refused");
    assert_eq!(err.to_string(), format!("cannot reach registry 127.0.0.1:{port}: connection refused"));
}

#[test]
fn insecure_registries() {
    let regs =
        Registries::new("/nonexistent".into(), vec!["reg.lab:5000".into(), "10.98.0.0/24".into(), "plain.io".into()])
            .expect("regs");
    let cases = [
        ("localhost:5000", true),
        ("127.0.0.1:5000", true),
        ("127.8.9.1", true),
        ("[::1]:5000", true),
        ("reg.lab:5000", true),
        ("reg.lab:5001", false),
        ("plain.io:443", true),
        ("10.98.0.1:5443", true),
        ("10.98.1.1:5443", false),
        ("registry-1.docker.io", false),
    ];
    for (host, want) in cases {
        assert_eq!(regs.is_insecure(host), want, "{host}");
    }
    assert!(Registries::new("/x".into(), vec!["http://a".into()]).is_err());
    assert!(Registries::new("/x".into(), vec!["10.0.0.0/99".into()]).is_err());
    assert_eq!(endpoint_host("docker.io"), "registry-1.docker.io");
    assert_eq!(endpoint_host("quay.io"), "quay.io");
}
