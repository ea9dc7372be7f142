use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use pathrs::flags::OpenFlags;
use pathrs::procfs::{ProcfsBase, ProcfsHandle};
use procfs::ProcError;
use procfs::process::MountInfo;

use super::ControllerType;
use super::controller_type::CONTROLLERS;

#[derive(thiserror::Error, Debug)]
pub enum V1MountPointError {
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error("failed to get mountinfo: {0}")]
    MountInfo(ProcError),
    #[error("could not find mountpoint for {subsystem}")]
    NotFound { subsystem: ControllerType },
    #[error(transparent)]
    Pathrs(#[from] pathrs::error::Error),
}

/// List all cgroup v1 subsystem mount points on the system. This can include unsupported
/// subsystems, comounted controllers and named hierarchies.
pub fn list_subsystem_mount_points() -> Result<Vec<PathBuf>, V1MountPointError> {
    let reader = BufReader::new(ProcfsHandle::new()?.open(
        ProcfsBase::ProcSelf,
        "mountinfo",
        OpenFlags::O_RDONLY | OpenFlags::O_CLOEXEC,
    )?);

    reader
        .lines()
        .map(|lr| {
            lr.map_err(V1MountPointError::Io)
                .and_then(|line| MountInfo::from_line(&line).map_err(V1MountPointError::MountInfo))
        })
        .try_fold(Vec::new(), |mut mount_points, r| {
            r.map(|m| {
                if m.fs_type == "cgroup" {
                    mount_points.push(m.mount_point);
                }
                mount_points
            })
        })
}

/// List the mount points of all currently supported cgroup subsystems.
pub fn list_supported_mount_points() -> Result<HashMap<ControllerType, PathBuf>, V1MountPointError>
{
    // One read for all of them (Shoal); a table that does not parse before any is found has none.
    Ok(subsystem_mount_points(CONTROLLERS).unwrap_or_default())
}

pub fn get_subsystem_mount_point(subsystem: &ControllerType) -> Result<PathBuf, V1MountPointError> {
    let reader = BufReader::new(ProcfsHandle::new()?.open(
        ProcfsBase::ProcSelf,
        "mountinfo",
        OpenFlags::O_RDONLY | OpenFlags::O_CLOEXEC,
    )?);
    let mut found = mount_points_in(reader, std::slice::from_ref(subsystem))?;
    found.remove(subsystem).ok_or(V1MountPointError::NotFound {
        subsystem: *subsystem,
    })
}

/// The mount points of `subsystems`, from one read of `/proc/self/mountinfo`
/// that stops once every one of them is found. A subsystem that is not
/// mounted is absent from the map. (Shoal: the manager looked each subsystem
/// up in a read of its own, and each absent one read the whole table, which
/// on a host with many containers' mounts is most of a start's reading.)
pub fn subsystem_mount_points(
    subsystems: &[ControllerType],
) -> Result<HashMap<ControllerType, PathBuf>, V1MountPointError> {
    let reader = BufReader::new(ProcfsHandle::new()?.open(
        ProcfsBase::ProcSelf,
        "mountinfo",
        OpenFlags::O_RDONLY | OpenFlags::O_CLOEXEC,
    )?);
    mount_points_in(reader, subsystems)
}

/// [`subsystem_mount_points`] over a mountinfo table: for each subsystem, the
/// first cgroup mount that is its. A line that does not parse ends the search
/// with an error when a subsystem is still missing (as a search of its own
/// would have met it).
fn mount_points_in(
    table: impl BufRead,
    subsystems: &[ControllerType],
) -> Result<HashMap<ControllerType, PathBuf>, V1MountPointError> {
    let mut found = HashMap::with_capacity(subsystems.len());
    if subsystems.is_empty() {
        return Ok(found);
    }
    let names: Vec<(ControllerType, String)> =
        subsystems.iter().map(|s| (*s, s.to_string())).collect();
    for line in table.lines() {
        let m = line
            .map_err(V1MountPointError::Io)
            .and_then(|line| MountInfo::from_line(&line).map_err(V1MountPointError::MountInfo));
        let m = match m {
            Ok(m) => m,
            Err(e) if found.is_empty() => return Err(e),
            // The ones found before the bad line stand, as they did when each had a read.
            Err(_) => return Ok(found),
        };
        if m.fs_type != "cgroup" {
            continue;
        }
        for (subsystem, name) in &names {
            if !found.contains_key(subsystem) && is_mount_of(&m.mount_point, name) {
                found.insert(*subsystem, m.mount_point.clone());
            }
        }
        if found.len() == names.len() {
            break;
        }
    }
    Ok(found)
}

