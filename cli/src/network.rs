//! `shoal network …`: this node's networks, which netd keeps, and on a
//! manager the cluster's networks (`-d overlay`, `-d macvlan`), which the managers keep.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use shoal_proto::network::{ENCRYPTED_OPTION, MTU_OPTION, Network, NetworkSpec, VXLANID_OPTION};
use shoal_proto::pb;
use tonic::Code;

use crate::args::{Cli, Format};
use crate::client;
use crate::output::short;
use crate::output::{col, extra, labels_cell};
use crate::output::{for_each_item, print_listing};

type Engine = shoal_proto::pb::engine_client::EngineClient<tonic::transport::Channel>;
type Control = shoal_proto::pb::control_client::ControlClient<tonic::transport::Channel>;

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    Create(CreateArgs),
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        /// Only what matches KEY=VALUE (a key's values are alternatives): driver, id, name, scope, type.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        #[arg(long, value_parser = Format::parse, default_value = "table")]
        format: Format,
    },
    Inspect {
        /// JSON (the default), or a Go template over each one's JSON (`{{json .}}`).
        #[arg(short, long, value_parser = Format::parse)]
        format: Option<Format>,
        #[arg(required = true)]
        networks: Vec<String>,
    },
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Attach a container to a network (it may be running).
    Connect {
        /// Another name for the container on this network.
        #[arg(long)]
        alias: Vec<String>,
        #[arg(long)]
        ip: Option<String>,
        network: String,
        container: String,
    },
    /// Detach a container from a network.
    Disconnect {
        /// Accepted for Docker's sake: disconnecting never waits.
        #[arg(short, long)]
        force: bool,
        network: String,
        container: String,
    },
    /// Give every node a new WireGuard key for the encrypted overlays, with
    /// no interruption (also done every 30 days); on a manager.
    RotateKeys,
    /// Remove user networks no container uses.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
        #[command(flatten)]
        filters: crate::system::PruneFilters,
    },
}

/// `network create`'s flags (Docker's).
#[derive(clap::Args, Debug)]
#[cfg_attr(test, derive(Default))]
pub struct CreateArgs {
    /// bridge: this node's own network; overlay: a cluster network (on a manager); macvlan:
    /// a cluster network on the hosts' own LAN (on a manager).
    #[arg(short, long, value_enum, default_value_t = Driver::Bridge)]
    driver: Driver,
    #[arg(long)]
    subnet: Option<String>,
    #[arg(long)]
    gateway: Option<String>,
    #[arg(long)]
    ip_range: Option<String>,
    /// Overlay, macvlan: an address of the subnet never handed out, NAME=IP (repeatable;
    /// a router or a host already on a macvlan network's LAN).
    #[arg(long = "aux-address", value_name = "NAME=IP")]
    aux_address: Vec<String>,
    /// No traffic in or out, only between its containers.
    #[arg(long)]
    internal: bool,
    /// Driver options: mtu=N; bridge: icc=false (or com.docker.network.bridge.enable_icc=false);
    /// overlay: encrypted; macvlan: parent=IFACE, host-access=true, arp-probe=true.
    #[arg(short = 'o', long = "opt")]
    opt: Vec<String>,
    /// The MTU of the network's links (also -o mtu=N).
    #[arg(long)]
    mtu: Option<u32>,
    /// Overlay: containers started with `run --network` may join it.
    #[arg(long)]
    attachable: bool,
    /// Overlay: the routing mesh's network, replacing a removed `ingress`.
    #[arg(long)]
    ingress: bool,
    /// Overlay: a label, KEY=VALUE (repeatable).
    #[arg(long)]
    label: Vec<String>,
    /// Docker's per-node macvlan config network: refused (Shoal hands out
    /// macvlan addresses cluster-wide; see `-d macvlan`).
    #[arg(long)]
    config_only: bool,
    /// Docker's macvlan network made from a config network: refused (see --config-only).
    #[arg(long)]
    config_from: Option<String>,
    /// swarm (overlay, macvlan: the only scope they have) or local (bridge).
    #[arg(long)]
    scope: Option<String>,
    /// Docker's IPv6 network: refused (Shoal's networks are IPv4); `--ipv6=false` is accepted.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    ipv6: Option<bool>,
    /// Docker's IPAM driver: only `default` (Shoal's own).
    #[arg(long)]
    ipam_driver: Option<String>,
    name: String,
}

/// `network create --driver`: bridge networks live on one host, overlays
/// and macvlan networks span the cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Driver {
    #[default]
    Bridge,
    Overlay,
    Macvlan,
}

