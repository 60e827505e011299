//! The Kubernetes API, read-only: a client from the in-cluster service
//! account (or `KUBECONFIG`, as kubectl finds it, for running off-cluster
//! and for tests), and the watches built on it: the pods of this node for
//! `--pod-selector` ([`pod_watch`]) and the node-level mode ([`node_mode`]).
//! The agent only ever lists and watches pods and nodes.
pub mod node_mode;
pub mod pod_watch;

/// Errors of the Kubernetes side; each says what to check.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no Kubernetes API config: run in a pod with a service account (KUBERNETES_SERVICE_HOST and the mounted token) or set KUBECONFIG"
    )]
    NoConfig(#[source] kube::config::InferConfigError),
    #[error("building the Kubernetes API client")]
    Client(#[source] kube::Error),
    #[error(
        "--pod-selector needs this node's name: set NODE_NAME (downward API spec.nodeName) or --node-name"
    )]
    NoNodeName,
}

/// A client for the cluster the agent runs in.
pub async fn client() -> Result<kube::Client, Error> {
    let config = kube::Config::infer().await.map_err(Error::NoConfig)?;
    tracing::info!(
        target: "pipelock::k8s",
        api = %config.cluster_url,
        "Kubernetes API"
    );
    kube::Client::try_from(config).map_err(Error::Client)
}
