//! Request bodies held until scanned. A body of up to
//! `request_body_scanning.max_body_bytes` is read whole, chunk by chunk
//! through the pipeline's body filter, before the request is sent upstream:
//! a blocked request sends nothing, not even its head. A body that turns out
//! larger forwards the (scanned) part held so far and streams the rest, each
//! chunk scanned before it is forwarded; a block then cuts the upstream
//! request short. Held bytes count against one budget shared by every
//! connection (`interceptor.body_hold_budget_bytes`); a body that cannot get
//! budget within `body_hold_wait_ms` is refused, never forwarded unscanned.
//! A client that sends no body byte for `body_idle_timeout_seconds` is cut.
use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::pipeline::{Block, Decision};

/// Budget accounting unit: one semaphore permit per KiB held.
const UNIT: u64 = 1024;

/// How request bodies are held (shared by every connection; the budget
/// survives config reloads).
#[derive(Debug)]
pub struct BodyHold {
    /// Largest body held whole before the request is sent; 0: none is held.
    pub max_body: u64,
    /// KiB of bodies held at once across all connections.
    pub budget: Arc<Semaphore>,
    /// How long a body may wait for budget before it is refused.
    pub budget_wait: Duration,
    /// A client body with no byte for this long is cut.
    pub idle: Duration,
}

impl BodyHold {
    /// A budget of `bytes` (rounded up to whole KiB).
    pub fn budget(bytes: u64) -> Arc<Semaphore> {
        let permits = usize::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(usize::MAX)
            .clamp(1, Semaphore::MAX_PERMITS);
        Arc::new(Semaphore::new(permits))
    }
}

impl Default for BodyHold {
    fn default() -> Self {
        BodyHold {
            max_body: 5 << 20,
            budget: BodyHold::budget(256 << 20),
            budget_wait: Duration::from_secs(5),
            idle: Duration::from_secs(60),
        }
    }
}

/// What the body filter sees while a body is held.
pub trait BodyScan {
    /// One data chunk; `eos` when it is the last one.
    fn data(&mut self, chunk: &[u8], eos: bool) -> Decision;
    /// The trailers (they end the body).
    fn trailers(&mut self, trailers: &HeaderMap) -> Decision;
}

/// Why a held body was not forwarded.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// The body filter blocked the request.
    #[error("blocked by policy")]
    Blocked(Block),
    /// The client sent no byte for the idle limit.
    #[error("request body idle for more than {0:?}")]
    Idle(Duration),
    /// No budget freed up in time.
    #[error("request body memory budget exhausted (interceptor.body_hold_budget_bytes)")]
    Budget,
    /// The client's body failed.
    #[error("client body: {0}")]
    Client(String),
}

/// A body read (and scanned) so far, and whether that is all of it.
pub struct Held {
    frames: VecDeque<Frame<Bytes>>,
    bytes: u64,
    complete: bool,
    permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    /// True when the whole body was read: nothing streams after it.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Replays the held frames, then `rest` (the body still to stream, if
    /// the held part is not all of it).
    pub fn replay<B>(self, rest: Option<B>) -> Replay<B> {
        Replay {
            size: self.complete.then_some(self.bytes),
            frames: self.frames,
            rest: if self.complete { None } else { rest },
            _permit: self.permit,
        }
    }
}

