//! `shoal service …`: builds service specs from Docker's flags, sends them to
//! a manager, and follows a rollout until it converges (or says why not).

mod follow;
pub(crate) mod list;
pub(crate) mod spec;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use shoal_proto::pb;
use shoal_proto::service::{Mode, RestartCondition, ServiceSpec};

use self::follow::follow;
use self::list::{find, ls, print_pretty, ps};
pub use self::list::{keep_services, node_ps, task_filters};
use self::spec::apply_flags;
pub use self::spec::{ModeArg, ServiceFlags, ServiceRemovals};
use crate::args::{Cli, Format};
use crate::client;
use crate::output::short;

pub(crate) type Control = pb::control_client::ControlClient<tonic::transport::Channel>;

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Create a service.
    Create(Box<ServiceCreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        /// Only what matches KEY=VALUE (a key's values are alternatives): id, name, label, mode.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        #[arg(long, value_parser = Format::parse, default_value = "table")]
        format: Format,
    },
    /// List the tasks of services, with their history.
    Ps {
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate ids.
        #[arg(long)]
        no_trunc: bool,
        /// Only what matches KEY=VALUE (a key's values are alternatives): desired-state, id, name, node.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        #[arg(long, value_parser = Format::parse, default_value = "table")]
        format: Format,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Display detailed information on services.
    Inspect {
        #[arg(long)]
        pretty: bool,
        /// JSON (the default), or a Go template over each one's JSON (`{{json .}}`).
        #[arg(short, long, value_parser = Format::parse)]
        format: Option<Format>,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Update a service.
    Update(Box<ServiceUpdateArgs>),
    /// Scale replicated services: `scale web=5 api=2`.
    Scale {
        #[arg(short, long)]
        detach: bool,
        #[arg(required = true)]
        scales: Vec<String>,
    },
    /// The logs of a service's tasks, from every node (`TASK@NODE | line`).
    Logs {
        #[arg(short, long)]
        follow: bool,
        /// Lines from the end of each task's log, or all.
        #[arg(short = 'n', long, default_value = "all")]
        tail: String,
        #[arg(long)]
        since: Option<String>,
        #[arg(short, long)]
        timestamps: bool,
        /// Name tasks without their ids.
        #[arg(long)]
        no_task_ids: bool,
        service: String,
    },
    /// Go back to a service's previous spec.
    Rollback {
        #[arg(short, long)]
        detach: bool,
        service: String,
    },
    /// Remove services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
}

#[derive(Args, Debug)]
pub struct ServiceCreateArgs {
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, value_enum, default_value_t = ModeArg::Replicated)]
    pub mode: ModeArg,
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Jobs: tasks running at once.
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    #[command(flatten)]
    pub flags: ServiceFlags,
    pub image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ServiceUpdateArgs {
    #[arg(long)]
    pub image: Option<String>,
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Replace every task even if nothing changed.
    #[arg(long)]
    pub force: bool,
    /// Go back to the previous spec.
    #[arg(long)]
    pub rollback: bool,
    /// Replaces the command.
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    pub args: Option<Vec<String>>,
    #[command(flatten)]
    pub rm: ServiceRemovals,
    #[command(flatten)]
    pub flags: ServiceFlags,
    pub service: String,
}

