//! The TUN device of an encrypted network (`wg0` in its sandbox): made
//! persistent so that it, and the planner's routes into it, outlive netd;
//! while no datapath holds a queue, what is routed into it is dropped
//! (fail closed).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use super::sys;

/// The offload bits `open_queues` reports.
pub const CSUM: u32 = sys::TUN_F_CSUM;
pub const TSO4: u32 = sys::TUN_F_TSO4;
pub const USO: u32 = sys::TUN_F_USO4 | sys::TUN_F_USO6;

const BASE_FLAGS: i16 = sys::IFF_TUN | sys::IFF_NO_PI | sys::IFF_MULTI_QUEUE;

/// The offloads asked of the kernel, most needed first: checksum, TCP
/// segmentation for IPv4 (the encrypted overlay carries IPv4 only, so the
/// kernel segments IPv6 TCP itself), UDP segmentation (which the kernel
/// takes for both families at once or not at all; IPv6 is dropped later).
const OFFLOADS: [u32; 3] = [sys::TUN_F_CSUM, sys::TUN_F_TSO4, sys::TUN_F_USO4 | sys::TUN_F_USO6];

/// Makes the persistent TUN `name` in the calling thread's namespace with
/// `mtu`, and brings it up. An existing device is kept (its MTU set).
pub fn create_persistent(name: &str, mtu: u32) -> io::Result<()> {
    let ctx = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| io::Error::new(e.kind(), format!("{what} tun {name}: {e}"))
    };
    if !sys::link_exists(name).map_err(ctx("looking up"))? {
        let fd = sys::tun_attach(name, BASE_FLAGS | sys::IFF_VNET_HDR).map_err(ctx("creating"))?;
        sys::tun_set_persist(fd.as_fd(), true).map_err(ctx("persisting"))?;
    }
    sys::set_mtu_up(name, mtu).map_err(ctx("setting the mtu of"))
}

/// Whether `queue` is still a queue of a device (false once its TUN was deleted).
pub fn attached(queue: BorrowedFd<'_>) -> bool {
    sys::tun_attached(queue)
}

/// Which namespace the file at `ns` is now (its nsfs device and inode), if any.
pub fn namespace_id(ns: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(ns).ok().map(|m| (m.dev(), m.ino()))
}

/// Opens `n` queues of the existing TUN `name` in the namespace at `ns`.
/// With `offload`, each read and write carries a `virtio_net_hdr` and the
/// kernel may hand over TCP/UDP super-packets: the offloads it accepts are
/// kept, bit by bit (the result says which). Without, one plain packet per
/// read or write and no offload at all. With `steering` (a program from
/// `bpf::tun_program`), the program picks each packet's queue; without, the
/// kernel's flow table does (a program a datapath before left is removed:
/// the TUN outlives it).
pub fn open_queues(
    ns: &Path,
    name: &str,
    n: usize,
    offload: bool,
    steering: Option<BorrowedFd<'_>>,
) -> io::Result<(Vec<OwnedFd>, u32)> {
    let name = name.to_string();
    let shown = format!("tun {name} in {}", ns.display());
    crate::sys::in_netns(ns, move || {
        if !sys::link_exists(&name)? {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such device; the planner makes it first"));
        }
        let flags = BASE_FLAGS | if offload { sys::IFF_VNET_HDR } else { 0 };
        let queues = (0..n.max(1)).map(|_| sys::tun_attach(&name, flags)).collect::<io::Result<Vec<_>>>()?;
        let mut accepted = 0;
        if offload {
            for bit in OFFLOADS {
                if sys::tun_set_offload(queues[0].as_fd(), accepted | bit).is_ok() {
                    accepted |= bit;
                } else if bit == sys::TUN_F_CSUM {
                    break; // segmentation needs checksum offload
                }
            }
        }
        sys::tun_set_offload(queues[0].as_fd(), accepted)?;
        if let Err(e) = sys::tun_steer(queues[0].as_fd(), steering) {
            tracing::warn!(error = %e, tun = %name, "wireguard: the TUN's queues by CPU; the kernel's flow table picks");
        }
        Ok((queues, accepted))
    })
    .map_err(|e| io::Error::new(e.kind(), format!("opening {shown}: {e}")))
}