/// Reads `body` until its end or until more than `hold.max_body` bytes were
/// read, passing every frame to `scan` first. `length` is the declared
/// `Content-Length`: a body declared larger than the limit is not held at all.
pub async fn hold<B>(
    body: &mut B,
    length: Option<u64>,
    hold: &BodyHold,
    scan: &mut (dyn BodyScan + Send),
) -> Result<Held, HoldError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut held = Held {
        frames: VecDeque::new(),
        bytes: 0,
        complete: false,
        permit: None,
    };
    if hold.max_body == 0 || length.is_some_and(|n| n > hold.max_body) {
        return Ok(held);
    }
    let mut eos_seen = false;
    loop {
        if body.is_end_stream() {
            break;
        }
        let frame = match tokio::time::timeout(hold.idle, body.frame()).await {
            Err(_) => return Err(HoldError::Idle(hold.idle)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(HoldError::Client(e.to_string())),
            Ok(Some(Ok(f))) => f,
        };
        let decision = if let Some(data) = frame.data_ref() {
            let eos = body.is_end_stream();
            eos_seen |= eos;
            scan.data(data, eos)
        } else if let Some(t) = frame.trailers_ref() {
            // Trailers end the body: its end is scanned first.
            let end = if eos_seen {
                Decision::Continue
            } else {
                scan.data(&[], true)
            };
            eos_seen = true;
            if end.is_block() {
                end
            } else {
                scan.trailers(t)
            }
        } else {
            Decision::Continue
        };
        if let Decision::Block(b) = decision {
            return Err(HoldError::Blocked(b));
        }
        let len = frame.data_ref().map_or(0, |d| d.len() as u64);
        held.bytes += len;
        held.frames.push_back(frame);
        if held.bytes > hold.max_body {
            // Too large to hold: what was read streams on with the rest.
            return Ok(held);
        }
        let units = u32::try_from(len.div_ceil(UNIT)).unwrap_or(u32::MAX);
        if units > 0 {
            let acquire = hold.budget.clone().acquire_many_owned(units);
            let permit = match tokio::time::timeout(hold.budget_wait, acquire).await {
                Ok(Ok(p)) => p,
                _ => return Err(HoldError::Budget),
            };
            match &mut held.permit {
                Some(p) => p.merge(permit),
                None => held.permit = Some(permit),
            }
        }
    }
    if !eos_seen && let Decision::Block(b) = scan.data(&[], true) {
        return Err(HoldError::Blocked(b));
    }
    held.complete = true;
    Ok(held)
}

/// The held frames, then the rest of the body; the budget is given back when
/// it is dropped (sent or abandoned).
pub struct Replay<B> {
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<B>,
    size: Option<u64>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl<B> Body for Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        if let Some(f) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        match (self.size, &self.rest) {
            (Some(n), _) => SizeHint::with_exact(n),
            (None, Some(rest)) => {
                let queued: u64 = self
                    .frames
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + queued);
                if let Some(u) = r.upper() {
                    h.set_upper(u + queued);
                }
                h
            }
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{StreamBody, combinators::BoxBody};

    /// Scans by looking for `SECRET` in single chunks and counts the calls.
    #[derive(Default)]
    struct Needle {
        chunks: usize,
        ends: usize,
        trailers: usize,
    }

    impl BodyScan for Needle {
        fn data(&mut self, chunk: &[u8], eos: bool) -> Decision {
            self.chunks += 1;
            self.ends += usize::from(eos);
            if chunk.windows(6).any(|w| w == b"SECRET") {
                return Decision::Block(Block {
                    status: http::StatusCode::FORBIDDEN,
                    reason: "secret".into(),
                    rule_ids: vec!["test".into()],
                    kind: Default::default(),
                });
            }
            Decision::Continue
        }
        fn trailers(&mut self, t: &HeaderMap) -> Decision {
            self.trailers += 1;
            if t.values().any(|v| v.as_bytes() == b"SECRET") {
                return self.data(b"SECRET", true);
            }
            Decision::Continue
        }
    }

    fn body(frames: Vec<Frame<Bytes>>) -> BoxBody<Bytes, std::convert::Infallible> {
        let s = futures_util::stream::iter(frames.into_iter().map(Ok));
        http_body_util::BodyExt::boxed(StreamBody::new(s))
    }

    fn data(s: &str) -> Frame<Bytes> {
        Frame::data(Bytes::from(s.to_owned()))
    }

    fn settings(max: u64, budget: u64) -> BodyHold {
        BodyHold {
            max_body: max,
            budget: BodyHold::budget(budget),
            budget_wait: Duration::from_millis(50),
            idle: Duration::from_secs(5),
        }
    }

