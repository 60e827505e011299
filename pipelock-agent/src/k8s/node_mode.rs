//! Node-level mode (`interceptor.node_mode_label`, e.g.
//! `pipelock.sure.am/mode`): the agent watches its own Node object and
//! takes the mode from that label, or else from the annotation of the same
//! key (`audit`, `balanced` or `strict`). The value is sent to the run
//! loop, which applies it live the way a config reload is applied; no
//! label, a value that is not a mode (logged), or a deleted node fall back
//! to the config's mode. While the API cannot be reached the last value
//! stays in force.
use std::collections::BTreeMap;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Mode;

/// The node's say on the mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMode {
    /// The mode the node asks for; None: the config decides.
    pub mode: Option<Mode>,
    /// Where it came from, for logs and `status`
    /// (`label pipelock.sure.am/mode on node node-1`).
    pub source: Option<String>,
}

/// What the watch needs; [`NodeModeWatch::run`] consumes it.
pub struct NodeModeWatch {
    pub node: String,
    /// Label (or annotation) key holding the mode.
    pub key: String,
    pub tx: watch::Sender<NodeMode>,
}

impl NodeModeWatch {
    /// Watches the node until `shutdown`; API errors are retried with backoff.
    pub async fn run(self, client: kube::Client, shutdown: CancellationToken) {
        let api: Api<Node> = Api::all(client);
        let cfg = watcher::Config::default().fields(&format!("metadata.name={}", self.node));
        let mut events = watcher(api, cfg).default_backoff().boxed();
        loop {
            let ev = tokio::select! {
                _ = shutdown.cancelled() => return,
                ev = events.next() => ev,
            };
            let node_mode = match ev {
                None => {
                    tracing::error!(target: "pipelock::k8s", "node watch ended; the mode stays as it is");
                    return;
                }
                Some(Err(e)) => {
                    tracing::warn!(
                        target: "pipelock::k8s",
                        error = %e,
                        "node watch: Kubernetes API error; retrying (the mode stays as it is)"
                    );
                    continue;
                }
                Some(Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n))) => self.read(&n),
                Some(Ok(watcher::Event::Delete(_))) => NodeMode::default(),
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => continue,
            };
            self.tx.send_if_modified(|current| {
                let changed = *current != node_mode;
                *current = node_mode;
                changed
            });
        }
    }

    /// The mode the node's label (else annotation) names.
    fn read(&self, node: &Node) -> NodeMode {
        let empty = BTreeMap::new();
        let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
        let annotations = node.metadata.annotations.as_ref().unwrap_or(&empty);
        let (value, place) = match (labels.get(&self.key), annotations.get(&self.key)) {
            (Some(v), _) => (v, "label"),
            (None, Some(v)) => (v, "annotation"),
            (None, None) => return NodeMode::default(),
        };
        match parse_mode(value) {
            Some(mode) => NodeMode {
                mode: Some(mode),
                source: Some(format!("{place} {} on node {}", self.key, self.node)),
            },
            None => {
                tracing::warn!(
                    target: "pipelock::k8s",
                    node = %self.node,
                    key = %self.key,
                    value = %value,
                    "the node's mode {place} is not audit, balanced or strict: the config's mode applies"
                );
                NodeMode::default()
            }
        }
    }
}

/// `audit`, `balanced` or `strict` (any case, surrounding blanks ignored).
pub fn parse_mode(value: &str) -> Option<Mode> {
    match value.trim().to_ascii_lowercase().as_str() {
        "audit" => Some(Mode::Audit),
        "balanced" => Some(Mode::Balanced),
        "strict" => Some(Mode::Strict),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Node {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        let mut n = Node::default();
        n.metadata.name = Some("node-1".into());
        n.metadata.labels = map(labels);
        n.metadata.annotations = map(annotations);
        n
    }

    #[test]
    fn label_then_annotation_then_config() {
        let (tx, _rx) = watch::channel(NodeMode::default());
        let w = NodeModeWatch {
            node: "node-1".into(),
            key: "pipelock.sure.am/mode".into(),
            tx,
        };
        let k = "pipelock.sure.am/mode";
        let m = w.read(&node(&[(k, "strict")], &[(k, "audit")]));
        assert_eq!(m.mode, Some(Mode::Strict));
        assert_eq!(
            m.source.as_deref(),
            Some("label pipelock.sure.am/mode on node node-1")
        );
        let m = w.read(&node(&[], &[(k, " Audit ")]));
        assert_eq!(m.mode, Some(Mode::Audit));
        assert!(m.source.unwrap().starts_with("annotation"));
        assert_eq!(w.read(&node(&[(k, "enforce")], &[])), NodeMode::default());
        assert_eq!(
            w.read(&node(&[("other", "strict")], &[])),
            NodeMode::default()
        );
    }
}
