//! `--pod-selector` end to end: the agent watches this node's pods through
//! a fake Kubernetes API server on loopback (a recorded pod list, then
//! watch events), resolves the selected pods' containers to cgroups laid
//! out for real as the kubelet does (systemd and cgroupfs drivers,
//! containerd and CRI-O names, QoS classes) under a throwaway cgroup
//! standing for the kubelet's cgroup root, and covers exactly those: a
//! selected pod's process is redirected (its connection logged with
//! namespace, pod and container), a pod of another app and the agent's
//! own pod are not, a pod added through the watch is covered, a deleted
//! pod is dropped; `pipelock-agent status` lists the covered containers.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use pipelock_agent::redirect::pods::{self, Driver, Qos};
use pipelock_tests::{
    agent::{Agent, agent_bin},
    cgroup::TestCgroup,
    client::{self, ClientRun},
    free_port,
    kube_api::FakeKubeApi,
    require_root,
    upstream::Upstream,
};
use serde_json::{Value, json};

const NODE: &str = "node-1";
const TIMEOUT: Duration = Duration::from_secs(20);

/// Cgroups created under the test root, removed deepest first.
struct Tree(Vec<PathBuf>);

impl Drop for Tree {
    fn drop(&mut self) {
        let mut dirs = self.0.clone();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

impl Tree {
    /// Creates every cgroup on the way to `root/rel`.
    fn mkcg(&mut self, root: &Path, rel: &str) -> PathBuf {
        let mut d = root.to_path_buf();
        for part in rel.trim_start_matches('/').split('/') {
            d = d.join(part);
            if !d.exists() {
                std::fs::create_dir(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
                self.0.push(d.clone());
            }
        }
        d
    }
}

/// A pod as the API serves it, on this node.
fn pod(name: &str, uid: &str, qos: &str, labels: Value, containers: &[(&str, String)]) -> Value {
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(n, id)| {
            json!({"name": n, "containerID": id, "ready": true, "restartCount": 0,
                              "image": "x", "imageID": "x"})
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "sure", "uid": uid, "labels": labels},
        "spec": {"nodeName": NODE, "containers": containers.iter().map(|(n, _)| json!({"name": n})).collect::<Vec<_>>()},
        "status": {"phase": "Running", "qosClass": qos, "containerStatuses": statuses}
    })
}

/// curl from inside the cgroup `dir` (the shell joins it, then execs curl,
/// so the pid is curl's).
fn curl_in(dir: &Path, url: &str) -> ClientRun {
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec curl -sS --max-time 5 -o /dev/null -w '%{{http_code}}' {url}",
        dir.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &script]);
    client::run_command(cmd, Duration::from_secs(10))
}

/// `pipelock-agent status --json`: the covered (started) containers as
/// namespace/pod/container.
fn covered_in_status(state: &Path) -> Vec<String> {
    let out = Command::new(agent_bin())
        .args(["status", "--json", "--state-dir"])
        .arg(state)
        .output()
        .expect("running pipelock-agent status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("status is JSON");
    assert_eq!(
        doc["redirect"]["pod_selector"], "app.kubernetes.io/part-of=sure",
        "{doc}"
    );
    let pods: Vec<String> = doc["redirect"]["covered_pods"]
        .as_array()
        .unwrap_or_else(|| panic!("no covered pods in {doc}"))
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap_or(""),
                p["pod"].as_str().unwrap_or("")
            )
        })
        .collect();
    let mut names: Vec<String> = doc["redirect"]["covered_containers"]
        .as_array()
        .unwrap_or_else(|| panic!("no covered containers in {doc}"))
        .iter()
        .map(|c| {
            format!(
                "{}/{}/{}",
                c["namespace"].as_str().unwrap_or(""),
                c["pod"].as_str().unwrap_or(""),
                c["container"].as_str().unwrap_or("")
            )
        })
        .collect();
    names.sort();
    // Every container listed belongs to a covered pod.
    for n in &names {
        assert!(
            pods.iter().any(|p| n.starts_with(&format!("{p}/"))),
            "{n}: {doc}"
        );
    }
    names
}

fn redirected(agent: &Agent, pid: u32) -> Vec<Value> {
    agent
        .conn_records()
        .into_iter()
        .filter(|r| r["tgid"] == pid)
        .collect()
}

