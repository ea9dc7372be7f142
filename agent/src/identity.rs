//! A node's identity and membership on disk under the data root:
//! `node.json` (who it is, which cluster, which managers) and `certs/`
//! (cluster CA, its certificate, its private key — mode 0600, never sent —
//! and, on a manager without autolock, `raft.kek`, the key that seals its
//! Raft store's data key, mode 0600).
//! Files are replaced atomically (write to a temp file, fsync, rename).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_engine::files::write_atomic;
use shoal_proto::model::Role;
use shoal_proto::tls::NodeCerts;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFile {
    pub node_id: String,
    pub cluster_id: String,
    pub role: Role,
    pub raft_id: u64,
    pub advertise_addr: String,
    pub listen_addr: String,
    /// Managers to reach, `host:port`; refreshed from every session.
    pub managers: Vec<String>,
    /// Its VTEP address (`--data-path-addr`); empty: the advertise address's.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data_path_addr: String,
}

#[derive(Clone, Debug)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: &Path) -> Paths {
        Paths { root: root.to_path_buf() }
    }
    pub fn node_file(&self) -> PathBuf {
        self.root.join("node.json")
    }
    pub fn certs(&self) -> PathBuf {
        self.root.join("certs")
    }
    /// The key that seals the Raft store's data key, beside the TLS key
    /// (without autolock; `shoal_manager::raft::atrest`).
    pub fn kek(&self) -> PathBuf {
        self.certs().join("raft.kek")
    }
    pub fn raft(&self) -> PathBuf {
        self.root.join("raft")
    }

    pub fn load(&self) -> anyhow::Result<Option<(NodeFile, NodeCerts)>> {
        let path = self.node_file();
        if !path.exists() {
            return Ok(None);
        }
        let file: NodeFile =
            serde_json::from_slice(&std::fs::read(&path)?).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let read = |name: &str| -> anyhow::Result<String> {
            let p = self.certs().join(name);
            std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
        };
        let certs = NodeCerts { ca_pem: read("ca.pem")?, cert_pem: read("cert.pem")?, key_pem: read("key.pem")? };
        Ok(Some((file, certs)))
    }

    pub fn save_certs(&self, certs: &NodeCerts) -> std::io::Result<()> {
        std::fs::create_dir_all(self.certs())?;
        write_atomic(&self.certs().join("key.pem"), certs.key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.certs().join("cert.pem"), certs.cert_pem.as_bytes(), 0o644)?;
        write_atomic(&self.certs().join("ca.pem"), certs.ca_pem.as_bytes(), 0o644)
    }

    pub fn save_node(&self, file: &NodeFile) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
        write_atomic(&self.node_file(), &bytes, 0o600)
    }

    /// Forgets the swarm: node file first (so a crash midway leaves an
    /// un-joined node), then certificates and Raft state.
    pub fn wipe(&self) -> std::io::Result<()> {
        for p in [self.node_file()] {
            if p.exists() {
                std::fs::remove_file(p)?;
            }
        }
        for d in [self.certs(), self.raft()] {
            if d.exists() {
                std::fs::remove_dir_all(d)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_wipe_round_trip() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = Paths::new(dir.path());
        assert!(p.load().expect("load").is_none());
        let file = NodeFile {
            node_id: "n".into(),
            cluster_id: "c".into(),
            role: Role::Worker,
            raft_id: 0,
            advertise_addr: "10.0.0.1:4620".into(),
            listen_addr: "0.0.0.0:4620".into(),
            managers: vec!["10.0.0.2:4620".into()],
            data_path_addr: String::new(),
        };
        let certs = NodeCerts { ca_pem: "ca".into(), cert_pem: "cert".into(), key_pem: "key".into() };
        p.save_certs(&certs).expect("certs");
        p.save_node(&file).expect("node");
        let (f, c) = p.load().expect("load").expect("present");
        assert_eq!(f, file);
        assert_eq!(c.key_pem, "key");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p.certs().join("key.pem")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        p.wipe().expect("wipe");
        assert!(p.load().expect("load").is_none());
        assert!(!p.certs().exists());
    }
}
