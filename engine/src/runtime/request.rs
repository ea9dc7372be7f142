//! What is asked of a container (`shoal run`, a task) and its resolution.

use super::*;

/// What `shoal run` asks for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunRequest {
    pub image: String,
    pub name: String,
    pub command: Vec<String>,
    pub entrypoint: Option<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub hostname: String,
    pub memory: String,
    pub cpus: String,
    pub pids_limit: i64,
    pub read_only: bool,
    pub network: String,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub auto_remove: bool,
    /// `-v` specs.
    pub volumes: Vec<String>,
    /// `--tmpfs` paths.
    pub tmpfs: Vec<String>,
    /// `--mount type=...,source=...,target=...` specs.
    pub mounts: Vec<String>,
    /// `--restart`.
    pub restart: String,
    /// `--stop-signal`; empty: the image's, else SIGTERM.
    pub stop_signal: String,
    /// `--stop-timeout` in seconds; None: the image's, else 10.
    pub stop_timeout: Option<u64>,
    /// `--log-opt max-size=10m`, `--log-opt max-file=3`.
    pub log_opts: Vec<String>,
    /// `-t`: a pseudo-terminal.
    pub tty: bool,
    /// `-i`: stdin stays open for an attached client.
    pub interactive: bool,
    /// The client attaches as soon as it runs (`run -i`/`-t` without `-d`).
    pub attach: bool,
    /// `-p` specs.
    pub publish: Vec<String>,
    /// `--ip`.
    pub ip: String,
    /// `--network-alias`.
    pub network_aliases: Vec<String>,
    /// The cluster task this container runs, if it is one (the worker's).
    pub task_id: String,
    /// `-l`/`--label`; a task's container also gets its service's and task's.
    pub labels: BTreeMap<String, String>,
    /// `shoal create`: everything but the start (`shoal start` does that).
    #[serde(default)]
    pub create_only: bool,
    /// `--health-*`, `--no-healthcheck`, a service's health; laid over the image's.
    pub health: HealthSetting,
}

/// Whether containers on `network` get a namespace of their own from netd.
pub fn netd_network(network: &str) -> bool {
    !matches!(network, "" | "none" | "host")
}

/// What `run` settled beyond the OCI config.
pub(super) struct Settings {
    pub(super) image_id: String,
    pub(super) mounts: Vec<MountReq>,
    pub(super) restart: RestartPolicy,
    pub(super) stop_signal: i32,
    pub(super) stop_timeout: u64,
    pub(super) log: LogConfig,
    /// (mount point, volume directory) of every volume mount.
    pub(super) copy_up: Vec<(String, PathBuf)>,
    /// Its netd networks, and what netd made of them.
    pub(super) networks: Vec<Attachment>,
    pub(super) endpoints: Vec<Endpoint>,
    /// The network mode as recorded (`host`, `none`, or a network).
    pub(super) network: String,
    pub(super) health: Option<HealthCheck>,
}

/// The container's check: the user's setting laid over the image's
/// `HEALTHCHECK` (Docker's merge). An image's check Docker would not run
/// is refused unless the user's setting replaces its test.
pub(super) fn health_check(
    user: &HealthSetting,
    image: Option<&serde_json::Value>,
) -> Result<Option<HealthCheck>, ContainerError> {
    let image = match image {
        None => HealthSetting::default(),
        Some(v) => match serde_json::from_value::<ImageHealthcheck>(v.clone())
            .map_err(|e| e.to_string())
            .and_then(|h| h.setting())
        {
            Ok(s) => s,
            Err(_) if user.test != Default::default() => HealthSetting::default(),
            Err(why) => {
                return Err(ContainerError::Invalid {
                    what: "image HEALTHCHECK",
                    value: v.to_string(),
                    why: format!("{why}; run it with --no-healthcheck or a --health-cmd of its own"),
                });
            }
        },
    };
    Ok(shoal_proto::health::resolve(user, &image))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn an_images_healthcheck_is_read_and_a_bad_one_refused_unless_replaced() {
        use shoal_proto::health::HealthTest;
        let image = serde_json::json!({"Test": ["CMD-SHELL", "test -f /ok"], "Interval": 1_000_000_000, "Retries": 1});
        let check = health_check(&HealthSetting::default(), Some(&image)).expect("valid").expect("a check");
        assert_eq!(
            (check.argv(), check.interval_ms, check.retries),
            (vec!["/bin/sh".to_string(), "-c".into(), "test -f /ok".into()], 1_000, 1)
        );
        assert_eq!(health_check(&HealthSetting::default(), None).expect("valid"), None, "no HEALTHCHECK, no check");
        let bad = serde_json::json!({"Test": ["BOGUS", "x"]});
        let err = health_check(&HealthSetting::default(), Some(&bad)).expect_err("refused").to_string();
        assert!(err.contains("unknown health check type") && err.contains("--no-healthcheck"), "{err}");
        let none = HealthSetting { test: HealthTest::None, ..Default::default() };
        assert_eq!(health_check(&none, Some(&bad)).expect("replaced"), None);
        let own = HealthSetting { test: HealthTest::Shell("true".into()), ..Default::default() };
        assert!(health_check(&own, Some(&bad)).expect("replaced").is_some());
    }
}