/// Carries out a service verb; the exit status is 1 when `rm` failed for some of its services.
pub async fn run(cli: &Cli, cmd: &ServiceCmd) -> anyhow::Result<i32> {
    let mut control = client::control(cli).await?;
    match cmd {
        ServiceCmd::Create(a) => create(cli, &mut control, a).await,
        ServiceCmd::Update(a) => update(cli, &mut control, a).await,
        ServiceCmd::Ls { quiet, filter, format } => ls(&mut control, *quiet, filter, *format).await,
        ServiceCmd::Ps { quiet, no_trunc, filter, format, services } => {
            let keep = task_filters(cli, filter).await?;
            ps(&mut control, services, *quiet, *no_trunc, &keep, *format).await
        }
        ServiceCmd::Inspect { pretty, format, services } => {
            let mut out = Vec::new();
            let mut waiting = Vec::new();
            for s in services {
                let e = find(&mut control, s).await?;
                out.push(e.service);
                waiting.push(e.waiting);
            }
            // The subnets of the networks with VIPs, for their prefix length.
            let mut nets: Vec<shoal_proto::network::Network> = Vec::new();
            if out.iter().any(|s| !s.vips.is_empty() || !s.spec.task.networks.is_empty()) {
                let json = control.list_networks(pb::Empty {}).await?.into_inner().json;
                nets = serde_json::from_str(&json).context("the network list")?;
            }
            if *pretty {
                for (s, w) in out.iter().zip(&waiting) {
                    print_pretty(s, w, &nets);
                }
            } else {
                let mut docs: Vec<serde_json::Value> = out.iter().map(|s| inspect_doc(s, &nets)).collect();
                // Held by its dependencies: what it waits for (beyond Docker).
                for (doc, w) in docs.iter_mut().zip(&waiting).filter(|(_, w)| !w.is_empty()) {
                    if let Some(obj) = doc.as_object_mut() {
                        obj.insert("Waiting".into(), w.as_str().into());
                    }
                }
                crate::output::print_values(&docs, *format)?;
            }
            Ok(())
        }
        ServiceCmd::Scale { detach, scales } => {
            let mut wanted = Vec::new();
            for s in scales {
                let (name, n) =
                    s.split_once('=').with_context(|| format!("invalid scale {s:?}: use SERVICE=REPLICAS"))?;
                let n: u64 = n.parse().with_context(|| format!("invalid replicas {n:?} for {name}: a number"))?;
                wanted.push((name.to_string(), n));
            }
            for (name, n) in wanted {
                let svc = find(&mut control, &name).await?.service;
                let mut spec = svc.spec.clone();
                if !matches!(spec.mode, Mode::Replicated | Mode::ReplicatedJob) {
                    bail!("{name}: scale can only be used with replicated or replicated-job mode");
                }
                spec.replicas = n;
                let id = svc.id.clone();
                control
                    .update_service(pb::ServiceUpdateRequest {
                        id: id.clone(),
                        spec_json: serde_json::to_string(&spec)?,
                        ..Default::default()
                    })
                    .await?;
                println!("{name} scaled to {n}");
                if !detach {
                    follow(&mut control, &id, Some(&svc)).await?;
                }
            }
            Ok(())
        }
        ServiceCmd::Rollback { detach, service } => {
            let svc = find(&mut control, service).await?.service;
            let id = svc.id.clone();
            control
                .update_service(pb::ServiceUpdateRequest { id: id.clone(), rollback: true, ..Default::default() })
                .await?;
            println!("{service}");
            if !detach {
                follow(&mut control, &id, Some(&svc)).await?;
            }
            Ok(())
        }
        ServiceCmd::Logs { follow, tail, since, timestamps, no_task_ids, service } => {
            let tail = crate::parse::tail(tail)?;
            let since_ns = since.as_deref().map(|s| crate::parse::time_ns(s, "--since")).transpose()?.unwrap_or(0);
            let req = pb::ServiceLogsRequest { service: service.clone(), follow: *follow, tail, since_ns };
            let mut lines = control.service_logs(req).await?.into_inner();
            use std::io::Write;
            while let Some(l) = lines.message().await? {
                let who = if *no_task_ids {
                    format!("{}@{}", l.task, l.node)
                } else {
                    format!("{}.{}@{}", l.task, short(&l.task_id), l.node)
                };
                if !l.warning.is_empty() {
                    // A node's warning, or one task's (its log driver keeps no log to read).
                    let whose = if l.task_id.is_empty() { String::new() } else { format!("{who}: ") };
                    eprintln!("warning: {whose}{}", l.warning);
                    continue;
                }
                let time = if *timestamps { format!("{} ", l.time) } else { String::new() };
                let text = l.log.strip_suffix('\n').unwrap_or(&l.log);
                let mut out = std::io::stdout().lock();
                if l.stream == "stderr" {
                    let _ = writeln!(std::io::stderr(), "{who:<24} | {time}{text}");
                } else {
                    let _ = writeln!(out, "{who:<24} | {time}{text}");
                }
            }
            Ok(())
        }
        ServiceCmd::Rm { services } => {
            // In any order given: a service another one of them depends on is refused
            // while that one exists, so what was refused is tried again while others go.
            let mut left: Vec<(String, String)> = services.iter().map(|s| (s.clone(), String::new())).collect();
            loop {
                let before = left.len();
                let mut refused = Vec::new();
                for (s, _) in left {
                    match control.remove_service(pb::ServiceRef { id: s.clone() }).await {
                        Ok(_) => println!("{s}"),
                        Err(e) => refused.push((s, e.message().to_string())),
                    }
                }
                left = refused;
                if left.is_empty() || left.len() == before {
                    break;
                }
            }
            for (_, why) in &left {
                eprintln!("Error: {why}");
            }
            return Ok(i32::from(!left.is_empty()));
        }
    }?;
    Ok(0)
}