/// Docker's answer to macvlan in a swarm (a `--config-only` network per
/// node with its own slice of the range, then a `--config-from` network)
/// is not needed here, and `--scope` has one answer per driver.
fn docker_recipes(a: &CreateArgs) -> anyhow::Result<()> {
    let driver = a.driver;
    if a.ipv6 == Some(true) {
        bail!("IPv6 networks are not supported: Shoal's networks are IPv4 (leave out --ipv6)");
    }
    if let Some(d) = a.ipam_driver.as_deref().filter(|d| *d != "default") {
        bail!("IPAM driver {d:?} is not supported: Shoal hands out addresses itself (leave out --ipam-driver)");
    }
    if a.config_only || a.config_from.is_some() {
        bail!(
            "--config-only and --config-from are not needed: Shoal hands out macvlan addresses from one \
             cluster-wide range, so no node needs its own config network. Create the network once on a \
             manager with -d macvlan --subnet S --gateway G [--ip-range R] -o parent=IFACE, and give a node \
             whose interface is named otherwise the label: shoal node update --label-add shoal.net.NAME.parent=IFACE NODE"
        );
    }
    match (a.scope.as_deref(), driver) {
        (None, _) | (Some("local"), Driver::Bridge) | (Some("swarm"), Driver::Overlay | Driver::Macvlan) => Ok(()),
        (Some("swarm" | "global"), Driver::Bridge) => {
            bail!(
                "a bridge network is this node's own (scope local): for a cluster network use -d overlay or -d macvlan"
            )
        }
        (Some("local"), _) => bail!(
            "{} networks are cluster networks (scope swarm): leave out --scope local",
            if driver == Driver::Macvlan { "macvlan" } else { "overlay" }
        ),
        (Some(other), _) => bail!("invalid --scope {other:?}: use swarm (overlay, macvlan) or local (bridge)"),
    }
}

/// The flags of `network create -d overlay|macvlan` as the spec the
/// managers store, checked once. An overlay takes `-o mtu=N` and
/// `-o encrypted`; a macvlan network `-o mtu=N`, `-o parent=IFACE`,
/// `-o host-access=true`, `-o arp-probe=true` and Docker's
/// `-o macvlan_mode=bridge`.
fn cluster_spec(a: &CreateArgs) -> anyhow::Result<NetworkSpec> {
    let mut spec = NetworkSpec {
        name: a.name.clone(),
        internal: a.internal,
        attachable: a.attachable,
        ingress: a.ingress,
        mtu: a.mtu,
        ..Default::default()
    };
    spec.ipam.subnet = a.subnet.as_deref().map(str::parse).transpose().map_err(anyhow::Error::msg)?;
    spec.ipam.gateway = a
        .gateway
        .as_deref()
        .map(|g| g.parse().map_err(|_| anyhow::anyhow!("invalid --gateway {g:?}: an IPv4 address")))
        .transpose()?;
    spec.ipam.ip_range =
        a.ip_range.as_deref().map(|r| r.parse().map_err(|e| anyhow::anyhow!("invalid --ip-range: {e}"))).transpose()?;
    spec.ipam.aux_addresses = aux_addresses(&a.aux_address)?;
    for l in &a.label {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        if k.is_empty() {
            bail!("invalid --label {l:?}: use KEY=VALUE");
        }
        spec.labels.insert(k.to_string(), v.to_string());
    }
    let macvlan = a.driver == Driver::Macvlan;
    if macvlan {
        spec.driver = shoal_proto::network::Driver::Macvlan;
    }
    for o in &a.opt {
        match o.split_once('=') {
            Some(("mtu" | MTU_OPTION, v)) => {
                let m = v.parse().map_err(|_| anyhow::anyhow!("invalid mtu {v:?}: a number"))?;
                // --mtu wins, as for bridge networks.
                spec.mtu = Some(a.mtu.unwrap_or(m));
            }
            _ if macvlan => macvlan_option(&mut spec, o)?,
            None if o == ENCRYPTED_OPTION => spec.encrypted = true,
            Some((ENCRYPTED_OPTION, "" | "true")) => spec.encrypted = true,
            Some((ENCRYPTED_OPTION, "false")) => spec.encrypted = false,
            Some((ENCRYPTED_OPTION, v)) => bail!("invalid encrypted={v:?}: use --opt encrypted"),
            Some(("parent" | "host-access" | "host_access" | "arp-probe" | "arp_probe" | "macvlan_mode", _)) => {
                bail!("-o {o} is a macvlan option: add -d macvlan")
            }
            _ => bail!("unknown overlay network option {o:?}: use mtu=N (or {MTU_OPTION}=N) or encrypted"),
        }
    }
    spec.validate().map_err(anyhow::Error::msg)?;
    Ok(spec)
}

