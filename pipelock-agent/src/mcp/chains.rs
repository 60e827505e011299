//! Chain detection (`tool_chain_detection`): each `tools/call` is put in a
//! category (read, write, exec, network, list, env, persist) from keywords
//! in the segments of its tool name (`tool_categories` first), exec and
//! write calls that install persistence are reclassified from their
//! arguments, and the session's recent calls (at most `window_size`, none
//! older than `window_seconds`) are searched for a dangerous sequence that
//! the current call completes, with at most `max_gap` other calls between
//! two steps. Pipelock's 10 sequences are built in (`pattern_overrides`
//! sets their action), `custom_patterns` add more.
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::shell::deobfuscate;
use crate::config::pipelock::{ChainSeverity, ToolChainDetection, WarnBlock};

/// What a tool call does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Category {
    Read,
    Write,
    Exec,
    Network,
    List,
    Env,
    Persist,
}

impl Category {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "read" => Category::Read,
            "write" => Category::Write,
            "exec" => Category::Exec,
            "network" => Category::Network,
            "list" => Category::List,
            "env" => Category::Env,
            "persist" => Category::Persist,
            _ => return None,
        })
    }
}

/// Keywords per category, in priority order (the first match wins).
const KEYWORDS: &[(Category, &[&str])] = &[
    (
        Category::Exec,
        &[
            "shell",
            "bash",
            "run",
            "execute",
            "exec",
            "cmd",
            "spawn",
            "eval",
            "sh",
            "zsh",
            "powershell",
        ],
    ),
    (
        Category::Persist,
        &[
            "crontab",
            "cron",
            "systemctl",
            "systemd",
            "launchd",
            "launchctl",
            "autostart",
        ],
    ),
    (
        Category::Env,
        &[
            "env",
            "environ",
            "getenv",
            "secret",
            "credential",
            "credentials",
            "config",
            "token",
            "key",
            "password",
        ],
    ),
    (
        Category::Network,
        &[
            "fetch", "curl", "wget", "http", "request", "send", "post", "upload", "download", "api",
        ],
    ),
    (
        Category::Write,
        &[
            "write", "create", "save", "update", "edit", "modify", "put", "append", "insert",
        ],
    ),
    (
        Category::Read,
        &[
            "read", "get", "view", "cat", "head", "tail", "open", "load", "retrieve", "access",
        ],
    ),
    (
        Category::List,
        &[
            "list",
            "ls",
            "dir",
            "find",
            "glob",
            "search",
            "scan",
            "enumerate",
            "walk",
        ],
    ),
];

/// Segments that make a persist keyword a read (`cron_status`, `list_systemd`).
const READ_INDICATORS: &[&str] = &["status", "list", "show", "info", "get", "check", "logs"];

/// Argument fragments that make an exec or write call a persist one.
const PERSIST_ARGS: &[&str] = &[
    "crontab -e",
    "crontab ",
    "| crontab",
    "systemctl enable",
    "systemctl daemon-reload",
    "launchctl load",
    "/etc/cron",
    "/var/spool/cron",
    "/etc/systemd",
    "/lib/systemd",
    ".config/systemd",
    "/etc/init.d",
    "/library/launchdaemons",
    "/library/launchagents",
];

/// One sequence to look for.
#[derive(Clone, Debug)]
pub struct Pattern {
    pub name: String,
    pub sequence: Vec<Category>,
    pub severity: ChainSeverity,
    pub block: bool,
}

/// The built-in sequences (name, steps, severity).
const BUILTIN: &[(&str, &[Category], ChainSeverity)] = {
    use Category::*;
    use ChainSeverity::*;
    &[
        ("read-then-exec", &[Read, Exec], High),
        ("read-write-send", &[Read, Write, Network], Critical),
        ("env-then-network", &[Env, Network], Critical),
        ("directory-scan", &[List, List, Read], Medium),
        ("write-execute", &[Write, Exec], High),
        ("write-chmod-execute", &[Write, Exec, Exec], Critical),
        ("read-sensitive-write", &[Read, Write], Medium),
        ("shell-burst", &[Exec, Exec, Exec, Exec], High),
        ("write-persist", &[Write, Persist], Critical),
        ("persist-callback", &[Persist, Network], Critical),
    ]
};

/// A chain section that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error(
        "tool_chain_detection.custom_patterns {name}: unknown category {category:?} (read, write, exec, network, list, env, persist)"
    )]
    Category { name: String, category: String },
    #[error("tool_chain_detection.custom_patterns {name}: a sequence needs at least 2 steps")]
    Short { name: String },
    #[error("tool_chain_detection.tool_categories {tool}: unknown category {category:?}")]
    Override { tool: String, category: String },
}

