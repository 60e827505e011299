//! The agent's own HTTP endpoints, as Pipelock serves them: `GET /health`
//! (JSON: Pipelock's fields plus whether eBPF is attached and to which
//! cgroup, the config generation and counts), `GET /metrics` (Prometheus
//! text 0.0.4, or OpenMetrics when the scraper asks for it) and the kill
//! switch API (`POST /api/v1/killswitch`, `GET /api/v1/killswitch/status`,
//! Bearer `kill_switch.api_token`). [`Admin::handle`] answers one request
//! (the forward proxy calls it for origin-form requests on its listener);
//! [`serve`] runs a listener of its own for `kill_switch.api_listen` or
//! `metrics_listen`. `GET /stats` is Pipelock's JSON summary (requests,
//! block rate, tunnels, top blocked hosts and rules). When `metrics_listen`
//! is set, `/metrics` and `/stats` move there, as in Pipelock.
//!
//! While the kill switch is on, `/health`, `/metrics` and the API keep
//! answering when `health_exempt`, `metrics_exempt` and `api_exempt` say so
//! (they do by default); otherwise they get the kill switch's 503. On the
//! `api_listen` listener the API always answers (it is how the switch is
//! turned off); when `api_listen` is set the API is served there only.
pub mod healthcheck;
pub mod kill_switch;
pub mod status;

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::{
    config::Config, proxy::http::DownBody, scan::engine::patterns, telemetry::metrics::Metrics,
};
pub use kill_switch::KillSwitch;

/// Largest kill switch API request body.
const MAX_API_BODY: usize = 1024;
/// Entries of each `/stats` top list.
const STATS_TOP: usize = 10;
/// Toggles allowed per minute (as Pipelock).
const API_RATE_PER_MINUTE: u32 = 10;

/// What `/health` reports from the config in force.
#[derive(Debug, Clone)]
struct Status {
    mode: &'static str,
    dlp_patterns: usize,
    response_scan_enabled: bool,
    rate_limit_enabled: bool,
    forward_proxy_enabled: bool,
    websocket_proxy_enabled: bool,
    request_body_scan_enabled: bool,
    tls_interception_enabled: bool,
    api_token: Option<String>,
    api_listen: bool,
    metrics_listen: bool,
}

impl Status {
    fn of(cfg: &Config) -> Self {
        let builtin_dlp = patterns::all_rules()
            .filter(|r| r.class == patterns::RuleClass::Dlp)
            .count();
        Status {
            mode: cfg.effective_mode().as_str(),
            dlp_patterns: builtin_dlp + cfg.dlp.patterns.len(),
            response_scan_enabled: cfg.response_scanning.enabled,
            rate_limit_enabled: cfg.interceptor.rate_limit.enabled(),
            forward_proxy_enabled: cfg.forward_proxy.enabled,
            // Redirected WebSockets are always relayed message by message and scanned.
            websocket_proxy_enabled: true,
            request_body_scan_enabled: cfg.request_body_scanning.enabled,
            // Redirected TLS is always intercepted.
            tls_interception_enabled: true,
            api_token: cfg.kill_switch.api_token.clone().filter(|t| !t.is_empty()),
            api_listen: cfg
                .kill_switch
                .api_listen
                .as_deref()
                .is_some_and(|a| !a.is_empty()),
            metrics_listen: cfg.metrics_listen.as_deref().is_some_and(|a| !a.is_empty()),
        }
    }
}

/// Which listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The main (forward proxy) listener.
    Main,
    /// `kill_switch.api_listen`.
    ApiListener,
    /// `metrics_listen`: `/metrics`, `/stats` and `/health` only.
    MetricsListener,
}

/// Everything the endpoints report and control.
#[derive(Debug)]
pub struct Admin {
    started: Instant,
    status: ArcSwap<Status>,
    generation: AtomicU64,
    /// The cgroup the kernel redirect is attached to (`None`: not attached).
    ebpf: ArcSwap<Option<String>>,
    /// Where the mode in force comes from (`config`, `flag --mode`, a node label).
    mode_source: ArcSwap<String>,
    /// What the kernel redirect covers, for `status`.
    coverage: ArcSwap<Option<status::Coverage>>,
    metrics: Arc<Metrics>,
    kill_switch: Arc<KillSwitch>,
    /// Start of the current rate-limit window and toggles in it.
    api_window: Mutex<(Instant, u32)>,
}

