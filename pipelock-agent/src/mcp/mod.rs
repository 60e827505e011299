//! The MCP checks of the :8889 reverse proxy (`crate::proxy::mcp`), apart
//! from scanning, which the one pipeline does: JSON-RPC message parts
//! (`jsonrpc`), tool pins and drift (`tools`), tool poisoning (`poison`),
//! shell de-obfuscation (`shell`), the tool policy (`policy`) and its
//! redirect profiles (`redirect`), chain detection (`chains`) and
//! per-session state (`session`). Every check
//! returns hits (`crate::scan::text::Hit`, class `mcp`) that the listener
//! hands to its pipeline exchange (`Exchange::report`), so they are judged
//! by mode, logged and counted like every other finding.
pub mod chains;
pub mod jsonrpc;
pub mod poison;
pub mod policy;
pub mod redirect;
pub mod session;
pub mod shell;
pub mod tools;

use std::{borrow::Cow, sync::Arc, time::Instant};

use serde_json::Value;

use crate::{
    config::{
        Config,
        pipelock::{ChainSeverity, OnParseError, WarnBlock},
    },
    scan::{
        engine::{
            Reveal, RuleMeta,
            patterns::{Confidence, RuleClass, Severity},
        },
        text::Hit,
    },
};
use session::Session;
use tools::Pin;

/// A config section of the MCP proxy that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Policy(#[from] policy::RuleError),
    #[error(transparent)]
    Chains(#[from] chains::ChainError),
}

/// The MCP sections of the config, compiled (part of the live context: a
/// reload applies them to new requests).
pub struct McpSettings {
    /// `mcp_input_scanning.enabled` (the body's DLP follows it in the
    /// pipeline; here: the de-obfuscated argument strings too).
    pub input_scanning: bool,
    /// `mcp_input_scanning.on_parse_error: block`: a body that is not JSON is refused.
    pub parse_error_block: bool,
    /// `mcp_tool_scanning.enabled`.
    pub tool_scan: bool,
    /// `mcp_tool_scanning.action: block`.
    pub tool_scan_block: bool,
    /// `mcp_tool_scanning.detect_drift`.
    pub detect_drift: bool,
    /// `mcp_session_binding.enabled`.
    pub binding: bool,
    pub unknown_tool_block: bool,
    pub no_baseline_block: bool,
    /// `mcp_tool_policy` (None: off or no rules).
    pub policy: Option<policy::Policy>,
    /// `tool_chain_detection` (None: off).
    pub chains: Option<chains::Detector>,
    /// Largest request or (non-streamed) response body read whole for
    /// scanning (`request_body_scanning.max_body_bytes`).
    pub max_body: usize,
}

impl Default for McpSettings {
    /// The settings of the built-in defaults.
    fn default() -> Self {
        let cfg = Config::default();
        McpSettings {
            chains: chains::Detector::new(&cfg.tool_chain_detection)
                .ok()
                .flatten(),
            ..McpSettings::base(&cfg)
        }
    }
}

impl McpSettings {
    pub fn new(cfg: &Config) -> Result<Self, Error> {
        Ok(McpSettings {
            policy: policy::Policy::new(&cfg.mcp_tool_policy)?,
            chains: chains::Detector::new(&cfg.tool_chain_detection)?,
            ..McpSettings::base(cfg)
        })
    }

    /// Everything but the compiled policy and chains.
    fn base(cfg: &Config) -> Self {
        let ts = &cfg.mcp_tool_scanning;
        let sb = &cfg.mcp_session_binding;
        McpSettings {
            input_scanning: cfg.mcp_input_scanning.enabled,
            parse_error_block: cfg.mcp_input_scanning.enabled
                && cfg.mcp_input_scanning.on_parse_error == OnParseError::Block,
            tool_scan: ts.enabled,
            tool_scan_block: ts.action == WarnBlock::Block,
            detect_drift: ts.enabled && ts.detect_drift,
            binding: sb.enabled,
            unknown_tool_block: sb.unknown_tool_action == WarnBlock::Block,
            no_baseline_block: sb.no_baseline_action == WarnBlock::Block,
            policy: None,
            chains: None,
            max_body: usize::try_from(cfg.request_body_scanning.max_body_bytes)
                .unwrap_or(usize::MAX)
                .max(64 * 1024),
        }
    }
}

/// Hits of one check with the block flag of its config section.
#[derive(Default)]
pub struct Checked {
    pub hits: Vec<Hit>,
    pub section_blocks: bool,
}

