//! WebSocket after a `101 Switching Protocols`: both upgraded connections
//! are parsed as WebSocket (tungstenite: server role towards the client,
//! client role towards the upstream) and relayed message by message, each
//! whole message (fragments joined) scanned by the upgrade exchange of the
//! shared pipeline before it is forwarded ([`Exchange::message_filter`]:
//! client to server like a request body, server to client like a response
//! body). A blocked message is not forwarded: both sides get close 1008.
//!
//! Also enforced here: binary messages only when `allow_binary_frames`
//! (then scanned like text), else [`Exchange::unscannable`] decides (close
//! 1003 in strict and balanced, logged and forwarded in audit);
//! `max_message_bytes` (close 1009 in every mode); `max_connection_seconds`
//! and `idle_timeout_seconds` (close 1001; 0 means no limit);
//! `max_concurrent_connections` (further upgrades answered 503). Ping and
//! pong are answered per hop and never forwarded (their payload would be
//! an unscanned channel); close frames are forwarded with their code only.
//! tungstenite cannot decode permessage-deflate, so `Sec-WebSocket-Extensions`
//! is always removed from the upgrade request: both sides speak uncompressed.
use std::{sync::Arc, time::Duration};

use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, header};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::{OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Error as WsError, Message,
        error::CapacityError,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};

use crate::{
    config::pipelock::WebsocketProxy,
    pipeline::{Decision, Exchange},
};

/// The `websocket_proxy` settings the relay enforces.
#[derive(Debug)]
pub struct WsSettings {
    /// Largest message (and frame) accepted, bytes.
    pub max_message_bytes: usize,
    /// Binary messages are relayed (and scanned) rather than refused.
    pub allow_binary: bool,
    /// Longest life of one WebSocket (None: unlimited).
    pub max_connection: Option<Duration>,
    /// Longest time without any frame either way (None: unlimited).
    pub idle_timeout: Option<Duration>,
    /// One permit per open WebSocket (`max_concurrent_connections`).
    pub slots: Arc<Semaphore>,
}

impl WsSettings {
    /// From the config file's `websocket_proxy` section.
    pub fn new(cfg: &WebsocketProxy) -> Self {
        Self::with_slots(cfg, Self::slots_for(cfg))
    }

    /// The `max_concurrent_connections` semaphore `cfg` asks for.
    pub fn slots_for(cfg: &WebsocketProxy) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(
            usize::try_from(cfg.max_concurrent_connections.max(1))
                .unwrap_or(Semaphore::MAX_PERMITS)
                .min(Semaphore::MAX_PERMITS),
        ))
    }

    /// From `cfg`, counting open WebSockets in `slots` (kept across
    /// reloads, so the WebSockets already open still count).
    pub fn with_slots(cfg: &WebsocketProxy, slots: Arc<Semaphore>) -> Self {
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        WsSettings {
            max_message_bytes: usize::try_from(cfg.max_message_bytes.max(1)).unwrap_or(usize::MAX),
            allow_binary: cfg.allow_binary_frames,
            max_connection: secs(cfg.max_connection_seconds),
            idle_timeout: secs(cfg.idle_timeout_seconds),
            slots,
        }
    }

    /// A slot for one more WebSocket, if the limit allows.
    pub fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings::new(&WebsocketProxy::default())
    }
}

/// Access to the upgrade exchange (shared with the HTTP side).
pub trait Hooks: Send + 'static {
    /// Runs `f` on the exchange.
    fn with<R>(&self, f: impl FnOnce(&mut dyn Exchange) -> R) -> R;
}

/// True when the request asks for exactly `Upgrade: websocket`.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::UPGRADE).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return false;
    };
    v.to_str()
        .is_ok_and(|s| s.trim().eq_ignore_ascii_case("websocket"))
}

/// The protocol(s) an upgrade asks for, shortened and made log-safe.
pub fn upgrade_name(headers: &HeaderMap) -> String {
    let raw: String = headers
        .get_all(header::UPGRADE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect::<Vec<_>>()
        .join(",");
    raw.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-/,".contains(*c))
        .take(40)
        .collect()
}

/// Makes the upgrade request one the relay can parse: no extensions
/// (permessage-deflate cannot be decoded for scanning).
pub fn prepare_request(headers: &mut HeaderMap, conn: u64) {
    if headers.remove(header::SEC_WEBSOCKET_EXTENSIONS).is_some() {
        tracing::debug!(target: "pipelock::websocket", conn, "Sec-WebSocket-Extensions removed (compression is not relayed)");
    }
}

fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    // A close reason is at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    CloseFrame {
        code,
        reason: reason[..end].to_owned().into(),
    }
}