async fn create(cli: &Cli, control: &mut Control, a: &ServiceCreateArgs) -> anyhow::Result<()> {
    let mode = Mode::from(a.mode);
    let mut spec = ServiceSpec {
        name: a.name.clone().unwrap_or_else(|| format!("svc-{}", &shoal_proto::model::new_node_id()[..8])),
        mode,
        replicas: if mode.is_global() { 0 } else { a.replicas.unwrap_or(1) },
        max_concurrent: a.max_concurrent.unwrap_or(0),
        ..Default::default()
    };
    if mode.is_global() && a.replicas.is_some() {
        bail!("--replicas can only be used with replicated or replicated-job mode");
    }
    // Before the registry is asked for its digest (which would only warn).
    shoal_proto::image_ref::check(&a.image).map_err(anyhow::Error::msg)?;
    spec.task.image = a.image.clone();
    spec.task.args = a.command.clone();
    if mode.is_job() {
        // Jobs restart only on failure by default, as in Docker.
        spec.task.restart.condition = RestartCondition::OnFailure;
    }
    spec.task.stop_grace_ms = 10_000;
    apply_flags(&mut spec, &a.flags, &ServiceRemovals::default())?;
    let auth =
        a.flags.with_registry_auth.then(|| crate::registry::registry_auth_for(cli, &spec.task.image)).transpose()?;
    if !a.flags.no_resolve_image
        && let Some(pinned) = crate::registry::resolve_for_service(cli, &spec.task.image).await
    {
        spec.task.image = pinned;
    }
    let req = pb::ServiceCreateRequest { spec_json: serde_json::to_string(&spec)?, auth };
    let resp = control.create_service(req).await?.into_inner();
    println!("{}", resp.id);
    if !a.flags.detach {
        follow(control, &resp.id, None).await?;
    }
    Ok(())
}

async fn update(cli: &Cli, control: &mut Control, a: &ServiceUpdateArgs) -> anyhow::Result<()> {
    let svc = find(control, &a.service).await?.service;
    let id = svc.id.clone();
    if a.rollback {
        control
            .update_service(pb::ServiceUpdateRequest { id: id.clone(), rollback: true, ..Default::default() })
            .await?;
    } else {
        let mut spec = svc.spec.clone();
        if let Some(i) = &a.image {
            shoal_proto::image_ref::check(i).map_err(anyhow::Error::msg)?;
            spec.task.image = i.clone();
        }
        // A new image, or --force, pins the tag to the registry's digest anew
        // (so --force pulls what the tag names now).
        if (a.image.is_some() || a.force) && !a.flags.no_resolve_image {
            let tag = unpinned(&spec.task.image);
            if let Some(pinned) = crate::registry::resolve_for_service(cli, &tag).await {
                spec.task.image = pinned;
            }
        }
        if let Some(r) = a.replicas {
            if spec.mode.is_global() {
                bail!("--replicas can only be used with replicated or replicated-job mode");
            }
            spec.replicas = r;
        }
        if let Some(args) = &a.args {
            spec.task.args = args.clone();
        }
        if a.force {
            spec.task.force_update += 1;
        }
        // The spec names networks by id: --network-rm NAME takes the id of NAME.
        let mut rm = a.rm.clone();
        for n in &mut rm.network_rm {
            if let Ok(r) = control.inspect_network(pb::ClusterNetworkRef { id: n.clone() }).await
                && let Ok(net) = serde_json::from_str::<shoal_proto::network::Network>(&r.into_inner().json)
            {
                *n = net.id;
            }
        }
        apply_flags(&mut spec, &a.flags, &rm)?;
        // Without --with-registry-auth the service keeps the login it has.
        let auth = a
            .flags
            .with_registry_auth
            .then(|| crate::registry::registry_auth_for(cli, &spec.task.image))
            .transpose()?;
        let req = pb::ServiceUpdateRequest {
            id: id.clone(),
            spec_json: serde_json::to_string(&spec)?,
            rollback: false,
            replace_auth: auth.is_some(),
            auth,
        };
        control.update_service(req).await?;
    }
    println!("{}", a.service);
    if !a.flags.detach {
        follow(control, &id, Some(&svc)).await?;
    }
    Ok(())
}

