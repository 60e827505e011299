//! Tool definitions of a `tools/list` result and their pins: the SHA-256 of
//! `description ‖ 0x00 ‖ inputSchema` (the schema as compact JSON with
//! sorted keys, so a re-ordered but equal schema pins the same), as
//! Pipelock hashes them; and the comparison of a listing with a session's
//! baseline (changed, added, removed tools).
use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// A tool's pin.
pub type Pin = [u8; 32];

/// One tool of a `tools/list` result, as the checks read it.
#[derive(Clone, Debug)]
pub struct ToolDef<'a> {
    pub name: &'a str,
    pub title: Option<&'a str>,
    pub description: &'a str,
    /// `inputSchema` (`null` when absent).
    pub input_schema: &'a Value,
    /// The whole tool object (annotations, output schema…).
    pub raw: &'a Value,
}

/// The tools of a JSON-RPC response to `tools/list` (`result.tools`, an
/// array of objects with a string `name`); `None` when it has no such list.
pub fn listed(msg: &Value) -> Option<Vec<ToolDef<'_>>> {
    let tools = msg.get("result")?.get("tools")?.as_array()?;
    Some(
        tools
            .iter()
            .filter_map(|t| {
                Some(ToolDef {
                    name: t.get("name")?.as_str()?,
                    title: t
                        .get("title")
                        .or_else(|| t.get("annotations").and_then(|a| a.get("title")))
                        .and_then(Value::as_str),
                    description: t.get("description").and_then(Value::as_str).unwrap_or(""),
                    input_schema: t.get("inputSchema").unwrap_or(&Value::Null),
                    raw: t,
                })
            })
            .collect(),
    )
}

/// Removes the tools named in `names` from a `tools/list` response
/// (`result.tools`); how many were removed.
pub fn strip(msg: &mut Value, names: &[String]) -> usize {
    let Some(tools) = msg
        .get_mut("result")
        .and_then(|r| r.get_mut("tools"))
        .and_then(Value::as_array_mut)
    else {
        return 0;
    };
    let before = tools.len();
    tools.retain(|t| {
        !t.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| names.iter().any(|x| x == n))
    });
    before - tools.len()
}

/// The pin of a tool: SHA-256(description ‖ 0x00 ‖ inputSchema).
pub fn pin(tool: &ToolDef<'_>) -> Pin {
    let mut h = Sha256::new();
    h.update(tool.description.as_bytes());
    h.update([0u8]);
    // serde_json's map keeps keys sorted: the serialisation is canonical.
    h.update(serde_json::to_vec(tool.input_schema).unwrap_or_default());
    h.finalize().into()
}

/// Short hex of a pin, for findings.
pub fn short(pin: &Pin) -> String {
    pin[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// How a listing differs from a baseline.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drift {
    /// Name, pinned hash, new hash.
    pub changed: Vec<(String, Pin, Pin)>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

impl Drift {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.added.is_empty() && self.removed.is_empty()
    }
}

/// Compares `listing` with `baseline`. `complete`: the listing is the
/// whole list (no cursor asked, no further page), so missing tools count
/// as removed.
pub fn compare(
    baseline: &BTreeMap<String, Pin>,
    listing: &[(String, Pin)],
    complete: bool,
) -> Drift {
    let mut d = Drift::default();
    for (name, pin) in listing {
        match baseline.get(name) {
            Some(old) if old != pin => d.changed.push((name.clone(), *old, *pin)),
            Some(_) => {}
            None => d.added.push(name.clone()),
        }
    }
    if complete {
        d.removed = baseline
            .keys()
            .filter(|k| !listing.iter().any(|(n, _)| n == *k))
            .cloned()
            .collect();
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pin_is_description_nul_schema() {
        let msg = json!({"result":{"tools":[{"name":"a","description":"d","inputSchema":{"type":"object","properties":{}}}]}});
        let tools = listed(&msg).unwrap();
        let mut h = Sha256::new();
        h.update(b"d\0{\"properties\":{},\"type\":\"object\"}");
        let want: Pin = h.finalize().into();
        assert_eq!(pin(&tools[0]), want);
    }

    #[test]
    fn strip_removes_only_the_named_tools() {
        let mut msg = json!({"jsonrpc":"2.0","id":1,"result":{"tools":[
            {"name":"a","description":"x"},{"name":"b"},{"name":"a2"}],"nextCursor":"c"}});
        assert_eq!(strip(&mut msg, &["a".to_owned()]), 1);
        assert_eq!(
            msg["result"],
            json!({"tools":[{"name":"b"},{"name":"a2"}],"nextCursor":"c"})
        );
        assert_eq!(strip(&mut json!({"result":{}}), &["a".to_owned()]), 0);
    }

    #[test]
    fn drift_changed_added_removed() {
        let base: BTreeMap<String, Pin> = [("a".into(), [1; 32]), ("b".into(), [2; 32])]
            .into_iter()
            .collect();
        let now = vec![("a".to_owned(), [9; 32]), ("c".to_owned(), [3; 32])];
        let d = compare(&base, &now, true);
        assert_eq!(d.changed, vec![("a".into(), [1; 32], [9; 32])]);
        assert_eq!(d.added, vec!["c".to_owned()]);
        assert_eq!(d.removed, vec!["b".to_owned()]);
        assert!(compare(&base, &now, false).removed.is_empty());
    }
}
