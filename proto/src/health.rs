//! Container health checks as Docker has them: the setting a user gives
//! (`run --health-*`, a service's spec), an image's `HEALTHCHECK`, and the
//! check a container runs, which is the first laid over the second
//! (`resolve`, Docker's merge: the user's test unless it inherits, and each
//! value the user left unset taken from the image, else Docker's default).

use serde::{Deserialize, Serialize};

use crate::pb;

pub const DEFAULT_INTERVAL_MS: u64 = 30_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_RETRIES: u32 = 3;

/// What a health check runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthTest {
    /// The image's check, if it has one.
    #[default]
    Inherit,
    /// No check, whatever the image says (`--no-healthcheck`).
    None,
    /// A command run as it is (Docker's `["CMD", args...]`).
    Cmd(Vec<String>),
    /// A command run with `/bin/sh -c` (`--health-cmd`, Docker's `["CMD-SHELL", cmd]`).
    Shell(String),
}

impl HealthTest {
    /// Docker's `Test` form: `[]` inherits, `["NONE"]`, `["CMD", args...]`, `["CMD-SHELL", cmd]`.
    pub fn from_docker(test: &[String]) -> Result<HealthTest, String> {
        match test.split_first() {
            None => Ok(HealthTest::Inherit),
            Some((kind, rest)) => match (kind.as_str(), rest) {
                ("NONE", _) => Ok(HealthTest::None),
                ("CMD", []) => Err("a CMD health check needs a command".into()),
                ("CMD", args) => Ok(HealthTest::Cmd(args.to_vec())),
                ("CMD-SHELL", [cmd]) => Ok(HealthTest::Shell(cmd.clone())),
                ("CMD-SHELL", _) => Err("a CMD-SHELL health check takes one command line".into()),
                (other, _) => Err(format!("unknown health check type {other:?}: use NONE, CMD or CMD-SHELL")),
            },
        }
    }

    /// Docker's `Test` form.
    pub fn to_docker(&self) -> Vec<String> {
        match self {
            HealthTest::Inherit => vec![],
            HealthTest::None => vec!["NONE".into()],
            HealthTest::Cmd(args) => std::iter::once("CMD".to_string()).chain(args.iter().cloned()).collect(),
            HealthTest::Shell(cmd) => vec!["CMD-SHELL".into(), cmd.clone()],
        }
    }
}

/// A health setting as a user gives it: the test, and the values it sets
/// (None: the image's, else Docker's default).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSetting {
    #[serde(default)]
    pub test: HealthTest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Failures before this much time has passed since the start do not count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period_ms: Option<u64>,
}

impl HealthSetting {
    /// Whether it is the default: the image's check as it is.
    pub fn is_inherit(&self) -> bool {
        *self == HealthSetting::default()
    }
}

/// A service's stored health setting; also reads what older versions
/// stored (null for none given, or `{cmd, interval_ms, ...}` for a shell
/// command), so a cluster's state survives an upgrade.
pub fn stored_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HealthSetting, D::Error> {
    #[derive(Deserialize)]
    struct Legacy {
        cmd: String,
        interval_ms: u64,
        timeout_ms: u64,
        retries: u32,
        start_period_ms: u64,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Legacy(Legacy),
        Setting(HealthSetting),
    }
    Ok(match Option::<Stored>::deserialize(d)? {
        None => HealthSetting::default(),
        Some(Stored::Setting(s)) => s,
        Some(Stored::Legacy(l)) => HealthSetting {
            test: HealthTest::Shell(l.cmd),
            interval_ms: Some(l.interval_ms),
            timeout_ms: Some(l.timeout_ms),
            retries: Some(l.retries),
            start_period_ms: Some(l.start_period_ms),
        },
    })
}

/// An image's `HEALTHCHECK` as its config holds it (`config.Healthcheck`):
/// Docker's JSON, durations in nanoseconds, 0 for "not set".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageHealthcheck {
    pub test: Vec<String>,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub retries: i64,
}

impl ImageHealthcheck {
    /// The image's check as a setting; a test Docker does not know is refused.
    pub fn setting(&self) -> Result<HealthSetting, String> {
        let ms = |ns: i64| (ns > 0).then(|| (ns as u64).div_ceil(1_000_000));
        Ok(HealthSetting {
            test: HealthTest::from_docker(&self.test)?,
            interval_ms: ms(self.interval),
            timeout_ms: ms(self.timeout),
            retries: u32::try_from(self.retries).ok().filter(|r| *r > 0),
            start_period_ms: ms(self.start_period),
        })
    }
}

/// The check a container runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// Docker's `Test` form (`CMD` or `CMD-SHELL`), as inspect shows it.
    pub test: Vec<String>,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub retries: u32,
    pub start_period_ms: u64,
}

