//! A fake Kubernetes API server on loopback (plain HTTP/1.1) for the
//! agent's pod and node watches: it serves what the test put in it, as
//! the real one does for `kube`'s watcher: lists (`GET /api/v1/pods`,
//! `/api/v1/nodes`, with a resourceVersion) and watch streams (`?watch=1`:
//! one JSON event per line, chunked, as long as the client stays or the
//! request's `timeoutSeconds` runs out), and single objects
//! (`/api/v1/nodes/NAME`). Every object change gets the next
//! resourceVersion and an ADDED, MODIFIED or DELETED event. Label and
//! field selectors are recorded but not applied (except a node's
//! `metadata.name`): the agent must check what it gets. A kubeconfig file
//! pointing at the server is written for the agent (`KUBECONFIG`).
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// Longest a watch response stays open (the agent then watches again).
const MAX_WATCH: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    rv: u64,
    /// (kind, name) -> object; kind is the URL's resource (`pods`, `nodes`).
    objects: BTreeMap<(String, String), Value>,
    /// (kind, resourceVersion, event).
    events: Vec<(String, u64, Value)>,
    /// Request lines received (method and path with query).
    requests: Vec<String>,
}

type Shared = Arc<(Mutex<State>, Condvar)>;

/// A running fake API server; stops on drop.
pub struct FakeKubeApi {
    pub addr: SocketAddr,
    state: Shared,
    stop: Arc<AtomicBool>,
    kubeconfig: PathBuf,
}

impl FakeKubeApi {
    /// Binds 127.0.0.1 on a free port and serves in the background.
    pub fn start() -> FakeKubeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the fake API server");
        let addr = listener.local_addr().expect("fake API address");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let state: Shared = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            // Bounded: polls until stopped (the test's life).
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, st) = (s.clone(), st.clone());
                        std::thread::spawn(move || {
                            let _ = serve(conn, &s, &st);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let kubeconfig = std::env::temp_dir().join(format!(
            "plk-kubeconfig-{}-{}",
            std::process::id(),
            crate::unique_index()
        ));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\nusers:\n- name: fake\n  user:\n    token: fake-token\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n"
            ),
        )
        .expect("writing the kubeconfig");
        FakeKubeApi {
            addr,
            state,
            stop,
            kubeconfig,
        }
    }

    /// The kubeconfig file that points at this server.
    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    /// Adds or replaces an object of `kind` (named by its metadata.name).
    pub fn put(&self, kind: &str, mut object: Value) {
        let name = object["metadata"]["name"]
            .as_str()
            .expect("object has metadata.name")
            .to_owned();
        let (m, cv) = &*self.state;
        let mut s = m.lock().expect("fake API lock");
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = (kind.to_owned(), name);
        let kind_word = if s.objects.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.objects.insert(key, object.clone());
        s.events.push((
            kind.to_owned(),
            rv,
            json!({"type": kind_word, "object": object}),
        ));
        cv.notify_all();
    }

    /// Deletes an object of `kind` by name (a DELETED event).
    pub fn delete(&self, kind: &str, name: &str) {
        let (m, cv) = &*self.state;
        let mut s = m.lock().expect("fake API lock");
        let Some(mut object) = s.objects.remove(&(kind.to_owned(), name.to_owned())) else {
            return;
        };
        s.rv += 1;
        let rv = s.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        s.events.push((
            kind.to_owned(),
            rv,
            json!({"type": "DELETED", "object": object}),
        ));
        cv.notify_all();
    }

    /// The request lines received so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.0.lock().expect("fake API lock").requests.clone()
    }
}

impl Drop for FakeKubeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.state.1.notify_all();
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// The value of `key` in a query string (percent-decoded for `%3D`, `%2F`, `%2C`).
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3D", "=")
                .replace("%3d", "=")
                .replace("%2F", "/")
                .replace("%2f", "/")
                .replace("%2C", ",")
                .replace("%2c", ",")
        })
    })
}

fn serve(conn: TcpStream, state: &Shared, stop: &AtomicBool) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let request = line.trim_end().to_owned();
    // The rest of the head (bounded).
    for _ in 0..100 {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    state
        .0
        .lock()
        .expect("fake API lock")
        .requests
        .push(request.clone());
    let target = request.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut out = conn;
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", kind] => {
            let watch = matches!(
                query_param(query, "watch").as_deref(),
                Some("1") | Some("true")
            );
            let name = query_param(query, "fieldSelector")
                .and_then(|f| f.strip_prefix("metadata.name=").map(str::to_owned));
            if watch {
                let since: u64 = query_param(query, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let timeout = query_param(query, "timeoutSeconds")
                    .and_then(|v| v.parse().ok())
                    .map_or(MAX_WATCH, |s: u64| Duration::from_secs(s).min(MAX_WATCH));
                stream_watch(&mut out, state, stop, kind, name.as_deref(), since, timeout)
            } else {
                let s = state.0.lock().expect("fake API lock");
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|((k, n), _)| k == kind && name.as_ref().is_none_or(|w| w == n))
                    .map(|(_, v)| v.clone())
                    .collect();
                let list = json!({
                    "apiVersion": "v1",
                    "kind": list_kind(kind),
                    "metadata": {"resourceVersion": s.rv.to_string()},
                    "items": items,
                });
                drop(s);
                respond(&mut out, 200, &list)
            }
        }
        ["api", "v1", kind, name] => {
            let s = state.0.lock().expect("fake API lock");
            match s.objects.get(&((*kind).to_owned(), (*name).to_owned())) {
                Some(o) => {
                    let o = o.clone();
                    drop(s);
                    respond(&mut out, 200, &o)
                }
                None => {
                    drop(s);
                    respond(&mut out, 404, &not_found(name))
                }
            }
        }
        _ => respond(&mut out, 404, &not_found(path)),
    }
}

fn list_kind(kind: &str) -> &'static str {
    match kind {
        "pods" => "PodList",
        "nodes" => "NodeList",
        _ => "List",
    }
}

fn not_found(what: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "message": format!("{what} not found"), "reason": "NotFound", "code": 404})
}

fn respond(out: &mut TcpStream, status: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let reason = if status == 200 { "OK" } else { "Not Found" };
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

#[allow(clippy::too_many_arguments)]
fn stream_watch(
    out: &mut TcpStream,
    state: &Shared,
    stop: &AtomicBool,
    kind: &str,
    name: Option<&str>,
    mut since: u64,
    timeout: Duration,
) -> std::io::Result<()> {
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    out.flush()?;
    let deadline = Instant::now() + timeout;
    let (m, cv) = &**state;
    let mut s = m.lock().expect("fake API lock");
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let batch: Vec<(u64, String)> = s
            .events
            .iter()
            .filter(|(k, rv, ev)| {
                k == kind
                    && *rv > since
                    && name.is_none_or(|n| ev["object"]["metadata"]["name"] == n)
            })
            .map(|(_, rv, ev)| (*rv, format!("{ev}\n")))
            .collect();
        if batch.is_empty() {
            s = cv
                .wait_timeout(s, Duration::from_millis(200))
                .expect("fake API lock")
                .0;
            continue;
        }
        drop(s);
        for (rv, line) in batch {
            write!(out, "{:x}\r\n{line}\r\n", line.len())?;
            out.flush()?;
            since = rv;
        }
        s = m.lock().expect("fake API lock");
    }
    drop(s);
    write!(out, "0\r\n\r\n")?;
    out.flush()
}
