//! Config loading: the file Sure's chart renders and its variants, every
//! kind of bad file (key and line named), notices, and the defaults file.
use super::*;

/// `charts/sure` rendered with every value at its default (a copy of
/// shared/reference/sure-chart-pipelock.yaml).
const CHART: &str = include_str!("testdata/sure-chart.yaml");

fn ok(text: &str) -> Loaded {
    parse(text).unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

fn bad(text: &str) -> Invalid {
    match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

#[test]
fn sure_chart_default_file_loads() {
    let l = ok(CHART);
    let c = &l.config;
    assert_eq!(c.mode, Mode::Balanced);
    assert!(c.forward_proxy.enabled);
    assert_eq!(c.forward_proxy.idle_timeout_seconds, 60);
    assert!(c.mcp_input_scanning.enabled);
    assert_eq!(c.request_body_scanning.max_body_bytes, 5_242_880);
    assert_eq!(c.logging.format, LogFormat::Json);
    assert!(!c.logging.include_allowed);
    // What the agent does not do yet is said, with lines.
    // forward_proxy is implemented now: no notice for it.
    assert!(
        !l.notices
            .iter()
            .any(|n| n.path.starts_with("forward_proxy"))
    );
    assert!(
        l.notices
            .iter()
            .any(|n| n.path == "health_watchdog.enabled")
    );
    // Keys at values the agent honours are not news.
    assert!(!l.notices.iter().any(|n| n.path == "dlp.include_defaults"));
    assert!(
        !l.notices
            .iter()
            .any(|n| n.path == "mcp_tool_policy.enabled")
    );
    let lines: Vec<usize> = l.notices.iter().map(|n| n.line).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
}

#[test]
fn chart_variants_load() {
    for (mode, want) in [("strict", Mode::Strict), ("audit", Mode::Audit)] {
        let text = CHART.replace("mode: balanced", &format!("mode: {mode}"));
        assert_eq!(ok(&text).config.mode, want);
    }
    let text = CHART.replace(
        "# trusted_domains: [\"api.openai.com\"]",
        "trusted_domains: [\"api.openai.com\"]",
    );
    let l = ok(&text);
    assert_eq!(l.config.trusted_domains, vec!["api.openai.com".to_owned()]);
    assert!(
        !l.notices.iter().any(|n| n.path == "trusted_domains"),
        "trusted_domains is acted on"
    );

    let policy = CHART.replace(
        "mcp_tool_policy:\n  enabled: false                  # mcpToolPolicy.enabled; when rules are given:\n  action: warn\n",
        "mcp_tool_policy:\n  enabled: true\n  action: warn\n  rules:\n    - name: \"no-shell\"\n      tool_pattern: \"exec_.*\"\n      arg_pattern: \"rm -rf\"\n      arg_key: \"command\"\n      action: \"block\"\n  redirect_profiles:\n    safe:\n      exec: [\"/bin/true\"]\n      reason: sandboxed\n",
    );
    assert_ne!(policy, CHART, "the chart's mcp_tool_policy block moved");
    let l = ok(&policy);
    let rules = &l.config.mcp_tool_policy.rules;
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].action, Some(pipelock::PolicyAction::Block));
    assert_eq!(rules[0].arg_key.as_deref(), Some("command"));
    assert!(
        l.config
            .mcp_tool_policy
            .redirect_profiles
            .contains_key("safe")
    );

    // pipelock.extraConfig is appended verbatim.
    let extra = format!(
        "{CHART}session_profiling:\n  enabled: true\n  max_sessions: 1000\nemit:\n  webhook:\n    url: https://hooks.example/x\n"
    );
    let l = ok(&extra);
    assert!(l.config.session_profiling.enabled);
    assert_eq!(
        l.config.emit.webhook.as_ref().map(|w| w.url.as_str()),
        Some("https://hooks.example/x")
    );
    assert!(!l.notices.iter().any(|n| n.path == "emit"));
    assert!(
        l.notices
            .iter()
            .any(|n| n.path == "session_profiling.enabled")
    );
}