#[test]
#[cfg_attr(
    not(feature = "root-tests"),
    ignore = "needs root and the eBPF build: run `cargo xtask test`"
)]
fn pod_selector_covers_exactly_the_selected_pods_as_they_come_and_go() {
    require_root();
    let api = FakeKubeApi::start();
    let cg = TestCgroup::new("podsel");
    let mut tree = Tree(Vec::new());
    let up = Upstream::start("127.0.0.1:0".parse().unwrap());
    let redirect = SocketAddr::from(([127, 0, 0, 1], free_port()));

    // Selected by `app.kubernetes.io/part-of=sure`: Sure's pods, and the
    // agent's own pod too, but for the rule that never covers it.
    let sure = json!({"app.kubernetes.io/name": "sure", "app.kubernetes.io/part-of": "sure",
                      "app.kubernetes.io/component": "web"});
    // A Sure web pod: systemd driver, containerd, Burstable.
    let (web_uid, web_id) = ("0b6f4a2c-1111-4c3e-8a21-0d9e8f7a6b5c", "a1".repeat(32));
    let web_pod = pods::pod_cgroup(Driver::Systemd, web_uid, Qos::Burstable);
    let web_dir = tree.mkcg(
        cg.dir(),
        &format!("{web_pod}/cri-containerd-{web_id}.scope"),
    );
    tree.mkcg(
        cg.dir(),
        &format!("{web_pod}/cri-containerd-{}.scope", "c3".repeat(32)),
    );
    api.put(
        "pods",
        pod(
            "sure-web-0",
            web_uid,
            "Burstable",
            sure.clone(),
            &[("web", format!("containerd://{web_id}"))],
        ),
    );
    // Another app's pod: cgroupfs driver, CRI-O, BestEffort.
    let (other_uid, other_id) = ("7d1e9c3b-2222-4f5a-9b10-1c2d3e4f5a6b", "b2".repeat(32));
    let other_pod = pods::pod_cgroup(Driver::Cgroupfs, other_uid, Qos::BestEffort);
    let other_dir = tree.mkcg(cg.dir(), &format!("{other_pod}/crio-{other_id}"));
    tree.mkcg(cg.dir(), &format!("{other_pod}/crio-conmon-{other_id}"));
    api.put(
        "pods",
        pod(
            "billing-0",
            other_uid,
            "BestEffort",
            json!({"app.kubernetes.io/name": "billing", "app.kubernetes.io/part-of": "billing"}),
            &[("app", format!("cri-o://{other_id}"))],
        ),
    );
    // The agent's own pod, which the selector matches: Guaranteed, systemd.
    let (own_uid, own_id) = ("99999999-3333-4444-5555-666666666666", "d4".repeat(32));
    let own_pod = pods::pod_cgroup(Driver::Systemd, own_uid, Qos::Guaranteed);
    let own_dir = tree.mkcg(
        cg.dir(),
        &format!("{own_pod}/cri-containerd-{own_id}.scope"),
    );
    api.put(
        "pods",
        pod(
            "pipelock-agent-x",
            own_uid,
            "Guaranteed",
            json!({"app.kubernetes.io/name": "pipelock-agent", "app.kubernetes.io/part-of": "sure"}),
            &[("agent", format!("containerd://{own_id}"))],
        ),
    );

    let args: Vec<String> = [
        "--cgroup",
        cg.rel(),
        "--pod-selector",
        "app.kubernetes.io/part-of=sure,app.kubernetes.io/name in-use",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A selector the agent cannot parse stops the start with a clear error.
    let mut bad = Agent::spawn(&args);
    assert!(
        bad.wait_exit(TIMEOUT).is_some_and(|s| !s.success()),
        "a bad selector was accepted"
    );
    assert!(bad.output().contains("pod selector"), "{}", bad.output());

    let kubeconfig = format!("KUBECONFIG={}", api.kubeconfig().display());
    let state = std::env::temp_dir().join(format!(
        "plk-podsel-state-{}-{}",
        std::process::id(),
        pipelock_tests::unique_index()
    ));
    let args: Vec<String> = [
        "--state-dir",
        &state.display().to_string(),
        "--cgroup",
        cg.rel(),
        "--pod-selector",
        "app.kubernetes.io/part-of=sure",
        "--node-name",
        NODE,
        "--redirect-addr",
        &redirect.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut agent = Agent::start_via(&["env", &kubeconfig], &args);
    let covered = |pod: &'static str| move |l: &str| l.contains("pod covered") && l.contains(pod);
    assert!(
        agent
            .wait_for_line(TIMEOUT, covered("sure-web-0"))
            .is_some(),
        "the listed Sure pod was not covered:\n{}",
        agent.output()
    );

    // Not selected: another app's pod, the agent's own pod; they go direct.
    let other = curl_in(&other_dir, &up.url("/other"));
    assert_eq!(other.stdout, "200", "{other:?}");
    let own = curl_in(&own_dir, &up.url("/own"));
    assert_eq!(own.stdout, "200", "{own:?}");
    // Selected: through the agent, named by pod and container.
    let web = curl_in(&web_dir, &up.url("/web"));
    assert_eq!(web.stdout, "200", "{web:?}");
    let rec = agent
        .wait_for_conn(TIMEOUT, |r| r["tgid"] == web.pid)
        .unwrap_or_else(|| {
            panic!(
                "the Sure pod's connection was not redirected:\n{}",
                agent.output()
            )
        });
    assert_eq!(rec["namespace"], "sure", "{rec}");
    assert_eq!(rec["pod"], "sure-web-0", "{rec}");
    assert_eq!(rec["container"], "web", "{rec}");
    assert_eq!(rec["orig_dst"], up.addr.to_string(), "{rec}");
    assert!(
        redirected(&agent, other.pid).is_empty(),
        "another app's pod was redirected"
    );
    assert!(
        redirected(&agent, own.pid).is_empty(),
        "the agent's own pod was redirected"
    );

    // A pod that comes later, through the watch: cgroupfs, containerd, Guaranteed.
    let (worker_uid, worker_id) = ("5f0c1e2a-9b7d-4c3e-8a21-0d9e8f7a6b5c", "e5".repeat(32));
    let worker_pod = pods::pod_cgroup(Driver::Cgroupfs, worker_uid, Qos::Guaranteed);
    let worker_dir = tree.mkcg(cg.dir(), &format!("{worker_pod}/{worker_id}"));
    let worker_labels =
        json!({"app.kubernetes.io/name": "sure", "app.kubernetes.io/part-of": "sure"});
    // First as the API shows a pod whose container is starting (no
    // container id yet): its process is covered already, through the
    // pod's cgroup, and named by pod (the API has not said which
    // container that cgroup is).
    api.put(
        "pods",
        pod(
            "sure-worker-0",
            worker_uid,
            "Guaranteed",
            worker_labels.clone(),
            &[],
        ),
    );
    assert!(
        agent
            .wait_for_line(TIMEOUT, covered("sure-worker-0"))
            .is_some(),
        "a pod added through the watch was not covered:\n{}",
        agent.output()
    );
    let early = curl_in(&worker_dir, &up.url("/worker-early"));
    assert_eq!(early.stdout, "200", "{early:?}");
    let rec = agent
        .wait_for_conn(TIMEOUT, |r| r["tgid"] == early.pid)
        .expect("a starting container's connection was not redirected");
    assert_eq!(rec["pod"], "sure-worker-0", "{rec}");
    assert!(rec["container"].is_null(), "{rec}");
    // Then with the container started: named by container too.
    api.put(
        "pods",
        pod(
            "sure-worker-0",
            worker_uid,
            "Guaranteed",
            worker_labels,
            &[("worker", format!("containerd://{worker_id}"))],
        ),
    );
    let deadline = std::time::Instant::now() + TIMEOUT;
    while covered_in_status(&state).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let worker = curl_in(&worker_dir, &up.url("/worker"));
    assert_eq!(worker.stdout, "200", "{worker:?}");
    let rec = agent
        .wait_for_conn(TIMEOUT, |r| r["tgid"] == worker.pid)
        .expect("the new pod's connection was not redirected");
    assert_eq!(rec["pod"], "sure-worker-0", "{rec}");
    assert_eq!(rec["container"], "worker", "{rec}");
    assert_eq!(
        covered_in_status(&state),
        ["sure/sure-web-0/web", "sure/sure-worker-0/worker"]
    );

    // A deleted pod is dropped: its process (still there) goes direct.
    api.delete("pods", "sure-web-0");
    assert!(
        agent
            .wait_for_line(TIMEOUT, |l| l.contains("pod no longer covered")
                && l.contains("sure-web-0"))
            .is_some(),
        "the deleted pod was not dropped:\n{}",
        agent.output()
    );
    let after = curl_in(&web_dir, &up.url("/web-after"));
    assert_eq!(after.stdout, "200", "{after:?}");
    // The worker is still covered (a later connection of it is logged).
    let worker2 = curl_in(&worker_dir, &up.url("/worker2"));
    assert!(
        agent
            .wait_for_conn(TIMEOUT, |r| r["tgid"] == worker2.pid)
            .is_some(),
        "the remaining pod lost its cover"
    );
    assert!(
        redirected(&agent, after.pid).is_empty(),
        "the deleted pod's process was still redirected"
    );
    assert_eq!(covered_in_status(&state), ["sure/sure-worker-0/worker"]);

    // The watch asked for this node's pods and the selector.
    let requests = api.requests().join("\n");
    assert!(
        requests.contains("fieldSelector=spec.nodeName%3Dnode-1"),
        "{requests}"
    );
    assert!(
        requests.contains("labelSelector=app.kubernetes.io"),
        "{requests}"
    );
    assert!(requests.contains("watch=true"), "{requests}");
    agent.stop();
    drop(tree);
    let _ = std::fs::remove_dir_all(&state);
}
