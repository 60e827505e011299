//! The `run` command: from the loaded config, resolve the cgroup, bind the
//! listeners, attach the kernel redirect, serve until SIGTERM/SIGINT, then
//! detach and drain. A config reload (SIGHUP, file change) builds a new
//! context and swaps it in; connections in flight keep the one they started with.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admin::{self, Admin, KillSwitch},
    cli::RunArgs,
    config::pipelock::{PatternSeverity, ResponseAction, WarnBlock},
    config::{self, Config, Loaded, reload},
    export::Exporter,
    k8s::node_mode::NodeMode,
    mcp::McpSettings,
    pipeline::{CustomPattern, ScanConfig, ScanPipeline, destination::DestPolicy},
    proxy::{
        LiveContext, ProxyContext, forward, hold::BodyHold, keepalive::IdleUpstreams,
        limits::ConnLimits, mcp as mcp_proxy, passthrough::PassthroughDomains, transparent,
        websocket::WsSettings,
    },
    redirect::{self, RedirectConfig, Redirector},
    scan::engine::known_secrets::KnownSecretsConfig,
    scan::engine::patterns::Severity,
    telemetry::metrics::Metrics,
    tls,
};

/// What `run` starts from: the file as loaded, and the flags laid over it
/// (again on every reload).
pub struct Start {
    pub loaded: Loaded,
    pub flags: RunArgs,
}

impl Start {
    /// The config in force: the file (or defaults) with the flags applied.
    pub fn effective(&self) -> Config {
        let mut cfg = self.loaded.config.clone();
        self.flags.apply(&mut cfg);
        cfg
    }
}

/// What `run` checks of the effective config before touching the system
/// (also `check-config` with flags): the kernel redirect needs an IPv4
/// `--redirect-addr`.
pub fn check_start_flags(cfg: &Config) -> anyhow::Result<()> {
    let redirect_addr = cfg.interceptor.redirect_addr;
    if let Some(sel) = &cfg.interceptor.pod_selector {
        sel.parse::<redirect::pods::Selector>()
            .context("--pod-selector (interceptor.pod_selector)")?;
    }
    if cfg.interceptor.cgroup.is_some() && !redirect_addr.is_ipv4() {
        bail!(
            "--redirect-addr {redirect_addr} must be an IPv4 address; use --redirect-addr6 for IPv6"
        );
    }
    Ok(())
}

