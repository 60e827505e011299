//! Hyperscan databases and their runtime: one DLP set (block + stream, plus
//! per-rule span finders used only to recover the span of a rare hit), one
//! injection set (block + stream), a per-thread scratch pool and owned stream
//! handles. Detection runs without start-of-match tracking for speed; a hit's
//! start is found afterwards by running the rule's reverse DFA back from its
//! end, which reads only the match itself. What is compiled: the rule
//! catalogue (`patterns`) and the configured known secrets (`known_secrets`).
pub mod known_secrets;
pub mod patterns;

use std::{
    borrow::Cow,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use regex_automata::{
    Anchored, Input, MatchKind,
    dfa::{Automaton, StartKind, dense},
    nfa::thompson,
    util::syntax,
};

use hyperscan::{
    BlockDatabase, Builder, Matching, Pattern, PatternFlags, Patterns, Scratch, ScratchRef,
    StreamingDatabase,
};

use crate::scan::Error;

use self::patterns::{Confidence, Detector, Rule, RuleClass, Severity};

/// What a decoding trigger (a DLP id that is not a rule) asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A delimited or escaped byte sequence (`passes::delimited`).
    Delimited,
    /// A credential column name in what may be a table's header
    /// (`passes::table`).
    Table,
    /// A MIME part declared base64 (`passes::wrapped`): its lines are
    /// joined and decoded.
    Wrapped,
}

/// How an excerpt of a match may be shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reveal {
    /// A few leading characters (a public prefix such as `ghp_`) may be shown.
    Prefix,
    /// Nothing of the match may be shown (known secrets).
    Nothing,
}

/// Everything the engine knows about a compiled rule (built-in or known secret).
#[derive(Clone, Debug)]
pub struct RuleMeta {
    pub id: Cow<'static, str>,
    pub name: Cow<'static, str>,
    pub class: RuleClass,
    pub severity: Severity,
    pub confidence: Confidence,
    /// Domain suffixes this credential legitimately goes to.
    pub home_hosts: Vec<String>,
    pub reveal: Reveal,
    /// A check of the matched bytes before the hit counts (see `patterns::Rule`).
    pub confirm: Option<patterns::Confirm>,
    /// An injection phrase that is no finding when quoted to explain it.
    pub quotable: bool,
}

impl RuleMeta {
    /// Metadata of a built-in rule.
    pub fn builtin(rule: &'static Rule) -> Self {
        RuleMeta {
            id: Cow::Borrowed(rule.id),
            name: Cow::Borrowed(rule.name),
            class: rule.class,
            severity: rule.severity,
            confidence: rule.confidence,
            home_hosts: rule.home_hosts.iter().map(|h| (*h).to_owned()).collect(),
            reveal: Reveal::Prefix,
            confirm: rule.confirm,
            quotable: rule.quotable,
        }
    }

    /// The placeholder of a decoding trigger (never reported as a hit).
    fn trigger() -> Self {
        RuleMeta {
            id: Cow::Borrowed("scan.delimited_sequence"),
            name: Cow::Borrowed("Delimited or escaped byte sequence (decoded, not a finding)"),
            class: RuleClass::Dlp,
            severity: Severity::Low,
            confidence: Confidence::Low,
            home_hosts: Vec::new(),
            reveal: Reveal::Nothing,
            confirm: None,
            quotable: false,
        }
    }

    /// True when `host` is a home host of the rule (its own provider).
    pub fn is_home_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.home_hosts.iter().any(|suffix| {
            host.eq_ignore_ascii_case(suffix)
                || (host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
        })
    }
}

/// An extra literal to match (a known secret in one of its encodings).
#[derive(Clone, Debug)]
pub struct ExtraLiteral {
    pub bytes: Vec<u8>,
    pub meta: RuleMeta,
}

