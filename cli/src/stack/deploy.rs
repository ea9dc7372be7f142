//! `stack deploy`: the plan from the Compose files laid over what the cluster
//! has, through the same Control API as `secret|config create`, `network
//! create` and `service create|update`. A service whose spec would not change
//! is left alone (its tasks keep running); an existing secret or config keeps
//! its data (only its labels may change: other data is refused, as Docker
//! refuses it); `--prune` removes the stack's services, secrets and configs
//! the files no longer have (an object still in use stays); `--dry-run` says
//! what it would do and does nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use shoal_proto::network::Network;
use shoal_proto::pb;
use shoal_proto::secret::{Kind, ObjectSpec, validate_create};
use shoal_proto::service::{Service, ServiceSpec};

use super::compose;
use super::translate::{IMAGE_LABEL, NAMESPACE_LABEL, Plan, ServicePlan, translate};
use crate::args::Cli;
use crate::client;
use crate::service::Control;
use crate::service::list::services;

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Compose files (`-` for stdin); later ones override earlier ones.
    #[arg(short = 'c', long = "compose-file", required = true)]
    pub compose_file: Vec<PathBuf>,
    /// Remove the stack's services, secrets and configs that the files no longer have (not one still in use).
    #[arg(long)]
    pub prune: bool,
    /// Pin images to their registry digest: always, only when the file's image changed, or never.
    #[arg(long, value_enum, default_value_t = ResolveImage::Always)]
    pub resolve_image: ResolveImage,
    /// Send this client's registry login to the nodes that run the tasks.
    #[arg(long)]
    pub with_registry_auth: bool,
    /// Print what would be created, updated or removed, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    pub stack: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ResolveImage {
    #[default]
    Always,
    Changed,
    Never,
}

/// A secret or config as the managers list it (their inspect shape).
#[derive(Clone, Debug, PartialEq)]
pub struct StoredObject {
    pub kind: Kind,
    pub id: String,
    pub version: u64,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// A config's data; a secret's is never shown (the managers compare it).
    pub data: Option<Vec<u8>>,
    pub template_driver: String,
}

impl StoredObject {
    /// From one entry of `ListObjects` (`secret::Object::view`).
    pub fn from_view(kind: Kind, v: &serde_json::Value) -> anyhow::Result<StoredObject> {
        use base64::Engine;
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let data = match v["Spec"]["Data"].as_str() {
            Some(d) => Some(base64::engine::general_purpose::STANDARD.decode(d).context("a config's data")?),
            None => None,
        };
        Ok(StoredObject {
            kind,
            id: text(&v["ID"]),
            version: v["Version"]["Index"].as_u64().unwrap_or_default(),
            name: text(&v["Spec"]["Name"]),
            labels: serde_json::from_value(v["Spec"]["Labels"].clone()).unwrap_or_default(),
            data,
            template_driver: text(&v["Spec"]["Templating"]["Name"]),
        })
    }
}

/// What a deploy looks at in the cluster.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub networks: Vec<Network>,
    /// Every secret and config.
    pub objects: Vec<StoredObject>,
    /// The stack's services.
    pub services: Vec<Service>,
    /// The other services (they may use the stack's secrets and configs).
    pub others: Vec<Service>,
}

/// What the files want beside the plan: each service's spec as it would be
/// stored (see [`desired_spec`]), each object's data (by kind and name).
#[derive(Clone, Debug, Default)]
pub struct Wanted {
    pub specs: BTreeMap<String, ServiceSpec>,
    pub data: BTreeMap<(Kind, String), Vec<u8>>,
}

/// What deploying does to one object, in the order it is done: secrets,
/// configs, networks, services (as Docker's), then what `--prune` removes.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Kind, name.
    CreateObject(Kind, String),
    /// Kind, id, name: its labels change. A secret's data is checked by the managers.
    UpdateObject(Kind, String, String),
    /// Kind, id, name: as it is. A secret's data is checked by the managers.
    KeepObject(Kind, String, String),
    CreateNetwork(String),
    CreateService(String),
    /// The service's id and name.
    UpdateService(String, String),
    Unchanged(String, String),
    RemoveService(String, String),
    /// Kind, id, name: the files dropped it and no service uses it (`--prune`).
    RemoveObject(Kind, String, String),
}

impl Change {
    /// How `stack deploy` reports it (`--dry-run`: what it would do); nothing for a kept object.
    pub fn describe(&self, dry_run: bool) -> Option<String> {
        let (doing, verb, what) = match self {
            Change::CreateObject(k, n) => ("Creating", "create", format!("{k} {n}")),
            Change::UpdateObject(k, id, n) => ("Updating", "update", format!("{k} {n} (id: {id}): its labels")),
            Change::KeepObject(..) => return None,
            Change::CreateNetwork(n) => ("Creating", "create", format!("network {n}")),
            Change::CreateService(n) => ("Creating", "create", format!("service {n}")),
            Change::UpdateService(id, n) => ("Updating", "update", format!("service {n} (id: {id})")),
            Change::Unchanged(id, n) => return Some(format!("Service {n} (id: {id}) is unchanged")),
            Change::RemoveService(id, n) => ("Removing", "remove", format!("service {n} (id: {id})")),
            Change::RemoveObject(k, id, n) => ("Removing", "remove", format!("{k} {n} (id: {id})")),
        };
        Some(if dry_run { format!("Would {verb} {what}") } else { format!("{doing} {what}") })
    }
}