impl Admin {
    /// The endpoints for the config `cfg` (generation 1), reporting from
    /// `metrics` and driving `kill_switch`.
    pub fn new(cfg: &Config, metrics: Arc<Metrics>, kill_switch: Arc<KillSwitch>) -> Self {
        Admin {
            started: Instant::now(),
            status: ArcSwap::from_pointee(Status::of(cfg)),
            generation: AtomicU64::new(1),
            ebpf: ArcSwap::from_pointee(None),
            mode_source: ArcSwap::from_pointee("config".to_owned()),
            coverage: ArcSwap::from_pointee(None),
            metrics,
            kill_switch,
            api_window: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Records that the kernel redirect is attached to `cgroup` (or detached).
    pub fn set_ebpf(&self, cgroup: Option<String>) {
        self.ebpf.store(Arc::new(cgroup));
    }

    /// Records where the mode in force comes from.
    pub fn set_mode_source(&self, source: String) {
        self.mode_source.store(Arc::new(source));
    }

    /// Records what the kernel redirect covers.
    pub fn set_coverage(&self, coverage: status::Coverage) {
        self.coverage.store(Arc::new(Some(coverage)));
    }

    /// Records a reload attempt; on success `cfg` is the config now in
    /// force (new generation, and the kill switch re-reads its section).
    pub fn reloaded(&self, ok: bool, cfg: &Config) {
        self.metrics.config_reload(ok);
        if ok {
            self.generation.fetch_add(1, Ordering::Relaxed);
            self.status.store(Arc::new(Status::of(cfg)));
            self.kill_switch.configure(&cfg.kill_switch);
        }
    }

    /// The config generation: 1 at start, one more per applied reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The kill switch.
    pub fn kill_switch(&self) -> &Arc<KillSwitch> {
        &self.kill_switch
    }

    /// Answers one request on the main listener: `/health`, `/metrics`,
    /// the kill switch API (unless `api_listen` is set), anything else 404.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<DownBody> {
        self.respond(req, Place::Main).await
    }

    async fn respond(&self, req: Request<Incoming>, place: Place) -> Response<DownBody> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        let status = self.status.load_full();
        let ks_settings = self.kill_switch.settings();
        let active = self.kill_switch.is_active();
        let api = path == "/api/v1/killswitch" || path == "/api/v1/killswitch/status";
        let (exempt, endpoint) = match path {
            "/health" => (ks_settings.health_exempt, "/health"),
            "/metrics" | "/stats" => (ks_settings.metrics_exempt, "/metrics"),
            _ if api => (
                place == Place::ApiListener || ks_settings.api_exempt,
                "/api",
            ),
            _ => (true, ""),
        };
        if active && !exempt {
            self.metrics.kill_switch_denial("admin", endpoint);
            let b = self.kill_switch.block();
            return json_response(b.status, b.json_body());
        }
        let moved = matches!(path, "/metrics" | "/stats");
        match place {
            Place::Main if moved && status.metrics_listen => return not_found(),
            Place::MetricsListener if !moved && path != "/health" => return not_found(),
            _ => {}
        }
        match path {
            "/health" => json_response(StatusCode::OK, self.health(&status)),
            "/stats" => match parts.method {
                Method::GET | Method::HEAD => json_response(StatusCode::OK, self.stats()),
                _ => method_not_allowed("GET"),
            },
            "/metrics" => match parts.method {
                Method::GET | Method::HEAD => self.metrics_response(&parts.headers),
                _ => method_not_allowed("GET"),
            },
            _ if api && place == Place::Main && status.api_listen => not_found(),
            "/api/v1/killswitch" => {
                if parts.method != Method::POST {
                    return method_not_allowed("POST");
                }
                if let Some(r) = refusal(&status, &parts.headers) {
                    return r;
                }
                if !self.rate_ok() {
                    let mut r = error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        "at most 10 kill switch changes a minute",
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
                    return r;
                }
                let active = match read_toggle(body).await {
                    Ok(a) => a,
                    Err(why) => return error(StatusCode::BAD_REQUEST, "bad_request", &why),
                };
                self.kill_switch.set_api(active);
                let mut out = json!({ "active": active, "source": "api" });
                if active {
                    out["message"] = Value::from(self.kill_switch.message());
                }
                json_response(StatusCode::OK, out)
            }
            "/api/v1/killswitch/status" => {
                if parts.method != Method::GET {
                    return method_not_allowed("GET");
                }
                if let Some(r) = refusal(&status, &parts.headers) {
                    return r;
                }
                json_response(StatusCode::OK, self.kill_switch_status())
            }
            _ => not_found(),
        }
    }