/// Runs the agent until a termination signal.
pub async fn run(start: Start) -> anyhow::Result<()> {
    let cfg = start.effective();
    // With a pod selector the programs attach at the kubelet's cgroup root
    // (`--cgroup`, default the whole hierarchy) and cover only the
    // selected pods' containers.
    let pod_selector = cfg.interceptor.pod_selector.clone();
    let cgroup = cfg
        .interceptor
        .cgroup
        .clone()
        .or_else(|| pod_selector.as_ref().map(|_| "/".to_owned()));
    // Without a cgroup: a plain forward proxy (Pipelock's mode in Sure's
    // chart), on 127.0.0.1:8888 unless --listen says otherwise.
    let forward_listen = cfg.interceptor.forward_listen.or_else(|| {
        cgroup
            .is_none()
            .then(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8888)))
    });
    let redirect_addr = cfg.interceptor.redirect_addr;
    let mount = match &cgroup {
        Some(_) => redirect::cgroup2_mount()?,
        // Only interceptor.mode_overrides would need it (and fail without it).
        None => redirect::cgroup2_mount().unwrap_or_else(|_| PathBuf::from("/sys/fs/cgroup")),
    };
    check_start_flags(&cfg)?;
    let cgroup_dir = match &cgroup {
        Some(c) => {
            let dir = redirect::resolve_cgroup(&mount, c)?;
            redirect::check_privilege()?;
            Some(dir)
        }
        None => None,
    };
    // The API next: without it pod-selector mode cannot know what to
    // cover, nor node-label mode the mode.
    let node_mode_label = cfg.interceptor.node_mode_label.clone();
    let api = if pod_selector.is_some() || node_mode_label.is_some() {
        let node = cfg
            .interceptor
            .node_name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(crate::k8s::Error::NoNodeName)?;
        Some((crate::k8s::client().await?, node))
    } else {
        None
    };
    let kube = match (&pod_selector, &api) {
        (Some(sel), Some((client, node))) => {
            let selector: redirect::pods::Selector = sel.parse()?;
            Some((client.clone(), node.clone(), selector, sel.clone()))
        }
        _ => None,
    };
    let pod_index = Arc::new(redirect::pods::PodIndex::default());
    // The CA and trust store next: a bad CA file or upstream CA stops here.
    let tls = tls::load(&cfg).context("loading TLS material")?;
    // One registry for the agent's life: a reloaded pipeline keeps counting in it.
    let metrics = Arc::new(Metrics::new());
    // One kill switch too: its API and signal states outlive reloads.
    let kill_switch = Arc::new(KillSwitch::new(&cfg.kill_switch, Some(metrics.clone())));
    // One exporter too (emit is start-only); its sinks use the upstream trust store.
    let exporter = Arc::new(
        Exporter::start(
            &cfg.emit,
            Some(tls.client_config(crate::tls::AlpnOffer::Http11)),
            metrics.clone(),
        )
        .context("starting event export (emit)")?,
    );
    let pipeline = scan_pipeline(&cfg, &mount, &metrics, &kill_switch, &exporter)?;
    let mcp_settings = Arc::new(McpSettings::new(&cfg).context("the MCP config sections")?);
    let mcp = mcp_start(&cfg)?;
    // Installed early: SIGUSR1's default action would end the process.
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing SIGUSR1 handler")?;
    let admin = Arc::new(Admin::new(&cfg, metrics.clone(), kill_switch.clone()));
    let api_listener = match cfg
        .kill_switch
        .api_listen
        .as_deref()
        .filter(|a| !a.is_empty())
    {
        Some(addr) => Some(admin_listener("kill_switch.api_listen", addr).await?),
        None => None,
    };
    let metrics_listener = match cfg.metrics_listen.as_deref().filter(|a| !a.is_empty()) {
        Some(addr) => Some(admin_listener("metrics_listen", addr).await?),
        None => None,
    };

    // Listen before attaching, so no connection is ever sent to a dead port.
    let listen = if cgroup.is_some() {
        cfg.interceptor.listen_addrs()
    } else {
        Vec::new()
    };
    let listeners = transparent::bind(&listen).await?;
    let forward_listener = match forward_listen {
        Some(a) => Some(transparent::bind(&[a]).await?.remove(0)),
        None => None,
    };
    let mcp_listener = match &mcp {
        Some(m) => Some(transparent::bind(&[m.listen]).await?.remove(0)),
        None => None,
    };
    // The loop guard covers every listener of the agent.
    let mut own_addrs = listen.clone();
    own_addrs.extend(forward_listen);
    own_addrs.extend(mcp.as_ref().map(|m| m.listen));

    let bounds = Bounds {
        body_budget: BodyHold::budget(cfg.interceptor.body_hold_budget_bytes),
        ws_slots: WsSettings::slots_for(&cfg.websocket_proxy),
    };
    let live: Arc<LiveContext> = Arc::new(ArcSwap::from_pointee(context(
        &cfg,
        pipeline,
        mcp_settings,
        &own_addrs,
        tls.clone(),
        bounds,
    )));
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let nofile = crate::proxy::limits::raise_nofile();
    let limits = ConnLimits::new(
        cfg.interceptor.max_connections,
        cfg.interceptor.max_connections_per_pod,
    );
    // Each connection holds two descriptors (client, upstream): a cap above
    // what the descriptor limit allows would end in EMFILE for everyone.
    if nofile > 0 && (cfg.interceptor.max_connections as u64) * 2 + 64 > nofile {
        tracing::warn!(
            nofile,
            max_connections = cfg.interceptor.max_connections,
            "interceptor.max_connections needs more file descriptors than RLIMIT_NOFILE allows"
        );
    }
    let fwd = forward::Forward {
        admin: Arc::new(admin.clone()),
        metrics: metrics.clone(),
        tracker: tracker.clone(),
    };
    if let Some(l) = forward_listener {
        tokio::spawn(forward::serve(
            l,
            live.clone(),
            limits.clone(),
            metrics.clone(),
            fwd.clone(),
            shutdown.clone(),
        ));
        tracing::info!(
            listen = ?forward_listen,
            enabled = cfg.forward_proxy.enabled,
            "forward proxy listening (CONNECT, absolute-form HTTP, /health)"
        );
    }
    if let (Some(m), Some(l)) = (mcp, mcp_listener) {
        let listen = m.listen;
        let token = m.token.is_some();
        let upstream = m.upstream.authority.to_string();
        let proxy = Arc::new(mcp_proxy::McpProxy {
            upstream: m.upstream,
            state: Arc::default(),
            token: m.token,
            loopback: listen.ip().is_loopback(),
            metrics: metrics.clone(),
            tracker: tracker.clone(),
        });
        tokio::spawn(mcp_proxy::serve(
            l,
            live.clone(),
            limits.clone(),
            proxy,
            shutdown.clone(),
        ));
        tracing::info!(
            listen = %listen,
            upstream,
            token,
            "MCP reverse proxy listening (JSON-RPC over HTTP, /health)"
        );
        if !token && !listen.ip().is_loopback() {
            tracing::warn!(
                listen = %listen,
                "the MCP listener is reachable beyond loopback and has no token (--mcp-auth-token-file): anyone who can reach it can use the upstream's tools with their own credentials"
            );
        }
    }

    let mut redirector = match (&cgroup, &cgroup_dir) {
        (Some(cgroup), Some(cgroup_dir)) => {
            let IpAddr::V4(redirect_v4) = redirect_addr.ip() else {
                unreachable!("checked above");
            };
            // Only the ports the operator listed: a destination is never skipped
            // because its port number happens to be the agent's.
            let mut bypass_ports = cfg.interceptor.bypass_ports.clone();
            bypass_ports.sort_unstable();
            bypass_ports.dedup();
            crate::proxy::relay::set_socket_mark(cfg.interceptor.socket_mark);
            let redirect_cfg = RedirectConfig {
                cgroup_dir: cgroup_dir.clone(),
                redirect_v4,
                redirect_v6: cfg.interceptor.redirect_addr6,
                port: redirect_addr.port(),
                bypass_cidrs: cfg.interceptor.bypass_cidrs.clone(),
                deny_cidrs: cfg.interceptor.deny_cidrs.clone(),
                bypass_ports,
                udp_allow: cfg
                    .interceptor
                    .udp_allow
                    .iter()
                    .map(|a| (a.port, a.cidr))
                    .collect(),
                enforce: cfg.effective_mode() != crate::config::Mode::Audit,
                agent_mark: cfg.interceptor.socket_mark,
                fail_mode: cfg.interceptor.fail_mode,
                pin_dir: cfg.interceptor.pin_dir.clone(),
                target_filter: kube.is_some(),
            };
            let (mut redirector, table) = Redirector::attach(&redirect_cfg)
                .with_context(|| format!("attaching to cgroup {cgroup}"))?;
            admin.set_coverage(admin::status::Coverage {
                cgroup: cgroup.clone(),
                pod_selector: pod_selector.clone(),
                pods: pod_selector.as_ref().map(|_| pod_index.clone()),
                fail_mode: cfg.interceptor.fail_mode.as_str(),
            });
            let table: Arc<dyn transparent::OrigDsts> = match kube {
                Some((client, node, selector, selector_text)) => {
                    let targets = redirector
                        .take_targets()
                        .context("the kernel's covered-cgroup map is missing")?;
                    let watch = crate::k8s::pod_watch::PodWatch {
                        selector,
                        selector_text,
                        node,
                        root: cgroup_dir.clone(),
                        own_cgroup: crate::k8s::pod_watch::own_cgroup(&mount),
                        targets,
                        index: pod_index.clone(),
                    };
                    tokio::spawn(watch.run(client, shutdown.clone()));
                    Arc::new(transparent::PodAttributed {
                        inner: table,
                        pods: pod_index.clone(),
                    })
                }
                None => Arc::new(table),
            };
            admin.set_ebpf(Some(cgroup.clone()));
            for listener in listeners {
                tokio::spawn(transparent::serve(
                    listener,
                    table.clone(),
                    live.clone(),
                    limits.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                    tracker.clone(),
                    forward_listen.map(|a| (a, fwd.clone())),
                ));
            }
            tracing::info!(
                cgroup = %cgroup_dir.display(),
                pod_selector = pod_selector.as_deref(),
                redirect = %redirect_addr,
                redirect6 = ?cfg.interceptor.redirect_addr6,
                listen = ?listen,
                mode = cfg.effective_mode().as_str(),
                fail_mode = cfg.interceptor.fail_mode.as_str(),
                pins = redirector.pinned().map(|p| p.display().to_string()),
                config = start.loaded.path.as_ref().map(|p| p.display().to_string()),
                "pipelock-agent attached; intercepting"
            );
            Some(redirector)
        }
        _ => {
            tracing::info!(
                listen = ?forward_listen,
                mode = cfg.effective_mode().as_str(),
                config = start.loaded.path.as_ref().map(|p| p.display().to_string()),
                "no cgroup (--cgroup / interceptor.cgroup): plain forward proxy, no eBPF redirect loaded"
            );
            None
        }
    };

    // The node's say on the mode, watched and applied like a reload.
    let (node_mode_tx, mut node_mode_rx) = tokio::sync::watch::channel(NodeMode::default());
    let node_mode_on = match (&node_mode_label, &api) {
        (Some(key), Some((client, node))) => {
            let watch = crate::k8s::node_mode::NodeModeWatch {
                node: node.clone(),
                key: key.clone(),
                tx: node_mode_tx,
            };
            tokio::spawn(watch.run(client.clone(), shutdown.clone()));
            true
        }
        _ => false,
    };
    let mut reloads = match &start.loaded.path {
        Some(path) => {
            let initial = std::fs::read(path).unwrap_or_default();
            Some(reload::watch(path.clone(), &initial)?)
        }
        None => None,
    };
    let mut running = Running {
        notices: start.loaded.notices.clone(),
        node_mode: NodeMode::default(),
        base_mode: (cfg.mode, cfg.enforce),
        config: cfg,
    };
    admin.set_mode_source(mode_source(&start.flags, &running));
    let reloader = Reloader {
        flags: &start.flags,
        mount: &mount,
        listen: &own_addrs,
        tls: &tls,
        live: &live,
        metrics: &metrics,
        kill_switch: &kill_switch,
        exporter: &exporter,
    };
    if let Some(listener) = api_listener {
        tracing::info!(
            target: "pipelock::admin",
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "admin endpoints (/health, /metrics, kill switch API) listening"
        );
        tokio::spawn(admin::serve(listener, admin.clone(), admin::Endpoints::Api));
    }
    if let Some(listener) = metrics_listener {
        tracing::info!(
            target: "pipelock::admin",
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "metrics endpoints (/metrics, /stats, /health) listening; /metrics and /stats moved off the main listener"
        );
        tokio::spawn(admin::serve(
            listener,
            admin.clone(),
            admin::Endpoints::Metrics,
        ));
    }
    tokio::spawn(kill_switch.clone().watch_sentinel(shutdown.clone()));
    // `pipelock-agent status` reads this socket; a failure to bind it is
    // only a warning (everything else works without it).
    let status_socket = match admin::status::bind(&running.config.interceptor.state_dir) {
        Ok((listener, path)) => {
            tracing::info!(target: "pipelock::admin", socket = %path.display(), "status socket listening");
            tokio::spawn(admin::status::serve(
                listener,
                admin.clone(),
                shutdown.clone(),
            ));
            Some(path)
        }
        Err(e) => {
            tracing::warn!(target: "pipelock::admin", error = format!("{e:#}"), "no status socket");
            None
        }
    };
    let mut kernel_poll = tokio::time::interval(KERNEL_POLL);
    let mut kernel_counts = redirect::UnscannedCounts::default();
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); break; }
            _ = int.recv() => { tracing::info!("SIGINT received"); break; }
            _ = usr1.recv() => { kill_switch.toggle_signal(); }
            _ = kernel_poll.tick(), if redirector.is_some() => {
                if let Some(r) = redirector.as_mut() {
                    kernel_counts = count_kernel_unscanned(r.guard(), kernel_counts, &metrics);
                }
            }
            Some(r) = async { reloads.as_mut()?.recv().await }, if reloads.is_some() => {
                let before = live.load_full();
                apply_reload(r, &reloader, &mut running).await;
                after_swap(&before, &live, redirector.as_mut(), &admin, &start.flags, &running);
            }
            Ok(()) = node_mode_rx.changed(), if node_mode_on => {
                let node_mode = node_mode_rx.borrow_and_update().clone();
                let before = live.load_full();
                apply_node_mode(node_mode, &reloader, &mut running).await;
                after_swap(&before, &live, redirector.as_mut(), &admin, &start.flags, &running);
            }
        }
    }
    // fail_mode open: detach first, so from here on new connections of the
    // cgroup go direct. closed: the pinned programs stay (a rolling update
    // must not open a window); new connects fail until an agent is back.
    let pinned = redirector.as_ref().is_some_and(|r| r.pinned().is_some());
    let attached = redirector.is_some();
    drop(redirector);
    shutdown.cancel();
    tracker.close();
    if pinned {
        tracing::info!(
            open = tracker.len(),
            "stopping; the redirect stays pinned (fail_mode: closed); draining open connections"
        );
    } else if attached {
        tracing::info!(
            open = tracker.len(),
            "detached from cgroup; draining open connections"
        );
    } else {
        tracing::info!(open = tracker.len(), "draining open connections");
    }
    let drain = Duration::from_secs(running.config.interceptor.drain_seconds);
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(
            open = tracker.len(),
            "drain deadline passed; closing the rest"
        );
    }
    if let Some(path) = status_socket {
        let _ = std::fs::remove_file(path);
    }
    tracing::info!("stopped");
    Ok(())
}

