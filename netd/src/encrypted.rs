//! A node's encrypted overlays, between the view and the WireGuard
//! datapath (`wg`): this host's static keys and their epoch (a view past
//! it rotates them; the previous key is kept for a grace period so peers
//! that know only it still handshake), the datapath started on the host's
//! data address and the cluster's WireGuard port once an encrypted network
//! is in the view (stopped when none is), and its configuration derived
//! from the view and the local endpoints (`configuration`, pure).
//!
//! The overlay planner makes each encrypted network's sandbox (`br0`,
//! the persistent TUN `wg0`, a /32 route per remote endpoint) before this
//! opens the TUN's queues, so the order within a pass is: sandboxes, then
//! `Encryption::follow`, which reconfigures the datapath when the view
//! changed what it carries or when a TUN it holds was made again.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use shoal_proto::net::{NetView, WgKey};
use shoal_proto::network::NodeKeys;

use crate::model::{EndpointSpec, sandbox_name};
use crate::overlay;
use crate::wg::{Datapath, DatapathConfig, PeerStats, StaticKeys, Steer, WgNetwork, WgPeer};

/// How long the previous key answers handshakes after a rotation: by then
/// every peer has had many views with the new one.
pub const GRACE: Duration = Duration::from_secs(600);

/// The datapath's configuration for `view`: each encrypted network with
/// its sandbox's TUN and this host's addresses on it (the view's endpoints
/// on this node and the local endpoints netd holds), and each peer with a
/// key, at its data address and `view.wg_port`, with its endpoints on the
/// encrypted networks. Peers without a key (not said yet) are left out:
/// nothing is routed to them either.
pub fn configuration(view: &NetView, local: &[EndpointSpec], sandboxes: &Path) -> (Vec<WgNetwork>, Vec<WgPeer>) {
    let encrypted: BTreeMap<&str, _> =
        view.networks.iter().filter(|n| n.encrypted).map(|n| (n.id.as_str(), n)).collect();
    let networks = encrypted
        .keys()
        .map(|id| {
            let mut mine: Vec<Ipv4Addr> = view
                .endpoints
                .iter()
                .filter(|e| e.network == *id && e.node == view.node)
                .map(|e| e.addr)
                .chain(local.iter().filter(|e| e.network == *id).map(|e| e.ip))
                .collect();
            mine.sort();
            mine.dedup();
            WgNetwork {
                id: id.to_string(),
                ns: sandboxes.join(sandbox_name(id)),
                tun: overlay::TUN.into(),
                local: mine,
            }
        })
        .collect();
    let peers = view
        .peers
        .iter()
        .filter(|p| p.node != view.node)
        .filter_map(|p| {
            let key = p.wg_key?;
            let mut addrs: Vec<(String, Ipv4Addr)> = view
                .endpoints
                .iter()
                .filter(|e| e.node == p.node && encrypted.contains_key(e.network.as_str()))
                .map(|e| (e.network.clone(), e.addr))
                .collect();
            addrs.sort();
            Some(WgPeer {
                node: p.node.clone(),
                public: key.0,
                prev_public: p.wg_key_prev.map(|k| k.0),
                endpoint: SocketAddrV4::new(p.data_addr, view.wg_port),
                addrs,
            })
        })
        .filter(|p| !p.addrs.is_empty())
        .collect();
    (networks, peers)
}

/// What a view does to the keys made for epoch `have` (`None`: none made
/// for any epoch yet, as on a new node, whose first key is simply the
/// view's epoch's).
#[derive(Debug, PartialEq, Eq)]
pub enum KeyStep {
    Keep,
    /// The first view: the key made at start is the epoch's.
    Adopt(u64),
    Rotate(u64),
}

pub fn key_step(have: Option<u64>, view_epoch: u64) -> KeyStep {
    match have {
        None => KeyStep::Adopt(view_epoch),
        Some(e) if view_epoch > e => KeyStep::Rotate(view_epoch),
        Some(_) => KeyStep::Keep,
    }
}