/// One `-o` of a macvlan network (but `mtu`).
fn macvlan_option(spec: &mut NetworkSpec, o: &str) -> anyhow::Result<()> {
    match o.split_once('=') {
        Some(("parent", p)) => spec.parent = Some(p.to_string()),
        Some(("host-access" | "host_access", v)) => {
            spec.host_access = v.parse().map_err(|_| anyhow::anyhow!("invalid host-access {v:?}: true or false"))?;
        }
        Some(("macvlan_mode", "bridge")) => {}
        Some(("macvlan_mode", m)) => {
            bail!("macvlan mode {m:?} is not supported: Shoal's macvlan links are bridge mode")
        }
        Some(("arp-probe" | "arp_probe", v)) => {
            spec.arp_probe = v.parse().map_err(|_| anyhow::anyhow!("invalid arp-probe {v:?}: true or false"))?;
        }
        _ if o == ENCRYPTED_OPTION || o.starts_with("encrypted=") => {
            bail!("--opt encrypted is an overlay option: a macvlan network's traffic is the LAN's own")
        }
        _ => bail!("unknown macvlan network option {o:?}: use parent=IFACE, host-access=true, arp-probe=true or mtu=N"),
    }
    Ok(())
}

/// `--aux-address NAME=IP` flags (Docker's), by name.
fn aux_addresses(flags: &[String]) -> anyhow::Result<BTreeMap<String, Ipv4Addr>> {
    let mut aux = BTreeMap::new();
    for f in flags {
        let (name, ip) = f.split_once('=').with_context(|| format!("invalid --aux-address {f:?}: use NAME=IP"))?;
        let ip =
            ip.parse().map_err(|_| anyhow::anyhow!("invalid --aux-address {f:?}: {ip:?} is not an IPv4 address"))?;
        if aux.insert(name.to_string(), ip).is_some() {
            bail!("--aux-address {name} is given twice: one address per name");
        }
    }
    Ok(aux)
}

pub async fn run(cli: &Cli, cmd: &NetworkCmd) -> anyhow::Result<()> {
    network(cli, &mut client::engine(cli).await?, cmd).await
}

/// A cluster network as Docker's `network inspect` shows a swarm network
/// (no peers yet: nodes take part once tasks can use the network).
fn cluster_doc(n: &Network) -> serde_json::Value {
    let mut config = serde_json::Map::new();
    let subnet = n.alloc.as_ref().map(|a| a.subnet).or(n.spec.ipam.subnet);
    let gateway = n.alloc.as_ref().map(|a| a.gateway).or(n.spec.ipam.gateway);
    if let Some(s) = subnet {
        config.insert("Subnet".into(), s.to_string().into());
    }
    if let Some(g) = gateway {
        config.insert("Gateway".into(), g.to_string().into());
    }
    if let Some(r) = n.spec.ipam.ip_range {
        config.insert("IPRange".into(), r.to_string().into());
    }
    if !n.spec.ipam.aux_addresses.is_empty() {
        let aux: serde_json::Map<String, serde_json::Value> =
            n.spec.ipam.aux_addresses.iter().map(|(k, ip)| (k.clone(), ip.to_string().into())).collect();
        config.insert("AuxiliaryAddresses".into(), aux.into());
    }
    let mut options = BTreeMap::new();
    if let Some(a) = &n.alloc {
        options.insert(VXLANID_OPTION.to_string(), a.vni.to_string());
    }
    if let Some(m) = n.spec.mtu {
        options.insert(MTU_OPTION.to_string(), m.to_string());
    }
    if n.spec.encrypted {
        options.insert(ENCRYPTED_OPTION.to_string(), String::new());
    }
    if n.spec.driver == shoal_proto::network::Driver::Macvlan {
        options.remove(VXLANID_OPTION);
        if let Some(p) = &n.spec.parent {
            options.insert("parent".into(), p.clone());
        }
        if n.spec.host_access {
            options.insert("host-access".into(), "true".into());
        }
        if n.spec.arp_probe {
            options.insert("arp-probe".into(), "true".into());
        }
    }
    let configs: Vec<serde_json::Value> = if config.is_empty() { Vec::new() } else { vec![config.into()] };
    serde_json::json!({"Name": n.spec.name, "Id": n.id, "Created": shoal_proto::model::rfc3339(n.meta.created_ms),
        "Scope": "swarm", "Driver": n.spec.driver.as_str(), "EnableIPv6": false,
        "IPAM": {"Driver": "default", "Options": null, "Config": configs},
        "Internal": n.spec.internal, "Attachable": n.spec.attachable, "Ingress": n.spec.ingress,
        "Containers": {}, "Options": options, "Labels": n.spec.labels})
}