/// The compiled engine. Immutable and shared (`Arc`) by every exchange.
pub struct Engine {
    id: u64,
    /// Indexed by Hyperscan id; shared with every hit reported.
    metas: Vec<Arc<RuleMeta>>,
    dlp_block: BlockDatabase,
    dlp_stream: StreamingDatabase,
    /// Per DLP id: how to find where a hit starts.
    spans: Vec<Span>,
    inj_block: BlockDatabase,
    inj_stream: StreamingDatabase,
    scratch: ScratchPool,
    /// DLP ids that are not rules but ask for a decoding (`Trigger`),
    /// from the first to the last, and which one each range asks for.
    triggers: Vec<(std::ops::Range<usize>, Trigger)>,
    dlp_rules: usize,
    inj_rules: usize,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.id)
            .field("dlp_rules", &self.dlp_rules)
            .field("inj_rules", &self.inj_rules)
            .finish_non_exhaustive()
    }
}

static NEXT_ENGINE_ID: AtomicU64 = AtomicU64::new(1);

/// Escapes bytes as a Hyperscan literal expression (`\xHH` per byte).
pub fn literal_expr(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 4);
    for b in bytes {
        let _ = write!(s, "\\x{b:02x}");
    }
    s
}

/// Builds a Hyperscan pattern for a rule expression with detection flags.
pub fn hs_pattern(
    expr: &str,
    caseless: bool,
    multiline: bool,
    id: usize,
    single: bool,
) -> Result<Pattern, Error> {
    let mut flags = PatternFlags::empty();
    if caseless {
        flags |= PatternFlags::CASELESS;
    }
    if multiline {
        flags |= PatternFlags::MULTILINE;
    }
    if single {
        flags |= PatternFlags::SINGLEMATCH;
    }
    let mut p = Pattern::with_flags(expr, flags).map_err(|source| Error::Hyperscan {
        op: "pattern",
        source,
    })?;
    p.id = Some(id);
    Ok(p)
}

/// Hands the heap Hyperscan's compiler freed back to the OS. The compiler
/// (C++, through glibc's malloc, not the Rust allocator) uses several MB
/// that glibc otherwise keeps mapped for the life of the process: about
/// half of an idle agent's anonymous memory.
fn release_compiler_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; no pointer changes.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Input to [`Engine::build`].
#[derive(Clone, Debug, Default)]
pub struct EngineSpec {
    /// DLP rules compiled into Hyperscan (others run in the numeric pass).
    pub dlp: Vec<&'static Rule>,
    pub injection: Vec<&'static Rule>,
    /// Known-secret literals (raw and encoded forms).
    pub literals: Vec<ExtraLiteral>,
    /// Extra (expr, meta, caseless) patterns, e.g. generated variants for the benchmark.
    pub extra_dlp: Vec<(String, RuleMeta, bool)>,
}

impl EngineSpec {
    /// The built-in rule set.
    pub fn builtin() -> Self {
        EngineSpec {
            dlp: patterns::dlp::DLP_RULES
                .iter()
                .filter(|r| r.detector == Detector::Hyperscan)
                .collect(),
            injection: patterns::injection::INJECTION_RULES.iter().collect(),
            literals: Vec::new(),
            extra_dlp: Vec::new(),
        }
    }
}