/// A service as `inspect` shows it: the stored object, plus its networks in
/// Docker's shapes (`Spec.TaskTemplate.Networks`, `Spec.EndpointSpec.Mode`
/// and `.Ports`, `Endpoint.Ports` as allocated, `Endpoint.VirtualIPs` with
/// each address's prefix length), so scripts
/// written for Docker find them where they look.
fn inspect_doc(s: &shoal_proto::service::Service, nets: &[shoal_proto::network::Network]) -> serde_json::Value {
    let mut doc = serde_json::to_value(s).unwrap_or(serde_json::Value::Null);
    let mode = s.spec.endpoint_mode.as_str();
    let networks: Vec<serde_json::Value> =
        s.spec.task.networks.iter().map(|a| serde_json::json!({"Target": a.target, "Aliases": a.aliases})).collect();
    let vips: Vec<serde_json::Value> = s
        .vips
        .iter()
        .map(|v| {
            let prefix =
                nets.iter().find(|n| n.id == v.network).and_then(|n| n.alloc.as_ref()).map(|a| a.subnet.prefix());
            let addr = prefix.map_or(v.addr.to_string(), |p| format!("{}/{p}", v.addr));
            serde_json::json!({"NetworkID": v.network, "Addr": addr})
        })
        .collect();
    let port = |p: &shoal_proto::service::PublishedPort| {
        serde_json::json!({
            "Protocol": p.protocol,
            "TargetPort": p.target,
            "PublishedPort": p.published,
            "PublishMode": p.mode.as_str(),
        })
    };
    let asked: Vec<serde_json::Value> = s.spec.task.ports.iter().map(port).collect();
    let ports: Vec<serde_json::Value> = s.endpoint_ports().iter().map(port).collect();
    let mut template = container_spec(&s.spec.task);
    template["Networks"] = serde_json::json!(networks);
    // Docker's shape of the mode: `{{.Spec.Mode.Replicated.Replicas}}`.
    let (replicas, concurrent) = (s.spec.replicas, s.spec.max_concurrent);
    let service_mode = match s.spec.mode {
        shoal_proto::service::Mode::Replicated => serde_json::json!({"Replicated": {"Replicas": replicas}}),
        shoal_proto::service::Mode::Global => serde_json::json!({"Global": {}}),
        shoal_proto::service::Mode::ReplicatedJob => serde_json::json!({
            "ReplicatedJob": {"MaxConcurrent": concurrent, "TotalCompletions": replicas}
        }),
        shoal_proto::service::Mode::GlobalJob => serde_json::json!({"GlobalJob": {}}),
    };
    let at = shoal_proto::model::rfc3339;
    if let Some(obj) = doc.as_object_mut() {
        // Docker's names beside ours, for `-f '{{.ID}} {{.Spec.Name}}'`.
        obj.insert("ID".into(), s.id.clone().into());
        obj.insert("Version".into(), serde_json::json!({"Index": s.meta.version}));
        obj.insert("CreatedAt".into(), at(s.meta.created_ms).into());
        obj.insert("UpdatedAt".into(), at(s.meta.updated_ms).into());
        obj.insert(
            "Spec".into(),
            serde_json::json!({
                "Name": s.spec.name,
                "Labels": s.spec.labels,
                "Mode": service_mode,
                "TaskTemplate": template,
                "EndpointSpec": {"Mode": mode, "Ports": asked},
            }),
        );
        obj.insert(
            "Endpoint".into(),
            serde_json::json!({"Spec": {"Mode": mode, "Ports": asked}, "Ports": ports, "VirtualIPs": vips}),
        );
    }
    doc
}

