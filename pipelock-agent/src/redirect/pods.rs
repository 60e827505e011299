//! Pods to cgroups, for `--pod-selector` (the API watch that feeds this is
//! `k8s::pod_watch`). Which pods a selector picks (Kubernetes equality-based label
//! selectors; the agent's and Pipelock's own pods never), and where the
//! kubelet put a pod's cgroup on cgroup v2: the systemd driver
//! (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid
//! with _>.slice`) or cgroupfs (`/kubepods/burstable/pod<uid>`), each QoS
//! class (Guaranteed pods sit directly under the kubepods root), and the
//! containers in it under containerd (`cri-containerd-<id>.scope`), CRI-O
//! (`crio-<id>.scope`, its `crio-conmon-` monitors excluded) or Docker
//! (`docker-<id>.scope`), or as a bare id directory with cgroupfs.
//! [`PodIndex`] names the pod and container of each covered cgroup, for
//! logs, findings and `status`.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// The pod and container a covered cgroup belongs to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PodRef {
    pub namespace: String,
    pub pod: String,
    /// Empty for the pod's own cgroup and for a cgroup in it the API has
    /// not named (yet).
    pub container: String,
    /// The pod's own cgroup (what the kernel covers), not one below it.
    #[serde(skip)]
    pub is_pod: bool,
}

/// Covered container cgroups by cgroup id, swapped whole by the pod
/// watcher and read per connection.
#[derive(Default)]
pub struct PodIndex {
    by_cgroup: ArcSwap<BTreeMap<u64, Arc<PodRef>>>,
}

impl PodIndex {
    /// The pod of the cgroup `id`, if it is a covered container's.
    pub fn get(&self, id: u64) -> Option<Arc<PodRef>> {
        self.by_cgroup.load().get(&id).cloned()
    }

    /// Every covered cgroup now.
    pub fn snapshot(&self) -> Arc<BTreeMap<u64, Arc<PodRef>>> {
        self.by_cgroup.load_full()
    }

    /// Replaces the whole index.
    pub fn store(&self, by_cgroup: BTreeMap<u64, Arc<PodRef>>) {
        self.by_cgroup.store(Arc::new(by_cgroup));
    }
}

/// Label values that mark the agent's and Pipelock's own pods
/// (`app.kubernetes.io/name`), never selected whatever the selector says.
pub const OWN_NAMES: &[&str] = &["pipelock", "pipelock-agent"];

/// The kubelet's cgroup driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Systemd,
    Cgroupfs,
}

/// A pod's QoS class (`status.qosClass`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// An equality-based label selector: `k=v`, `k==v`, `k!=v`, `k` (exists),
/// `!k` (absent), comma-separated; every term must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Eq(String, String),
    Ne(String, String),
    Exists(String),
    Absent(String),
}

/// A selector that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("pod selector {selector:?}: {reason}")]
pub struct SelectorError {
    selector: String,
    reason: String,
}

impl std::str::FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| SelectorError {
            selector: s.to_owned(),
            reason,
        };
        let mut terms = Vec::new();
        for raw in s.split(',').map(str::trim) {
            if raw.is_empty() {
                return Err(fail("empty term".into()));
            }
            let term = if let Some((k, v)) = raw.split_once("!=") {
                Term::Ne(key(k).map_err(fail)?, value(v).map_err(fail)?)
            } else if let Some((k, v)) = raw.split_once("==").or_else(|| raw.split_once('=')) {
                Term::Eq(key(k).map_err(fail)?, value(v).map_err(fail)?)
            } else if let Some(k) = raw.strip_prefix('!') {
                Term::Absent(key(k).map_err(fail)?)
            } else {
                Term::Exists(key(raw).map_err(fail)?)
            };
            terms.push(term);
        }
        Ok(Selector { terms })
    }
}

/// A label key: optional DNS prefix and `/`, then a name of up to 63
/// characters of alphanumerics, `-`, `_`, `.`.
fn key(k: &str) -> Result<String, String> {
    let k = k.trim();
    let name = k.rsplit_once('/').map_or(k, |(_, n)| n);
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(k.to_owned())
    } else {
        Err(format!("bad label key {k:?}"))
    }
}

fn value(v: &str) -> Result<String, String> {
    let v = v.trim();
    if v.len() <= 63
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        Ok(v.to_owned())
    } else {
        Err(format!("bad label value {v:?}"))
    }
}

impl Selector {
    /// Whether `labels` satisfy every term.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Eq(k, v) => labels.get(k) == Some(v),
            Term::Ne(k, v) => labels.get(k) != Some(v),
            Term::Exists(k) => labels.contains_key(k),
            Term::Absent(k) => !labels.contains_key(k),
        })
    }
}

