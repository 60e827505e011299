//! The rule catalogue: every DLP and prompt-injection rule with its id,
//! severity, confidence and the expression that detects it, plus the
//! metadata the engine needs to compile it (flags, which pass runs it).
pub mod dlp;
pub mod injection;

use serde::Serialize;

/// How bad a finding is if true.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

/// How likely a match is a true positive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Confidence {
    Low,
    Medium,
    High,
}

/// What a rule looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleClass {
    /// Secrets and personal data leaving (requests) or coming back (responses).
    Dlp,
    /// Prompt injection in responses (matched on normalised text).
    Injection,
    /// Scanner conditions (decompression bomb, unscannable body).
    Scanner,
    /// Where a request goes (SSRF, blocklist, DNS exfiltration, URL entropy).
    Destination,
    /// MCP protocol checks (tool poisoning, drift, session binding, tool
    /// policy, chains), raised by `crate::mcp`, not by the engine.
    Mcp,
}

/// Which pass detects a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detector {
    /// Compiled into the Hyperscan databases (detection without SOM).
    Hyperscan,
    /// A cheap digit-triggered pass (`scan::passes::numeric`, or `passes::runs` for
    /// Discord tokens) with a validator; `expr` is then only the regex form
    /// used by the benchmark baseline.
    Numeric(NumericKind),
    /// Raised by the scanner itself (no expression).
    Internal,
}

/// Shapes the numeric pass recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumericKind {
    CreditCard,
    Ssn,
    Iban,
    Wif,
    AbaRouting,
    /// Found by the encoded-run pass (no literal for Hyperscan to anchor on).
    DiscordToken,
    /// Found by the seed-phrase pass (`scan::passes::seed`): 12–24 BIP-39 words with
    /// a valid checksum. No regex form (`expr` is empty).
    SeedPhrase,
    /// A crypto wallet address with a valid checksum (BTC base58 and
    /// bech32/bech32m, ETH with EIP-55 when mixed case).
    WalletAddress,
}

/// One detection rule.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// Stable id, used in findings, block reasons and metrics (`dlp.github_token`).
    pub id: &'static str,
    /// Human-readable name.
    pub name: &'static str,
    pub class: RuleClass,
    pub severity: Severity,
    pub confidence: Confidence,
    /// Hyperscan/PCRE-subset expression (ASCII; byte-oriented).
    pub expr: &'static str,
    /// Match ignoring ASCII case.
    pub caseless: bool,
    /// `^`/`$` match at line boundaries.
    pub multiline: bool,
    pub detector: Detector,
    /// Hosts (domain suffixes) this credential legitimately goes to and comes
    /// from: a match in an exchange with such a host is not a finding.
    pub home_hosts: &'static [&'static str],
    /// Checks the matched bytes (rule start to match end) before a hit is
    /// reported: context and entropy for matches a regex cannot judge.
    /// Rules with a check report every match, not only the first.
    pub confirm: Option<Confirm>,
    /// An injection phrase that articles quote to explain it: a match in
    /// such a quotation is not a finding (`scan::passes::quoted`).
    pub quotable: bool,
}

/// A check of a match's bytes; `true` keeps the hit.
pub type Confirm = fn(&[u8]) -> bool;

/// Compact constructor used by the tables.
pub(crate) const fn rule(
    id: &'static str,
    name: &'static str,
    class: RuleClass,
    severity: Severity,
    confidence: Confidence,
    expr: &'static str,
) -> Rule {
    Rule {
        id,
        name,
        class,
        severity,
        confidence,
        expr,
        caseless: true,
        multiline: false,
        detector: Detector::Hyperscan,
        home_hosts: &[],
        confirm: None,
        quotable: false,
    }
}