/// The config in force and the notices already reported for it.
struct Running {
    config: Config,
    notices: Vec<config::Notice>,
    /// What the node's label says of the mode (laid over every config).
    node_mode: NodeMode,
    /// `mode` and `enforce` as the file and flags give them, before the
    /// node's mode is laid over.
    base_mode: (config::Mode, Option<bool>),
}

/// Where the mode in force comes from, for `/health` and `status`.
fn mode_source(flags: &RunArgs, running: &Running) -> String {
    if let Some(s) = &running.node_mode.source {
        return s.clone();
    }
    if flags.mode.is_some() {
        return "flag --mode".into();
    }
    "config".into()
}

/// After a reload or a node-mode change: the kernel guard follows the
/// mode, the admin endpoints the config (when a new context was swapped in).
fn after_swap(
    before: &Arc<ProxyContext>,
    live: &LiveContext,
    redirector: Option<&mut Redirector>,
    admin: &Admin,
    flags: &RunArgs,
    running: &Running,
) {
    if let Some(r) = redirector {
        let enforce = running.config.effective_mode() != crate::config::Mode::Audit;
        if let Err(e) = r.guard().set_enforce(enforce) {
            tracing::error!(error = %e, "could not switch the kernel guard for UDP and raw sockets");
        }
    }
    admin.reloaded(!Arc::ptr_eq(before, &live.load_full()), &running.config);
    admin.set_mode_source(mode_source(flags, running));
}