/// The refusal of a stack object whose file's data (or template driver)
/// is not the stored one's: secrets and configs are immutable.
fn immutable(kind: Kind, name: &str, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "failed to update {kind} {name}: only updates to Labels are allowed: {why}, and {kind}s are immutable: \
         give it a new name in the Compose file (`name: {name}_v2` under {kind}s:) so that its services move to \
         a new {kind}"
    )
}

/// Reads the data of the plan's own secrets and configs (files relative to
/// the Compose file's directory), refusing what `secret create` refuses.
pub fn read_objects(plan: &Plan) -> anyhow::Result<BTreeMap<(Kind, String), Vec<u8>>> {
    let mut out = BTreeMap::new();
    for o in plan.objects() {
        let Some(file) = &o.file else { continue };
        let data = std::fs::read(file).with_context(|| format!("{} {}: reading {}", o.kind, o.name, file.display()))?;
        let spec =
            ObjectSpec { name: o.name.clone(), labels: o.labels.clone(), template_driver: o.template_driver.clone() };
        validate_create(o.kind, &spec, &data)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{} {} (from {})", o.kind, o.name, file.display()))?;
        out.insert((o.kind, o.name.clone()), data);
    }
    Ok(out)
}

/// The spec a planned service gets: its networks, secrets and configs by
/// id where they exist (the managers store ids; a new one is found by its
/// name), the image pinned as `image` says, and what the stored spec has
/// that the file does not say (`force_update`).
pub fn desired_spec(
    plan: &ServicePlan,
    existing: Option<&Service>,
    nets: &[Network],
    objects: &[StoredObject],
    image: &str,
) -> ServiceSpec {
    let mut spec = plan.spec.clone();
    for a in &mut spec.task.networks {
        if let Some(n) = nets.iter().find(|n| n.spec.name == a.target) {
            a.target = n.id.clone();
        }
    }
    for (kind, refs) in [(Kind::Secret, &mut spec.task.secrets), (Kind::Config, &mut spec.task.configs)] {
        for r in refs.iter_mut() {
            if let Some(o) = objects.iter().find(|o| o.kind == kind && o.name == r.source) {
                r.id = o.id.clone();
            }
        }
    }
    spec.task.image = image.to_string();
    if let Some(s) = existing {
        spec.task.force_update = s.spec.task.force_update;
    }
    spec
}

/// Whether the image is to be resolved to a digest anew: `always`; `changed`
/// when the service is new or the file names another image than last time.
pub fn needs_resolve(mode: ResolveImage, plan: &ServicePlan, existing: Option<&Service>) -> bool {
    match mode {
        ResolveImage::Always => true,
        ResolveImage::Never => false,
        ResolveImage::Changed => existing.is_none_or(|s| s.spec.labels.get(IMAGE_LABEL) != Some(&plan.image)),
    }
}

/// The image a service runs when it is not resolved (`changed`, `never`, or a
/// registry that did not answer): the stored one when the file's image is the
/// same as last time, else the file's.
fn kept_image(plan: &ServicePlan, existing: Option<&Service>) -> String {
    match existing {
        Some(s) if s.spec.labels.get(IMAGE_LABEL) == Some(&plan.image) => s.spec.task.image.clone(),
        _ => plan.image.clone(),
    }
}

/// Whether a service spec refers to the object.
fn uses(spec: &ServiceSpec, o: &StoredObject) -> bool {
    let refs = match o.kind {
        Kind::Secret => &spec.task.secrets,
        Kind::Config => &spec.task.configs,
    };
    refs.iter().any(|r| r.id == o.id || (r.id.is_empty() && r.source == o.name))
}

/// The changes that make the cluster hold `plan`. Refused: an external
/// secret, config or network that is not there, and another data (or
/// template driver) for an existing object of the stack.
/// Whether `new` differs from the `stored` spec only by the `volume-label=`
/// fields its mounts have and the stored ones lack: a service deployed before
/// stacks labelled their volumes. Its volumes exist, and keep the labels they
/// were made with, so an update would replace its tasks for nothing.
fn labels_volumes_only(stored: &ServiceSpec, new: &ServiceSpec) -> bool {
    use shoal_proto::mount::parse_mount_flag;
    let (old, now) = (&stored.task.mounts, &new.task.mounts);
    let unlabelled = |a: &String, b: &String| match (parse_mount_flag(a), parse_mount_flag(b)) {
        (Ok(a), Ok(mut b)) if a.volume_labels.is_empty() => {
            b.volume_labels.clear();
            a == b
        }
        _ => false,
    };
    if old == now || old.len() != now.len() || !old.iter().zip(now).all(|(a, b)| unlabelled(a, b)) {
        return false;
    }
    let mut relabelled = new.clone();
    relabelled.task.mounts = old.clone();
    *stored == relabelled
}

