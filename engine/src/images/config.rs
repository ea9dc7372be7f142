//! The image config (the blob whose digest is the image id): the fields the
//! store reads, the container defaults `inspect` shows, and the minimal
//! config `import` writes.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

/// An image config as found in archives; unknown fields are ignored and
/// `null` reads as absent.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ConfigFile {
    pub created: Option<String>,
    pub author: Option<String>,
    pub comment: Option<String>,
    pub architecture: Option<String>,
    pub os: Option<String>,
    pub variant: Option<String>,
    pub config: Option<ContainerConfig>,
    pub rootfs: Option<RootFs>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub diff_ids: Option<Vec<Digest>>,
}

/// The defaults a container of this image starts with, under the names
/// Docker and the OCI image spec both use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `"80/tcp" → {}`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `"/data" → {}`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args_escaped: Option<bool>,
}

impl ConfigFile {
    pub fn parse(bytes: &[u8]) -> Result<ConfigFile, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// `rootfs.diff_ids`, which must be there and of type `layers`.
    pub fn diff_ids(&self) -> Result<&[Digest], String> {
        let rootfs = self.rootfs.as_ref().ok_or("has no rootfs")?;
        if let Some(kind) = &rootfs.kind
            && kind != "layers"
        {
            return Err(format!("has rootfs.type {kind:?}, not \"layers\""));
        }
        rootfs.diff_ids.as_deref().ok_or_else(|| "has no rootfs.diff_ids".to_string())
    }
}

/// The config `import` writes for a single-layer image.
pub fn import_config(diff_id: &Digest, created: SystemTime) -> Vec<u8> {
    let created = rfc3339_utc(created);
    let v = serde_json::json!({
        "architecture": go_arch(),
        "os": "linux",
        "created": created,
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [diff_id.to_string()] },
        "history": [{ "created": created, "created_by": "shoal image import" }],
    });
    v.to_string().into_bytes()
}

/// This machine's architecture in the Go/OCI spelling.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// `2023-11-14T22:13:20Z`; times before 1970 print as the epoch.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    match secs {
        0 => "1970-01-01T00:00:00Z".to_string(), // the shared formatter leaves 0 ("unset") empty
        s => shoal_proto::model::rfc3339(s * 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_table() {
        let cases: &[(u64, &str)] = &[
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_700_000_000, "2023-11-14T22:13:20Z"),
            (4_102_444_799, "2099-12-31T23:59:59Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(rfc3339_utc(SystemTime::UNIX_EPOCH + Duration::from_secs(*secs)), *want);
        }
    }

    #[test]
    fn config_fields_and_nulls() {
        let json = br#"{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z",
            "config":{"Env":["PATH=/bin"],"Cmd":null,"Entrypoint":["/init"],"WorkingDir":"/srv",
                      "User":"1000:1000","ExposedPorts":{"80/tcp":{}},"Volumes":{"/data":{}},
                      "Labels":{"a":"b"},"StopSignal":"SIGQUIT","Unknown":1},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ConfigFile::parse(json).expect("parse");
        let cc = c.config.expect("config");
        assert_eq!(cc.env, Some(vec!["PATH=/bin".to_string()]));
        assert_eq!(cc.cmd, None);
        assert_eq!(cc.working_dir.as_deref(), Some("/srv"));
        assert_eq!(cc.stop_signal.as_deref(), Some("SIGQUIT"));
        assert!(cc.exposed_ports.expect("ports").contains_key("80/tcp"));
        let out = serde_json::to_value(ContainerConfig { user: Some("u".into()), ..Default::default() }).expect("ser");
        assert_eq!(out, serde_json::json!({"User": "u"}));
        assert!(ConfigFile::parse(b"{}").expect("parse").diff_ids().is_err());
        let bad = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:zz"]}}"#;
        assert!(ConfigFile::parse(bad).is_err());
    }

    #[test]
    fn import_config_names_its_layer() {
        let d = Digest::of(b"layer");
        let bytes = import_config(&d, SystemTime::UNIX_EPOCH);
        let c = ConfigFile::parse(&bytes).expect("parse");
        assert_eq!(c.diff_ids().expect("ids"), &[d]);
        assert_eq!(c.created.as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(c.os.as_deref(), Some("linux"));
    }
}
