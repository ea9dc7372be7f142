//! Image references as Docker reads them: `[domain/]path[:tag][@sha256:…]`.
//! `busybox` is `docker.io/library/busybox`; the store keeps and prints the
//! short familiar form (`busybox:latest`, `foo/bar:1`, `quay.io/x/y:2`),
//! exactly as Docker does. Pure parsing, tested by tables; the managers
//! refuse a service whose image does not parse, as the nodes would.

use std::fmt;

use crate::digest::{Digest, is_full_hex};

const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DOMAIN: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const MAX_NAME_LEN: usize = 255;
pub const DEFAULT_TAG: &str = "latest";

/// A parsed, normalized reference. The tag is `None` when it was not given
/// (`tag_or_default` gives `latest`), so `save busybox` can mean "every tag".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses and normalizes `input`; the error is the reason, for
    /// `ImageError::InvalidReference`.
    pub fn parse(input: &str) -> Result<Reference, String> {
        if input.is_empty() {
            return Err("empty reference".into());
        }
        if is_full_hex(input) {
            return Err("a 64-hex-digit string is an image id, not a repository name".into());
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (rest, Some(Digest::parse(d)?)),
            None => (input, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            check_tag(tag)?;
        }
        let (domain, path) = split_domain(name);
        check_domain(&domain)?;
        if path.to_lowercase() != path {
            return Err(format!("repository name {path:?} must be lowercase"));
        }
        if path.is_empty() {
            return Err("repository name is empty".into());
        }
        for component in path.split('/') {
            check_path_component(component)?;
        }
        if domain.len() + 1 + path.len() > MAX_NAME_LEN {
            return Err(format!("repository name must not be more than {MAX_NAME_LEN} characters"));
        }
        Ok(Reference { domain, path, tag: tag.map(str::to_string), digest })
    }

    /// `busybox`, `foo/bar`, `quay.io/x/y`: what Docker prints.
    pub fn familiar_name(&self) -> String {
        if self.domain != DEFAULT_DOMAIN {
            return format!("{}/{}", self.domain, self.path);
        }
        match self.path.strip_prefix(OFFICIAL_PREFIX) {
            Some(short) if !short.contains('/') => short.to_string(),
            _ => self.path.clone(),
        }
    }

    /// The registry domain as written (`docker.io` for Docker Hub).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry (`library/busybox`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `docker.io/library/busybox`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn tag_or_default(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// `busybox:latest`: the key under which a tag is stored.
    pub fn tagged(&self) -> String {
        format!("{}:{}", self.familiar_name(), self.tag_or_default())
    }

    /// `busybox@sha256:…`, if the reference has a digest.
    pub fn digested(&self) -> Option<String> {
        self.digest.as_ref().map(|d| format!("{}@{d}", self.familiar_name()))
    }
}

impl fmt::Display for Reference {
    /// The familiar form, with the tag (defaulted unless a digest stands
    /// alone) and digest: `busybox:latest`, `busybox@sha256:…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.familiar_name())?;
        match (&self.tag, &self.digest) {
            (Some(t), _) => write!(f, ":{t}")?,
            (None, None) => write!(f, ":{DEFAULT_TAG}")?,
            (None, Some(_)) => {}
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `Ok` when `input` is an image reference a node can pull; otherwise
/// Docker's message for it (`invalid reference format: "error:": …`), which
/// the CLI and the managers give before a service is made with it.
pub fn check(input: &str) -> Result<(), String> {
    Reference::parse(input).map(drop).map_err(|reason| format!("invalid reference format: {input:?}: {reason}"))
}

/// Docker's `splitDockerDomain`: the first component is a domain only if it
/// looks like one (has `.` or `:`, is `localhost`, or has upper case).
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut path) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" || first.to_lowercase() != first => {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    if domain == LEGACY_DOMAIN {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        path = format!("{OFFICIAL_PREFIX}{path}");
    }
    (domain, path)
}

