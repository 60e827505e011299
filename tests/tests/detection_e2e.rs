//! Detection end to end, one corpus case or more per class, through the real
//! agent under the kernel redirect: real clients in the cgroup (curl via
//! the corpus runner, Ruby Net::HTTP and Python requests directly), a
//! real TLS upstream on loopback recording what arrived. A blocked case
//! must not reach the upstream; a passed one must arrive as sent.
use std::time::Duration;

use pipelock_tests::{
    client::{self, Place},
    corpus::{self, Case, Expect},
    corpus_agent::{CorpusAgent, sendable},
    require_root,
};

/// Cases run through the agent: a true positive and a near miss of each
/// class (the destination ones the network rule lets us send).
const CASES: &[&str] = &[
    "headers-basic-token-as-password",
    "headers-cookie-pair-github",
    "headers-x-api-key-opaque-own-service",
    "bodies-yaml-password",
    "bodies-yaml-password-env-reference",
    "bodies-multipart-env-file",
    "encodings-hex-colon-aws",
    "encodings-base64-binary-blob-with-key",
    "encodings-sha256-in-url",
    "audience-openai-to-openai",
    "audience-openai-to-other",
    "audience-jwt-google-to-other",
    "identifiers-eth-eip55",
    "identifiers-eth-bad-eip55",
    "destination-pastebin-post",
    "destination-dns-exfil-base32-label",
    "destination-uuid-path",
    "injection-safety-reclassification",
    "injection-markdown-image-exfil",
    "injection-near-previous-instructions-shelf",
    "benign-aws-docs-example-keys",
    "benign-security-article-quoted-injection",
    "benign-response-with-github-token",
];

fn cases() -> Vec<Case> {
    let all = corpus::load_all(&corpus::corpus_dir()).expect("the corpus loads");
    CASES
        .iter()
        .map(|id| {
            all.iter()
                .find(|c| c.id == *id)
                .unwrap_or_else(|| panic!("no corpus case {id}"))
                .clone()
        })
        .collect()
}

fn tls_hosts(cases: &[Case]) -> Vec<String> {
    let mut h: Vec<String> = cases
        .iter()
        .filter(|c| c.request.tls)
        .map(|c| c.request.host.clone())
        .chain(["api.example.test".to_owned()])
        .collect();
    h.sort();
    h.dedup();
    h
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn each_class_through_the_agent_with_curl() {
    require_root();
    let cases = cases();
    let hosts = tls_hosts(&cases);
    let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let run = CorpusAgent::start("e2e", "strict", &names);
    let mut wrong = Vec::new();
    for case in &cases {
        assert!(sendable(case), "{} cannot be sent", case.id);
        let got = run
            .run(case)
            .unwrap_or_else(|e| panic!("{}: {e:#}", case.id));
        let want_block = case.expect == Expect::Block;
        if got.blocked != want_block {
            wrong.push(format!("{}: {got:?}", case.id));
            continue;
        }
        if want_block && case.response.is_none() {
            // Refused before anything went upstream.
            assert!(got.arrived.is_none(), "{} reached the upstream", case.id);
            assert!(
                matches!(got.status, Some(403 | 429)),
                "{}: {got:?}",
                case.id
            );
        } else {
            // What arrived is what the client sent.
            let a = got
                .arrived
                .unwrap_or_else(|| panic!("{}: nothing arrived", case.id));
            assert_eq!(a.method, case.request.method, "{}", case.id);
            assert_eq!(a.target, case.request.path, "{}", case.id);
            assert_eq!(a.body, case.request.body(&case.id).unwrap(), "{}", case.id);
            for (k, v) in &case.request.headers {
                assert!(
                    a.headers
                        .iter()
                        .any(|(hk, hv)| hk.eq_ignore_ascii_case(k) && hv == v),
                    "{}: header {k} not forwarded as sent",
                    case.id
                );
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "cases not as labelled through the agent:\n{}\nagent log:\n{}",
        wrong.join("\n"),
        run.agent.output()
    );
}

/// Ruby Net::HTTP (what Sure's own code uses) and Python requests, each
/// sending a provider key to its own host (passes) and to another (blocked).
#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn audience_with_ruby_and_python_clients() {
    require_root();
    let key = "sk-proj-Vb3Zq8LmN2xK7pR4tYw6cD1fG9hJ0aS5eU3iO8kL2mN4pQ6rT";
    let run = CorpusAgent::start("e2e-rb", "strict", &["api.openai.com", "api.example.test"]);
    let ca = run.agent_ca().display().to_string();
    let port = run.up.tls_addr.port().to_string();
    let ruby = r#"
require 'net/http'
require 'openssl'
host, port, ca, key = ARGV
http = Net::HTTP.new(host, port.to_i, nil)
http.ipaddr = '127.0.0.1'
http.use_ssl = true
http.ca_file = ca
req = Net::HTTP::Post.new('/v1/responses')
req['Authorization'] = "Bearer #{key}"
req['Content-Type'] = 'application/json'
req.body = '{"input":"hi"}'
print http.request(req).code
"#;
    let python = r#"
import socket, sys, requests
host, port, ca, key = sys.argv[1:]
real = socket.getaddrinfo
socket.getaddrinfo = lambda h, *a, **k: real('127.0.0.1' if h == host else h, *a, **k)
r = requests.post(f'https://{host}:{port}/v1/responses', headers={'Authorization': 'Bearer ' + key}, json={'input': 'hi'}, verify=ca)
print(r.status_code, end='')
"#;
    for (program, script_flag, script) in [("ruby", "-e", ruby), ("python3", "-c", python)] {
        for (host, want) in [("api.openai.com", "200"), ("api.example.test", "403")] {
            let before = run.up.count();
            let out = client::run(
                Place {
                    cgroup: Some(&run.cg),
                    netns: None,
                },
                program,
                &[script_flag, script, host, &port, &ca, key],
                Duration::from_secs(60),
            );
            assert_eq!(
                out.stdout.trim(),
                want,
                "{program} to {host}: {out:?}\nagent:\n{}",
                run.agent.output()
            );
            let arrived = run.up.seen().into_iter().skip(before).collect::<Vec<_>>();
            if want == "200" {
                assert_eq!(arrived.len(), 1, "{program} to {host}");
                assert!(
                    arrived[0]
                        .headers
                        .iter()
                        .any(|(k, v)| k == "authorization" && v.ends_with(key)),
                    "{program}: the key arrived changed"
                );
            } else {
                assert!(arrived.is_empty(), "{program}: the key reached {host}");
            }
        }
    }
}
