//! `shoal stack …`: applications from Compose files, as `docker stack`
//! deploys them. [`compose`] reads the files (interpolation, overrides),
//! [`translate`] turns them into networks, secrets, configs and service specs (pure),
//! [`deploy`] lays them over the cluster through the Control API (secrets and
//! configs, networks, services); the other verbs list and remove what carries
//! the stack's namespace label.

mod compose;
mod deploy;
mod interpolate;
mod translate;

pub(crate) use self::translate::shell_words;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Subcommand;
use shoal_proto::pb;
use shoal_proto::secret::Kind;
use shoal_proto::service::ServiceListEntry;

pub use self::deploy::DeployArgs;
use self::deploy::{in_stack, list_networks, list_objects};
use self::translate::NAMESPACE_LABEL;
use crate::args::{Cli, Format};
use crate::client;
use crate::output::col;
use crate::service::Control;
use crate::service::list::{print_services, print_tasks, services, tasks};

#[derive(Subcommand, Debug)]
pub enum StackCmd {
    /// Deploy a new stack or update an existing one from Compose files.
    #[command(alias = "up")]
    Deploy(DeployArgs),
    /// List stacks.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_parser = Format::parse, default_value = "table")]
        format: Format,
    },
    /// List the services of a stack.
    Services {
        #[arg(short, long)]
        quiet: bool,
        /// Only what matches KEY=VALUE (a key's values are alternatives): id, name, label, mode.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        #[arg(long, value_parser = Format::parse, default_value = "table")]
        format: Format,
        stack: String,
    },
    /// List the tasks of a stack.
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
        stack: String,
    },
    /// Remove stacks: their services, then their secrets, configs and networks.
    #[command(aliases = ["remove", "down"])]
    Rm {
        #[arg(required = true)]
        stacks: Vec<String>,
    },
}

/// Carries out a stack verb; the exit status is 1 when `rm` could not remove everything.
pub async fn run(cli: &Cli, cmd: &StackCmd) -> anyhow::Result<i32> {
    if let StackCmd::Deploy(a) = cmd {
        deploy::deploy(cli, a).await?;
        return Ok(0);
    }
    let mut control = client::control(cli).await?;
    match cmd {
        StackCmd::Deploy(_) => {}
        StackCmd::Ls { format } => {
            let mut stacks: BTreeMap<String, usize> = BTreeMap::new();
            for e in services(&mut control).await? {
                if let Some(s) = e.service.spec.labels.get(NAMESPACE_LABEL) {
                    *stacks.entry(s.clone()).or_default() += 1;
                }
            }
            if *format == Format::Json {
                let v: Vec<serde_json::Value> =
                    stacks.iter().map(|(n, c)| serde_json::json!({"Name": n, "Services": c})).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let rows: Vec<Vec<String>> = stacks.iter().map(|(n, c)| vec![n.clone(), c.to_string()]).collect();
                crate::output::print_rows(*format, &[col("Name", "NAME"), col("Services", "SERVICES")], &rows)?;
            }
        }
        StackCmd::Services { quiet, filter, format, stack } => {
            let mut list = stack_services(&mut control, stack).await?;
            if list.is_empty() && !quiet {
                eprintln!("Nothing found in stack: {stack}");
            }
            crate::service::keep_services(&mut list, filter)?;
            print_services(&list, *quiet, *format)?;
        }
        StackCmd::Ps { quiet, no_trunc, filter, format, stack } => {
            let keep = crate::service::task_filters(cli, filter).await?;
            let list = stack_services(&mut control, stack).await?;
            if list.is_empty() {
                anyhow::bail!("nothing found in stack: {stack}");
            }
            let mut all = Vec::new();
            for e in &list {
                all.extend(tasks(&mut control, &e.service.id).await?);
            }
            print_tasks(all, *quiet, *no_trunc, &keep, *format)?;
        }
        StackCmd::Rm { stacks } => {
            let mut failed = false;
            for s in stacks {
                failed |= !remove(&mut control, s).await?;
            }
            return Ok(i32::from(failed));
        }
    }
    Ok(0)
}