/// `host(.host)*(:port)?` or `[ipv6](:port)?`.
fn check_domain(domain: &str) -> Result<(), String> {
    let bad = || format!("invalid registry domain {domain:?}");
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(bad());
        }
        match after {
            "" => return Ok(()),
            p => ("", Some(p.strip_prefix(':').ok_or_else(bad)?)),
        }
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (domain, None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    if domain.starts_with('[') {
        return Ok(());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.split('.').all(label_ok) { Ok(()) } else { Err(bad()) }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn check_path_component(c: &str) -> Result<(), String> {
    let bad = || format!("invalid repository name component {c:?}");
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(bad());
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}`
fn check_tag(tag: &str) -> Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = tag.as_bytes();
    let ok = !b.is_empty() && b.len() <= 128 && word(b[0]) && b.iter().all(|&x| word(x) || x == b'.' || x == b'-');
    if ok { Ok(()) } else { Err(format!("invalid tag {tag:?}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_table() {
        let d = format!("sha256:{}", "b".repeat(64));
        // input, full name, familiar Display, tagged key
        let cases: Vec<(String, &str, String, &str)> = vec![
            ("busybox".into(), "docker.io/library/busybox", "busybox:latest".into(), "busybox:latest"),
            ("busybox:1.36".into(), "docker.io/library/busybox", "busybox:1.36".into(), "busybox:1.36"),
            ("docker.io/library/busybox:1".into(), "docker.io/library/busybox", "busybox:1".into(), "busybox:1"),
            ("index.docker.io/busybox".into(), "docker.io/library/busybox", "busybox:latest".into(), "busybox:latest"),
            ("library/busybox".into(), "docker.io/library/busybox", "busybox:latest".into(), "busybox:latest"),
            ("foo/bar".into(), "docker.io/foo/bar", "foo/bar:latest".into(), "foo/bar:latest"),
            (
                "docker.io/library/a/b".into(),
                "docker.io/library/a/b",
                "library/a/b:latest".into(),
                "library/a/b:latest",
            ),
            (
                "localhost:5000/app:v2".into(),
                "localhost:5000/app",
                "localhost:5000/app:v2".into(),
                "localhost:5000/app:v2",
            ),
            ("localhost/app".into(), "localhost/app", "localhost/app:latest".into(), "localhost/app:latest"),
            ("localhost:5000".into(), "docker.io/library/localhost", "localhost:5000".into(), "localhost:5000"),
            (
                "quay.io/x/y-z__w.v".into(),
                "quay.io/x/y-z__w.v",
                "quay.io/x/y-z__w.v:latest".into(),
                "quay.io/x/y-z__w.v:latest",
            ),
            ("[::1]:5000/a".into(), "[::1]:5000/a", "[::1]:5000/a:latest".into(), "[::1]:5000/a:latest"),
            (format!("busybox@{d}"), "docker.io/library/busybox", format!("busybox@{d}"), "busybox:latest"),
            (format!("busybox:1@{d}"), "docker.io/library/busybox", format!("busybox:1@{d}"), "busybox:1"),
        ];
        for (input, full, display, key) in cases {
            let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.full_name(), full, "{input}");
            assert_eq!(r.to_string(), display, "{input}");
            assert_eq!(r.tagged(), key, "{input}");
        }
    }

    #[test]
    fn invalid_table() {
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "empty"),
            ("Busybox".into(), "lowercase"),
            ("busybox:".into(), "invalid tag"),
            ("busybox:-x".into(), "invalid tag"),
            (format!("busybox:{}", "a".repeat(129)), "invalid tag"),
            ("foo//bar".into(), "component"),
            ("foo/-bar".into(), "component"),
            ("foo/bar_".into(), "component"),
            ("foo/a...b".into(), "component"),
            ("foo bar".into(), "component"),
            ("busybox@sha256:abc".into(), "64"),
            (format!("busybox@md5:{}", "a".repeat(64)), "only sha256"),
            ("a".repeat(64), "image id"),
            ("-bad.io/x".into(), "domain"),
            ("host:port/x".into(), "domain"),
            (format!("x/{}", "a".repeat(260)), "255"),
        ];
        for (input, want) in cases {
            let err = Reference::parse(&input).expect_err(&input);
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn check_says_what_docker_says_of_a_reference_that_does_not_parse() {
        assert_eq!(check("busybox"), Ok(()));
        assert_eq!(check(&format!("registry:5000/app:1@sha256:{}", "b".repeat(64))), Ok(()));
        let e = check("error:").expect_err("no tag after the colon");
        assert!(e.starts_with("invalid reference format: \"error:\": "), "{e}");
        assert!(check("Busybox").expect_err("upper case").contains("must be lowercase"));
    }

    #[test]
    fn tag_presence_is_kept() {
        assert_eq!(Reference::parse("busybox").expect("ok").tag(), None);
        assert_eq!(Reference::parse("busybox").expect("ok").tag_or_default(), "latest");
        assert_eq!(Reference::parse("busybox:1").expect("ok").tag(), Some("1"));
        let d = format!("sha256:{}", "c".repeat(64));
        let r = Reference::parse(&format!("foo/bar@{d}")).expect("ok");
        assert_eq!(r.digested(), Some(format!("foo/bar@{d}")));
    }
}