/// A cluster network's services (with their VIP) and peers (the nodes with
/// tasks on it), as a manager's `inspect` gives them, in Docker's shapes
/// (`docker network inspect -v`): `Services: {NAME: {VIP}}`, `Peers: [{Name, IP}]`.
fn add_usage(doc: &mut serde_json::Value, from: &serde_json::Value) {
    let Some(obj) = doc.as_object_mut() else { return };
    let list = |k: &str| from.get(k).and_then(|v| v.as_array()).cloned().unwrap_or_default();
    let mut services = serde_json::Map::new();
    for s in list("services") {
        let name = s["name"].as_str().unwrap_or_default().to_string();
        services.insert(name, serde_json::json!({"VIP": s["vip"].as_str().unwrap_or_default()}));
    }
    let peers: Vec<serde_json::Value> = list("peers")
        .iter()
        .map(|p| serde_json::json!({"Name": p["hostname"], "IP": p["data_addr"].as_str().unwrap_or_default()}))
        .collect();
    obj.insert("Services".into(), services.into());
    obj.insert("Peers".into(), peers.into());
}

/// An encrypted network's peers with this node's WireGuard session to
/// each (`LastHandshake`, `TxBytes`, `RxBytes`; bytes of plaintext), as
/// `from` (the managers' usage: peers by node id) and netd name them.
fn add_sessions(doc: &mut serde_json::Value, from: &serde_json::Value, sessions: &[pb::WgPeer]) {
    let ids: Vec<String> = from
        .get("peers")
        .and_then(|p| p.as_array())
        .map(|a| a.iter().map(|p| p["node"].as_str().unwrap_or_default().to_string()).collect())
        .unwrap_or_default();
    let Some(peers) = doc.get_mut("Peers").and_then(|p| p.as_array_mut()) else { return };
    for (peer, id) in peers.iter_mut().zip(ids) {
        let Some(s) = sessions.iter().find(|s| s.node == id) else { continue };
        let when = if s.last_handshake_ms == 0 {
            serde_json::Value::Null
        } else {
            shoal_proto::model::rfc3339(s.last_handshake_ms).into()
        };
        if let Some(obj) = peer.as_object_mut() {
            obj.insert("LastHandshake".into(), when);
            obj.insert("TxBytes".into(), s.tx_bytes.into());
            obj.insert("RxBytes".into(), s.rx_bytes.into());
        }
    }
}

/// The cluster's networks when this node is a manager; none on a node that
/// is not (and a warning when the managers cannot answer).
async fn cluster_networks(control: &mut Control) -> anyhow::Result<Vec<Network>> {
    match control.list_networks(pb::Empty {}).await {
        Ok(doc) => Ok(serde_json::from_str(&doc.into_inner().json)?),
        Err(s) if s.code() == Code::FailedPrecondition => Ok(Vec::new()),
        Err(s) => {
            eprintln!("warning: cannot list the cluster's networks: {}", s.message());
            Ok(Vec::new())
        }
    }
}

/// One row of `network ls`: a local network or a cluster one.
struct Listed {
    id: String,
    name: String,
    driver: String,
    scope: &'static str,
    /// A cluster network's (a bridge network has none).
    labels: std::collections::BTreeMap<String, String>,
    doc: serde_json::Value,
}