pub fn changes(plan: &Plan, cluster: &Cluster, wanted: &Wanted, prune: bool) -> anyhow::Result<Vec<Change>> {
    let mut out = Vec::new();
    for o in plan.objects() {
        let found = cluster.objects.iter().find(|x| x.kind == o.kind && x.name == o.name);
        match found {
            None if o.external => bail!(
                "{kind} not found: {name}: it is declared as external, so create it before the stack is deployed \
                 (shoal {kind} create {name} FILE)",
                kind = o.kind,
                name = o.name
            ),
            None => out.push(Change::CreateObject(o.kind, o.name.clone())),
            Some(_) if o.external => {}
            Some(x) => {
                let new = wanted.data.get(&(o.kind, o.name.clone()));
                if let (Some(stored), Some(new)) = (&x.data, new)
                    && stored != new
                {
                    return Err(immutable(o.kind, &o.name, "its file holds other data than the stored one"));
                }
                if x.template_driver != o.template_driver {
                    return Err(immutable(o.kind, &o.name, "its template_driver is not the stored one's"));
                }
                let c = if x.labels == o.labels { Change::KeepObject } else { Change::UpdateObject };
                out.push(c(o.kind, x.id.clone(), o.name.clone()));
            }
        }
    }
    for n in &plan.networks {
        let found = cluster.networks.iter().any(|x| x.spec.name == n.name);
        if n.external && !found {
            bail!("network {:?} is declared as external, but could not be found: create it first", n.name);
        }
        if !n.external && !found {
            out.push(Change::CreateNetwork(n.name.clone()));
        }
    }
    for p in &plan.services {
        let name = &p.spec.name;
        let spec = wanted.specs.get(name).unwrap_or(&p.spec);
        match cluster.services.iter().find(|s| &s.spec.name == name) {
            None => out.push(Change::CreateService(name.clone())),
            Some(s) if &s.spec == spec || labels_volumes_only(&s.spec, spec) => {
                out.push(Change::Unchanged(s.id.clone(), name.clone()))
            }
            Some(s) => out.push(Change::UpdateService(s.id.clone(), name.clone())),
        }
    }
    if prune {
        // Dependents first: the managers refuse to remove a service another depends on.
        let dropped: Vec<&ServiceSpec> = cluster
            .services
            .iter()
            .filter(|s| !plan.services.iter().any(|p| p.spec.name == s.spec.name))
            .map(|s| &s.spec)
            .collect();
        for spec in super::translate::removal_order(&dropped) {
            if let Some(s) = cluster.services.iter().find(|s| s.spec.name == spec.name) {
                out.push(Change::RemoveService(s.id.clone(), s.spec.name.clone()));
            }
        }
        // The stack's secrets and configs the files dropped, unless a service still uses one.
        for x in &cluster.objects {
            let declared = plan.objects().any(|o| o.kind == x.kind && o.name == x.name);
            let used = cluster.others.iter().map(|s| &s.spec).chain(wanted.specs.values()).any(|s| uses(s, x));
            if in_stack(&x.labels, &plan.stack) && !declared && !used {
                out.push(Change::RemoveObject(x.kind, x.id.clone(), x.name.clone()));
            }
        }
    }
    Ok(out)
}