impl Engine {
    /// Compiles all databases. A rule Hyperscan rejects is an error naming it.
    pub fn build(spec: EngineSpec) -> Result<Engine, Error> {
        let mut metas = Vec::new();
        let mut dlp = Vec::new();
        let mut span = Vec::new();
        for rule in &spec.dlp {
            let id = metas.len();
            metas.push(Arc::new(RuleMeta::builtin(rule)));
            dlp.push(hs_pattern(
                rule.expr,
                rule.caseless,
                rule.multiline,
                id,
                rule.confirm.is_none(),
            )?);
            span.push(Span::new(rule.expr, rule.caseless, rule.multiline, id)?);
        }
        for (expr, meta, caseless) in &spec.extra_dlp {
            let id = metas.len();
            metas.push(Arc::new(meta.clone()));
            dlp.push(hs_pattern(expr, *caseless, false, id, true)?);
            span.push(Span::new(expr, *caseless, false, id)?);
        }
        // Decode triggers (caseless expressions) per kind.
        let mut triggers = Vec::new();
        for (kind, exprs) in [
            (Trigger::Delimited, crate::scan::passes::delimited::TRIGGERS),
            (Trigger::Table, crate::scan::passes::table::TRIGGERS),
            (Trigger::Wrapped, crate::scan::passes::wrapped::TRIGGERS),
        ] {
            let first = metas.len();
            for expr in exprs {
                let id = metas.len();
                metas.push(Arc::new(RuleMeta::trigger()));
                dlp.push(hs_pattern(expr, true, false, id, true)?);
                span.push(Span::new(expr, true, false, id)?);
            }
            triggers.push((first..metas.len(), kind));
        }
        let trigger_count: usize = triggers.iter().map(|(r, _)| r.len()).sum();
        for lit in &spec.literals {
            if lit.bytes.is_empty() {
                continue;
            }
            let id = metas.len();
            metas.push(Arc::new(lit.meta.clone()));
            let expr = literal_expr(&lit.bytes);
            dlp.push(hs_pattern(&expr, false, false, id, true)?);
            span.push(Span::new(&expr, false, false, id)?);
        }
        // Triggers are decode hints, not rules: they are not counted.
        let dlp_rules = dlp.len() - trigger_count;
        let dlp_stream_set = dlp;
        let mut inj = Vec::new();
        for rule in &spec.injection {
            let id = metas.len();
            metas.push(Arc::new(RuleMeta::builtin(rule)));
            let expr = optional_whitespace(rule.expr);
            inj.push(hs_pattern(&expr, rule.caseless, rule.multiline, id, true)?);
        }
        let inj_rules = inj.len();

        let dlp_set = Patterns(dlp_stream_set);
        let dlp_block: BlockDatabase = compile(&dlp_set, "DLP block")?;
        let dlp_stream: StreamingDatabase = compile(&dlp_set, "DLP stream")?;
        let inj_set = Patterns(inj);
        let inj_block: BlockDatabase = compile(&inj_set, "injection block")?;
        let inj_stream: StreamingDatabase = compile(&inj_set, "injection stream")?;

        let mut proto = dlp_block
            .alloc_scratch()
            .map_err(|source| Error::Hyperscan {
                op: "alloc scratch",
                source,
            })?;
        for realloc in [
            dlp_stream.realloc_scratch(&mut proto).map(|_| ()),
            inj_block.realloc_scratch(&mut proto).map(|_| ()),
            inj_stream.realloc_scratch(&mut proto).map(|_| ()),
        ] {
            realloc.map_err(|source| Error::Hyperscan {
                op: "alloc scratch",
                source,
            })?;
        }
        release_compiler_heap();
        Ok(Engine {
            id: NEXT_ENGINE_ID.fetch_add(1, Ordering::Relaxed),
            metas,
            dlp_block,
            dlp_stream,
            spans: span,
            triggers,
            inj_block,
            inj_stream,
            scratch: ScratchPool {
                proto: Mutex::new(proto),
                pool: Mutex::new(Vec::new()),
            },
            dlp_rules,
            inj_rules,
        })
    }

    /// Metadata of a Hyperscan id.
    pub fn meta(&self, id: u32) -> Option<&Arc<RuleMeta>> {
        self.metas.get(id as usize)
    }

    /// The decoding a DLP id asks for, when it is a trigger rather than a rule.
    pub fn trigger(&self, id: u32) -> Option<Trigger> {
        let id = id as usize;
        self.triggers
            .iter()
            .find(|(r, _)| r.contains(&id))
            .map(|&(_, t)| t)
    }

    /// Number of DLP and injection rules compiled (decode triggers not counted).
    pub fn rule_counts(&self) -> (usize, usize) {
        (self.dlp_rules, self.inj_rules)
    }

    /// Bytes of state per open stream (DLP, injection).
    pub fn stream_sizes(&self) -> (usize, usize) {
        (
            self.dlp_stream.stream_size().unwrap_or(0),
            self.inj_stream.stream_size().unwrap_or(0),
        )
    }

    /// Size in bytes of the compiled databases (DLP stream, injection stream).
    pub fn database_sizes(&self) -> (usize, usize) {
        (
            self.dlp_stream.size().unwrap_or(0),
            self.inj_stream.size().unwrap_or(0),
        )
    }

    /// Heap bytes of the span finders (the reverse DFAs).
    pub fn span_finders_size(&self) -> usize {
        self.spans
            .iter()
            .map(|s| match s {
                Span::Reverse(dfa) => dfa.memory_usage(),
                Span::Fixed(_) => 0,
            })
            .sum()
    }

