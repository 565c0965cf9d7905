//! A stand-in Kubernetes API server for tests: no real one can be
//! installed on the lab machines, so this serves, over plain HTTP (inside
//! a lab namespace, or on the loopback address), the part of the API a
//! node agent's client uses, as a real API server answers it, for every
//! kind in [`RESOURCES`] (Nodes, Services, EndpointSlices, Namespaces,
//! Pods, NetworkPolicies):
//!
//! - `GET` of a collection (`/api/v1/nodes`, `/api/v1/services`,
//!   `/api/v1/namespaces/NS/services`,
//!   `/apis/discovery.k8s.io/v1/endpointslices`, …): a `KindList` with
//!   `metadata.resourceVersion` (items without `kind`/`apiVersion`, as
//!   real lists have them);
//! - the same with `?watch=true&resourceVersion=R`: a chunked stream of
//!   JSON lines (`ADDED`, `MODIFIED`, `DELETED`, and `BOOKMARK` with the
//!   current resourceVersion when `allowWatchBookmarks` is asked and
//!   nothing happened for a second), ended after `timeoutSeconds`; a
//!   resourceVersion older than the oldest event kept gets what a real
//!   server sends: an `ERROR` event carrying a `Status` with code 410,
//!   reason `Expired`;
//! - `GET` and `PATCH` of one object (`/api/v1/nodes/NAME`,
//!   `/api/v1/namespaces/NS/services/NAME`, …; a JSON merge patch, as
//!   `application/merge-patch+json` or
//!   `application/strategic-merge-patch+json`, which for annotations is
//!   the same).
//!
//! One resourceVersion sequence runs across every kind, as in a real
//! server (etcd's revision). The test drives the objects
//! ([`KubeApi::put`], [`KubeApi::delete`], and [`KubeApi::put_node`] and
//! friends for Nodes), stops and restarts the server, and forgets its
//! history ([`KubeApi::expire`]) to force clients to re-list.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::netns::Netns;

/// The port the stand-in serves on (a real API server's).
pub const KUBE_API_PORT: u16 = 6443;

/// A kind of object the stand-in serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// Its `apiVersion`: `v1` (the core group) or `GROUP/VERSION`.
    pub api_version: &'static str,
    /// Its `kind`.
    pub kind: &'static str,
    /// Its name in paths and in RBAC rules.
    pub plural: &'static str,
    /// Whether its objects live in a namespace.
    pub namespaced: bool,
}

/// The kinds served, one line each.
pub const RESOURCES: &[Resource] = &[
    Resource::cluster("v1", "Node", "nodes"),
    Resource::namespaced("v1", "Service", "services"),
    Resource::namespaced("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),
    Resource::cluster("v1", "Namespace", "namespaces"),
    Resource::namespaced("v1", "Pod", "pods"),
    Resource::namespaced("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
];

impl Resource {
    const fn cluster(api_version: &'static str, kind: &'static str, plural: &'static str) -> Self {
        Resource {
            api_version,
            kind,
            plural,
            namespaced: false,
        }
    }

    const fn namespaced(
        api_version: &'static str,
        kind: &'static str,
        plural: &'static str,
    ) -> Self {
        Resource {
            namespaced: true,
            ..Resource::cluster(api_version, kind, plural)
        }
    }

    /// The served kind named `kind`.
    pub fn of_kind(kind: &str) -> Result<&'static Resource> {
        RESOURCES
            .iter()
            .find(|r| r.kind == kind)
            .with_context(|| format!("the stand-in serves no {kind:?}"))
    }

    /// What a request's path names of this kind: the collection (in a
    /// namespace or all of them) or one object.
    fn route<'p>(&self, path: &'p str) -> Option<Route<'p>> {
        let rest = match self.api_version {
            "v1" => path.strip_prefix("/api/v1/")?,
            group => path
                .strip_prefix("/apis/")?
                .strip_prefix(group)?
                .strip_prefix('/')?,
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let (namespace, name) = match segments[..] {
            [plural] if plural == self.plural => (None, None),
            [plural, name] if plural == self.plural && !self.namespaced => (None, Some(name)),
            ["namespaces", ns, plural] if plural == self.plural && self.namespaced => {
                (Some(ns), None)
            }
            ["namespaces", ns, plural, name] if plural == self.plural && self.namespaced => {
                (Some(ns), Some(name))
            }
            _ => return None,
        };
        Some(Route {
            resource: *self,
            namespace,
            name,
        })
    }

    /// `name` in `namespace` as the store keys it.
    fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{ns}/{name}"),
            _ => name.to_string(),
        }
    }
}