impl HealthCheck {
    /// The process to run in the container.
    pub fn argv(&self) -> Vec<String> {
        match HealthTest::from_docker(&self.test) {
            Ok(HealthTest::Shell(cmd)) => vec!["/bin/sh".into(), "-c".into(), cmd],
            Ok(HealthTest::Cmd(args)) => args,
            _ => vec![],
        }
    }
}

/// Docker's merge: the user's setting laid over the image's. The user's
/// test wins unless it inherits; each value the user left unset is the
/// image's, else Docker's default. None: the container has no check.
pub fn resolve(user: &HealthSetting, image: &HealthSetting) -> Option<HealthCheck> {
    let test = match &user.test {
        HealthTest::Inherit => &image.test,
        own => own,
    };
    if matches!(test, HealthTest::Inherit | HealthTest::None) {
        return None;
    }
    let set = |v: Option<u64>| v.filter(|v| *v > 0);
    Some(HealthCheck {
        test: test.to_docker(),
        interval_ms: set(user.interval_ms).or(set(image.interval_ms)).unwrap_or(DEFAULT_INTERVAL_MS),
        timeout_ms: set(user.timeout_ms).or(set(image.timeout_ms)).unwrap_or(DEFAULT_TIMEOUT_MS),
        retries: user.retries.filter(|r| *r > 0).or(image.retries.filter(|r| *r > 0)).unwrap_or(DEFAULT_RETRIES),
        start_period_ms: set(user.start_period_ms).or(set(image.start_period_ms)).unwrap_or(0),
    })
}

impl From<&pb::HealthConfig> for HealthSetting {
    fn from(h: &pb::HealthConfig) -> HealthSetting {
        use pb::health_config::Test;
        let nonzero = |v: u64| (v > 0).then_some(v);
        HealthSetting {
            test: match &h.test {
                None => HealthTest::Inherit,
                Some(Test::None(_)) => HealthTest::None,
                Some(Test::Cmd(c)) => HealthTest::Cmd(c.args.clone()),
                Some(Test::Shell(s)) => HealthTest::Shell(s.clone()),
            },
            interval_ms: nonzero(h.interval_ms),
            timeout_ms: nonzero(h.timeout_ms),
            retries: (h.retries > 0).then_some(h.retries),
            start_period_ms: nonzero(h.start_period_ms),
        }
    }
}