/// Lays the node's mode (if it names one) over `cfg`.
fn with_node_mode(mut cfg: Config, node_mode: &NodeMode) -> Config {
    if let Some(m) = node_mode.mode {
        cfg.mode = m;
        cfg.enforce = None;
    }
    cfg
}

/// Applies a change of the node's mode label: the running config with the
/// node's mode over it (or, when the node no longer names one, the
/// config's own mode again), swapped in as a reload is.
async fn apply_node_mode(node_mode: NodeMode, env: &Reloader<'_>, running: &mut Running) {
    // The config as the file and flags gave it, without the node's say.
    let mut base = running.config.clone();
    base.mode = running.base_mode.0;
    base.enforce = running.base_mode.1;
    let new = with_node_mode(base, &node_mode);
    let mode = new.effective_mode().as_str();
    // Logged once new connections get the mode (after the swap).
    if swap_in(new, "node-label", &[], env, running).await {
        tracing::info!(
            target: "pipelock::config",
            mode,
            source = node_mode.source.as_deref().unwrap_or("config"),
            "node mode changed"
        );
        running.node_mode = node_mode;
    }
}

/// What a reload needs besides the file: the flags laid over it, and what
/// the running agent keeps (cgroup mount, listeners, TLS, the live context
/// it swaps and the metrics registry).
struct Reloader<'a> {
    flags: &'a RunArgs,
    mount: &'a Path,
    listen: &'a [std::net::SocketAddr],
    tls: &'a Arc<tls::Tls>,
    live: &'a Arc<LiveContext>,
    metrics: &'a Arc<Metrics>,
    kill_switch: &'a Arc<KillSwitch>,
    exporter: &'a Arc<Exporter>,
}