/// What a request's path names.
struct Route<'p> {
    resource: Resource,
    /// The namespace, for a namespaced path.
    namespace: Option<&'p str>,
    /// The object, or `None` for the collection.
    name: Option<&'p str>,
}

impl Route<'_> {
    /// Whether `object` (of this route's kind) is in its collection.
    fn holds(&self, object: &Value) -> bool {
        self.namespace
            .is_none_or(|ns| object["metadata"]["namespace"].as_str() == Some(ns))
    }
}

/// A stand-in API server listening on an address of a lab namespace (or
/// of the test's own).
pub struct KubeApi {
    ns: Option<Netns>,
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

/// One change, kept for watches.
struct Change {
    revision: u64,
    kind: &'static str,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    action: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    /// The last resourceVersion handed out, across every kind.
    revision: u64,
    /// The objects, by kind and then `namespace/name` (or `name`).
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
    /// Changes kept for watches.
    events: Vec<Change>,
    /// The oldest resourceVersion a watch may start from.
    oldest: u64,
    /// Bumped to end every open watch (a stop or [`KubeApi::expire`]).
    generation: u64,
    /// Lists served.
    lists: u64,
    /// The Content-Type of each PATCH received.
    patch_types: Vec<String>,
    /// The requests received: the resource (its plural, empty for a path
    /// the stand-in does not serve) and the verb as RBAC names it.
    requests: BTreeSet<(&'static str, &'static str)>,
    /// The open connections, by number, closed by a stop.
    connections: BTreeMap<u64, TcpStream>,
    /// The number of the next connection.
    next_connection: u64,
}

impl State {
    /// Store `object` of kind `resource` (created, or replaced) with the
    /// next resourceVersion and keep the change.
    fn put(&mut self, resource: &Resource, mut object: Value) -> Result<Value> {
        let name = object["metadata"]["name"]
            .as_str()
            .with_context(|| format!("a {} without metadata.name", resource.kind))?;
        let namespace = object["metadata"]["namespace"].as_str();
        if resource.namespaced && namespace.is_none() {
            bail!("a {} without metadata.namespace", resource.kind);
        }
        let key = resource.key(namespace, name);
        object["kind"] = resource.kind.into();
        object["apiVersion"] = resource.api_version.into();
        let action = if self.get(resource, &key).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        self.record(resource, action, &mut object);
        self.objects
            .entry(resource.kind)
            .or_default()
            .insert(key, object.clone());
        Ok(object)
    }

    /// Remove the object `key` of kind `resource`; false if there was none.
    fn delete(&mut self, resource: &Resource, key: &str) -> bool {
        let removed = self
            .objects
            .get_mut(resource.kind)
            .and_then(|objects| objects.remove(key));
        let Some(mut object) = removed else {
            return false;
        };
        self.record(resource, "DELETED", &mut object);
        true
    }

    /// Give `object` the next resourceVersion and keep the change.
    fn record(&mut self, resource: &Resource, action: &'static str, object: &mut Value) {
        self.revision += 1;
        object["metadata"]["resourceVersion"] = self.revision.to_string().into();
        self.events.push(Change {
            revision: self.revision,
            kind: resource.kind,
            action,
            object: object.clone(),
        });
    }

