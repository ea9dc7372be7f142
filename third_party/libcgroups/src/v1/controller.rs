use std::fs;
use std::path::Path;

use nix::unistd::{self, Pid};

use crate::common::{self, CGROUP_PROCS, ControllerOpt, WrapIoResult, WrappedIoError};

pub(super) trait Controller {
    type Error: From<WrappedIoError>;
    type Resource;

    /// Adds a new task specified by its pid to the cgroup
    fn add_task(pid: Pid, cgroup_path: &Path) -> Result<(), Self::Error> {
        fs::create_dir_all(cgroup_path).wrap_create_dir(cgroup_path)?;
        join(pid, cgroup_path)?;
        Ok(())
    }

    /// Applies resource restrictions to the cgroup
    fn apply(controller_opt: &ControllerOpt, cgroup_root: &Path) -> Result<(), Self::Error>;

    /// Checks if the controller needs to handle this request
    fn needs_to_handle<'a>(controller_opt: &'a ControllerOpt) -> Option<&'a Self::Resource>;
}

/// Moves `pid` into the cgroup at `cgroup_path` (Shoal's fork).
///
/// A single-threaded process that moves itself writes `0` to the hierarchy's `tasks` file
/// rather than its pid to `cgroup.procs`: the kernel then migrates its one thread, the caller,
/// without the global `cgroup_threadgroup_rwsem` write lock. A write to `cgroup.procs` takes that
/// lock, which (unless another migration just held it) waits out an RCU grace period, 6–15 ms
/// on kernel 6.18, and holds back every fork on the host meanwhile. The thread is the whole
/// process, so the outcome is the same. libcontainer's intermediate process moves itself this way.
pub(super) fn join(pid: Pid, cgroup_path: &Path) -> Result<(), WrappedIoError> {
    let (file, text) = join_write(pid, unistd::getpid(), threads_of_self());
    common::write_cgroup_file(cgroup_path.join(file), text)
}

/// Which file of a v1 cgroup to write, and what, to move `pid` there when the caller is `me`
/// with `threads` threads (`None`: unknown).
fn join_write(pid: Pid, me: Pid, threads: Option<usize>) -> (&'static str, String) {
    if pid == me && threads == Some(1) {
        ("tasks", "0".to_string())
    } else {
        (CGROUP_PROCS, pid.to_string())
    }
}

/// How many threads the calling process has (`None` when `/proc` cannot say).
fn threads_of_self() -> Option<usize> {
    fs::read_dir("/proc/self/task").ok().map(|entries| entries.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_single_threaded_caller_moving_itself_writes_its_thread() {
        let me = Pid::from_raw(40);
        let other = Pid::from_raw(41);
        let table = [
            (me, Some(1), ("tasks", "0")),
            (me, Some(2), (CGROUP_PROCS, "40")),
            (me, None, (CGROUP_PROCS, "40")),
            (other, Some(1), (CGROUP_PROCS, "41")),
        ];
        for (pid, threads, (file, text)) in table {
            assert_eq!(join_write(pid, me, threads), (file, text.to_string()), "{pid} {threads:?}");
        }
    }

    #[test]
    fn a_multi_threaded_caller_writes_its_pid_to_cgroup_procs() {
        // The test harness runs this on a thread of its own: the process has several.
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CGROUP_PROCS), "").unwrap();
        fs::write(dir.path().join("tasks"), "").unwrap();
        let me = unistd::getpid();
        join(me, dir.path()).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join(CGROUP_PROCS)).unwrap(), me.to_string());
        assert_eq!(fs::read_to_string(dir.path().join("tasks")).unwrap(), "");
    }
}