/// The compiled detector.
#[derive(Clone, Debug)]
pub struct Detector {
    patterns: Vec<Pattern>,
    overrides: Vec<(String, Category)>,
    pub window_size: usize,
    pub window: Duration,
    max_gap: usize,
}

/// A call in a session's history.
pub type Call = (Category, Instant);

impl Detector {
    /// From the config section; `None` when it is off.
    pub fn new(cfg: &ToolChainDetection) -> Result<Option<Self>, ChainError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let section_block = cfg.action == WarnBlock::Block;
        let mut patterns: Vec<Pattern> = BUILTIN
            .iter()
            .map(|(name, seq, sev)| Pattern {
                name: (*name).to_owned(),
                sequence: seq.to_vec(),
                severity: *sev,
                block: cfg
                    .pattern_overrides
                    .get(*name)
                    .map_or(section_block, |a| *a == WarnBlock::Block),
            })
            .collect();
        for c in &cfg.custom_patterns {
            let mut sequence = Vec::new();
            for step in &c.sequence {
                sequence.push(Category::parse(step).ok_or_else(|| ChainError::Category {
                    name: c.name.clone(),
                    category: step.clone(),
                })?);
            }
            if sequence.len() < 2 {
                return Err(ChainError::Short {
                    name: c.name.clone(),
                });
            }
            patterns.push(Pattern {
                name: c.name.clone(),
                sequence,
                severity: c.severity.unwrap_or(ChainSeverity::High),
                block: c.action.map_or(section_block, |a| a == WarnBlock::Block),
            });
        }
        let mut overrides = Vec::new();
        for (tool, cat) in &cfg.tool_categories {
            overrides.push((
                tool.clone(),
                Category::parse(cat).ok_or_else(|| ChainError::Override {
                    tool: tool.clone(),
                    category: cat.clone(),
                })?,
            ));
        }
        // Exact names before globs.
        overrides.sort_by_key(|(t, _)| t.contains('*'));
        Ok(Some(Detector {
            patterns,
            overrides,
            window_size: cfg.window_size.max(1),
            window: Duration::from_secs(cfg.window_seconds.max(1)),
            max_gap: cfg.max_gap,
        }))
    }

    /// The category of a call (`None`: unknown, not recorded).
    pub fn classify(&self, tool: &str, arguments: &Value) -> Option<Category> {
        let lower = tool.to_ascii_lowercase();
        if let Some((_, c)) = self
            .overrides
            .iter()
            .find(|(t, _)| glob(&t.to_ascii_lowercase(), &lower))
        {
            return Some(*c);
        }
        let name = lower.replace("__", "_");
        let segs: Vec<&str> = name
            .split(['_', '-', '.', ' ', '/'])
            .filter(|s| !s.is_empty())
            .collect();
        let reads = segs.iter().any(|s| READ_INDICATORS.contains(s));
        let cat = KEYWORDS.iter().find_map(|(cat, words)| {
            if *cat == Category::Persist && reads {
                return None;
            }
            segs.iter().any(|s| words.contains(s)).then_some(*cat)
        })?;
        if matches!(cat, Category::Exec | Category::Write) {
            let mut strs = Vec::new();
            super::jsonrpc::strings(arguments, &mut strs);
            let text = deobfuscate(&strs.join(" ")).to_ascii_lowercase();
            if PERSIST_ARGS.iter().any(|p| text.contains(p)) {
                return Some(Category::Persist);
            }
        }
        Some(cat)
    }

    /// Records `cat` at `now` in `history` (pruned to the window) and returns
    /// the patterns it completes, most severe first.
    pub fn record(
        &self,
        history: &mut VecDeque<Call>,
        cat: Category,
        now: Instant,
    ) -> Vec<&Pattern> {
        while history
            .front()
            .is_some_and(|(_, t)| now.duration_since(*t) > self.window)
        {
            history.pop_front();
        }
        history.push_back((cat, now));
        while history.len() > self.window_size {
            history.pop_front();
        }
        let cats: Vec<Category> = history.iter().map(|(c, _)| *c).collect();
        let mut found: Vec<&Pattern> = self
            .patterns
            .iter()
            .filter(|p| ends_with_subsequence(&cats, &p.sequence, self.max_gap))
            .collect();
        found.sort_by_key(|p| (std::cmp::Reverse(severity_rank(p.severity)), !p.block));
        found
    }
}