/// An MCP finding as the pipeline takes it.
pub fn hit(
    id: impl Into<Cow<'static, str>>,
    name: impl Into<Cow<'static, str>>,
    severity: Severity,
    location: impl Into<Cow<'static, str>>,
    excerpt: impl Into<String>,
) -> Hit {
    Hit {
        meta: Arc::new(RuleMeta {
            id: id.into(),
            name: name.into(),
            class: RuleClass::Mcp,
            severity,
            // Judged by mode: strict blocks, balanced warns unless the
            // section says block, audit logs.
            confidence: Confidence::Medium,
            home_hosts: Vec::new(),
            reveal: Reveal::Prefix,
            confirm: None,
            quotable: false,
        }),
        excerpt: excerpt.into(),
        location: location.into(),
    }
}

/// A rule or pattern name as a rule id segment.
pub fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    s.trim_matches('_').to_owned()
}

/// What a `tools/list` answer showed: poisoning and drift hits, and the
/// pins to record once the answer is let through ([`commit_listing`]).
pub struct Listing {
    pub checked: Checked,
    /// Tools with poisoning findings (what a warn strips from the answer).
    pub poisoned: Vec<String>,
    pins: Vec<(String, Pin)>,
    complete: bool,
}

/// Checks the tools of a `tools/list` response against poisoning, the
/// session's baseline and the pins the upstream showed the same client in
/// earlier sessions (`earlier`). `paged`: the request asked for a later
/// page (a cursor).
pub fn check_listing(
    s: &McpSettings,
    session: &Session,
    earlier: &session::Earlier,
    msg: &Value,
    paged: bool,
) -> Option<Listing> {
    let tools = tools::listed(msg)?;
    let last_page = msg
        .get("result")
        .and_then(|r| r.get("nextCursor"))
        .is_none_or(Value::is_null);
    let mut hits = Vec::new();
    let mut poisoned = Vec::new();
    if s.tool_scan {
        for t in &tools {
            let found = poison::check_tool(t);
            if !found.is_empty() {
                poisoned.push(t.name.to_owned());
            }
            for p in found {
                hits.push(hit(
                    p.rule_id,
                    p.rule_name,
                    Severity::High,
                    p.location,
                    p.excerpt,
                ));
            }
        }
    }
    let pins: Vec<(String, Pin)> = tools
        .iter()
        .map(|t| (t.name.to_owned(), tools::pin(t)))
        .collect();
    if s.detect_drift {
        hits.extend(drift_hits(session, earlier, &pins, paged, last_page));
    }
    Some(Listing {
        checked: Checked {
            hits,
            section_blocks: s.tool_scan_block,
        },
        poisoned,
        pins,
        complete: last_page,
    })
}

/// Drift of a listing: within the session (changed, added, removed since
/// its baseline), and for the tools the session has not pinned yet, a
/// definition other than the one the upstream showed this client in an
/// earlier session (additions and removals between sessions are not
/// flagged: a server may offer other tools in another session).
fn drift_hits(
    session: &Session,
    earlier: &session::Earlier,
    pins: &[(String, Pin)],
    paged: bool,
    last_page: bool,
) -> Vec<Hit> {
    let mut hits = Vec::new();
    let changed = |id: &'static str, name: &'static str, tool: &str, old: &Pin, new: &Pin| {
        hit(
            id,
            name,
            Severity::High,
            format!("tool:{}", poison::safe(tool)),
            format!("pinned {} now {}", tools::short(old), tools::short(new)),
        )
    };
    for (tool, new) in pins {
        if session.tools.as_ref().is_some_and(|t| t.contains_key(tool)) {
            continue;
        }
        if let Some(old) = earlier.get(tool)
            && old != new
        {
            hits.push(changed(
                "mcp.tool_drift_across_sessions",
                "Tool Definition Changed Since an Earlier Session (rug pull)",
                tool,
                old,
                new,
            ));
        }
    }
    let Some(base) = &session.tools else {
        return hits;
    };
    let d = tools::compare(base, pins, !paged && last_page && session.tools_complete);
    for (tool, old, new) in &d.changed {
        hits.push(changed(
            "mcp.tool_drift",
            "Tool Definition Changed (rug pull)",
            tool,
            old,
            new,
        ));
    }
    // Additions count once the whole list was seen (else: a later page).
    let added: &[String] = if session.tools_complete {
        &d.added
    } else {
        &[]
    };
    let kinds = [
        (
            added,
            "mcp.tool_added",
            "Tool Added After Baseline",
            "not in the session's baseline",
        ),
        (
            &d.removed[..],
            "mcp.tool_removed",
            "Tool Removed After Baseline",
            "in the baseline, no longer listed",
        ),
    ];
    for (tools, id, name, excerpt) in kinds {
        for tool in tools {
            hits.push(hit(
                id,
                name,
                Severity::Medium,
                format!("tool:{}", poison::safe(tool)),
                excerpt,
            ));
        }
    }
    hits
}

