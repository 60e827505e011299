//! [`ScanPipeline`]: the scanning implementation of `crate::pipeline::Pipeline`.
//! One per process (engine, policy, metrics shared); one exchange per HTTP
//! request. The URL and headers are scanned in `request_filter`, bodies as
//! they stream (content-decoded, SSE-reassembled), and every finding goes
//! through the verdict policy, the findings log and the metrics.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::{
    cli::Mode,
    findings::{Direction, ExchangeInfo, Finding, ScanMetrics, log_finding},
    pipeline::{Block, ConnMeta, Decision, Exchange, Outcome, Pipeline},
    verdict::{self, Action, Policy},
};

use super::{
    Error,
    decode::{ContentCoding, ContentDecoder, DecodeLimits, DecodeStatus, percent_decode_iter},
    engine::{Engine, EngineSpec, RuleMeta},
    known_secrets::{self, KnownSecret, KnownSecretsConfig},
    patterns,
    sse::SseParser,
    text::{Hit, RunLimits, TextScanner, scan_dlp_block},
};

/// Configuration of the scan pipeline.
#[derive(Clone, Debug)]
pub struct ScanConfig {
    /// Default enforcement mode.
    pub mode: Mode,
    /// Mode overrides by cgroup v2 id.
    pub cgroup_modes: HashMap<u64, Mode>,
    /// Known secrets to detect (values never logged).
    pub known_secrets: KnownSecretsConfig,
    /// Decompression-bomb limits.
    pub decode_limits: DecodeLimits,
    /// Encoded-secret decoding limits.
    pub run_limits: RunLimits,
    /// Largest SSE event reassembled (bytes of `data:`).
    pub max_sse_event: usize,
    /// DLP on responses too (not only requests).
    pub response_dlp: bool,
    /// Prompt-injection scanning of responses.
    pub response_injection: bool,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            mode: Mode::Balanced,
            cgroup_modes: HashMap::new(),
            known_secrets: KnownSecretsConfig {
                min_len: 16,
                ..Default::default()
            },
            decode_limits: DecodeLimits::default(),
            run_limits: RunLimits::default(),
            max_sse_event: 256 * 1024,
            response_dlp: true,
            response_injection: true,
        }
    }
}

struct Shared {
    engine: Arc<Engine>,
    policy: Policy,
    cfg: ScanConfig,
    metrics: Arc<ScanMetrics>,
}

/// The scanning pipeline. Cheap to clone; shared by all listeners.
#[derive(Clone)]
pub struct ScanPipeline {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ScanPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScanPipeline")
            .field("engine", &self.shared.engine)
            .field("mode", &self.shared.policy.default_mode)
            .finish_non_exhaustive()
    }
}

impl ScanPipeline {
    /// Compiles the built-in rules plus the configured known secrets.
    pub fn new(cfg: ScanConfig) -> Result<Self, Error> {
        let secrets = known_secrets::load(&cfg.known_secrets)?;
        Self::with_known_secrets(cfg, &secrets)
    }

    /// Like [`ScanPipeline::new`] with already loaded secrets.
    pub fn with_known_secrets(cfg: ScanConfig, secrets: &[KnownSecret]) -> Result<Self, Error> {
        let mut spec = EngineSpec::builtin();
        spec.literals = known_secrets::literals(secrets);
        let engine = Arc::new(Engine::build(spec)?);
        Ok(ScanPipeline {
            shared: Arc::new(Shared {
                engine,
                policy: Policy {
                    default_mode: cfg.mode,
                    cgroup_modes: cfg.cgroup_modes.clone(),
                },
                cfg,
                metrics: Arc::new(ScanMetrics::default()),
            }),
        })
    }

    /// Counters for `/metrics`.
    pub fn metrics(&self) -> Arc<ScanMetrics> {
        Arc::clone(&self.shared.metrics)
    }

    /// The compiled engine (stream sizes, rule counts).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.shared.engine
    }
}

impl Pipeline for ScanPipeline {
    fn exchange(&self, conn: &Arc<ConnMeta>) -> Box<dyn Exchange> {
        let cgroup = conn.attribution.as_ref().map(|a| a.cgroup_id);
        self.shared
            .metrics
            .exchanges
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::new(ScanExchange {
            shared: Arc::clone(&self.shared),
            conn: Arc::clone(conn),
            mode: self.shared.policy.mode_for(cgroup),
            info: ExchangeInfo::default(),
            request: Body::Idle,
            response: Body::Idle,
            blocked: None,
            reported: HashSet::new(),
            hits: Vec::new(),
        })
    }
}

/// Scanning state of one body.
enum Body {
    Idle,
    Active(Box<ActiveBody>),
    /// Not scanned further (bomb, undecodable, skipped content type).
    Done,
}

struct ActiveBody {
    decoder: ContentDecoder,
    text: TextScanner,
    sse: Option<(SseParser, TextScanner)>,
}

struct ScanExchange {
    shared: Arc<Shared>,
    conn: Arc<ConnMeta>,
    mode: Mode,
    info: ExchangeInfo,
    request: Body,
    response: Body,
    blocked: Option<Block>,
    /// (direction, rule id) already reported in this exchange.
    reported: HashSet<(Direction, String)>,
    hits: Vec<Hit>,
}

