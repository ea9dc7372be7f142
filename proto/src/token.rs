//! Join tokens: `SHOAL-1-<digest>-<secret>`, where `digest` is the SHA-256 of
//! the cluster root CA certificate (DER) in base 36 (50 characters) and `secret`
//! 25 base-36 characters of randomness. The digest lets a joining node pin the
//! CA before it trusts anything; the secret decides the role.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

const PREFIX: &str = "SHOAL";
const VERSION: &str = "1";
const DIGEST_LEN: usize = 50;
const SECRET_LEN: usize = 25;

#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the root CA certificate (DER).
    pub ca_digest: [u8; 32],
    pub secret: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("invalid join token: expected SHOAL-1-<50 chars>-<25 chars>; copy it again from `shoal swarm join-token`")]
    Malformed,
}

impl JoinToken {
    pub fn new(ca_cert_der: &[u8], secret: String) -> Self {
        JoinToken { ca_digest: ca_digest(ca_cert_der), secret }
    }

    /// A fresh random secret.
    pub fn new_secret() -> String {
        crate::model::random_base36(SECRET_LEN)
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}-{VERSION}-{}-{}", to_base36(&self.ca_digest, DIGEST_LEN), self.secret)
    }
}

impl fmt::Debug for JoinToken {
    // Never print the secret in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken({}…)", &to_base36(&self.ca_digest, DIGEST_LEN)[..8])
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.trim().split('-').collect();
        let [prefix, version, digest, secret] = parts[..] else { return Err(TokenError::Malformed) };
        if prefix != PREFIX || version != VERSION || digest.len() != DIGEST_LEN || secret.len() != SECRET_LEN {
            return Err(TokenError::Malformed);
        }
        if !secret.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()) {
            return Err(TokenError::Malformed);
        }
        let bytes = from_base36(digest).ok_or(TokenError::Malformed)?;
        let ca_digest: [u8; 32] = bytes.try_into().map_err(|_| TokenError::Malformed)?;
        Ok(JoinToken { ca_digest, secret: secret.to_string() })
    }
}

pub fn ca_digest(ca_cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(ca_cert_der).into()
}

/// Big-endian bytes to base 36, left-padded with zeros to `width`.
fn to_base36(bytes: &[u8], width: usize) -> String {
    let mut num: Vec<u8> = bytes.to_vec();
    let mut digits = Vec::new();
    while num.iter().any(|&b| b != 0) {
        let mut rem: u32 = 0;
        for b in num.iter_mut() {
            let cur = (rem << 8) | u32::from(*b);
            *b = (cur / 36) as u8;
            rem = cur % 36;
        }
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[rem as usize]);
    }
    while digits.len() < width {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// Base 36 to 32 big-endian bytes; None if it does not fit or has bad digits.
fn from_base36(s: &str) -> Option<Vec<u8>> {
    let mut out = [0u8; 32];
    for c in s.bytes() {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'z' => c - b'a' + 10,
            _ => return None,
        };
        let mut carry = u32::from(d);
        for b in out.iter_mut().rev() {
            let cur = u32::from(*b) * 36 + carry;
            *b = (cur & 0xff) as u8;
            carry = cur >> 8;
        }
        if carry != 0 {
            return None;
        }
    }
    Some(out.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips() {
        let t = JoinToken::new(b"some ca certificate", JoinToken::new_secret());
        let s = t.to_string();
        assert!(s.starts_with("SHOAL-1-"));
        assert_eq!(s.len(), "SHOAL-1-".len() + 50 + 1 + 25);
        assert_eq!(s.parse::<JoinToken>(), Ok(t));
    }

    #[test]
    fn extreme_digests_round_trip() {
        for d in [[0u8; 32], [0xff; 32]] {
            let t = JoinToken { ca_digest: d, secret: "a".repeat(25) };
            assert_eq!(t.to_string().parse::<JoinToken>(), Ok(t));
        }
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let s = JoinToken::new(b"ca", JoinToken::new_secret()).to_string();
        for bad in [
            s.replace("SHOAL-1", "SWMTKN-1"),
            s.replace("SHOAL-1", "SHOAL-2"),
            format!("{s}x"),
            s[..s.len() - 1].to_string(),
            s.replacen('-', "", 1),
            "".to_string(),
            s.to_uppercase(),
        ] {
            assert_eq!(bad.parse::<JoinToken>(), Err(TokenError::Malformed), "{bad}");
        }
        // a digest beyond 2^256 does not fit
        let over = format!("SHOAL-1-{}-{}", "z".repeat(50), "a".repeat(25));
        assert_eq!(over.parse::<JoinToken>(), Err(TokenError::Malformed));
    }

    #[test]
    fn debug_hides_the_secret() {
        let t = JoinToken::new(b"ca", "s".repeat(25));
        assert!(!format!("{t:?}").contains("sssss"));
    }
}
