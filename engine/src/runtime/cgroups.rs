//! Reading a container's cgroup: usage for `stats`, its processes for `top`
//! and a forced cleanup, and OOM kills for the shim's exit record. v1
//! (one hierarchy per controller, as on this lab machine's hybrid layout)
//! and v2 (one unified tree) are told apart once, from the mount root.
//! Writing limits is libcontainer's job (from the OCI config); this module
//! only reads, so it works the same from the daemon and the shim.

use std::path::{Path, PathBuf};

/// One sample of a cgroup's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// Total CPU time used, in nanoseconds.
    pub cpu_ns: u64,
    /// Memory in use, without the reclaimable page cache (as Docker shows it).
    pub memory_bytes: u64,
    /// The memory limit; None when unlimited.
    pub memory_limit: Option<u64>,
    pub pids: u64,
    pub block_read: u64,
    pub block_write: u64,
}

#[derive(Clone, Debug)]
pub struct Cgroups {
    root: PathBuf,
    v2: bool,
}

/// v1's "no limit" is a page-aligned i64::MAX; anything this large is unlimited.
const V1_UNLIMITED: u64 = 1 << 62;

impl Cgroups {
    /// The host's cgroup mount, v2 when its root has `cgroup.controllers`.
    pub fn host() -> Cgroups {
        Cgroups::at(Path::new("/sys/fs/cgroup"))
    }

    /// A cgroup mount rooted at `root` (a temp dir in tests).
    pub fn at(root: &Path) -> Cgroups {
        Cgroups { root: root.to_path_buf(), v2: root.join("cgroup.controllers").exists() }
    }

    pub fn is_v2(&self) -> bool {
        self.v2
    }

    fn file(&self, controller: &str, path: &str, name: &str) -> PathBuf {
        let rel = path.trim_start_matches('/');
        if self.v2 { self.root.join(rel).join(name) } else { self.root.join(controller).join(rel).join(name) }
    }

    fn read(&self, controller: &str, path: &str, name: &str) -> Option<String> {
        std::fs::read_to_string(self.file(controller, path, name)).ok()
    }

    fn number(&self, controller: &str, path: &str, name: &str) -> Option<u64> {
        self.read(controller, path, name)?.trim().parse().ok()
    }

    /// `key value` lines, as in memory.stat, cpu.stat and memory.events.
    fn keyed(&self, controller: &str, path: &str, name: &str, key: &str) -> Option<u64> {
        self.read(controller, path, name)?
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')))
            .and_then(|n| n.trim().parse().ok())
    }

    /// Whether the container's cgroup exists.
    pub fn exists(&self, path: &str) -> bool {
        self.file("memory", path, "cgroup.procs").exists()
    }

    pub fn sample(&self, path: &str) -> Sample {
        if self.v2 {
            let usage = self.number("", path, "memory.current").unwrap_or(0);
            let inactive = self.keyed("", path, "memory.stat", "inactive_file").unwrap_or(0);
            let (r, w) = self.io_v2(path);
            Sample {
                cpu_ns: self.keyed("", path, "cpu.stat", "usage_usec").unwrap_or(0) * 1000,
                memory_bytes: usage.saturating_sub(inactive),
                memory_limit: self.number("", path, "memory.max"),
                pids: self.number("", path, "pids.current").unwrap_or(0),
                block_read: r,
                block_write: w,
            }
        } else {
            let usage = self.number("memory", path, "memory.usage_in_bytes").unwrap_or(0);
            let inactive = self.keyed("memory", path, "memory.stat", "total_inactive_file").unwrap_or(0);
            let (r, w) = self.io_v1(path);
            Sample {
                cpu_ns: self.number("cpuacct", path, "cpuacct.usage").unwrap_or(0),
                memory_bytes: usage.saturating_sub(inactive),
                memory_limit: self.number("memory", path, "memory.limit_in_bytes").filter(|l| *l < V1_UNLIMITED),
                pids: self.number("pids", path, "pids.current").unwrap_or(0),
                block_read: r,
                block_write: w,
            }
        }
    }

    /// v2 io.stat: `MAJ:MIN rbytes=N wbytes=N ...` per device.
    fn io_v2(&self, path: &str) -> (u64, u64) {
        let mut total = (0, 0);
        for field in self.read("", path, "io.stat").unwrap_or_default().split_whitespace() {
            if let Some(n) = field.strip_prefix("rbytes=").and_then(|n| n.parse::<u64>().ok()) {
                total.0 += n;
            } else if let Some(n) = field.strip_prefix("wbytes=").and_then(|n| n.parse::<u64>().ok()) {
                total.1 += n;
            }
        }
        total
    }

