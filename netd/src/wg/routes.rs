//! Which peer an outgoing packet goes to, and whether a decrypted packet
//! may be delivered: WireGuard's cryptokey routing, kept in netd's table.
//! Encrypted subnets are disjoint cluster-wide, so an address names its
//! network. Pure code.

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// The address maps of one configuration: this host's endpoints (address →
/// network) and every peer's (address → peer, network).
#[derive(Debug, Default)]
pub struct Routes {
    local: HashMap<Ipv4Addr, usize>,
    remote: HashMap<Ipv4Addr, (usize, usize)>,
}

/// Why a packet was not passed on.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not an IPv4 packet, or too short to be one.
    NotIpv4,
    /// The destination is not one of this host's endpoints.
    NotLocal,
    /// The source is not one of the sending peer's endpoints on the
    /// destination's network: dropped and counted as spoofed.
    Spoofed,
    /// No peer owns the destination on the packet's network.
    NoPeer,
}

/// The source and destination of an IPv4 packet.
pub fn addrs(pkt: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    let a = |i: usize| Ipv4Addr::new(pkt[i], pkt[i + 1], pkt[i + 2], pkt[i + 3]);
    Some((a(12), a(16)))
}

impl Routes {
    /// `local[n]`: this host's endpoints on network `n`; `peers[p]`: peer
    /// `p`'s endpoints as (network index, address). An address claimed twice
    /// keeps its first owner (a local one first).
    pub fn new(local: &[Vec<Ipv4Addr>], peers: &[Vec<(usize, Ipv4Addr)>]) -> Routes {
        let mut r = Routes::default();
        for (n, addrs) in local.iter().enumerate() {
            for a in addrs {
                r.local.entry(*a).or_insert(n);
            }
        }
        for (p, addrs) in peers.iter().enumerate() {
            for (n, a) in addrs {
                if !r.local.contains_key(a) {
                    r.remote.entry(*a).or_insert((p, *n));
                }
            }
        }
        r
    }

    /// The network a packet decrypted from `peer` is written to: its
    /// destination must be local and its source that peer's on the same network.
    pub fn accept(&self, peer: usize, pkt: &[u8]) -> Result<usize, Refusal> {
        let (src, dst) = addrs(pkt).ok_or(Refusal::NotIpv4)?;
        let net = *self.local.get(&dst).ok_or(Refusal::NotLocal)?;
        match self.remote.get(&src) {
            Some(&(p, n)) if p == peer && n == net => Ok(net),
            _ => Err(Refusal::Spoofed),
        }
    }

    /// The peer a packet read from network `net`'s TUN goes to.
    pub fn peer_for(&self, net: usize, pkt: &[u8]) -> Result<usize, Refusal> {
        let (_, dst) = addrs(pkt).ok_or(Refusal::NotIpv4)?;
        match self.remote.get(&dst) {
            Some(&(p, n)) if n == net => Ok(p),
            _ => Err(Refusal::NoPeer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p
    }

    /// Two networks: n0 10.0.9.0/24, n1 10.0.10.0/24. Local: .2 on each.
    /// Peer 0 (node b): 10.0.9.3 and 10.0.10.3; peer 1 (node c): 10.0.9.4.
    fn routes() -> Routes {
        Routes::new(
            &[vec![[10, 0, 9, 2].into()], vec![[10, 0, 10, 2].into()]],
            &[vec![(0, [10, 0, 9, 3].into()), (1, [10, 0, 10, 3].into())], vec![(0, [10, 0, 9, 4].into())]],
        )
    }

    #[test]
    fn anti_spoof_table() {
        let r = routes();
        type Case = (usize, [u8; 4], [u8; 4], Result<usize, Refusal>);
        let cases: &[Case] = &[
            (0, [10, 0, 9, 3], [10, 0, 9, 2], Ok(0)),
            (0, [10, 0, 10, 3], [10, 0, 10, 2], Ok(1)),
            (1, [10, 0, 9, 4], [10, 0, 9, 2], Ok(0)),
            // another node's source
            (0, [10, 0, 9, 4], [10, 0, 9, 2], Err(Refusal::Spoofed)),
            (1, [10, 0, 9, 3], [10, 0, 9, 2], Err(Refusal::Spoofed)),
            // the peer's own address, but on the other network than the destination
            (0, [10, 0, 9, 3], [10, 0, 10, 2], Err(Refusal::Spoofed)),
            // a source that is nobody's, or this host's own
            (0, [192, 168, 1, 1], [10, 0, 9, 2], Err(Refusal::Spoofed)),
            (0, [10, 0, 9, 2], [10, 0, 9, 2], Err(Refusal::Spoofed)),
            // a destination that is not local: the host, another peer, outside
            (0, [10, 0, 9, 3], [10, 0, 9, 4], Err(Refusal::NotLocal)),
            (0, [10, 0, 9, 3], [10, 199, 0, 1], Err(Refusal::NotLocal)),
        ];
        for (peer, src, dst, want) in cases {
            assert_eq!(&r.accept(*peer, &pkt(*src, *dst)), want, "peer {peer} {src:?} → {dst:?}");
        }
        assert_eq!(r.accept(0, &[0x60; 40]), Err(Refusal::NotIpv4));
        assert_eq!(r.accept(0, &[0x45; 10]), Err(Refusal::NotIpv4));
    }

    #[test]
    fn peer_lookup() {
        let r = routes();
        assert_eq!(r.peer_for(0, &pkt([10, 0, 9, 2], [10, 0, 9, 3])), Ok(0));
        assert_eq!(r.peer_for(0, &pkt([10, 0, 9, 2], [10, 0, 9, 4])), Ok(1));
        assert_eq!(r.peer_for(1, &pkt([10, 0, 10, 2], [10, 0, 10, 3])), Ok(0));
        // read from n1's TUN but addressed into n0: not sent
        assert_eq!(r.peer_for(1, &pkt([10, 0, 10, 2], [10, 0, 9, 3])), Err(Refusal::NoPeer));
        assert_eq!(r.peer_for(0, &pkt([10, 0, 9, 2], [8, 8, 8, 8])), Err(Refusal::NoPeer));
    }

    #[test]
    fn a_local_address_is_never_a_peers() {
        let r = Routes::new(&[vec![[10, 0, 9, 2].into()]], &[vec![(0, [10, 0, 9, 2].into())]]);
        assert_eq!(r.peer_for(0, &pkt([10, 0, 9, 2], [10, 0, 9, 2])), Err(Refusal::NoPeer));
    }
}