    /// Runs `f` with a scratch from the pool (one per concurrently scanning thread).
    fn with_scratch<R>(&self, f: impl FnOnce(&ScratchRef) -> R) -> Result<R, Error> {
        let scratch = self.scratch.take()?;
        let result = f(&scratch);
        self.scratch.give(scratch);
        Ok(result)
    }

    /// Block-mode DLP scan; `on(id, end)` for each hit.
    pub fn scan_dlp_block(&self, data: &[u8], on: &mut dyn FnMut(u32, u64)) -> Result<(), Error> {
        self.scan_block(&self.dlp_block, data, on)
    }

    /// Block-mode injection scan of normalised text.
    pub fn scan_inj_block(&self, data: &[u8], on: &mut dyn FnMut(u32, u64)) -> Result<(), Error> {
        self.scan_block(&self.inj_block, data, on)
    }

    fn scan_block(
        &self,
        db: &BlockDatabase,
        data: &[u8],
        on: &mut dyn FnMut(u32, u64),
    ) -> Result<(), Error> {
        self.with_scratch(|scratch| {
            db.scan(
                data,
                scratch,
                |id: u32, _from: u64, to: u64, _flags: u32| {
                    on(id, to);
                    Matching::Continue
                },
            )
        })?
        .map_err(|source| Error::Hyperscan {
            op: "block scan",
            source,
        })
    }

    /// Finds the leftmost start of a match of `id` that ends at `window.len()`
    /// (used only for the few hits that need an excerpt). Fixed-width rules
    /// need no search; the others run their reverse DFA back from the end,
    /// which stops where no longer match can start.
    pub fn span_start(&self, id: u32, window: &[u8]) -> Option<usize> {
        match self.spans.get(id as usize)? {
            Span::Fixed(width) => window.len().checked_sub(*width),
            Span::Reverse(dfa) => {
                let input = Input::new(window).anchored(Anchored::Yes);
                dfa.try_search_rev(&input).ok()?.map(|m| m.offset())
            }
        }
    }

    /// Opens a DLP stream.
    pub fn open_dlp_stream(self: &Arc<Self>) -> Result<EngineStream, Error> {
        self.open(StreamKind::Dlp)
    }

    /// Opens an injection stream.
    pub fn open_inj_stream(self: &Arc<Self>) -> Result<EngineStream, Error> {
        self.open(StreamKind::Injection)
    }

    fn open(self: &Arc<Self>, kind: StreamKind) -> Result<EngineStream, Error> {
        let db = match kind {
            StreamKind::Dlp => &self.dlp_stream,
            StreamKind::Injection => &self.inj_stream,
        };
        let stream = db.open_stream().map_err(|source| Error::Hyperscan {
            op: "open stream",
            source,
        })?;
        Ok(EngineStream {
            engine: Arc::clone(self),
            stream: Some(stream),
        })
    }

