//! Placement constraints (`--constraint`): their syntax, which the API
//! checks, and whether a node satisfies one, which the scheduler asks.

use shoal_proto::model::Node;

/// `node.role==manager`, `node.labels.zone!=a`, `node.hostname==h1`, `node.id==…`,
/// `node.platform.os==linux`: `==` and `!=` only, as in Docker.
pub fn constraint_holds(c: &str, node: &Node) -> bool {
    let (key, want, eq) = match (c.split_once("!="), c.split_once("==")) {
        (Some((k, v)), _) => (k.trim(), v.trim(), false),
        (None, Some((k, v))) => (k.trim(), v.trim(), true),
        _ => return false,
    };
    let have: Option<String> = match key {
        "node.role" => Some(node.spec.role.as_str().to_string()),
        "node.hostname" => Some(node.description.hostname.clone()),
        "node.id" => Some(node.id.clone()),
        // The node's own platform, as it said in its hello (nothing until it did).
        "node.platform.os" => Some(node.description.os.clone()).filter(|s| !s.is_empty()),
        "node.platform.arch" => Some(node.description.arch.clone()).filter(|s| !s.is_empty()),
        k => k.strip_prefix("node.labels.").and_then(|l| node.spec.labels.get(l).cloned()),
    };
    (have.as_deref() == Some(want)) == eq
}

/// Checks a constraint's syntax (for the API).
pub fn valid_constraint(c: &str) -> Result<(), String> {
    let key = c
        .split_once("!=")
        .or_else(|| c.split_once("=="))
        .map(|(k, _)| k.trim())
        .ok_or_else(|| format!("invalid constraint {c:?}: use KEY==VALUE or KEY!=VALUE"))?;
    let known = ["node.role", "node.hostname", "node.id", "node.platform.os", "node.platform.arch"];
    if known.contains(&key) || key.strip_prefix("node.labels.").is_some_and(|l| !l.is_empty()) {
        Ok(())
    } else {
        Err(format!(
            "invalid constraint {c:?}: the key must be node.role, node.hostname, node.id, node.platform.os, node.platform.arch or node.labels.NAME"
        ))
    }
}
