//! Housekeeping: what the node's images, containers and volumes take on disk
//! (`system df`) and which of them `prune` may remove. The choices are pure
//! functions of plain facts, so the rule "nothing in use is ever removed" is
//! tested here by tables; the engine gathers the facts and removes through
//! the same store calls as `rm`, `image rm`, `volume rm` and `network rm`,
//! which check use again under their own locks.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

/// Docker's prune `--filter`s: `until` (made before then), `label` (has
/// every one) and `label!` (not all of them), a label being `KEY` or
/// `KEY=VALUE`. They only narrow what prune would take; something whose
/// creation time is not known is never taken under `until`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneFilter {
    pub until_ms: Option<u64>,
    pub labels: Vec<String>,
    pub not_labels: Vec<String>,
}

impl PruneFilter {
    pub fn is_empty(&self) -> bool {
        *self == PruneFilter::default()
    }

    /// Whether something made at `created_ms` with `labels` may be pruned.
    pub fn admits(&self, created_ms: Option<u64>, labels: &BTreeMap<String, String>) -> bool {
        let has = |want: &String| {
            let (k, v) = want.split_once('=').map_or((want.as_str(), None), |(k, v)| (k, Some(v)));
            labels.get(k).is_some_and(|l| v.is_none_or(|v| l == v))
        };
        self.until_ms.is_none_or(|u| created_ms.is_some_and(|c| c < u))
            && self.labels.iter().all(has)
            && (self.not_labels.is_empty() || !self.not_labels.iter().all(has))
    }
}

/// What selection needs to know of a container.
#[derive(Clone, Debug, Default)]
pub struct ContainerFacts {
    pub id: String,
    /// Running, or exited with a restart by its policy pending.
    pub active: bool,
    /// Created (record written) but never started.
    pub created_only: bool,
    pub created_ms: u64,
    /// Removed by the daemon itself when it ends (`--rm`).
    pub auto_remove: bool,
    /// `sha256:…`
    pub image_id: String,
    pub volumes: Vec<String>,
    pub networks: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// A container that was never started is left alone this long after it was
/// made: `run` writes the record before its shim starts it.
pub const CREATED_GRACE_MS: u64 = 60_000;

/// `container prune`: every stopped container (exited, dead, or created and
/// never started), never a running or restarting one, nor a `--rm` one (the
/// daemon removes it itself), nor one being started right now.
pub fn containers_to_prune(containers: &[ContainerFacts], now_ms: u64) -> Vec<String> {
    containers
        .iter()
        .filter(|c| !c.active && !c.auto_remove)
        .filter(|c| !c.created_only || now_ms.saturating_sub(c.created_ms) >= CREATED_GRACE_MS)
        .map(|c| c.id.clone())
        .collect()
}

/// The images any container (running or not) uses.
pub fn images_in_use(containers: &[ContainerFacts]) -> BTreeSet<String> {
    containers.iter().map(|c| c.image_id.clone()).collect()
}

/// `image prune`: dangling images (no tag) no container uses; with `all`,
/// every image no container uses.
pub fn images_to_prune(images: &[(String, bool)], in_use: &BTreeSet<String>, all: bool) -> Vec<String> {
    images.iter().filter(|(id, tagged)| (all || !tagged) && !in_use.contains(id)).map(|(id, _)| id.clone()).collect()
}

/// `volume prune`: anonymous volumes no container mounts (Docker ≥ 23);
/// with `all`, named ones too.
pub fn volumes_to_prune(volumes: &[(String, bool)], containers: &[ContainerFacts], all: bool) -> Vec<String> {
    let used: HashSet<&str> = containers.iter().flat_map(|c| c.volumes.iter().map(String::as_str)).collect();
    volumes
        .iter()
        .filter(|(name, anonymous)| (all || *anonymous) && !used.contains(name.as_str()))
        .map(|(n, _)| n.clone())
        .collect()
}

/// Networks that always exist and are never pruned.
pub const PREDEFINED_NETWORKS: [&str; 3] = ["bridge", "host", "none"];

/// `network prune`: user networks with no endpoint that no container (even
/// a stopped one, which gets it back when started) names.
pub fn networks_to_prune(networks: &[(String, String, u32)], containers: &[ContainerFacts]) -> Vec<String> {
    let used: HashSet<&str> = containers.iter().flat_map(|c| c.networks.iter().map(String::as_str)).collect();
    networks
        .iter()
        .filter(|(id, name, endpoints)| {
            *endpoints == 0
                && !PREDEFINED_NETWORKS.contains(&name.as_str())
                && !used.contains(name.as_str())
                && !used.contains(id.as_str())
        })
        .map(|(_, name, _)| name.clone())
        .collect()
}

/// Image disk usage as `system df` shows it: each image's shared size (of
/// its layers other images also have), the images' total with every layer
/// counted once, and what removing the images no container uses would free.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageUsage {
    pub shared: BTreeMap<String, u64>,
    pub total: u64,
    pub reclaimable: u64,
}