/// How the relay ended.
struct End {
    reason: String,
    blocked: bool,
}

#[derive(Default)]
struct Counts {
    up: u64,
    down: u64,
}

/// Relays one upgraded connection message by message until either side
/// closes, a message is blocked or a limit is hit; logs one line at the end.
pub async fn relay<D, U, H>(
    down: D,
    up: U,
    hooks: H,
    ws: Arc<WsSettings>,
    conn: u64,
    _slot: Option<OwnedSemaphorePermit>,
) where
    D: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
    H: Hooks,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(ws.max_message_bytes))
        .max_frame_size(Some(ws.max_message_bytes));
    let mut client = WebSocketStream::from_raw_socket(down, Role::Server, Some(config)).await;
    let mut server = WebSocketStream::from_raw_socket(up, Role::Client, Some(config)).await;
    tracing::info!(target: "pipelock::websocket", conn, "websocket opened");
    let started = Instant::now();
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = started + ws.max_connection.unwrap_or(far);
    let idle_for = ws.idle_timeout.unwrap_or(far);
    let idle = tokio::time::sleep(idle_for);
    tokio::pin!(idle);
    let mut counts = Counts::default();
    let end = loop {
        let step = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => Err((CloseCode::Away, "max_connection_seconds reached".to_owned(), false)),
            _ = &mut idle => Err((CloseCode::Away, "idle_timeout_seconds reached".to_owned(), false)),
            m = client.next() => {
                idle.as_mut().reset(Instant::now() + idle_for);
                step(m, false, &mut server, &hooks, &ws, &mut counts).await
            }
            m = server.next() => {
                idle.as_mut().reset(Instant::now() + idle_for);
                step(m, true, &mut client, &hooks, &ws, &mut counts).await
            }
        };
        match step {
            Ok(true) => continue,
            Ok(false) => {
                break End {
                    reason: "closed".to_owned(),
                    blocked: false,
                };
            }
            Err((code, reason, blocked)) => {
                let frame = close_frame(code, &format!("pipelock: {reason}"));
                let both = async {
                    let _ = client.close(Some(frame.clone())).await;
                    let _ = server.close(Some(frame)).await;
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), both).await;
                break End { reason, blocked };
            }
        }
    };
    // Best effort: whichever side is still open hears that we are done.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = client.close(None).await;
        let _ = server.close(None).await;
    })
    .await;
    let fields = (counts.up, counts.down, started.elapsed().as_millis() as u64);
    if end.blocked {
        tracing::warn!(target: "pipelock::websocket", conn, messages_up = fields.0, messages_down = fields.1, duration_ms = fields.2, reason = %end.reason, blocked = true, "websocket closed");
    } else {
        tracing::info!(target: "pipelock::websocket", conn, messages_up = fields.0, messages_down = fields.1, duration_ms = fields.2, reason = %end.reason, blocked = false, "websocket closed");
    }
}

type Stop = (CloseCode, String, bool);

