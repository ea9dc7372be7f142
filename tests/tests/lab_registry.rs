//! Registry pull and push with the real binary against a real registry:
//! Debian's `docker-registry` (Distribution 2.8) on host 1 (10.98.0.1:5443)
//! with TLS from a CA made here and htpasswd (bcrypt) auth, on a 2-host swarm
//! (host 1 manager, host 2 worker). Host 1 imports a busybox image, logs in
//! and pushes it; host 2 pulls and runs it. Refusals: an untrusted CA, no
//! login, a wrong password, a missing tag. Then `run` and `create` pull what
//! is missing (`--pull never` refuses); a service of the private image fails
//! with the reason until `--with-registry-auth` sends host 1's login, which
//! no inspect, ps or log shows; bind mounts of a single file, a socket, a
//! missing path and a relative path, as Docker has them.
//!
//! The registry runs in host 1's network namespace only; its process is
//! killed by pid and its files removed when the test ends, pass or fail.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use shoal_tests::lab::{Lab, busybox_rootfs_tar, lab_or_skip, wait_for};

const PORT: u16 = 5443;
const USER: &str = "shoal";
const PASS: &str = "lab-secret";
const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// The registry process and its directory; both gone when dropped.
struct Registry {
    child: Option<Child>,
    dir: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL to this pid only
            let _ = c.wait();
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("removing {}: {e}", self.dir.display());
        }
    }
}

impl Registry {
    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A CA and a server certificate for `ip` signed by it, with openssl.
fn make_certs(dir: &Path, ip: &str) -> Result<()> {
    let p = |n: &str| dir.join(n);
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=shoal lab test CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.crt")))?;
    run(Command::new("openssl")
        .args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj"])
        .arg(format!("/CN={ip}"))
        .arg("-keyout")
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")))?;
    fs::write(
        p("server.ext"),
        format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )?;
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
        .arg("-in")
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.crt"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-extfile")
        .arg(p("server.ext"))
        .arg("-out")
        .arg(p("server.crt")))?;
    Ok(())
}

