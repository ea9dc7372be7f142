//! `shoal top`: a container's processes as `ps -ef` shows them (UID PID PPID
//! C STIME TTY TIME CMD), read from /proc for the pids of its cgroup.

use std::collections::HashMap;

pub const TITLES: [&str; 8] = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"];

/// The fields of /proc/PID/stat that `ps -ef` needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub ppid: i32,
    pub tty_nr: i32,
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    /// Since boot, in clock ticks.
    pub start_ticks: u64,
}

/// Parses /proc/PID/stat; the command name may hold spaces and parentheses.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    // Fields after the name, numbered from 3 (state) as in proc(5).
    let f: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    let at = |n: usize| f.get(n - 3).copied();
    Some(Stat {
        comm,
        ppid: at(4)?.parse().ok()?,
        tty_nr: at(7)?.parse().ok()?,
        cpu_ticks: at(14)?.parse::<u64>().ok()? + at(15)?.parse::<u64>().ok()?,
        start_ticks: at(22)?.parse().ok()?,
    })
}

/// `H:MM:SS` of CPU time, or `D-HH:MM:SS` past a day, as ps prints it.
pub fn cpu_time(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, (secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    if d > 0 { format!("{d}-{h:02}:{m:02}:{s:02}") } else { format!("{h:02}:{m:02}:{s:02}") }
}

fn clock_ticks() -> u64 {
    let t = crate::sys::clock_ticks();
    if t > 0 { t } else { 100 }
}

fn host_users() -> HashMap<u32, String> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some((f.get(2)?.parse().ok()?, f.first()?.to_string()))
        })
        .collect()
}

/// One `ps -ef` row per live process among `pids`.
pub fn rows(pids: &[i32]) -> Vec<Vec<String>> {
    let hz = clock_ticks();
    let uptime_secs: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0.0);
    let boot_secs = (shoal_proto::model::now_ms() / 1000).saturating_sub(uptime_secs as u64);
    let users = host_users();
    let mut out = Vec::new();
    for &pid in pids {
        let Some(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| parse_stat(&s)) else {
            continue; // gone meanwhile
        };
        let uid: u32 = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("Uid:").and_then(|r| r.split_whitespace().next()?.parse().ok()))
            })
            .unwrap_or(0);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = if cmdline.is_empty() {
            format!("[{}]", stat.comm)
        } else {
            String::from_utf8_lossy(&cmdline).trim_end_matches('\0').replace('\0', " ")
        };
        let started_secs = stat.start_ticks / hz;
        let running_secs = (uptime_secs as u64).saturating_sub(started_secs).max(1);
        let c = stat.cpu_ticks / hz * 100 / running_secs;
        let stime = shoal_proto::model::rfc3339((boot_secs + started_secs) * 1000);
        out.push(vec![
            users.get(&uid).cloned().unwrap_or_else(|| uid.to_string()),
            pid.to_string(),
            stat.ppid.to_string(),
            c.to_string(),
            stime.get(11..16).unwrap_or("?").to_string(),
            if stat.tty_nr == 0 { "?".into() } else { format!("pts/{}", stat.tty_nr & 0xff) },
            cpu_time(stat.cpu_ticks / hz),
            cmd,
        ]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_odd_command_names() {
        let line = "4242 (my (odd) cmd) S 4200 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 123456 1000 10 18446744073709551615";
        let s = parse_stat(line).expect("parses");
        assert_eq!(s, Stat { comm: "my (odd) cmd".into(), ppid: 4200, tty_nr: 0, cpu_ticks: 300, start_ticks: 123456 });
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn cpu_times_print_like_ps() {
        assert_eq!(cpu_time(0), "00:00:00");
        assert_eq!(cpu_time(3723), "01:02:03");
        assert_eq!(cpu_time(90_000), "1-01:00:00");
    }

    #[test]
    fn our_own_process_has_a_row() {
        let me = std::process::id() as i32;
        let rows = rows(&[me, i32::MAX]);
        assert_eq!(rows.len(), 1, "a missing pid is skipped");
        assert_eq!(rows[0][1], me.to_string());
        assert_eq!(rows[0].len(), TITLES.len());
    }
}
