//! The seccomp filter every container runs under, in the shape of Docker's
//! default profile: an allowlist (anything not named fails with EPERM), with
//! the syscalls that a capability makes legitimate allowed only when the
//! container has that capability, `clone` allowed without the namespace
//! flags, `personality` only for the harmless personas, and `clone3`
//! answering ENOSYS (its flags sit behind a pointer a filter cannot read,
//! so the C library falls back to `clone`). Names the running kernel's
//! libseccomp does not know are skipped by libcontainer.
//!
//! A profile is compiled to BPF once per daemon ([`Programs`]), not in every
//! container's init: the program goes to a file named by the profile's
//! hash under the runtime directory, and the spec's
//! `run.shoal.seccomp.bpf` annotation hands its path to libcontainer (our
//! fork), which reads it before forking and loads it as it is. The profile
//! stays in the spec, so an init not handed a program compiles it as before.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSeccompOperator,
    LinuxSyscall, LinuxSyscallBuilder,
};

use super::spec::SpecError;

/// Allowed for every container.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "chroot",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "modify_ldt",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "ptrace",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Allowed only with the capability that makes them legitimate.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "pivot_root",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("BPF", &["bpf"]),
    ("PERFMON", &["perf_event_open"]),
    ("SYSLOG", &["syslog"]),
    ("DAC_READ_SEARCH", &["open_by_handle_at"]),
    ("SYS_BOOT", &["reboot"]),
    ("SYS_MODULE", &["delete_module", "finit_module", "init_module"]),
    ("SYS_PACCT", &["acct"]),
    ("SYS_PTRACE", &["kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev"]),
    ("SYS_RAWIO", &["ioperm", "iopl"]),
    ("SYS_TIME", &["clock_adjtime", "clock_adjtime64", "clock_settime", "clock_settime64", "settimeofday", "stime"]),
    ("SYS_TTY_CONFIG", &["vhangup"]),
    ("SYS_NICE", &["get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"]),
];

/// The namespace flags `clone` may not carry without CAP_SYS_ADMIN:
/// NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
const CLONE_NAMESPACES: u64 = 0x7E02_0000;
/// The personas a process may switch to: Linux, its 32-bit-address
/// variant, and the queries (0xffffffff reads the current one).
const PERSONAS: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];
/// Sockets of every family but AF_VSOCK, which reaches the hypervisor.
const AF_VSOCK: u64 = 40;

fn build_err(e: impl std::fmt::Display) -> SpecError {
    SpecError::Build(e.to_string())
}

fn rule(names: Vec<String>, action: LinuxSeccompAction) -> Result<LinuxSyscallBuilder, SpecError> {
    Ok(LinuxSyscallBuilder::default().names(names).action(action))
}

fn one_arg(name: &str, op: LinuxSeccompOperator, value: u64, value_two: u64) -> Result<LinuxSyscall, SpecError> {
    let arg = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(value)
        .value_two(value_two)
        .op(op)
        .build()
        .map_err(build_err)?;
    rule(vec![name.to_string()], LinuxSeccompAction::ScmpActAllow)?.args(vec![arg]).build().map_err(build_err)
}