/// Checks a reloaded file and swaps it in, or keeps the running config.
/// How often the kernel's unscannable-traffic counters are read into metrics.
const KERNEL_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Adds what the kernel counted since `last` to the metrics and logs what
/// audit mode let through; returns the new totals.
fn count_kernel_unscanned(
    guard: &mut redirect::KernelGuard,
    last: redirect::UnscannedCounts,
    metrics: &Metrics,
) -> redirect::UnscannedCounts {
    let now = guard.counts();
    let deltas = [
        ("udp", "refused", now.udp_refused, last.udp_refused),
        ("udp", "audited", now.udp_audited, last.udp_audited),
        ("socket", "refused", now.socket_refused, last.socket_refused),
        ("socket", "audited", now.socket_audited, last.socket_audited),
        (
            "destination",
            "refused",
            now.deny_refused,
            last.deny_refused,
        ),
        (
            "destination",
            "audited",
            now.deny_audited,
            last.deny_audited,
        ),
    ];
    for (kind, action, now, last) in deltas {
        let delta = now.saturating_sub(last);
        if delta == 0 {
            continue;
        }
        metrics.kernel_unscannable(kind, action, delta);
        // A denied destination audit let through was redirected: the agent
        // judged and logged that connection itself.
        if action == "audited" && kind != "destination" {
            tracing::warn!(
                target: "pipelock::conn",
                kind,
                count = delta,
                "unscannable traffic let through by the kernel in audit mode (UDP to a destination not in interceptor.udp_allow, or a raw/ICMP/MPTCP/SCTP socket); strict and balanced refuse it"
            );
        }
    }
    now
}

