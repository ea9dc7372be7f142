//! Receive-side coalescing (GRO in userspace): consecutive decrypted TCP
//! segments of one flow become one super-packet written to the TUN with a
//! `virtio_net_hdr` (gso TCPv4, checksum partial), so the kernel takes one
//! write for up to 64 segments. Only what Linux's own GRO would merge is
//! merged: IPv4 without options or fragments, the same addresses, ports,
//! IP header fields, ACK number, window and TCP options, contiguous
//! sequence numbers, ACK (and a final PSH) only, equal segment sizes with
//! at most one shorter last. Anything else is passed on as it is. Pure code.

use super::gso::{self, F_NEEDS_CSUM, GSO_TCPV4, VNET_HDR_LEN, VnetHdr};

const MAX_SEGS: usize = 64;
const MAX_LEN: usize = 65535;
const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

/// The super-packet being built: a vnet header's room, then the packet.
pub struct Gro {
    buf: Vec<u8>,
    /// Segments in `buf` (0: empty).
    segs: usize,
    /// The first segment's payload size (the gso_size).
    mss: usize,
    next_seq: u32,
    /// A shorter segment or a PSH closed it.
    closed: bool,
    /// Whether the packet in `buf` can take more (a TCP segment).
    tcp: bool,
    /// Which output (network) it goes to.
    pub net: usize,
}

impl Default for Gro {
    fn default() -> Self {
        Gro::new()
    }
}

/// The IPv4 header length and TCP header length of a packet GRO may merge.
fn tcp_shape(p: &[u8]) -> Option<(usize, usize)> {
    if p.len() < 40 || p[0] != 0x45 || p[9] != 6 {
        return None;
    }
    if u16::from_be_bytes([p[6], p[7]]) & 0x3fff != 0 {
        return None; // MF or a fragment offset
    }
    if u16::from_be_bytes([p[2], p[3]]) as usize != p.len() {
        return None;
    }
    let thl = ((p[20 + 12] >> 4) as usize) * 4;
    (thl >= 20 && p.len() >= 20 + thl).then_some((20, thl))
}