pub async fn deploy(cli: &Cli, a: &DeployArgs) -> anyhow::Result<()> {
    let env: compose::Vars = std::env::vars().collect();
    let loaded = compose::load(&a.compose_file, &env)?;
    for u in &loaded.unset {
        eprintln!("The {u:?} variable is not set. Defaulting to a blank string.");
    }
    let plan = translate(&loaded.compose, &a.stack, &loaded.base_dir)?;
    if !plan.unsupported.is_empty() {
        eprintln!("Ignoring unsupported options: {}", plan.unsupported.join(", "));
    }
    let data = read_objects(&plan)?;
    let mut control = client::control(cli).await?;
    // What the cluster has, asked at once.
    let (mut c1, mut c2, mut c3) = (control.clone(), control.clone(), control.clone());
    let (mut nets, listed, mut objects, configs) = tokio::try_join!(
        list_networks(&mut control),
        services(&mut c1),
        list_objects(&mut c2, Kind::Secret),
        list_objects(&mut c3, Kind::Config),
    )?;
    let (services, others): (Vec<Service>, Vec<Service>) =
        listed.into_iter().map(|e| e.service).partition(|s| in_stack(&s.spec.labels, &a.stack));
    objects.extend(configs);

    let mut wanted = Wanted { specs: BTreeMap::new(), data };
    for p in &plan.services {
        let old = services.iter().find(|s| s.spec.name == p.spec.name);
        let resolve = needs_resolve(a.resolve_image, p, old) && !a.dry_run;
        let image = match resolve {
            // A registry that cannot answer keeps what runs (when the file's image is the same).
            true => crate::registry::resolve_for_service(cli, &p.image).await.unwrap_or_else(|| kept_image(p, old)),
            false => kept_image(p, old),
        };
        wanted.specs.insert(p.spec.name.clone(), desired_spec(p, old, &nets, &objects, &image));
    }
    let cluster = Cluster { networks: nets.clone(), objects, services, others };
    let todo = changes(&plan, &cluster, &wanted, a.prune)?;
    // First the data of the stack's existing secrets, which only the managers can compare (an
    // update with the stored labels writes nothing): a refused one leaves everything as it was.
    for x in &cluster.objects {
        let kept = |c: &Change| matches!(c, Change::UpdateObject(k, id, _) | Change::KeepObject(k, id, _) if *k == Kind::Secret && id == &x.id);
        if todo.iter().any(kept) {
            update_object(&mut control, x, &x.labels, wanted.data.get(&(x.kind, x.name.clone()))).await?;
        }
    }
    let mut created_networks = false;
    // Services are written a wave at a time, the writes of one wave at once (the managers
    // commit writes that arrive together in one Raft append); a service that depends on one
    // of the wave waits for the next, since a dependency must exist first.
    let mut wave: Vec<(String, ServiceWrite)> = Vec::new();
    for c in &todo {
        let names: Vec<&str> = wave.iter().map(|(n, _)| n.as_str()).collect();
        if !joins_wave(c, &plan, &names) {
            write_services(&control, std::mem::take(&mut wave)).await?;
        }
        if let Some(line) = c.describe(a.dry_run) {
            println!("{line}");
        }
        match c {
            Change::CreateObject(kind, name) if !a.dry_run => {
                let Some(o) = plan.objects().find(|o| o.kind == *kind && &o.name == name) else { continue };
                let req = pb::ObjectCreateRequest {
                    kind: kind.as_str().into(),
                    name: name.clone(),
                    labels: o.labels.clone().into_iter().collect(),
                    data: wanted
                        .data
                        .get(&(*kind, name.clone()))
                        .map(|d| pb::ObjectData { data: d.clone(), ..Default::default() }),
                    template_driver: o.template_driver.clone(),
                };
                control
                    .create_object(req)
                    .await
                    .map_err(|s| anyhow::anyhow!("failed to create {kind} {name}: {}", s.message()))?;
            }
            Change::UpdateObject(kind, id, name) if !a.dry_run => {
                let (Some(o), Some(x)) = (
                    plan.objects().find(|o| o.kind == *kind && &o.name == name),
                    cluster.objects.iter().find(|x| &x.id == id),
                ) else {
                    continue;
                };
                update_object(&mut control, x, &o.labels, wanted.data.get(&(*kind, name.clone()))).await?;
            }
            _ if a.dry_run => {}
            Change::CreateObject(..) | Change::UpdateObject(..) | Change::KeepObject(..) => {}
            Change::CreateNetwork(name) => {
                let Some(n) = plan.networks.iter().find(|n| &n.name == name) else { continue };
                let spec_json = serde_json::to_string(&n.spec)?;
                control
                    .create_network(pb::ClusterNetworkCreateRequest { spec_json })
                    .await
                    .with_context(|| format!("creating network {name}"))?;
                created_networks = true;
            }
            Change::CreateService(name) | Change::UpdateService(_, name) => {
                if created_networks {
                    // Their ids go in the specs.
                    nets = list_networks(&mut control).await?;
                    created_networks = false;
                }
                let Some(p) = plan.services.iter().find(|p| &p.spec.name == name) else { continue };
                let old = cluster.services.iter().find(|s| &s.spec.name == name);
                let image = wanted.specs.get(name).map_or(p.image.clone(), |s| s.task.image.clone());
                // Objects created just now are found by their names.
                let spec = desired_spec(p, old, &nets, &cluster.objects, &image);
                let auth =
                    a.with_registry_auth.then(|| crate::registry::registry_auth_for(cli, &p.image)).transpose()?;
                let spec_json = serde_json::to_string(&spec)?;
                let write = match c {
                    Change::UpdateService(id, _) => ServiceWrite::Update(pb::ServiceUpdateRequest {
                        id: id.clone(),
                        spec_json,
                        rollback: false,
                        replace_auth: auth.is_some(),
                        auth,
                    }),
                    _ => ServiceWrite::Create(pb::ServiceCreateRequest { spec_json, auth }),
                };
                wave.push((name.clone(), write));
            }
            Change::RemoveService(id, name) => {
                control
                    .remove_service(pb::ServiceRef { id: id.clone() })
                    .await
                    .with_context(|| format!("removing service {name}"))?;
            }
            Change::RemoveObject(kind, id, name) => {
                let r = pb::ObjectRef { kind: kind.as_str().into(), id: id.clone() };
                // Another deploy may have started to use it meanwhile: kept then, as Docker keeps it.
                if let Err(s) = control.remove_object(r).await {
                    eprintln!("Failed to remove {kind} {name}: {}", s.message());
                }
            }
            Change::Unchanged(..) => {}
        }
    }
    write_services(&control, wave).await
}

/// Whether change `c` may be sent with the service writes of `wave`: it
/// is a service's, and depends on none of them (anything else goes after
/// the wave is written).
fn joins_wave(c: &Change, plan: &Plan, wave: &[&str]) -> bool {
    let (Change::CreateService(name) | Change::UpdateService(_, name)) = c else { return false };
    let spec = plan.services.iter().find(|p| &p.spec.name == name).map(|p| &p.spec);
    spec.is_none_or(|s| !s.depends_on.iter().any(|d| wave.contains(&d.service.as_str())))
}

/// A service's create or update, as `stack deploy` sends it.
enum ServiceWrite {
    Create(pb::ServiceCreateRequest),
    Update(pb::ServiceUpdateRequest),
}

/// Sends a wave of service writes at once; the first failure is the error
/// (the others of the wave are sent all the same, as one by one they would
/// have been before it).
async fn write_services(control: &Control, wave: Vec<(String, ServiceWrite)>) -> anyhow::Result<()> {
    let writes = wave.into_iter().map(|(name, w)| {
        let mut control = control.clone();
        async move {
            match w {
                ServiceWrite::Create(req) => {
                    control.create_service(req).await.map(drop).with_context(|| format!("creating service {name}"))
                }
                ServiceWrite::Update(req) => {
                    control.update_service(req).await.map(drop).with_context(|| format!("updating service {name}"))
                }
            }
        }
    });
    futures::future::join_all(writes).await.into_iter().collect()
}

