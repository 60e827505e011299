//! The tool policy (`mcp_tool_policy`): rules on a `tools/call`'s tool name
//! (`tool_pattern`) and arguments (`arg_pattern`, optionally only under the
//! argument keys matching `arg_key`). Names and argument strings are matched
//! as written and de-obfuscated (`shell`), each string alone and all of them
//! joined. Patterns are regular expressions, matched case-insensitively.
//! A rule's own `action` wins over the section's; `redirect` runs the
//! rule's redirect profile (`super::redirect`) instead of the call, and is
//! a block when the rule names no profile.
use regex::{Regex, RegexBuilder};
use serde_json::Value;

use std::collections::BTreeMap;

use super::shell::deobfuscate;
use crate::config::pipelock::{McpToolPolicy, PolicyAction, RedirectProfile};

/// Compiled regex size limit (a config pattern cannot exhaust memory).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A policy rule that cannot be compiled.
#[derive(Debug, thiserror::Error)]
#[error(
    "mcp_tool_policy.rules[{index}] ({name}): {field} is not a valid regular expression: {source}"
)]
pub struct RuleError {
    pub index: usize,
    pub name: String,
    pub field: &'static str,
    #[source]
    pub source: regex::Error,
}

struct Rule {
    name: String,
    tool: Regex,
    arg: Option<Regex>,
    key: Option<Regex>,
    block: bool,
    redirect: Option<String>,
}

/// The compiled policy.
pub struct Policy {
    rules: Vec<Rule>,
    profiles: BTreeMap<String, RedirectProfile>,
}

/// A rule that matched a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyHit {
    pub rule: String,
    /// The rule (or the section) says block (or redirect).
    pub block: bool,
    /// The rule says redirect, to this profile.
    pub redirect: Option<String>,
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

impl Policy {
    /// Compiles `cfg.rules`; `None` when the policy is off or has no rules.
    pub fn new(cfg: &McpToolPolicy) -> Result<Option<Self>, RuleError> {
        if !cfg.enabled || cfg.rules.is_empty() {
            return Ok(None);
        }
        let mut rules = Vec::with_capacity(cfg.rules.len());
        for (index, r) in cfg.rules.iter().enumerate() {
            let err = |field, source| RuleError {
                index,
                name: r.name.clone(),
                field,
                source,
            };
            let action = r.action.unwrap_or(cfg.action);
            let redirect = (action == PolicyAction::Redirect)
                .then(|| r.redirect_profile.clone())
                .flatten();
            rules.push(Rule {
                name: r.name.clone(),
                tool: compile(&r.tool_pattern).map_err(|e| err("tool_pattern", e))?,
                arg: r
                    .arg_pattern
                    .as_deref()
                    .map(compile)
                    .transpose()
                    .map_err(|e| err("arg_pattern", e))?,
                key: r
                    .arg_key
                    .as_deref()
                    .map(compile)
                    .transpose()
                    .map_err(|e| err("arg_key", e))?,
                block: matches!(action, PolicyAction::Block | PolicyAction::Redirect),
                redirect,
            });
        }
        Ok(Some(Policy {
            rules,
            profiles: cfg.redirect_profiles.clone(),
        }))
    }

    /// The redirect profile called `name`.
    pub fn profile(&self, name: &str) -> Option<&RedirectProfile> {
        self.profiles.get(name)
    }

    /// The rules a call to `tool` with `arguments` matches.
    pub fn check(&self, tool: &str, arguments: &Value) -> Vec<PolicyHit> {
        let tool_views = [tool.to_owned(), deobfuscate(tool)];
        let mut hits = Vec::new();
        for r in &self.rules {
            if !tool_views.iter().any(|t| r.tool.is_match(t)) {
                continue;
            }
            let matched = match &r.arg {
                None => true,
                Some(arg) => {
                    let values = arg_strings(arguments, r.key.as_ref());
                    let mut views: Vec<String> = Vec::with_capacity(values.len() * 2 + 2);
                    for v in &values {
                        views.push(v.clone());
                        views.push(deobfuscate(v));
                    }
                    views.push(values.join(" "));
                    views.push(deobfuscate(&values.join(" ")));
                    views.iter().any(|v| arg.is_match(v))
                }
            };
            if matched {
                hits.push(PolicyHit {
                    rule: r.name.clone(),
                    block: r.block,
                    redirect: r.redirect.clone(),
                });
            }
        }
        hits
    }
}

