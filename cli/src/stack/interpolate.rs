//! Compose's variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`,
//! `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`, `${VAR:+other}`,
//! `${VAR+other}` and `$$` for a literal `$`, in every string value of a file
//! (not in keys), as `docker stack deploy` reads them. Defaults may hold
//! interpolations themselves. Pure: the variables come in as a map.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

/// What a file's values read their variables from: the process environment
/// over the `.env` file beside the first Compose file.
pub type Vars = BTreeMap<String, String>;

/// Reads a `.env` file: `KEY=VALUE` lines (`export ` allowed), `#` comments,
/// values optionally in single or double quotes.
pub fn parse_dotenv(text: &str, path: &str) -> anyhow::Result<Vars> {
    let mut out = Vars::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) =
            line.split_once('=').ok_or_else(|| anyhow::anyhow!("{path} line {}: {line:?} is not KEY=VALUE", n + 1))?;
        let k = k.trim();
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-') {
            anyhow::bail!("{path} line {}: invalid variable name {k:?}", n + 1);
        }
        let v = v.trim();
        let unquoted = [('"', '"'), ('\'', '\'')]
            .iter()
            .find_map(|(a, b)| v.strip_prefix(*a).and_then(|x| x.strip_suffix(*b)))
            .unwrap_or_else(|| v.split(" #").next().unwrap_or(v).trim_end());
        out.insert(k.to_string(), unquoted.to_string());
    }
    Ok(out)
}