async fn network(cli: &Cli, engine: &mut Engine, cmd: &NetworkCmd) -> anyhow::Result<()> {
    let doc = |n: &pb::NetworkInfo| {
        serde_json::json!({"Name": n.name, "Id": n.id, "Driver": n.driver, "Internal": n.internal,
            "IPAM": {"Config": [{"Subnet": n.subnet, "Gateway": n.gateway}]},
            "Options": {"com.docker.network.bridge.enable_icc": n.icc.to_string(), "com.docker.network.driver.mtu": n.mtu.to_string()},
            "Containers": n.endpoints})
    };
    if let NetworkCmd::Create(a) = cmd {
        docker_recipes(a)?;
    }
    match cmd {
        NetworkCmd::Create(a) if a.driver != Driver::Bridge => {
            let spec_json = serde_json::to_string(&cluster_spec(a)?)?;
            let r = client::control(cli)
                .await?
                .create_network(pb::ClusterNetworkCreateRequest { spec_json })
                .await?
                .into_inner();
            println!("{}", r.id);
        }
        NetworkCmd::Create(a) => {
            let CreateArgs {
                subnet,
                gateway,
                ip_range,
                aux_address,
                internal,
                opt,
                mtu,
                attachable,
                ingress,
                label,
                name,
                ..
            } = a;
            if *attachable || *ingress {
                bail!("--attachable and --ingress apply to overlay networks: add -d overlay");
            }
            if !aux_address.is_empty() {
                bail!(
                    "--aux-address applies to cluster networks (-d overlay, -d macvlan): a bridge network hands out \
                     every address of its --ip-range (of its subnet without one), so give it an --ip-range that \
                     leaves out the addresses it must not give"
                );
            }
            if !label.is_empty() {
                bail!("--label is not supported for bridge networks yet");
            }
            let mut req = pb::NetworkCreateRequest {
                name: name.clone(),
                subnet: subnet.clone().unwrap_or_default(),
                gateway: gateway.clone().unwrap_or_default(),
                ip_range: ip_range.clone().unwrap_or_default(),
                internal: *internal,
                ..Default::default()
            };
            for o in opt {
                match o.split_once('=') {
                    Some(("icc" | "com.docker.network.bridge.enable_icc", v)) => req.icc_disabled = v == "false",
                    Some(("mtu" | "com.docker.network.driver.mtu", v)) => {
                        req.mtu = v.parse().map_err(|_| anyhow::anyhow!("invalid mtu {v:?}: a number"))?;
                    }
                    _ => bail!("unknown network option {o:?}: use icc=false or mtu=N"),
                }
            }
            if let Some(m) = mtu {
                req.mtu = *m;
            }
            let n = engine.network_create(req).await?.into_inner();
            println!("{}", n.id);
        }
        NetworkCmd::Ls { quiet, filter, format } => {
            let keep = crate::filter::Filters::parse(filter, &["driver", "id", "label", "name", "scope", "type"])?;
            keep.one_of("type", &["custom", "builtin"])?;
            keep.one_of("scope", &["local", "swarm", "global"])?;
            let local = engine.network_list(pb::Empty {}).await?.into_inner().networks;
            let mut list: Vec<Listed> = local
                .iter()
                .map(|n| Listed {
                    id: n.id.clone(),
                    name: n.name.clone(),
                    driver: n.driver.clone(),
                    scope: "local",
                    labels: Default::default(),
                    doc: doc(n),
                })
                .collect();
            let mut cluster = cluster_networks(&mut client::control(cli).await?).await?;
            cluster.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
            list.extend(cluster.iter().map(|n| Listed {
                id: n.id.clone(),
                name: n.spec.name.clone(),
                driver: n.spec.driver.as_str().into(),
                scope: "swarm",
                labels: n.spec.labels.clone(),
                doc: cluster_doc(n),
            }));
            // Docker's predefined networks are `builtin`, the ones users made `custom`.
            let builtin = |n: &Listed| matches!(n.name.as_str(), "bridge" | "host" | "none" | "ingress");
            // Names and ids match as Docker's regular expressions.
            let (ids, names) = (keep.regex("id")?, keep.regex("name")?);
            list.retain(|n| {
                keep.any("driver", |d| n.driver == d)
                    && ids.matches(&[&n.id])
                    && names.matches(&[&n.name])
                    && keep.labels("label", &n.labels)
                    && keep.any("scope", |s| n.scope == s)
                    && keep.any("type", |t| (t == "builtin") == builtin(n))
            });
            let row = |n: &Listed| {
                vec![vec![
                    short(&n.id).into(),
                    n.name.clone(),
                    n.driver.clone(),
                    n.scope.into(),
                    labels_cell(&n.labels),
                ]]
            };
            print_listing(
                &list,
                *quiet,
                *format,
                |n| short(&n.id).to_string(),
                |n| n.doc.clone(),
                &[
                    col("ID", "NETWORK ID"),
                    col("Name", "NAME"),
                    col("Driver", "DRIVER"),
                    col("Scope", "SCOPE"),
                    extra("Labels", "LABELS"),
                ],
                row,
            )?;
        }
        NetworkCmd::Inspect { format, networks } => {
            let list = engine.network_list(pb::Empty {}).await?.into_inner().networks;
            let mut control: Option<Control> = None;
            let mut docs = Vec::new();
            for want in networks {
                if let Some(n) = list.iter().find(|n| &n.name == want || n.id.starts_with(want.as_str())) {
                    docs.push(doc(n));
                    continue;
                }
                // Not one of this node's: a cluster network, if this node is a manager.
                let c = match &mut control {
                    Some(c) => c,
                    None => control.insert(client::control(cli).await?),
                };
                match c.inspect_network(pb::ClusterNetworkRef { id: want.clone() }).await {
                    Ok(d) => {
                        let v: serde_json::Value = serde_json::from_str(&d.into_inner().json)?;
                        let n: Network = serde_json::from_value(v.clone())?;
                        let mut doc = cluster_doc(&n);
                        add_usage(&mut doc, &v);
                        if n.spec.encrypted {
                            // This node's sessions with each peer, from its netd.
                            match engine.network_wg_peers(pb::Empty {}).await {
                                Ok(p) => add_sessions(&mut doc, &v, &p.into_inner().peers),
                                Err(e) => eprintln!("warning: this node's WireGuard sessions: {}", e.message()),
                            }
                        }
                        docs.push(doc);
                    }
                    Err(s) if matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {
                        bail!("network {want} not found")
                    }
                    Err(s) => return Err(s.into()),
                }
            }
            crate::output::print_values(&docs, *format)?;
        }
        NetworkCmd::Rm { networks } => {
            let mut control = client::control(cli).await?;
            for_each_item(networks, "networks", async |n| {
                match engine.network_remove(pb::NetworkRef { name: n.into() }).await {
                    Ok(_) => {}
                    // Not one of this node's: a cluster network, if this node is a manager.
                    Err(local) if local.code() == Code::NotFound => {
                        match control.remove_network(pb::ClusterNetworkRef { id: n.into() }).await {
                            Ok(_) => {}
                            Err(s)
                                if s.code() == Code::FailedPrecondition
                                    && s.message().contains("not a swarm manager") =>
                            {
                                return Err(local);
                            }
                            Err(s) => return Err(s),
                        }
                    }
                    Err(e) => return Err(e),
                }
                Ok(vec![n.to_string()])
            })
            .await?;
        }
        NetworkCmd::Connect { alias, ip, network, container } => {
            let req = pb::NetworkConnectRequest {
                network: network.clone(),
                container: container.clone(),
                aliases: alias.clone(),
                ip: ip.clone().unwrap_or_default(),
            };
            engine.network_connect(req).await?;
        }
        NetworkCmd::Disconnect { force: _, network, container } => {
            let req = pb::NetworkConnectRequest {
                network: network.clone(),
                container: container.clone(),
                ..Default::default()
            };
            engine.network_disconnect(req).await?;
        }
        NetworkCmd::Prune { force, filters } => {
            crate::system::prune(engine, crate::system::Kind::Network, false, *force, &filters.filter).await?
        }
        NetworkCmd::RotateKeys => {
            let r = client::control(cli).await?.rotate_network_keys(pb::Empty {}).await?.into_inner();
            println!("WireGuard keys rotating (key epoch {}): each node switches with no interruption", r.key_epoch);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|o| o.to_string()).collect()
    }

    fn spec(opts: &[&str], mtu: Option<u32>) -> anyhow::Result<NetworkSpec> {
        cluster_spec(&CreateArgs {
            driver: Driver::Overlay,
            name: "app".into(),
            subnet: Some("10.9.0.0/24".into()),
            internal: true,
            attachable: true,
            label: strings(&["team=web", "flag"]),
            opt: strings(opts),
            mtu,
            ..Default::default()
        })
    }

    #[test]
    fn an_encrypted_networks_peers_show_this_nodes_sessions() {
        let from = serde_json::json!({"peers": [
            {"node": "n1", "hostname": "h1", "data_addr": "10.98.0.1"},
            {"node": "n2", "hostname": "h2", "data_addr": "10.98.0.2"},
        ]});
        let mut doc = serde_json::json!({});
        add_usage(&mut doc, &from);
        let sessions = [pb::WgPeer {
            node: "n2".into(),
            endpoint: "10.98.0.2:51820".into(),
            last_handshake_ms: 1_764_900_000_000,
            tx_bytes: 10,
            rx_bytes: 20,
            spoofed: 0,
        }];
        add_sessions(&mut doc, &from, &sessions);
        assert_eq!(doc["Peers"][0], serde_json::json!({"Name": "h1", "IP": "10.98.0.1"}), "this node: no session");
        assert_eq!((doc["Peers"][1]["TxBytes"].as_u64(), doc["Peers"][1]["RxBytes"].as_u64()), (Some(10), Some(20)));
        assert!(doc["Peers"][1]["LastHandshake"].as_str().is_some_and(|t| t.starts_with("2025-12-05T")), "{doc}");
    }

    #[test]
    fn overlay_flags_make_the_spec_the_managers_store() {
        let s = spec(&["com.docker.network.driver.mtu=1400"], None).expect("spec");
        assert_eq!((s.mtu, s.internal, s.attachable, s.ingress), (Some(1400), true, true, false));
        assert_eq!(s.ipam.subnet.map(|s| s.to_string()).as_deref(), Some("10.9.0.0/24"));
        assert_eq!(s.labels.get("team").map(String::as_str), Some("web"));
        assert_eq!(s.labels.get("flag").map(String::as_str), Some(""));
        assert_eq!(spec(&["mtu=1300"], None).expect("spec").mtu, Some(1300));
        assert_eq!(spec(&["mtu=1300"], Some(1200)).expect("spec").mtu, Some(1200), "--mtu wins");
        for (opts, encrypted) in [(&["encrypted"][..], true), (&["encrypted="], true), (&["encrypted=false"], false)] {
            assert_eq!(spec(opts, None).expect("spec").encrypted, encrypted, "{opts:?}");
        }
        for (opts, why) in [
            (&["icc=false"][..], "unknown overlay network option"),
            (&["parent=eth0"][..], "-o parent=eth0 is a macvlan option: add -d macvlan"),
            (&["mtu=big"][..], "invalid mtu"),
            (&["encrypted=yes"][..], "use --opt encrypted"),
            (&["mtu=10"][..], "out of range"),
        ] {
            let e = spec(opts, None).expect_err("refused").to_string();
            assert!(e.contains(why), "{opts:?}: {e}");
        }
        let bad_gw = cluster_spec(&CreateArgs {
            driver: Driver::Overlay,
            name: "a".into(),
            subnet: Some("10.9.0.0/24".into()),
            gateway: Some("10.8.0.1".into()),
            ..Default::default()
        });
        assert!(bad_gw.expect_err("refused").to_string().contains("not a host address"));
    }

    fn lan_args(opts: &[&str], internal: bool) -> CreateArgs {
        CreateArgs {
            driver: Driver::Macvlan,
            name: "lan".into(),
            subnet: Some("10.98.0.0/24".into()),
            gateway: Some("10.98.0.1".into()),
            ip_range: Some("10.98.0.192/28".into()),
            internal,
            attachable: true,
            opt: strings(opts),
            ..Default::default()
        }
    }

    fn lan(opts: &[&str], internal: bool) -> anyhow::Result<NetworkSpec> {
        cluster_spec(&lan_args(opts, internal))
    }

    #[test]
    fn macvlan_flags_make_the_spec_the_managers_store() {
        let s = lan(&["parent=eth0", "host-access=true", "macvlan_mode=bridge", "mtu=1400"], false).expect("spec");
        assert_eq!(s.driver, shoal_proto::network::Driver::Macvlan);
        assert_eq!((s.parent.as_deref(), s.host_access, s.mtu, s.attachable), (Some("eth0"), true, Some(1400), true));
        assert!(!s.arp_probe);
        assert!(lan(&["parent=eth0", "arp-probe=true"], false).expect("spec").arp_probe);
        assert_eq!(s.ipam.ip_range.map(|r| r.to_string()).as_deref(), Some("10.98.0.192/28"));
        for (opts, internal, why) in [
            (&[][..], false, "needs -o parent=IFACE"),
            (&["parent=eth0"][..], true, "--internal does not apply"),
            (&["parent=eth0", "encrypted"][..], false, "overlay option"),
            (&["parent=eth0", "macvlan_mode=vepa"][..], false, "bridge mode"),
            (&["parent=eth0", "host-access=maybe"][..], false, "true or false"),
            (&["parent=eth0", "icc=false"][..], false, "unknown macvlan network option"),
            (&["parent=eth0", "arp-probe=yes"][..], false, "true or false"),
        ] {
            let e = lan(opts, internal).expect_err("refused").to_string();
            assert!(e.contains(why), "{opts:?}: {e}");
        }
        let none = CreateArgs { subnet: None, gateway: None, ip_range: None, ..lan_args(&["parent=eth0"], false) };
        assert!(cluster_spec(&none).expect_err("refused").to_string().contains("needs --subnet"));
    }

    #[test]
    fn aux_addresses_are_named_addresses_shown_as_dockers_auxiliary_addresses() {
        let flags = |f: &[&str]| aux_addresses(&f.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let aux = flags(&["my-router=10.98.0.193", "nas=10.98.0.200"]).expect("aux");
        assert_eq!(aux.len(), 2);
        assert_eq!(aux["my-router"], Ipv4Addr::new(10, 98, 0, 193));
        for (f, why) in [
            (&["router"][..], "use NAME=IP"),
            (&["router=10.98.0"][..], "not an IPv4 address"),
            (&["r=10.98.0.5", "r=10.98.0.6"][..], "given twice"),
        ] {
            let e = flags(f).expect_err("refused").to_string();
            assert!(e.contains(why), "{f:?}: {e}");
        }
        let with_aux = CreateArgs {
            aux_address: strings(&["my-router=10.98.0.193", "nas=10.98.0.200"]),
            ..lan_args(&["parent=eth0"], false)
        };
        let spec = cluster_spec(&with_aux).expect("spec");
        assert_eq!(spec.ipam.aux_addresses, aux);
        let outside = CreateArgs { aux_address: strings(&["r=10.99.0.1"]), ..lan_args(&["parent=eth0"], false) };
        let e = cluster_spec(&outside).expect_err("refused").to_string();
        assert!(e.contains("aux address r=10.99.0.1 is not a host address of subnet 10.98.0.0/24"), "{e}");
        let n = Network { id: "n".into(), meta: Default::default(), spec, alloc: None };
        assert_eq!(
            cluster_doc(&n)["IPAM"]["Config"][0]["AuxiliaryAddresses"],
            serde_json::json!({"my-router": "10.98.0.193", "nas": "10.98.0.200"})
        );
    }

    #[test]
    fn network_create_takes_dockers_flag_forms() {
        use crate::args::{Cli, Cmd};
        use clap::Parser;
        let parse = |args: &str| Cli::try_parse_from(std::iter::once("shoal").chain(args.split_whitespace()));
        let create = |args: &str| match parse(args).map(|c| c.cmd) {
            Ok(Cmd::Network(NetworkCmd::Create(a))) => Ok(a),
            Ok(other) => panic!("not network create: {other:?}"),
            Err(e) => Err(e),
        };
        let a = create("network create -d macvlan --ipv6 --aux-address r=10.98.0.5 --aux-address n=10.98.0.6 lan")
            .expect("parsed");
        assert_eq!((a.ipv6, a.aux_address.len(), a.name.as_str()), (Some(true), 2, "lan"), "--ipv6 takes no NAME");
        assert_eq!(create("network create --ipv6=false app").expect("parsed").ipv6, Some(false));
        assert_eq!(create("network create app").expect("parsed").ipv6, None);
    }

    #[test]
    fn dockers_macvlan_recipes_are_answered() {
        let args = |driver, scope: Option<&str>| CreateArgs {
            driver,
            scope: scope.map(str::to_string),
            name: "n".into(),
            ..Default::default()
        };
        assert!(docker_recipes(&args(Driver::Macvlan, Some("swarm"))).is_ok(), "--scope swarm: a no-op");
        assert!(docker_recipes(&args(Driver::Overlay, None)).is_ok());
        assert!(docker_recipes(&args(Driver::Bridge, Some("local"))).is_ok());
        let default_ipam =
            CreateArgs { ipam_driver: Some("default".into()), ipv6: Some(false), ..args(Driver::Macvlan, None) };
        assert!(docker_recipes(&default_ipam).is_ok(), "--ipam-driver default, --ipv6=false");
        let refused = [
            (CreateArgs { config_only: true, ..args(Driver::Macvlan, None) }, "shoal.net.NAME.parent=IFACE"),
            (
                CreateArgs { config_from: Some("cfg".into()), ..args(Driver::Macvlan, Some("swarm")) },
                "cluster-wide range",
            ),
            (args(Driver::Macvlan, Some("local")), "leave out --scope local"),
            (args(Driver::Bridge, Some("swarm")), "use -d overlay or -d macvlan"),
            (args(Driver::Overlay, Some("galaxy")), "invalid --scope"),
            (CreateArgs { ipv6: Some(true), ..args(Driver::Macvlan, None) }, "networks are IPv4 (leave out --ipv6)"),
            (CreateArgs { ipam_driver: Some("infoblox".into()), ..args(Driver::Overlay, None) }, "--ipam-driver"),
        ];
        for (a, why) in refused {
            let e = docker_recipes(&a).expect_err("refused").to_string();
            assert!(e.contains(why), "{a:?}: {e}");
        }
    }

    #[test]
    fn inspect_shows_a_cluster_networks_services_and_peers() {
        let from = serde_json::json!({
            "services": [{"id": "s1", "name": "web", "vip": "10.0.1.2"}, {"id": "s2", "name": "rr", "vip": null}],
            "peers": [{"node": "n1", "hostname": "lab1", "data_addr": "10.98.0.1"}],
        });
        let mut doc = serde_json::json!({"Name": "app"});
        add_usage(&mut doc, &from);
        assert_eq!(doc["Services"], serde_json::json!({"web": {"VIP": "10.0.1.2"}, "rr": {"VIP": ""}}));
        assert_eq!(doc["Peers"], serde_json::json!([{"Name": "lab1", "IP": "10.98.0.1"}]));
    }

    #[test]
    fn inspect_shows_the_subnet_gateway_and_vni_as_docker_does() {
        let mut n = Network {
            id: "abc".into(),
            meta: Default::default(),
            spec: NetworkSpec { name: "app".into(), attachable: true, ..Default::default() },
            alloc: None,
        };
        let d = cluster_doc(&n);
        assert_eq!((d["Scope"].as_str(), d["Driver"].as_str()), (Some("swarm"), Some("overlay")));
        assert_eq!(d["IPAM"]["Config"], serde_json::json!([]), "nothing allocated yet");
        let subnet: shoal_proto::net::Subnet = "10.0.2.0/24".parse().expect("subnet");
        n.alloc = Some(shoal_proto::network::NetworkAlloc {
            vni: 4097,
            subnet,
            gateway: "10.0.2.1".parse().expect("ip"),
            range: subnet,
            mtu: 1450,
            reserved: vec![],
        });
        let d = cluster_doc(&n);
        assert_eq!(d["IPAM"]["Config"], serde_json::json!([{"Subnet": "10.0.2.0/24", "Gateway": "10.0.2.1"}]));
        assert_eq!(d["Options"][VXLANID_OPTION], "4097");
        assert_eq!(d["Attachable"], true);
    }
}