    /// The `/health` document.
    fn health(&self, status: &Status) -> Value {
        let m = &self.metrics;
        let ebpf: Option<String> = (**self.ebpf.load()).clone();
        let allowed = m.requests("allowed");
        let blocked = m.requests("blocked");
        let errors = m.requests("error");
        json!({
            "status": "healthy",
            "version": env!("CARGO_PKG_VERSION"),
            "mode": status.mode,
            "mode_source": **self.mode_source.load(),
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "dlp_patterns": status.dlp_patterns,
            "response_scan_enabled": status.response_scan_enabled,
            "git_protection_enabled": false,
            "rate_limit_enabled": status.rate_limit_enabled,
            "forward_proxy_enabled": status.forward_proxy_enabled,
            "websocket_proxy_enabled": status.websocket_proxy_enabled,
            "request_body_scan_enabled": status.request_body_scan_enabled,
            "tls_interception_enabled": status.tls_interception_enabled,
            "kill_switch_active": self.kill_switch.is_active(),
            "ebpf": {
                "attached": ebpf.is_some(),
                "cgroup": ebpf,
            },
            "config_generation": self.generation(),
            "connections": {
                "accepted": m.connections_accepted(),
                "active": m.active_connections.get(),
                "refused": m.connections_refused(),
            },
            "requests": {
                "total": allowed + blocked + errors,
                "allowed": allowed,
                "blocked": blocked,
                "errors": errors,
            },
            "findings": m.scanner_hits(),
            "kill_switch_denials": m.kill_switch_denials_total(),
        })
    }

    /// The `/stats` document (Pipelock's shape, the parts the agent has).
    fn stats(&self) -> Value {
        let m = &self.metrics;
        let allowed = m.requests("allowed");
        let blocked = m.requests("blocked");
        let total = allowed + blocked + m.requests("error");
        let top = |t: &crate::telemetry::top::TopCounts| -> Value {
            t.top(STATS_TOP)
                .into_iter()
                .map(|(name, count)| json!({ "name": name, "count": count }))
                .collect()
        };
        json!({
            "uptime_seconds": self.started.elapsed().as_secs_f64(),
            "requests": {
                "total": total,
                "allowed": allowed,
                "blocked": blocked,
                "block_rate": if total == 0 { 0.0 } else { blocked as f64 / total as f64 },
            },
            "tunnels": m.tunnels("completed") + m.tunnels("blocked"),
            "top_blocked_domains": top(&m.blocked_hosts),
            "top_scanners": top(&m.top_rules),
        })
    }

    /// The kill switch API's status document.
    fn kill_switch_status(&self) -> Value {
        let sources = self.kill_switch.sources();
        let mut out = json!({
            "active": sources.any(),
            "sources": sources,
        });
        if sources.any() {
            out["message"] = Value::from(self.kill_switch.message());
        }
        out
    }

    fn metrics_response(&self, headers: &http::HeaderMap) -> Response<DownBody> {
        let openmetrics = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/openmetrics-text"));
        let (text, ct) = if openmetrics {
            (self.metrics.encode(), Metrics::CONTENT_TYPE)
        } else {
            (
                self.metrics.encode_prometheus(),
                Metrics::PROMETHEUS_CONTENT_TYPE,
            )
        };
        let mut r = Response::new(full(Bytes::from(text)));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
        r
    }

    fn rate_ok(&self) -> bool {
        let mut w = self.api_window.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if now.duration_since(w.0) > Duration::from_secs(60) {
            *w = (now, 0);
        }
        w.1 += 1;
        w.1 <= API_RATE_PER_MINUTE
    }
}

/// Which endpoints a listener of its own serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// `kill_switch.api_listen`: everything, the kill switch API always.
    Api,
    /// `metrics_listen`: `/metrics`, `/stats`, `/health`.
    Metrics,
}

/// Serves the admin endpoints on `listener`, HTTP/1.1, until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, admin: Arc<Admin>, endpoints: Endpoints) {
    let place = match endpoints {
        Endpoints::Api => Place::ApiListener,
        Endpoints::Metrics => Place::MetricsListener,
    };
    use hyper_util::rt::{TokioIo, TokioTimer};
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(target: "pipelock::admin", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.respond(req, place).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Checks `Authorization: Bearer <api_token>`: `None` when authorised,
/// else the refusal to answer with.
fn refusal(status: &Status, headers: &http::HeaderMap) -> Option<Response<DownBody>> {
    let Some(token) = &status.api_token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "api_disabled",
            "kill switch API not configured (no kill_switch.api_token)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if given.is_empty() || !token_matches(given, token.as_bytes()) {
        let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", "unauthorized");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"pipelock\""),
        );
        return Some(r);
    }
    None
}

/// Compares two tokens in time independent of where they differ and of
/// their lengths: both are hashed, the digests compared without branching.
pub fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    let a = Sha256::digest(given);
    let b = Sha256::digest(expected);
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Reads `{"active": bool}` (nothing else) from a request body.
async fn read_toggle(body: Incoming) -> Result<bool, String> {
    let bytes = Limited::new(body, MAX_API_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    parse_toggle(&bytes)
}

fn parse_toggle(bytes: &[u8]) -> Result<bool, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Toggle {
        active: Option<bool>,
    }
    let t: Toggle =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid request body: {e}"))?;
    t.active
        .ok_or_else(|| "missing required field \"active\"".to_string())
}

