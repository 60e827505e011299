//! The webhook sink: each event as one JSON POST (`Authorization: Bearer`
//! when `auth_token` is set), tried up to [`ATTEMPTS`] times with a short
//! back-off when the receiver is unreachable, times out or answers 5xx or
//! 429; other 4xx are not retried. Runs as one task draining the sink's
//! bounded queue, so a slow receiver only fills the queue.
use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Request, header};
use tokio::sync::mpsc;

use super::{Event, Outcome, Recorder, http::Client};
use crate::config::emit::Webhook;

/// Tries per event.
pub const ATTEMPTS: u32 = 3;
/// Wait before the second try; doubled for each later one.
const BACKOFF: Duration = Duration::from_millis(200);

pub async fn run(cfg: Webhook, client: Client, mut rx: mpsc::Receiver<Arc<Event>>, rec: Recorder) {
    while let Some(ev) = rx.recv().await {
        let body = match serde_json::to_vec(&*ev) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::warn!(target: "pipelock::export", sink = "webhook", error = %e, "event not encodable");
                rec.count(Outcome::Failed);
                continue;
            }
        };
        let mut outcome = Outcome::Failed;
        let mut delay = BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(&cfg.url)
                .header(header::CONTENT_TYPE, "application/json")
                .header(
                    header::USER_AGENT,
                    concat!("pipelock-agent/", env!("CARGO_PKG_VERSION")),
                );
            if let Some(t) = &cfg.auth_token {
                req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let req = match req.body(body.clone()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(target: "pipelock::export", sink = "webhook", error = %e, "bad request");
                    break;
                }
            };
            let retry = match client.send(req).await {
                Ok(resp) if resp.status().is_success() => {
                    outcome = Outcome::Sent;
                    break;
                }
                Ok(resp) => {
                    let s = resp.status();
                    tracing::warn!(target: "pipelock::export", sink = "webhook", status = s.as_u16(), attempt, "webhook refused the event");
                    s.is_server_error() || s == http::StatusCode::TOO_MANY_REQUESTS
                }
                Err(e) => {
                    tracing::warn!(target: "pipelock::export", sink = "webhook", error = %e, attempt, "webhook unreachable");
                    true
                }
            };
            if !retry || attempt == ATTEMPTS {
                break;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        rec.count(outcome);
    }
}
