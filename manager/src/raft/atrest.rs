//! Encryption at rest: every record the manager's Raft store keeps is sealed
//! with the data key (DEK), ChaCha20-Poly1305 with a random 96-bit nonce per
//! record and the record's table and key as associated data (so a record
//! moved to another key fails to open). The DEK itself is kept in the store,
//! sealed with a key-encryption key (KEK): without autolock the KEK is a file
//! beside the node's TLS key (mode 0600); with autolock it is the cluster's
//! unlock key, which no manager writes to disk.
//!
//! Architecture Invariant: no record of the Raft store (log entries, vote,
//! snapshots, object tables) reaches the disk unsealed, and the DEK reaches
//! it only sealed by a KEK.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

pub const KEY_LEN: usize = 32;
/// The first byte of every sealed record: the format (ChaCha20-Poly1305, random nonce).
const RECORD_V1: u8 = 1;
/// Docker's unlock keys look like `SWMKEY-1-<base64 of 32 bytes>`.
const UNLOCK_PREFIX: &str = "SWMKEY-1-";

#[derive(Debug, thiserror::Error)]
pub enum AtRestError {
    #[error(
        "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"shoal swarm unlock\" to unlock it."
    )]
    Locked,
    #[error("invalid key")]
    InvalidKey,
    #[error("record {what} failed authentication: the Raft store is corrupt or was tampered with")]
    Tampered { what: String },
    #[error("the key-encryption key {path} is missing or unreadable ({reason}); the Raft store cannot be decrypted")]
    KekFile { path: PathBuf, reason: String },
    #[error("random number generator failed")]
    Rng,
}

impl From<AtRestError> for std::io::Error {
    fn from(e: AtRestError) -> Self {
        std::io::Error::other(e)
    }
}

fn random_key() -> Result<[u8; KEY_LEN], AtRestError> {
    let mut k = [0u8; KEY_LEN];
    SystemRandom::new().fill(&mut k).map_err(|_| AtRestError::Rng)?;
    Ok(k)
}

/// A 256-bit AEAD key: the DEK, or a KEK when it seals the DEK.
pub struct Key(LessSafeKey);

impl Key {
    fn new(bytes: &[u8; KEY_LEN]) -> Key {
        // 32 bytes is ChaCha20-Poly1305's key length: `new` cannot fail.
        #[allow(clippy::expect_used)]
        let k = UnboundKey::new(&CHACHA20_POLY1305, bytes).expect("a 32-byte key");
        Key(LessSafeKey::new(k))
    }

    /// `[version, nonce (12), ciphertext + tag (16)]`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, AtRestError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| AtRestError::Rng)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plain.len() + CHACHA20_POLY1305.tag_len());
        out.push(RECORD_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let mut body = out.split_off(1 + NONCE_LEN);
        self.0
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .map_err(|_| AtRestError::Rng)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a sealed record; `what` names it in the error.
    pub fn open(&self, aad: &[u8], record: &[u8], what: impl FnOnce() -> String) -> Result<Vec<u8>, AtRestError> {
        let opened = (|| {
            if record.len() < 1 + NONCE_LEN + CHACHA20_POLY1305.tag_len() || record[0] != RECORD_V1 {
                return None;
            }
            let nonce = Nonce::try_assume_unique_for_key(&record[1..1 + NONCE_LEN]).ok()?;
            let mut body = record[1 + NONCE_LEN..].to_vec();
            let n = self.0.open_in_place(nonce, Aad::from(aad), &mut body).ok()?.len();
            body.truncate(n);
            Some(body)
        })();
        opened.ok_or_else(|| AtRestError::Tampered { what: what() })
    }
}

/// The cluster's unlock key (autolock): 32 random bytes, shown to the
/// operator once as `SWMKEY-1-...`, never written to disk by a manager.
#[derive(Clone, PartialEq, Eq)]
pub struct UnlockKey([u8; KEY_LEN]);

impl UnlockKey {
    pub fn generate() -> Result<UnlockKey, AtRestError> {
        random_key().map(UnlockKey)
    }
    fn kek(&self) -> Key {
        Key::new(&self.0)
    }
}

impl fmt::Display for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{UNLOCK_PREFIX}{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(self.0))
    }
}

