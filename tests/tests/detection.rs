//! The detection corpus (`tests/corpus/*.yaml`) through the scan pipeline in
//! strict mode, in process, as the listeners drive it: the connection's
//! metadata (verified TLS name, address connected to, listener), the request
//! head, its body, then the upstream's response head and body. No root, no
//! network. Every case must do what it expects; a case labelled
//! `known_miss` must still miss (so the label goes when it is fixed).
//! `cargo xtask bench detect` runs the same cases through the real agent.
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use pipelock_agent::{
    config,
    pipeline::{ConnMeta, Decision, Listener, Pipeline, ScanPipeline},
};
use pipelock_tests::corpus::{self, Case, CaseListener, Expect, Score};

fn strict_pipeline() -> ScanPipeline {
    let loaded = config::parse("mode: strict\n").expect("strict config parses");
    let cfg = pipelock_agent::run::scan_config(&loaded.config, Vec::new());
    ScanPipeline::new(cfg).expect("scan engine builds")
}

fn parts_request(case: &Case) -> anyhow::Result<http::request::Parts> {
    let r = &case.request;
    let uri = match (r.listener, r.tls) {
        (CaseListener::Forward, false) => format!("http://{}{}", r.host, r.path),
        _ => r.path.clone(),
    };
    let mut b = http::Request::builder().method(r.method.as_str()).uri(uri);
    if !r
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        b = b.header(http::header::HOST, r.host.as_str());
    }
    for (k, v) in &r.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    Ok(b.body(())?.into_parts().0)
}

fn parts_response(case: &Case) -> anyhow::Result<Option<(http::response::Parts, Vec<u8>)>> {
    let Some(resp) = &case.response else {
        return Ok(None);
    };
    let mut b = http::Response::builder().status(resp.status);
    for (k, v) in &resp.headers {
        b = b.header(k.as_str(), v.as_str());
    }
    Ok(Some((b.body(())?.into_parts().0, resp.body(&case.id)?)))
}

/// What the pipeline did with a case: `true` when it refused or cut.
fn blocked(pipeline: &ScanPipeline, case: &Case) -> anyhow::Result<bool> {
    let r = &case.request;
    let conn = Arc::new(ConnMeta {
        id: 1,
        listener: match r.listener {
            CaseListener::Transparent => Listener::Transparent,
            CaseListener::Forward => Listener::Forward,
        },
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        orig_dst: Some(r.connect_addr()),
        attribution: None,
        verified_name: r.tls.then(|| r.host.to_ascii_lowercase()),
    });
    if pipeline.refuse_connection(&conn) {
        return Ok(true);
    }
    let mut ex = pipeline.exchange(&conn);
    if ex.request_filter(&parts_request(case)?).is_block() {
        return Ok(true);
    }
    let body = r.body(&case.id)?;
    if ex.request_body_filter(&body, true).is_block() {
        return Ok(true);
    }
    if let Some((head, body)) = parts_response(case)? {
        if ex.response_filter(&head).is_block() {
            return Ok(true);
        }
        if matches!(ex.response_body_filter(&body, true), Decision::Block(_)) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[test]
fn corpus_in_strict_mode() {
    let cases = corpus::load_all(&corpus::corpus_dir()).expect("the corpus loads");
    let pipeline = strict_pipeline();
    let mut by_class: BTreeMap<String, Score> = BTreeMap::new();
    let mut wrong = Vec::new();
    let mut fixed_known_misses = Vec::new();
    // `DETECT_CASE=<part of an id>`: print the findings of those cases.
    let debug = std::env::var("DETECT_CASE").ok();
    for case in &cases {
        let _log = debug.as_deref().filter(|d| case.id.contains(d)).map(|_| {
            eprintln!("== {}", case.id);
            tracing::subscriber::set_default(
                tracing_subscriber::fmt()
                    .with_writer(std::io::stderr)
                    .with_max_level(tracing::Level::INFO)
                    .finish(),
            )
        });
        let got = match blocked(&pipeline, case) {
            Ok(b) => b,
            Err(e) => panic!("case {} ({}): {e:#}", case.id, case.file.display()),
        };
        let right = got == (case.expect == Expect::Block);
        by_class
            .entry(case.class.clone())
            .or_default()
            .add(case.expect, got);
        match (right, &case.known_miss) {
            (false, None) => wrong.push(format!(
                "{} [{}] expected {:?}, got {}",
                case.id,
                case.class,
                case.expect,
                if got { "block" } else { "pass" }
            )),
            (true, Some(_)) => fixed_known_misses.push(case.id.clone()),
            _ => {}
        }
    }
    eprintln!("{}", corpus::score_table(&by_class));
    assert!(
        wrong.is_empty(),
        "{} corpus case(s) not as labelled:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        fixed_known_misses.is_empty(),
        "these known_miss cases are caught now, remove their label: {fixed_known_misses:?}"
    );
}