/// Records a let-through listing in the session and in the client's
/// earlier pins: the first pin of each tool stays (a changed tool is
/// compared with what was first seen), at most
/// [`session::MAX_PINNED_TOOLS`] tools each.
pub fn commit_listing(session: &mut Session, earlier: &mut session::Earlier, listing: Listing) {
    let base = session.tools.get_or_insert_with(Default::default);
    for (name, pin) in listing.pins {
        if base.len() < session::MAX_PINNED_TOOLS && !base.contains_key(&name) {
            base.insert(name.clone(), pin);
        }
        if earlier.len() < session::MAX_PINNED_TOOLS {
            earlier.entry(name).or_insert(pin);
        }
    }
    session.tools_complete |= listing.complete;
}

/// The texts of a client message to scan beside its raw bytes
/// (`mcp_input_scanning`): when the raw JSON has escapes (`has_escapes`),
/// every string leaf unescaped (an escape such as `\u0067` must not hide a
/// secret or an instruction from the scan of the raw bytes); and for a
/// `tools/call`, each argument string as a shell would run it
/// (`shell::deobfuscate`) where that differs. One text per line; empty
/// when there is nothing beyond the raw bytes to scan.
pub fn input_views(msg: &Value, has_escapes: bool) -> String {
    let mut out = String::new();
    if has_escapes {
        let mut strs = Vec::new();
        jsonrpc::strings(msg, &mut strs);
        for s in strs {
            out.push_str(s);
            out.push('\n');
        }
    }
    if let Some((_, arguments)) = jsonrpc::tool_call(msg) {
        let mut strs = Vec::new();
        jsonrpc::strings(arguments, &mut strs);
        for s in strs {
            let d = shell::deobfuscate(s);
            if d != s.split_whitespace().collect::<Vec<_>>().join(" ") {
                out.push_str(&d);
                out.push('\n');
            }
        }
    }
    out
}

/// Session binding of a `tools/call`: a tool the session never listed
/// (`unknown_tool_action`), or a call before any listing (`no_baseline_action`).
pub fn check_binding(s: &McpSettings, session: &Session, tool: &str) -> Checked {
    if !s.binding {
        return Checked::default();
    }
    let loc = format!("tool:{}", poison::safe(tool));
    match &session.tools {
        None => Checked {
            hits: vec![hit(
                "mcp.no_baseline",
                "Tool Call Before tools/list",
                Severity::Low,
                loc,
                "no baseline in this session",
            )],
            section_blocks: s.no_baseline_block,
        },
        Some(t) if !t.contains_key(tool) => Checked {
            hits: vec![hit(
                "mcp.unknown_tool",
                "Tool Not In Session Baseline",
                Severity::Medium,
                loc,
                "not listed in this session",
            )],
            section_blocks: s.unknown_tool_block,
        },
        Some(_) => Checked::default(),
    }
}

/// The tool policy's verdict on a `tools/call`.
#[derive(Default)]
pub struct PolicyCheck {
    /// Hits of warn-only and of blocking rules, apart.
    pub groups: [Checked; 2],
    /// When no rule blocks outright but one redirects: its hits, with the
    /// profile and rule of the first.
    pub redirect: Option<Redirect>,
}

/// A call the policy redirects to a profile's handler.
pub struct Redirect {
    pub checked: Checked,
    pub profile: String,
    pub rule: String,
}

/// The tool policy for a `tools/call`. The strictest action wins: a rule
/// that blocks outright makes every redirecting rule a block too.
pub fn check_policy(s: &McpSettings, tool: &str, arguments: &Value) -> PolicyCheck {
    let mut out = PolicyCheck::default();
    out.groups[1].section_blocks = true;
    let Some(p) = &s.policy else {
        return out;
    };
    let mut redirects = Vec::new();
    for h in p.check(tool, arguments) {
        let finding = hit(
            format!("mcp.policy.{}", slug(&h.rule)),
            format!("Tool Policy: {}", h.rule),
            Severity::High,
            format!("tool:{}", poison::safe(tool)),
            "",
        );
        match h.redirect {
            Some(profile) => redirects.push((finding, profile, h.rule)),
            None => out.groups[usize::from(h.block)].hits.push(finding),
        }
    }
    if !out.groups[1].hits.is_empty() {
        out.groups[1]
            .hits
            .extend(redirects.into_iter().map(|(h, _, _)| h));
        return out;
    }
    if let Some((_, profile, rule)) = redirects.first() {
        out.redirect = Some(Redirect {
            profile: profile.clone(),
            rule: rule.clone(),
            checked: Checked {
                hits: redirects.into_iter().map(|(h, _, _)| h).collect(),
                section_blocks: true,
            },
        });
    }
    out
}

