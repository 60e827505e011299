//! `--pod-selector`: watches the pods scheduled on this node (field
//! selector `spec.nodeName`, the label selector passed to the API and
//! checked again here), resolves each selected pod's cgroup and its
//! containers' (`redirect::pods`) and keeps the kernel's covered-cgroup
//! map ([`TargetCgroups`]: the pod cgroups, so every container of the pod
//! is covered from its start, the kernel looking through ancestors) and
//! the [`PodIndex`] (names by pod and container cgroup) equal to exactly
//! those pods, as pods come, start containers, restart and go. The
//! agent's and Pipelock's own pods are never selected, nor a pod whose
//! cgroup the agent itself runs in. Until the first complete list the kernel map is
//! left as it is (empty on a fresh attach; what the last agent covered
//! when a pinned redirect is adopted).
use std::{
    collections::{BTreeMap, BTreeSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod as ApiPod;
use kube::{
    Api,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio_util::sync::CancellationToken;

use crate::redirect::{
    TargetCgroups,
    pods::{self, Pod, PodIndex, PodRef, Qos, Selector},
};

/// How often the selected pods' cgroups are looked for again, besides on
/// every API event: a container's cgroup may appear after the event that
/// named it, and one that ended goes away without one.
pub const RESCAN: Duration = Duration::from_secs(2);

/// What the watch needs; [`PodWatch::run`] consumes it.
pub struct PodWatch {
    /// The selector, parsed (checked locally on every pod).
    pub selector: Selector,
    /// The selector as given (sent to the API as `labelSelector`).
    pub selector_text: String,
    /// This node's name (`spec.nodeName` of its pods).
    pub node: String,
    /// The kubelet's cgroup root (the attach point), under which the
    /// `kubepods` hierarchy lies.
    pub root: PathBuf,
    /// The cgroup the agent runs in, never covered (best effort: unknown
    /// inside a cgroup namespace).
    pub own_cgroup: Option<PathBuf>,
    pub targets: TargetCgroups,
    pub index: Arc<PodIndex>,
}

impl PodWatch {
    /// Watches until `shutdown`; API errors are retried with backoff.
    pub async fn run(mut self, client: kube::Client, shutdown: CancellationToken) {
        let api: Api<ApiPod> = Api::all(client);
        let cfg = watcher::Config::default()
            .fields(&format!("spec.nodeName={}", self.node))
            .labels(&self.selector_text);
        let mut events = watcher(api, cfg).default_backoff().boxed();
        let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, Pod>> = None;
        let mut synced = false;
        let mut covered: BTreeMap<u64, Arc<PodRef>> = BTreeMap::new();
        let mut rescan = tokio::time::interval(RESCAN);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = rescan.tick() => {}
                ev = events.next() => match ev {
                    None => {
                        tracing::error!(target: "pipelock::k8s", "pod watch ended; covered pods stay as they are");
                        return;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(
                            target: "pipelock::k8s",
                            error = %e,
                            "pod watch: Kubernetes API error; retrying (covered pods stay as they are)"
                        );
                        continue;
                    }
                    Some(Ok(ev)) => match ev {
                        watcher::Event::Init => listing = Some(BTreeMap::new()),
                        watcher::Event::InitApply(p) => {
                            if let (Some(l), Some(p)) = (listing.as_mut(), convert(&p)) {
                                l.insert(p.metadata.uid.clone(), p);
                            }
                        }
                        watcher::Event::InitDone => {
                            if let Some(l) = listing.take() {
                                pods = l;
                            }
                            if !synced {
                                tracing::info!(
                                    target: "pipelock::k8s",
                                    node = %self.node,
                                    selector = %self.selector_text,
                                    listed = pods.len(),
                                    "pods of this node listed"
                                );
                            }
                            synced = true;
                        }
                        watcher::Event::Apply(p) => {
                            if let Some(p) = convert(&p) {
                                pods.insert(p.metadata.uid.clone(), p);
                            }
                        }
                        watcher::Event::Delete(p) => {
                            if let Some(uid) = &p.metadata.uid {
                                pods.remove(uid);
                            }
                        }
                    },
                },
            }
            if synced {
                self.sync(&pods, &mut covered);
            }
        }
    }

    /// Makes the kernel map cover exactly the pod cgroups of the selected
    /// pods in `pods` found on disk now, and the index name them and their
    /// started containers.
    fn sync(&mut self, pods: &BTreeMap<String, Pod>, covered: &mut BTreeMap<u64, Arc<PodRef>>) {
        let now = self.resolve(pods);
        if now == *covered {
            return;
        }
        // Names first: the first connection of a new container finds them.
        self.index.store(now.clone());
        let pod_cgroups = |m: &BTreeMap<u64, Arc<PodRef>>| -> BTreeSet<u64> {
            m.iter()
                .filter(|(_, p)| p.is_pod)
                .map(|(id, _)| *id)
                .collect()
        };
        let (was, is) = (pod_cgroups(covered), pod_cgroups(&now));
        if was != is {
            if let Err(e) = self.targets.set(&is) {
                tracing::error!(
                    target: "pipelock::k8s",
                    error = %e,
                    "could not update the covered cgroups in the kernel; retrying"
                );
                return;
            }
            for (id, message) in is
                .difference(&was)
                .map(|id| (id, "pod covered"))
                .chain(was.difference(&is).map(|id| (id, "pod no longer covered")))
            {
                let Some(who) = now.get(id).or_else(|| covered.get(id)) else {
                    continue;
                };
                tracing::info!(
                    target: "pipelock::k8s",
                    namespace = %who.namespace,
                    pod = %who.pod,
                    cgroup_id = id,
                    "{message}"
                );
            }
        }
        *covered = now;
    }

    /// cgroup id -> pod (container name empty) for the pod cgroup of every
    /// selected pod found under the root, and -> pod and container for
    /// each of its started containers. The pod's cgroup is what the kernel
    /// covers: it exists before any container starts, so a container is
    /// covered from its first instruction even before the API names it.
    fn resolve(&self, pods: &BTreeMap<String, Pod>) -> BTreeMap<u64, Arc<PodRef>> {
        let mut out = BTreeMap::new();
        let ino = |dir: &Path| std::fs::metadata(dir).ok().map(|m| m.ino());
        for pod in pods.values().filter(|p| p.selected_by(&self.selector)) {
            let Some(pod_dir) = pod_dir(&self.root, pod) else {
                continue;
            };
            if self
                .own_cgroup
                .as_deref()
                .is_some_and(|own| own.starts_with(&pod_dir))
            {
                tracing::warn!(
                    target: "pipelock::k8s",
                    namespace = %pod.metadata.namespace,
                    pod = %pod.metadata.name,
                    "the agent runs in this pod's cgroup: never covered"
                );
                continue;
            }
            let Some(id) = ino(&pod_dir) else {
                continue;
            };
            let name = |container: String, is_pod: bool| {
                Arc::new(PodRef {
                    namespace: pod.metadata.namespace.clone(),
                    pod: pod.metadata.name.clone(),
                    container,
                    is_pod,
                })
            };
            out.insert(id, name(String::new(), true));
            for (container, dir) in pods::container_cgroups(pod, &pod_dir) {
                if let Some(id) = ino(&dir) {
                    out.insert(id, name(container, false));
                }
            }
            // The other cgroups in the pod (a container the API has not
            // named yet, the sandbox): named by pod, so a starting
            // container's first connections are attributed too.
            for dir in std::fs::read_dir(&pod_dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            {
                if let Some(id) = ino(&dir.path()) {
                    out.entry(id).or_insert_with(|| name(String::new(), false));
                }
            }
        }
        out
    }
}

/// The pod cgroup of `pod` under `root`, under whichever driver layout
/// exists; every QoS class is tried when the pod does not say.
fn pod_dir(root: &Path, pod: &Pod) -> Option<PathBuf> {
    let classes = match pod.status.qos_class {
        Some(q) => vec![q],
        None => vec![Qos::Guaranteed, Qos::Burstable, Qos::BestEffort],
    };
    classes
        .into_iter()
        .find_map(|q| pods::find_pod_cgroup(root, &pod.metadata.uid, q))
        .map(|(_, dir)| dir)
}

/// The few fields the agent reads, from the API's object; None (logged)
/// when it lacks them.
fn convert(p: &ApiPod) -> Option<Pod> {
    let parsed = serde_json::to_value(p).and_then(serde_json::from_value::<Pod>);
    match parsed {
        Ok(pod) => Some(pod),
        Err(e) => {
            tracing::warn!(
                target: "pipelock::k8s",
                pod = p.metadata.name.as_deref().unwrap_or(""),
                error = %e,
                "pod from the API skipped: it lacks fields the agent needs"
            );
            None
        }
    }
}

/// The cgroup the calling process runs in, as a directory under `mount`
/// (from `/proc/self/cgroup`; None when unreadable).
pub fn own_cgroup(mount: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(rel.trim_start_matches('/')))
}