/// Never prints the key itself.
impl fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnlockKey(..)")
    }
}

impl FromStr for UnlockKey {
    type Err = AtRestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b64 = s.trim().strip_prefix(UNLOCK_PREFIX).ok_or(AtRestError::InvalidKey)?;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| AtRestError::InvalidKey)?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| AtRestError::InvalidKey)?;
        Ok(UnlockKey(key))
    }
}

/// Where this manager's KEK comes from.
#[derive(Clone, Debug)]
pub enum Kek {
    /// A key file beside the node's TLS key, created (0600) with the DEK.
    File(PathBuf),
    /// Autolock: the operator's unlock key.
    Unlock(UnlockKey),
    /// Autolock and no key given yet: opening the store says so.
    Locked,
}

/// The flag byte in front of the sealed DEK: which kind of KEK sealed it.
const BY_FILE: u8 = 0;
const BY_UNLOCK: u8 = 1;
const DEK_AAD: &[u8] = b"shoal-raft-dek";

/// The DEK sealed by a KEK, as kept in the store.
pub fn wrap_dek(dek: &[u8; KEY_LEN], kek: &Kek) -> Result<Vec<u8>, AtRestError> {
    let (flag, key) = match kek {
        Kek::File(path) => (BY_FILE, Key::new(&kek_file(path, true)?)),
        Kek::Unlock(k) => (BY_UNLOCK, k.kek()),
        Kek::Locked => return Err(AtRestError::Locked),
    };
    let mut out = vec![flag];
    out.extend(key.seal(DEK_AAD, dek)?);
    Ok(out)
}

/// Whether a sealed DEK needs the unlock key.
pub fn needs_unlock(wrapped: &[u8]) -> bool {
    wrapped.first() == Some(&BY_UNLOCK)
}

/// Opens a sealed DEK. A DEK sealed by the unlock key needs it (`Locked`
/// without, `InvalidKey` with the wrong one); one sealed by the key file
/// needs that file.
pub fn unwrap_dek(wrapped: &[u8], kek: &Kek) -> Result<[u8; KEY_LEN], AtRestError> {
    let (flag, sealed) = wrapped.split_first().ok_or_else(|| AtRestError::Tampered { what: "dek".into() })?;
    let key = match (*flag, kek) {
        (BY_UNLOCK, Kek::Unlock(k)) => k.kek(),
        (BY_UNLOCK, _) => return Err(AtRestError::Locked),
        (BY_FILE, Kek::File(path)) => Key::new(&kek_file(path, false)?),
        (BY_FILE, _) => return Err(AtRestError::InvalidKey),
        _ => return Err(AtRestError::Tampered { what: "dek".into() }),
    };
    let plain = key.open(DEK_AAD, sealed, String::new).map_err(|_| match flag {
        &BY_UNLOCK => AtRestError::InvalidKey,
        _ => AtRestError::Tampered { what: "dek".into() },
    })?;
    plain.try_into().map_err(|_| AtRestError::Tampered { what: "dek".into() })
}

/// A new random DEK.
pub fn new_dek() -> Result<[u8; KEY_LEN], AtRestError> {
    random_key()
}

pub fn dek_key(dek: &[u8; KEY_LEN]) -> Key {
    Key::new(dek)
}

