//! A stand-in Kubernetes API server for tests: no real one can be
//! installed on the lab machines, so this serves, over plain HTTP inside
//! a lab namespace, the part of the API a node agent's Node client uses,
//! as a real API server answers it:
//!
//! - `GET /api/v1/nodes`: a `NodeList` with `metadata.resourceVersion`
//!   (items without `kind`/`apiVersion`, as real lists have them);
//! - `GET /api/v1/nodes?watch=true&resourceVersion=R`: a chunked stream of
//!   JSON lines (`ADDED`, `MODIFIED`, `DELETED`, and `BOOKMARK` with the
//!   current resourceVersion when `allowWatchBookmarks` is asked and
//!   nothing happened for a second), ended after `timeoutSeconds`; a
//!   resourceVersion older than the oldest event kept gets what a real
//!   server sends: an `ERROR` event carrying a `Status` with code 410,
//!   reason `Expired`;
//! - `GET` and `PATCH /api/v1/nodes/NAME` (a JSON merge patch, as
//!   `application/merge-patch+json` or
//!   `application/strategic-merge-patch+json`, which for annotations is
//!   the same).
//!
//! The test drives the Node objects ([`KubeApi::put_node`],
//! [`KubeApi::delete_node`]), stops and restarts the server, and forgets
//! its history ([`KubeApi::expire`]) to force clients to re-list.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::netns::Netns;

/// The port the stand-in serves on (a real API server's).
pub const KUBE_API_PORT: u16 = 6443;

/// A stand-in API server listening on an address of a lab namespace.
pub struct KubeApi {
    ns: Netns,
    addr: SocketAddr,
    shared: Arc<Shared>,
    serving: Option<Serving>,
}

struct Serving {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    /// The last resourceVersion handed out.
    revision: u64,
    nodes: BTreeMap<String, Value>,
    /// Events kept for watches: (resourceVersion, type, object).
    events: Vec<(u64, &'static str, Value)>,
    /// The oldest resourceVersion a watch may start from.
    oldest: u64,
    /// Bumped to end every open watch (a stop or [`KubeApi::expire`]).
    generation: u64,
    /// Lists served.
    lists: u64,
    /// The Content-Type of each PATCH received.
    patch_types: Vec<String>,
    /// The verbs of the requests received, as RBAC names them.
    verbs: BTreeSet<&'static str>,
    /// The open connections, by number, closed by a stop.
    connections: BTreeMap<u64, TcpStream>,
    /// The number of the next connection.
    next_connection: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl KubeApi {
    /// Serve on `ip`:[`KUBE_API_PORT`] inside `ns`.
    pub fn start(ns: &Netns, ip: Ipv4Addr) -> Result<KubeApi> {
        let mut api = KubeApi {
            ns: ns.clone(),
            addr: SocketAddr::from((ip, KUBE_API_PORT)),
            shared: Arc::new(Shared::default()),
            serving: None,
        };
        api.launch()?;
        Ok(api)
    }

    /// `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Write a kubeconfig file that points a client at this server.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {}\n\
             contexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n\
             current-context: lab\nusers:\n- name: lab\n  user: {{}}\n",
            self.url()
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Listen (again, with the same Nodes and history).
    pub fn launch(&mut self) -> Result<()> {
        if self.serving.is_some() {
            return Ok(());
        }
        let addr = self.addr;
        let listener = self
            .ns
            .enter(move || TcpListener::bind(addr).with_context(|| format!("binding {addr}")))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = self.shared.clone();
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kube-api".into())
            .spawn(move || accept(&listener, &shared, &stopping))?;
        self.serving = Some(Serving { stop, thread });
        Ok(())
    }

    /// Stop listening and end every open connection (clients see the
    /// server gone); [`Self::launch`] resumes.
    pub fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.stop.store(true, Ordering::Relaxed);
            let _ = serving.thread.join();
            self.end_watches();
        }
    }

    /// Forget the history: every resourceVersion handed out so far is too
    /// old to watch from (`410 Gone`), and open watches end, so clients
    /// must list again.
    pub fn expire(&self) {
        let mut state = self.shared.lock();
        state.revision += 1;
        state.oldest = state.revision;
        state.events.clear();
        state.generation += 1;
        self.shared.changed.notify_all();
    }

    /// How many lists the server has answered.
    pub fn lists(&self) -> u64 {
        self.shared.lock().lists
    }

