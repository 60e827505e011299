//! Live reload: the config file is re-read on SIGHUP and whenever it
//! changes on disk. The directory is watched, not the file, because a
//! Kubernetes ConfigMap update swaps a `..data` symlink beside it. A change
//! is parsed and checked before anything uses it; the caller gets either a
//! new [`Loaded`] or the error, and swaps. Keys that only take effect at
//! start are kept at their running values and reported ([`restart_only`]).
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::{Config, ConfigError, Loaded, load};

/// Why a reload was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    FileChange,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file change",
        }
    }
}

/// A reload attempt: the new file, or why it was refused.
#[derive(Debug)]
pub struct Reload {
    pub trigger: Trigger,
    pub result: Result<Loaded, ConfigError>,
}

/// After a change on disk, wait this long for the writer to finish.
const SETTLE: Duration = Duration::from_millis(150);
/// When the directory cannot be watched, poll this often instead.
const POLL: Duration = Duration::from_secs(2);

/// Watches `path` (and SIGHUP) and sends every reload attempt. The file's
/// content at start is `initial`: a file event that leaves the content as
/// it was sends nothing; SIGHUP always reloads.
pub fn watch(path: PathBuf, initial: &[u8]) -> anyhow::Result<mpsc::Receiver<Reload>> {
    use anyhow::Context as _;
    let (tx, rx) = mpsc::channel(4);
    let (ev_tx, mut ev_rx) = mpsc::channel::<()>(16);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let watcher = directory_watcher(&path, ev_tx);
    if let Err(e) = &watcher {
        tracing::warn!(
            target: "pipelock::config",
            error = %e,
            path = %path.display(),
            "cannot watch the config directory; polling it every {}s",
            POLL.as_secs()
        );
    }
    let mut last = digest(initial);
    tokio::spawn(async move {
        // Keeps the inotify watch alive as long as this task runs.
        let _watcher = watcher.ok();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let polling = _watcher.is_none();
        loop {
            let trigger = tokio::select! {
                _ = hup.recv() => Trigger::Signal,
                Some(()) = ev_rx.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while ev_rx.try_recv().is_ok() {}
                    Trigger::FileChange
                }
                _ = poll.tick(), if polling => Trigger::FileChange,
            };
            if trigger == Trigger::FileChange {
                match std::fs::read(&path) {
                    Ok(bytes) if digest(&bytes) == last => continue,
                    Ok(bytes) => last = digest(&bytes),
                    // A ConfigMap swap can leave the name missing for a moment.
                    Err(_) => {}
                }
            } else if let Ok(bytes) = std::fs::read(&path) {
                last = digest(&bytes);
            }
            let result = load(&path);
            if tx.send(Reload { trigger, result }).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn directory_watcher(
    path: &Path,
    events: mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher as _;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = events.try_send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Keys read only at start: the listeners, the kernel attachment, the CA
/// and the log sink. Each with how to read it from a config.
type Getter = fn(&Config) -> String;

const RESTART_ONLY: &[(&str, Getter)] = &[
    ("interceptor.cgroup", |c| {
        format!("{:?}", c.interceptor.cgroup)
    }),
    ("interceptor.pod_selector", |c| {
        format!("{:?}", c.interceptor.pod_selector)
    }),
    ("interceptor.node_name", |c| {
        format!("{:?}", c.interceptor.node_name)
    }),
    ("interceptor.node_mode_label", |c| {
        format!("{:?}", c.interceptor.node_mode_label)
    }),
    ("interceptor.redirect_addr", |c| {
        c.interceptor.redirect_addr.to_string()
    }),
    ("interceptor.redirect_addr6", |c| {
        format!("{:?}", c.interceptor.redirect_addr6)
    }),
    ("interceptor.redirect_listen", |c| {
        format!("{:?}", c.interceptor.redirect_listen)
    }),
    ("interceptor.forward_listen", |c| {
        format!("{:?}", c.interceptor.forward_listen)
    }),
    ("interceptor.mcp_listen", |c| {
        format!("{:?}", c.interceptor.mcp_listen)
    }),
    ("interceptor.mcp_auth_token_file", |c| {
        format!("{:?}", c.interceptor.mcp_auth_token_file)
    }),
    ("interceptor.mcp_upstream", |c| {
        format!("{:?}", c.interceptor.mcp_upstream)
    }),
    ("interceptor.bypass_cidrs", |c| {
        format!("{:?}", c.interceptor.bypass_cidrs)
    }),
    ("interceptor.bypass_ports", |c| {
        format!("{:?}", c.interceptor.bypass_ports)
    }),
    ("interceptor.udp_allow", |c| {
        format!("{:?}", c.interceptor.udp_allow)
    }),
    ("interceptor.state_dir", |c| {
        c.interceptor.state_dir.display().to_string()
    }),
    ("interceptor.ca_cert", |c| format!("{:?}", c.ca_settings())),
    ("interceptor.socket_mark", |c| {
        c.interceptor.socket_mark.to_string()
    }),
    ("interceptor.body_hold_budget_bytes", |c| {
        c.interceptor.body_hold_budget_bytes.to_string()
    }),
    ("websocket_proxy.max_concurrent_connections", |c| {
        c.websocket_proxy.max_concurrent_connections.to_string()
    }),
    ("interceptor.upstream_ca", |c| {
        format!("{:?}", c.interceptor.upstream_ca)
    }),
    ("tls_interception.cert_ttl", |c| {
        format!("{:?}", c.tls_interception.cert_ttl)
    }),
    ("tls_interception.cert_cache_size", |c| {
        c.tls_interception.cert_cache_size.to_string()
    }),
    ("kill_switch.api_listen", |c| {
        format!("{:?}", c.kill_switch.api_listen)
    }),
    ("logging.format", |c| format!("{:?}", c.logging.format)),
    ("metrics_listen", |c| format!("{:?}", c.metrics_listen)),
    ("logging.output", |c| format!("{:?}", c.logging.output)),
    ("logging.file", |c| format!("{:?}", c.logging.file)),
    ("emit", |c| format!("{:?}", c.emit)),
];

/// The keys of `new` that differ from `running` but only apply at start.
pub fn restart_only(running: &Config, new: &Config) -> Vec<&'static str> {
    RESTART_ONLY
        .iter()
        .filter(|(_, get)| get(running) != get(new))
        .map(|(key, _)| *key)
        .collect()
}

/// `new` with every start-only key put back to its running value, so that
/// a reload applies the rest and leaves those whole, not half-applied.
pub fn keep_start_only(running: &Config, mut new: Config) -> Config {
    let (i, r) = (&mut new.interceptor, &running.interceptor);
    i.cgroup.clone_from(&r.cgroup);
    i.pod_selector.clone_from(&r.pod_selector);
    i.node_name.clone_from(&r.node_name);
    i.node_mode_label.clone_from(&r.node_mode_label);
    i.redirect_addr = r.redirect_addr;
    i.redirect_addr6 = r.redirect_addr6;
    i.redirect_listen.clone_from(&r.redirect_listen);
    i.forward_listen = r.forward_listen;
    i.mcp_listen = r.mcp_listen;
    i.mcp_upstream.clone_from(&r.mcp_upstream);
    i.mcp_auth_token_file.clone_from(&r.mcp_auth_token_file);
    i.bypass_cidrs.clone_from(&r.bypass_cidrs);
    i.bypass_ports.clone_from(&r.bypass_ports);
    i.udp_allow.clone_from(&r.udp_allow);
    i.state_dir.clone_from(&r.state_dir);
    i.ca_cert.clone_from(&r.ca_cert);
    i.ca_key.clone_from(&r.ca_key);
    i.upstream_ca.clone_from(&r.upstream_ca);
    i.socket_mark = r.socket_mark;
    i.fail_mode = r.fail_mode;
    i.pin_dir.clone_from(&r.pin_dir);
    i.max_connections = r.max_connections;
    i.max_connections_per_pod = r.max_connections_per_pod;
    i.body_hold_budget_bytes = r.body_hold_budget_bytes;
    new.websocket_proxy.max_concurrent_connections =
        running.websocket_proxy.max_concurrent_connections;
    let (t, rt) = (&mut new.tls_interception, &running.tls_interception);
    t.ca_cert.clone_from(&rt.ca_cert);
    t.ca_key.clone_from(&rt.ca_key);
    t.cert_ttl = rt.cert_ttl;
    t.cert_cache_size = rt.cert_cache_size;
    new.logging.format = running.logging.format;
    new.kill_switch
        .api_listen
        .clone_from(&running.kill_switch.api_listen);
    new.metrics_listen.clone_from(&running.metrics_listen);
    new.logging.output = running.logging.output;
    new.logging.file.clone_from(&running.logging.file);
    new.emit.clone_from(&running.emit);
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_only_keys_are_reported_and_kept() {
        let running = Config::default();
        let mut new = Config {
            mode: super::super::Mode::Strict,
            ..Config::default()
        };
        new.interceptor.redirect_listen = vec!["127.0.0.1:1".parse().unwrap()];
        new.tls_interception.cert_cache_size = 5;
        assert_eq!(
            restart_only(&running, &new),
            vec![
                "interceptor.redirect_listen",
                "tls_interception.cert_cache_size"
            ]
        );
        let applied = keep_start_only(&running, new);
        assert_eq!(applied.mode, super::super::Mode::Strict);
        assert!(applied.interceptor.redirect_listen.is_empty());
        assert_eq!(applied.tls_interception.cert_cache_size, 10_000);
        assert!(restart_only(&running, &applied).is_empty());
    }
}