/// Gives a stored secret or config `labels`, sending its data again for the
/// managers to compare: other data is refused (immutable).
async fn update_object(
    control: &mut Control,
    x: &StoredObject,
    labels: &BTreeMap<String, String>,
    data: Option<&Vec<u8>>,
) -> anyhow::Result<()> {
    let req = pb::ObjectUpdateRequest {
        kind: x.kind.as_str().into(),
        id: x.id.clone(),
        version: x.version,
        labels: labels.clone().into_iter().collect(),
        data: data.map(|d| pb::ObjectData { data: d.clone(), ..Default::default() }),
    };
    control.update_object(req).await.map_err(|s| match s.code() {
        tonic::Code::InvalidArgument if s.message().starts_with("only updates to Labels") => {
            immutable(x.kind, &x.name, "its file holds other data than the stored one")
        }
        _ => anyhow::anyhow!("failed to update {} {}: {}", x.kind, x.name, s.message()),
    })?;
    Ok(())
}

/// The cluster's secrets or configs.
pub(super) async fn list_objects(control: &mut Control, kind: Kind) -> anyhow::Result<Vec<StoredObject>> {
    let json = control.list_objects(pb::ObjectKind { kind: kind.as_str().into() }).await?.into_inner().json;
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&json).with_context(|| format!("reading the managers' {kind} list"))?;
    list.iter().map(|v| StoredObject::from_view(kind, v)).collect()
}

pub(super) async fn list_networks(control: &mut Control) -> anyhow::Result<Vec<Network>> {
    let json = control.list_networks(pb::Empty {}).await?.into_inner().json;
    serde_json::from_str(&json).context("reading the managers' network list")
}

/// Whether a network belongs to `stack`.
pub(super) fn in_stack(labels: &BTreeMap<String, String>, stack: &str) -> bool {
    labels.get(NAMESPACE_LABEL).is_some_and(|s| s == stack)
}

#[cfg(test)]
mod tests {
    use shoal_proto::network::NetworkSpec;
    use shoal_proto::secret::FileRef;

    use super::*;
    use crate::stack::compose::{Vars, parse};

    fn plan_of(yaml: &str) -> Plan {
        let loaded = parse(&[("c.yml".into(), yaml.into())], &Vars::new()).expect("parses");
        translate(&loaded.compose, "app", std::path::Path::new("/")).expect("translates")
    }

    fn plan() -> Plan {
        plan_of("services:\n  web: {image: 'nginx:1', ports: ['8080:80']}\n  db: {image: postgres}\n")
    }

    #[test]
    fn services_are_written_in_waves_a_dependency_before_its_dependents() {
        let p = plan_of(
            "services:\n  db: {image: postgres}\n  cache: {image: redis}\n  web: {image: nginx, depends_on: [db]}\n",
        );
        let create = |n: &str| Change::CreateService(format!("app_{n}"));
        let update = |n: &str| Change::UpdateService("id".into(), format!("app_{n}"));
        let cases: [(Change, &[&str], bool); 6] = [
            (create("db"), &[], true),
            (create("cache"), &["app_db"], true),
            (update("cache"), &["app_db"], true),
            // web waits until db is written: the managers refuse a dependency that does not exist yet.
            (create("web"), &["app_db", "app_cache"], false),
            (create("web"), &["app_cache"], true),
            (Change::CreateNetwork("app_default".into()), &[], false),
        ];
        for (c, wave, joins) in cases {
            assert_eq!(joins_wave(&c, &p, wave), joins, "{c:?} with {wave:?}");
        }
    }

    fn net(id: &str, name: &str) -> Network {
        Network {
            id: id.into(),
            meta: Default::default(),
            spec: NetworkSpec { name: name.into(), ..Default::default() },
            alloc: None,
        }
    }

    /// The services as the managers would store them after a deploy of `plan`.
    fn stored(plan: &Plan, nets: &[Network], objects: &[StoredObject]) -> Vec<Service> {
        plan.services
            .iter()
            .enumerate()
            .map(|(i, p)| Service {
                id: format!("s{i}"),
                spec: desired_spec(p, None, nets, objects, &format!("{}@sha256:ab", p.image)),
                ..Default::default()
            })
            .collect()
    }

    fn desired(plan: &Plan, cluster: &Cluster, mode: ResolveImage) -> Wanted {
        let specs = plan
            .services
            .iter()
            .map(|p| {
                let old = cluster.services.iter().find(|s| s.spec.name == p.spec.name);
                // "Resolving" gives the same digest as before.
                let image =
                    if needs_resolve(mode, p, old) { format!("{}@sha256:ab", p.image) } else { kept_image(p, old) };
                (p.spec.name.clone(), desired_spec(p, old, &cluster.networks, &cluster.objects, &image))
            })
            .collect();
        Wanted { specs, data: BTreeMap::new() }
    }

    fn cluster(nets: &[Network], services: Vec<Service>) -> Cluster {
        Cluster { networks: nets.to_vec(), services, ..Default::default() }
    }

    #[test]
    fn a_first_deploy_creates_the_network_then_the_services() {
        let p = plan();
        let c = Cluster::default();
        let got = changes(&p, &c, &desired(&p, &c, ResolveImage::Always), false).expect("plans");
        assert_eq!(
            got,
            [
                Change::CreateNetwork("app_default".into()),
                Change::CreateService("app_db".into()),
                Change::CreateService("app_web".into()),
            ]
        );
        assert_eq!(got[0].describe(false).as_deref(), Some("Creating network app_default"));
        assert_eq!(got[1].describe(true).as_deref(), Some("Would create service app_db"));
    }

