//! `stack deploy`: the plan from the Compose files laid over what the cluster
//! has, through the same Control API as `network create` and `service
//! create|update`. A service whose spec would not change is left alone (its
//! tasks keep running); `--prune` removes the stack's services the file no
//! longer has; `--dry-run` says what it would do and does nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use shoal_proto::network::Network;
use shoal_proto::pb;
use shoal_proto::service::{Service, ServiceSpec};

use super::translate::{IMAGE_LABEL, NAMESPACE_LABEL, Plan, ServicePlan, translate};
use super::{compose, stack_services};
use crate::args::Cli;
use crate::client;
use crate::service::Control;

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// Compose files (`-` for stdin); later ones override earlier ones.
    #[arg(short = 'c', long = "compose-file", required = true)]
    pub compose_file: Vec<PathBuf>,
    /// Remove the stack's services that the files no longer have.
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

/// Why a stack with secrets or configs cannot be deployed yet.
pub const OBJECTS_NEED_API: &str = "secrets/configs need the secret API, which this Shoal does not have yet: \
     remove secrets: and configs: from the Compose file to deploy the rest";

/// What deploying does to one object, in the order it is done.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    CreateNetwork(String),
    CreateService(String),
    /// The service's id and name.
    UpdateService(String, String),
    Unchanged(String, String),
    RemoveService(String, String),
}

impl Change {
    /// How `stack deploy` reports it (`--dry-run`: what it would do).
    pub fn describe(&self, dry_run: bool) -> String {
        let (doing, verb, what) = match self {
            Change::CreateNetwork(n) => ("Creating", "create", format!("network {n}")),
            Change::CreateService(n) => ("Creating", "create", format!("service {n}")),
            Change::UpdateService(id, n) => ("Updating", "update", format!("service {n} (id: {id})")),
            Change::Unchanged(id, n) => return format!("Service {n} (id: {id}) is unchanged"),
            Change::RemoveService(id, n) => ("Removing", "remove", format!("service {n} (id: {id})")),
        };
        if dry_run { format!("Would {verb} {what}") } else { format!("{doing} {what}") }
    }
}

