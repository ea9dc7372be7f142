//! The CLI's readings of Docker's flag values: durations, sizes, CPUs,
//! published ports, times and `--tail`. Sizes, CPUs and Docker's durations
//! are read by `shoal_proto::parse`, as the engine and the managers read them;
//! this module adds the flag's name and the CLI's units.

use anyhow::{Context, bail};
use shoal_proto::service::{PublishMode, PublishedPort};

/// `90d`, `2160h`, `30m`, `45s` or plain seconds → seconds (`swarm init --cert-expiry`).
pub fn duration_secs(s: &str) -> Result<u64, String> {
    secs(s).filter(|n| *n > 0).ok_or_else(|| bad_secs(s))
}

/// As `duration_secs`, and `0` in any unit: a period that may be off
/// (`swarm update --network-key-rotation 0`).
pub fn duration_secs_or_zero(s: &str) -> Result<u64, String> {
    secs(s).ok_or_else(|| bad_secs(s))
}

fn secs(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'd')) => (&s[..i], 86_400),
        Some((i, 'h')) => (&s[..i], 3_600),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 's')) => (&s[..i], 1),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult))
}

fn bad_secs(s: &str) -> String {
    format!("invalid duration {:?}: use e.g. 90d, 2160h, 30m or 45s", s.trim())
}

/// Docker's durations (`300ms`, `5s`, `1m30s`, `2h`) in milliseconds.
pub fn duration_ms(s: &str) -> anyhow::Result<u64> {
    shoal_proto::parse::duration_ms(s).map_err(anyhow::Error::msg)
}

/// `--limit-cpu`/`--reserve-cpu` (`0.5`) in nano-CPUs.
pub fn nano_cpus(s: &str) -> anyhow::Result<u64> {
    let v = shoal_proto::parse::cpus(s).map_err(|e| anyhow::anyhow!("invalid CPUs {s:?}: {e}"))?;
    Ok((v * 1e9) as u64)
}

/// Docker's sizes (`64m`, `1g`, `512k`, `1048576`) in bytes.
pub fn bytes(s: &str) -> anyhow::Result<u64> {
    shoal_proto::parse::size(s).map(|b| b as u64).map_err(|e| anyhow::anyhow!("invalid size {s:?}: {e}"))
}

/// A service's `--publish`: `published=8080,target=80[,protocol=tcp|udp][,mode=ingress|host][,client-ip=false]`
/// or `[PUBLISHED:]TARGET[/udp]`. Ingress (the routing mesh) unless `mode=host`, as Docker's;
/// a published port left out or 0 is chosen by the managers (30000-32767).
pub fn publish(s: &str) -> anyhow::Result<PublishedPort> {
    let mut p = PublishedPort { mode: PublishMode::Ingress, ..Default::default() };
    if s.contains('=') {
        for kv in s.split(',') {
            let (k, v) = kv.split_once('=').with_context(|| format!("invalid --publish {s:?}: KEY=VALUE pairs"))?;
            match k {
                "published" => p.published = v.parse().with_context(|| format!("invalid published port {v:?}"))?,
                "target" => p.target = v.parse().with_context(|| format!("invalid target port {v:?}"))?,
                "protocol" => p.protocol = v.to_string(),
                "mode" => p.mode = PublishMode::parse(v).map_err(|e| anyhow::anyhow!("--publish {s:?}: {e}"))?,
                "client-ip" | "client_ip" => {
                    p.client_ip = match v {
                        "true" => true,
                        "false" => false,
                        _ => bail!("invalid --publish client-ip={v}: true or false"),
                    }
                }
                _ => bail!("invalid --publish key {k:?}: published, target, protocol, mode, client-ip"),
            }
        }
        if p.target == 0 {
            bail!("invalid --publish {s:?}: target= is required");
        }
    } else {
        let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        let (pubp, target) = ports.split_once(':').unwrap_or(("0", ports));
        p.published = pubp.parse().with_context(|| format!("invalid published port {pubp:?}"))?;
        p.target = target.parse().with_context(|| format!("invalid target port {target:?}"))?;
        p.protocol = proto.to_string();
    }
    if !matches!(p.protocol.as_str(), "tcp" | "udp") {
        bail!("invalid --publish {s:?}: the protocol is tcp or udp");
    }
    if p.mode == PublishMode::Host && !p.client_ip {
        bail!("invalid --publish {s:?}: client-ip=false applies to ingress mode only (host mode always keeps it)");
    }
    Ok(p)
}

/// `--publish-rm`: `PORT[/PROTO]` removes the ports whose published or
/// target port is PORT (and protocol PROTO, when given), as Docker's.
pub fn publish_rm(s: &str) -> anyhow::Result<(u16, Option<String>)> {
    let (port, proto) = match s.split_once('/') {
        Some((p, proto @ ("tcp" | "udp"))) => (p, Some(proto.to_string())),
        Some(_) => bail!("invalid --publish-rm {s:?}: PORT[/tcp|udp]"),
        None => (s, None),
    };
    let port = port.parse().with_context(|| format!("invalid --publish-rm {s:?}: PORT[/tcp|udp]"))?;
    Ok((port, proto))
}