#[test]
fn unknown_keys_name_path_and_line() {
    let e = bad("version: 1\nmode: strict\nlogging_level: debug\n");
    assert_eq!((e.key.as_str(), e.line), ("logging_level", Some(3)));
    assert!(e.message.starts_with("unknown key"), "{e}");
    let e = bad(&CHART.replace("idle_timeout_seconds: 60", "idle_timeout_secs: 60"));
    assert_eq!(
        e.to_string().split(" (").next().unwrap(),
        "forward_proxy.idle_timeout_secs: unknown key"
    );
    assert_eq!(e.line, Some(10));
    assert!(e.to_string().ends_with("at line 10"), "{e}");
    let e = bad("dlp:\n  patterns:\n    - name: x\n      regex: abc\n      sevrity: high\n");
    assert_eq!(
        (e.key.as_str(), e.line),
        ("dlp.patterns[0].sevrity", Some(5))
    );
    let e = bad("interceptor:\n  cgroups: /sure\n");
    assert_eq!((e.key.as_str(), e.line), ("interceptor.cgroups", Some(2)));
}

#[test]
fn wrong_types_and_values_name_path_and_line() {
    let e = bad("forward_proxy:\n  enabled: true\n  max_tunnel_seconds: forever\n");
    assert_eq!(
        (e.key.as_str(), e.line),
        ("forward_proxy.max_tunnel_seconds", Some(3))
    );
    let e = bad("version: 1\nmode: paranoid\n");
    assert_eq!((e.key.as_str(), e.line), ("mode", Some(2)));
    assert!(e.message.contains("strict"), "{e}");
    let e = bad("tls_interception:\n  cert_ttl: 24 hours please\n");
    assert_eq!(
        (e.key.as_str(), e.line),
        ("tls_interception.cert_ttl", Some(2))
    );
    assert!(e.message.starts_with("bad duration"), "{e}");
    assert_eq!(
        ok("tls_interception:\n  cert_ttl: 1h30m\n")
            .config
            .tls_interception
            .cert_ttl,
        Duration::from_secs(5400)
    );
    let e = bad("version: 2\n");
    assert_eq!((e.key.as_str(), e.line), ("version", Some(1)));
    let e = bad("interceptor:\n  redirect_addr: \"[::1]:15001\"\n");
    assert_eq!(e.key, "interceptor.redirect_addr");
    let e = bad("interceptor:\n  bypass_cidrs: [10.0.0.0/33]\n");
    assert_eq!(
        (e.key.as_str(), e.line),
        ("interceptor.bypass_cidrs[0]", Some(2))
    );
    let e = bad("interceptor:\n  mode_overrides:\n    sure/worker: strict\n");
    assert_eq!(e.line, Some(3), "{e}");
    let e = bad("dlp:\n  patterns:\n    - name: broken\n      regex: \"(unclosed\"\n");
    assert_eq!((e.key.as_str(), e.line), ("dlp.patterns[0].regex", Some(4)));
    let e = bad("interceptor:\n  ca_cert: /x.pem\n");
    assert_eq!((e.key.as_str(), e.line), ("interceptor.ca_cert", Some(2)));
    let e = bad("mode: strict\nmode: audit\n");
    assert!(e.message.contains("duplicate"), "{e}");
    let e = bad("mode: strict\n---\nmode: audit\n");
    assert!(e.message.contains("more than one document"), "{e}");
    let e = bad("forward_proxy: [1, 2]\n");
    assert_eq!((e.key.as_str(), e.line), ("forward_proxy", Some(1)));
}

#[test]
fn unreadable_file_says_which() {
    let path = std::env::temp_dir().join("pipelock-no-such-config.yaml");
    let e = load(&path).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(
        e.to_string().contains("pipelock-no-such-config.yaml"),
        "{e}"
    );
}

#[test]
fn empty_file_is_the_defaults() {
    assert_eq!(ok("").config, Config::default());
    assert_eq!(ok("# nothing\n").config, Config::default());
}

#[test]
fn interceptor_section_and_derived_settings() {
    let l = ok(
        "mode: strict\nenforce: false\ninterceptor:\n  cgroup: /sure\n  mode_overrides:\n    /sure/worker: audit\n  passthrough_domains: [\"*.bank.example\"]\n  bypass_cidrs: [10.96.0.0/12]\ntls_interception:\n  passthrough_domains: [\"*.bank.example\", \"plaid.com\"]\n  ca_cert: /ca/tls.crt\n  ca_key: /ca/tls.key\n",
    );
    let c = &l.config;
    assert_eq!(c.effective_mode(), Mode::Audit);
    assert_eq!(c.interceptor.cgroup.as_deref(), Some("/sure"));
    assert_eq!(c.interceptor.mode_overrides["/sure/worker"], Mode::Audit);
    assert_eq!(c.passthrough_domains(), vec!["*.bank.example", "plaid.com"]);
    assert_eq!(
        c.ca_settings().ca_cert.as_deref(),
        Some(Path::new("/ca/tls.crt"))
    );
}

