//! Docker's health flags (`run`, `service create|update`) applied to a
//! health setting: `--no-healthcheck` disables the image's check,
//! `--health-cmd` replaces its test (`""` goes back to the image's), and each
//! other flag overrides just that value (0 goes back to the image's).

use anyhow::{Context, bail};
use clap::Args;
use shoal_proto::health::{HealthSetting, HealthTest};

/// Docker's health flags (`run`, `service create|update`): each one
/// overrides one value of the image's `HEALTHCHECK`.
#[derive(Args, Debug, Default)]
pub struct HealthArgs {
    /// Command to run to check health (with /bin/sh -c; exit 0 is healthy; "" goes back to the image's).
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h); default: the image's, else 30s.
    #[arg(long)]
    pub health_interval: Option<String>,
    /// Maximum time to allow one check to run (ms|s|m|h); default: the image's, else 30s.
    #[arg(long)]
    pub health_timeout: Option<String>,
    /// Consecutive failures needed to report unhealthy; default: the image's, else 3.
    #[arg(long)]
    pub health_retries: Option<u32>,
    /// Start period for the container to initialize before failures count (ms|s|m|h).
    #[arg(long)]
    pub health_start_period: Option<String>,
    /// Disable any container-specified HEALTHCHECK.
    #[arg(long)]
    pub no_healthcheck: bool,
}

/// Applies the flags to `h` (a new container's default, or a service's current setting).
pub fn apply(h: &mut HealthSetting, a: &HealthArgs) -> anyhow::Result<()> {
    let values = a.health_interval.is_some()
        || a.health_timeout.is_some()
        || a.health_retries.is_some()
        || a.health_start_period.is_some();
    if a.no_healthcheck {
        if values || a.health_cmd.is_some() {
            bail!("--no-healthcheck conflicts with --health-* options: use one or the other");
        }
        *h = HealthSetting { test: HealthTest::None, ..Default::default() };
        return Ok(());
    }
    if !values && a.health_cmd.is_none() {
        return Ok(());
    }
    // A value given after --no-healthcheck brings the image's check back, with that value.
    if h.test == HealthTest::None {
        h.test = HealthTest::Inherit;
    }
    let duration = |flag: &str, v: &str| -> anyhow::Result<Option<u64>> {
        let ms = crate::parse::duration_ms(v)
            .with_context(|| format!("invalid {flag} {v:?}: a duration such as 30s or 500ms"))?;
        Ok((ms > 0).then_some(ms))
    };
    if let Some(v) = &a.health_interval {
        h.interval_ms = duration("--health-interval", v)?;
    }
    if let Some(v) = &a.health_timeout {
        h.timeout_ms = duration("--health-timeout", v)?;
    }
    if let Some(v) = &a.health_start_period {
        h.start_period_ms = duration("--health-start-period", v)?;
    }
    if let Some(v) = a.health_retries {
        h.retries = (v > 0).then_some(v);
    }
    if let Some(cmd) = &a.health_cmd {
        h.test = if cmd.is_empty() { HealthTest::Inherit } else { HealthTest::Shell(cmd.clone()) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(cmd: &str) -> HealthTest {
        HealthTest::Shell(cmd.into())
    }

    #[test]
    fn flags_set_one_value_each_like_docker() {
        let own = HealthSetting {
            test: shell("test -f /ok"),
            interval_ms: Some(200),
            retries: Some(2),
            ..Default::default()
        };
        let none = HealthSetting { test: HealthTest::None, ..Default::default() };
        let args = |f: &dyn Fn(&mut HealthArgs)| {
            let mut a = HealthArgs::default();
            f(&mut a);
            a
        };
        let table: Vec<(&str, HealthSetting, HealthArgs, Result<HealthSetting, &str>)> = vec![
            ("no flags: the image's check", HealthSetting::default(), args(&|_| {}), Ok(HealthSetting::default())),
            ("no flags keep a service's own", own.clone(), args(&|_| {}), Ok(own.clone())),
            ("--no-healthcheck", own.clone(), args(&|a| a.no_healthcheck = true), Ok(none.clone())),
            (
                "--health-cmd: own test, the image's values",
                HealthSetting::default(),
                args(&|a| a.health_cmd = Some("true".into())),
                Ok(HealthSetting { test: shell("true"), ..Default::default() }),
            ),
            (
                "--health-interval alone overrides the image's interval",
                HealthSetting::default(),
                args(&|a| a.health_interval = Some("1s".into())),
                Ok(HealthSetting { interval_ms: Some(1_000), ..Default::default() }),
            ),
            (
                "a value changes only that value of a service's own",
                own.clone(),
                args(&|a| a.health_retries = Some(5)),
                Ok(HealthSetting { retries: Some(5), ..own.clone() }),
            ),
            (
                "all values",
                HealthSetting::default(),
                args(&|a| {
                    a.health_cmd = Some("false".into());
                    a.health_interval = Some("1s".into());
                    a.health_timeout = Some("2s".into());
                    a.health_retries = Some(1);
                    a.health_start_period = Some("1m".into());
                }),
                Ok(HealthSetting {
                    test: shell("false"),
                    interval_ms: Some(1_000),
                    timeout_ms: Some(2_000),
                    retries: Some(1),
                    start_period_ms: Some(60_000),
                }),
            ),
            (
                "a value after --no-healthcheck brings the image's check back",
                none.clone(),
                args(&|a| a.health_timeout = Some("5s".into())),
                Ok(HealthSetting { timeout_ms: Some(5_000), ..Default::default() }),
            ),
            (
                "--health-cmd \"\" goes back to the image's test",
                own.clone(),
                args(&|a| a.health_cmd = Some(String::new())),
                Ok(HealthSetting { test: HealthTest::Inherit, ..own.clone() }),
            ),
            (
                "0 goes back to the image's value",
                own.clone(),
                args(&|a| a.health_interval = Some("0s".into())),
                Ok(HealthSetting { interval_ms: None, ..own.clone() }),
            ),
            (
                "--no-healthcheck with a --health-* flag",
                HealthSetting::default(),
                args(&|a| {
                    a.no_healthcheck = true;
                    a.health_cmd = Some("true".into());
                }),
                Err("conflicts with --health-*"),
            ),
            (
                "a bad duration",
                HealthSetting::default(),
                args(&|a| a.health_interval = Some("soon".into())),
                Err("invalid --health-interval \"soon\""),
            ),
        ];
        for (what, mut h, a, want) in table {
            match (apply(&mut h, &a), want) {
                (Ok(()), Ok(want)) => assert_eq!(h, want, "{what}"),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{what}: {e}"),
                (got, want) => panic!("{what}: {got:?} / {h:?}, wanted {want:?}"),
            }
        }
    }
}
