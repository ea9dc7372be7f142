//! The framing on a container's attach socket and on `shim-exec`'s stdin and
//! stdout when a terminal or stdin is attached: `[kind u8][len u32 BE][payload]`.
//! One format for both directions keeps the shim, `shim-exec` and the daemon
//! speaking the same language about stdin, output, closing and resizing.

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
/// No more stdin (the client's input ended).
pub const CLOSE_STDIN: u8 = 3;
/// The client's terminal size: rows then cols, u16 BE each.
pub const RESIZE: u8 = 4;

/// Frames larger than this are refused as garbage.
const MAX_FRAME: usize = 1 << 20;

pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

pub fn resize(rows: u16, cols: u16) -> Vec<u8> {
    let mut p = rows.to_be_bytes().to_vec();
    p.extend_from_slice(&cols.to_be_bytes());
    encode(RESIZE, &p)
}

/// (rows, cols) of a RESIZE payload.
pub fn parse_resize(p: &[u8]) -> Option<(u16, u16)> {
    (p.len() == 4).then(|| (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
}

/// Reassembles frames from a byte stream.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    /// Adds bytes; returns the complete frames, or Err on a malformed stream.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, String> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            if self.buf.len() < 5 {
                return Ok(out);
            }
            let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
            if len > MAX_FRAME {
                return Err(format!("a frame of {len} bytes is too large"));
            }
            if self.buf.len() < 5 + len {
                return Ok(out);
            }
            let kind = self.buf[0];
            let payload = self.buf[5..5 + len].to_vec();
            self.buf.drain(..5 + len);
            out.push((kind, payload));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_split() {
        let mut stream = encode(STDIN, b"hello");
        stream.extend(resize(24, 80));
        stream.extend(encode(CLOSE_STDIN, b""));
        for split in 0..stream.len() {
            let mut d = Decoder::default();
            let mut frames = d.push(&stream[..split]).unwrap();
            frames.extend(d.push(&stream[split..]).unwrap());
            assert_eq!(frames, vec![(STDIN, b"hello".to_vec()), (RESIZE, vec![0, 24, 0, 80]), (CLOSE_STDIN, vec![])]);
        }
        assert_eq!(parse_resize(&[0, 24, 0, 80]), Some((24, 80)));
        let mut d = Decoder::default();
        assert!(d.push(&[1, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