impl From<&HealthSetting> for pb::HealthConfig {
    fn from(h: &HealthSetting) -> pb::HealthConfig {
        use pb::health_config::Test;
        pb::HealthConfig {
            test: match &h.test {
                HealthTest::Inherit => None,
                HealthTest::None => Some(Test::None(true)),
                HealthTest::Cmd(args) => Some(Test::Cmd(pb::HealthCmd { args: args.clone() })),
                HealthTest::Shell(cmd) => Some(Test::Shell(cmd.clone())),
            },
            interval_ms: h.interval_ms.unwrap_or(0),
            timeout_ms: h.timeout_ms.unwrap_or(0),
            retries: h.retries.unwrap_or(0),
            start_period_ms: h.start_period_ms.unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(cmd: &str) -> HealthTest {
        HealthTest::Shell(cmd.into())
    }

    /// The image's `HEALTHCHECK --interval=5s --retries=2 CMD curl -f localhost`.
    fn image() -> HealthSetting {
        HealthSetting {
            test: shell("curl -f localhost"),
            interval_ms: Some(5_000),
            retries: Some(2),
            ..Default::default()
        }
    }

    #[test]
    fn the_users_setting_is_laid_over_the_images_like_docker() {
        let check = |test: &str, interval, timeout, retries, start| HealthCheck {
            test: vec!["CMD-SHELL".into(), test.into()],
            interval_ms: interval,
            timeout_ms: timeout,
            retries,
            start_period_ms: start,
        };
        let inherit = HealthSetting::default();
        let none = HealthSetting { test: HealthTest::None, ..Default::default() };
        let own = HealthSetting { test: shell("true"), ..Default::default() };
        let interval_only = HealthSetting { interval_ms: Some(1_000), ..Default::default() };
        let own_with_retries =
            HealthSetting { test: shell("true"), retries: Some(7), start_period_ms: Some(9_000), ..Default::default() };
        let zeros = HealthSetting { interval_ms: Some(0), retries: Some(0), ..Default::default() };
        let no_image = HealthSetting::default();
        let image_none = HealthSetting { test: HealthTest::None, interval_ms: Some(5_000), ..Default::default() };
        let table: Vec<(&str, &HealthSetting, HealthSetting, Option<HealthCheck>)> = vec![
            (
                "inherit: the image's check, its values",
                &inherit,
                image(),
                Some(check("curl -f localhost", 5_000, 30_000, 2, 0)),
            ),
            ("inherit with no image check: none", &inherit, no_image.clone(), None),
            ("none disables the image's check", &none, image(), None),
            ("own command keeps the image's unset values", &own, image(), Some(check("true", 5_000, 30_000, 2, 0))),
            (
                "own command without an image check: defaults",
                &own,
                no_image.clone(),
                Some(check("true", 30_000, 30_000, 3, 0)),
            ),
            (
                "one flag overrides one value of the image's",
                &interval_only,
                image(),
                Some(check("curl -f localhost", 1_000, 30_000, 2, 0)),
            ),
            ("a value alone with no check to override: none", &interval_only, no_image, None),
            ("own values win", &own_with_retries, image(), Some(check("true", 5_000, 30_000, 7, 9_000))),
            ("zero is unset", &zeros, image(), Some(check("curl -f localhost", 5_000, 30_000, 2, 0))),
            ("an image's NONE is no check", &inherit, image_none.clone(), None),
            ("own command over an image's NONE", &own, image_none, Some(check("true", 5_000, 30_000, 3, 0))),
        ];
        for (what, user, image, want) in table {
            assert_eq!(resolve(user, &image), want, "{what}");
        }
        let exec =
            HealthSetting { test: HealthTest::Cmd(vec!["/bin/check".into(), "-q".into()]), ..Default::default() };
        let c = resolve(&exec, &HealthSetting::default()).expect("a check");
        assert_eq!(c.test, ["CMD", "/bin/check", "-q"]);
        assert_eq!(c.argv(), ["/bin/check", "-q"], "CMD runs as it is");
        assert_eq!(
            resolve(&own, &HealthSetting::default()).expect("a check").argv(),
            ["/bin/sh", "-c", "true"],
            "CMD-SHELL runs with sh -c"
        );
    }

    #[test]
    fn image_healthchecks_read_like_docker() {
        let json = r#"{"Test":["CMD-SHELL","wget -q -O- localhost"],"Interval":1500000000,"Timeout":0,"StartPeriod":2000000000,"Retries":4}"#;
        let h: ImageHealthcheck = serde_json::from_str(json).expect("parses");
        let s = h.setting().expect("valid");
        assert_eq!(s.test, shell("wget -q -O- localhost"));
        assert_eq!(
            (s.interval_ms, s.timeout_ms, s.retries, s.start_period_ms),
            (Some(1_500), None, Some(4), Some(2_000))
        );
        let tests: Vec<(Vec<&str>, Result<HealthTest, &str>)> = vec![
            (vec![], Ok(HealthTest::Inherit)),
            (vec!["NONE"], Ok(HealthTest::None)),
            (vec!["CMD", "a", "b"], Ok(HealthTest::Cmd(vec!["a".into(), "b".into()]))),
            (vec!["CMD-SHELL", "a b"], Ok(shell("a b"))),
            (vec!["CMD"], Err("needs a command")),
            (vec!["CMD-SHELL", "a", "b"], Err("one command line")),
            (vec!["SHELL", "x"], Err("unknown health check type")),
        ];
        for (test, want) in tests {
            let test: Vec<String> = test.into_iter().map(String::from).collect();
            match (HealthTest::from_docker(&test), want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got, want, "{test:?}");
                    assert_eq!(got.to_docker(), test, "round trip");
                }
                (Err(e), Err(want)) => assert!(e.contains(want), "{test:?}: {e}"),
                (got, want) => panic!("{test:?}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn stored_settings_read_back_including_older_forms() {
        #[derive(Deserialize)]
        struct Spec {
            #[serde(default, deserialize_with = "stored_setting")]
            health: HealthSetting,
        }
        let read = |json: &str| serde_json::from_str::<Spec>(json).expect(json).health;
        assert_eq!(read("{}"), HealthSetting::default());
        assert_eq!(read(r#"{"health":null}"#), HealthSetting::default());
        let own = HealthSetting { test: shell("true"), retries: Some(2), ..Default::default() };
        assert_eq!(read(&format!(r#"{{"health":{}}}"#, serde_json::to_string(&own).expect("json"))), own);
        let legacy = read(
            r#"{"health":{"cmd":"test -f /ok","interval_ms":200,"timeout_ms":30000,"retries":2,"start_period_ms":0}}"#,
        );
        assert_eq!(
            legacy,
            HealthSetting {
                test: shell("test -f /ok"),
                interval_ms: Some(200),
                timeout_ms: Some(30_000),
                retries: Some(2),
                start_period_ms: Some(0)
            }
        );
    }

    #[test]
    fn settings_cross_the_wire_unchanged() {
        let settings = [
            HealthSetting::default(),
            HealthSetting { test: HealthTest::None, ..Default::default() },
            HealthSetting {
                test: HealthTest::Cmd(vec!["x".into()]),
                interval_ms: Some(1),
                timeout_ms: Some(2),
                retries: Some(3),
                start_period_ms: Some(4),
            },
            HealthSetting { test: shell("true"), ..Default::default() },
            HealthSetting { retries: Some(1), ..Default::default() },
        ];
        for s in settings {
            assert_eq!(HealthSetting::from(&pb::HealthConfig::from(&s)), s);
        }
    }
}