    /// v1 blkio.throttle.io_service_bytes: `MAJ:MIN Read N` lines.
    fn io_v1(&self, path: &str) -> (u64, u64) {
        let mut total = (0, 0);
        for line in self.read("blkio", path, "blkio.throttle.io_service_bytes").unwrap_or_default().lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if let [_, op, n] = f.as_slice() {
                let n: u64 = n.parse().unwrap_or(0);
                match *op {
                    "Read" => total.0 += n,
                    "Write" => total.1 += n,
                    _ => {}
                }
            }
        }
        total
    }

    /// The processes in the container's cgroup.
    pub fn pids(&self, path: &str) -> Vec<i32> {
        // v1: every hierarchy lists the same tasks; pids and memory are always there.
        let text = self.read("pids", path, "cgroup.procs").or_else(|| self.read("memory", path, "cgroup.procs"));
        text.unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    /// How many times the kernel OOM-killed a process of this cgroup.
    pub fn oom_kills(&self, path: &str) -> u64 {
        if self.v2 {
            self.keyed("", path, "memory.events", "oom_kill").unwrap_or(0)
        } else {
            self.keyed("memory", path, "memory.oom_control", "oom_kill").unwrap_or(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn v1_reads_one_file_per_controller() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "memory/shoal/c1/memory.usage_in_bytes", "10485760\n");
        write(r, "memory/shoal/c1/memory.stat", "cache 5\ntotal_inactive_file 1048576\n");
        write(r, "memory/shoal/c1/memory.limit_in_bytes", "67108864\n");
        write(r, "memory/shoal/c1/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n");
        write(r, "memory/shoal/c1/cgroup.procs", "12\n13\n");
        write(r, "cpuacct/shoal/c1/cpuacct.usage", "2500000000\n");
        write(r, "pids/shoal/c1/pids.current", "2\n");
        write(r, "pids/shoal/c1/cgroup.procs", "12\n13\n");
        write(
            r,
            "blkio/shoal/c1/blkio.throttle.io_service_bytes",
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\nTotal 12288\n",
        );
        let cg = Cgroups::at(r);
        assert!(!cg.is_v2());
        let s = cg.sample("/shoal/c1");
        assert_eq!(
            s,
            Sample {
                cpu_ns: 2_500_000_000,
                memory_bytes: 9 << 20,
                memory_limit: Some(64 << 20),
                pids: 2,
                block_read: 4096,
                block_write: 8192
            }
        );
        assert_eq!(cg.pids("/shoal/c1"), vec![12, 13]);
        assert_eq!(cg.oom_kills("/shoal/c1"), 2);
        assert!(cg.exists("/shoal/c1"));
        assert!(!cg.exists("/shoal/c2"));
    }

    #[test]
    fn v1_unlimited_memory_reads_as_none() {
        let t = tempfile::tempdir().unwrap();
        write(t.path(), "memory/c/memory.limit_in_bytes", "9223372036854771712\n");
        assert_eq!(Cgroups::at(t.path()).sample("c").memory_limit, None);
    }

    #[test]
    fn v2_reads_the_unified_tree() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "cgroup.controllers", "cpu memory pids io\n");
        write(r, "shoal/c1/memory.current", "2097152\n");
        write(r, "shoal/c1/memory.stat", "anon 1\ninactive_file 1048576\n");
        write(r, "shoal/c1/memory.max", "max\n");
        write(r, "shoal/c1/memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        write(r, "shoal/c1/cpu.stat", "usage_usec 1500\nuser_usec 1000\n");
        write(r, "shoal/c1/pids.current", "1\n");
        write(r, "shoal/c1/cgroup.procs", "7\n");
        write(r, "shoal/c1/io.stat", "8:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:16 rbytes=1 wbytes=2\n");
        let cg = Cgroups::at(r);
        assert!(cg.is_v2());
        let s = cg.sample("/shoal/c1");
        assert_eq!(
            s,
            Sample {
                cpu_ns: 1_500_000,
                memory_bytes: 1 << 20,
                memory_limit: None,
                pids: 1,
                block_read: 101,
                block_write: 202
            }
        );
        assert_eq!(cg.pids("shoal/c1"), vec![7]);
        assert_eq!(cg.oom_kills("shoal/c1"), 1);
    }
}