/// Chain detection for a `tools/call`: records it in the session and returns
/// the sequences it completes (warn-only and blocking apart) and the name of
/// the one to name in a block (the first blocking one, else the most severe).
pub fn check_chain(
    s: &McpSettings,
    session: &mut Session,
    tool: &str,
    arguments: &Value,
    now: Instant,
) -> ([Checked; 2], Option<String>) {
    let mut out = [
        Checked::default(),
        Checked {
            section_blocks: true,
            ..Default::default()
        },
    ];
    let Some(d) = &s.chains else {
        return (out, None);
    };
    let Some(cat) = d.classify(tool, arguments) else {
        return (out, None);
    };
    let found = d.record(&mut session.calls, cat, now);
    let named = found
        .iter()
        .find(|p| p.block)
        .or(found.first())
        .map(|p| p.name.clone());
    for p in found {
        out[usize::from(p.block)].hits.push(hit(
            format!("mcp.chain.{}", slug(&p.name)),
            format!("Tool Chain: {}", p.name),
            match p.severity {
                ChainSeverity::Low => Severity::Low,
                ChainSeverity::Medium => Severity::Medium,
                ChainSeverity::High => Severity::High,
                ChainSeverity::Critical => Severity::Critical,
            },
            format!("tool:{}", poison::safe(tool)),
            chains::names(&p.sequence),
        ));
    }
    (out, named)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(hits: &[Hit]) -> Vec<(String, String)> {
        hits.iter()
            .map(|h| (h.meta.id.to_string(), h.location.to_string()))
            .collect()
    }

    #[test]
    fn drift_within_and_across_sessions() {
        let pins = |v: &[(&str, u8)]| -> Vec<(String, Pin)> {
            v.iter().map(|(n, p)| (n.to_string(), [*p; 32])).collect()
        };
        let listing = pins(&[("a", 9), ("c", 3)]);
        // Within a session whose whole list was seen.
        let session = Session {
            tools: Some(pins(&[("a", 1), ("b", 2)]).into_iter().collect()),
            tools_complete: true,
            ..Default::default()
        };
        let earlier = session::Earlier::new();
        assert_eq!(
            ids(&drift_hits(&session, &earlier, &listing, false, true)),
            [
                ("mcp.tool_drift", "tool:a"),
                ("mcp.tool_added", "tool:c"),
                ("mcp.tool_removed", "tool:b"),
            ]
            .map(|(i, l)| (i.to_owned(), l.to_owned()))
        );
        // A paged listing before the whole list was seen: a new tool is the
        // next page, a missing one not removed.
        let partial = Session {
            tools_complete: false,
            ..session
        };
        assert_eq!(
            ids(&drift_hits(&partial, &earlier, &listing, true, false)),
            [("mcp.tool_drift".to_owned(), "tool:a".to_owned())]
        );
        // A new session: compared with what the client was shown before;
        // only a changed definition counts.
        let earlier: session::Earlier = pins(&[("a", 1), ("z", 4)]).into_iter().collect();
        assert_eq!(
            ids(&drift_hits(
                &Session::default(),
                &earlier,
                &listing,
                false,
                true
            )),
            [(
                "mcp.tool_drift_across_sessions".to_owned(),
                "tool:a".to_owned()
            )]
        );
        // Once pinned in the session, the session's pin is the reference.
        let mut fresh = Session::default();
        let mut earlier = earlier;
        commit_listing(
            &mut fresh,
            &mut earlier,
            Listing {
                checked: Checked::default(),
                poisoned: Vec::new(),
                pins: listing.clone(),
                complete: true,
            },
        );
        assert_eq!(earlier.get("a"), Some(&[1; 32]), "the first pin stays");
        assert_eq!(earlier.get("c"), Some(&[3; 32]));
        assert!(drift_hits(&fresh, &earlier, &listing, false, true).is_empty());
    }
}