impl Rule {
    /// Matches case-sensitively (formats that define case).
    pub(crate) const fn case_sensitive(mut self) -> Self {
        self.caseless = false;
        self
    }
    /// See [`Rule::quotable`].
    pub(crate) const fn quotable(mut self) -> Self {
        self.quotable = true;
        self
    }
    pub(crate) const fn multiline(mut self) -> Self {
        self.multiline = true;
        self
    }
    pub(crate) const fn numeric(mut self, kind: NumericKind) -> Self {
        self.detector = Detector::Numeric(kind);
        self
    }
    pub(crate) const fn internal(mut self) -> Self {
        self.detector = Detector::Internal;
        self
    }
    pub(crate) const fn home(mut self, hosts: &'static [&'static str]) -> Self {
        self.home_hosts = hosts;
        self
    }
    pub(crate) const fn confirm(mut self, check: Confirm) -> Self {
        self.confirm = Some(check);
        self
    }
}

/// Scanner-raised rules (no expression).
pub static SCANNER_RULES: &[Rule] = &[
    rule(
        "scanner.decompression_bomb",
        "Decompression bomb (size or ratio limit)",
        RuleClass::Scanner,
        Severity::High,
        Confidence::High,
        "",
    )
    .internal(),
    rule(
        "scanner.scan_error",
        "Internal scan error (fails closed)",
        RuleClass::Scanner,
        Severity::High,
        Confidence::High,
        "",
    )
    .internal(),
    rule(
        "scanner.unscannable",
        "Traffic that cannot be scanned (non-WebSocket upgrade, refused binary message)",
        RuleClass::Scanner,
        Severity::High,
        Confidence::High,
        "",
    )
    .internal(),
    rule(
        "scanner.domain_fronting",
        "Host differs from the name the upstream certificate was verified for",
        RuleClass::Scanner,
        Severity::High,
        Confidence::High,
        "",
    )
    .internal(),
    rule(
        "scanner.undecodable_body",
        "Body could not be decoded for scanning (fails closed)",
        RuleClass::Scanner,
        Severity::High,
        Confidence::High,
        "",
    )
    .internal(),
];

/// Destination-policy rules (`crate::pipeline::destination`; no expression).
pub static DESTINATION_RULES: &[Rule] = &[
    rule(
        "dest.ssrf",
        "Request to a cloud metadata or link-local address (SSRF)",
        RuleClass::Destination,
        Severity::Critical,
        Confidence::High,
        "",
    )
    .internal(),
    rule(
        "dest.blocklist",
        "Request to a blocklisted host (paste and file-drop sites)",
        RuleClass::Destination,
        Severity::High,
        Confidence::High,
        "",
    )
    .internal(),
    rule(
        "dest.dns_exfil",
        "Hostname carrying encoded or random data (DNS exfiltration)",
        RuleClass::Destination,
        Severity::High,
        Confidence::Medium,
        "",
    )
    .internal(),
    rule(
        "dest.rate_limit",
        "Requests over the per-host or per-client rate limit",
        RuleClass::Destination,
        Severity::Medium,
        Confidence::High,
        "",
    )
    .internal(),
    rule(
        "dest.url_entropy",
        "High-entropy URL path segment or query value",
        RuleClass::Destination,
        Severity::Medium,
        Confidence::Medium,
        "",
    )
    .internal(),
];

/// Every built-in rule (DLP, injection, scanner), in id order of the tables.
pub fn all_rules() -> impl Iterator<Item = &'static Rule> {
    dlp::DLP_RULES
        .iter()
        .chain(injection::INJECTION_RULES.iter())
        .chain(SCANNER_RULES.iter())
        .chain(DESTINATION_RULES.iter())
}

/// Looks a built-in rule up by id.
pub fn by_id(id: &str) -> Option<&'static Rule> {
    all_rules().find(|r| r.id == id)
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl Confidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::Low => "low",
            Confidence::Medium => "medium",
            Confidence::High => "high",
        }
    }
}

impl RuleClass {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleClass::Dlp => "dlp",
            RuleClass::Injection => "injection",
            RuleClass::Scanner => "scanner",
            RuleClass::Destination => "destination",
            RuleClass::Mcp => "mcp",
        }
    }
}