/// `--since`/`--until`: an RFC 3339 time, unix seconds, or a duration back
/// from now (`10m`, `1h30m`, `45s`, as Docker's durations); nanoseconds since the epoch.
pub fn time_ns(s: &str, flag: &str) -> anyhow::Result<i64> {
    if let Some(ns) = shoal_proto::model::parse_rfc3339_ns(s) {
        return Ok(ns);
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Ok((secs * 1e9) as i64);
    }
    let ago_ms = shoal_proto::parse::duration_ms(s).map_err(|_| {
        anyhow::anyhow!("invalid {flag} {s:?}: use a duration like 10m or 1h30m, an RFC 3339 time or unix seconds")
    })?;
    let now_ns = shoal_proto::model::now_ms() as i64 * 1_000_000;
    // Further back than the epoch (or than i64 holds) is before everything: 1 ns, as 0 means no bound.
    let ago_ns = i64::try_from(ago_ms).ok().and_then(|ms| ms.checked_mul(1_000_000));
    Ok(ago_ns.map_or(1, |ago| now_ns.saturating_sub(ago).max(1)))
}

/// `--tail`: a number of lines from the end, or `all` (-1).
pub fn tail(s: &str) -> anyhow::Result<i64> {
    if s == "all" {
        return Ok(-1);
    }
    s.parse::<i64>().map_err(|_| anyhow::anyhow!("invalid --tail {s:?}: a number or all"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_docker_flags() {
        assert_eq!(duration_secs("90d"), Ok(90 * 86_400));
        assert_eq!(duration_secs("2160h"), Ok(2160 * 3600));
        assert_eq!(duration_secs("30m"), Ok(1800));
        assert_eq!(duration_secs("45s"), Ok(45));
        assert_eq!(duration_secs("20"), Ok(20));
        for bad in ["", "0s", "d", "1y", "-5s", "99999999999999999999d"] {
            assert!(duration_secs(bad).is_err(), "{bad}");
        }
        assert_eq!(duration_ms("1m30s").unwrap(), 90_000);
        assert_eq!(duration_ms("500ms").unwrap(), 500);
        assert!(duration_ms("5x").is_err());
    }

    #[test]
    fn sizes_and_cpus_in_the_cli_units() {
        assert_eq!(nano_cpus("0.5").unwrap(), 500_000_000);
        assert!(nano_cpus("-1").unwrap_err().to_string().contains("invalid CPUs \"-1\""));
        assert_eq!(bytes("64m").unwrap(), 64 << 20);
        assert!(bytes("lots").unwrap_err().to_string().contains("invalid size \"lots\""));
    }

    #[test]
    fn ports_parse_like_docker() {
        let p = publish("published=8080,target=80,mode=host").unwrap();
        assert_eq!((p.published, p.target, p.protocol.as_str(), p.mode), (8080, 80, "tcp", PublishMode::Host));
        assert_eq!(publish("53:5353/udp").unwrap().protocol, "udp");
        let table = [
            ("8080:80", (8080, 80, "tcp", PublishMode::Ingress, true)),
            ("80", (0, 80, "tcp", PublishMode::Ingress, true)),
            ("53/udp", (0, 53, "udp", PublishMode::Ingress, true)),
            ("published=80,target=81,mode=ingress", (80, 81, "tcp", PublishMode::Ingress, true)),
            ("target=81", (0, 81, "tcp", PublishMode::Ingress, true)),
            ("published=0,target=81,protocol=udp,client-ip=false", (0, 81, "udp", PublishMode::Ingress, false)),
        ];
        for (arg, want) in table {
            let p = publish(arg).unwrap();
            assert_eq!((p.published, p.target, p.protocol.as_str(), p.mode, p.client_ip), want, "{arg}");
        }
        for (arg, why) in [
            ("published=80,target=80,mode=dsr", "ingress or host"),
            ("published=80", "target= is required"),
            ("8080:80/sctp", "tcp or udp"),
            ("target=80,mode=host,client-ip=false", "ingress mode only"),
            ("target=80,client-ip=no", "true or false"),
            ("target=80,colour=red", "published, target, protocol, mode, client-ip"),
        ] {
            let err = publish(arg).unwrap_err().to_string();
            assert!(err.contains(why), "{arg}: {err}");
        }
        assert_eq!(publish_rm("8080").unwrap(), (8080, None));
        assert_eq!(publish_rm("53/udp").unwrap(), (53, Some("udp".into())));
        assert!(publish_rm("53/sctp").is_err() && publish_rm("x").is_err());
    }

    #[test]
    fn time_arguments() {
        let now = shoal_proto::model::now_ms() as i64 * 1_000_000;
        let ten_min = time_ns("10m", "--since").unwrap();
        assert!((now - ten_min - 600_000_000_000).abs() < 5_000_000_000);
        let mixed = time_ns("1h30m", "--since").unwrap();
        assert!((now - mixed - 5_400_000_000_000).abs() < 5_000_000_000);
        assert_eq!(time_ns("1795305600", "--since").unwrap(), 1_795_305_600_000_000_000);
        assert_eq!(time_ns("2026-11-22T00:00:00Z", "--since").unwrap(), 1_795_305_600_000_000_000);
        for bad in ["", "10x", "m", "10m5", "yesterday"] {
            let e = time_ns(bad, "--since").unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid --since {bad:?}")), "{bad}: {e}");
        }
    }

    #[test]
    fn tails() {
        assert_eq!(tail("all").unwrap(), -1);
        assert_eq!(tail("20").unwrap(), 20);
        assert!(tail("some").is_err());
    }
}