/// The services of `stack`, by name.
pub(crate) async fn stack_services(control: &mut Control, stack: &str) -> anyhow::Result<Vec<ServiceListEntry>> {
    let mut list: Vec<ServiceListEntry> =
        services(control).await?.into_iter().filter(|e| in_stack(&e.service.spec.labels, stack)).collect();
    list.sort_by(|a, b| a.service.spec.name.cmp(&b.service.spec.name));
    Ok(list)
}

/// How long `stack rm` waits for a network's last tasks to end before it gives up on it.
const NETWORK_WAIT: Duration = Duration::from_secs(60);

/// Removes a stack's services, then its secrets and configs, then its
/// networks (once their tasks are gone), as Docker does; whether everything
/// went. What the stack did not create (no namespace label: an external
/// secret, config or network) stays.
async fn remove(control: &mut Control, stack: &str) -> anyhow::Result<bool> {
    let svcs = stack_services(control, stack).await?;
    let mut objects = list_objects(control, Kind::Secret).await?;
    objects.extend(list_objects(control, Kind::Config).await?);
    objects.retain(|o| in_stack(&o.labels, stack));
    let nets: Vec<_> = list_networks(control).await?.into_iter().filter(|n| in_stack(&n.spec.labels, stack)).collect();
    if svcs.is_empty() && nets.is_empty() && objects.is_empty() {
        eprintln!("Nothing found in stack: {stack}");
        return Ok(true);
    }
    let mut ok = true;
    // Dependents first: the managers refuse to remove a service another depends on.
    let specs: Vec<&shoal_proto::service::ServiceSpec> = svcs.iter().map(|e| &e.service.spec).collect();
    let order = translate::removal_order(&specs);
    let svcs = order.iter().filter_map(|spec| svcs.iter().find(|e| e.service.spec.name == spec.name));
    for e in svcs {
        println!("Removing service {}", e.service.spec.name);
        if let Err(s) = control.remove_service(pb::ServiceRef { id: e.service.id.clone() }).await {
            eprintln!("Failed to remove service {}: {}", e.service.spec.name, s.message());
            ok = false;
        }
    }
    // A secret or config is in use while a service refers to it: these are gone now,
    // unless a service outside the stack uses one (then it stays, and rm says so).
    for o in &objects {
        println!("Removing {} {}", o.kind, o.name);
        if let Err(s) = control.remove_object(pb::ObjectRef { kind: o.kind.as_str().into(), id: o.id.clone() }).await {
            eprintln!("Failed to remove {} {}: {}", o.kind, o.name, s.message());
            ok = false;
        }
    }
    for n in &nets {
        println!("Removing network {}", n.spec.name);
        // A removed service's tasks hold the network until they have stopped.
        let deadline = Instant::now() + NETWORK_WAIT;
        loop {
            match control.remove_network(pb::ClusterNetworkRef { id: n.id.clone() }).await {
                Ok(_) => break,
                Err(s) if s.message().contains("in use by task") && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(s) => {
                    eprintln!("Failed to remove network {}: {}", n.spec.name, s.message());
                    ok = false;
                    break;
                }
            }
        }
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn parse(args: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("shoal").chain(args.split_whitespace()))
    }

    #[test]
    fn the_stack_verbs_take_dockers_flags_and_aliases() {
        let Ok(crate::args::Cmd::Stack(StackCmd::Deploy(d))) = parse(
            "stack up -c a.yml --compose-file b.yml --prune --resolve-image changed --with-registry-auth --dry-run shop",
        )
        .map(|c| c.cmd) else {
            panic!("not stack deploy")
        };
        assert_eq!(d.compose_file, [std::path::PathBuf::from("a.yml"), "b.yml".into()]);
        assert!(d.prune && d.with_registry_auth && d.dry_run);
        assert_eq!((d.resolve_image, d.stack.as_str()), (deploy::ResolveImage::Changed, "shop"));
        assert!(parse("stack deploy shop").is_err(), "-c is required");
        assert!(parse("stack deploy -c a.yml --resolve-image sometimes shop").is_err());
        for verb in ["rm shop", "down shop other", "remove shop", "ls", "services -q shop", "ps --no-trunc shop"] {
            assert!(parse(&format!("stack {verb}")).is_ok(), "{verb}");
        }
    }
}
