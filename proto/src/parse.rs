//! Docker's spellings of sizes, CPUs, durations and signals: parsed once here,
//! for the CLI, the engine and the managers' validation alike. Pure functions;
//! errors say what a good value looks like.

/// The smallest memory limit a container may have (Docker's).
pub const MIN_MEMORY: i64 = 6 << 20;

/// A signal by name (`TERM`, `SIGKILL`) or number.
pub fn signal_number(s: &str) -> Result<i32, String> {
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    if let Ok(n) = name.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("invalid signal {s:?}: numbers go from 1 to 64"))
        };
    }
    Ok(match name {
        "KILL" => libc::SIGKILL,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        "ALRM" => libc::SIGALRM,
        "PWR" => libc::SIGPWR,
        _ => return Err(format!("invalid signal {s:?}: use a name like TERM or a number")),
    })
}

/// Docker's sizes: `64m`, `1g`, `512k`, `1048576`, `64MB`.
pub fn size(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').filter(|x| x.ends_with(['k', 'm', 'g', 't'])).unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.parse().map_err(|_| "expected a number with an optional unit (b, k, m, g)".to_string())?;
    if v.is_nan() || v < 0.0 {
        return Err("a size cannot be negative".into());
    }
    Ok((v * mult as f64) as i64)
}

/// A memory limit in bytes: at least [`MIN_MEMORY`].
pub fn memory_limit(bytes: i64) -> Result<i64, String> {
    if bytes < MIN_MEMORY {
        return Err("minimum memory limit allowed is 6MB".into());
    }
    Ok(bytes)
}

/// `--memory`/`--limit-memory`: a size of at least 6 MB.
pub fn memory(s: &str) -> Result<i64, String> {
    memory_limit(size(s)?)
}

/// `--cpus`/`--limit-cpu`: a positive number of CPUs.
pub fn cpus(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| "expected a number of CPUs such as 0.5 or 2".to_string())?;
    if v.is_nan() || v <= 0.0 {
        return Err("the number of CPUs must be positive".into());
    }
    Ok(v)
}

/// A CPU limit that a host with `host_cpus` CPUs can honour.
pub fn cpus_within(v: f64, host_cpus: usize) -> Result<f64, String> {
    if v > host_cpus as f64 {
        return Err(format!(
            "range of CPUs is from 0.01 to {host_cpus}.00, as there are only {host_cpus} CPUs available"
        ));
    }
    Ok(v)
}

/// Docker's durations in milliseconds: `300ms`, `5s`, `1m30s`, `2h`, or plain seconds.
pub fn duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("invalid duration {s:?}: use a number with ms, s, m or h (5s, 1m30s)");
    let rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = rest.parse::<f64>() {
        return if secs.is_nan() || secs < 0.0 { Err(bad()) } else { Ok((secs * 1000.0) as u64) };
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut rest = rest;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            rest = &rest[1..];
            continue;
        }
        let (unit, len) = if rest.starts_with("ms") {
            (1.0, 2)
        } else if rest.starts_with('s') {
            (1000.0, 1)
        } else if rest.starts_with('m') {
            (60_000.0, 1)
        } else if rest.starts_with('h') {
            (3_600_000.0, 1)
        } else {
            return Err(bad());
        };
        let n: f64 = num.parse().map_err(|_| bad())?;
        total += n * unit;
        num.clear();
        rest = &rest[len..];
    }
    if !num.is_empty() {
        return Err(format!("invalid duration {s:?}: a unit is missing (5s)"));
    }
    Ok(total as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_memory_limits_parse_like_docker() {
        for (s, want) in
            [("64m", 64 << 20), ("64MB", 64 << 20), ("1g", 1 << 30), ("10485760", 10 << 20), ("512k", 512 << 10)]
        {
            assert_eq!(memory(s).or_else(|_| size(s)), Ok(want), "{s}");
        }
        assert!(memory("1m").unwrap_err().contains("6MB"));
        assert!(memory("lots").is_err());
        assert!(size("-1").is_err());
    }

    #[test]
    fn cpus_are_positive_and_bounded_by_the_host() {
        assert_eq!(cpus("0.5"), Ok(0.5));
        assert!(cpus("0").is_err() && cpus("-1").is_err() && cpus("x").is_err());
        assert_eq!(cpus_within(2.0, 2), Ok(2.0));
        assert!(cpus_within(3.0, 2).unwrap_err().contains("only 2 CPUs"));
    }

    #[test]
    fn durations_parse_like_docker() {
        assert_eq!(duration_ms("5s"), Ok(5000));
        assert_eq!(duration_ms("300ms"), Ok(300));
        assert_eq!(duration_ms("1m30s"), Ok(90_000));
        assert_eq!(duration_ms("2"), Ok(2000));
        for bad in ["5x", "", "5m3", "-1"] {
            assert!(duration_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(signal_number("SIGKILL"), Ok(libc::SIGKILL));
        assert_eq!(signal_number("term"), Ok(libc::SIGTERM));
        assert_eq!(signal_number("9"), Ok(9));
        assert!(signal_number("65").is_err() && signal_number("NOPE").is_err());
    }
}