fn full(bytes: Bytes) -> DownBody {
    Full::new(bytes).map_err(|n: Infallible| match n {}).boxed()
}

fn json_response(status: StatusCode, body: Value) -> Response<DownBody> {
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert("x-pipelock", HeaderValue::from_static("agent"));
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<DownBody> {
    json_response(status, json!({ "error": code, "message": message }))
}

fn not_found() -> Response<DownBody> {
    error(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

fn method_not_allowed(allow: &'static str) -> Response<DownBody> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Origin-form requests to the forward proxy (:8888) are the admin routes.
impl crate::proxy::forward::AdminRoutes for Arc<Admin> {
    fn handle(&self, req: Request<Incoming>) -> crate::proxy::forward::AdminFuture {
        let admin = Arc::clone(self);
        Box::pin(async move { Admin::handle(&admin, req).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(yaml: &str) -> Admin {
        let cfg = crate::config::parse(yaml).unwrap().config;
        let metrics = Arc::new(Metrics::new());
        let ks = Arc::new(KillSwitch::new(&cfg.kill_switch, Some(metrics.clone())));
        Admin::new(&cfg, metrics, ks)
    }

    #[test]
    fn tokens_compare_by_value() {
        assert!(token_matches(b"s3cret-token", b"s3cret-token"));
        assert!(!token_matches(b"s3cret-tokeN", b"s3cret-token"));
        assert!(!token_matches(b"s3cret", b"s3cret-token"));
        assert!(!token_matches(b"", b"s3cret-token"));
    }

    #[test]
    fn authorization_needs_the_configured_bearer_token() {
        let with = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        let a = admin("version: 1\nkill_switch:\n  api_token: tok-123\n");
        let st = a.status.load_full();
        assert!(refusal(&st, &with("Bearer tok-123")).is_none());
        let r = refusal(&st, &with("Bearer tok-124")).unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.headers().contains_key(header::WWW_AUTHENTICATE));
        let r = refusal(&st, &with("tok-123")).unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            refusal(&st, &http::HeaderMap::new()).unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
        // No token configured: the API is off, whatever is sent.
        let off = admin("version: 1\n");
        let r = refusal(&off.status.load_full(), &with("Bearer ")).unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    #[test]
    fn toggle_body_is_strict() {
        assert_eq!(parse_toggle(br#"{"active":true}"#), Ok(true));
        assert_eq!(parse_toggle(br#"{"active":false}"#), Ok(false));
        assert!(parse_toggle(br#"{}"#).is_err());
        assert!(parse_toggle(br#"{"active":true,"x":1}"#).is_err());
        assert!(parse_toggle(br#"{"active":"yes"}"#).is_err());
        assert!(parse_toggle(b"").is_err());
    }

    #[test]
    fn health_has_pipelocks_fields_and_ours() {
        let a = admin("version: 1\nmode: strict\nforward_proxy:\n  enabled: true\n");
        a.set_ebpf(Some("/sure".into()));
        a.metrics.request("allowed");
        a.metrics.request("blocked");
        let h = a.health(&a.status.load_full());
        for key in [
            "status",
            "version",
            "mode",
            "uptime_seconds",
            "dlp_patterns",
            "response_scan_enabled",
            "forward_proxy_enabled",
            "websocket_proxy_enabled",
            "request_body_scan_enabled",
            "tls_interception_enabled",
            "kill_switch_active",
        ] {
            assert!(h.get(key).is_some(), "no {key} in {h}");
        }
        assert_eq!(h["status"], "healthy");
        assert_eq!(h["mode"], "strict");
        assert_eq!(h["forward_proxy_enabled"], true);
        assert_eq!(h["kill_switch_active"], false);
        assert!(h["dlp_patterns"].as_u64().unwrap() > 10, "{h}");
        assert_eq!(h["ebpf"], json!({"attached": true, "cgroup": "/sure"}));
        assert_eq!(h["config_generation"], 1);
        assert_eq!(h["requests"]["total"], 2);
        assert_eq!(h["requests"]["blocked"], 1);
        // A reload moves the generation and what the health says.
        let cfg = crate::config::parse("version: 1\nmode: audit\nkill_switch:\n  enabled: true\n")
            .unwrap()
            .config;
        a.reloaded(true, &cfg);
        a.reloaded(false, &cfg);
        let h = a.health(&a.status.load_full());
        assert_eq!(h["config_generation"], 2);
        assert_eq!(h["mode"], "audit");
        assert_eq!(h["kill_switch_active"], true);
        let st = a.kill_switch_status();
        assert_eq!(st["sources"]["config"], true);
        assert_eq!(st["message"], "Emergency deny-all active");
    }
}