/// This host's keys and datapath.
pub struct Encryption {
    /// Where the key file lives (netd's root).
    dir: PathBuf,
    keys: StaticKeys,
    /// The epoch the keys were made for (`None` before the first view).
    epoch: Option<u64>,
    datapath: Option<(SocketAddrV4, Datapath)>,
    /// What the running datapath was last configured with, without error:
    /// most views change only services' backends, which it does not follow.
    configured: Option<(Vec<WgNetwork>, Vec<WgPeer>)>,
    /// How the datapath shares packets out among its workers.
    steer: Steer,
}

impl Encryption {
    /// Loads this host's keys from `dir`, making them on first start.
    pub fn open(dir: &Path, epoch: Option<u64>) -> std::io::Result<Encryption> {
        let keys = StaticKeys::load_or_create(dir)?;
        Ok(Encryption {
            dir: dir.to_path_buf(),
            keys,
            epoch,
            datapath: None,
            configured: None,
            steer: Steer::default(),
        })
    }

    /// How the next datapath started shares packets out among its workers.
    pub fn set_steering(&mut self, steer: Steer) {
        self.steer = steer;
    }

    /// The public keys as the managers hear them.
    pub fn node_keys(&self) -> NodeKeys {
        NodeKeys {
            wg_key: Some(WgKey(self.keys.public())),
            wg_key_prev: self.keys.prev_public().map(WgKey),
            key_epoch: self.epoch.unwrap_or(0),
        }
    }

