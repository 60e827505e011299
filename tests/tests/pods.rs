//! Pod cgroup resolution (`redirect::pods`) on real cgroups: under a
//! throwaway cgroup standing for the cgroup2 root, the kubelet's layouts
//! are created for real (systemd driver with containerd for a Burstable
//! pod, cgroupfs with CRI-O for a BestEffort one), a process is moved into
//! each container's cgroup, and the pods as the API lists them (JSON) are
//! resolved to exactly those cgroups: the path the kernel reports for the
//! process (`/proc/PID/cgroup`) is the one found.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command},
};

use pipelock_agent::redirect::pods::{self, Driver, Pod, Qos};
use pipelock_tests::{cgroup::TestCgroup, require_root};

struct Tree {
    dirs: Vec<PathBuf>,
    procs: Vec<Child>,
}

impl Drop for Tree {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deepest first: a cgroup with children cannot be removed.
        let mut dirs = self.dirs.clone();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Creates every cgroup on the way to `root/rel`.
fn mkcg(tree: &mut Tree, root: &Path, rel: &str) -> PathBuf {
    let mut d = root.to_path_buf();
    for part in rel.trim_start_matches('/').split('/') {
        d = d.join(part);
        if !d.exists() {
            std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            tree.dirs.push(d.clone());
        }
    }
    d
}

/// A sleeping process moved into `dir`; returns the path /proc reports.
fn place(tree: &mut Tree, dir: &Path) -> String {
    let child = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).unwrap();
    let cg = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
    tree.procs.push(child);
    cg.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap()
        .to_owned()
}

fn pod(uid: &str, qos: &str, name: &str, container_id: &str, labels: serde_json::Value) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "sure", "uid": uid, "labels": labels},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": "Running", "qosClass": qos, "containerStatuses": [
            {"name": "app", "containerID": container_id, "ready": true}
        ]}
    }))
    .unwrap()
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn pods_resolve_to_the_cgroups_their_processes_run_in() {
    require_root();
    let cg = TestCgroup::new("pods");
    let mut tree = Tree {
        dirs: Vec::new(),
        procs: Vec::new(),
    };
    let (web_uid, worker_uid) = (
        "0b6f4a2c-1111-4c3e-8a21-0d9e8f7a6b5c",
        "7d1e9c3b-2222-4f5a-9b10-1c2d3e4f5a6b",
    );
    let (web_id, worker_id, pause_id) = ("a1".repeat(32), "b2".repeat(32), "c3".repeat(32));

    // systemd driver + containerd, Burstable; the sandbox beside it.
    let web_pod = pods::pod_cgroup(Driver::Systemd, web_uid, Qos::Burstable);
    let web_dir = mkcg(
        &mut tree,
        cg.dir(),
        &format!("{web_pod}/cri-containerd-{web_id}.scope"),
    );
    mkcg(
        &mut tree,
        cg.dir(),
        &format!("{web_pod}/cri-containerd-{pause_id}.scope"),
    );
    let web_seen = place(&mut tree, &web_dir);
    // cgroupfs driver + CRI-O, BestEffort, with CRI-O's conmon beside it.
    let worker_pod = pods::pod_cgroup(Driver::Cgroupfs, worker_uid, Qos::BestEffort);
    let worker_dir = mkcg(
        &mut tree,
        cg.dir(),
        &format!("{worker_pod}/crio-{worker_id}"),
    );
    mkcg(
        &mut tree,
        cg.dir(),
        &format!("{worker_pod}/crio-conmon-{worker_id}"),
    );
    let worker_seen = place(&mut tree, &worker_dir);

    let selector = "app.kubernetes.io/name=sure".parse().unwrap();
    let web = pod(
        web_uid,
        "Burstable",
        "sure-web-0",
        &format!("containerd://{web_id}"),
        serde_json::json!({"app.kubernetes.io/name": "sure", "app.kubernetes.io/component": "web"}),
    );
    let worker = pod(
        worker_uid,
        "BestEffort",
        "sure-worker-0",
        &format!("cri-o://{worker_id}"),
        serde_json::json!({"app.kubernetes.io/name": "sure"}),
    );
    let agent = pod(
        "99999999-3333-4444-5555-666666666666",
        "Burstable",
        "pipelock-agent-x",
        "containerd://00",
        serde_json::json!({"app.kubernetes.io/name": "pipelock-agent"}),
    );
    assert!(web.selected_by(&selector) && worker.selected_by(&selector));
    assert!(!agent.selected_by(&"!absent".parse().unwrap()));

    for (p, qos, driver, seen) in [
        (&web, Qos::Burstable, Driver::Systemd, &web_seen),
        (&worker, Qos::BestEffort, Driver::Cgroupfs, &worker_seen),
    ] {
        let (d, dir) = pods::find_pod_cgroup(cg.dir(), &p.metadata.uid, qos)
            .unwrap_or_else(|| panic!("{} not found", p.metadata.name));
        assert_eq!(d, driver);
        let found = pods::container_cgroups(p, &dir);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "app");
        // The kernel's path of the process is the cgroup found for it.
        let rel = found[0].1.strip_prefix(cg.dir()).unwrap();
        assert_eq!(seen, &format!("{}/{}", cg.rel(), rel.display()));
    }
    // Not on this node: nothing found.
    assert!(pods::find_pod_cgroup(cg.dir(), &agent.metadata.uid, Qos::Burstable).is_none());
    drop(tree);
}