    #[test]
    fn an_unchanged_file_changes_nothing_and_one_change_updates_one_service() {
        let nets = [net("n1", "app_default")];
        let p = plan();
        let c = cluster(&nets, stored(&p, &nets, &[]));
        // Stored specs name their networks by id; the image is pinned.
        assert_eq!(c.services[0].spec.task.networks[0].target, "n1");
        for mode in [ResolveImage::Always, ResolveImage::Changed, ResolveImage::Never] {
            let got = changes(&p, &c, &desired(&p, &c, mode), false).expect("plans");
            assert_eq!(
                got,
                [Change::Unchanged("s0".into(), "app_db".into()), Change::Unchanged("s1".into(), "app_web".into())],
                "{mode:?}"
            );
        }
        // `service update --force` on the side is not undone by a redeploy.
        let mut forced = c.clone();
        forced.services[1].spec.task.force_update = 3;
        let got = changes(&p, &forced, &desired(&p, &forced, ResolveImage::Changed), false).expect("plans");
        assert_eq!(got[1], Change::Unchanged("s1".into(), "app_web".into()));

        let mut p2 = p.clone();
        p2.services[1].spec.replicas = 3;
        let got = changes(&p2, &c, &desired(&p2, &c, ResolveImage::Changed), false).expect("plans");
        assert_eq!(
            got,
            [Change::Unchanged("s0".into(), "app_db".into()), Change::UpdateService("s1".into(), "app_web".into())]
        );
        assert_eq!(got[1].describe(false).as_deref(), Some("Updating service app_web (id: s1)"));
    }

    #[test]
    fn a_service_stored_before_stack_volumes_had_labels_is_left_alone() {
        let nets = [net("n1", "app_default")];
        let p = plan_of("services:\n  db: {image: postgres, volumes: ['data:/d', '/cache']}\nvolumes:\n  data: {}\n");
        let mut c = cluster(&nets, stored(&p, &nets, &[]));
        let labelled = c.services[0].spec.task.mounts.clone();
        assert_eq!(labelled[0], "type=volume,source=app_data,target=/d,volume-label=com.docker.stack.namespace=app");
        // As an older CLI stored it.
        c.services[0].spec.task.mounts[0] = "type=volume,source=app_data,target=/d".into();
        let got = changes(&p, &c, &desired(&p, &c, ResolveImage::Changed), false).expect("plans");
        assert_eq!(got, [Change::Unchanged("s0".into(), "app_db".into())]);
        // Another change is one still.
        c.services[0].spec.task.mounts[0] = "type=volume,source=app_data,target=/other".into();
        let got = changes(&p, &c, &desired(&p, &c, ResolveImage::Changed), false).expect("plans");
        assert_eq!(got, [Change::UpdateService("s0".into(), "app_db".into())]);
        c.services[0].spec.task.mounts[0] = "type=volume,source=app_data,target=/d,volume-label=x=y".into();
        let got = changes(&p, &c, &desired(&p, &c, ResolveImage::Changed), false).expect("plans");
        assert_eq!(got, [Change::UpdateService("s0".into(), "app_db".into())], "other labels stored");
    }

    #[test]
    fn a_changed_image_is_resolved_again_under_changed() {
        let p = plan();
        let nets = [net("n1", "app_default")];
        let existing = stored(&p, &nets, &[]);
        let mut p2 = p.clone();
        p2.services[1].image = "nginx:2".into();
        assert!(!needs_resolve(ResolveImage::Changed, &p.services[1], Some(&existing[1])));
        assert!(needs_resolve(ResolveImage::Changed, &p2.services[1], Some(&existing[1])));
        assert!(needs_resolve(ResolveImage::Changed, &p.services[1], None));
        assert!(!needs_resolve(ResolveImage::Never, &p2.services[1], Some(&existing[1])));
        // Never: the file's image as it is once it changed; the stored (pinned) one while it is the same.
        assert_eq!(kept_image(&p.services[1], Some(&existing[1])), "nginx:1@sha256:ab");
        assert_eq!(kept_image(&p2.services[1], Some(&existing[1])), "nginx:2");
    }

    #[test]
    fn prune_removes_what_the_file_dropped_and_externals_must_exist() {
        let nets = [net("n1", "app_default")];
        let p = plan();
        let mut c = cluster(&nets, stored(&p, &nets, &[]));
        c.services.push(Service {
            id: "s9".into(),
            spec: ServiceSpec { name: "app_old".into(), ..Default::default() },
            ..Default::default()
        });
        let d = desired(&p, &c, ResolveImage::Never);
        let got = changes(&p, &c, &d, false).expect("plans");
        assert!(!got.iter().any(|c| matches!(c, Change::RemoveService(..))));
        let got = changes(&p, &c, &d, true).expect("plans");
        assert_eq!(got.last(), Some(&Change::RemoveService("s9".into(), "app_old".into())));

        let mut ext = p.clone();
        ext.networks[0].external = true;
        let e = changes(&ext, &Cluster::default(), &d, false).unwrap_err();
        assert!(e.to_string().contains("declared as external, but could not be found"), "{e}");
        assert!(changes(&ext, &cluster(&nets, vec![]), &d, false).is_ok());
    }