/// The filter for a container with capabilities `caps` (names without `CAP_`).
pub fn filter(caps: &BTreeSet<String>) -> Result<LinuxSeccomp, SpecError> {
    let mut allowed: BTreeSet<&str> = ALLOWED.iter().copied().collect();
    for (cap, names) in BY_CAPABILITY {
        if caps.contains(*cap) {
            allowed.extend(names.iter().copied());
        }
    }
    let admin = caps.contains("SYS_ADMIN");
    let mut rules = vec![
        rule(allowed.iter().map(|s| s.to_string()).collect(), LinuxSeccompAction::ScmpActAllow)?
            .build()
            .map_err(build_err)?,
    ];
    for p in PERSONAS {
        rules.push(one_arg("personality", LinuxSeccompOperator::ScmpCmpEq, *p, 0)?);
    }
    rules.push(one_arg("socket", LinuxSeccompOperator::ScmpCmpNe, AF_VSOCK, 0)?);
    if !admin {
        rules.push(one_arg("clone", LinuxSeccompOperator::ScmpCmpMaskedEq, CLONE_NAMESPACES, 0)?);
        rules.push(
            rule(vec!["clone3".to_string()], LinuxSeccompAction::ScmpActErrno)?
                .errno_ret(libc::ENOSYS as u32)
                .build()
                .map_err(build_err)?,
        );
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(libc::EPERM as u32)
        .architectures(native_arches())
        .syscalls(rules)
        .build()
        .map_err(build_err)
}

/// The ABIs a process on this host can call the kernel with, as Docker's
/// profile lists them: each one listed costs the filter's compilation (in
/// every container's init) its rules again, so an ABI this CPU cannot use is
/// left out.
fn native_arches() -> Vec<Arch> {
    if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm]
    } else {
        vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
    }
}

/// The BPF programs of the profiles this daemon has handed out, one file
/// each under `dir` (on tmpfs, so none outlives a boot), compiled on first
/// use. A file from an earlier daemon is compiled afresh, not trusted: the
/// program depends on the libseccomp that made it.
pub struct Programs {
    dir: PathBuf,
    /// Each profile compiled so far and its program's file: a node hands
    /// out a few (one per set of capabilities), so they are compared as
    /// they are rather than serialized and hashed again for every start.
    compiled: Mutex<Vec<(LinuxSeccomp, PathBuf)>>,
}

impl Programs {
    pub fn new(dir: &Path) -> Programs {
        Programs { dir: dir.to_path_buf(), compiled: Mutex::new(Vec::new()) }
    }

    /// The file holding `profile`'s BPF program, compiled the first time
    /// this profile is asked for.
    pub fn program(&self, profile: &LinuxSeccomp) -> Result<PathBuf, SpecError> {
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        // Compiled already, and still there (a removed file is compiled again).
        if let Some((_, path)) = compiled.iter().find(|(p, _)| p == profile)
            && path.exists()
        {
            return Ok(path.clone());
        }
        let json = serde_json::to_vec(profile).map_err(build_err)?;
        let key = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&json));
        let path = self.dir.join(format!("{}.bpf", &key[..32]));
        std::fs::create_dir_all(&self.dir).map_err(|e| SpecError::Build(format!("{}: {e}", self.dir.display())))?;
        // Written whole under another name, then renamed: a reader sees the
        // old program or the new one, never half of one.
        let tmp = self.dir.join(format!(".{}.{}", &key[..32], std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(|e| SpecError::Build(format!("{}: {e}", tmp.display())))?;
        if let Err(e) = compile(profile, &file) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &path).map_err(|e| SpecError::Build(format!("{}: {e}", path.display())))?;
        compiled.retain(|(p, _)| p != profile);
        compiled.push((profile.clone(), path.clone()));
        Ok(path)
    }

    /// Hands libcontainer the compiled program of `spec`'s filter, if it
    /// has one. Whatever else set the annotation is overwritten.
    pub fn prepare(&self, spec: &mut oci_spec::runtime::Spec) -> Result<(), SpecError> {
        let Some(profile) = spec.linux().as_ref().and_then(|l| l.seccomp().clone()) else {
            return Ok(());
        };
        let path = self.program(&profile)?;
        let mut annotations = spec.annotations().clone().unwrap_or_default();
        annotations.insert(libcontainer::seccomp::PREPARED_BPF_ANNOTATION.to_string(), path.display().to_string());
        spec.set_annotations(Some(annotations));
        Ok(())
    }
}