fn header_str(h: &http::HeaderMap, name: http::header::HeaderName) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.to_owned())
}

/// Header values where a JWT is the expected credential, not a leak.
fn is_auth_header(name: &str) -> bool {
    matches!(name, "authorization" | "proxy-authorization" | "cookie")
}

/// Response bodies with these media types are not scanned (binary media).
fn skip_response_media(content_type: &str) -> bool {
    let ct = content_type.trim().to_ascii_lowercase();
    ["image/", "video/", "audio/", "font/"]
        .iter()
        .any(|p| ct.starts_with(p))
}

impl ScanExchange {
    fn scanner_meta(id: &str) -> Option<RuleMeta> {
        patterns::by_id(id).map(RuleMeta::builtin)
    }

    fn scanner_hit(&mut self, id: &str, location: &'static str) {
        if let Some(meta) = Self::scanner_meta(id) {
            self.hits.push(Hit {
                meta,
                excerpt: String::new(),
                location: location.into(),
            });
        }
    }

    /// Applies policy to the pending hits; returns the decision.
    fn decide(&mut self, direction: Direction) -> Decision {
        let mut block_ids = Vec::new();
        let hits = std::mem::take(&mut self.hits);
        for hit in hits {
            if hit.meta.is_home_host(&self.info.host) {
                continue;
            }
            if !self.reported.insert((direction, hit.meta.id.to_string())) {
                continue;
            }
            let action = verdict::action_for(self.mode, hit.meta.severity, hit.meta.confidence);
            let finding = Finding {
                rule_id: hit.meta.id.to_string(),
                rule_name: hit.meta.name.to_string(),
                class: hit.meta.class,
                severity: hit.meta.severity,
                confidence: hit.meta.confidence,
                direction,
                location: hit.location.to_string(),
                excerpt: hit.excerpt,
                action,
            };
            log_finding(&finding, self.mode, &self.info, &self.conn);
            self.shared.metrics.count_finding(&finding);
            if action == Action::Block {
                block_ids.push(finding.rule_id);
            }
        }
        if let Some(b) = &self.blocked {
            return Decision::Block(b.clone());
        }
        if block_ids.is_empty() {
            return Decision::Continue;
        }
        let m = &self.shared.metrics;
        match direction {
            Direction::Request => m
                .requests_blocked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            Direction::Response => m
                .responses_cut
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        };
        let b = verdict::block(direction.as_str(), &block_ids);
        self.blocked = Some(b.clone());
        Decision::Block(b)
    }

    fn scan_error(&mut self, err: &Error) {
        tracing::error!(target: "pipelock::scan", error = %err, conn_id = self.conn.id, "scan error");
        self.shared
            .metrics
            .scan_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.scanner_hit("scanner.scan_error", "scanner");
    }

    fn block_scan(&mut self, data: &[u8], location: &str) {
        let shared = Arc::clone(&self.shared);
        if let Err(e) = scan_dlp_block(
            &shared.engine,
            data,
            location,
            shared.cfg.run_limits,
            0,
            &mut self.hits,
        ) {
            self.scan_error(&e);
        }
    }

    /// Sets up body scanning from the headers of a request or response.
    fn open_body(&mut self, headers: &http::HeaderMap, response: bool, sse: bool) -> Body {
        let encoding = header_str(headers, http::header::CONTENT_ENCODING).unwrap_or_default();
        let codings = match ContentCoding::parse_list(&encoding) {
            Ok(c) => c,
            Err(_) => {
                self.scanner_hit(
                    "scanner.undecodable_body",
                    if response {
                        "response_body"
                    } else {
                        "request_body"
                    },
                );
                Vec::new()
            }
        };
        let cfg = &self.shared.cfg;
        let opened = ContentDecoder::new(&codings, cfg.decode_limits).and_then(|decoder| {
            let (dlp, inj, loc) = if response {
                (cfg.response_dlp, cfg.response_injection, "response_body")
            } else {
                (true, false, "request_body")
            };
            let text = TextScanner::new(&self.shared.engine, dlp, inj, loc, cfg.run_limits)?;
            let sse = if sse {
                Some((
                    SseParser::new(cfg.max_sse_event),
                    TextScanner::new(&self.shared.engine, dlp, inj, "sse_content", cfg.run_limits)?,
                ))
            } else {
                None
            };
            Ok(ActiveBody { decoder, text, sse })
        });
        match opened {
            Ok(b) => Body::Active(Box::new(b)),
            Err(e) => {
                self.scan_error(&e);
                Body::Done
            }
        }
    }

