use std::fs;
use std::path::{Path, PathBuf, StripPrefixError};

use nix::unistd;
use oci_spec::runtime::LinuxCpu;
use unistd::Pid;

use super::ControllerType;
use super::controller::Controller;
use super::util::{self, V1MountPointError};
use crate::common::{self, ControllerOpt, WrapIoResult, WrappedIoError};

const CGROUP_CPUSET_CPUS: &str = "cpuset.cpus";
const CGROUP_CPUSET_MEMS: &str = "cpuset.mems";

#[derive(thiserror::Error, Debug)]
pub enum V1CpuSetControllerError {
    #[error("io error: {0}")]
    WrappedIo(#[from] WrappedIoError),
    #[error("bad cgroup path {path}: {err}")]
    BadCgroupPath {
        err: StripPrefixError,
        path: PathBuf,
    },
    #[error("cpuset parent value is empty")]
    EmptyParent,
    #[error("mount point error: {0}")]
    MountPoint(#[from] V1MountPointError),
}

pub struct CpuSet {}

impl Controller for CpuSet {
    type Error = V1CpuSetControllerError;
    type Resource = LinuxCpu;

    fn add_task(pid: Pid, cgroup_path: &Path) -> Result<(), Self::Error> {
        let mount = util::get_subsystem_mount_point(&ControllerType::CpuSet)?;
        Self::add_task_below(pid, cgroup_path, &mount)
    }

    fn apply(controller_opt: &ControllerOpt, cgroup_path: &Path) -> Result<(), Self::Error> {
        tracing::debug!("Apply CpuSet cgroup config");

        if let Some(cpuset) = Self::needs_to_handle(controller_opt) {
            Self::apply(cgroup_path, cpuset)?;
        }

        Ok(())
    }

    fn needs_to_handle<'a>(controller_opt: &'a ControllerOpt) -> Option<&'a Self::Resource> {
        if let Some(cpuset) = &controller_opt.resources.cpu() {
            if cpuset.cpus().is_some() || cpuset.mems().is_some() {
                return Some(cpuset);
            }
        }

        None
    }
}

impl CpuSet {
    /// Shoal: [`Controller::add_task`] with the hierarchy's mount point known
    /// (the manager has it), instead of reading the mount table for it.
    pub fn add_task_below(
        pid: Pid,
        cgroup_path: &Path,
        mount: &Path,
    ) -> Result<(), V1CpuSetControllerError> {
        // A cgroup outside the hierarchy is refused before anything is made or read.
        cgroup_path
            .strip_prefix(mount)
            .map_err(|err| V1CpuSetControllerError::BadCgroupPath {
                err,
                path: cgroup_path.to_path_buf(),
            })?;
        fs::create_dir_all(cgroup_path).wrap_create_dir(cgroup_path)?;

        // Shoal: a cgroup made below a parent whose `cgroup.clone_children`
        // is set starts with the parent's cpus and mems (the kernel copies
        // them as it makes the directory), so the new cgroup is read first
        // and the walk from the hierarchy's root, with its reads and its
        // writes (the `cpus` one rebuilds the scheduler's domains), is left
        // to a cgroup that lacks them. After the walk the parent is asked to
        // hand its values to the children that follow.
        if !Self::has_value(cgroup_path, CGROUP_CPUSET_CPUS)?
            || !Self::has_value(cgroup_path, CGROUP_CPUSET_MEMS)?
        {
            Self::ensure_not_empty(mount, cgroup_path, CGROUP_CPUSET_CPUS)?;
            Self::ensure_not_empty(mount, cgroup_path, CGROUP_CPUSET_MEMS)?;
            // Below the mount (checked above), but never the hierarchy's root.
            if let Some(parent) = cgroup_path.parent().filter(|p| *p != mount) {
                Self::clone_children(parent);
            }
        }

        super::controller::join(pid, cgroup_path)?;
        Ok(())
    }

    fn apply(cgroup_path: &Path, cpuset: &LinuxCpu) -> Result<(), V1CpuSetControllerError> {
        if let Some(cpus) = &cpuset.cpus() {
            common::write_cgroup_file_str(cgroup_path.join(CGROUP_CPUSET_CPUS), cpus)?;
        }

        if let Some(mems) = &cpuset.mems() {
            common::write_cgroup_file_str(cgroup_path.join(CGROUP_CPUSET_MEMS), mems)?;
        }

        Ok(())
    }

