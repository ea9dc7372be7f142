//! The TUN's offload header (`struct virtio_net_hdr`) and the userspace
//! half of TSO/USO: a super-packet read from the TUN is cut into segments
//! no larger than its `gso_size`, each with its own IP and TCP/UDP headers
//! and complete checksums, before each is encrypted. Pure code.
//!
//! Only IPv4 is carried by the encrypted overlay; IPv6 is accepted here too
//! (the split is the same) so that the function is whole, and the datapath
//! drops it later.

/// `sizeof(struct virtio_net_hdr)`: the TUN's default `vnet_hdr_sz`.
pub const VNET_HDR_LEN: usize = 10;

pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
const GSO_ECN: u8 = 0x80;

/// `struct virtio_net_hdr` (little-endian fields, as the TUN writes them
/// on little-endian hosts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b: &[u8; VNET_HDR_LEN] = b.get(..VNET_HDR_LEN)?.try_into().ok()?;
        let u16le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16le(2),
            gso_size: u16le(4),
            csum_start: u16le(6),
            csum_offset: u16le(8),
        })
    }

    pub fn write(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum GsoError {
    /// Headers shorter than they claim, or offsets outside the packet.
    Malformed,
    /// A GSO type this datapath does not offer the kernel.
    Unsupported(u8),
}

/// Appends the segments of `pkt` (one IP packet as read after its
/// `hdr`) to `out`, and each one's length to `lens`. A packet without GSO
/// is one segment, its checksum completed when the kernel left it partial.
pub fn segment(hdr: &VnetHdr, pkt: &[u8], out: &mut Vec<u8>, lens: &mut Vec<usize>) -> Result<(), GsoError> {
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        let start = out.len();
        out.extend_from_slice(pkt);
        if hdr.flags & F_NEEDS_CSUM != 0 {
            complete_csum(&mut out[start..], hdr.csum_start as usize, hdr.csum_offset as usize)?;
        }
        lens.push(pkt.len());
        return Ok(());
    }
    let v4 = match pkt.first().map(|b| b >> 4) {
        Some(4) => true,
        Some(6) => false,
        _ => return Err(GsoError::Malformed),
    };
    let tcp = match gso {
        GSO_TCPV4 | GSO_TCPV6 => true,
        GSO_UDP_L4 => false,
        other => return Err(GsoError::Unsupported(other)),
    };
    let l4 = hdr.csum_start as usize;
    let ip_min = if v4 { 20 } else { 40 };
    if l4 < ip_min || pkt.len() < l4 + if tcp { 20 } else { 8 } {
        return Err(GsoError::Malformed);
    }
    let l4_len = if tcp { ((pkt[l4 + 12] >> 4) as usize) * 4 } else { 8 };
    let hlen = l4 + l4_len;
    if l4_len < if tcp { 20 } else { 8 } || pkt.len() < hlen || hdr.gso_size == 0 {
        return Err(GsoError::Malformed);
    }
    let mss = hdr.gso_size as usize;
    let payload = &pkt[hlen..];
    let n = payload.len().div_ceil(mss).max(1);
    let seq0 = if tcp { u32::from_be_bytes([pkt[l4 + 4], pkt[l4 + 5], pkt[l4 + 6], pkt[l4 + 7]]) } else { 0 };
    let id0 = if v4 { u16::from_be_bytes([pkt[4], pkt[5]]) } else { 0 };
    for i in 0..n {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let start = out.len();
        out.extend_from_slice(&pkt[..hlen]);
        out.extend_from_slice(chunk);
        let seg = &mut out[start..];
        let total = seg.len();
        if v4 {
            seg[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            seg[10..12].copy_from_slice(&[0, 0]);
            let ihl = ((seg[0] & 0x0f) as usize) * 4;
            let c = !fold(sum(&seg[..ihl], 0));
            seg[10..12].copy_from_slice(&c.to_be_bytes());
        } else {
            seg[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
        }
        let l4_total = total - l4;
        if tcp {
            let seq = seq0.wrapping_add((i * mss) as u32);
            seg[l4 + 4..l4 + 8].copy_from_slice(&seq.to_be_bytes());
            if i + 1 < n {
                seg[l4 + 13] &= !(0x01 | 0x08); // FIN, PSH: only on the last segment
            }
            if i > 0 {
                seg[l4 + 13] &= !0x80; // CWR: only on the first
            }
        } else {
            seg[l4 + 4..l4 + 6].copy_from_slice(&(l4_total as u16).to_be_bytes());
        }
        let csum_at = l4 + if tcp { 16 } else { 6 };
        seg[csum_at..csum_at + 2].copy_from_slice(&[0, 0]);
        let proto = if tcp { 6 } else { 17 };
        let c = !fold(sum(&seg[l4..], pseudo(seg, v4, proto, l4_total)));
        let c = if !tcp && c == 0 { 0xffff } else { c };
        seg[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        lens.push(total);
    }
    Ok(())
}

/// Finishes a checksum the kernel left partial: the field at
/// `start + offset` holds the pseudo-header sum; the sum from `start` to
/// the end, complemented, replaces it.
pub fn complete_csum(pkt: &mut [u8], start: usize, offset: usize) -> Result<(), GsoError> {
    if start + offset + 2 > pkt.len() {
        return Err(GsoError::Malformed);
    }
    let c = !fold(sum(&pkt[start..], 0));
    pkt[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// The pseudo-header's sum for a segment whose L4 part is `l4_len` bytes.
fn pseudo(seg: &[u8], v4: bool, proto: u8, l4_len: usize) -> u32 {
    let addrs = if v4 { &seg[12..20] } else { &seg[8..40] };
    sum(addrs, proto as u32 + l4_len as u32)
}

/// One's-complement sum of big-endian 16-bit words (odd tail padded).
pub fn sum(data: &[u8], init: u32) -> u32 {
    let mut acc = init as u64;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [last] = words.remainder() {
        acc += (*last as u64) << 8;
    }
    while acc >> 32 != 0 {
        acc = (acc & 0xffff_ffff) + (acc >> 32);
    }
    acc as u32
}

pub fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: [u8; 4] = [10, 0, 9, 2];
    const DST: [u8; 4] = [10, 0, 9, 3];

    /// An IPv4 packet with a TCP (or UDP) header and `payload`, its L4
    /// checksum left partial as the kernel leaves it (the pseudo-header sum).
    fn v4(tcp: bool, payload: &[u8], flags: u8) -> Vec<u8> {
        let l4 = if tcp { 20 } else { 8 };
        let total = 20 + l4 + payload.len();
        let mut p = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, if tcp { 6 } else { 17 }, 0, 0];
        p[2..4].copy_from_slice(&((total.min(65535)) as u16).to_be_bytes());
        p.extend_from_slice(&SRC);
        p.extend_from_slice(&DST);
        let ip = !fold(sum(&p, 0));
        p[10..12].copy_from_slice(&ip.to_be_bytes());
        if tcp {
            p.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90]); // ports 40000 → 8080
            p.extend_from_slice(&1_000_000u32.to_be_bytes());
            p.extend_from_slice(&7u32.to_be_bytes()); // ack
            p.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        } else {
            p.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90, 0, 0, 0, 0]);
        }
        p.extend_from_slice(payload);
        let partial = fold(sum(&p[12..20], (if tcp { 6 } else { 17 }) + (total - 20) as u32));
        let at = 20 + if tcp { 16 } else { 6 };
        p[at..at + 2].copy_from_slice(&partial.to_be_bytes());
        p
    }

    /// The receiver's checks: IP header sum and L4 sum over the pseudo header are 0xffff.
    fn valid(seg: &[u8]) -> bool {
        let ihl = ((seg[0] & 0xf) as usize) * 4;
        let proto = seg[9];
        fold(sum(&seg[..ihl], 0)) == 0xffff
            && fold(sum(&seg[ihl..], sum(&seg[12..20], proto as u32 + (seg.len() - ihl) as u32))) == 0xffff
    }

    fn split(hdr: VnetHdr, pkt: &[u8]) -> Vec<Vec<u8>> {
        let (mut out, mut lens) = (Vec::new(), Vec::new());
        segment(&hdr, pkt, &mut out, &mut lens).expect("segmented");
        let mut at = 0;
        lens.iter()
            .map(|l| {
                at += l;
                out[at - l..at].to_vec()
            })
            .collect()
    }

    #[test]
    fn tcp_v4_super_packet_becomes_mss_segments() {
        let payload: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let pkt = v4(true, &payload, 0x18 | 0x01 | 0x80); // PSH|ACK|FIN|CWR
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1380,
            csum_start: 20,
            csum_offset: 16,
        };
        let segs = split(hdr, &pkt);
        assert_eq!(segs.iter().map(|s| s.len() - 40).collect::<Vec<_>>(), [1380, 1380, 1240]);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(valid(s), "segment {i} has bad checksums");
            assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len(), "IP total length");
            assert_eq!(u16::from_be_bytes([s[4], s[5]]), 0x1234 + i as u16, "IP id");
            let seq = u32::from_be_bytes([s[24], s[25], s[26], s[27]]);
            assert_eq!(seq, 1_000_000 + (i * 1380) as u32);
            let flags = s[33];
            assert_eq!(flags & 0x01 != 0, i == 2, "FIN only on the last");
            assert_eq!(flags & 0x08 != 0, i == 2, "PSH only on the last");
            assert_eq!(flags & 0x80 != 0, i == 0, "CWR only on the first");
            assert_eq!(flags & 0x10, 0x10, "ACK on all");
            joined.extend_from_slice(&s[40..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn udp_uso_segments_each_get_a_udp_header() {
        let payload: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
        let pkt = v4(false, &payload, 0);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 28,
            gso_size: 1000,
            csum_start: 20,
            csum_offset: 6,
        };
        let segs = split(hdr, &pkt);
        assert_eq!(segs.iter().map(|s| s.len()).collect::<Vec<_>>(), [1028, 1028, 528]);
        for s in &segs {
            assert!(valid(s));
            assert_eq!(u16::from_be_bytes([s[24], s[25]]) as usize, s.len() - 20, "UDP length");
        }
        assert_eq!(segs.iter().flat_map(|s| s[28..].to_vec()).collect::<Vec<_>>(), payload);
    }

    #[test]
    fn a_plain_packet_gets_its_partial_checksum_completed() {
        let pkt = v4(true, b"hello", 0x18);
        let hdr = VnetHdr { flags: F_NEEDS_CSUM, csum_start: 20, csum_offset: 16, ..Default::default() };
        let segs = split(hdr, &pkt);
        assert_eq!(segs.len(), 1);
        assert!(valid(&segs[0]));
        // Without NEEDS_CSUM the packet passes as it is.
        assert_eq!(split(VnetHdr::default(), &pkt), vec![pkt]);
    }

    #[test]
    fn malformed_or_unknown_is_refused() {
        let pkt = v4(true, &[0; 3000], 0x10);
        let mut out = (Vec::new(), Vec::new());
        let hdr =
            VnetHdr { flags: 1, gso_type: GSO_TCPV4, gso_size: 1000, csum_start: 2000, csum_offset: 16, hdr_len: 0 };
        assert_eq!(segment(&hdr, &pkt, &mut out.0, &mut out.1), Err(GsoError::Malformed));
        let hdr = VnetHdr { gso_type: 3, gso_size: 1000, csum_start: 20, ..hdr };
        assert_eq!(segment(&hdr, &pkt, &mut out.0, &mut out.1), Err(GsoError::Unsupported(3)));
        let hdr = VnetHdr { gso_type: GSO_TCPV4, gso_size: 0, ..hdr };
        assert_eq!(segment(&hdr, &pkt, &mut out.0, &mut out.1), Err(GsoError::Malformed));
    }

    #[test]
    fn vnet_hdr_round_trips() {
        let h = VnetHdr { flags: 1, gso_type: 1, hdr_len: 54, gso_size: 1448, csum_start: 34, csum_offset: 16 };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Some(h));
    }
}