/// The spec a planned service gets: its networks by id where they exist
/// (the managers store ids), the image pinned as `image` says, and what the
/// stored spec has that the file does not say (`force_update`).
pub fn desired_spec(plan: &ServicePlan, existing: Option<&Service>, nets: &[Network], image: &str) -> ServiceSpec {
    let mut spec = plan.spec.clone();
    for a in &mut spec.task.networks {
        if let Some(n) = nets.iter().find(|n| n.spec.name == a.target) {
            a.target = n.id.clone();
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

/// The changes that make the cluster hold `plan`, given its networks and
/// the stack's services now and each planned service's desired spec.
pub fn changes(
    plan: &Plan,
    nets: &[Network],
    existing: &[Service],
    desired: &BTreeMap<String, ServiceSpec>,
    prune: bool,
) -> anyhow::Result<Vec<Change>> {
    let mut out = Vec::new();
    for n in &plan.networks {
        let found = nets.iter().any(|x| x.spec.name == n.name);
        if n.external && !found {
            bail!("network {:?} is declared as external, but could not be found: create it first", n.name);
        }
        if !n.external && !found {
            out.push(Change::CreateNetwork(n.name.clone()));
        }
    }
    for p in &plan.services {
        let name = &p.spec.name;
        let spec = desired.get(name).unwrap_or(&p.spec);
        match existing.iter().find(|s| &s.spec.name == name) {
            None => out.push(Change::CreateService(name.clone())),
            Some(s) if &s.spec == spec => out.push(Change::Unchanged(s.id.clone(), name.clone())),
            Some(s) => out.push(Change::UpdateService(s.id.clone(), name.clone())),
        }
    }
    if prune {
        for s in existing {
            if !plan.services.iter().any(|p| p.spec.name == s.spec.name) {
                out.push(Change::RemoveService(s.id.clone(), s.spec.name.clone()));
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
    if plan.has_objects() {
        bail!(OBJECTS_NEED_API);
    }
    let mut control = client::control(cli).await?;
    let mut nets = list_networks(&mut control).await?;
    let existing: Vec<Service> = stack_services(&mut control, &a.stack).await?.into_iter().map(|e| e.service).collect();

    let mut desired = BTreeMap::new();
    for p in &plan.services {
        let old = existing.iter().find(|s| s.spec.name == p.spec.name);
        let resolve = needs_resolve(a.resolve_image, p, old) && !a.dry_run;
        let image = match resolve {
            // A registry that cannot answer keeps what runs (when the file's image is the same).
            true => crate::registry::resolve_for_service(cli, &p.image).await.unwrap_or_else(|| kept_image(p, old)),
            false => kept_image(p, old),
        };
        desired.insert(p.spec.name.clone(), desired_spec(p, old, &nets, &image));
    }
    let todo = changes(&plan, &nets, &existing, &desired, a.prune)?;
    let mut created_networks = false;
    for c in &todo {
        println!("{}", c.describe(a.dry_run));
        if a.dry_run {
            continue;
        }
        match c {
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
                let old = existing.iter().find(|s| &s.spec.name == name);
                let image = desired.get(name).map_or(p.image.clone(), |s| s.task.image.clone());
                let spec = desired_spec(p, old, &nets, &image);
                let auth =
                    a.with_registry_auth.then(|| crate::registry::registry_auth_for(cli, &p.image)).transpose()?;
                let spec_json = serde_json::to_string(&spec)?;
                match c {
                    Change::UpdateService(id, _) => {
                        let req = pb::ServiceUpdateRequest {
                            id: id.clone(),
                            spec_json,
                            rollback: false,
                            replace_auth: auth.is_some(),
                            auth,
                        };
                        control.update_service(req).await.with_context(|| format!("updating service {name}"))?;
                    }
                    _ => {
                        let req = pb::ServiceCreateRequest { spec_json, auth };
                        control.create_service(req).await.with_context(|| format!("creating service {name}"))?;
                    }
                }
            }
            Change::RemoveService(id, name) => {
                control
                    .remove_service(pb::ServiceRef { id: id.clone() })
                    .await
                    .with_context(|| format!("removing service {name}"))?;
            }
            Change::Unchanged(..) => {}
        }
    }
    Ok(())
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

    use super::*;
    use crate::stack::compose::{Vars, parse};

    fn plan() -> Plan {
        let yaml = "services:\n  web: {image: 'nginx:1', ports: ['8080:80']}\n  db: {image: postgres}\n";
        let loaded = parse(&[("c.yml".into(), yaml.into())], &Vars::new()).expect("parses");
        translate(&loaded.compose, "app", std::path::Path::new("/")).expect("translates")
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
    fn stored(plan: &Plan, nets: &[Network]) -> Vec<Service> {
        plan.services
            .iter()
            .enumerate()
            .map(|(i, p)| Service {
                id: format!("s{i}"),
                spec: desired_spec(p, None, nets, &format!("{}@sha256:ab", p.image)),
                ..Default::default()
            })
            .collect()
    }

    fn desired(
        plan: &Plan,
        existing: &[Service],
        nets: &[Network],
        mode: ResolveImage,
    ) -> BTreeMap<String, ServiceSpec> {
        plan.services
            .iter()
            .map(|p| {
                let old = existing.iter().find(|s| s.spec.name == p.spec.name);
                // "Resolving" gives the same digest as before.
                let image =
                    if needs_resolve(mode, p, old) { format!("{}@sha256:ab", p.image) } else { kept_image(p, old) };
                (p.spec.name.clone(), desired_spec(p, old, nets, &image))
            })
            .collect()
    }

    #[test]
    fn a_first_deploy_creates_the_network_then_the_services() {
        let p = plan();
        let got = changes(&p, &[], &[], &desired(&p, &[], &[], ResolveImage::Always), false).expect("plans");
        assert_eq!(
            got,
            [
                Change::CreateNetwork("app_default".into()),
                Change::CreateService("app_db".into()),
                Change::CreateService("app_web".into()),
            ]
        );
        assert_eq!(got[0].describe(false), "Creating network app_default");
        assert_eq!(got[1].describe(true), "Would create service app_db");
    }

    #[test]
    fn an_unchanged_file_changes_nothing_and_one_change_updates_one_service() {
        let nets = [net("n1", "app_default")];
        let p = plan();
        let existing = stored(&p, &nets);
        // Stored specs name their networks by id; the image is pinned.
        assert_eq!(existing[0].spec.task.networks[0].target, "n1");
        for mode in [ResolveImage::Always, ResolveImage::Changed, ResolveImage::Never] {
            let got = changes(&p, &nets, &existing, &desired(&p, &existing, &nets, mode), false).expect("plans");
            assert_eq!(
                got,
                [Change::Unchanged("s0".into(), "app_db".into()), Change::Unchanged("s1".into(), "app_web".into())],
                "{mode:?}"
            );
        }
        // `service update --force` on the side is not undone by a redeploy.
        let mut forced = existing.clone();
        forced[1].spec.task.force_update = 3;
        let got =
            changes(&p, &nets, &forced, &desired(&p, &forced, &nets, ResolveImage::Changed), false).expect("plans");
        assert_eq!(got[1], Change::Unchanged("s1".into(), "app_web".into()));

        let mut p2 = p.clone();
        p2.services[1].spec.replicas = 3;
        let got = changes(&p2, &nets, &existing, &desired(&p2, &existing, &nets, ResolveImage::Changed), false)
            .expect("plans");
        assert_eq!(
            got,
            [Change::Unchanged("s0".into(), "app_db".into()), Change::UpdateService("s1".into(), "app_web".into())]
        );
        assert_eq!(got[1].describe(false), "Updating service app_web (id: s1)");
    }

    #[test]
    fn a_changed_image_is_resolved_again_under_changed() {
        let p = plan();
        let nets = [net("n1", "app_default")];
        let existing = stored(&p, &nets);
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
        let mut existing = stored(&p, &nets);
        existing.push(Service {
            id: "s9".into(),
            spec: ServiceSpec { name: "app_old".into(), ..Default::default() },
            ..Default::default()
        });
        let d = desired(&p, &existing, &nets, ResolveImage::Never);
        let got = changes(&p, &nets, &existing, &d, false).expect("plans");
        assert!(!got.iter().any(|c| matches!(c, Change::RemoveService(..))));
        let got = changes(&p, &nets, &existing, &d, true).expect("plans");
        assert_eq!(got.last(), Some(&Change::RemoveService("s9".into(), "app_old".into())));

        let mut ext = p.clone();
        ext.networks[0].external = true;
        let e = changes(&ext, &[], &[], &d, false).unwrap_err();
        assert!(e.to_string().contains("declared as external, but could not be found"), "{e}");
        assert!(changes(&ext, &nets, &[], &d, false).is_ok());
    }
}
