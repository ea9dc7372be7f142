//! The host's WireGuard static key pair: made by netd at first start, kept
//! in one file (mode 0600, replaced atomically) beside netd's state, and
//! never shown: no `Debug` of a secret, no log line, no API answer carries
//! it. During a rotation the previous key is kept (`prev`) so that peers
//! that still know only the old public key can handshake until the grace
//! period ends (`drop_prev`).

use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use boringtun::x25519::{PublicKey, StaticSecret};
use rand::TryRngCore;

/// The key file's name in netd's directory.
pub const KEY_FILE: &str = "wg.key";

/// The host's static keys: `current`, and `prev` while a rotation's grace
/// period runs.
#[derive(Clone)]
pub struct StaticKeys {
    pub current: StaticSecret,
    pub prev: Option<StaticSecret>,
    pub rotated_at: SystemTime,
}

impl std::fmt::Debug for StaticKeys {
    /// Public halves only: the secrets never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeys")
            .field("public", &hex(&self.public()))
            .field("prev_public", &self.prev_public().map(|k| hex(&k)))
            .field("rotated_at", &self.rotated_at)
            .finish()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct KeyFile {
    current: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prev: Option<String>,
    /// Seconds since the Unix epoch.
    rotated_at: u64,
}

impl StaticKeys {
    /// A fresh key pair from the OS's random source.
    pub fn generate() -> io::Result<StaticKeys> {
        Ok(StaticKeys { current: random_secret()?, prev: None, rotated_at: SystemTime::now() })
    }

    /// The keys in `dir/wg.key`, made (and saved) on first use.
    pub fn load_or_create(dir: &Path) -> io::Result<StaticKeys> {
        let path = dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let bad = |what: &str| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {what}; move the file away to make a new key", path.display()),
                    )
                };
                let f: KeyFile = serde_json::from_slice(&bytes).map_err(|_| bad("not a key file"))?;
                let current = unhex(&f.current).ok_or_else(|| bad("bad current key"))?;
                let prev = match f.prev {
                    Some(p) => Some(unhex(&p).ok_or_else(|| bad("bad previous key"))?),
                    None => None,
                };
                Ok(StaticKeys {
                    current: StaticSecret::from(current),
                    prev: prev.map(StaticSecret::from),
                    rotated_at: UNIX_EPOCH + Duration::from_secs(f.rotated_at),
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let keys = StaticKeys::generate()?;
                keys.save(dir)?;
                Ok(keys)
            }
            Err(e) => Err(io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))),
        }
    }

    /// The current public key (what peers configure).
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.current).to_bytes()
    }

    /// The previous public key, while a rotation's grace period runs.
    pub fn prev_public(&self) -> Option<[u8; 32]> {
        self.prev.as_ref().map(|k| PublicKey::from(k).to_bytes())
    }

    /// A rotation: the current key becomes the previous one, a new one is
    /// made, and both are saved before this returns.
    pub fn rotate(&mut self, dir: &Path) -> io::Result<()> {
        let mut next = self.clone();
        next.prev = Some(std::mem::replace(&mut next.current, random_secret()?));
        next.rotated_at = SystemTime::now();
        next.save(dir)?;
        *self = next;
        Ok(())
    }

    /// The end of the grace period: the previous key is forgotten.
    pub fn drop_prev(&mut self, dir: &Path) -> io::Result<()> {
        let mut next = self.clone();
        next.prev = None;
        next.save(dir)?;
        *self = next;
        Ok(())
    }

    /// Writes the file atomically: a temporary file made 0600, synced, then
    /// renamed over the old one.
    fn save(&self, dir: &Path) -> io::Result<()> {
        let f = KeyFile {
            current: hex(self.current.as_bytes()),
            prev: self.prev.as_ref().map(|k| hex(k.as_bytes())),
            rotated_at: self.rotated_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        };
        let body = serde_json::to_vec(&f).map_err(io::Error::other)?;
        let path = dir.join(KEY_FILE);
        let tmp = dir.join(format!(".{KEY_FILE}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        fn ctx<'a>(what: &'a str, p: &'a Path) -> impl FnOnce(io::Error) -> io::Error + 'a {
            move |e| io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()))
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(ctx("creating", &tmp))?;
        file.write_all(&body).and_then(|()| file.sync_all()).map_err(ctx("writing", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(ctx("replacing", &path))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

fn random_secret() -> io::Result<StaticSecret> {
    let mut k = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut k).map_err(io::Error::other)?;
    Ok(StaticSecret::from(k))
}

/// Lower-case hex of a key (public keys in logs and stats).
pub fn hex(k: &[u8]) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(dir: &Path) -> u32 {
        std::fs::metadata(dir.join(KEY_FILE)).expect("the key file").permissions().mode() & 0o777
    }

    #[test]
    fn created_once_0600_and_loaded_back() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let a = StaticKeys::load_or_create(dir.path()).expect("created");
        assert_eq!(mode(dir.path()), 0o600);
        let b = StaticKeys::load_or_create(dir.path()).expect("loaded");
        assert_eq!(a.public(), b.public());
        assert_eq!(b.prev_public(), None);
        assert_eq!(
            a.rotated_at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs(),
            b.rotated_at.duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
        );
    }

    #[test]
    fn rotate_keeps_prev_until_dropped() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut k = StaticKeys::load_or_create(dir.path()).expect("created");
        let first = k.public();
        k.rotate(dir.path()).expect("rotated");
        assert_ne!(k.public(), first);
        assert_eq!(k.prev_public(), Some(first));
        assert_eq!(mode(dir.path()), 0o600);
        let back = StaticKeys::load_or_create(dir.path()).expect("loaded");
        assert_eq!((back.public(), back.prev_public()), (k.public(), Some(first)));
        k.drop_prev(dir.path()).expect("dropped");
        assert_eq!(k.prev_public(), None);
        let back = StaticKeys::load_or_create(dir.path()).expect("loaded");
        assert_eq!((back.public(), back.prev_public()), (k.public(), None));
        assert_eq!(mode(dir.path()), 0o600);
    }

    #[test]
    fn debug_shows_no_secret() {
        let k = StaticKeys::generate().expect("a key");
        let shown = format!("{k:?}");
        assert!(!shown.contains(&hex(k.current.as_bytes())), "{shown}");
        assert!(shown.contains(&hex(&k.public())));
    }

    #[test]
    fn a_damaged_file_says_what_to_do() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join(KEY_FILE), b"{\"current\":\"zz\",\"rotated_at\":0}").expect("written");
        let e = StaticKeys::load_or_create(dir.path()).expect_err("refused");
        assert!(e.to_string().contains("move the file away"), "{e}");
    }
}