    /// The verbs (RBAC's: `list`, `watch`, `get`, `patch`, or `unknown`
    /// for a request the stand-in does not serve) of the requests
    /// received so far.
    pub fn verbs(&self) -> BTreeSet<&'static str> {
        self.shared.lock().verbs.clone()
    }

    /// The Content-Type of every PATCH received so far.
    pub fn patch_types(&self) -> Vec<String> {
        self.shared.lock().patch_types.clone()
    }

    /// Create or replace a Node (`node` as a cluster holds it, with
    /// `metadata.name`); its resourceVersion is set.
    pub fn put_node(&self, mut node: Value) -> Result<()> {
        let name = node["metadata"]["name"]
            .as_str()
            .context("a Node without metadata.name")?
            .to_string();
        let mut state = self.shared.lock();
        let kind = if state.nodes.contains_key(&name) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        record(&mut state, kind, &mut node);
        state.nodes.insert(name, node);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// The Node named `name`, as the server holds it.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.shared.lock().nodes.get(name).cloned()
    }

    /// Delete a Node; false if there was none.
    pub fn delete_node(&self, name: &str) -> bool {
        let mut state = self.shared.lock();
        let Some(mut node) = state.nodes.remove(name) else {
            return false;
        };
        record(&mut state, "DELETED", &mut node);
        self.shared.changed.notify_all();
        true
    }

    fn end_watches(&self) {
        let mut state = self.shared.lock();
        state.generation += 1;
        for connection in std::mem::take(&mut state.connections).into_values() {
            let _ = connection.shutdown(std::net::Shutdown::Both);
        }
        self.shared.changed.notify_all();
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Node as a cluster returns it: `name` with pod CIDR `pod_cidr` (none
/// if `None`), InternalIP `internal_ip`, and `annotations`.
pub fn node_object(
    name: &str,
    pod_cidr: Option<&str>,
    internal_ip: Ipv4Addr,
    annotations: &[(&str, &str)],
) -> Value {
    let annotations: serde_json::Map<String, Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
        .collect();
    let spec = match pod_cidr {
        Some(cidr) => json!({ "podCIDR": cidr, "podCIDRs": [cidr] }),
        None => json!({}),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": format!("00000000-0000-0000-0000-{:0>12}", name.len()),
            "labels": { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux" },
            "annotations": annotations,
        },
        "spec": spec,
        "status": {
            "addresses": [
                { "type": "InternalIP", "address": internal_ip.to_string() },
                { "type": "Hostname", "address": name },
            ],
        },
    })
}

/// Give `node` the next resourceVersion and keep the event.
fn record(state: &mut State, kind: &'static str, node: &mut Value) {
    state.revision += 1;
    node["metadata"]["resourceVersion"] = state.revision.to_string().into();
    state.events.push((state.revision, kind, node.clone()));
}

fn accept(listener: &TcpListener, shared: &Arc<Shared>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let id = {
                    let mut state = shared.lock();
                    state.next_connection += 1;
                    let id = state.next_connection;
                    if let Ok(clone) = stream.try_clone() {
                        state.connections.insert(id, clone);
                    }
                    id
                };
                let shared = shared.clone();
                let _ = std::thread::Builder::new()
                    .name("kube-api-conn".into())
                    .spawn(move || {
                        let _ = serve(&stream, &shared);
                        // Closed, not left for the client to reuse.
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        shared.lock().connections.remove(&id);
                    });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// One request.
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    content_type: String,
    body: Vec<u8>,
}

fn read_request(reader: &mut impl BufRead) -> Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("a bad request line {line:?}");
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut length = 0;
    let mut content_type = String::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse()?,
                "content-type" => content_type = value.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Some(Request {
        method: method.into(),
        path: path.into(),
        query,
        content_type,
        body,
    }))
}

/// Answer the requests of one connection until it closes or a watch
/// ends.
fn serve(stream: &TcpStream, shared: &Shared) -> Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream.try_clone()?;
    while let Some(request) = read_request(&mut reader)? {
        let path = request.path.trim_end_matches('/');
        let name = path.strip_prefix("/api/v1/nodes/");
        let watch = matches!(
            request.query.get("watch").map(String::as_str),
            Some("true" | "1")
        );
        let verb = match (request.method.as_str(), name) {
            ("GET", None) if path == "/api/v1/nodes" && watch => "watch",
            ("GET", None) if path == "/api/v1/nodes" => "list",
            ("GET", Some(_)) => "get",
            ("PATCH", Some(_)) => "patch",
            _ => "unknown",
        };
        shared.lock().verbs.insert(verb);
        match (request.method.as_str(), name) {
            ("GET", None) if path == "/api/v1/nodes" && watch => {
                return stream_watch(&mut out, shared, &request);
            }
            ("GET", None) if path == "/api/v1/nodes" => {
                let mut state = shared.lock();
                state.lists += 1;
                let items: Vec<Value> = state
                    .nodes
                    .values()
                    .map(|n| {
                        let mut item = n.clone();
                        if let Some(o) = item.as_object_mut() {
                            o.remove("kind");
                            o.remove("apiVersion");
                        }
                        item
                    })
                    .collect();
                let list = json!({
                    "kind": "NodeList", "apiVersion": "v1",
                    "metadata": { "resourceVersion": state.revision.to_string() },
                    "items": items,
                });
                drop(state);
                respond(&mut out, 200, &list)?;
            }
            ("GET", Some(name)) => match shared.lock().nodes.get(name).cloned() {
                Some(node) => respond(&mut out, 200, &node)?,
                None => respond(&mut out, 404, &status(404, "NotFound", name))?,
            },
            ("PATCH", Some(name)) => {
                let answer = patch(shared, name, &request);
                match answer {
                    Ok(node) => respond(&mut out, 200, &node)?,
                    Err((code, reason, message)) => {
                        respond(&mut out, code, &status(code, reason, &message))?;
                    }
                }
            }
            _ => respond(&mut out, 404, &status(404, "NotFound", &request.path))?,
        }
    }
    Ok(())
}