    fn get(&self, resource: &Resource, key: &str) -> Option<Value> {
        self.objects.get(resource.kind)?.get(key).cloned()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl KubeApi {
    /// Serve on `ip`:[`KUBE_API_PORT`] inside `ns`.
    pub fn start(ns: &Netns, ip: Ipv4Addr) -> Result<KubeApi> {
        KubeApi::serve_on(Some(ns.clone()), SocketAddr::from((ip, KUBE_API_PORT)))
    }

    /// Serve on a free port of 127.0.0.1 in the caller's own namespace
    /// (for clients in the test process: no root needed).
    pub fn start_local() -> Result<KubeApi> {
        KubeApi::serve_on(None, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
    }

    fn serve_on(ns: Option<Netns>, addr: SocketAddr) -> Result<KubeApi> {
        let mut api = KubeApi {
            ns,
            addr,
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

    /// Write a kubeconfig for the server into `dir` (made if need be);
    /// its path.
    pub fn kubeconfig_in(&self, dir: &Path) -> Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("kubeconfig");
        self.write_kubeconfig(&path)?;
        Ok(path)
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

    /// Listen (again, on the same address, with the same objects and
    /// history).
    pub fn launch(&mut self) -> Result<()> {
        if self.serving.is_some() {
            return Ok(());
        }
        let addr = self.addr;
        let bind = move || TcpListener::bind(addr).with_context(|| format!("binding {addr}"));
        let listener = match &self.ns {
            Some(ns) => ns.enter(bind)?,
            None => bind()?,
        };
        // A free port, once chosen, is kept for the next launch.
        self.addr = listener.local_addr()?;
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
        self.requests().into_iter().map(|(_, verb)| verb).collect()
    }

    /// The requests received so far, as RBAC rules name them: the
    /// resource (`nodes`, `services`, …; empty for a path the stand-in
    /// does not serve) and the verb.
    pub fn requests(&self) -> BTreeSet<(&'static str, &'static str)> {
        self.shared.lock().requests.clone()
    }

    /// The Content-Type of every PATCH received so far.
    pub fn patch_types(&self) -> Vec<String> {
        self.shared.lock().patch_types.clone()
    }

    /// Create or replace an object of a kind in [`RESOURCES`] (`object`
    /// as a cluster holds it, with `kind`, `metadata.name` and, for a
    /// namespaced kind, `metadata.namespace`); its resourceVersion is set.
    pub fn put(&self, object: Value) -> Result<()> {
        let kind = object["kind"].as_str().context("an object without kind")?;
        let resource = Resource::of_kind(kind)?;
        self.shared.lock().put(resource, object)?;
        self.shared.changed.notify_all();
        Ok(())
    }

    /// The object of kind `kind` named `name` (in `namespace`, for a
    /// namespaced kind), as the server holds it.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let resource = Resource::of_kind(kind).ok()?;
        self.shared
            .lock()
            .get(resource, &resource.key(namespace, name))
    }

    /// Delete the object of kind `kind` named `name` (in `namespace`);
    /// false if there was none.
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> bool {
        let Ok(resource) = Resource::of_kind(kind) else {
            return false;
        };
        let deleted = self
            .shared
            .lock()
            .delete(resource, &resource.key(namespace, name));
        self.shared.changed.notify_all();
        deleted
    }

    /// Create or replace a Node (`node` as a cluster holds it, with
    /// `metadata.name`); its resourceVersion is set.
    pub fn put_node(&self, mut node: Value) -> Result<()> {
        node["kind"] = "Node".into();
        self.put(node)
    }

    /// The Node named `name`, as the server holds it.
    pub fn node(&self, name: &str) -> Option<Value> {
        self.get("Node", None, name)
    }

    /// Delete a Node; false if there was none.
    pub fn delete_node(&self, name: &str) -> bool {
        self.delete("Node", None, name)
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
    let annotations = string_map(annotations);
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

/// A Service as a cluster returns it: `namespace/name` at `cluster_ip`
/// (`"None"` for a headless one), type ClusterIP, with `ports` as (name,
/// protocol, port, targetPort: a number or a container port's name).
pub fn service_object(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    ports: &[(&str, &str, u16, &str)],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port_name, protocol, port, target)| {
            let target: Value = target
                .parse::<u16>()
                .map_or(Value::from(*target), Value::from);
            json!({ "name": port_name, "protocol": protocol, "port": port, "targetPort": target })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip,
            "clusterIPs": [cluster_ip],
            "ipFamilies": ["IPv4"],
            "ports": ports,
            "selector": { "app": name },
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
        },
    })
}

/// An IPv4 EndpointSlice as the EndpointSlice controller writes it:
/// `namespace/name`, labelled for Service `service`, with `ports` as
/// (name, protocol, port) and `endpoints` as (address, node, ready); an
/// endpoint's `serving` is its `ready`, none is terminating.
pub fn endpoint_slice_object(
    namespace: &str,
    name: &str,
    service: &str,
    ports: &[(&str, &str, u16)],
    endpoints: &[(Ipv4Addr, &str, bool)],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port_name, protocol, port)| {
            json!({ "name": port_name, "protocol": protocol, "port": port })
        })
        .collect();
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|(address, node, ready)| {
            json!({
                "addresses": [address.to_string()],
                "conditions": { "ready": ready, "serving": ready, "terminating": false },
                "nodeName": node,
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// A Namespace as a cluster returns it: `name` with `labels`, and the
/// label the API server adds (`kubernetes.io/metadata.name`).
pub fn namespace_object(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut labels = string_map(labels);
    labels.insert("kubernetes.io/metadata.name".into(), name.into());
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name, "labels": labels },
        "spec": { "finalizers": ["kubernetes"] },
        "status": { "phase": "Active" },
    })
}

/// A Pod as a cluster returns it: `namespace/name` with `labels`, one
/// container with `ports` as (name, protocol, containerPort), Running at
/// `ip`, or Pending without an address if `None`.
pub fn pod_object(
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    ip: Option<Ipv4Addr>,
    ports: &[(&str, &str, u16)],
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port_name, protocol, port)| {
            json!({ "name": port_name, "protocol": protocol, "containerPort": port })
        })
        .collect();
    let status = match ip {
        Some(ip) => json!({
            "phase": "Running",
            "hostIP": "10.1.0.11",
            "podIP": ip.to_string(),
            "podIPs": [{ "ip": ip.to_string() }],
        }),
        None => json!({ "phase": "Pending" }),
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": string_map(labels) },
        "spec": {
            "nodeName": "node-1",
            "containers": [{ "name": "main", "image": "registry.k8s.io/pause:3.10", "ports": ports }],
        },
        "status": status,
    })
}