/// Interpolates every string in `v`; `path` names where `v` is, for errors.
/// Variables used but not set are added to `unset` (they read as "").
pub fn interpolate_value(v: &mut Value, vars: &Vars, path: &str, unset: &mut Vec<String>) -> anyhow::Result<()> {
    match v {
        Value::String(s) => {
            if s.contains('$') {
                *s = interpolate(s, vars, unset).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            }
        }
        Value::Sequence(seq) => {
            for (i, x) in seq.iter_mut().enumerate() {
                interpolate_value(x, vars, &format!("{path}[{i}]"), unset)?;
            }
        }
        Value::Mapping(m) => {
            for (k, x) in m.iter_mut() {
                let key = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
                let p = if path.is_empty() { key } else { format!("{path}.{key}") };
                interpolate_value(x, vars, &p, unset)?;
            }
        }
        Value::Tagged(t) => interpolate_value(&mut t.value, vars, path, unset)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Interpolates one string.
pub fn interpolate(s: &str, vars: &Vars, unset: &mut Vec<String>) -> Result<String, String> {
    let invalid = || format!("invalid interpolation format in {s:?}: you may need to escape any $ with another $");
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(body) = after.strip_prefix('{') {
            // The matching brace, counting nested `${`.
            let mut depth = 1;
            let mut end = None;
            let bytes = body.as_bytes();
            let mut j = 0;
            while j < bytes.len() {
                match bytes[j] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(j);
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            let end = end.ok_or_else(invalid)?;
            out.push_str(&braced(&body[..end], vars, unset).map_err(|e| e.unwrap_or_else(invalid))?);
            rest = &body[end + 1..];
        } else {
            let len = name_len(after);
            if len == 0 {
                return Err(invalid());
            }
            let name = &after[..len];
            out.push_str(&lookup(name, vars, unset));
            rest = &after[len..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The length of the variable name at the start of `s`.
fn name_len(s: &str) -> usize {
    let mut n = 0;
    for (i, c) in s.char_indices() {
        let ok = c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit());
        if !ok {
            break;
        }
        n = i + c.len_utf8();
    }
    n
}

fn lookup(name: &str, vars: &Vars, unset: &mut Vec<String>) -> String {
    match vars.get(name) {
        Some(v) => v.clone(),
        None => {
            if !unset.iter().any(|u| u == name) {
                unset.push(name.to_string());
            }
            String::new()
        }
    }
}

/// The inside of `${...}`. `Err(None)`: bad syntax; `Err(Some(msg))`: a required variable is missing.
fn braced(body: &str, vars: &Vars, unset: &mut Vec<String>) -> Result<String, Option<String>> {
    let len = name_len(body);
    if len == 0 {
        return Err(None);
    }
    let (name, op) = body.split_at(len);
    let value = vars.get(name);
    let empty = value.is_none_or(String::is_empty);
    let nested = |text: &str, unset: &mut Vec<String>| interpolate(text, vars, unset).map_err(Some);
    let (op, arg) = match op {
        "" => return Ok(lookup(name, vars, unset)),
        _ if op.starts_with(":-") || op.starts_with(":?") || op.starts_with(":+") => op.split_at(2),
        _ if op.starts_with('-') || op.starts_with('?') || op.starts_with('+') => op.split_at(1),
        _ => return Err(None),
    };
    match op {
        ":-" if empty => nested(arg, unset),
        "-" if value.is_none() => nested(arg, unset),
        ":?" if empty => Err(Some(required(name, &nested(arg, unset)?))),
        "?" if value.is_none() => Err(Some(required(name, &nested(arg, unset)?))),
        ":+" if !empty => nested(arg, unset),
        "+" if value.is_some() => nested(arg, unset),
        ":+" | "+" => Ok(String::new()),
        _ => Ok(value.cloned().unwrap_or_default()),
    }
}

fn required(name: &str, msg: &str) -> String {
    if msg.is_empty() {
        format!("required variable {name} is missing a value")
    } else {
        format!("required variable {name} is missing a value: {msg}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        [("TAG", "1.2"), ("EMPTY", ""), ("PORT", "8080")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_form_reads_as_compose_reads_it() {
        let table = [
            ("nginx:$TAG", "nginx:1.2"),
            ("nginx:${TAG}", "nginx:1.2"),
            ("${PORT}:80", "8080:80"),
            ("${MISSING:-1.0}", "1.0"),
            ("${EMPTY:-fallback}", "fallback"),
            ("${EMPTY-fallback}", ""),
            ("${MISSING-fallback}", "fallback"),
            ("${TAG:+set}", "set"),
            ("${EMPTY:+set}", ""),
            ("${EMPTY+set}", "set"),
            ("${MISSING+set}", ""),
            ("${MISSING:-${TAG}-x}", "1.2-x"),
            ("$$HOME and $${TAG}", "$HOME and ${TAG}"),
            ("a$TAG.b", "a1.2.b"),
            ("no dollars", "no dollars"),
            ("${TAG:?must be set}", "1.2"),
        ];
        for (input, want) in table {
            let mut unset = Vec::new();
            assert_eq!(interpolate(input, &vars(), &mut unset).as_deref(), Ok(want), "{input}");
        }
        let mut unset = Vec::new();
        assert_eq!(interpolate("x${MISSING}y$OTHER", &vars(), &mut unset).as_deref(), Ok("xy"));
        assert_eq!(unset, ["MISSING", "OTHER"]);
    }

    #[test]
    fn errors_name_the_variable_and_the_bad_syntax() {
        let mut unset = Vec::new();
        let e = interpolate("${DB_PASSWORD:?set it in .env}", &vars(), &mut unset).unwrap_err();
        assert_eq!(e, "required variable DB_PASSWORD is missing a value: set it in .env");
        let e = interpolate("${EMPTY:?}", &vars(), &mut unset).unwrap_err();
        assert_eq!(e, "required variable EMPTY is missing a value");
        assert_eq!(interpolate("${EMPTY?}", &vars(), &mut unset).as_deref(), Ok(""));
        for bad in ["${TAG", "${}", "${1X}", "$ alone", "${TAG:x}", "cost: 5$"] {
            let e = interpolate(bad, &vars(), &mut unset).unwrap_err();
            assert!(e.contains("escape any $ with another $"), "{bad}: {e}");
        }
        // The path in the file comes with it.
        let mut v: Value = serde_yaml_ng::from_str("services:\n  web:\n    image: ${X:?no}\n").unwrap();
        let e = interpolate_value(&mut v, &vars(), "", &mut unset).unwrap_err();
        assert_eq!(e.to_string(), "services.web.image: required variable X is missing a value: no");
    }

    #[test]
    fn dotenv_files_read_keys_quotes_and_comments() {
        let v = parse_dotenv("# c\nTAG=1.2\nexport A = \"x y\"\nB='q'\nC=v # note\nD=\n", ".env").unwrap();
        let got: Vec<(&str, &str)> = v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, [("A", "x y"), ("B", "q"), ("C", "v"), ("D", ""), ("TAG", "1.2")]);
        assert!(parse_dotenv("JUST A LINE", ".env").unwrap_err().to_string().contains(".env line 1"));
    }
}