fn patch(
    shared: &Shared,
    name: &str,
    request: &Request,
) -> std::result::Result<Value, (u16, &'static str, String)> {
    let kind = request.content_type.split(';').next().unwrap_or("").trim();
    let mut state = shared.lock();
    state.patch_types.push(kind.to_string());
    if !matches!(
        kind,
        "application/merge-patch+json" | "application/strategic-merge-patch+json"
    ) {
        return Err((
            415,
            "UnsupportedMediaType",
            format!("the stand-in takes merge patches, not {kind:?}"),
        ));
    }
    let patch: Value = serde_json::from_slice(&request.body)
        .map_err(|e| (400, "BadRequest", format!("the patch is not JSON: {e}")))?;
    let Some(mut node) = state.nodes.get(name).cloned() else {
        return Err((404, "NotFound", format!("nodes \"{name}\" not found")));
    };
    merge(&mut node, &patch);
    record(&mut state, "MODIFIED", &mut node);
    state.nodes.insert(name.to_string(), node.clone());
    shared.changed.notify_all();
    Ok(node)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(object) = target {
        for (key, value) in patch {
            if value.is_null() {
                object.remove(key);
            } else {
                merge(object.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// A `Status` object as the API server sends for a failure.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    })
}

fn respond(out: &mut TcpStream, code: u16, body: &Value) -> Result<()> {
    let body = body.to_string();
    write!(
        out,
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        if code == 200 { "OK" } else { "Error" },
        body.len()
    )?;
    out.flush()?;
    Ok(())
}

/// Send one JSON line as a chunk.
fn chunk(out: &mut TcpStream, line: &Value) -> Result<()> {
    let line = format!("{line}\n");
    write!(out, "{:x}\r\n{line}\r\n", line.len())?;
    out.flush()?;
    Ok(())
}

fn stream_watch(out: &mut TcpStream, shared: &Shared, request: &Request) -> Result<()> {
    let from: u64 = request
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = request.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = request
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(300), Duration::from_secs);
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    out.flush()?;
    let deadline = Instant::now() + timeout;
    let mut state = shared.lock();
    let generation = state.generation;
    // resourceVersion 0 (or none): from now on.
    let mut cursor = if from == 0 { state.revision } else { from };
    if cursor < state.oldest {
        let gone = status(
            410,
            "Expired",
            &format!("too old resource version: {cursor} ({})", state.oldest),
        );
        drop(state);
        chunk(out, &json!({ "type": "ERROR", "object": gone }))?;
        write!(out, "0\r\n\r\n")?;
        return Ok(());
    }
    loop {
        if state.generation != generation || Instant::now() >= deadline {
            drop(state);
            let _ = write!(out, "0\r\n\r\n");
            return Ok(());
        }
        let pending: Vec<(u64, &'static str, Value)> = state
            .events
            .iter()
            .filter(|(rv, _, _)| *rv > cursor)
            .cloned()
            .collect();
        if pending.is_empty() {
            let (next, waited) = shared
                .changed
                .wait_timeout(state, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            if waited.timed_out() && bookmarks && state.generation == generation {
                let bookmark = json!({ "type": "BOOKMARK", "object": {
                    "kind": "Node", "apiVersion": "v1",
                    "metadata": { "resourceVersion": state.revision.to_string() } } });
                cursor = state.revision;
                drop(state);
                chunk(out, &bookmark)?;
                state = shared.lock();
            }
            continue;
        }
        drop(state);
        for (rv, kind, object) in pending {
            chunk(out, &json!({ "type": kind, "object": object }))?;
            cursor = rv;
        }
        state = shared.lock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patches_set_and_remove_annotations() {
        let mut node = node_object("n1", None, Ipv4Addr::new(10, 1, 0, 11), &[("a", "1")]);
        merge(
            &mut node,
            &json!({ "metadata": { "annotations": { "a": null, "b": "2" } } }),
        );
        assert_eq!(node["metadata"]["annotations"], json!({ "b": "2" }));
        assert_eq!(node["metadata"]["name"], "n1");
    }

    #[test]
    fn requests_are_read_with_their_query_and_body() {
        let text = "PATCH /api/v1/nodes/n1?fieldManager=x HTTP/1.1\r\nHost: a\r\n\
                    Content-Type: application/merge-patch+json\r\nContent-Length: 2\r\n\r\n{}";
        let request = read_request(&mut text.as_bytes()).unwrap().unwrap();
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("PATCH", "/api/v1/nodes/n1")
        );
        assert_eq!(request.query["fieldManager"], "x");
        assert_eq!(request.content_type, "application/merge-patch+json");
        assert_eq!(request.body, b"{}");
        assert!(read_request(&mut &b""[..]).unwrap().is_none());
    }
}