/// `TaskTemplate.ContainerSpec` and `.LogDriver` as Docker shows them (what
/// is unset left out, as Docker's `omitempty` does): `Command` is the
/// entrypoint, `Hosts` are `IP NAME` lines.
fn container_spec(t: &shoal_proto::service::TaskSpec) -> serde_json::Value {
    use serde_json::{Value, json};
    let h = &t.host_config;
    let mut c = serde_json::Map::new();
    let mut put = |k: &str, v: Value, set: bool| {
        if set {
            c.insert(k.into(), v);
        }
    };
    put("Image", json!(t.image), true);
    put("Command", json!(t.entrypoint), !t.entrypoint.is_empty());
    put("Args", json!(t.args), !t.args.is_empty());
    put("Sysctls", json!(h.sysctls), !h.sysctls.is_empty());
    let ulimits: Vec<Value> =
        h.ulimits.iter().map(|u| json!({"Name": u.name, "Soft": u.soft, "Hard": u.hard})).collect();
    put("Ulimits", json!(ulimits), !ulimits.is_empty());
    let hosts: Vec<String> = h
        .extra_hosts
        .iter()
        .filter_map(|l| shoal_proto::container::parse_extra_host(l).ok())
        .map(|(name, ip)| format!("{ip} {name}"))
        .collect();
    put("Hosts", json!(hosts), !hosts.is_empty());
    let dns = !(h.dns.is_empty() && h.dns_search.is_empty() && h.dns_options.is_empty());
    put("DNSConfig", json!({"Nameservers": h.dns, "Search": h.dns_search, "Options": h.dns_options}), dns);
    put("Init", json!(h.init), h.init);
    put("ReadOnly", json!(h.read_only), h.read_only);
    put("CapabilityAdd", json!(h.cap_add), !h.cap_add.is_empty());
    put("CapabilityDrop", json!(h.cap_drop), !h.cap_drop.is_empty());
    let mut template = json!({"ContainerSpec": c});
    if !h.log_driver.is_empty() || !h.log_opts.is_empty() {
        let name = if h.log_driver.is_empty() { "json-file" } else { h.log_driver.as_str() };
        template["LogDriver"] = json!({"Name": name, "Options": h.log_opts});
    }
    template
}

/// `name:tag@sha256:…` without its digest (what the tag names may have
/// moved); a reference by digest alone stays as it is.
fn unpinned(image: &str) -> String {
    match image.split_once('@') {
        Some((named, _)) if shoal_engine::images::Reference::parse(named).is_ok_and(|r| r.tag().is_some()) => {
            named.to_string()
        }
        _ => image.to_string(),
    }
}