pub fn image_usage(images: &[(String, Vec<(String, u64)>)], in_use: &BTreeSet<String>) -> ImageUsage {
    let mut holders: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut sizes: BTreeMap<&str, u64> = BTreeMap::new();
    for (id, layers) in images {
        for (layer, size) in layers {
            holders.entry(layer.as_str()).or_default().insert(id.as_str());
            sizes.insert(layer.as_str(), *size);
        }
    }
    let mut u = ImageUsage { total: sizes.values().sum(), ..Default::default() };
    for (id, layers) in images {
        let unique: BTreeSet<&str> = layers.iter().map(|(l, _)| l.as_str()).collect();
        let shared = unique.iter().filter(|l| holders[*l].len() > 1).map(|l| sizes[*l]).sum();
        u.shared.insert(id.clone(), shared);
    }
    let kept: u64 =
        holders.iter().filter(|(_, ids)| ids.iter().any(|i| in_use.contains(*i))).map(|(l, _)| sizes[l]).sum();
    u.reclaimable = u.total - kept;
    u
}

/// Bytes of the files under `root` (hard links once, symlinks as links,
/// never following them nor leaving root's filesystem); 0 if it is missing.
pub fn dir_size(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(root) else { return 0 };
    let mut seen = HashSet::new();
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else { continue };
            if m.is_dir() {
                if m.dev() == top.dev() {
                    stack.push(e.path());
                }
            } else if m.nlink() <= 1 || seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    total
}

// ---- the engine's side: facts in, removals through the stores ----

use shoal_proto::pb;
use tonic::Status;

use crate::api::EngineService;
use crate::events::attrs;
use crate::runtime::{Container, Status as CStatus};

fn facts(c: &Container) -> ContainerFacts {
    ContainerFacts {
        id: c.record.id.clone(),
        active: matches!(c.status, CStatus::Running { .. }) || c.restarting(),
        created_only: c.status == CStatus::Created,
        created_ms: c.record.created_ms,
        auto_remove: c.record.auto_remove,
        image_id: c.record.image_id.clone(),
        volumes: c
            .record
            .mounts
            .iter()
            .filter_map(|m| if let crate::volumes::MountSource::Volume(v) = &m.source { Some(v.clone()) } else { None })
            .collect(),
        networks: c
            .record
            .networks
            .iter()
            .map(|a| a.network.clone())
            .chain(c.endpoints.iter().map(|e| e.network.clone()))
            .collect(),
        labels: c.record.labels.clone(),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))
}

/// `system df`: every image, container and volume with its size on disk.
pub(crate) async fn disk_usage(e: &EngineService) -> Result<pb::DiskUsage, Status> {
    let (images, containers, volumes) = (e.images.clone(), e.containers.clone(), e.volumes.clone());
    blocking(move || {
        let all = containers.list();
        let facts: Vec<ContainerFacts> = all.iter().map(facts).collect();
        let used = images_in_use(&facts);
        let layered = images.layer_sizes();
        let by_id: Vec<(String, Vec<(String, u64)>)> = layered
            .iter()
            .map(|(s, ls)| (s.id.to_string(), ls.iter().map(|(d, n)| (d.to_string(), *n)).collect()))
            .collect();
        let usage = image_usage(&by_id, &used);
        let mut out =
            pb::DiskUsage { images_size: usage.total, images_reclaimable: usage.reclaimable, ..Default::default() };
        for (s, _) in &layered {
            let id = s.id.to_string();
            out.images.push(pb::ImageUsage {
                image: Some(crate::api::image_pb(s)),
                shared_size: usage.shared.get(&id).copied().unwrap_or(0),
                containers: facts.iter().filter(|f| f.image_id == id).count() as u32,
            });
        }
        for (c, f) in all.iter().zip(&facts) {
            out.containers.push(pb::ContainerUsage {
                container: Some(crate::api::container_pb(c)),
                size_rw: containers.rw_size(&c.record.id),
                local_volumes: f.volumes.len() as u32,
            });
        }
        for v in volumes.list() {
            let links = facts.iter().filter(|f| f.volumes.contains(&v.name)).count() as u32;
            out.volumes.push(pb::VolumeUsage {
                size: dir_size(&v.mountpoint),
                links,
                volume: Some(crate::api::volume_pb(&v)),
            });
        }
        out
    })
    .await
}

