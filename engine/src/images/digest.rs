//! The hashing readers and copies that compute a content digest while data
//! streams through, so nothing is read twice. The digest type itself is
//! `shoal_proto::digest` (the managers check references with it too).

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

pub use shoal_proto::digest::{Digest, is_full_hex, is_lower_hex};

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
        (Digest::of_sha256(&self.hasher.finalize()), self.count)
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
        Ok((Digest::of_sha256(&self.hasher.finalize()), self.count))
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
    fn hashing_reader_matches_digest_of() {
        let data = b"hello layers".repeat(1000);
        let (d, n) = copy_hashing(&data[..], &mut Vec::new()).expect("copy");
        assert_eq!(d, Digest::of(&data));
        assert_eq!(n, data.len() as u64);
    }
}
