//! The `run` command: resolve the cgroup, bind the listeners, attach the
//! kernel redirect, serve until SIGTERM/SIGINT, then detach and drain.
use std::{net::IpAddr, os::unix::fs::MetadataExt, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    cli::RunArgs,
    pipeline::{ScanConfig, ScanPipeline},
    proxy::{ProxyContext, passthrough::PassthroughDomains, transparent},
    redirect::{self, RedirectConfig, Redirector},
    scan::engine::known_secrets::KnownSecretsConfig,
    tls,
};

/// Runs the agent until a termination signal.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let Some(cgroup) = args.cgroup.as_deref() else {
        bail!("missing --cgroup: the cgroup v2 path to intercept, e.g. --cgroup /sure");
    };
    let IpAddr::V4(redirect_v4) = args.redirect_addr.ip() else {
        bail!(
            "--redirect-addr {} must be an IPv4 address; use --redirect-addr6 for IPv6",
            args.redirect_addr
        );
    };
    let mount = redirect::cgroup2_mount()?;
    let cgroup_dir = redirect::resolve_cgroup(&mount, cgroup)?;
    redirect::check_privilege()?;
    // The CA and trust store next: a bad --ca-cert or --upstream-ca stops here.
    let tls = tls::load(&args.ca.settings(), args.upstream_ca.as_deref())
        .context("loading TLS material")?;

    let pipeline = scan_pipeline(&args, &mount)?;

    // Listen before attaching, so no connection is ever sent to a dead port.
    let listen = args.listen_addrs();
    let listeners = transparent::bind(&listen).await?;

    let mut bypass_ports = args.bypass_ports.clone();
    bypass_ports.extend(listen.iter().map(|a| a.port()));
    bypass_ports.push(args.redirect_addr.port());
    bypass_ports.sort_unstable();
    bypass_ports.dedup();
    let cfg = RedirectConfig {
        cgroup_dir: cgroup_dir.clone(),
        redirect_v4,
        redirect_v6: args.redirect_addr6,
        port: args.redirect_addr.port(),
        bypass_cidrs: args.bypass_cidrs.clone(),
        bypass_ports,
    };
    let (redirector, table) =
        Redirector::attach(&cfg).with_context(|| format!("attaching to cgroup {cgroup}"))?;
    let table = Arc::new(table);

    let ctx = Arc::new(ProxyContext {
        pipeline: Arc::new(pipeline),
        non_http: args.non_http,
        self_addrs: listen.clone(),
        connect_timeout: Duration::from_secs(10),
        tls,
        passthrough: PassthroughDomains::new(&args.passthrough_domains),
        sniff_timeout: Duration::from_millis(500),
    });
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    for listener in listeners {
        tokio::spawn(transparent::serve(
            listener,
            table.clone(),
            ctx.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    tracing::info!(
        cgroup = %cgroup_dir.display(),
        redirect = %args.redirect_addr,
        redirect6 = ?args.redirect_addr6,
        listen = ?listen,
        "pipelock-agent attached; intercepting"
    );

    wait_for_signal().await?;
    // Detach first: from here on new connections of the cgroup go direct.
    drop(redirector);
    shutdown.cancel();
    tracker.close();
    tracing::info!(
        open = tracker.len(),
        "detached from cgroup; draining open connections"
    );
    if tokio::time::timeout(Duration::from_secs(args.drain_seconds), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "drain deadline passed; closing the rest"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Builds the one scan pipeline every listener shares, from the flags.
fn scan_pipeline(args: &RunArgs, mount: &std::path::Path) -> anyhow::Result<ScanPipeline> {
    let mut cgroup_modes = std::collections::HashMap::new();
    for (path, mode) in &args.mode_overrides {
        let dir = redirect::resolve_cgroup(mount, path)
            .with_context(|| format!("--mode-override {path}"))?;
        let id = std::fs::metadata(&dir)
            .with_context(|| format!("--mode-override {path}: reading {}", dir.display()))?
            .ino();
        cgroup_modes.insert(id, *mode);
    }
    let defaults = ScanConfig::default();
    let cfg = ScanConfig {
        mode: args.mode,
        cgroup_modes,
        known_secrets: KnownSecretsConfig {
            env: args.known_secret_env.clone(),
            files: args.known_secret_files.clone(),
            ..defaults.known_secrets.clone()
        },
        ..defaults
    };
    let started = std::time::Instant::now();
    let pipeline = ScanPipeline::new(cfg).context("building the scan engine")?;
    tracing::info!(
        mode = ?args.mode,
        compile_ms = started.elapsed().as_millis() as u64,
        "scan engine ready"
    );
    Ok(pipeline)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}