fn severity_rank(s: ChainSeverity) -> u8 {
    match s {
        ChainSeverity::Low => 0,
        ChainSeverity::Medium => 1,
        ChainSeverity::High => 2,
        ChainSeverity::Critical => 3,
    }
}

/// True when `seq` occurs in `cats` ending at the last element, with at
/// most `max_gap` other entries between consecutive steps.
fn ends_with_subsequence(cats: &[Category], seq: &[Category], max_gap: usize) -> bool {
    fn back(cats: &[Category], seq: &[Category], end: usize, max_gap: usize) -> bool {
        // seq's last step is at `end`; find the step before it.
        let Some((_, head)) = seq.split_last() else {
            return true;
        };
        let Some(&want) = head.last() else {
            return true;
        };
        let lo = end.saturating_sub(max_gap + 1);
        (lo..end)
            .rev()
            .any(|j| cats[j] == want && back(cats, head, j, max_gap))
    }
    match (cats.last(), seq.last()) {
        (Some(a), Some(b)) if a == b => back(cats, seq, cats.len() - 1, max_gap),
        _ => false,
    }
}

/// `*` matches any run of characters.
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let mut rest = s;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Category names as findings show them.
pub fn names(seq: &[Category]) -> String {
    seq.iter()
        .map(|c| format!("{c:?}").to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(">")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn detector(cfg: ToolChainDetection) -> Detector {
        Detector::new(&cfg).unwrap().unwrap()
    }

    #[test]
    fn classification() {
        let d = detector(ToolChainDetection::default());
        let c = |t: &str| d.classify(t, &json!({}));
        assert_eq!(c("read_file"), Some(Category::Read));
        assert_eq!(c("get_env"), Some(Category::Env));
        assert_eq!(c("http_post"), Some(Category::Network));
        assert_eq!(c("run_shell"), Some(Category::Exec));
        assert_eq!(c("cron_status"), None, "a read indicator disarms persist");
        assert_eq!(c("install_cron"), Some(Category::Persist));
        assert_eq!(c("list_accounts"), Some(Category::List));
        assert_eq!(c("frobnicate"), None);
        assert_eq!(
            d.classify(
                "run_command",
                &json!({"cmd": "(crontab -l; echo x) | crontab -"})
            ),
            Some(Category::Persist)
        );
    }

    #[test]
    fn sequences_with_gaps_and_windows() {
        let d = detector(ToolChainDetection::default());
        let t0 = Instant::now();
        let mut h = VecDeque::new();
        assert!(d.record(&mut h, Category::Env, t0).is_empty());
        assert!(d.record(&mut h, Category::List, t0).is_empty());
        let found = d.record(&mut h, Category::Network, t0);
        assert_eq!(found[0].name, "env-then-network");
        assert!(!found[0].block, "section action warn");
        // Gap of 4 > max_gap 3: no match.
        let mut h = VecDeque::new();
        d.record(&mut h, Category::Env, t0);
        for _ in 0..4 {
            d.record(&mut h, Category::List, t0);
        }
        assert!(
            d.record(&mut h, Category::Network, t0)
                .iter()
                .all(|p| p.name != "env-then-network")
        );
        // Out of the time window.
        let mut h = VecDeque::new();
        d.record(&mut h, Category::Env, t0);
        let later = t0 + Duration::from_secs(61);
        assert!(d.record(&mut h, Category::Network, later).is_empty());
    }

    #[test]
    fn overrides_and_custom_patterns() {
        let mut cfg = ToolChainDetection {
            action: WarnBlock::Warn,
            ..Default::default()
        };
        cfg.pattern_overrides
            .insert("env-then-network".into(), WarnBlock::Block);
        cfg.tool_categories
            .insert("get_balance*".into(), "env".into());
        cfg.custom_patterns
            .push(crate::config::pipelock::ChainPattern {
                name: "list-then-send".into(),
                sequence: vec!["list".into(), "network".into()],
                severity: Some(ChainSeverity::Critical),
                action: Some(WarnBlock::Block),
            });
        let d = detector(cfg);
        assert_eq!(
            d.classify("get_balance_sheet", &json!({})),
            Some(Category::Env)
        );
        let t0 = Instant::now();
        let mut h = VecDeque::new();
        d.record(&mut h, Category::Env, t0);
        let found = d.record(&mut h, Category::Network, t0);
        assert!(found[0].block);
        let mut h = VecDeque::new();
        d.record(&mut h, Category::List, t0);
        let found = d.record(&mut h, Category::Network, t0);
        assert_eq!(found[0].name, "list-then-send");
        assert_eq!(names(&found[0].sequence), "list>network");
    }
}