    async fn collect<B: Body<Data = Bytes> + Unpin>(b: B) -> Vec<u8>
    where
        B::Error: std::fmt::Debug,
    {
        b.collect()
            .await
            .map(|c| c.to_bytes().to_vec())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn small_body_is_held_whole_and_replayed() {
        let mut b = body(vec![data("hello "), data("world")]);
        let mut scan = Needle::default();
        let held = hold(&mut b, None, &settings(1024, 4096), &mut scan)
            .await
            .map_err(|e| e.to_string())
            .unwrap();
        assert!(held.is_complete());
        assert_eq!(scan.ends, 1, "end of stream reported once");
        let replay = held.replay(Some(b));
        assert_eq!(replay.size_hint().exact(), Some(11));
        assert_eq!(collect(replay).await, b"hello world");
    }

    #[tokio::test]
    async fn blocked_body_is_never_replayed() {
        let mut b = body(vec![data("a"), data("xx SECRET"), data("b")]);
        let r = hold(&mut b, None, &settings(1024, 4096), &mut Needle::default()).await;
        assert!(matches!(r, Err(HoldError::Blocked(_))));
    }

    #[tokio::test]
    async fn secret_in_trailers_blocks() {
        let mut t = HeaderMap::new();
        t.insert("x-checksum", http::HeaderValue::from_static("SECRET"));
        let mut b = body(vec![data("clean"), Frame::trailers(t)]);
        let mut scan = Needle::default();
        let r = hold(&mut b, None, &settings(1024, 4096), &mut scan).await;
        assert!(matches!(r, Err(HoldError::Blocked(_))));
        assert_eq!(scan.trailers, 1);
    }

    #[tokio::test]
    async fn large_body_streams_after_the_limit() {
        let mut b = body(vec![data("0123456789"), data("abcdefghij"), data("tail")]);
        let mut scan = Needle::default();
        let held = hold(&mut b, None, &settings(15, 4096), &mut scan)
            .await
            .map_err(|e| e.to_string())
            .unwrap();
        assert!(!held.is_complete());
        assert_eq!(scan.chunks, 2, "only what was read so far was scanned");
        assert_eq!(
            collect(held.replay(Some(b))).await,
            b"0123456789abcdefghijtail"
        );
    }

    #[tokio::test]
    async fn declared_oversize_body_is_not_held() {
        let mut b = body(vec![data("0123456789")]);
        let mut scan = Needle::default();
        let held = hold(&mut b, Some(10), &settings(5, 4096), &mut scan)
            .await
            .map_err(|e| e.to_string())
            .unwrap();
        assert!(!held.is_complete());
        assert_eq!(scan.chunks, 0);
    }

    #[tokio::test]
    async fn exhausted_budget_refuses_and_is_given_back() {
        let s = settings(8 << 10, 4 << 10);
        let mut first = body(vec![data(&"x".repeat(4 << 10))]);
        let held = hold(&mut first, None, &s, &mut Needle::default())
            .await
            .map_err(|e| e.to_string())
            .unwrap();
        let mut second = body(vec![data("y")]);
        let r = hold(&mut second, None, &s, &mut Needle::default()).await;
        assert!(
            matches!(r, Err(HoldError::Budget)),
            "budget in use: refused"
        );
        drop(held);
        let mut third = body(vec![data("z")]);
        assert!(
            hold(&mut third, None, &s, &mut Needle::default())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn idle_client_is_cut() {
        let s = BodyHold {
            idle: Duration::from_millis(50),
            ..settings(1024, 4096)
        };
        let stream =
            futures_util::stream::pending::<Result<Frame<Bytes>, std::convert::Infallible>>();
        let mut b = StreamBody::new(stream);
        let r = hold(&mut b, None, &s, &mut Needle::default()).await;
        assert!(matches!(r, Err(HoldError::Idle(_))));
    }
}
