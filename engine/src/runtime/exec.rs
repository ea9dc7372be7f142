//! `shoal exec` and the health checks that run the same way.

use super::*;

/// What `shoal exec` asks for.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub tty: bool,
    pub interactive: bool,
}

impl Containers {
    /// What `shoal shim-exec` needs to run `args` in a running container,
    /// with the container's environment plus `env`.
    pub fn exec_config(&self, reference: &str, req: ExecRequest) -> Result<shim::ExecConfig, ContainerError> {
        self.exec_config_of(self.find(reference)?, req)
    }

    pub(super) fn exec_config_of(&self, c: Container, req: ExecRequest) -> Result<shim::ExecConfig, ContainerError> {
        let ExecRequest { args, env, cwd, user, tty, interactive } = req;
        let (cwd, user) = (cwd.as_str(), user.as_str());
        let Status::Running { pid, .. } = c.status else {
            return Err(ContainerError::NotRunning(c.record.name.clone()));
        };
        if args.is_empty() {
            return Err(ContainerError::Invalid {
                what: "command",
                value: String::new(),
                why: "exec needs a command".into(),
            });
        }
        let dir = self.dir(&c.record.id);
        let spec = oci_spec::runtime::Spec::load(dir.join("bundle/config.json"))
            .map_err(|e| ContainerError::StartFailed { id: c.record.id.clone(), message: e.to_string() })?;
        let user = if user.is_empty() {
            None
        } else {
            // The container's own view of its root, whichever mount namespace we are in.
            let etc = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/root/etc/{f}")).unwrap_or_default();
            Some(spec::resolve_user(user, &etc("passwd"), &etc("group"))?)
        };
        let (uid, gid) = (user.as_ref().map(|u| u.0), user.as_ref().map(|u| u.1));
        let base = spec.process().clone().unwrap_or_default();
        let process = exec_process(&base, args.clone(), env, cwd, user, tty);
        let all_env = process.env().clone().unwrap_or_default();
        Ok(shim::ExecConfig {
            process: Some(process),
            container_id: c.record.id.clone(),
            state_root: self.state_root.clone(),
            args,
            env: all_env,
            cwd: (!cwd.is_empty()).then(|| cwd.to_string()),
            uid,
            gid,
            tty,
            interactive,
        })
    }

    /// Keeps a health monitor on the container's current run while it runs
    /// with a check, and none otherwise (a monitor dropped is stopped).
    pub(super) fn keep_health(&self, c: &Container) {
        let mut monitors = self.monitors.lock().unwrap_or_else(|p| p.into_inner());
        let (Some(check), Status::Running { started_ms, .. }) = (&c.record.health, &c.status) else {
            monitors.remove(&c.record.id);
            return;
        };
        if monitors.get(&c.record.id).is_some_and(|m| m.started_ms() == *started_ms) {
            return;
        }
        monitors.remove(&c.record.id);
        let req = ExecRequest { args: check.argv(), ..Default::default() };
        let exec = self.exec_config_of(c.clone(), req).and_then(|cfg| {
            serde_json::to_string(&cfg).map_err(|e| ContainerError::Invalid {
                what: "health check",
                value: check.test.join(" "),
                why: e.to_string(),
            })
        });
        let target = |exec_json| health::Target {
            name: c.record.name.clone(),
            dir: self.dir(&c.record.id),
            started_ms: *started_ms,
            check: check.clone(),
            exe: self.exe.clone(),
            exec_json,
        };
        match exec.map(|json| health::Monitor::spawn(target(json))) {
            Ok(Ok(m)) => {
                monitors.insert(c.record.id.clone(), m);
            }
            Ok(Err(e)) => tracing::warn!(container = %c.record.name, error = %e, "cannot start its health monitor"),
            // It stopped meanwhile: the supervisor's next pass sees it.
            Err(e) => tracing::debug!(container = %c.record.name, error = %e, "no health monitor"),
        }
    }
}