/// Shoal: [`subsystem_mount_points`] over cgroup mount points listed
/// beforehand (what [`list_subsystem_mount_points`] returned: every `cgroup`
/// mount, in the table's order), without reading the mount table: for each
/// subsystem, the first listed mount that is its.
pub fn mount_points_among(
    listed: &[PathBuf],
    subsystems: &[ControllerType],
) -> HashMap<ControllerType, PathBuf> {
    subsystems
        .iter()
        .filter_map(|s| {
            let name = s.to_string();
            let found = listed.iter().find(|m| is_mount_of(m, &name))?;
            Some((*s, found.clone()))
        })
        .collect()
}

/// Whether a cgroup mount at `mount_point` is the hierarchy of `subsystem`.
fn is_mount_of(mount_point: &std::path::Path, subsystem: &str) -> bool {
    // Some systems mount net_prio and net_cls in the same directory
    // other systems mount them in their own directories. This
    // should handle both cases.
    match subsystem {
        "net_cls" => ["net_cls,net_prio", "net_prio,net_cls", "net_cls"]
            .iter()
            .any(|s| mount_point.ends_with(s)),
        "net_prio" => ["net_cls,net_prio", "net_prio,net_cls", "net_prio"]
            .iter()
            .any(|s| mount_point.ends_with(s)),
        "cpu" => ["cpu,cpuacct", "cpu"]
            .iter()
            .any(|s| mount_point.ends_with(s)),
        "cpuacct" => ["cpu,cpuacct", "cpuacct"]
            .iter()
            .any(|s| mount_point.ends_with(s)),
        _ => mount_point.ends_with(subsystem),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 31 0:31 / /sys/fs/cgroup/net_cls,net_prio rw,relatime - cgroup cgroup rw,net_cls,net_prio
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 22 0:33 / /var/lib/c/rootfs rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
";

    #[test]
    fn one_read_finds_each_subsystem_as_a_read_of_its_own_did() {
        use ControllerType::*;
        let all = [Cpu, CpuAcct, Memory, NetworkClassifier, NetworkPriority, Pids, HugeTlb];
        let found = mount_points_in(TABLE.as_bytes(), &all).unwrap();
        let want = |p: &str| Some(PathBuf::from(p));
        let table = [
            (Cpu, want("/sys/fs/cgroup/cpu,cpuacct")),
            (CpuAcct, want("/sys/fs/cgroup/cpu,cpuacct")),
            // The first of two mounts of one hierarchy.
            (Memory, want("/sys/fs/cgroup/memory")),
            (NetworkClassifier, want("/sys/fs/cgroup/net_cls,net_prio")),
            (NetworkPriority, want("/sys/fs/cgroup/net_cls,net_prio")),
            (Pids, None),
            (HugeTlb, None),
        ];
        for (s, want) in table {
            assert_eq!(found.get(&s).cloned(), want, "{s}");
            // The same as one subsystem's search alone.
            let alone = mount_points_in(TABLE.as_bytes(), &[s]).unwrap();
            assert_eq!(alone.get(&s).cloned(), want, "{s} alone");
        }
        assert!(mount_points_in(TABLE.as_bytes(), &[]).unwrap().is_empty());
    }

    #[test]
    fn listed_mount_points_give_what_the_table_gives() {
        use ControllerType::*;
        let all = [
            Cpu,
            CpuAcct,
            CpuSet,
            Memory,
            NetworkClassifier,
            NetworkPriority,
            Pids,
            HugeTlb,
        ];
        // What `list_subsystem_mount_points` lists of the table: its cgroup mounts, in order.
        let listed: Vec<PathBuf> = TABLE
            .lines()
            .map(|l| MountInfo::from_line(l).unwrap())
            .filter(|m| m.fs_type == "cgroup")
            .map(|m| m.mount_point)
            .collect();
        assert_eq!(
            mount_points_among(&listed, &all),
            mount_points_in(TABLE.as_bytes(), &all).unwrap()
        );
        assert!(mount_points_among(&listed, &[]).is_empty());
        assert!(mount_points_among(&[], &all).is_empty());
    }

    #[test]
    fn the_search_stops_once_all_are_found() {
        // A line after the matches that does not parse is never read.
        let table = format!("{TABLE}not a mountinfo line\n");
        let found = mount_points_in(table.as_bytes(), &[ControllerType::Memory]).unwrap();
        assert_eq!(found.len(), 1);
        // One still missing there meets it: those found before it stand.
        let found = mount_points_in(table.as_bytes(), &[ControllerType::Memory, ControllerType::Pids]).unwrap();
        assert_eq!(found.keys().collect::<Vec<_>>(), [&ControllerType::Memory]);
        assert!(mount_points_in(table.as_bytes(), &[ControllerType::Pids]).is_err());
    }
}