/// An image as `service ls` and `ps` show it: without the pinned digest, as Docker does.
fn shown_image(image: &str) -> String {
    unpinned(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_shows_networks_and_vips_in_dockers_shapes() {
        use shoal_proto::network::{Network, NetworkAlloc, NetworkAttachmentSpec, NetworkSpec, Vip};
        let subnet: shoal_proto::net::Subnet = "10.0.1.0/24".parse().unwrap();
        let net = Network {
            id: "abc".into(),
            meta: Default::default(),
            spec: NetworkSpec { name: "app".into(), ..Default::default() },
            alloc: Some(NetworkAlloc {
                vni: 4097,
                subnet,
                gateway: subnet.nth(1).unwrap(),
                range: subnet,
                mtu: 1450,
                reserved: vec![],
            }),
        };
        let mut svc = shoal_proto::service::Service::default();
        svc.spec.task.networks = vec![NetworkAttachmentSpec { target: "abc".into(), aliases: vec!["www".into()] }];
        svc.vips = vec![Vip { network: "abc".into(), addr: "10.0.1.2".parse().unwrap() }];
        let d = inspect_doc(&svc, &[net]);
        assert_eq!(d["Spec"]["TaskTemplate"]["Networks"], serde_json::json!([{"Target": "abc", "Aliases": ["www"]}]));
        assert_eq!(d["Spec"]["EndpointSpec"]["Mode"], "vip");
        assert_eq!(d["Endpoint"]["VirtualIPs"], serde_json::json!([{"NetworkID": "abc", "Addr": "10.0.1.2/24"}]));
        assert_eq!(d["spec"]["task"]["image"], "", "the stored object is all there too");
        assert_eq!(d["Endpoint"]["Ports"], serde_json::json!([]));
    }

    #[test]
    fn inspect_has_dockers_names_for_what_scripts_read_with_a_template() {
        let mut svc = shoal_proto::service::Service { id: "x1".into(), ..Default::default() };
        svc.spec.name = "web".into();
        svc.spec.replicas = 3;
        svc.spec.labels = [("tier".to_string(), "front".to_string())].into();
        let t = crate::gotemplate::Template::parse(
            "{{.ID}} {{.Spec.Name}} {{.Spec.Mode.Replicated.Replicas}} {{.Spec.Labels.tier}}",
        );
        assert_eq!(t.expect("parse").render(&inspect_doc(&svc, &[]), false).as_deref(), Ok("x1 web 3 front"));
        svc.spec.mode = shoal_proto::service::Mode::Global;
        assert_eq!(inspect_doc(&svc, &[])["Spec"]["Mode"], serde_json::json!({"Global": {}}));
    }

    #[test]
    fn inspect_shows_published_ports_as_allocated_in_dockers_shape() {
        use shoal_proto::service::{PublishMode, PublishedPort};
        let ing = |published| PublishedPort { published, target: 80, mode: PublishMode::Ingress, ..Default::default() };
        let mut svc = shoal_proto::service::Service::default();
        svc.spec.task.ports = vec![ing(0), PublishedPort { published: 9000, target: 90, ..Default::default() }];
        let d = inspect_doc(&svc, &[]);
        let want = |published| {
            serde_json::json!([
                {"Protocol": "tcp", "TargetPort": 80, "PublishedPort": published, "PublishMode": "ingress"},
                {"Protocol": "tcp", "TargetPort": 90, "PublishedPort": 9000, "PublishMode": "host"},
            ])
        };
        assert_eq!(d["Endpoint"]["Ports"], want(0), "not allocated yet");
        svc.ports = vec![ing(30000)];
        let d = inspect_doc(&svc, &[]);
        assert_eq!(d["Endpoint"]["Ports"], want(30000));
        assert_eq!(d["Spec"]["EndpointSpec"]["Ports"], want(0), "the spec as asked");
    }

    #[test]
    fn inspect_shows_the_container_spec_in_dockers_shape() {
        use shoal_proto::container::{HostConfig, Ulimit};
        let mut svc = shoal_proto::service::Service::default();
        let d = inspect_doc(&svc, &[]);
        assert_eq!(d["Spec"]["TaskTemplate"]["ContainerSpec"], serde_json::json!({"Image": ""}), "unset is left out");
        assert!(d["Spec"]["TaskTemplate"].get("LogDriver").is_none());
        let t = &mut svc.spec.task;
        t.image = "busybox".into();
        t.entrypoint = vec!["/bin/sh".into(), "-c".into()];
        t.args = vec!["echo hi".into()];
        t.host_config = HostConfig {
            sysctls: [("net.core.somaxconn".into(), "1024".into())].into(),
            ulimits: vec![Ulimit::parse("nofile=100:200").expect("ulimit")],
            extra_hosts: vec!["db:10.0.0.5".into()],
            dns: vec!["10.0.0.2".parse().expect("ip")],
            dns_search: vec!["example.org".into()],
            dns_options: vec!["ndots:2".into()],
            init: true,
            read_only: true,
            cap_add: vec!["CAP_NET_ADMIN".into()],
            cap_drop: vec!["CAP_MKNOD".into()],
            log_driver: "local".into(),
            log_opts: [("max-size".into(), "1m".into())].into(),
        };
        let d = inspect_doc(&svc, &[]);
        assert_eq!(
            d["Spec"]["TaskTemplate"]["ContainerSpec"],
            serde_json::json!({
                "Image": "busybox",
                "Command": ["/bin/sh", "-c"],
                "Args": ["echo hi"],
                "Sysctls": {"net.core.somaxconn": "1024"},
                "Ulimits": [{"Name": "nofile", "Soft": 100, "Hard": 200}],
                "Hosts": ["10.0.0.5 db"],
                "DNSConfig": {"Nameservers": ["10.0.0.2"], "Search": ["example.org"], "Options": ["ndots:2"]},
                "Init": true,
                "ReadOnly": true,
                "CapabilityAdd": ["CAP_NET_ADMIN"],
                "CapabilityDrop": ["CAP_MKNOD"],
            })
        );
        assert_eq!(
            d["Spec"]["TaskTemplate"]["LogDriver"],
            serde_json::json!({"Name": "local", "Options": {"max-size": "1m"}})
        );
        assert_eq!(d["Spec"]["TaskTemplate"]["Networks"], serde_json::json!([]));
    }

    #[test]
    fn pinned_images_unpin_and_show_without_the_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cases = [
            (format!("registry.lab:5000/demo:v1@{d}"), "registry.lab:5000/demo:v1", "registry.lab:5000/demo:v1"),
            (format!("busybox@{d}"), "busybox@sha256:", "busybox@sha256:"),
            ("busybox:local".to_string(), "busybox:local", "busybox:local"),
            ("registry.lab:5000/demo".to_string(), "registry.lab:5000/demo", "registry.lab:5000/demo"),
        ];
        for (image, unpin, shown) in cases {
            assert!(unpinned(&image).starts_with(unpin), "{image}: {}", unpinned(&image));
            assert!(shown_image(&image).starts_with(shown), "{image}: {}", shown_image(&image));
        }
    }
}