/// What the agent needs of a pod from the API (`v1.Pod`, the few fields).
#[derive(Clone, Debug, Deserialize)]
pub struct Pod {
    pub metadata: PodMeta,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Clone, Debug, Deserialize)]
pub struct PodMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: String,
    pub uid: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub qos_class: Option<Qos>,
    #[serde(default)]
    pub container_statuses: Vec<ContainerStatus>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    /// `containerd://<id>`, `cri-o://<id>`, `docker://<id>`; unset until started.
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
}

impl Pod {
    /// Whether `selector` picks this pod: it matches, and the pod is not
    /// the agent's or Pipelock's own.
    pub fn selected_by(&self, selector: &Selector) -> bool {
        let own = self
            .metadata
            .labels
            .get("app.kubernetes.io/name")
            .is_some_and(|n| OWN_NAMES.contains(&n.as_str()));
        !own && selector.matches(&self.metadata.labels)
    }

    /// (container name, runtime container id) of the started containers.
    pub fn containers(&self) -> Vec<(String, String)> {
        self.status
            .container_statuses
            .iter()
            .filter_map(|c| {
                let id = c.container_id.as_deref()?.split_once("://")?.1;
                Some((c.name.clone(), id.to_owned()))
            })
            .collect()
    }
}

/// The pod's cgroup, relative to the cgroup2 mount, for `driver`.
pub fn pod_cgroup(driver: Driver, uid: &str, qos: Qos) -> String {
    let qos_name = match qos {
        Qos::Guaranteed => None,
        Qos::Burstable => Some("burstable"),
        Qos::BestEffort => Some("besteffort"),
    };
    match driver {
        Driver::Systemd => {
            let uid = uid.replace('-', "_");
            match qos_name {
                None => format!("/kubepods.slice/kubepods-pod{uid}.slice"),
                Some(q) => {
                    format!("/kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{uid}.slice")
                }
            }
        }
        Driver::Cgroupfs => match qos_name {
            None => format!("/kubepods/pod{uid}"),
            Some(q) => format!("/kubepods/{q}/pod{uid}"),
        },
    }
}

/// The pod's cgroup directory under `mount`, trying the systemd layout
/// first, then cgroupfs: (driver, directory). None: not on this node (yet).
pub fn find_pod_cgroup(mount: &Path, uid: &str, qos: Qos) -> Option<(Driver, PathBuf)> {
    [Driver::Systemd, Driver::Cgroupfs]
        .into_iter()
        .find_map(|d| {
            let dir = mount.join(pod_cgroup(d, uid, qos).trim_start_matches('/'));
            dir.join("cgroup.procs").exists().then_some((d, dir))
        })
}