/// A NetworkPolicy as a cluster returns it: `namespace/name` with `spec`
/// (`podSelector`, `policyTypes`, `ingress`, `egress`, as the API writes
/// them).
pub fn network_policy_object(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": { "name": name, "namespace": namespace },
        "spec": spec,
    })
}

fn string_map(pairs: &[(&str, &str)]) -> serde_json::Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), Value::from(*v)))
        .collect()
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

/// The verb a request is, as RBAC names it.
fn verb(method: &str, route: &Route, watch: bool) -> &'static str {
    match (method, route.name) {
        ("GET", None) if watch => "watch",
        ("GET", None) => "list",
        ("GET", Some(_)) => "get",
        ("PATCH", Some(_)) => "patch",
        _ => "unknown",
    }
}

/// Answer the requests of one connection until it closes or a watch
/// ends (the connection with it, as its answer says: a client does not
/// send its next request on it).
fn serve(stream: &TcpStream, shared: &Shared) -> Result<()> {
    stream.set_nonblocking(false)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream.try_clone()?;
    while let Some(request) = read_request(&mut reader)? {
        let path = request.path.trim_end_matches('/');
        let Some(route) = RESOURCES.iter().find_map(|r| r.route(path)) else {
            shared.lock().requests.insert(("", "unknown"));
            respond(&mut out, 404, &status(404, "NotFound", &request.path))?;
            continue;
        };
        let watch = matches!(
            request.query.get("watch").map(String::as_str),
            Some("true" | "1")
        );
        let verb = verb(&request.method, &route, watch);
        shared.lock().requests.insert((route.resource.plural, verb));
        let resource = &route.resource;
        match (verb, route.name) {
            ("watch", _) => return stream_watch(&mut out, shared, &request, &route),
            ("list", _) => {
                let mut state = shared.lock();
                state.lists += 1;
                let items: Vec<Value> = state
                    .objects
                    .get(resource.kind)
                    .into_iter()
                    .flat_map(BTreeMap::values)
                    .filter(|o| route.holds(o))
                    .map(|o| {
                        let mut item = o.clone();
                        if let Some(o) = item.as_object_mut() {
                            o.remove("kind");
                            o.remove("apiVersion");
                        }
                        item
                    })
                    .collect();
                let list = json!({
                    "kind": format!("{}List", resource.kind),
                    "apiVersion": resource.api_version,
                    "metadata": { "resourceVersion": state.revision.to_string() },
                    "items": items,
                });
                drop(state);
                respond(&mut out, 200, &list)?;
            }
            ("get", Some(name)) => {
                let key = resource.key(route.namespace, name);
                match shared.lock().get(resource, &key) {
                    Some(object) => respond(&mut out, 200, &object)?,
                    None => {
                        let message = not_found(resource, name);
                        respond(&mut out, 404, &status(404, "NotFound", &message))?;
                    }
                }
            }
            ("patch", Some(name)) => match patch(shared, &route, name, &request) {
                Ok(object) => respond(&mut out, 200, &object)?,
                Err((code, reason, message)) => {
                    respond(&mut out, code, &status(code, reason, &message))?;
                }
            },
            _ => respond(
                &mut out,
                405,
                &status(405, "MethodNotAllowed", &request.method),
            )?,
        }
    }
    Ok(())
}