/// Reads the KEK file; with `create`, makes one (mode 0600) if it is absent.
fn kek_file(path: &Path, create: bool) -> Result<[u8; KEY_LEN], AtRestError> {
    let err = |reason: String| AtRestError::KekFile { path: path.to_path_buf(), reason };
    match std::fs::read(path) {
        Ok(b) => b.try_into().map_err(|_| err(format!("not {KEY_LEN} bytes"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = random_key()?;
            write_private(path, &key).map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Removes the KEK file (autolock turned on: the key must not stay on disk).
pub fn remove_kek_file(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Temp file (0600), fsync, rename, fsync the directory.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_opens_only_with_its_key_and_associated_data() {
        let k = Key::new(&new_dek().unwrap());
        let sealed = k.seal(b"log/1", b"hello").unwrap();
        assert_eq!(k.open(b"log/1", &sealed, String::new).unwrap(), b"hello");
        assert!(!sealed.windows(5).any(|w| w == b"hello"), "the plaintext is not in the record");
        assert!(matches!(k.open(b"log/2", &sealed, || "log/2".into()), Err(AtRestError::Tampered { .. })));
        let other = Key::new(&new_dek().unwrap());
        assert!(other.open(b"log/1", &sealed, String::new).is_err());
        // A random nonce per record: the same plaintext seals differently.
        assert_ne!(k.seal(b"log/1", b"hello").unwrap(), sealed);
    }

    #[test]
    fn a_flipped_byte_anywhere_fails_loudly() {
        let k = Key::new(&new_dek().unwrap());
        let sealed = k.seal(b"meta/vote", b"{\"term\":3}").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let e = k.open(b"meta/vote", &bad, || "meta/vote".into()).unwrap_err();
            assert!(e.to_string().contains("meta/vote failed authentication"), "{e}");
        }
        assert!(k.open(b"meta/vote", &sealed[..10], String::new).is_err(), "a truncated record");
    }

    #[test]
    fn the_dek_wraps_with_the_key_file_which_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs/raft.kek");
        let dek = new_dek().unwrap();
        let wrapped = wrap_dek(&dek, &Kek::File(path.clone())).unwrap();
        assert!(!needs_unlock(&wrapped));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(unwrap_dek(&wrapped, &Kek::File(path.clone())).unwrap(), dek);
        // The same file wraps again (no new key), and without it nothing opens.
        let again = wrap_dek(&dek, &Kek::File(path.clone())).unwrap();
        assert_eq!(unwrap_dek(&again, &Kek::File(path.clone())).unwrap(), dek);
        remove_kek_file(&path).unwrap();
        assert!(matches!(unwrap_dek(&wrapped, &Kek::File(path)), Err(AtRestError::KekFile { .. })));
    }

    #[test]
    fn the_dek_wraps_with_the_unlock_key_and_a_wrong_key_is_refused() {
        let key = UnlockKey::generate().unwrap();
        let dek = new_dek().unwrap();
        let wrapped = wrap_dek(&dek, &Kek::Unlock(key.clone())).unwrap();
        assert!(needs_unlock(&wrapped));
        assert_eq!(unwrap_dek(&wrapped, &Kek::Unlock(key.clone())).unwrap(), dek);
        let wrong = UnlockKey::generate().unwrap();
        assert!(matches!(unwrap_dek(&wrapped, &Kek::Unlock(wrong)), Err(AtRestError::InvalidKey)));
        let locked = unwrap_dek(&wrapped, &Kek::Locked).unwrap_err();
        assert!(locked.to_string().contains("needs to be unlocked"), "{locked}");
        assert!(matches!(wrap_dek(&dek, &Kek::Locked), Err(AtRestError::Locked)));
    }

    #[test]
    fn unlock_keys_print_as_docker_s_and_parse_back() {
        let key = UnlockKey::generate().unwrap();
        let s = key.to_string();
        assert!(s.starts_with("SWMKEY-1-") && s.len() == 9 + 43, "{s}");
        assert_eq!(s.parse::<UnlockKey>().unwrap(), key);
        assert_eq!(format!(" {s}\n").parse::<UnlockKey>().unwrap(), key, "surrounding blanks are fine");
        assert!(format!("{key:?}").find(&s[9..]).is_none(), "Debug hides the key");
        for bad in ["", "SWMKEY-1-", "SWMKEY-2-abc", "SWMKEY-1-!!!!", "SWMKEY-1-AAAA"] {
            assert!(matches!(bad.parse::<UnlockKey>(), Err(AtRestError::InvalidKey)), "{bad}");
        }
    }
}
