//! Verdicts: which action a finding gets under a mode (strict blocks
//! everything, balanced blocks high-confidence findings and warns on the
//! rest, audit only logs), per-cgroup mode overrides, and the shape of a
//! block (403 with a short, JSON-safe reason naming rule ids, never data).
use std::collections::HashMap;

use serde::Serialize;

use crate::{config::Mode, pipeline::Block, scan::engine::patterns::Confidence};

/// What happens because of a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Logged only.
    Log,
    /// Logged as a warning; traffic continues.
    Warn,
    /// The request is refused (403) or the response cut.
    Block,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Log => "log",
            Action::Warn => "warn",
            Action::Block => "block",
        }
    }
}

/// The action for a finding of `confidence` under `mode`. `section_blocks`:
/// the finding's config section says `action: block`, which makes balanced
/// block it whatever its confidence (audit still only logs).
pub fn action_for(mode: Mode, confidence: Confidence, section_blocks: bool) -> Action {
    match mode {
        Mode::Strict => Action::Block,
        Mode::Balanced if confidence == Confidence::High || section_blocks => Action::Block,
        Mode::Balanced => Action::Warn,
        Mode::Audit => Action::Log,
    }
}

/// Mode selection: a default, overrides by cgroup v2 id, and overrides by
/// cgroup subtree (what `interceptor.mode_overrides` names).
#[derive(Clone, Debug)]
pub struct Policy {
    pub default_mode: Mode,
    pub cgroup_modes: HashMap<u64, Mode>,
    pub subtrees: std::sync::Arc<super::subtree::SubtreeModes>,
}

impl Policy {
    pub fn new(default_mode: Mode) -> Self {
        Policy {
            default_mode,
            cgroup_modes: HashMap::new(),
            subtrees: Default::default(),
        }
    }

    /// The mode for a connection from `cgroup_id` (`None`: not attributed).
    pub fn mode_for(&self, cgroup_id: Option<u64>) -> Mode {
        cgroup_id
            .and_then(|id| {
                self.cgroup_modes
                    .get(&id)
                    .copied()
                    .or_else(|| self.subtrees.mode_of(id))
            })
            .unwrap_or(self.default_mode)
    }
}

/// At most this many rule ids are named in a reason.
const MAX_REASON_IDS: usize = 8;

/// Keeps only characters that are safe inside JSON strings and headers.
fn json_safe(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._:-/ ,()".contains(*c))
        .collect()
}

/// A 403 block naming the rules that caused it.
pub fn block(direction: &str, rule_ids: &[String]) -> Block {
    let mut ids: Vec<String> = rule_ids.iter().map(|id| json_safe(id)).collect();
    ids.dedup();
    let shown: Vec<&str> = ids
        .iter()
        .take(MAX_REASON_IDS)
        .map(String::as_str)
        .collect();
    let more = ids.len().saturating_sub(MAX_REASON_IDS);
    let mut reason = format!(
        "pipelock blocked {} ({})",
        json_safe(direction),
        shown.join(", ")
    );
    if more > 0 {
        reason.push_str(&format!(" and {more} more"));
    }
    Block {
        status: http::StatusCode::FORBIDDEN,
        reason,
        rule_ids: ids,
        kind: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_per_mode() {
        use Confidence::*;
        assert_eq!(action_for(Mode::Strict, Low, false), Action::Block);
        assert_eq!(action_for(Mode::Strict, High, false), Action::Block);
        assert_eq!(action_for(Mode::Balanced, High, false), Action::Block);
        assert_eq!(action_for(Mode::Balanced, Medium, false), Action::Warn);
        assert_eq!(action_for(Mode::Balanced, Low, false), Action::Warn);
        assert_eq!(action_for(Mode::Audit, High, false), Action::Log);
    }

    #[test]
    fn section_block_raises_balanced_only() {
        use Confidence::*;
        assert_eq!(action_for(Mode::Balanced, Low, true), Action::Block);
        assert_eq!(action_for(Mode::Balanced, Medium, false), Action::Warn);
        assert_eq!(action_for(Mode::Audit, High, true), Action::Log);
        assert_eq!(action_for(Mode::Strict, Low, false), Action::Block);
    }

    #[test]
    fn cgroup_override() {
        let mut p = Policy::new(Mode::Balanced);
        p.cgroup_modes.insert(42, Mode::Audit);
        assert_eq!(p.mode_for(Some(42)), Mode::Audit);
        assert_eq!(p.mode_for(Some(7)), Mode::Balanced);
        assert_eq!(p.mode_for(None), Mode::Balanced);
    }

    #[test]
    fn block_reason_is_json_safe_and_short() {
        let ids: Vec<String> = (0..12).map(|i| format!("dlp.rule_{i}")).collect();
        let mut with_bad = ids.clone();
        with_bad.push("known_secret:env:\"X\\".into());
        let b = block("request", &with_bad);
        assert_eq!(b.status, http::StatusCode::FORBIDDEN);
        assert!(b.reason.contains("dlp.rule_0"));
        assert!(b.reason.contains("and 5 more"), "{}", b.reason);
        assert!(!b.reason.contains('"') && !b.reason.contains('\\'));
        let v = b.json_body();
        assert_eq!(v["rule_ids"].as_array().unwrap().len(), 13);
    }
}
