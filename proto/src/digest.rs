//! Content digests (`sha256:<64 lower-case hex>`, the only algorithm
//! Shoal accepts): the type the engine's image store keys content by and
//! image references pin, here so that the managers check a service's image
//! with the same rules as the nodes that pull it. The hashing readers are
//! the engine's (`shoal_engine::images::digest`).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A sha256 content digest. Displays and serializes as `sha256:<hex>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<64 lower-case hex>`; the reason is for an error message.
    pub fn parse(s: &str) -> Result<Digest, String> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(format!("digest {s:?} has no algorithm (expected sha256:<64 hex digits>)"));
        };
        if alg != "sha256" {
            return Err(format!("digest {s:?} uses {alg}; only sha256 is supported"));
        }
        Digest::from_hex(hex).ok_or_else(|| format!("digest {s:?} is not 64 lower-case hex digits"))
    }

    /// A digest from its bare hex form, if it is 64 lower-case hex digits.
    pub fn from_hex(hex: &str) -> Option<Digest> {
        is_full_hex(hex).then(|| Digest(hex.to_string()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        Digest::of_sha256(&Sha256::digest(bytes))
    }

    /// The digest whose 32 bytes a sha256 hasher gave.
    pub fn of_sha256(out: &[u8]) -> Digest {
        Digest(out.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The 64 hex digits, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.0
    }
}

/// True for exactly 64 lower-case hex digits.
pub fn is_full_hex(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

/// True for a non-empty string of lower-case hex digits.
pub fn is_lower_hex(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = String;
    fn try_from(s: String) -> Result<Digest, String> {
        Digest::parse(&s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let hex = "a".repeat(64);
        let cases: &[(&str, bool)] = &[
            (&format!("sha256:{hex}"), true),
            (&hex, false),
            (&format!("sha512:{hex}"), false),
            (&format!("sha256:{}", "A".repeat(64)), false),
            (&format!("sha256:{}", "a".repeat(63)), false),
            ("sha256:", false),
        ];
        for (input, ok) in cases {
            assert_eq!(Digest::parse(input).is_ok(), *ok, "{input}");
        }
    }

    #[test]
    fn the_digest_of_bytes_is_their_sha256_and_round_trips_through_json() {
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let d = Digest::of(b"hello layers");
        let json = serde_json::to_string(&d).expect("ser");
        assert_eq!(serde_json::from_str::<Digest>(&json).expect("de"), d);
    }
}