/// The container id a directory under a pod's cgroup stands for, if it is
/// a container's: `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `docker-<id>.scope`, or a bare 64-hex id (cgroupfs). CRI-O's
/// `crio-conmon-<id>.scope` monitors and the pause sandbox's own cgroup are
/// directories too but name no workload container of the pod's status.
pub fn container_id_of(dir_name: &str) -> Option<&str> {
    let id = dir_name
        .strip_suffix(".scope")
        .and_then(|s| {
            s.strip_prefix("cri-containerd-")
                .or_else(|| {
                    s.strip_prefix("crio-")
                        .filter(|r| !r.starts_with("conmon-"))
                })
                .or_else(|| s.strip_prefix("docker-"))
        })
        .or_else(|| {
            dir_name
                .strip_prefix("crio-")
                .filter(|r| !r.starts_with("conmon-"))
        })
        .unwrap_or(dir_name);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// The cgroup directories of `pod`'s started containers under its pod
/// cgroup `pod_dir`: (container name, directory).
pub fn container_cgroups(pod: &Pod, pod_dir: &Path) -> Vec<(String, PathBuf)> {
    let wanted: BTreeMap<String, String> = pod
        .containers()
        .into_iter()
        .map(|(name, id)| (id, name))
        .collect();
    let Ok(entries) = std::fs::read_dir(pod_dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let file_name = e.file_name();
            let id = container_id_of(file_name.to_str()?)?;
            let name = wanted.get(id)?;
            Some((name.clone(), e.path()))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "5f0c1e2a-9b7d-4c3e-8a21-0d9e8f7a6b5c";

    fn id(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn pod(labels: &[(&str, &str)], qos: &str, containers: &[(&str, &str)]) -> Pod {
        let labels: BTreeMap<_, _> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let statuses: Vec<serde_json::Value> = containers
            .iter()
            .map(|(n, cid)| serde_json::json!({"name": n, "containerID": cid}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "sure-web-0", "namespace": "sure", "uid": UID, "labels": labels},
            "status": {"qosClass": qos, "containerStatuses": statuses}
        }))
        .unwrap()
    }

    #[test]
    fn selectors_parse_and_match_and_never_pick_our_own_pods() {
        let s: Selector = "app.kubernetes.io/name=sure, tier!=db,component"
            .parse()
            .unwrap();
        let web = pod(
            &[("app.kubernetes.io/name", "sure"), ("component", "web")],
            "Burstable",
            &[],
        );
        assert!(web.selected_by(&s));
        let db = pod(
            &[
                ("app.kubernetes.io/name", "sure"),
                ("component", "x"),
                ("tier", "db"),
            ],
            "Burstable",
            &[],
        );
        assert!(!db.selected_by(&s));
        let all: Selector = "!nothing".parse().unwrap();
        let own = pod(
            &[("app.kubernetes.io/name", "pipelock-agent")],
            "Burstable",
            &[],
        );
        assert!(all.matches(&own.metadata.labels));
        assert!(!own.selected_by(&all));
        for bad in ["", "a=b,", "a b=c", "a=b c", "=x"] {
            assert!(bad.parse::<Selector>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn pod_cgroup_paths_for_both_drivers_and_every_qos_class() {
        let u = "5f0c1e2a_9b7d_4c3e_8a21_0d9e8f7a6b5c";
        assert_eq!(
            pod_cgroup(Driver::Systemd, UID, Qos::Burstable),
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice")
        );
        assert_eq!(
            pod_cgroup(Driver::Systemd, UID, Qos::BestEffort),
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice")
        );
        assert_eq!(
            pod_cgroup(Driver::Systemd, UID, Qos::Guaranteed),
            format!("/kubepods.slice/kubepods-pod{u}.slice")
        );
        assert_eq!(
            pod_cgroup(Driver::Cgroupfs, UID, Qos::Burstable),
            format!("/kubepods/burstable/pod{UID}")
        );
        assert_eq!(
            pod_cgroup(Driver::Cgroupfs, UID, Qos::Guaranteed),
            format!("/kubepods/pod{UID}")
        );
    }

    /// A directory tree laid out as the kubelet and the runtime lay it out
    /// (with `cgroup.procs` files, as cgroup directories have).
    fn tree(rels: &[String]) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("plk-pods-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for r in rels {
            let d = root.join(r.trim_start_matches('/'));
            std::fs::create_dir_all(&d).unwrap();
            // Every cgroup directory has cgroup.procs, the root's too.
            for a in d.ancestors().take_while(|a| a.starts_with(&root)) {
                std::fs::write(a.join("cgroup.procs"), "").unwrap();
            }
        }
        root
    }

    #[test]
    fn finds_pod_and_container_cgroups_under_each_runtime_and_driver() {
        let (a, b, pause) = (id('a'), id('b'), id('c'));
        // systemd driver, containerd: two containers and the sandbox.
        let p = pod_cgroup(Driver::Systemd, UID, Qos::Burstable);
        let root = tree(&[
            format!("{p}/cri-containerd-{a}.scope"),
            format!("{p}/cri-containerd-{b}.scope"),
            format!("{p}/cri-containerd-{pause}.scope"),
        ]);
        let web = pod(
            &[],
            "Burstable",
            &[
                ("web", &format!("containerd://{a}")),
                ("sidecar", &format!("containerd://{b}")),
            ],
        );
        let (driver, dir) = find_pod_cgroup(&root, UID, Qos::Burstable).unwrap();
        assert_eq!(driver, Driver::Systemd);
        let names: Vec<String> = container_cgroups(&web, &dir)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["sidecar", "web"]);
        assert!(find_pod_cgroup(&root, UID, Qos::Guaranteed).is_none());
        let _ = std::fs::remove_dir_all(&root);

        // cgroupfs driver, CRI-O with its conmon monitor, Guaranteed QoS.
        let p = pod_cgroup(Driver::Cgroupfs, UID, Qos::Guaranteed);
        let root = tree(&[
            format!("{p}/crio-{a}"),
            format!("{p}/crio-conmon-{a}"),
            format!("{p}/x"),
        ]);
        let worker = pod(&[], "Guaranteed", &[("worker", &format!("cri-o://{a}"))]);
        let (driver, dir) = find_pod_cgroup(&root, UID, Qos::Guaranteed).unwrap();
        assert_eq!(driver, Driver::Cgroupfs);
        let found = container_cgroups(&worker, &dir);
        assert_eq!(found.len(), 1);
        assert!(found[0].1.ends_with(format!("crio-{a}")));
        let _ = std::fs::remove_dir_all(&root);

        // A container not started yet has no id: nothing to cover.
        let pending = pod(&[], "BestEffort", &[]);
        assert!(pending.containers().is_empty());
        assert_eq!(container_id_of(&format!("crio-conmon-{a}.scope")), None);
        assert_eq!(
            container_id_of(&format!("docker-{a}.scope")),
            Some(a.as_str())
        );
        assert_eq!(container_id_of("init.scope"), None);
    }
}