    /// Feeds one body chunk through decoding and the text scanners.
    fn body_chunk(&mut self, response: bool, chunk: &[u8], eos: bool) {
        let mut body = std::mem::replace(
            if response {
                &mut self.response
            } else {
                &mut self.request
            },
            Body::Done,
        );
        let mut error: Option<Error> = None;
        let mut status = DecodeStatus::Ok;
        if let Body::Active(b) = &mut body {
            let ActiveBody { decoder, text, sse } = &mut **b;
            let hits = &mut self.hits;
            status = decoder.feed(chunk, eos, &mut |data| {
                if error.is_some() {
                    return;
                }
                if let Err(e) = text.feed(data, hits) {
                    error = Some(e);
                    return;
                }
                if let Some((parser, content)) = sse.as_mut() {
                    parser.feed(data, &mut |t| {
                        if error.is_none()
                            && let Err(e) = content.feed(t, hits)
                        {
                            error = Some(e);
                        }
                    });
                }
            });
            let scanned = decoder.output_bytes();
            let counter = if response {
                &self.shared.metrics.response_bytes_scanned
            } else {
                &self.shared.metrics.request_bytes_scanned
            };
            counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let _ = scanned;
            if (eos || status != DecodeStatus::Ok) && error.is_none() {
                let r = text.finish(hits).and_then(|()| {
                    if let Some((parser, content)) = sse.as_mut() {
                        let mut err = None;
                        parser.finish(&mut |t| {
                            if err.is_none()
                                && let Err(e) = content.feed(t, hits)
                            {
                                err = Some(e);
                            }
                        });
                        if let Some(e) = err {
                            return Err(e);
                        }
                        content.finish(hits)?;
                    }
                    Ok(())
                });
                if let Err(e) = r {
                    error = Some(e);
                }
            }
        }
        let loc = if response {
            "response_body"
        } else {
            "request_body"
        };
        match status {
            DecodeStatus::Ok if !eos && error.is_none() => {
                *(if response {
                    &mut self.response
                } else {
                    &mut self.request
                }) = body;
            }
            DecodeStatus::Ok => {}
            DecodeStatus::Bomb => {
                self.shared
                    .metrics
                    .decompression_bombs
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.scanner_hit("scanner.decompression_bomb", loc);
            }
            DecodeStatus::Failed => self.scanner_hit("scanner.undecodable_body", loc),
        }
        if let Some(e) = error {
            self.scan_error(&e);
        }
    }
}

impl Exchange for ScanExchange {
    fn request_filter(&mut self, req: &http::request::Parts) -> Decision {
        let host = req
            .uri
            .host()
            .map(str::to_owned)
            .or_else(|| header_str(&req.headers, http::header::HOST))
            .unwrap_or_default();
        let host = host
            .rsplit_once(':')
            .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
            .map_or(host.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        self.info = ExchangeInfo {
            host,
            method: req.method.as_str().to_owned(),
            path: req.uri.path().to_owned(),
        };
        // URL: raw and percent-decoded.
        let target = req
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_default();
        self.block_scan(target.as_bytes(), "url");
        let decoded = percent_decode_iter(target.as_bytes(), 3);
        if decoded != target.as_bytes() {
            self.block_scan(&decoded, "url+percent");
        }
        // Headers, one `name: value` line each.
        for (name, value) in &req.headers {
            let mut line = Vec::with_capacity(name.as_str().len() + 2 + value.len());
            line.extend_from_slice(name.as_str().as_bytes());
            line.extend_from_slice(b": ");
            line.extend_from_slice(value.as_bytes());
            let before = self.hits.len();
            self.block_scan(&line, &format!("header:{}", name.as_str()));
            if is_auth_header(name.as_str()) {
                let tail = self.hits.split_off(before);
                self.hits
                    .extend(tail.into_iter().filter(|h| h.meta.id != "dlp.jwt"));
            }
        }
        self.request = self.open_body(&req.headers, false, false);
        self.decide(Direction::Request)
    }

    fn request_body_filter(&mut self, chunk: &[u8], end_of_stream: bool) -> Decision {
        if let Some(b) = &self.blocked {
            return Decision::Block(b.clone());
        }
        self.body_chunk(false, chunk, end_of_stream);
        self.decide(Direction::Request)
    }

    fn response_filter(&mut self, resp: &http::response::Parts) -> Decision {
        if let Some(b) = &self.blocked {
            return Decision::Block(b.clone());
        }
        let ct = header_str(&resp.headers, http::header::CONTENT_TYPE).unwrap_or_default();
        self.response = if skip_response_media(&ct) {
            Body::Done
        } else {
            let sse = ct
                .trim()
                .to_ascii_lowercase()
                .starts_with("text/event-stream");
            self.open_body(&resp.headers, true, sse)
        };
        self.decide(Direction::Response)
    }

    fn response_body_filter(&mut self, chunk: &[u8], end_of_stream: bool) -> Decision {
        if let Some(b) = &self.blocked {
            return Decision::Block(b.clone());
        }
        self.body_chunk(true, chunk, end_of_stream);
        self.decide(Direction::Response)
    }

    fn logging(&mut self, outcome: &Outcome) {
        tracing::debug!(
            target: "pipelock::scan",
            conn_id = self.conn.id,
            host = %self.info.host,
            status = outcome.status,
            request_bytes = outcome.request_bytes,
            response_bytes = outcome.response_bytes,
            blocked = outcome.blocked.is_some(),
            findings = self.reported.len(),
            "exchange scanned"
        );
        // Close streams now rather than when the exchange is dropped.
        self.request = Body::Done;
        self.response = Body::Done;
    }
}