/// What a 404 for `name` of kind `resource` says.
fn not_found(resource: &Resource, name: &str) -> String {
    format!("{} \"{name}\" not found", resource.plural)
}

fn patch(
    shared: &Shared,
    route: &Route,
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
    let resource = &route.resource;
    let Some(mut object) = state.get(resource, &resource.key(route.namespace, name)) else {
        return Err((404, "NotFound", not_found(resource, name)));
    };
    merge(&mut object, &patch);
    let object = state
        .put(resource, object)
        .map_err(|e| (422, "Invalid", format!("{e:#}")))?;
    shared.changed.notify_all();
    Ok(object)
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

fn stream_watch(
    out: &mut TcpStream,
    shared: &Shared,
    request: &Request,
    route: &Route,
) -> Result<()> {
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
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n"
    )?;
    out.flush()?;
    let resource = &route.resource;
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
        // Every change after the cursor moves it; those of this
        // collection are sent.
        let newer: Vec<&Change> = state
            .events
            .iter()
            .filter(|c| c.revision > cursor)
            .collect();
        let Some(last) = newer.last().map(|c| c.revision) else {
            let (next, waited) = shared
                .changed
                .wait_timeout(state, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            if waited.timed_out() && bookmarks && state.generation == generation {
                let bookmark = json!({ "type": "BOOKMARK", "object": {
                    "kind": resource.kind, "apiVersion": resource.api_version,
                    "metadata": { "resourceVersion": state.revision.to_string() } } });
                cursor = state.revision;
                drop(state);
                chunk(out, &bookmark)?;
                state = shared.lock();
            }
            continue;
        };
        let pending: Vec<Value> = newer
            .into_iter()
            .filter(|c| c.kind == resource.kind && route.holds(&c.object))
            .map(|c| json!({ "type": c.action, "object": c.object }))
            .collect();
        cursor = last;
        drop(state);
        for event in pending {
            chunk(out, &event)?;
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
    fn paths_name_a_collection_or_an_object_of_each_kind() {
        fn route(path: &str) -> Option<(&str, Option<&str>, Option<&str>)> {
            let r = RESOURCES.iter().find_map(|r| r.route(path))?;
            Some((r.resource.kind, r.namespace, r.name))
        }
        assert_eq!(route("/api/v1/nodes"), Some(("Node", None, None)));
        assert_eq!(route("/api/v1/nodes/n1"), Some(("Node", None, Some("n1"))));
        assert_eq!(route("/api/v1/services"), Some(("Service", None, None)));
        assert_eq!(
            route("/api/v1/namespaces/default/services/web"),
            Some(("Service", Some("default"), Some("web")))
        );
        assert_eq!(
            route("/apis/discovery.k8s.io/v1/endpointslices"),
            Some(("EndpointSlice", None, None))
        );
        assert_eq!(
            route("/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices"),
            Some(("EndpointSlice", Some("ns"), None))
        );
        // A namespaced kind has no objects outside a namespace, a
        // cluster-scoped one none inside; other groups are not served.
        assert_eq!(route("/api/v1/services/web"), None);
        assert_eq!(route("/api/v1/namespaces/default/nodes"), None);
        assert_eq!(route("/apis/discovery.k8s.io/v1/services"), None);
        assert_eq!(route("/apis/networking.k8s.io/v1/pods"), None);
        // Namespaces are objects, and hold the namespaced kinds.
        assert_eq!(route("/api/v1/namespaces"), Some(("Namespace", None, None)));
        assert_eq!(
            route("/api/v1/namespaces/shop"),
            Some(("Namespace", None, Some("shop")))
        );
        assert_eq!(route("/api/v1/pods"), Some(("Pod", None, None)));
        assert_eq!(
            route("/api/v1/namespaces/shop/pods/web-0"),
            Some(("Pod", Some("shop"), Some("web-0")))
        );
        assert_eq!(
            route("/apis/networking.k8s.io/v1/networkpolicies"),
            Some(("NetworkPolicy", None, None))
        );
        assert_eq!(
            route("/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies/deny"),
            Some(("NetworkPolicy", Some("shop"), Some("deny")))
        );
    }

    #[test]
    fn one_resource_version_runs_across_kinds() {
        let mut state = State::default();
        let service = service_object("default", "web", "10.96.0.1", &[("", "TCP", 80, "http")]);
        assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
        let node = node_object("n1", None, Ipv4Addr::new(10, 1, 0, 11), &[]);
        let slice = endpoint_slice_object("default", "web-1", "web", &[], &[]);
        state.put(&RESOURCES[0], node).unwrap();
        let service = state.put(&RESOURCES[1], service).unwrap();
        let slice = state.put(&RESOURCES[2], slice).unwrap();
        assert_eq!(service["metadata"]["resourceVersion"], "2");
        assert_eq!(slice["metadata"]["resourceVersion"], "3");
        let again = state.put(&RESOURCES[1], service).unwrap();
        assert_eq!(again["metadata"]["resourceVersion"], "4");
        assert!(state.delete(&RESOURCES[2], "default/web-1"));
        assert!(!state.delete(&RESOURCES[2], "default/web-1"));
        let actions: Vec<(&str, &str)> = state.events.iter().map(|c| (c.kind, c.action)).collect();
        assert_eq!(
            actions,
            [
                ("Node", "ADDED"),
                ("Service", "ADDED"),
                ("EndpointSlice", "ADDED"),
                ("Service", "MODIFIED"),
                ("EndpointSlice", "DELETED"),
            ]
        );
        // A namespaced object needs its namespace.
        let mut stray = service_object("default", "x", "10.96.0.2", &[]);
        stray["metadata"]["namespace"] = Value::Null;
        assert!(state.put(&RESOURCES[1], stray).is_err());
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