/// Writes the BPF program libseccomp makes of `profile` (what the init
/// would load had it compiled the profile itself) to `out`.
pub fn compile(profile: &LinuxSeccomp, out: impl std::os::fd::AsFd) -> Result<(), SpecError> {
    libcontainer::seccomp::export_bpf(profile, out).map_err(|e| SpecError::Build(format!("compiling seccomp: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn allowed_names(caps: &[&str]) -> (LinuxSeccomp, Vec<String>) {
        let set: BTreeSet<String> = caps.iter().map(|s| s.to_string()).collect();
        let f = filter(&set).expect("filter");
        let names = f.syscalls().clone().unwrap_or_default()[0].names().clone();
        (f, names)
    }

    #[test]
    fn an_allowlist_that_capabilities_extend() {
        let (f, default) = allowed_names(&["CHOWN", "SYS_CHROOT"]);
        assert_eq!(f.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(f.default_errno_ret(), Some(libc::EPERM as u32));
        for n in ["read", "execve", "chroot", "ptrace", "statx"] {
            assert!(default.contains(&n.to_string()), "{n} allowed");
        }
        for n in [
            "mount",
            "unshare",
            "setns",
            "keyctl",
            "add_key",
            "init_module",
            "reboot",
            "clock_settime",
            "kexec_load",
            "userfaultfd",
            "io_uring_setup",
            "open_by_handle_at",
            "clone",
            "clone3",
        ] {
            assert!(!default.contains(&n.to_string()), "{n} not allowed by default");
        }
        let (f, admin) = allowed_names(&["SYS_ADMIN"]);
        assert!(admin.contains(&"mount".to_string()) && admin.contains(&"clone3".to_string()));
        assert!(!admin.contains(&"keyctl".to_string()));
        // No ENOSYS clone3 rule and no conditional clone with SYS_ADMIN.
        let rules = f.syscalls().clone().unwrap_or_default();
        assert!(!rules.iter().skip(1).any(|r| r.names().iter().any(|n| n.starts_with("clone"))));
    }

    #[test]
    fn clone_is_allowed_only_without_namespace_flags() {
        let (f, _) = allowed_names(&[]);
        let rules = f.syscalls().clone().unwrap_or_default();
        let clone = rules.iter().find(|r| r.names() == &vec!["clone".to_string()]).expect("a clone rule");
        let arg = &clone.args().clone().unwrap_or_default()[0];
        assert_eq!(
            (arg.index(), arg.value(), arg.value_two(), arg.op()),
            (0, CLONE_NAMESPACES, Some(0), LinuxSeccompOperator::ScmpCmpMaskedEq)
        );
        let clone3 = rules.iter().find(|r| r.names() == &vec!["clone3".to_string()]).expect("a clone3 rule");
        assert_eq!(
            (clone3.action(), clone3.errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(libc::ENOSYS as u32))
        );
        assert_eq!(rules.iter().filter(|r| r.names() == &vec!["personality".to_string()]).count(), PERSONAS.len());
    }

    fn caps(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn fresh_compile(profile: &LinuxSeccomp) -> Vec<u8> {
        let mut out = tempfile::tempfile().expect("tempfile");
        compile(profile, &out).expect("compile");
        use std::io::{Read, Seek};
        out.rewind().expect("rewind");
        let mut program = Vec::new();
        out.read_to_end(&mut program).expect("read");
        program
    }

    #[test]
    fn a_profile_is_compiled_once_and_the_file_is_what_a_fresh_compile_makes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let programs = Programs::new(&dir.path().join("seccomp"));
        let plain = filter(&caps(&["CHOWN"])).expect("filter");
        let first = programs.program(&plain).expect("program");
        let bytes = std::fs::read(&first).expect("read");
        assert_eq!(bytes, fresh_compile(&plain));
        assert_eq!(bytes.len() % std::mem::size_of::<libc::sock_filter>(), 0);
        // Asked again, the same file, not compiled again (its time stays).
        let mtime = std::fs::metadata(&first).and_then(|m| m.modified()).expect("mtime");
        assert_eq!(programs.program(&plain).expect("program"), first);
        assert_eq!(std::fs::metadata(&first).and_then(|m| m.modified()).expect("mtime"), mtime);
        // Another capability set is another profile, and another program.
        let admin = filter(&caps(&["SYS_ADMIN"])).expect("filter");
        let other = programs.program(&admin).expect("program");
        assert_ne!(other, first);
        assert_eq!(std::fs::read(&other).expect("read"), fresh_compile(&admin));
        // Nothing half-written is left beside them.
        assert_eq!(std::fs::read_dir(dir.path().join("seccomp")).expect("dir").count(), 2);
        // A program removed behind the daemon's back is compiled again.
        std::fs::remove_file(&first).expect("remove");
        assert_eq!(programs.program(&plain).expect("program"), first);
        assert_eq!(std::fs::read(&first).expect("read"), bytes);
    }

    #[test]
    fn prepare_names_the_program_in_the_spec() {
        let dir = tempfile::tempdir().expect("tempdir");
        let programs = Programs::new(dir.path());
        let mut linux = oci_spec::runtime::Linux::default();
        linux.set_seccomp(Some(filter(&caps(&[])).expect("filter")));
        let mut spec = oci_spec::runtime::Spec::default();
        spec.set_linux(Some(linux));
        let mut forged = HashMap::new();
        forged.insert(libcontainer::seccomp::PREPARED_BPF_ANNOTATION.to_string(), "/tmp/allow-all".to_string());
        spec.set_annotations(Some(forged));
        programs.prepare(&mut spec).expect("prepare");
        let named = spec.annotations().as_ref().and_then(|a| a.get(libcontainer::seccomp::PREPARED_BPF_ANNOTATION));
        let profile = spec.linux().as_ref().and_then(|l| l.seccomp().clone()).expect("profile");
        assert_eq!(named.map(PathBuf::from), Some(programs.program(&profile).expect("program")));
        // No filter, no program.
        let mut bare = oci_spec::runtime::Spec::default();
        bare.set_linux(None);
        programs.prepare(&mut bare).expect("prepare");
        assert!(bare.annotations().as_ref().is_none_or(|a| a.is_empty()));
    }

    /// A process that loads the compiled program is refused what the
    /// profile refuses, with the profile's errors, and can still work.
    #[test]
    #[allow(unsafe_code)]
    fn a_process_under_the_program_is_refused_what_the_profile_refuses() {
        use std::os::unix::process::CommandExt;
        let program = fresh_compile(&filter(&caps(&["CHOWN", "SETUID", "SETGID"])).expect("filter"));
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args(["-c", "exit 0"]);
        // SAFETY: between fork and exec the closure only makes system calls
        // and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                let errno = || std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(10);
                }
                if libcontainer::seccomp::load_bpf(&program).is_err() {
                    libc::_exit(11);
                }
                if libc::unshare(libc::CLONE_NEWUSER) == 0 || errno() != libc::EPERM {
                    libc::_exit(12);
                }
                if libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) != -1 || errno() != libc::ENOSYS {
                    libc::_exit(13);
                }
                if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) != -1 || errno() != libc::EPERM {
                    libc::_exit(14);
                }
                if libc::getpid() <= 0 {
                    libc::_exit(15);
                }
                Ok(())
            });
        }
        let status = cmd.status().expect("spawn /bin/sh");
        assert_eq!(status.code(), Some(0), "10: no_new_privs, 11: load, 12: unshare, 13: clone3, 14: keyctl");
    }

    #[test]
    fn a_program_that_is_not_whole_records_is_refused() {
        assert!(libcontainer::seccomp::load_bpf(&[0u8; 7]).is_err());
        assert!(libcontainer::seccomp::load_bpf(&[]).is_err());
    }

    #[test]
    fn every_name_is_listed_once() {
        let mut seen = BTreeSet::new();
        for n in ALLOWED {
            assert!(seen.insert(*n), "{n} twice in ALLOWED");
        }
        for (_, names) in BY_CAPABILITY {
            for n in *names {
                assert!(!ALLOWED.contains(n), "{n} is both always allowed and capability-bound");
            }
        }
    }
}