    /// Process-unique id of this engine.
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Injection rules match with optional whitespace between words, so words
/// glued together by a removed zero-width character (`ignore\u{200b}all`)
/// still match, as Pipelock's whitespace-variant pass. The normaliser turns
/// every whitespace run into exactly one byte (a space, or `\n` when the run
/// held a line break), so `\s+` and `\s*` both become `[ \n]?`: the same
/// matches as `\s*` on that text, and bounded, which keeps the combined
/// database several times faster than with unbounded repeats.
pub fn optional_whitespace(expr: &str) -> String {
    expr.replace(r"\s+", r"[ \n]?").replace(r"\s*", r"[ \n]?")
}

/// How the start of a DLP hit is found from its end.
enum Span {
    /// Every match has this length.
    Fixed(usize),
    /// The rule reversed, as a DFA anchored at the match end that keeps
    /// going while a longer match may start (`MatchKind::All`): its last
    /// match is the leftmost start.
    Reverse(Box<dense::DFA<Vec<u32>>>),
}

impl Span {
    fn new(expr: &str, caseless: bool, multiline: bool, id: usize) -> Result<Span, Error> {
        let p = hs_pattern(expr, caseless, multiline, id, false)?;
        let info = p.info().map_err(|source| Error::Hyperscan {
            op: "expression info",
            source,
        })?;
        if info.min_width() == info.max_width() && info.min_width() > 0 {
            return Ok(Span::Fixed(info.min_width()));
        }
        // Bytes, not UTF-8, and ASCII classes, as Hyperscan matches them.
        let syntax = syntax::Config::new()
            .unicode(false)
            .utf8(false)
            .case_insensitive(caseless)
            .multi_line(multiline);
        let dfa = dense::Builder::new()
            .syntax(syntax)
            .thompson(thompson::Config::new().reverse(true).utf8(false))
            .configure(
                dense::Config::new()
                    .start_kind(StartKind::Anchored)
                    .match_kind(MatchKind::All),
            )
            .build(expr)
            .map_err(|source| Error::SpanDfa {
                expr: expr.to_owned(),
                source: Box::new(source),
            })?;
        Ok(Span::Reverse(Box::new(dfa)))
    }
}

fn compile<T: hyperscan::Mode>(
    set: &Patterns,
    what: &'static str,
) -> Result<hyperscan::Database<T>, Error> {
    set.build().map_err(|source| Error::Compile {
        what,
        detail: describe_compile_error(set, &source),
        source,
    })
}

/// Names the pattern a compile error is about, by recompiling each alone.
fn describe_compile_error(set: &Patterns, err: &hyperscan::Error) -> String {
    for p in set.iter() {
        let alone: Result<BlockDatabase, _> = p.build();
        if let Err(e) = alone {
            return format!("pattern {:?} (id {:?}): {e}", p.expression, p.id);
        }
    }
    err.to_string()
}

#[derive(Clone, Copy, Debug)]
enum StreamKind {
    Dlp,
    Injection,
}

struct ScratchPool {
    /// Template cloned for each new thread that scans concurrently.
    proto: Mutex<Scratch>,
    pool: Mutex<Vec<Scratch>>,
}

impl ScratchPool {
    fn take(&self) -> Result<Scratch, Error> {
        if let Some(s) = self.pool.lock().ok().and_then(|mut p| p.pop()) {
            return Ok(s);
        }
        let proto = self.proto.lock().map_err(|_| Error::ScratchPoisoned)?;
        Ok(proto.clone())
    }

    fn give(&self, s: Scratch) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(s);
        }
    }
}

/// An open Hyperscan stream, owned by one exchange. Closed on drop.
pub struct EngineStream {
    engine: Arc<Engine>,
    stream: Option<hyperscan::Stream>,
}

impl std::fmt::Debug for EngineStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineStream")
            .field("open", &self.stream.is_some())
            .finish()
    }
}

impl EngineStream {
    /// Scans the next bytes of the stream; `on(id, end)` gets absolute end offsets.
    pub fn scan(&mut self, data: &[u8], on: &mut dyn FnMut(u32, u64)) -> Result<(), Error> {
        let Some(stream) = self.stream.as_ref() else {
            return Ok(());
        };
        self.engine
            .with_scratch(|scratch| {
                stream.scan(
                    data,
                    scratch,
                    |id: u32, _from: u64, to: u64, _flags: u32| {
                        on(id, to);
                        Matching::Continue
                    },
                )
            })?
            .map_err(|source| Error::Hyperscan {
                op: "stream scan",
                source,
            })
    }

    /// Ends the stream, reporting matches that end at the end of data (`$`, `\b`).
    pub fn close(&mut self, on: &mut dyn FnMut(u32, u64)) -> Result<(), Error> {
        let Some(stream) = self.stream.take() else {
            return Ok(());
        };
        self.engine
            .with_scratch(|scratch| {
                stream.close(scratch, |id: u32, _from: u64, to: u64, _flags: u32| {
                    on(id, to);
                    Matching::Continue
                })
            })?
            .map_err(|source| Error::Hyperscan {
                op: "close stream",
                source,
            })
    }

    /// The engine this stream belongs to.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }
}

impl Drop for EngineStream {
    fn drop(&mut self) {
        // hyperscan::Stream does not free itself: close it (no callback).
        if let Some(stream) = self.stream.take() {
            let _ = self
                .engine
                .with_scratch(|scratch| stream.close(scratch, ()));
        }
    }
}
