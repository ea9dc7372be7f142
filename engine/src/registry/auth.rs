//! Registry authentication, the pure half: `WWW-Authenticate` challenges
//! (RFC 7235 syntax: a scheme, then `key=value` or `key="quoted"` pairs;
//! several challenges may share one header), the token request's URL, the
//! token response, and Basic credentials.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;

/// User name and password (or identity token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

impl Credentials {
    /// `Basic base64(user:password)`.
    pub fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    /// Lower-case: `bearer`, `basic`.
    pub scheme: String,
    /// Lower-case keys.
    pub params: BTreeMap<String, String>,
}

/// Every challenge in a `WWW-Authenticate` value, in order.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        // A scheme token, then (maybe) parameters up to the next scheme.
        let end = rest.find(|c: char| c.is_whitespace() || c == ',' || c == '=').unwrap_or(rest.len());
        let (token, after) = rest.split_at(end);
        let after_trim = after.trim_start();
        if token.is_empty() {
            rest = after_trim.trim_start_matches(',').trim_start();
            continue;
        }
        if after_trim.starts_with('=') && !out.is_empty() {
            // `key=value` of the current challenge.
            let (value, tail) = param_value(after_trim[1..].trim_start());
            if let Some(c) = out.last_mut() {
                c.params.insert(token.to_ascii_lowercase(), value);
            }
            rest = tail.trim_start().trim_start_matches(',').trim_start();
            continue;
        }
        out.push(Challenge { scheme: token.to_ascii_lowercase(), params: BTreeMap::new() });
        rest = after_trim.trim_start_matches(',').trim_start();
    }
    out
}

/// A quoted string (with `\` escapes) or a token; returns it and what follows.
fn param_value(s: &str) -> (String, &str) {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        value.push(next);
                    }
                }
                '"' => return (value, &quoted[i + 1..]),
                c => value.push(c),
            }
        }
        (value, "")
    } else {
        let end = s.find(|c: char| c == ',' || c.is_whitespace()).unwrap_or(s.len());
        (s[..end].to_string(), &s[end..])
    }
}

/// The token endpoint URL: `realm?service=…&scope=…` (scope left out for
/// a login check, as Docker does).
pub fn token_url(realm: &str, service: Option<&str>, scope: Option<&str>) -> String {
    let mut url = realm.to_string();
    let mut sep = if realm.contains('?') { '&' } else { '?' };
    for (k, v) in [("service", service), ("scope", scope)] {
        if let Some(v) = v {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            url.push_str(&query_escape(v));
            sep = '&';
        }
    }
    url
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
}

/// The bearer token in a token endpoint's JSON answer (`token`, or OAuth's
/// `access_token`).
pub fn parse_token(body: &[u8]) -> Result<String, String> {
    let t: TokenResponse = serde_json::from_slice(body).map_err(|e| format!("token response is not JSON: {e}"))?;
    t.token.or(t.access_token).filter(|t| !t.is_empty()).ok_or_else(|| "token response holds no token".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(scheme: &str, params: &[(&str, &str)]) -> Challenge {
        Challenge {
            scheme: scheme.into(),
            params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn challenge_table() {
        let cases: Vec<(&str, Vec<Challenge>)> = vec![
            (
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
                vec![ch(
                    "bearer",
                    &[
                        ("realm", "https://auth.docker.io/token"),
                        ("service", "registry.docker.io"),
                        ("scope", "repository:library/busybox:pull"),
                    ],
                )],
            ),
            (r#"Basic realm="Registry Realm""#, vec![ch("basic", &[("realm", "Registry Realm")])]),
            ("basic", vec![ch("basic", &[])]),
            (
                r#"Bearer realm="https://r/t", error="invalid_token", Basic realm="x y""#,
                vec![
                    ch("bearer", &[("realm", "https://r/t"), ("error", "invalid_token")]),
                    ch("basic", &[("realm", "x y")]),
                ],
            ),
            (
                r#"Bearer realm=https://r/t,service="a \"q\" b",scope="repository:a/b:pull,push""#,
                vec![ch(
                    "bearer",
                    &[("realm", "https://r/t"), ("service", r#"a "q" b"#), ("scope", "repository:a/b:pull,push")],
                )],
            ),
            ("", vec![]),
            (r#"Bearer realm="unterminated"#, vec![ch("bearer", &[("realm", "unterminated")])]),
        ];
        for (input, want) in cases {
            assert_eq!(parse_challenges(input), want, "{input}");
        }
    }

    #[test]
    fn token_urls_and_answers() {
        assert_eq!(
            token_url(
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
                Some("repository:library/busybox:pull")
            ),
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Fbusybox%3Apull"
        );
        assert_eq!(token_url("https://a/t?x=1", Some("s v"), None), "https://a/t?x=1&service=s%20v");
        assert_eq!(token_url("https://a/t", None, None), "https://a/t");
        assert_eq!(parse_token(br#"{"token":"abc","expires_in":300}"#), Ok("abc".into()));
        assert_eq!(parse_token(br#"{"access_token":"xyz"}"#), Ok("xyz".into()));
        assert!(parse_token(br#"{"token":""}"#).is_err());
        assert!(parse_token(b"<html>").is_err());
        let c = Credentials { username: "alice".into(), password: "s3cret:x".into() };
        assert_eq!(c.basic(), "Basic YWxpY2U6czNjcmV0Ong=");
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