async fn apply_reload(r: reload::Reload, env: &Reloader<'_>, running: &mut Running) {
    let trigger = r.trigger.as_str();
    let loaded = match r.result {
        Ok(l) => l,
        Err(e) => {
            let (key, line) = e
                .invalid()
                .map_or((None, None), |i| (Some(i.key.clone()), i.line));
            tracing::error!(
                target: "pipelock::config",
                trigger,
                error = %e,
                key,
                line,
                mode = running.config.effective_mode().as_str(),
                "config reload refused; keeping the running config"
            );
            return;
        }
    };
    let mut new = loaded.config;
    env.flags.apply(&mut new);
    for key in reload::restart_only(&running.config, &new) {
        tracing::warn!(
            target: "pipelock::config",
            key,
            "config reload: {key} changed but only applies at start; needs restart (running value kept)"
        );
    }
    let new = reload::keep_start_only(&running.config, new);
    let base_mode = (new.mode, new.enforce);
    let new = with_node_mode(new, &running.node_mode);
    if swap_in(new, trigger, &loaded.notices, env, running).await {
        running.base_mode = base_mode;
        running.notices = loaded.notices;
    }
}

/// Builds the pipeline and context of `new` and swaps them in (new
/// connections use them), or logs why not and keeps the running ones.
/// True when swapped in.
async fn swap_in(
    new: Config,
    trigger: &str,
    notices: &[config::Notice],
    env: &Reloader<'_>,
    running: &mut Running,
) -> bool {
    let Reloader {
        flags: _,
        mount,
        listen,
        tls,
        live,
        metrics,
        kill_switch,
        exporter,
    } = *env;
    let (cfg, mnt, metrics, ks, ex) = (
        new.clone(),
        mount.to_path_buf(),
        metrics.clone(),
        kill_switch.clone(),
        exporter.clone(),
    );
    let built =
        tokio::task::spawn_blocking(move || scan_pipeline(&cfg, &mnt, &metrics, &ks, &ex)).await;
    let pipeline = match built {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::error!(
                target: "pipelock::config",
                trigger,
                error = format!("{e:#}"),
                "config reload refused; keeping the running config"
            );
            return false;
        }
        Err(e) => {
            tracing::error!(target: "pipelock::config", error = %e, "config reload failed");
            return false;
        }
    };
    let mcp = match McpSettings::new(&new) {
        Ok(m) => Arc::new(m),
        Err(e) => {
            tracing::error!(
                target: "pipelock::config",
                trigger,
                error = %e,
                "config reload refused; keeping the running config"
            );
            return false;
        }
    };
    let bounds = {
        let old = live.load();
        Bounds {
            body_budget: old.body_hold.budget.clone(),
            ws_slots: old.websocket.slots.clone(),
        }
    };
    live.store(Arc::new(context(
        &new,
        pipeline,
        mcp,
        listen,
        tls.clone(),
        bounds,
    )));
    for n in notices.iter().filter(|n| !running.notices.contains(n)) {
        tracing::warn!(target: "pipelock::config", key = %n.path, line = n.line, "{}", n.note);
    }
    tracing::info!(
        target: "pipelock::config",
        trigger,
        mode = new.effective_mode().as_str(),
        "config reloaded; new connections use it"
    );
    running.config = new;
    true
}