    /// The epoch the keys are for (what netd saves in its state).
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Makes the keys and the datapath follow `view` (after the pass made
    /// the sandboxes): a rotation when the view's epoch passed the keys',
    /// the previous key dropped once the grace period is over, the datapath
    /// started, moved or stopped, and configured. Errors are returned for
    /// the pass's failures; what could be done is done.
    pub fn follow(&mut self, view: &NetView, local: &[EndpointSpec], sandboxes: &Path) -> Vec<String> {
        let mut errors = Vec::new();
        match key_step(self.epoch, view.key_epoch) {
            KeyStep::Keep => {}
            KeyStep::Adopt(e) => self.epoch = Some(e),
            KeyStep::Rotate(e) => match self.keys.rotate(&self.dir) {
                Ok(()) => {
                    tracing::info!(epoch = e, "rotated this host's WireGuard key; the old one answers for a while");
                    self.epoch = Some(e);
                    self.push_keys();
                }
                Err(e) => errors.push(format!("rotating the WireGuard key: {e}")),
            },
        }
        let expired = SystemTime::now().duration_since(self.keys.rotated_at).is_ok_and(|d| d >= GRACE);
        if self.keys.prev.is_some() && expired {
            match self.keys.drop_prev(&self.dir) {
                Ok(()) => self.push_keys(),
                Err(e) => errors.push(format!("dropping the previous WireGuard key: {e}")),
            }
        }
        let (networks, peers) = configuration(view, local, sandboxes);
        if networks.is_empty() {
            self.configured = None;
            if let Some((at, _)) = self.datapath.take() {
                tracing::info!(%at, "no encrypted network here any more: WireGuard stopped");
            }
            return errors;
        }
        if view.wg_port == 0 {
            errors.push("the managers gave no WireGuard port (managers older than encrypted networks?)".into());
            return errors;
        }
        let listen = SocketAddrV4::new(view.data_addr, view.wg_port);
        if self.datapath.as_ref().is_some_and(|(at, _)| *at != listen) {
            self.datapath = None; // the data address or port moved
        }
        if self.datapath.is_none() {
            self.configured = None;
            let cfg = DatapathConfig { listen, workers: 0, offload: true, steer: self.steer };
            match Datapath::start(cfg, self.keys.clone()) {
                Ok(d) => {
                    tracing::info!(%listen, "WireGuard datapath started");
                    self.datapath = Some((listen, d));
                }
                Err(e) => {
                    errors.push(format!("starting WireGuard on {listen}: {e}"));
                    return errors;
                }
            }
        }
        let wanted = (networks, peers);
        // A TUN made again (a network removed and created, a sandbox remade by a resync)
        // under the same configuration: its queues are reopened.
        if let Some((_, d)) = &self.datapath
            && (self.configured.as_ref() != Some(&wanted) || !d.stale_networks().is_empty())
        {
            match d.configure(wanted.0.clone(), wanted.1.clone()) {
                Ok(()) => self.configured = Some(wanted),
                Err(e) => {
                    self.configured = None;
                    errors.push(format!("configuring WireGuard: {e}"));
                }
            }
        }
        errors
    }

    fn push_keys(&self) {
        if let Some((_, d)) = &self.datapath {
            d.set_keys(self.keys.clone());
        }
    }

    /// Each peer's session figures (empty without an encrypted network).
    pub fn stats(&self) -> Vec<PeerStats> {
        self.datapath.as_ref().map(|(_, d)| d.stats()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::net::{OverlayEndpoint, OverlayNetwork, Peer};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(id: &str, encrypted: bool) -> OverlayNetwork {
        OverlayNetwork {
            id: id.into(),
            name: id.into(),
            vni: 4100,
            subnet: ip("10.10.0.0"),
            prefix: 24,
            gateway: ip("10.10.0.1"),
            mtu: 1420,
            internal: false,
            encrypted,
            macvlan: None,
        }
    }

    fn ep(id: &str, network: &str, addr: &str, node: &str) -> OverlayEndpoint {
        OverlayEndpoint { id: id.into(), network: network.into(), addr: ip(addr), node: node.into(), names: vec![] }
    }

    fn peer(node: &str, addr: &str, key: Option<u8>) -> Peer {
        Peer { node: node.into(), data_addr: ip(addr), wg_key: key.map(|k| WgKey([k; 32])), wg_key_prev: None }
    }

    #[test]
    fn the_datapath_carries_encrypted_networks_to_peers_with_keys_only() {
        let sec = "aaaaaaaaaaaa0001";
        let plain = "bbbbbbbbbbbb0002";
        let mut n3 = peer("n3", "10.98.0.13", Some(3));
        n3.wg_key_prev = Some(WgKey([30; 32]));
        let view = NetView {
            node: "n1".into(),
            data_addr: ip("10.98.0.11"),
            networks: vec![net(sec, true), net(plain, false)],
            peers: vec![peer("n2", "10.98.0.12", None), n3, peer("n4", "10.98.0.14", Some(4))],
            endpoints: vec![
                ep("t1", sec, "10.10.0.2", "n1"),
                ep("t2", sec, "10.10.0.3", "n2"),
                ep("t3", sec, "10.10.0.4", "n3"),
                ep("t5", sec, "10.10.0.5", "n3"),
                ep("p4", plain, "10.20.0.4", "n4"),
                ep("p3", plain, "10.20.0.3", "n3"),
            ],
            services: vec![],
            ingress: None,
            wg_port: 51820,
            key_epoch: 0,
        };
        let attached = EndpointSpec {
            container: "c1".into(),
            name: "c1".into(),
            aliases: vec![],
            network: sec.into(),
            ip: ip("10.10.0.9"),
            netns: "/run/netns/c1".into(),
            ifname: "eth1".into(),
            ports: vec![],
            dns: vec![],
        };
        let (networks, peers) = configuration(&view, &[attached], Path::new("/run/shoal/netd/sandboxes"));
        assert_eq!(
            networks,
            vec![WgNetwork {
                id: sec.into(),
                ns: PathBuf::from("/run/shoal/netd/sandboxes").join(sandbox_name(sec)),
                tun: "wg0".into(),
                local: vec![ip("10.10.0.2"), ip("10.10.0.9")],
            }],
            "the plain network is VXLAN's, not WireGuard's"
        );
        assert_eq!(
            peers,
            vec![WgPeer {
                node: "n3".into(),
                public: [3; 32],
                prev_public: Some([30; 32]),
                endpoint: "10.98.0.13:51820".parse().unwrap(),
                addrs: vec![(sec.into(), ip("10.10.0.4")), (sec.into(), ip("10.10.0.5"))],
            }],
            "n2 has no key yet, n4 nothing encrypted; n3's plain endpoint is not WireGuard's to carry"
        );
    }

    #[test]
    fn a_view_past_the_keys_epoch_rotates_them_and_the_first_view_adopts_its_epoch() {
        assert_eq!(key_step(None, 4), KeyStep::Adopt(4));
        assert_eq!(key_step(Some(4), 4), KeyStep::Keep);
        assert_eq!(key_step(Some(4), 3), KeyStep::Keep, "an older manager's view does not turn keys back");
        assert_eq!(key_step(Some(4), 5), KeyStep::Rotate(5));
    }
}