    /// A stack with a secret and a (templated) config, both used by db, and an external secret.
    const WITH_OBJECTS: &str = r#"
services:
  db:
    image: postgres
    secrets: [pw, {source: ca, target: ca.pem, mode: 0400}]
    configs: [{source: conf, target: /etc/db.conf}]
secrets:
  pw: {file: pw.txt, labels: [tier=db]}
  ca: {external: true, name: corp-ca}
configs:
  conf: {file: db.conf, template_driver: golang}
"#;

    fn object(kind: Kind, id: &str, name: &str, labels: &[(&str, &str)], data: Option<&str>) -> StoredObject {
        StoredObject {
            kind,
            id: id.into(),
            version: 7,
            name: name.into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            data: data.map(|d| d.as_bytes().to_vec()),
            template_driver: String::new(),
        }
    }

    /// WITH_OBJECTS's secrets and config as the cluster lists them after a
    /// first deploy (a secret's data is not shown), the config's data `conf`.
    fn deployed(conf: &str) -> [StoredObject; 3] {
        let ns = [(NAMESPACE_LABEL, "app")];
        [
            object(Kind::Secret, "x-ca", "corp-ca", &[], None),
            object(Kind::Secret, "x-pw", "app_pw", &[(NAMESPACE_LABEL, "app"), ("tier", "db")], None),
            StoredObject {
                template_driver: "golang".into(),
                ..object(Kind::Config, "x-conf", "app_conf", &ns, Some(conf))
            },
        ]
    }

    #[test]
    fn a_stacks_secrets_and_configs_are_created_kept_or_refused_when_their_data_changed() {
        let p = plan_of(WITH_OBJECTS);
        let nets = [net("n1", "app_default")];
        let [ca, pw, conf] = deployed("{{ .Task.Name }}");
        let data = BTreeMap::from([
            ((Kind::Secret, "app_pw".to_string()), b"hunter2".to_vec()),
            ((Kind::Config, "app_conf".to_string()), b"{{ .Task.Name }}".to_vec()),
        ]);
        let wanted = |c: &Cluster| Wanted { data: data.clone(), ..desired(&p, c, ResolveImage::Never) };

        // First deploy: the stack's own objects before the network and the service; the external one is used.
        let first = Cluster { objects: vec![ca.clone()], ..Default::default() };
        let got = changes(&p, &first, &wanted(&first), false).expect("plans");
        assert_eq!(
            got,
            [
                Change::CreateObject(Kind::Secret, "app_pw".into()),
                Change::CreateObject(Kind::Config, "app_conf".into()),
                Change::CreateNetwork("app_default".into()),
                Change::CreateService("app_db".into()),
            ]
        );
        assert_eq!(got[0].describe(true).as_deref(), Some("Would create secret app_pw"));
        assert_eq!(got[1].describe(false).as_deref(), Some("Creating config app_conf"));
        // The spec refers to them by name (the managers resolve new ones), to the external one by id.
        let spec = &wanted(&first).specs["app_db"];
        let refs: Vec<(&str, &str)> = spec.task.secrets.iter().map(|r| (r.id.as_str(), r.source.as_str())).collect();
        assert_eq!(refs, [("", "app_pw"), ("x-ca", "corp-ca")]);

        // Redeployed with the same data: nothing changes (the managers check the secret's data).
        let objects = vec![ca.clone(), pw.clone(), conf.clone()];
        let services = stored(&p, &nets, &objects);
        let again = Cluster { networks: nets.to_vec(), objects, services, ..Default::default() };
        let got = changes(&p, &again, &wanted(&again), false).expect("plans");
        assert_eq!(
            got,
            [
                Change::KeepObject(Kind::Secret, "x-pw".into(), "app_pw".into()),
                Change::KeepObject(Kind::Config, "x-conf".into(), "app_conf".into()),
                Change::Unchanged("s0".into(), "app_db".into()),
            ]
        );
        assert_eq!(got[0].describe(false), None);

        // Other labels: updated, nothing else.
        let mut relabelled = again.clone();
        relabelled.objects[1].labels.insert("tier".into(), "old".into());
        let got = changes(&p, &relabelled, &wanted(&relabelled), false).expect("plans");
        assert_eq!(got[0], Change::UpdateObject(Kind::Secret, "x-pw".into(), "app_pw".into()));
        assert_eq!(got[0].describe(false).as_deref(), Some("Updating secret app_pw (id: x-pw): its labels"));

        // Another data or template driver for a config: refused, with what to do instead.
        for (change, why) in [
            (StoredObject { data: Some(b"old".to_vec()), ..conf.clone() }, "its file holds other data"),
            (StoredObject { template_driver: String::new(), ..conf.clone() }, "its template_driver"),
        ] {
            let mut c = again.clone();
            c.objects[2] = change;
            let e = changes(&p, &c, &wanted(&c), false).unwrap_err().to_string();
            assert!(e.starts_with("failed to update config app_conf: only updates to Labels are allowed"), "{e}");
            assert!(
                e.contains(why) && e.contains("give it a new name in the Compose file (`name: app_conf_v2`"),
                "{e}"
            );
        }

        // An external one that is not there: Docker's error, and what to do.
        let e = changes(&p, &Cluster::default(), &wanted(&Cluster::default()), false).unwrap_err().to_string();
        assert!(e.starts_with("secret not found: corp-ca: it is declared as external"), "{e}");
        assert!(e.contains("shoal secret create corp-ca FILE"), "{e}");
    }