/// `container|image|volume|network prune`. What is chosen is removed through
/// the stores, which refuse anything that came into use meanwhile (skipped).
///
/// `filtered` (`PruneFiltered`, a call of its own so that a daemon that
/// cannot filter refuses instead of pruning everything) narrows it by the
/// request's `until_ms` and labels.
pub(crate) async fn prune(e: &EngineService, r: pb::PruneRequest, filtered: bool) -> Result<pb::PruneResponse, Status> {
    let (images, containers, volumes) = (e.images.clone(), e.containers.clone(), e.volumes.clone());
    let events = e.containers.events();
    let all = r.all;
    let filter = if filtered {
        PruneFilter { until_ms: (r.until_ms > 0).then_some(r.until_ms), labels: r.labels, not_labels: r.not_labels }
    } else {
        PruneFilter::default()
    };
    match (r.kind.as_str(), filter.until_ms) {
        ("volume", Some(_)) => {
            return Err(Status::invalid_argument("volume prune takes no until filter (Docker's neither): use label="));
        }
        ("network", Some(_)) => {
            return Err(Status::invalid_argument(
                "network prune takes no until filter: this node does not keep when its networks were made; use label=",
            ));
        }
        _ => {}
    }
    match r.kind.as_str() {
        "container" => {
            blocking(move || {
                // Each container is chosen on its own facts: the filters go first.
                let facts: Vec<ContainerFacts> = containers
                    .list()
                    .iter()
                    .map(facts)
                    .filter(|f| filter.admits(Some(f.created_ms), &f.labels))
                    .collect();
                let mut out = pb::PruneResponse::default();
                for id in containers_to_prune(&facts, shoal_proto::model::now_ms()) {
                    let size = containers.rw_size(&id);
                    match containers.remove(&id, false, false) {
                        Ok(id) => {
                            out.deleted.push(id);
                            out.reclaimed_bytes += size;
                        }
                        Err(err) => tracing::info!(container = %id, error = %err, "prune skipped a container"),
                    }
                }
                events.emit("container", "prune", "", attrs([("reclaimed", out.reclaimed_bytes.to_string())]));
                out
            })
            .await
        }
        "image" => {
            blocking(move || {
                let facts: Vec<ContainerFacts> = containers.list().iter().map(facts).collect();
                let all_images = images.list();
                let listed: Vec<(String, bool)> =
                    all_images.iter().map(|i| (i.id.to_string(), !i.repo_tags.is_empty())).collect();
                let digests: BTreeMap<String, crate::images::Digest> =
                    all_images.into_iter().map(|i| (i.id.to_string(), i.id)).collect();
                let mut out = pb::PruneResponse::default();
                for id in images_to_prune(&listed, &images_in_use(&facts), all) {
                    let Some(digest) = digests.get(&id) else { continue };
                    if !filter.is_empty() {
                        // The image's build time and labels, as Docker's filters read them.
                        let Ok(d) = images.inspect(&id) else { continue };
                        let created = d.created.as_deref().and_then(shoal_proto::model::parse_rfc3339_ns);
                        let created_ms = created.and_then(|ns| u64::try_from(ns / 1_000_000).ok());
                        if !filter.admits(created_ms, &d.config.labels.unwrap_or_default()) {
                            continue;
                        }
                    }
                    match images.remove_unused(digest, &|i| containers.image_in_use(i)) {
                        Ok((steps, freed)) => {
                            out.reclaimed_bytes += freed;
                            for s in steps {
                                match s {
                                    crate::images::Removed::Untagged(t) => {
                                        events.emit("image", "untag", &id, attrs([("name", t.clone())]));
                                        out.untagged.push(t);
                                    }
                                    crate::images::Removed::Deleted(d) => {
                                        events.emit(
                                            "image",
                                            "delete",
                                            &d.to_string(),
                                            attrs([("name", d.to_string())]),
                                        );
                                        out.deleted.push(d.to_string());
                                    }
                                }
                            }
                        }
                        Err(err) => tracing::info!(image.id = %id, error = %err, "prune skipped an image"),
                    }
                }
                events.emit("image", "prune", "", attrs([("reclaimed", out.reclaimed_bytes.to_string())]));
                out
            })
            .await
        }
        "volume" => {
            blocking(move || {
                let facts: Vec<ContainerFacts> = containers.list().iter().map(facts).collect();
                // The filters only leave volumes out; use is still every container's.
                let listed: Vec<(String, bool)> = volumes
                    .list()
                    .iter()
                    .filter(|v| filter.admits(Some(v.created_ms), &v.labels))
                    .map(|v| (v.name.clone(), v.anonymous))
                    .collect();
                let mut out = pb::PruneResponse::default();
                for name in volumes_to_prune(&listed, &facts, all) {
                    let size = volumes.inspect(&name).map(|v| dir_size(&v.mountpoint)).unwrap_or(0);
                    match volumes.remove(&name, containers.volume_user(&name)) {
                        Ok(()) => {
                            events.emit("volume", "destroy", &name, attrs([("driver", "local".into())]));
                            out.deleted.push(name);
                            out.reclaimed_bytes += size;
                        }
                        Err(err) => tracing::info!(volume = %name, error = %err, "prune skipped a volume"),
                    }
                }
                events.emit("volume", "prune", "", attrs([("reclaimed", out.reclaimed_bytes.to_string())]));
                out
            })
            .await
        }
        "network" => {
            let Some(nets) = containers.networks() else { return Ok(pb::PruneResponse::default()) };
            let listed = nets.call_async(async |c| c.network_list(pb::Empty {}).await.map(|r| r.into_inner())).await?;
            let c2 = containers.clone();
            let facts: Vec<ContainerFacts> = blocking(move || c2.list().iter().map(facts).collect()).await?;
            let triples: Vec<(String, String, u32)> =
                listed.networks.iter().map(|n| (n.id.clone(), n.name.clone(), n.endpoints)).collect();
            let mut out = pb::PruneResponse::default();
            // This node's networks have no labels: label= takes none of them, label!= all.
            let chosen =
                if filter.admits(None, &BTreeMap::new()) { networks_to_prune(&triples, &facts) } else { Vec::new() };
            for name in chosen {
                let id = listed.networks.iter().find(|n| n.name == name).map(|n| n.id.clone()).unwrap_or_default();
                let req = pb::NetworkRef { name: name.clone() };
                match nets.call_async(async move |c| c.network_remove(req).await.map(|r| r.into_inner())).await {
                    Ok(_) => {
                        events.emit(
                            "network",
                            "destroy",
                            &id,
                            attrs([("name", name.clone()), ("type", "bridge".into())]),
                        );
                        out.deleted.push(name);
                    }
                    Err(err) => tracing::info!(network = %name, error = %err.message(), "prune skipped a network"),
                }
            }
            events.emit("network", "prune", "", BTreeMap::new());
            Ok(out)
        }
        other => {
            Err(Status::invalid_argument(format!("cannot prune {other:?}: use container, image, volume or network")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, active: bool, image: &str, volumes: &[&str], networks: &[&str]) -> ContainerFacts {
        ContainerFacts {
            id: id.into(),
            active,
            image_id: image.into(),
            volumes: volumes.iter().map(|s| s.to_string()).collect(),
            networks: networks.iter().map(|s| s.to_string()).collect(),
            created_ms: 0,
            ..Default::default()
        }
    }

    #[test]
    fn prune_filters_only_narrow_what_is_taken() {
        let labels = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let web = labels(&[("tier", "web"), ("keep", "")]);
        let f = |until: Option<u64>, l: &[&str], n: &[&str]| PruneFilter {
            until_ms: until,
            labels: l.iter().map(|s| s.to_string()).collect(),
            not_labels: n.iter().map(|s| s.to_string()).collect(),
        };
        assert!(f(None, &[], &[]).is_empty() && f(None, &[], &[]).admits(None, &BTreeMap::new()));
        assert!(f(Some(100), &[], &[]).admits(Some(99), &web));
        assert!(!f(Some(100), &[], &[]).admits(Some(100), &web), "made at until: kept");
        assert!(!f(Some(100), &[], &[]).admits(None, &web), "no known creation: kept");
        assert!(f(None, &["tier=web", "keep"], &[]).admits(None, &web));
        assert!(!f(None, &["tier=web", "owner"], &[]).admits(None, &web), "every label= must be there");
        assert!(!f(None, &[], &["keep"]).admits(None, &web), "label!=keep keeps what has it");
        assert!(f(None, &[], &["keep"]).admits(None, &BTreeMap::new()));
        assert!(f(None, &[], &["keep", "owner"]).admits(None, &web), "label! keeps only what has them all");
        assert!(!f(None, &[], &["tier=web"]).admits(None, &web) && f(None, &[], &["tier=db"]).admits(None, &web));
    }

    #[test]
    fn only_stopped_containers_are_pruned() {
        let now = 1_000_000;
        let mut fresh = c("fresh", false, "i", &[], &[]);
        (fresh.created_only, fresh.created_ms) = (true, now - 1000);
        let mut old = c("old-created", false, "i", &[], &[]);
        (old.created_only, old.created_ms) = (true, now - CREATED_GRACE_MS);
        let mut rm = c("rm", false, "i", &[], &[]);
        rm.auto_remove = true;
        let all = [c("running", true, "i", &[], &[]), c("exited", false, "i", &[], &[]), fresh, old, rm];
        assert_eq!(containers_to_prune(&all, now), ["exited", "old-created"]);
        assert!(containers_to_prune(&all[..1], now).is_empty());
    }

    #[test]
    fn images_in_use_are_never_pruned() {
        let containers = [c("a", true, "sha256:run", &[], &[]), c("b", false, "sha256:stopped", &[], &[])];
        let used = images_in_use(&containers);
        let images: Vec<(String, bool)> = [
            ("sha256:run", true),
            ("sha256:stopped", false),
            ("sha256:dangling", false),
            ("sha256:tagged", true),
            ("sha256:run2", false),
        ]
        .iter()
        .map(|(i, t)| (i.to_string(), *t))
        .collect();
        assert_eq!(images_to_prune(&images, &used, false), ["sha256:dangling", "sha256:run2"]);
        assert_eq!(images_to_prune(&images, &used, true), ["sha256:dangling", "sha256:tagged", "sha256:run2"]);
        for all in [false, true] {
            let chosen = images_to_prune(&images, &used, all);
            assert!(!chosen.iter().any(|i| used.contains(i)), "{chosen:?}");
        }
    }

    #[test]
    fn mounted_volumes_are_never_pruned() {
        let containers =
            [c("a", true, "i", &["anon-used", "named-used"], &[]), c("b", false, "i", &["anon-stopped"], &[])];
        let volumes: Vec<(String, bool)> = [
            ("anon-used", true),
            ("anon-stopped", true),
            ("anon-free", true),
            ("named-used", false),
            ("named-free", false),
        ]
        .iter()
        .map(|(n, a)| (n.to_string(), *a))
        .collect();
        assert_eq!(volumes_to_prune(&volumes, &containers, false), ["anon-free"]);
        assert_eq!(volumes_to_prune(&volumes, &containers, true), ["anon-free", "named-free"]);
    }

    #[test]
    fn networks_with_endpoints_or_predefined_are_never_pruned() {
        let containers = [c("a", false, "i", &[], &["stopped-net"]), c("b", true, "i", &[], &["id-named"])];
        let nets: Vec<(String, String, u32)> = [
            ("n0", "bridge", 0),
            ("n1", "host", 0),
            ("n2", "none", 0),
            ("n3", "busy", 2),
            ("n4", "stopped-net", 0),
            ("id-named", "by-id", 0),
            ("n6", "free", 0),
        ]
        .iter()
        .map(|(i, n, e)| (i.to_string(), n.to_string(), *e))
        .collect();
        assert_eq!(networks_to_prune(&nets, &containers), ["free"]);
    }

    #[test]
    fn image_usage_counts_shared_layers_once() {
        let l = |d: &str, s: u64| (d.to_string(), s);
        let images = vec![
            ("a".to_string(), vec![l("base", 100), l("a1", 10)]),
            ("b".to_string(), vec![l("base", 100), l("b1", 20)]),
            ("c".to_string(), vec![l("c1", 5), l("c1", 5)]),
        ];
        let used: BTreeSet<String> = ["a".to_string()].into();
        let u = image_usage(&images, &used);
        assert_eq!(u.total, 135);
        assert_eq!(u.shared["a"], 100);
        assert_eq!(u.shared["b"], 100);
        assert_eq!(u.shared["c"], 0);
        // b's own layer and c go; the base stays with a.
        assert_eq!(u.reclaimable, 25);
        assert_eq!(image_usage(&images, &BTreeSet::new()).reclaimable, 135);
    }

    #[test]
    fn dir_size_counts_files_and_hard_links_once() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(d.path().join("sub")).expect("mkdir");
        std::fs::write(d.path().join("a"), vec![0u8; 100]).expect("a");
        std::fs::write(d.path().join("sub/b"), vec![0u8; 50]).expect("b");
        std::fs::hard_link(d.path().join("a"), d.path().join("sub/a-again")).expect("link");
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("link")).expect("symlink");
        assert_eq!(dir_size(d.path()), 150 + "/etc/passwd".len() as u64);
        assert_eq!(dir_size(&d.path().join("missing")), 0);
    }
}