/// Budgets shared by every connection that a reload keeps (what is in use
/// stays counted; their sizes are start-only keys).
struct Bounds {
    /// `interceptor.body_hold_budget_bytes`.
    body_budget: Arc<tokio::sync::Semaphore>,
    /// `websocket_proxy.max_concurrent_connections`.
    ws_slots: Arc<tokio::sync::Semaphore>,
}

/// The per-connection context a config describes.
fn context(
    cfg: &Config,
    pipeline: ScanPipeline,
    mcp: Arc<McpSettings>,
    listen: &[std::net::SocketAddr],
    tls: Arc<tls::Tls>,
    bounds: Bounds,
) -> ProxyContext {
    let i = &cfg.interceptor;
    ProxyContext {
        pipeline: Arc::new(pipeline),
        non_http: i.non_http,
        non_http_relay: crate::proxy::NonHttpRelay {
            ports: i.non_http_relay_ports.clone(),
            cidrs: i.non_http_relay_cidrs.clone(),
        },
        self_addrs: listen.to_vec(),
        connect_timeout: Duration::from_secs(i.connect_timeout_seconds.max(1)),
        tls,
        passthrough: PassthroughDomains::new(cfg.passthrough_domains()),
        passthrough_verified: Default::default(),
        sniff_timeout: Duration::from_millis(i.sniff_timeout_ms.max(1)),
        log_allowed: cfg.logging.include_allowed,
        header_read_timeout: Duration::from_secs(i.header_read_timeout_seconds.max(1)),
        upstream_response_timeout: Duration::from_secs(i.upstream_response_timeout_seconds.max(1)),
        relay_idle: Duration::from_secs(i.relay_idle_timeout_seconds.max(1)),
        relay_max: (i.relay_max_seconds > 0).then(|| Duration::from_secs(i.relay_max_seconds)),
        websocket: Arc::new(WsSettings::with_slots(
            &cfg.websocket_proxy,
            bounds.ws_slots,
        )),
        forward: Arc::new(crate::proxy::forward::ForwardSettings::new(
            &cfg.forward_proxy,
        )),
        mcp,
        body_hold: Arc::new(BodyHold {
            max_body: cfg.request_body_scanning.max_body_bytes,
            budget: bounds.body_budget,
            budget_wait: Duration::from_millis(i.body_hold_wait_ms),
            idle: Duration::from_secs(i.body_idle_timeout_seconds.max(1)),
        }),
        upstreams: (i.upstream_keepalive > 0).then(|| {
            IdleUpstreams::shared(
                i.upstream_keepalive,
                Duration::from_secs(i.upstream_keepalive_seconds.max(1)),
            )
        }),
    }
}

/// The scan settings a config describes; `subtrees` are the resolved
/// `interceptor.mode_overrides`.
pub fn scan_config(cfg: &Config, subtrees: Vec<(PathBuf, config::Mode)>) -> ScanConfig {
    let defaults = ScanConfig::default();
    let i = &cfg.interceptor;
    let mut files = i.known_secret_files.clone();
    files.extend(cfg.dlp.secrets_file.iter().cloned());
    ScanConfig {
        mode: cfg.effective_mode(),
        cgroup_subtrees: subtrees,
        known_secrets: KnownSecretsConfig {
            env: i.known_secret_env.clone(),
            files,
            min_len: cfg.dlp.min_env_secret_length,
        },
        max_sse_event: cfg
            .response_scanning
            .sse_streaming
            .max_event_bytes
            .max(1024),
        response_injection: cfg.response_scanning.enabled,
        request_body: cfg.request_body_scanning.enabled,
        request_headers: cfg.request_body_scanning.scan_headers,
        custom_dlp: cfg
            .dlp
            .patterns
            .iter()
            .map(|p| CustomPattern {
                name: p.name.clone(),
                regex: p.regex.clone(),
                severity: match p.severity {
                    PatternSeverity::Low => Severity::Low,
                    PatternSeverity::Medium => Severity::Medium,
                    PatternSeverity::High => Severity::High,
                    PatternSeverity::Critical => Severity::Critical,
                },
                exempt_domains: p.exempt_domains.clone(),
            })
            .collect(),
        request_section_blocks: cfg.request_body_scanning.action == WarnBlock::Block,
        response_section_blocks: cfg.response_scanning.action == ResponseAction::Block,
        mcp_input: cfg.mcp_input_scanning.enabled,
        mcp_input_section_blocks: cfg.mcp_input_scanning.action == WarnBlock::Block,
        destination: DestPolicy {
            trusted_domains: cfg.trusted_domains.clone(),
            ..DestPolicy::default()
        },
        rate_limit: cfg.interceptor.rate_limit,
        ..defaults
    }
}

