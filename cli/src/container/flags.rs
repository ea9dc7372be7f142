//! The container flags `run`/`create` and `service create|update` share, and
//! how both read the environment and labels they give.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use crate::health::HealthArgs;

/// The flags Docker spells the same way for `run`/`create` and for `service
/// create|update`. Flags it spells differently stay with their command:
/// `--stop-timeout` against `--stop-grace-period`, `--memory`/`--cpus` against
/// `--limit-memory`/`--limit-cpu`, `-l/--label` against `--container-label`, and
/// `--publish`, whose values differ. `service` adds its aliases (`--env-add`,
/// `--mount-add`) and its own help where the meaning differs (templates).
#[derive(Args, Debug, Default)]
pub struct ContainerFlags {
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(short, long = "workdir")]
    pub workdir: Option<String>,
    #[arg(short, long)]
    pub user: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    /// type=volume|bind|tmpfs,source=...,target=...[,readonly]
    #[arg(long)]
    pub mount: Vec<String>,
    /// Files of KEY=VALUE lines (KEY alone takes it from this environment).
    #[arg(long)]
    pub env_file: Vec<PathBuf>,
    #[arg(long)]
    pub stop_signal: Option<String>,
    #[command(flatten)]
    pub health: HealthArgs,
}

impl ContainerFlags {
    /// The environment the flags give, as Docker reads it: the env files
    /// first, then each `-e` (`KEY` alone from this environment).
    pub fn environment(&self) -> anyhow::Result<Vec<String>> {
        let mut env = Vec::new();
        for f in &self.env_file {
            env.extend(read_env_file(f)?);
        }
        env.extend(self.env.iter().filter_map(|e| env_entry(e)));
        Ok(env)
    }
}

/// `--label` values, `KEY=VALUE` or `KEY` (an empty value), as Docker takes them.
pub(crate) fn labels(given: &[String]) -> std::collections::HashMap<String, String> {
    given
        .iter()
        .map(|l| l.split_once('=').map_or((l.clone(), String::new()), |(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// One `-e` value: `KEY=VALUE` as it is, `KEY` from this environment (left
/// out when unset, as Docker does).
pub(crate) fn env_entry(e: &str) -> Option<String> {
    if e.contains('=') { Some(e.to_string()) } else { std::env::var(e).ok().map(|v| format!("{e}={v}")) }
}

/// `--env-file`: KEY=VALUE lines; blank lines and `#` comments skipped.
pub(crate) fn read_env_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading the env file {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split('=').next().unwrap_or("");
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            bail!("{} line {}: {line:?} is not KEY=VALUE (a key has no spaces)", path.display(), n + 1);
        }
        out.extend(env_entry(line));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(unsafe_code)] // std::env::set_var: Rust 2024 makes it unsafe
    fn env_files_read_like_docker() {
        let dir = std::env::temp_dir().join(format!("shoal-envfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("env");
        // SAFETY: a test-only variable that nothing else reads.
        unsafe { std::env::set_var("SHOAL_TEST_FROM_HOST", "yes") };
        std::fs::write(&f, "# comment\n\nA=1\nB=two words\nSHOAL_TEST_FROM_HOST\nSHOAL_TEST_UNSET_VAR\n").unwrap();
        assert_eq!(read_env_file(&f).unwrap(), vec!["A=1", "B=two words", "SHOAL_TEST_FROM_HOST=yes"]);
        std::fs::write(&f, "BAD KEY=1\n").unwrap();
        assert!(read_env_file(&f).unwrap_err().to_string().contains("line 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