    #[test]
    fn prune_removes_the_stacks_dropped_objects_unless_a_service_uses_them() {
        let p = plan_of(WITH_OBJECTS);
        let ns = [(NAMESPACE_LABEL, "app")];
        let [ca, pw, conf] = deployed("x");
        let old = object(Kind::Secret, "x-old", "app_old", &ns, None);
        let kept = object(Kind::Config, "x-kept", "app_kept", &ns, Some("k"));
        let other_stack = object(Kind::Config, "x-shop", "shop_conf", &[(NAMESPACE_LABEL, "shop")], Some("s"));
        let objects = vec![ca, pw, conf, old, kept, other_stack];
        // A service outside the stack uses app_kept.
        let mut outsider = ServiceSpec { name: "tool".into(), ..Default::default() };
        outsider.task.configs.push(FileRef { id: "x-kept".into(), source: "app_kept".into(), ..Default::default() });
        let c = Cluster {
            objects,
            services: stored(&p, &[], &[]),
            others: vec![Service { id: "t".into(), spec: outsider, ..Default::default() }],
            ..Default::default()
        };
        let mut d = desired(&p, &c, ResolveImage::Never);
        d.data.insert((Kind::Config, "app_conf".into()), b"x".to_vec());
        let removed = |prune| -> Vec<Change> {
            let got = changes(&p, &c, &d, prune).expect("plans");
            got.into_iter().filter(|c| matches!(c, Change::RemoveObject(..))).collect()
        };
        assert_eq!(removed(false), []);
        assert_eq!(removed(true), [Change::RemoveObject(Kind::Secret, "x-old".into(), "app_old".into())]);
        assert_eq!(removed(true)[0].describe(true).as_deref(), Some("Would remove secret app_old (id: x-old)"));
    }

    #[test]
    fn a_renamed_secret_is_a_rotation_and_prune_removes_the_old_one() {
        let p = plan_of(WITH_OBJECTS);
        let [ca, pw, conf] = deployed("x");
        let objects = vec![ca, pw, conf];
        let c = Cluster { services: stored(&p, &[], &objects), objects, ..Default::default() };
        // The file gives the changed secret a new name, at the same target.
        let p2 = plan_of(&WITH_OBJECTS.replace("pw: {file: pw.txt,", "pw: {file: pw.txt, name: app_pw_v2,"));
        let mut d = desired(&p2, &c, ResolveImage::Never);
        d.data.insert((Kind::Config, "app_conf".into()), b"x".to_vec());
        let got = changes(&p2, &c, &d, true).expect("plans");
        assert_eq!(
            got,
            [
                Change::CreateObject(Kind::Secret, "app_pw_v2".into()),
                Change::KeepObject(Kind::Config, "x-conf".into(), "app_conf".into()),
                Change::CreateNetwork("app_default".into()),
                Change::UpdateService("s0".into(), "app_db".into()),
                Change::RemoveObject(Kind::Secret, "x-pw".into(), "app_pw".into()),
            ]
        );
        let refs: Vec<(&str, &str)> =
            d.specs["app_db"].task.secrets.iter().map(|r| (r.source.as_str(), r.target.as_str())).collect();
        assert_eq!(refs, [("app_pw_v2", "pw"), ("corp-ca", "ca.pem")]);
    }

    #[test]
    fn stored_objects_read_from_the_managers_listing() {
        let view = serde_json::json!({
            "ID": "c1", "Version": {"Index": 12}, "CreatedAt": "", "UpdatedAt": "",
            "Spec": {"Name": "app_conf", "Labels": {"a": "b"}, "Data": "aGk=", "Templating": {"Name": "golang"}},
        });
        let o = StoredObject::from_view(Kind::Config, &view).expect("reads");
        assert_eq!((o.id.as_str(), o.version, o.name.as_str()), ("c1", 12, "app_conf"));
        assert_eq!((o.data.as_deref(), o.template_driver.as_str()), (Some(&b"hi"[..]), "golang"));
        assert_eq!(o.labels.get("a").map(String::as_str), Some("b"));
        let secret = serde_json::json!({"ID": "s1", "Version": {"Index": 3}, "Spec": {"Name": "pw", "Labels": {}}});
        let o = StoredObject::from_view(Kind::Secret, &secret).expect("reads");
        assert_eq!((o.data, o.template_driver.as_str()), (None, ""));
    }

    #[test]
    fn an_objects_file_is_read_beside_the_compose_file_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("pw.txt"), "hunter2").expect("writes");
        std::fs::write(dir.path().join("db.conf"), "{{ .Nope }}").expect("writes");
        let loaded = parse(&[("c.yml".into(), WITH_OBJECTS.into())], &Vars::new()).expect("parses");
        let p = translate(&loaded.compose, "app", dir.path()).expect("translates");
        let e = read_objects(&p).unwrap_err();
        assert!(
            format!("{e:#}").contains("config app_conf (from ") && format!("{e:#}").contains("unknown field"),
            "{e:#}"
        );
        std::fs::write(dir.path().join("db.conf"), "{{ .Task.Name }}").expect("writes");
        let data = read_objects(&p).expect("reads");
        assert_eq!(data.get(&(Kind::Secret, "app_pw".into())).map(Vec::as_slice), Some(&b"hunter2"[..]));
        assert_eq!(data.len(), 2, "the external secret has no file");
        std::fs::remove_file(dir.path().join("pw.txt")).expect("removes");
        let e = read_objects(&p).unwrap_err();
        assert!(format!("{e:#}").contains("secret app_pw: reading "), "{e:#}");
    }
}