impl Gro {
    pub fn new() -> Gro {
        Gro {
            buf: Vec::with_capacity(VNET_HDR_LEN + MAX_LEN),
            segs: 0,
            mss: 0,
            next_seq: 0,
            closed: false,
            tcp: false,
            net: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.segs == 0
    }

    /// Appends `p` (bound for network `net`) when it continues the
    /// super-packet; false when it does not (flush, then `start`).
    pub fn append(&mut self, net: usize, p: &[u8]) -> bool {
        if self.segs == 0 || !self.tcp || self.closed || net != self.net || self.segs >= MAX_SEGS {
            return false;
        }
        let Some((ihl, thl)) = tcp_shape(p) else { return false };
        let cur = &self.buf[VNET_HDR_LEN..];
        let hlen = ihl + thl;
        let payload = p.len() - hlen;
        if payload == 0 || payload > self.mss || cur.len() + payload > MAX_LEN {
            return false;
        }
        let flags = p[ihl + 13];
        if flags & !PSH != ACK {
            return false;
        }
        // The IP header but for length, id and checksum; the TCP header but for seq, flags, checksum.
        let same = cur.len() >= hlen
            && ((cur[32] >> 4) as usize) * 4 == thl
            && cur[..2] == p[..2]
            && cur[6..10] == p[6..10]
            && cur[12..20] == p[12..20]
            && cur[20..24] == p[20..24]
            && cur[28..32] == p[28..32]
            && cur[34..36] == p[34..36]
            && cur[38..hlen] == p[38..hlen];
        let seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]);
        if !same || seq != self.next_seq {
            return false;
        }
        self.buf.extend_from_slice(&p[hlen..]);
        self.segs += 1;
        self.next_seq = seq.wrapping_add(payload as u32);
        if flags & PSH != 0 {
            let at = VNET_HDR_LEN + ihl + 13;
            self.buf[at] |= PSH;
            self.closed = true;
        }
        if payload < self.mss {
            self.closed = true;
        }
        true
    }

    /// Starts a new super-packet with `p` (the previous one flushed).
    pub fn start(&mut self, net: usize, p: &[u8]) {
        self.buf.clear();
        self.buf.resize(VNET_HDR_LEN, 0);
        self.buf.extend_from_slice(p);
        self.segs = 1;
        self.net = net;
        self.closed = false;
        self.tcp = false;
        if let Some((ihl, thl)) = tcp_shape(p) {
            let flags = p[ihl + 13];
            let payload = p.len() - ihl - thl;
            if flags & !PSH == ACK && payload > 0 {
                self.tcp = true;
                self.mss = payload;
                self.next_seq = u32::from_be_bytes([p[24], p[25], p[26], p[27]]).wrapping_add(payload as u32);
                self.closed = flags & PSH != 0;
            }
        }
    }

    /// The bytes to write (vnet header and packet), fixed up; the builder
    /// is empty afterwards. `None` when empty.
    pub fn finish(&mut self) -> Option<&[u8]> {
        if self.segs == 0 {
            return None;
        }
        let segs = std::mem::replace(&mut self.segs, 0);
        if segs == 1 {
            // As received: no offload, its checksums are the sender's.
            VnetHdr::default().write(&mut self.buf[..VNET_HDR_LEN]);
            return Some(&self.buf);
        }
        let p = &mut self.buf[VNET_HDR_LEN..];
        let total = p.len();
        let thl = ((p[32] >> 4) as usize) * 4;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = !gso::fold(gso::sum(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        // Checksum partial: the pseudo header's sum, which the kernel completes if it must.
        let pseudo = gso::fold(gso::sum(&p[12..20], 6 + (total - 20) as u32));
        p[36..38].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: (20 + thl) as u16,
            gso_size: self.mss as u16,
            csum_start: 20,
            csum_offset: 16,
        };
        hdr.write(&mut self.buf[..VNET_HDR_LEN]);
        Some(&self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut p =
            vec![0x45, 0, (total >> 8) as u8, total as u8, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 77, 0, 3, 10, 77, 0, 2];
        let c = !gso::fold(gso::sum(&p, 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&[0x13, 0x89, 0x9c, 0x40]);
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&5u32.to_be_bytes());
        p.extend_from_slice(&[0x50, flags, 0x10, 0, 0, 0, 0, 0]);
        p.extend_from_slice(payload);
        let c = !gso::fold(gso::sum(&p[20..], gso::sum(&p[12..20], 6 + (total - 20) as u32)));
        p[36..38].copy_from_slice(&c.to_be_bytes());
        p
    }

    #[test]
    fn contiguous_segments_become_one_super_packet_that_splits_back() {
        let data: Vec<u8> = (0..3500u32).map(|i| (i * 13) as u8).collect();
        let segs =
            [seg(100, &data[..1400], ACK), seg(1500, &data[1400..2800], ACK), seg(2900, &data[2800..], ACK | PSH)];
        let mut g = Gro::new();
        g.start(0, &segs[0]);
        assert!(g.append(0, &segs[1]));
        assert!(g.append(0, &segs[2]));
        assert!(!g.append(0, &seg(3600, b"more", ACK)), "closed after PSH and a short segment");
        let out = g.finish().expect("a packet").to_vec();
        let hdr = VnetHdr::parse(&out).expect("a header");
        assert_eq!((hdr.gso_type, hdr.gso_size, hdr.csum_start, hdr.csum_offset), (GSO_TCPV4, 1400, 20, 16));
        let p = &out[VNET_HDR_LEN..];
        assert_eq!(p.len(), 40 + 3500);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, p.len());
        assert_eq!(gso::fold(gso::sum(&p[..20], 0)), 0xffff, "IP checksum");
        assert_eq!(p[33] & PSH, PSH);
        // The kernel's segmentation of it gives back the segments (checksums complete).
        let (mut back, mut lens) = (Vec::new(), Vec::new());
        gso::segment(&hdr, p, &mut back, &mut lens).expect("split");
        assert_eq!(lens, [1440, 1440, 740]);
        let mut at = 0;
        for (i, l) in lens.iter().enumerate() {
            let s = &back[at..at + l];
            assert_eq!(&s[40..], &segs[i][40..], "payload {i}");
            assert_eq!(s[24..28], segs[i][24..28], "seq {i}");
            assert_eq!(s[36..38], segs[i][36..38], "TCP checksum {i}");
            at += l;
        }
        assert!(g.finish().is_none(), "empty after finish");
    }

    #[test]
    fn only_what_linux_would_merge_is_merged() {
        let mut g = Gro::new();
        let first = seg(0, &[1; 1000], ACK);
        let cases: Vec<(&str, Vec<u8>, usize)> = vec![
            ("a gap in sequence", seg(1001, &[2; 1000], ACK), 0),
            ("a larger segment", seg(1000, &[2; 1200], ACK), 0),
            ("FIN", seg(1000, &[2; 1000], ACK | 0x01), 0),
            ("another network", seg(1000, &[2; 1000], ACK), 1),
            ("no payload", seg(1000, &[], ACK), 0),
            (
                "another ack",
                {
                    let mut p = seg(1000, &[2; 1000], ACK);
                    p[31] ^= 1;
                    p
                },
                0,
            ),
            (
                "another source port",
                {
                    let mut p = seg(1000, &[2; 1000], ACK);
                    p[21] ^= 1;
                    p
                },
                0,
            ),
        ];
        for (what, p, net) in cases {
            g.start(0, &first);
            assert!(!g.append(net, &p), "{what}");
        }
        g.start(0, &first);
        assert!(g.append(0, &seg(1000, &[2; 1000], ACK)), "the next segment");
        // A packet that is not TCP passes alone, untouched.
        let udp = {
            let mut p = seg(0, b"x", ACK);
            p[9] = 17;
            p
        };
        g.start(0, &udp);
        assert!(!g.append(0, &udp));
        assert_eq!(&g.finish().expect("one")[VNET_HDR_LEN..], &udp[..]);
    }
}
