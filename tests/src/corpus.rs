//! The labelled detection corpus (`tests/corpus/*.yaml`, format in
//! `tests/corpus/README.md`): its model and loader, shared by the in-process
//! runner (`tests/tests/detection.rs`) and `cargo xtask bench detect`.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde::Deserialize;

/// What strict mode does with a case.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// The request is refused (403/429) or the response cut.
    Block,
    /// It reaches the other side unchanged.
    Pass,
}

/// Which listener a case arrives on.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CaseListener {
    #[default]
    Transparent,
    Forward,
}

/// One labelled case.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub id: String,
    pub class: String,
    pub expect: Expect,
    #[serde(default)]
    pub note: Option<String>,
    /// Set when the engine misses this today (with why).
    #[serde(default)]
    pub known_miss: Option<String>,
    pub request: CaseRequest,
    #[serde(default)]
    pub response: Option<CaseResponse>,
    /// The file it came from (set by the loader).
    #[serde(skip)]
    pub file: PathBuf,
}

/// The request a client sends.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseRequest {
    #[serde(default = "default_method")]
    pub method: String,
    pub host: String,
    #[serde(default = "default_true")]
    pub tls: bool,
    /// The address the client connected to.
    #[serde(default)]
    pub connect: Option<SocketAddr>,
    #[serde(default)]
    pub listener: CaseListener,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub body_b64: Option<String>,
}

/// What the upstream answers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseResponse {
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub body_b64: Option<String>,
}

fn default_method() -> String {
    "GET".into()
}
fn default_path() -> String {
    "/".into()
}
fn default_true() -> bool {
    true
}
fn default_status() -> u16 {
    200
}

fn body_bytes(text: &Option<String>, b64: &Option<String>, id: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    match (text, b64) {
        (Some(_), Some(_)) => anyhow::bail!("case {id}: both body and body_b64"),
        (Some(t), None) => Ok(t.as_bytes().to_vec()),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .with_context(|| format!("case {id}: body_b64")),
        (None, None) => Ok(Vec::new()),
    }
}

impl CaseRequest {
    /// The body bytes (empty when none).
    pub fn body(&self, id: &str) -> anyhow::Result<Vec<u8>> {
        body_bytes(&self.body, &self.body_b64, id)
    }

    /// The address connected to: `connect`, else 127.0.0.1 on 443 or 80.
    pub fn connect_addr(&self) -> SocketAddr {
        self.connect.unwrap_or_else(|| {
            let port = if self.tls { 443 } else { 80 };
            SocketAddr::from(([127, 0, 0, 1], port))
        })
    }
}

impl CaseResponse {
    /// The body bytes (empty when none).
    pub fn body(&self, id: &str) -> anyhow::Result<Vec<u8>> {
        body_bytes(&self.body, &self.body_b64, id)
    }
}

/// The corpus directory of this repository.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Every case of every `*.yaml` in `dir`, files in name order; ids must be unique.
pub fn load_all(dir: &Path) -> anyhow::Result<Vec<Case>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let mut batch: Vec<Case> =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        for case in &mut batch {
            anyhow::ensure!(
                seen.insert(case.id.clone()),
                "{}: duplicate case id {}",
                file.display(),
                case.id
            );
            case.file = file.clone();
            // Validate the bodies now, so a bad case names itself at load.
            case.request.body(&case.id)?;
            if let Some(r) = &case.response {
                r.body(&case.id)?;
            }
        }
        cases.extend(batch);
    }
    Ok(cases)
}

/// Recall and false-positive counts of one class (or of the whole corpus).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Score {
    /// Cases expected to be blocked, and how many were.
    pub positives: usize,
    pub caught: usize,
    /// Cases expected to pass, and how many were blocked anyway.
    pub negatives: usize,
    pub false_positives: usize,
}

impl Score {
    /// Counts one case: what was expected and whether it was blocked.
    pub fn add(&mut self, expect: Expect, blocked: bool) {
        match expect {
            Expect::Block => {
                self.positives += 1;
                self.caught += usize::from(blocked);
            }
            Expect::Pass => {
                self.negatives += 1;
                self.false_positives += usize::from(blocked);
            }
        }
    }

    /// Caught / positives, in percent (100 when there are none).
    pub fn recall(&self) -> f64 {
        percent(self.caught, self.positives, 100.0)
    }

    /// Blocked negatives / negatives, in percent (0 when there are none).
    pub fn fp_rate(&self) -> f64 {
        percent(self.false_positives, self.negatives, 0.0)
    }
}

fn percent(part: usize, whole: usize, empty: f64) -> f64 {
    if whole == 0 {
        empty
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// A table of scores per class and in total, one line each.
pub fn score_table(by_class: &std::collections::BTreeMap<String, Score>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut total = Score::default();
    let _ = writeln!(
        out,
        "{:>12}  {:>14}  {:>12}",
        "class", "recall", "false pos."
    );
    let mut line = |name: &str, s: &Score| {
        let _ = writeln!(
            out,
            "{name:>12}  {:>3}/{:<3} {:>5.1}%  {:>2}/{:<3} {:>4.1}%",
            s.caught,
            s.positives,
            s.recall(),
            s.false_positives,
            s.negatives,
            s.fp_rate()
        );
    };
    for (class, s) in by_class {
        line(class, s);
        total.positives += s.positives;
        total.caught += s.caught;
        total.negatives += s.negatives;
        total.false_positives += s.false_positives;
    }
    line("total", &total);
    out
}
