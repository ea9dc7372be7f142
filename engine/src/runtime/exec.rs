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
            return Err(ContainerError::NotRunning(c.record.name));
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
        let mut all_env = spec.process().as_ref().and_then(|p| p.env().clone()).unwrap_or_default();
        for e in env {
            let key = e.split('=').next().unwrap_or("").to_string();
            all_env.retain(|x| x.split('=').next() != Some(key.as_str()));
            all_env.push(e);
        }
        let (uid, gid) = if user.is_empty() {
            (None, None)
        } else {
            // The container's own view of its root, whichever mount namespace we are in.
            let etc = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/root/etc/{f}")).unwrap_or_default();
            let (u, g, _) = spec::resolve_user(user, &etc("passwd"), &etc("group"))?;
            (Some(u), Some(g))
        };
        // A terminal needs the whole process spelled out (libcontainer's
        // tenant builder sets `terminal` only from a process file).
        let process = if tty {
            let mut p = spec.process().clone().unwrap_or_default();
            p.set_args(Some(args.clone()));
            let mut env = all_env.clone();
            if !env.iter().any(|e| e.starts_with("TERM=")) {
                env.push("TERM=xterm".into());
            }
            p.set_env(Some(env));
            if !cwd.is_empty() {
                p.set_cwd(cwd.into());
            }
            if let (Some(u), Some(g)) = (uid, gid) {
                let mut user = p.user().clone();
                user.set_uid(u);
                user.set_gid(g);
                user.set_additional_gids(None);
                p.set_user(user);
            }
            p.set_terminal(Some(true));
            Some(p)
        } else {
            None
        };
        Ok(shim::ExecConfig {
            process,
            container_id: c.record.id,
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