fn start_registry(lab: &Lab, dir: PathBuf) -> Result<Registry> {
    ensure!(Path::new(REGISTRY_BIN).is_file(), "{REGISTRY_BIN} is missing: deploy/prereqs installs docker-registry");
    fs::create_dir_all(dir.join("data"))?;
    let mut reg = Registry { child: None, dir: dir.clone() };
    make_certs(&dir, &lab.ip(1))?;
    let out = Command::new("htpasswd").args(["-Bbn", USER, PASS]).output().context("htpasswd (apache2-utils)")?;
    ensure!(out.status.success(), "htpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
    fs::write(dir.join("htpasswd"), &out.stdout)?;
    let d = dir.display();
    let config = format!(
        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {d}/data\n\
         http:\n  addr: {ip}:{PORT}\n  tls:\n    certificate: {d}/server.crt\n    key: {d}/server.key\n\
         auth:\n  htpasswd:\n    realm: shoal-lab\n    path: {d}/htpasswd\n",
        ip = lab.ip(1)
    );
    fs::write(dir.join("config.yml"), config)?;
    let cfg = dir.join("config.yml").display().to_string();
    reg.child = Some(lab.spawn(1, &[REGISTRY_BIN, "serve", &cfg], &dir.join("registry.log"))?);
    let probe = format!("exec 3<>/dev/tcp/{}/{PORT}", lab.ip(1));
    wait_for("the registry to listen", Duration::from_secs(30), || {
        if let Some(c) = reg.child.as_mut()
            && let Some(status) = c.try_wait()?
        {
            bail!("the registry exited ({status}): {}", reg.log());
        }
        Ok(lab.run(2, &["bash", "-c", &probe])?.status.success().then_some(()))
    })
    .with_context(|| format!("registry log: {}", reg.log()))?;
    Ok(reg)
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails_with(out: &std::process::Output, needles: &[&str]) -> Result<()> {
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "should have failed; stdout: {}", stdout(out));
    for n in needles {
        ensure!(err.contains(n), "expected {n:?} in {err:?}");
    }
    Ok(())
}

#[test]
fn registry_push_pull_run_with_tls_and_auth() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let tmp = tempfile::Builder::new().prefix("shl-reg-").tempdir()?;
    let rootfs = busybox_rootfs_tar(tmp.path())?;
    let lab = Lab::up(2, 1)?;
    // Declared after `lab`, so dropped (killed, removed) before the lab goes down.
    let reg = start_registry(&lab, PathBuf::from(format!("/tmp/shoal-lab/registry-{}", std::process::id())))?;
    let registry = format!("{}:{PORT}", lab.ip(1));
    let image = format!("{registry}/shoal/busybox:v1");
    // Each host's client config (never the real ~/.shoal) and the daemons' certs.d.
    let conf = |i: usize| format!("/tmp/shoal-lab/h{i}/client");
    let shoal = |i: usize, args: &[&str]| -> Result<std::process::Output> {
        let c = conf(i);
        let mut full = vec!["--config", c.as_str()];
        full.extend_from_slice(args);
        lab.exec(i, &full)
    };
    let ok = |i: usize, args: &[&str]| -> Result<String> {
        let out = shoal(i, args)?;
        ensure!(
            out.status.success(),
            "`shoal {}` on host {i}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout(&out))
    };
    let login = |i: usize, pass: &str| -> Result<std::process::Output> {
        let script =
            format!("printf '%s\\n' \"$1\" | shoal --config {} login -u {USER} --password-stdin {registry}", conf(i));
        lab.run(i, &["sh", "-c", &script, "login", pass])
    };

    // The CA is not trusted yet: the error says where to put it.
    fails_with(&shoal(2, &["pull", &image])?, &["TLS", &format!("certs.d/{registry}/ca.crt"), "--insecure-registry"])?;
    for i in 1..=2 {
        let dir = format!("/tmp/shoal-lab/h{i}/lib/certs.d/{registry}");
        fs::create_dir_all(&dir)?;
        fs::copy(reg.dir.join("ca.crt"), format!("{dir}/ca.crt"))?;
    }

    // Host 1: import, log in, push.
    ok(1, &["image", "import", &rootfs.display().to_string(), &image])?;
    fails_with(&shoal(1, &["push", &image])?, &["unauthorized", &format!("shoal login {registry}")])?;
    fails_with(&login(1, "wrong")?, &["incorrect username or password"])?;
    ensure!(!Path::new(&conf(1)).join("config.json").exists(), "a failed login stores nothing");
    let out = login(1, PASS)?;
    ensure!(out.status.success() && stdout(&out).contains("Login Succeeded"), "{out:?}");
    let cfg_path = Path::new(&conf(1)).join("config.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&cfg_path)?.permissions()) & 0o777;
    ensure!(mode == 0o600, "config.json mode {mode:o}");
    let cfg: serde_json::Value = serde_json::from_slice(&fs::read(&cfg_path)?)?;
    ensure!(cfg["auths"][&registry]["auth"].is_string(), "{cfg}");

    let pushed = ok(1, &["push", &image])?;
    ensure!(pushed.contains(&format!("The push refers to repository [{registry}/shoal/busybox]")), "{pushed}");
    ensure!(pushed.contains(": Pushed"), "{pushed}");
    let digest_line = pushed.lines().find(|l| l.starts_with("v1: digest: sha256:")).context(pushed.clone())?;
    let digest = digest_line.split_whitespace().nth(2).context("digest")?.to_string();
    let again = ok(1, &["image", "push", &image])?;
    ensure!(again.contains(": Layer already exists") && again.contains(&digest), "{again}");

    // Host 2: no login, then a login, a pull, and a run.
    fails_with(&shoal(2, &["pull", &image])?, &["unauthorized", &format!("shoal login {registry}")])?;
    ensure!(login(2, PASS)?.status.success());
    let pulled = ok(2, &["pull", &image])?;
    ensure!(pulled.contains("v1: Pulling from shoal/busybox") && pulled.contains(": Pull complete"), "{pulled}");
    ensure!(pulled.contains(&format!("Digest: {digest}")), "{pulled}");
    ensure!(pulled.contains(&format!("Status: Downloaded newer image for {image}")), "{pulled}");
    let inspect: serde_json::Value = serde_json::from_str(&ok(2, &["image", "inspect", &image])?)?;
    let local: serde_json::Value = serde_json::from_str(&ok(1, &["image", "inspect", &image])?)?;
    ensure!(inspect[0]["Id"] == local[0]["Id"], "same image id on both hosts");
    ensure!(inspect[0]["RepoDigests"][0] == format!("{registry}/shoal/busybox@{digest}").as_str(), "{inspect}");
    let out = ok(2, &["run", "--rm", &image, "sh", "-c", "echo hello from the registry"])?;
    ensure!(out == "hello from the registry\n", "{out:?}");

    let again = ok(2, &["pull", &image])?;
    ensure!(again.contains(&format!("Status: Image is up to date for {image}")), "{again}");
    ensure!(again.contains(": Already exists") && !again.contains("Download complete"), "{again}");
    let by_digest = ok(2, &["pull", "-q", &format!("{registry}/shoal/busybox@{digest}")])?;
    ensure!(by_digest.trim() == format!("{registry}/shoal/busybox@{digest}"), "{by_digest}");
    let missing = format!("{registry}/shoal/busybox:nope");
    fails_with(&shoal(2, &["pull", &missing])?, &[&format!("manifest for {missing} not found")])?;
    fails_with(
        &shoal(2, &["pull", &format!("{}:{}/x:y", lab.ip(2), PORT + 1)])?,
        &["cannot reach registry", "connection refused"],
    )?;

    // Logout forgets the credentials.
    ensure!(ok(2, &["logout", &registry])?.contains(&format!("Removing login credentials for {registry}")));
    fails_with(&shoal(2, &["pull", &image])?, &["unauthorized"])?;

    // `run` pulls what the host lacks, with the client's login, as Docker's does.
    let id = inspect[0]["Id"].as_str().context("image id")?.to_string();
    ok(2, &["image", "rm", "-f", &id])?;
    fails_with(&shoal(2, &["run", "--rm", "--pull", "never", &image, "true"])?, &[&format!("no such image: {image}")])?;
    fails_with(
        &shoal(2, &["run", "--rm", &image, "true"])?,
        &[&format!("Unable to find image '{image}' locally"), "unauthorized"],
    )?;
    ensure!(login(2, PASS)?.status.success());
    let out = shoal(2, &["run", "--rm", &image, "sh", "-c", "echo pulled and ran"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success() && stdout(&out) == "pulled and ran\n", "{out:?}");
    ensure!(
        err.contains(&format!("Unable to find image '{image}' locally")) && err.contains(": Pull complete"),
        "{err}"
    );
    // `create` makes it, `start -a` runs it; --pull always pulls again.
    let created =
        ok(2, &["create", "--pull", "always", "--name", "made", &image, "sh", "-c", "echo created then started"])?;
    ensure!(created.trim().len() == 64, "create prints the id: {created:?}");
    let made = lab.container(2, "made")?;
    ensure!(made["state"] == "created", "{made}");
    ensure!(ok(2, &["start", "-a", "made"])?.contains("created then started"));
    ok(2, &["rm", "made"])?;

    // Bind mounts as Docker has them: a single file, a socket, a missing path
    // (a new directory), a relative path; --mount refuses a missing source.
    let h2 = "/tmp/shoal-lab/h2";
    fs::write(format!("{h2}/one-file"), "just one file\n")?;
    let out = ok(2, &["run", "--rm", "-v", &format!("{h2}/one-file:/x:ro"), &image, "cat", "/x"])?;
    ensure!(out == "just one file\n", "{out:?}");
    let sock = format!("{h2}/bind.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock)?;
    let out = ok(
        2,
        &[
            "run",
            "--rm",
            "-v",
            &format!("{sock}:/run/x.sock"),
            &image,
            "sh",
            "-c",
            "test -S /run/x.sock && echo socket",
        ],
    )?;
    ensure!(out == "socket\n", "{out:?}");
    let fresh = format!("{h2}/made-by-v");
    let out = ok(2, &["run", "--rm", "-v", &format!("{fresh}:/d"), &image, "sh", "-c", "test -d /d && echo dir"])?;
    ensure!(out == "dir\n" && Path::new(&fresh).is_dir(), "{out:?}");
    let missing = format!("{h2}/not-there");
    let mount = format!("type=bind,source={missing},target=/d");
    fails_with(
        &shoal(2, &["run", "--rm", "--mount", &mount, &image, "true"])?,
        &[&format!("bind source path does not exist: {missing}")],
    )?;
    ensure!(!Path::new(&missing).exists(), "--mount created its source");
    fs::create_dir_all(format!("{h2}/rel"))?;
    fs::write(format!("{h2}/rel/f"), "relative\n")?;
    let script = format!("cd {h2} && shoal --config {} run --rm -v ./rel:/r {image} cat /r/f", conf(2));
    let out = lab.run(2, &["sh", "-c", &script])?;
    ensure!(out.status.success() && stdout(&out) == "relative\n", "{out:?}");

    // A service of the private image: host 2 has no login of its own, so its
    // tasks fail with the reason until the service carries host 1's.
    ok(2, &["image", "rm", "-f", &id])?;
    ok(
        1,
        &["service", "create", "-d", "--name", "priv", "--constraint", "node.hostname==shl-h2", &image, "sleep", "600"],
    )?;
    wait_for("the private service's reason", Duration::from_secs(60), || {
        let ps = ok(1, &["service", "ps", "--no-trunc", "priv"])?;
        Ok(ps.contains(&format!("pull access denied for {registry}/shoal/busybox")).then_some(()))
    })?;
    let ps = ok(1, &["service", "ps", "--no-trunc", "priv"])?;
    ensure!(ps.contains("log in and use --with-registry-auth"), "{ps}");
    ok(1, &["service", "update", "-d", "--with-registry-auth", "priv"])?;
    wait_for("the private service to run on host 2", Duration::from_secs(60), || {
        let tasks = lab.shoal_json(1, &["service", "ps", "priv"])?;
        let running = tasks
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["task"]["status"]["state"] == "running" && t["node"] == "shl-h2");
        Ok(running.then_some(()))
    })?;
    // Pinned to the registry's digest; the login shows nowhere.
    let svc = ok(1, &["service", "inspect", "priv"])?;
    ensure!(svc.contains(&format!("{image}@{digest}")), "the image is pinned to its digest: {svc}");
    let ps_json = ok(1, &["service", "ps", "--format", "json", "priv"])?;
    let ls_json = ok(1, &["service", "ls", "--format", "json"])?;
    for (what, text) in [
        ("inspect", &svc),
        ("ps", &ps_json),
        ("ls", &ls_json),
        ("log 1", &lab.daemon_log(1)?),
        ("log 2", &lab.daemon_log(2)?),
    ] {
        ensure!(!text.contains(PASS), "the registry password shows in {what}");
    }
    ok(1, &["service", "rm", "priv"])?;
    drop(reg);
    drop(rootfs);
    Ok(())
}
