//! An ARP probe (RFC 5227 §2.1): before an address goes up on a macvlan
//! link, ask the LAN whether anyone has it. A probe is an ARP request with
//! no sender address (so no one learns from it) for the address itself;
//! whoever holds it answers, and so does anyone probing for it at the same
//! moment. Used by `macvlan_sys` for networks made with `-o arp-probe=true`
//! (the LAN's own hosts are outside the managers' allocation). The caller
//! runs `probe` on a thread inside the link's namespace (`sys::in_netns`).

// A packet socket has no safe wrapper in rustix: socket, bind, sendto, poll and recv here.
#![allow(unsafe_code)]

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

type Mac = [u8; 6];

/// The ARP request that probes for `ip` from `mac` (28 bytes: Ethernet, IPv4,
/// a request, sender `mac` with no address, target `ip`).
pub fn probe_packet(mac: Mac, ip: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    // Sender protocol address 0.0.0.0 (14..18), target hardware address 0 (18..24).
    p[24..28].copy_from_slice(&ip.octets());
    p
}

/// The MAC of whoever an ARP packet shows holding (or probing for) `ip`,
/// when that is not us (`mac`): a reply or announcement from `ip`, or
/// another's probe for it.
pub fn conflict(packet: &[u8], mac: Mac, ip: Ipv4Addr) -> Option<Mac> {
    if packet.len() < 28 || packet[0..2] != [0, 1] || packet[2..4] != [8, 0] || packet[4] != 6 || packet[5] != 4 {
        return None;
    }
    let op = u16::from_be_bytes([packet[6], packet[7]]);
    let sha: Mac = packet[8..14].try_into().ok()?;
    let spa = Ipv4Addr::new(packet[14], packet[15], packet[16], packet[17]);
    let tpa = Ipv4Addr::new(packet[24], packet[25], packet[26], packet[27]);
    if sha == mac {
        return None;
    }
    let holds = spa == ip;
    let probes = op == 1 && spa.is_unspecified() && tpa == ip;
    (holds || probes).then_some(sha)
}

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

/// Probes `tries` times for `ip` on link `ifindex` (this thread's
/// namespace, the link up with no address), from `mac`, waiting `wait`
/// after each probe; the MAC of whoever answered, if anyone did.
pub fn probe(ifindex: u32, mac: Mac, ip: Ipv4Addr, tries: u32, wait: Duration) -> io::Result<Option<Mac>> {
    let proto = (libc::ETH_P_ARP as u16).to_be();
    // SAFETY: socket takes plain integers; the descriptor it returns is owned below.
    let fd = check(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, proto.into()) })?;
    // SAFETY: fd was just returned by socket and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_ll is plain data; all zeroes is a valid value.
    let mut at: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    at.sll_family = libc::AF_PACKET as u16;
    at.sll_protocol = proto;
    at.sll_ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("interface index out of range"))?;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `at` is a valid sockaddr_ll of `len` bytes that outlives the call.
    check(unsafe { libc::bind(fd.as_raw_fd(), (&raw const at).cast(), len) })?;
    let mut to = at;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let packet = probe_packet(mac, ip);
    let mut buf = [0u8; 128];
    for _ in 0..tries {
        // SAFETY: `packet` and `to` are valid for the lengths given and outlive the call.
        check(unsafe {
            libc::sendto(fd.as_raw_fd(), packet.as_ptr().cast(), packet.len(), 0, (&raw const to).cast(), len)
        } as libc::c_int)?;
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd that outlives the call.
            if check(unsafe { libc::poll(&raw mut pfd, 1, ms) })? == 0 {
                break;
            }
            // SAFETY: `buf` is valid for writes of its length and outlives the call.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if let Some(theirs) = conflict(&buf[..n as usize], mac, ip) {
                return Ok(Some(theirs));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Mac = [2, 0x42, 10, 97, 0, 196];
    const THEIRS: Mac = [0xaa, 0xbb, 0xcc, 0, 0, 1];

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// An ARP packet: op, sender (MAC, address), target address.
    fn arp(op: u16, sha: Mac, spa: &str, tpa: &str) -> Vec<u8> {
        let mut p = probe_packet(sha, ip(tpa)).to_vec();
        p[6..8].copy_from_slice(&op.to_be_bytes());
        p[14..18].copy_from_slice(&ip(spa).octets());
        p
    }

    #[test]
    fn a_probe_asks_for_the_address_without_giving_one() {
        let p = probe_packet(OURS, ip("10.97.0.196"));
        assert_eq!(&p[..8], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(
            (&p[8..14], &p[14..18], &p[18..24], &p[24..28]),
            (&OURS[..], &[0u8; 4][..], &[0u8; 6][..], &[10, 97, 0, 196][..])
        );
    }

    #[test]
    fn who_holds_or_probes_for_the_address_is_a_conflict_and_we_are_not() {
        let want = ip("10.97.0.196");
        let table = [
            (arp(2, THEIRS, "10.97.0.196", "0.0.0.0"), Some(THEIRS)), // its reply to our probe
            (arp(1, THEIRS, "10.97.0.196", "10.97.0.196"), Some(THEIRS)), // its announcement
            (arp(1, THEIRS, "0.0.0.0", "10.97.0.196"), Some(THEIRS)), // it probes for it too
            (arp(1, THEIRS, "10.97.0.5", "10.97.0.196"), None),       // someone asking who has it
            (arp(2, THEIRS, "10.97.0.9", "10.97.0.5"), None),         // about another address
            (arp(1, OURS, "0.0.0.0", "10.97.0.196"), None),           // our own probe, looped back
            (arp(2, THEIRS, "10.97.0.196", "0.0.0.0")[..20].to_vec(), None), // cut short
        ];
        for (packet, want_mac) in table {
            assert_eq!(conflict(&packet, OURS, want), want_mac, "{packet:?}");
        }
        let mut not_ipv4 = arp(2, THEIRS, "10.97.0.196", "0.0.0.0");
        not_ipv4[2] = 0x86;
        assert_eq!(conflict(&not_ipv4, OURS, want), None);
    }
}