#[test]
fn defaults_file_is_complete_and_is_the_defaults() {
    let l = ok(DEFAULTS_YAML);
    assert_eq!(l.config, Config::default());
    // Every key that has a default value is written out in the file.
    let lines = KeyLines::index(DEFAULTS_YAML);
    let value = serde_yaml::to_value(Config::default()).unwrap();
    let mut missing = Vec::new();
    fn walk(v: &serde_yaml::Value, path: String, lines: &KeyLines, missing: &mut Vec<String>) {
        if let serde_yaml::Value::Mapping(m) = v {
            for (k, v) in m {
                let k = k.as_str().unwrap();
                let p = if path.is_empty() {
                    k.to_owned()
                } else {
                    format!("{path}.{k}")
                };
                if v.is_null() {
                    continue;
                }
                if !lines.contains(&p) {
                    missing.push(p.clone());
                }
                walk(v, p, lines, missing);
            }
        }
    }
    walk(&value, String::new(), &lines, &mut missing);
    assert!(missing.is_empty(), "not in defaults.yaml: {missing:?}");
}

#[test]
fn emit_section_is_read_and_checked() {
    let l = ok(
        "emit:\n  instance_id: n1\n  webhook:\n    url: https://hooks.example/x\n  syslog:\n    address: tcp://logs.example:6514\n    facility: local3\n  otlp:\n    endpoint: http://otel:4318\n    gzip: true\n",
    );
    let e = &l.config.emit;
    assert_eq!(e.instance_id.as_deref(), Some("n1"));
    let w = e.webhook.as_ref().unwrap();
    assert_eq!((w.timeout_seconds, w.queue_size), (5, 64));
    assert_eq!(w.min_severity, super::emit::EventSeverity::Warn);
    let s = e.syslog.as_ref().unwrap();
    assert_eq!(
        s.target().unwrap(),
        (
            super::emit::SyslogTransport::Tcp,
            "logs.example:6514".to_owned()
        )
    );
    assert_eq!(s.tag, "pipelock");
    let o = e.otlp.as_ref().unwrap();
    assert_eq!(o.logs_url(), "http://otel:4318/v1/logs");
    assert_eq!(o.queue_size, 256);
    for (text, key) in [
        ("emit:\n  webhook:\n    url: ftp://x/\n", "emit.webhook.url"),
        (
            "emit:\n  syslog:\n    address: quic://x:1\n",
            "emit.syslog.address",
        ),
        ("emit:\n  syslog:\n    address: x\n", "emit.syslog.address"),
        (
            "emit:\n  syslog:\n    address: x:514\n    facility: local9\n",
            "emit.syslog.facility",
        ),
        (
            "emit:\n  otlp:\n    endpoint: http://o\n    queue_size: 0\n",
            "emit.otlp.queue_size",
        ),
        (
            "emit:\n  webhook:\n    url: http://x/\n    retries: 3\n",
            "emit.webhook.retries",
        ),
    ] {
        let e = parse(text).expect_err(text);
        assert_eq!(e.key, key, "{text}");
    }
}

/// Found by the config fuzz target: a text whose last line has no line
/// break and holds a bad key was reported one line past its end.
#[test]
fn an_error_on_an_unterminated_last_line_names_that_line() {
    let e = parse("mode: strict\nwebsocket_proxy:\n  enabled: true\n  y pipe").unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
}

#[test]
fn redirect_profiles_need_a_program() {
    let base = "mcp_tool_policy:\n  enabled: true\n  rules:\n    - name: r\n      tool_pattern: x\n      action: redirect\n      redirect_profile: safe\n  redirect_profiles:\n    safe:\n";
    let e = bad(&format!("{base}      exec: []\n"));
    assert_eq!(e.key, "mcp_tool_policy.redirect_profiles.safe.exec");
    let e = bad(&format!(
        "{base}      exec: [\"handler\"]\n      match_abs_path: true\n"
    ));
    assert_eq!(e.key, "mcp_tool_policy.redirect_profiles.safe.exec");
    assert!(e.to_string().contains("not absolute"), "{e}");
    let l = ok(&format!(
        "{base}      exec: [\"/usr/bin/handler\", \"--safe\"]\n      match_abs_path: true\n      preserve_argv: true\n"
    ));
    assert!(l.config.mcp_tool_policy.redirect_profiles["safe"].preserve_argv);
    assert!(
        !l.notices
            .iter()
            .any(|n| n.path.starts_with("mcp_tool_policy")),
        "redirect is acted on: {:?}",
        l.notices
    );
}