/// Builds the one scan pipeline every listener shares.
fn scan_pipeline(
    cfg: &Config,
    mount: &Path,
    metrics: &Arc<Metrics>,
    kill_switch: &Arc<KillSwitch>,
    exporter: &Arc<Exporter>,
) -> anyhow::Result<ScanPipeline> {
    // Each override covers its cgroup's whole subtree (containers live in
    // leaf cgroups below the pod's); a missing cgroup is an error here.
    let mut subtrees = Vec::new();
    for (path, mode) in &cfg.interceptor.mode_overrides {
        let dir: PathBuf = redirect::resolve_cgroup(mount, path)
            .with_context(|| format!("interceptor.mode_overrides {path}"))?;
        subtrees.push((dir, *mode));
    }
    let started = std::time::Instant::now();
    let pipeline = ScanPipeline::with_metrics(scan_config(cfg, subtrees), metrics.clone())
        .context("building the scan engine")?
        .with_kill_switch(kill_switch.clone())
        .with_exporter(exporter.clone());
    tracing::info!(
        mode = cfg.effective_mode().as_str(),
        compile_ms = started.elapsed().as_millis() as u64,
        "scan engine ready"
    );
    Ok(pipeline)
}

/// The MCP listener's start-only settings.
struct McpStart {
    listen: std::net::SocketAddr,
    upstream: mcp_proxy::UpstreamUrl,
    token: Option<Vec<u8>>,
}

/// `--mcp-listen`, `--mcp-upstream`, `--mcp-auth-token-file`: none, or all
/// that is needed to start the listener (a listener without an upstream, a
/// bad URL or an unreadable or empty token file stop the start).
fn mcp_start(cfg: &Config) -> anyhow::Result<Option<McpStart>> {
    let i = &cfg.interceptor;
    let Some(url) = i.mcp_upstream.as_deref() else {
        if let Some(l) = i.mcp_listen {
            bail!("--mcp-listen {l} needs --mcp-upstream (interceptor.mcp_upstream)");
        }
        return Ok(None);
    };
    let upstream = mcp_proxy::UpstreamUrl::parse(url)?;
    let token = match &i.mcp_auth_token_file {
        Some(path) => {
            let raw = std::fs::read(path)
                .with_context(|| format!("--mcp-auth-token-file {}", path.display()))?;
            let t = raw.trim_ascii().to_vec();
            if t.is_empty() {
                bail!(
                    "--mcp-auth-token-file {}: the file is empty",
                    path.display()
                );
            }
            Some(t)
        }
        None => None,
    };
    Ok(Some(McpStart {
        listen: i
            .mcp_listen
            .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 8889))),
        upstream,
        token,
    }))
}

/// Binds an admin listener at `addr` (`host:port`, or `:port` for every
/// address), for the config key `key`.
async fn admin_listener(key: &str, addr: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let full = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_owned()
    };
    tokio::net::TcpListener::bind(&full)
        .await
        .with_context(|| format!("{key} {addr}: cannot listen"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_domains_exempt_a_verified_name_from_the_metadata_check() {
        let metadata = Some("169.254.169.254".parse().expect("an address"));
        let plain = config::parse("mode: strict\n").expect("parses");
        let dest = scan_config(&plain.config, Vec::new()).destination;
        assert!(
            !dest
                .check(metadata, Some("imds.corp.test"), "imds.corp.test", "/")
                .is_empty()
        );
        let trusting =
            config::parse("mode: strict\ntrusted_domains: [\"corp.test\"]\n").expect("parses");
        let dest = scan_config(&trusting.config, Vec::new()).destination;
        assert!(
            dest.check(metadata, Some("imds.corp.test"), "imds.corp.test", "/")
                .is_empty()
        );
        // Only the verified name counts, never the Host the client wrote.
        assert!(!dest.check(metadata, None, "imds.corp.test", "/").is_empty());
    }
}