    /// Whether the cgroup's `interface_file` (`cpuset.cpus` or `cpuset.mems`) holds a value.
    fn has_value(
        cgroup_path: &Path,
        interface_file: &str,
    ) -> Result<bool, V1CpuSetControllerError> {
        let path = cgroup_path.join(interface_file);
        Ok(!fs::read_to_string(&path)
            .wrap_read(&path)?
            .trim()
            .is_empty())
    }

    /// Sets `cgroup.clone_children` on `parent`, so the cgroups made below it
    /// later start with its cpus and mems. Only a speed-up: a parent that
    /// refuses it leaves its children to the walk.
    fn clone_children(parent: &Path) {
        if let Err(e) = common::write_cgroup_file_str(parent.join("cgroup.clone_children"), "1") {
            tracing::debug!(parent = %parent.display(), error = %e, "cgroup.clone_children not set");
        }
    }

    // if a task is moved into the cgroup and a value has not been set for cpus and mems
    // Errno 28 (no space left on device) will be returned. Therefore we set the value from the parent if required.
    fn ensure_not_empty(
        mount: &Path,
        cgroup_path: &Path,
        interface_file: &str,
    ) -> Result<(), V1CpuSetControllerError> {
        let mut current = mount.to_path_buf();
        let relative_cgroup_path = cgroup_path.strip_prefix(&current).map_err(|err| {
            V1CpuSetControllerError::BadCgroupPath {
                err,
                path: cgroup_path.to_path_buf(),
            }
        })?;

        for component in relative_cgroup_path.components() {
            let parent_value =
                fs::read_to_string(current.join(interface_file)).wrap_read(cgroup_path)?;
            if parent_value.trim().is_empty() {
                return Err(V1CpuSetControllerError::EmptyParent);
            }

            current.push(component);
            let child_path = current.join(interface_file);
            let child_value = fs::read_to_string(&child_path).wrap_read(&child_path)?;
            // the file can contain a newline character. Need to trim it away,
            // otherwise it is not considered empty and value will not be written
            if child_value.trim().is_empty() {
                common::write_cgroup_file_str(&child_path, &parent_value)?;
            }
        }

        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use oci_spec::runtime::LinuxCpuBuilder;

    use super::*;
    use crate::test::setup;

    #[test]
    fn test_set_cpus() {
        // arrange
        let (tmp, cpus) = setup(CGROUP_CPUSET_CPUS);
        let cpuset = LinuxCpuBuilder::default()
            .cpus("1-3".to_owned())
            .build()
            .unwrap();

        // act
        CpuSet::apply(tmp.path(), &cpuset).expect("apply cpuset");

        // assert
        let content = fs::read_to_string(cpus)
            .unwrap_or_else(|_| panic!("read {CGROUP_CPUSET_CPUS} file content"));
        assert_eq!(content, "1-3");
    }

    #[test]
    fn a_task_added_below_the_mount_fills_the_empty_cpusets_on_its_way() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path();
        fs::write(mount.join(CGROUP_CPUSET_CPUS), "0-1\n").unwrap();
        fs::write(mount.join(CGROUP_CPUSET_MEMS), "0\n").unwrap();
        let (parent, leaf) = (mount.join("shoal"), mount.join("shoal/c1"));
        fs::create_dir_all(&leaf).unwrap();
        for dir in [&parent, &leaf] {
            fs::write(dir.join(CGROUP_CPUSET_CPUS), "").unwrap();
            fs::write(dir.join(CGROUP_CPUSET_MEMS), "\n").unwrap();
        }
        fs::write(parent.join(CGROUP_CPUSET_CPUS), "1\n").unwrap();
        fs::write(parent.join("cgroup.clone_children"), "0\n").unwrap();
        fs::write(leaf.join("cgroup.procs"), "").unwrap();

        CpuSet::add_task_below(Pid::from_raw(42), &leaf, mount).expect("add task");

        // A parent's own value stands; an empty one takes its parent's.
        assert_eq!(
            fs::read_to_string(parent.join(CGROUP_CPUSET_CPUS)).unwrap(),
            "1\n"
        );
        assert_eq!(
            fs::read_to_string(leaf.join(CGROUP_CPUSET_CPUS)).unwrap(),
            "1\n"
        );
        assert_eq!(
            fs::read_to_string(leaf.join(CGROUP_CPUSET_MEMS)).unwrap(),
            "0\n"
        );
        assert_eq!(fs::read_to_string(leaf.join("cgroup.procs")).unwrap(), "42");
        // The walk asked the parent to copy its values to the cgroups made below it later.
        assert_eq!(
            fs::read_to_string(parent.join("cgroup.clone_children"))
                .unwrap()
                .trim(),
            "1"
        );
        // A cgroup outside the mount is refused, even one that has its values, and nothing is
        // made for it.
        let elsewhere = tempfile::tempdir().unwrap();
        let outside = elsewhere.path().join("c1");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join(CGROUP_CPUSET_CPUS), "0\n").unwrap();
        fs::write(outside.join(CGROUP_CPUSET_MEMS), "0\n").unwrap();
        fs::write(outside.join("cgroup.procs"), "").unwrap();
        assert!(matches!(
            CpuSet::add_task_below(Pid::from_raw(42), &outside, mount),
            Err(V1CpuSetControllerError::BadCgroupPath { .. })
        ));
        assert_eq!(
            fs::read_to_string(outside.join("cgroup.procs")).unwrap(),
            ""
        );
        assert!(
            CpuSet::add_task_below(Pid::from_raw(42), &elsewhere.path().join("c2"), mount).is_err()
        );
        assert!(!elsewhere.path().join("c2").exists());
    }

    #[test]
    fn a_cgroup_made_with_its_parents_values_is_joined_without_the_walk() {
        let tmp = tempfile::tempdir().unwrap();
        let mount = tmp.path();
        let (parent, leaf) = (mount.join("shoal"), mount.join("shoal/c2"));
        fs::create_dir_all(&leaf).unwrap();
        // The root and the parent are empty (a walk would fail on them): the
        // leaf has its values, as the kernel gives them under clone_children.
        for dir in [mount, &parent] {
            fs::write(dir.join(CGROUP_CPUSET_CPUS), "\n").unwrap();
            fs::write(dir.join(CGROUP_CPUSET_MEMS), "\n").unwrap();
        }
        fs::write(leaf.join(CGROUP_CPUSET_CPUS), "0-1\n").unwrap();
        fs::write(leaf.join(CGROUP_CPUSET_MEMS), "0\n").unwrap();
        fs::write(leaf.join("cgroup.procs"), "").unwrap();

        CpuSet::add_task_below(Pid::from_raw(7), &leaf, mount).expect("add task");

        assert_eq!(fs::read_to_string(leaf.join("cgroup.procs")).unwrap(), "7");
        assert_eq!(
            fs::read_to_string(leaf.join(CGROUP_CPUSET_CPUS)).unwrap(),
            "0-1\n"
        );
        assert_eq!(
            fs::read_to_string(parent.join(CGROUP_CPUSET_CPUS)).unwrap(),
            "\n"
        );
        // A leaf with only one of the two still walks, and the empty root stops it.
        fs::write(leaf.join(CGROUP_CPUSET_MEMS), "\n").unwrap();
        assert!(matches!(
            CpuSet::add_task_below(Pid::from_raw(7), &leaf, mount),
            Err(V1CpuSetControllerError::EmptyParent)
        ));
    }

    #[test]
    fn test_set_mems() {
        // arrange
        let (tmp, mems) = setup(CGROUP_CPUSET_MEMS);
        let cpuset = LinuxCpuBuilder::default()
            .mems("1-3".to_owned())
            .build()
            .unwrap();

        // act
        CpuSet::apply(tmp.path(), &cpuset).expect("apply cpuset");

        // assert
        let content = fs::read_to_string(mems)
            .unwrap_or_else(|_| panic!("read {CGROUP_CPUSET_MEMS} file content"));
        assert_eq!(content, "1-3");
    }
}