/// Handles what one side sent: `Ok(true)` go on, `Ok(false)` that side is
/// gone, `Err` close both sides with the code and reason.
async fn step<T, H>(
    msg: Option<Result<Message, WsError>>,
    response: bool,
    to: &mut WebSocketStream<T>,
    hooks: &H,
    ws: &WsSettings,
    counts: &mut Counts,
) -> Result<bool, Stop>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: Hooks,
{
    let side = if response { "upstream" } else { "client" };
    let msg = match msg {
        None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return Ok(false),
        Some(Err(WsError::Capacity(e))) => {
            let what = match e {
                CapacityError::MessageTooLong { .. } => "message over max_message_bytes",
                _ => "message too large",
            };
            return Err((CloseCode::Size, format!("{side} {what}"), true));
        }
        Some(Err(WsError::Utf8(_))) => {
            return Err((
                CloseCode::Invalid,
                format!("{side} sent invalid UTF-8"),
                true,
            ));
        }
        Some(Err(WsError::Protocol(e))) => {
            return Err((
                CloseCode::Protocol,
                format!("{side} protocol error: {e}"),
                false,
            ));
        }
        Some(Err(e)) => return Err((CloseCode::Error, format!("{side}: {e}"), false)),
        Some(Ok(m)) => m,
    };
    let decision = match &msg {
        Message::Text(t) => hooks.with(|x| x.message_filter(response, t.as_bytes())),
        Message::Binary(b) => {
            if !ws.allow_binary {
                let d = hooks.with(|x| x.unscannable(response, "websocket_binary_message"));
                if let Decision::Block(b) = d {
                    let reason = format!("binary message refused ({})", b.reason);
                    return Err((CloseCode::Unsupported, reason, true));
                }
            }
            hooks.with(|x| x.message_filter(response, b))
        }
        // Answered per hop by tungstenite; payloads are not forwarded.
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(true),
        Message::Close(f) => {
            let code = f.as_ref().map(|f| close_frame(f.code, ""));
            let _ = to.send(Message::Close(code)).await;
            return Ok(true);
        }
    };
    if let Decision::Block(b) = decision {
        return Err((CloseCode::Policy, format!("blocked ({})", b.reason), true));
    }
    if response {
        counts.down += 1;
    } else {
        counts.up += 1;
    }
    match to.send(msg).await {
        Ok(()) => Ok(true),
        Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Ok(false),
        Err(e) => Err((CloseCode::Error, format!("sending: {e}"), false)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::pipeline::{Block, Outcome};

    /// Blocks messages containing SECRET (up) or INJECT (down); binary
    /// refused unless audit.
    struct Test {
        audit: bool,
    }

    fn block(rule: &str) -> Decision {
        Decision::Block(Block {
            status: http::StatusCode::FORBIDDEN,
            reason: format!("rule {rule}"),
            rule_ids: vec![rule.into()],
            kind: Default::default(),
        })
    }

    impl Exchange for Test {
        fn request_filter(&mut self, _: &http::request::Parts) -> Decision {
            Decision::Continue
        }
        fn request_body_filter(&mut self, _: &[u8], _: bool) -> Decision {
            Decision::Continue
        }
        fn response_filter(&mut self, _: &http::response::Parts) -> Decision {
            Decision::Continue
        }
        fn response_body_filter(&mut self, _: &[u8], _: bool) -> Decision {
            Decision::Continue
        }
        fn message_filter(&mut self, response: bool, m: &[u8]) -> Decision {
            let word: &[u8] = if response { b"INJECT" } else { b"SECRET" };
            if !self.audit && m.windows(6).any(|w| w == word) {
                return block("test");
            }
            Decision::Continue
        }
        fn trailers_filter(&mut self, _: bool, _: &http::HeaderMap) -> Decision {
            Decision::Continue
        }
        fn unscannable(&mut self, _: bool, what: &str) -> Decision {
            if self.audit {
                Decision::Continue
            } else {
                block(what)
            }
        }
        fn logging(&mut self, _: &Outcome) {}
    }

    struct H(Arc<Mutex<Test>>);

    impl Hooks for H {
        fn with<R>(&self, f: impl FnOnce(&mut dyn Exchange) -> R) -> R {
            f(&mut *self.0.lock().unwrap())
        }
    }

    type Ws = WebSocketStream<tokio::io::DuplexStream>;

    /// (client, server) WebSockets joined through the relay.
    async fn pair(audit: bool, ws: WsSettings) -> (Ws, Ws) {
        let (c, down) = tokio::io::duplex(1 << 16);
        let (up, s) = tokio::io::duplex(1 << 16);
        let hooks = H(Arc::new(Mutex::new(Test { audit })));
        tokio::spawn(relay(down, up, hooks, Arc::new(ws), 1, None));
        let client = WebSocketStream::from_raw_socket(c, Role::Client, None).await;
        let server = WebSocketStream::from_raw_socket(s, Role::Server, None).await;
        (client, server)
    }

    async fn next(ws: &mut Ws) -> Option<Message> {
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("timely")
            .and_then(Result::ok)
    }

    fn close_code(m: Option<Message>) -> Option<CloseCode> {
        match m {
            Some(Message::Close(Some(f))) => Some(f.code),
            _ => None,
        }
    }

    #[tokio::test]
    async fn clean_round_trip_and_blocked_secret() {
        let (mut c, mut s) = pair(false, WsSettings::default()).await;
        c.send(Message::text("hello")).await.unwrap();
        assert_eq!(next(&mut s).await, Some(Message::text("hello")));
        s.send(Message::text("world")).await.unwrap();
        assert_eq!(next(&mut c).await, Some(Message::text("world")));
        c.send(Message::text("a SECRET here")).await.unwrap();
        assert_eq!(close_code(next(&mut c).await), Some(CloseCode::Policy));
        assert_eq!(close_code(next(&mut s).await), Some(CloseCode::Policy));
    }

    #[tokio::test]
    async fn injection_cut_before_the_client() {
        let (mut c, mut s) = pair(false, WsSettings::default()).await;
        s.send(Message::text("INJECT now")).await.unwrap();
        assert_eq!(close_code(next(&mut c).await), Some(CloseCode::Policy));
    }

    #[tokio::test]
    async fn binary_refused_unless_allowed_or_audit() {
        let (mut c, mut s) = pair(false, WsSettings::default()).await;
        c.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        assert_eq!(close_code(next(&mut c).await), Some(CloseCode::Unsupported));
        assert_eq!(close_code(next(&mut s).await), Some(CloseCode::Unsupported));

        let allow = WsSettings {
            allow_binary: true,
            ..WsSettings::default()
        };
        let (mut c, mut s) = pair(false, allow).await;
        c.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        assert_eq!(next(&mut s).await, Some(Message::binary(vec![1u8, 2, 3])));
        c.send(Message::binary(b"SECRET".to_vec())).await.unwrap();
        assert_eq!(close_code(next(&mut c).await), Some(CloseCode::Policy));

        let (mut c, mut s) = pair(true, WsSettings::default()).await;
        c.send(Message::binary(vec![9u8])).await.unwrap();
        assert_eq!(next(&mut s).await, Some(Message::binary(vec![9u8])));
    }

    #[tokio::test]
    async fn oversize_message_closes_with_1009() {
        let small = WsSettings {
            max_message_bytes: 1024,
            ..WsSettings::default()
        };
        let (mut c, mut s) = pair(false, small).await;
        c.send(Message::text("x".repeat(4096))).await.unwrap();
        assert_eq!(close_code(next(&mut c).await), Some(CloseCode::Size));
        assert_ne!(next(&mut s).await, Some(Message::text("x".repeat(4096))));
    }

    #[tokio::test]
    async fn idle_timeout_closes() {
        let short = WsSettings {
            idle_timeout: Some(Duration::from_millis(200)),
            ..WsSettings::default()
        };
        let (mut c, _s) = pair(false, short).await;
        assert_eq!(close_code(next(&mut c).await), Some(CloseCode::Away));
    }

    /// A peer that compresses although no extension was negotiated (a
    /// frame with RSV1 set, payload deflated): the relay cannot decode it,
    /// so it must never reach the other side; the connection is closed.
    #[tokio::test]
    async fn a_compressed_frame_never_negotiated_is_not_relayed() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut c, down) = tokio::io::duplex(1 << 16);
        let (up, s) = tokio::io::duplex(1 << 16);
        let hooks = H(Arc::new(Mutex::new(Test { audit: true })));
        let relay = tokio::spawn(relay(down, up, hooks, Arc::default(), 1, None));
        let mut server = WebSocketStream::from_raw_socket(s, Role::Server, None).await;
        // "Hello" deflated (RFC 7692 §7.2.3.1), masked, FIN|RSV1|text.
        let payload = [0xf2u8, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let mask = [0x11u8, 0x22, 0x33, 0x44];
        let mut frame = vec![0x80 | 0x40 | 0x1, 0x80 | payload.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        c.write_all(&frame).await.unwrap();
        // The server sees no data message: at most a close.
        match tokio::time::timeout(Duration::from_secs(5), server.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => panic!("relayed: {t}"),
            Ok(Some(Ok(Message::Binary(b)))) => panic!("relayed: {b:?}"),
            _ => {}
        }
        tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("relay ended")
            .expect("relay task");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(1), c.read_to_end(&mut rest)).await;
        assert!(!rest.windows(5).any(|w| w == b"Hello"));
    }

    #[test]
    fn only_a_plain_websocket_upgrade_is_websocket() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "WebSocket".parse().unwrap());
        assert!(is_websocket(&h));
        h.insert(header::UPGRADE, "websocket, h2c".parse().unwrap());
        assert!(!is_websocket(&h));
        h.insert(
            header::UPGRADE,
            "h2c\r"
                .parse()
                .unwrap_or(http::HeaderValue::from_static("h2c")),
        );
        assert_eq!(upgrade_name(&h), "h2c");
    }
}