/// The string arguments (numbers and booleans as text), only those under a
/// top-level key matching `key` when given.
fn arg_strings(arguments: &Value, key: Option<&Regex>) -> Vec<String> {
    let mut out = Vec::new();
    match (arguments, key) {
        (Value::Object(o), Some(k)) => {
            for (name, v) in o {
                if k.is_match(name) {
                    leaves(v, &mut out, 0);
                }
            }
        }
        (v, None) => leaves(v, &mut out, 0),
        _ => {}
    }
    out
}

fn leaves(v: &Value, out: &mut Vec<String>, depth: usize) {
    if depth > 32 {
        return;
    }
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Number(n) => out.push(n.to_string()),
        Value::Bool(b) => out.push(b.to_string()),
        Value::Array(a) => a.iter().for_each(|x| leaves(x, out, depth + 1)),
        Value::Object(o) => o.values().for_each(|x| leaves(x, out, depth + 1)),
        Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::pipelock::ToolPolicyRule;
    use serde_json::json;

    fn policy(rules: Vec<ToolPolicyRule>) -> Policy {
        Policy::new(&McpToolPolicy {
            enabled: true,
            rules,
            ..Default::default()
        })
        .unwrap()
        .unwrap()
    }

    fn rule(
        name: &str,
        tool: &str,
        arg: Option<&str>,
        key: Option<&str>,
        action: Option<PolicyAction>,
    ) -> ToolPolicyRule {
        ToolPolicyRule {
            name: name.into(),
            tool_pattern: tool.into(),
            arg_pattern: arg.map(Into::into),
            arg_key: key.map(Into::into),
            action,
            redirect_profile: None,
        }
    }

    #[test]
    fn obfuscated_arguments_match() {
        let p = policy(vec![
            rule(
                "no-rm",
                "^(bash|shell|exec_.*)$",
                Some(r"\brm\s+-[a-z]*[rf]"),
                Some("^command$"),
                Some(PolicyAction::Block),
            ),
            rule("no-delete", "^delete_", None, None, None),
        ]);
        for cmd in [
            "rm -rf /",
            "{rm,-rf,/}",
            "r''m${IFS}-rf /",
            "\\x72m -rf /tmp",
        ] {
            let hits = p.check("exec_shell", &json!({"command": cmd}));
            assert_eq!(
                hits,
                vec![PolicyHit {
                    rule: "no-rm".into(),
                    block: true,
                    redirect: None,
                }],
                "{cmd}"
            );
        }
        assert!(
            p.check("exec_shell", &json!({"note": "rm -rf /"}))
                .is_empty(),
            "other key"
        );
        assert!(
            p.check("exec_shell", &json!({"command": "ls -la"}))
                .is_empty()
        );
        assert_eq!(
            p.check("delete_account", &json!({})),
            vec![PolicyHit {
                rule: "no-delete".into(),
                block: false,
                redirect: None,
            }],
            "section action warn"
        );
    }

    #[test]
    fn redirect_rules_name_their_profile() {
        let mut to_safe = rule(
            "to-safe",
            "^fetch$",
            None,
            None,
            Some(PolicyAction::Redirect),
        );
        to_safe.redirect_profile = Some("safe-fetch".into());
        let bare = rule("bare", "^fetch$", None, None, Some(PolicyAction::Redirect));
        let p = policy(vec![to_safe, bare]);
        let hits = p.check("fetch", &json!({}));
        assert_eq!(hits[0].redirect.as_deref(), Some("safe-fetch"));
        assert!(hits[0].block);
        assert_eq!(hits[1].redirect, None, "no profile: a block");
        assert!(hits[1].block);
        assert!(p.profile("safe-fetch").is_none(), "none configured here");
    }

    #[test]
    fn bad_pattern_is_an_error_with_the_rule() {
        let e = Policy::new(&McpToolPolicy {
            enabled: true,
            rules: vec![rule("bad", "(", None, None, None)],
            ..Default::default()
        })
        .err()
        .unwrap();
        assert!(
            e.to_string().contains("rules[0] (bad): tool_pattern"),
            "{e}"
        );
    }
}
