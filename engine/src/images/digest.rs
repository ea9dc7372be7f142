//! Content digests (`sha256:<64 lower-case hex>`, the only algorithm the
//! store accepts) and the hashing readers and copies that compute them while
//! data streams through, so nothing is read twice.

use std::fmt;
use std::io::{self, Read, Write};

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
        Digest(hex::encode(Sha256::digest(bytes)))
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

/// An incremental sha256 over data arriving in pieces (a download).
#[derive(Default)]
pub struct Hasher {
    hasher: Sha256,
    count: u64,
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.count += data.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn finish(self) -> (Digest, u64) {
        (Digest(hex::encode(self.hasher.finalize())), self.count)
    }
}

/// A reader that hashes and counts everything read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), count: 0 }
    }

    /// Reads the rest of the stream, then returns its digest and length.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((Digest(hex::encode(self.hasher.finalize())), self.count))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Copies `reader` into `writer`, returning the digest and length of what
/// was copied.
pub fn copy_hashing(reader: impl Read, writer: &mut impl Write) -> io::Result<(Digest, u64)> {
    let mut r = HashingReader::new(reader);
    io::copy(&mut r, writer)?;
    r.finish()
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
    fn hashing_reader_matches_digest_of() {
        let data = b"hello layers".repeat(1000);
        let (d, n) = copy_hashing(&data[..], &mut Vec::new()).expect("copy");
        assert_eq!(d, Digest::of(&data));
        assert_eq!(n, data.len() as u64);
        assert_eq!(
            Digest::of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let json = serde_json::to_string(&d).expect("ser");
        assert_eq!(serde_json::from_str::<Digest>(&json).expect("de"), d);
    }
}