/// The process `exec` runs: the container's own process (its user, working
/// directory, rlimits, capabilities, no-new-privileges, AppArmor/SELinux
/// labels), with `args`, `env` laid over its environment by key, and what
/// the request overrides (`-w`, `-u`: uid, gid and supplementary groups).
/// Docker's exec shares these with the container's process; libcontainer's
/// tenant builder, left to make the process itself, drops rlimits and the
/// container's user, so Shoal always hands it the whole process.
pub(super) fn exec_process(
    base: &oci_spec::runtime::Process,
    args: Vec<String>,
    env: Vec<String>,
    cwd: &str,
    user: Option<(u32, u32, Vec<u32>)>,
    tty: bool,
) -> oci_spec::runtime::Process {
    let mut p = base.clone();
    p.set_args(Some(args));
    let mut all_env = base.env().clone().unwrap_or_default();
    for e in env {
        let key = e.split('=').next().unwrap_or("").to_string();
        all_env.retain(|x| x.split('=').next() != Some(key.as_str()));
        all_env.push(e);
    }
    if tty && !all_env.iter().any(|e| e.starts_with("TERM=")) {
        all_env.push("TERM=xterm".into());
    }
    p.set_env(Some(all_env));
    if !cwd.is_empty() {
        p.set_cwd(cwd.into());
    }
    if let Some((uid, gid, extra)) = user {
        let mut u = p.user().clone();
        u.set_uid(uid);
        u.set_gid(gid);
        u.set_additional_gids((!extra.is_empty()).then_some(extra));
        p.set_user(u);
    }
    // The container's own terminal is not the exec's: libcontainer hands one over only with -t.
    p.set_terminal(Some(tty));
    // Its console size is the container's; a resize frame sets the exec's.
    p.set_console_size(None);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::PosixRlimitType;
    use shoal_proto::container::Ulimit;

    /// The container's process as `run --user www -w /srv --ulimit nofile=512:1024 -e A=1` makes it.
    fn container_process() -> oci_spec::runtime::Process {
        let run = spec::RunSpec {
            args: vec!["sleep".into(), "60".into()],
            env: vec!["A=1".into(), "B=2".into()],
            cwd: "/srv".into(),
            user: "www".into(),
            hostname: "c1".into(),
            terminal: true,
            cap_add: vec!["NET_ADMIN".into()],
            ulimits: vec![Ulimit::parse("nofile=512:1024").expect("ulimit")],
            ..Default::default()
        };
        let etc = |f: &str| match f {
            "passwd" => "root:x:0:0::/root:/bin/sh\nwww:x:33:34::/srv:/bin/sh\n".to_string(),
            "group" => "www:x:34:\nstaff:x:50:www\n".to_string(),
            _ => String::new(),
        };
        let s = spec::oci_spec(&run, Path::new("/r"), "/shoal/c1", etc).expect("spec");
        s.process().clone().expect("process")
    }

    fn nofile(p: &oci_spec::runtime::Process) -> Option<(u64, u64)> {
        let limits = p.rlimits().clone().unwrap_or_default();
        limits.iter().find(|r| r.typ() == PosixRlimitType::RlimitNofile).map(|r| (r.soft(), r.hard()))
    }

    #[test]
    fn an_exec_shares_the_containers_rlimits_user_cwd_and_privileges() {
        let base = container_process();
        let p = exec_process(&base, vec!["sh".into()], vec!["B=3".into(), "C=4".into()], "", None, false);
        assert_eq!(p.args().clone().unwrap_or_default(), ["sh"]);
        assert_eq!(nofile(&p), Some((512, 1024)), "--ulimit reaches the exec'd process");
        assert_eq!((p.user().uid(), p.user().gid()), (33, 34), "the container's user");
        assert_eq!(p.user().additional_gids().clone().unwrap_or_default(), [50]);
        assert_eq!(p.cwd(), Path::new("/srv"), "the container's working directory");
        assert_eq!(p.capabilities(), base.capabilities(), "--cap-add reaches it");
        assert_eq!(p.no_new_privileges(), Some(true));
        assert_eq!(p.env().clone().unwrap_or_default().iter().filter(|e| e.starts_with("B=")).count(), 1);
        let env = p.env().clone().unwrap_or_default();
        assert!(env.contains(&"A=1".into()) && env.contains(&"B=3".into()) && env.contains(&"C=4".into()), "{env:?}");
        assert_eq!(p.terminal(), Some(false), "the container's terminal is not the exec's without -t");
    }

    #[test]
    fn an_exec_overrides_user_cwd_and_terminal_when_asked() {
        let base = container_process();
        let p = exec_process(&base, vec!["id".into()], vec![], "/tmp", Some((65534, 65534, vec![])), true);
        assert_eq!((p.user().uid(), p.user().gid()), (65534, 65534));
        assert_eq!(p.user().additional_gids().clone(), None, "the container user's groups are not the exec user's");
        assert_eq!(p.cwd(), Path::new("/tmp"));
        assert_eq!(p.terminal(), Some(true));
        assert!(p.env().clone().unwrap_or_default().iter().any(|e| e.starts_with("TERM=")));
        assert_eq!(nofile(&p), Some((512, 1024)), "-u does not drop the rlimits");
    }
}
