//! `--filter KEY=VALUE` (`-f`) on listings, as the docker CLI takes it: the
//! values given for one key are alternatives (one matching is enough), but
//! labels' must all match, and the keys must all match. A key the listing does not filter by, or a filter
//! that is not `KEY=VALUE`, is refused naming what it takes, before anything
//! is listed.

use std::collections::BTreeMap;

use anyhow::bail;

/// The filters of one listing.
#[derive(Debug, Default)]
pub struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    /// `given` (`KEY=VALUE` each) for a listing that filters by `keys`.
    pub fn parse(given: &[String], keys: &[&str]) -> anyhow::Result<Filters> {
        Filters::parse_for(given, keys, "this listing")
    }

    /// As `parse`, for `what` (`prune`), which a refusal names.
    pub fn parse_for(given: &[String], keys: &[&str], what: &str) -> anyhow::Result<Filters> {
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for f in given {
            let Some((k, v)) = f.split_once('=') else {
                bail!("bad format of filter (expected name=value): {f}");
            };
            if !keys.contains(&k) {
                bail!("invalid filter '{k}': {what} filters by {}", keys.join(", "));
            }
            by.entry(k.to_string()).or_default().push(v.to_string());
        }
        Ok(Filters(by))
    }

    /// Whether `key` was given.
    pub fn has(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The values given for `key`.
    pub fn values(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0.get(key).into_iter().flatten().map(String::as_str)
    }

    /// True when `key` was not given, or `test` passes for one of its values.
    pub fn any(&self, key: &str, test: impl Fn(&str) -> bool) -> bool {
        self.0.get(key).is_none_or(|vs| vs.iter().any(|v| test(v)))
    }

    /// `key=PATTERN` as Docker reads names and ids: unanchored regular
    /// expressions (`name=^web$`), compiled once for the whole listing; a
    /// pattern that does not compile is refused.
    pub fn regex(&self, key: &str) -> anyhow::Result<Patterns> {
        let compiled = self.0.get(key).map(|vs| {
            vs.iter()
                .map(|v| {
                    regex::Regex::new(v).map_err(|e| {
                        // The parser's message ends with its one-line reason (`error: unclosed group`).
                        let why =
                            e.to_string().lines().last().unwrap_or_default().trim_start_matches("error: ").to_string();
                        anyhow::anyhow!("invalid filter '{key}={v}': {why}")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()
        });
        Ok(Patterns(compiled.transpose()?))
    }

    /// Refuses a value of `key` that is not one of `allowed`.
    pub fn one_of(&self, key: &str, allowed: &[&str]) -> anyhow::Result<()> {
        for v in self.values(key) {
            if !allowed.contains(&v) {
                bail!("invalid filter '{key}={v}': use one of {}", allowed.join(", "));
            }
        }
        Ok(())
    }

    /// `key=true|false`, read once: whether a row that `is` (dangling, say)
    /// matches; another value is refused.
    pub fn flag(&self, key: &str) -> anyhow::Result<impl Fn(bool) -> bool + use<>> {
        let mut wanted = Vec::new();
        for v in self.values(key) {
            wanted.push(match v {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => bail!("invalid filter '{key}={v}': use {key}=true or {key}=false"),
            });
        }
        Ok(move |is| wanted.is_empty() || wanted.contains(&is))
    }

    /// `label=KEY` (the label is set) or `label=KEY=VALUE` against `labels`,
    /// under the filter key `key` (`label`, `node.label`): unlike other keys'
    /// values, every one given must match, as Docker's.
    pub fn labels<'a>(&self, key: &str, labels: impl IntoIterator<Item = (&'a String, &'a String)> + Clone) -> bool {
        self.values(key).all(|want| {
            let (k, v) = want.split_once('=').map_or((want, None), |(k, v)| (k, Some(v)));
            labels.clone().into_iter().any(|(lk, lv)| lk == k && v.is_none_or(|v| lv == v))
        })
    }
}

/// A key's regular expressions (`Filters::regex`); none given matches all.
pub struct Patterns(Option<Vec<regex::Regex>>);

impl Patterns {
    /// Whether one of the patterns matches one of `texts` (a name with and without its `/`).
    pub fn matches(&self, texts: &[&str]) -> bool {
        self.0.as_ref().is_none_or(|res| res.iter().any(|re| texts.iter().any(|t| re.is_match(t))))
    }
}

/// Docker's `reference` filter: a glob (`*` any run of characters but `/`,
/// `?` one) over `name:tag`, else over the name alone.
pub fn reference_matches(pattern: &str, name: &str, tag: &str) -> bool {
    glob(pattern.as_bytes(), format!("{name}:{tag}").as_bytes()) || glob(pattern.as_bytes(), name.as_bytes())
}

/// `path.Match` without character classes, in one pass with backtracking
/// to the last `*` (which cannot cross a `/`).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if (c == b'?' && s[si] != b'/') || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) if s[ss] != b'/' => {
                    star = Some((sp, ss + 1));
                    pi = sp + 1;
                    si = ss + 1;
                }
                _ => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(given: &[&str]) -> anyhow::Result<Filters> {
        Filters::parse(&given.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &["name", "label", "dangling"])
    }

    #[test]
    fn values_of_a_key_are_alternatives_but_labels_and_keys_must_all_match() {
        let fs = f(&["name=web", "name=db", "label=tier=front"]).expect("parse");
        assert!(fs.any("name", |v| v == "db") && !fs.any("name", |v| v == "cache"));
        assert!(fs.any("status", |_| false), "a key not given matches everything");
        let labels: std::collections::HashMap<String, String> = [("tier".to_string(), "front".to_string())].into();
        assert!(fs.labels("label", &labels) && !fs.labels("label", &BTreeMap::new()));
        let only_key = f(&["label=tier"]).expect("parse");
        assert!(only_key.labels("label", &labels));
        let both = f(&["label=tier", "label=owner=ops"]).expect("parse");
        assert!(!both.labels("label", &labels), "every label given must match, as Docker's");
        let mut more = labels.clone();
        more.insert("owner".into(), "ops".into());
        assert!(both.labels("label", &more));
        assert!(f(&["dangling=true"]).expect("parse").flag("dangling").expect("flag")(true));
        assert!(!f(&["dangling=false"]).expect("parse").flag("dangling").expect("flag")(true));
    }

    #[test]
    fn a_filter_the_listing_does_not_take_is_refused_with_those_it_does() {
        let e = f(&["nmae=web"]).expect_err("unknown key").to_string();
        assert_eq!(e, "invalid filter 'nmae': this listing filters by name, label, dangling");
        let e = f(&["web"]).expect_err("no =").to_string();
        assert_eq!(e, "bad format of filter (expected name=value): web");
        let e = f(&["dangling=yes"]).expect("parse").flag("dangling").err().expect("bad bool").to_string();
        assert!(e.contains("use dangling=true or dangling=false"), "{e}");
    }

    #[test]
    fn references_match_as_globs_over_name_and_tag() {
        assert!(reference_matches("busybox", "busybox", "latest"));
        assert!(reference_matches("busybox:lat*", "busybox", "latest"));
        assert!(reference_matches("registry.lab:5000/*", "registry.lab:5000/demo", "v1"));
        assert!(!reference_matches("busy", "busybox", "latest"));
        assert!(!reference_matches("*", "library/busybox", "latest"), "* stops at /");
        assert!(reference_matches("registry.lab:5000/demo", "registry.lab:5000/demo", "v1"), "a name with a port");
        assert!(reference_matches("b*x:*", "busybox", "1.36") && !reference_matches("b*x:2*", "busybox", "1.36"));
        assert!(reference_matches(&"*".repeat(40), "busybox", "latest"), "stars cost no exponential time");
    }

    #[test]
    fn names_match_as_docker_s_regular_expressions() {
        let fs = f(&["name=^web$", "name=db"]).expect("parse");
        let names = fs.regex("name").expect("re");
        assert!(names.matches(&["web"]) && names.matches(&["mydb1"]));
        assert!(!names.matches(&["web2"]));
        let e = f(&["name=("]).expect("parse").regex("name").err().expect("bad regex").to_string();
        assert_eq!(e, "invalid filter 'name=(': unclosed group");
        let e = f(&["name=x"]).expect("parse").one_of("name", &["a", "b"]).expect_err("not allowed").to_string();
        assert_eq!(e, "invalid filter 'name=x': use one of a, b");
    }
}
