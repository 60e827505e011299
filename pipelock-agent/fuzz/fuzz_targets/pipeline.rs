//! A whole exchange through the real `pipeline::ScanPipeline` (strict mode,
//! built-in rules): request line and headers, a request body, response
//! headers and a response body, each body optionally content-encoded here
//! with a real encoder, fed in random chunks. Nothing panics, and the
//! chunking never changes whether the request or the response is blocked
//! (a split must not hide a finding).
//!
//! Input: byte 0 = method and request coding, byte 1 = response media type
//! and coding, byte 2 = deflate flavour; then the chunk plan of
//! `common::plan`; then the request body, the response body and an extra
//! request header value, separated by `\n--\n`.
#![no_main]
use std::{
    net::SocketAddr,
    sync::{Arc, OnceLock},
};

use libfuzzer_sys::fuzz_target;
use pipelock_agent::{
    config::Mode,
    pipeline::{ConnMeta, Listener, Pipeline as _, ScanConfig, ScanPipeline},
    scan::text::decode::{ContentCoding, DecodeLimits},
};

mod common;
mod encode;

const CODINGS: [(ContentCoding, &str); 5] = [
    (ContentCoding::Identity, ""),
    (ContentCoding::Gzip, "gzip"),
    (ContentCoding::Deflate, "deflate"),
    (ContentCoding::Brotli, "br"),
    (ContentCoding::Zstd, "zstd"),
];
const METHODS: [&str; 3] = ["POST", "PUT", "GET"];
const MEDIA: [&str; 4] = [
    "application/json",
    "text/event-stream",
    "text/plain; charset=utf-8",
    "image/png",
];

fn pipeline() -> &'static ScanPipeline {
    static P: OnceLock<ScanPipeline> = OnceLock::new();
    P.get_or_init(|| {
        ScanPipeline::new(ScanConfig {
            mode: Mode::Strict,
            // Only the absolute cap: the ratio check depends on how much
            // input has arrived, so it may (by design) fire for one
            // chunking and not another.
            decode_limits: DecodeLimits {
                max_output: 256 << 10,
                max_ratio: u64::MAX,
                ratio_min_output: u64::MAX,
            },
            max_sse_event: 4096,
            ..ScanConfig::default()
        })
        .expect("pipeline")
    })
}

fn conn() -> Arc<ConnMeta> {
    static C: OnceLock<Arc<ConnMeta>> = OnceLock::new();
    Arc::clone(C.get_or_init(|| {
        Arc::new(ConnMeta {
            id: 1,
            listener: Listener::Transparent,
            peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
            orig_dst: Some(SocketAddr::from(([127, 0, 0, 1], 443))),
            attribution: None,
            verified_name: None,
        })
    }))
}

struct Case<'a> {
    request: http::request::Parts,
    response: http::response::Parts,
    req_body: Vec<u8>,
    resp_body: Vec<u8>,
    sizes: &'a [u8],
}

/// (request blocked, response blocked) with bodies cut into `pieces`.
fn run(case: &Case<'_>, split: bool) -> (bool, bool) {
    let cut = |b: &[u8]| -> Vec<Vec<u8>> {
        if split {
            common::chunks(b, case.sizes)
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect()
        } else {
            vec![b.to_vec()]
        }
    };
    let mut ex = pipeline().exchange(&conn());
    let mut req_blocked = ex.request_filter(&case.request).is_block();
    let pieces = cut(&case.req_body);
    if pieces.is_empty() {
        req_blocked |= ex.request_body_filter(&[], true).is_block();
    }
    for (i, p) in pieces.iter().enumerate() {
        req_blocked |= ex.request_body_filter(p, i + 1 == pieces.len()).is_block();
    }
    let mut resp_blocked = ex.response_filter(&case.response).is_block();
    let pieces = cut(&case.resp_body);
    if pieces.is_empty() {
        resp_blocked |= ex.response_body_filter(&[], true).is_block();
    }
    for (i, p) in pieces.iter().enumerate() {
        resp_blocked |= ex.response_body_filter(p, i + 1 == pieces.len()).is_block();
    }
    ex.logging(&Default::default());
    (req_blocked, resp_blocked)
}

fn split3(p: &[u8]) -> [&[u8]; 3] {
    let sep = b"\n--\n";
    let mut parts = [&p[..0]; 3];
    let mut rest = p;
    for slot in parts.iter_mut().take(2) {
        match rest.windows(sep.len()).position(|w| w == sep) {
            Some(i) => {
                *slot = &rest[..i];
                rest = &rest[i + sep.len()..];
            }
            None => {
                *slot = rest;
                rest = &rest[rest.len()..];
            }
        }
    }
    parts[2] = rest;
    parts
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (head, data) = data.split_at(3);
    let (sizes, payload) = common::plan(data);
    let [req_body, resp_body, extra] = split3(payload);
    let method = METHODS[usize::from(head[0] % 3)];
    let (req_coding, req_ce) = CODINGS[usize::from((head[0] / 3) % 5)];
    let media = MEDIA[usize::from(head[1] % 4)];
    let (resp_coding, resp_ce) = CODINGS[usize::from((head[1] / 4) % 5)];
    let mut request = http::Request::builder()
        .method(method)
        .uri("https://api.example.com/v1/upload?q=1")
        .header("content-type", "application/json");
    if !req_ce.is_empty() {
        request = request.header("content-encoding", req_ce);
    }
    if let Ok(v) = http::HeaderValue::from_bytes(extra) {
        request = request.header("x-fuzz", v);
    }
    let mut response = http::Response::builder()
        .status(200)
        .header("content-type", media);
    if !resp_ce.is_empty() {
        response = response.header("content-encoding", resp_ce);
    }
    let case = Case {
        request: request.body(()).expect("request").into_parts().0,
        response: response.body(()).expect("response").into_parts().0,
        req_body: encode::encode(req_coding, req_body, head[2] & 1 == 1),
        resp_body: encode::encode(resp_coding, resp_body, head[2] & 2 == 2),
        sizes,
    };
    let whole = run(&case, false);
    let split = run(&case, true);
    assert_eq!(
        whole, split,
        "chunking changed a verdict (request, response)"
    );
});
