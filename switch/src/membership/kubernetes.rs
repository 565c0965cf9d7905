//! The Kubernetes membership source: the cluster's Node objects, read and
//! written as flanneld's kube subnet manager does (flannel's
//! `pkg/subnet/kube`).
//!
//! A node's pod CIDR is its Node's IPv4 `spec.podCIDRs` (or `podCIDR`);
//! its underlay address Flannel's `flannel.alpha.coreos.com/public-ip`
//! annotation when it has one, else its InternalIP; its VTEP MAC and VNI
//! Flannel's `flannel.alpha.coreos.com/backend-data`
//! (`{"VNI":1,"VtepMAC":"…"}`). This node publishes the same annotations
//! on its own Node (and podswitch's own: encapsulation and UDP port), so
//! flanneld nodes and podswitch nodes peer with each other.
//!
//! kube-rs's `watcher` lists the Nodes and watches them from the listed
//! resourceVersion (re-listing after a `410 Gone`); it runs on a
//! current-thread tokio runtime in a thread of its own, which hands
//! every change to the control plane as the etcd source does. While the
//! API server does not answer, the peers stay as they were and the
//! source is reported unreachable.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use futures_util::StreamExt;
use ipnet::{Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_nodes};
use serde::Deserialize;
use serde_json::{Value, json};

use super::flannel::VxlanData;
use super::{
    Applied, Follower, KubernetesSettings, MembershipSource, NodeAddress, Plane, Reachability,
};
use crate::config::{Config, Encap, PeerConfig};

/// Flannel's annotation: the node's backend (`vxlan`).
pub const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
/// Flannel's annotation: `{"VNI":1,"VtepMAC":"…"}`.
pub const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
/// Flannel's annotation: the node's VTEP address.
pub const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
/// Flannel's annotation: the node takes part in the kube subnet manager.
pub const KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";
/// podswitch's annotation: the node's encapsulation (`vxlan`, `geneve`).
pub const ENCAPSULATION: &str = "podswitch.io/encapsulation";
/// podswitch's annotation: the node's tunnel UDP port.
pub const UDP_PORT: &str = "podswitch.io/udp-port";

/// Pause between attempts while the API server cannot be reached at all.
pub(super) const RETRY: Duration = Duration::from_secs(1);
/// How long a get or patch may take (the daemon stops only between them).
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Start following the Node objects for the node configured as
/// `config`; `owned` are the peers restored from the saved state that
/// this source, not the file, put there (removed at the first listing if
/// the cluster no longer has them).
pub fn start(config: &Config, plane: Arc<dyn Plane>, owned: Vec<PeerConfig>) -> Result<Follower> {
    let node_name = config.kubernetes.node_name();
    anyhow::ensure!(
        !node_name.is_empty(),
        "kubernetes: no node name (set kubernetes.node_name or NODE_NAME)"
    );
    let me = Me::of(config);
    let settings = config.kubernetes.clone();
    Follower::spawn(move |stop| {
        Source {
            me,
            node_name,
            settings,
            plane,
            applied: Applied::owning(owned),
            nodes: BTreeMap::new(),
            relisted: None,
            skipped: BTreeMap::new(),
            published: false,
            stop,
            reachability: Reachability::new("kubernetes"),
        }
        .run();
    })
}

/// The pod CIDR of this node's Node (`spec.podCIDRs`), for the node
/// whose configuration file is `text` and leaves `pod_cidr` out. `None`
/// unless `membership = "kubernetes"`.
pub fn assign_pod_cidr(text: &str) -> Result<Option<Ipv4Net>> {
    /// What of the file this needs (the rest is checked later).
    #[derive(Deserialize)]
    struct File {
        #[serde(default)]
        membership: MembershipSource,
        #[serde(default)]
        kubernetes: KubernetesSettings,
    }
    let file: File = toml::from_str(text).context("reading the configuration")?;
    if file.membership != MembershipSource::Kubernetes {
        return Ok(None);
    }
    let name = file.kubernetes.node_name();
    let runtime = runtime()?;
    let node = runtime.block_on(async {
        let api: Api<Node> = Api::all(client(&file.kubernetes).await?);
        api.get(&name)
            .await
            .with_context(|| format!("getting Node {name}"))
    })?;
    let cidr = pod_cidr(&node).with_context(|| {
        format!("pod_cidr is left to Kubernetes, but Node {name} has no IPv4 spec.podCIDR")
    })?;
    tracing::info!(pod_cidr = %cidr, node = %name, "membership: this node's pod CIDR from its Node");
    Ok(Some(cidr))
}

/// A current-thread runtime for the client.
pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the Kubernetes client's runtime")
}

/// A client configured by `settings.kubeconfig`, else in-cluster, else
/// `$KUBECONFIG` or `~/.kube/config`.
async fn client(settings: &KubernetesSettings) -> Result<kube::Client> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &Default::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            kube::Config::incluster().context("the in-cluster configuration")?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig ($KUBECONFIG, ~/.kube/config)")?,
    };
    kube::Client::try_from(config).context("making the Kubernetes client")
}

/// A client as [`client`] makes it, made again every [`RETRY`] while
/// that fails (each failure told to `failed`); `None` once `stop` is set.
pub(super) async fn connect(
    settings: &KubernetesSettings,
    stop: &AtomicBool,
    mut failed: impl FnMut(String),
) -> Option<kube::Client> {
    while !stop.load(Ordering::Relaxed) {
        match client(settings).await {
            Ok(client) => return Some(client),
            Err(e) => {
                failed(format!("{e:#}"));
                tokio::time::sleep(RETRY).await;
            }
        }
    }
    None
}

/// What this node is, as the other nodes' annotations are compared with.
#[derive(Debug, Clone)]
struct Me {
    node_ip: IpAddr,
    pod_cidr: Ipv4Net,
    vni: u32,
    encap: Encap,
    udp_port: u16,
    vtep_mac: crate::mac::MacAddr,
    address: NodeAddress,
}

impl Me {
    fn of(config: &Config) -> Me {
        Me {
            node_ip: config.node_ip,
            pod_cidr: config.pod_cidr,
            vni: config.vni,
            encap: config.encap,
            udp_port: config.tunnel_udp_port(),
            vtep_mac: config.router_mac(),
            address: config.kubernetes.address,
        }
    }

    /// The annotations this node publishes on its Node (`None`: removed).
    fn annotations(&self) -> BTreeMap<&'static str, Option<String>> {
        let data = VxlanData {
            vni: self.vni,
            vtep_mac: self.vtep_mac,
        };
        let vxlan = self.encap == Encap::Vxlan;
        BTreeMap::from([
            (BACKEND_TYPE, vxlan.then(|| "vxlan".to_string())),
            (BACKEND_DATA, serde_json::to_string(&data).ok()),
            (PUBLIC_IP, Some(self.node_ip.to_string())),
            (KUBE_SUBNET_MANAGER, vxlan.then(|| "true".to_string())),
            (ENCAPSULATION, Some(encap_name(self.encap))),
            (UDP_PORT, Some(self.udp_port.to_string())),
        ])
    }

    /// Whether `node` carries this node's annotations.
    fn published_on(&self, node: &Node) -> bool {
        let have = node.metadata.annotations.as_ref();
        self.annotations()
            .iter()
            .all(|(key, want)| have.and_then(|a| a.get(*key)) == want.as_ref())
    }

    /// The peer `node` describes: `Ok(None)` while it has no pod CIDR,
    /// `Err` with why it cannot be one.
    fn peer_of(&self, node: &Node) -> Result<Option<PeerConfig>, String> {
        let Some(pod_cidr) = pod_cidr(node) else {
            return Ok(None);
        };
        let annotation = |key: &str| {
            node.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .map(String::as_str)
        };
        let node_ip = match (self.address, annotation(PUBLIC_IP)) {
            (NodeAddress::PublicIpAnnotation, Some(ip)) => ip
                .parse::<Ipv4Addr>()
                .map_err(|_| format!("{PUBLIC_IP} {ip:?} is not an IPv4 address"))?,
            _ => internal_ip(node).ok_or("no IPv4 InternalIP")?,
        };
        match annotation(ENCAPSULATION) {
            Some(theirs) if theirs != encap_name(self.encap) => {
                return Err(format!(
                    "its encapsulation is {theirs}, this node's {}",
                    encap_name(self.encap)
                ));
            }
            Some(_) => {
                if let Some(port) = annotation(UDP_PORT)
                    && port != self.udp_port.to_string()
                {
                    return Err(format!(
                        "its UDP port is {port}, this node's {}: set udp_port alike",
                        self.udp_port
                    ));
                }
            }
            None => {
                // A Flannel node (or one whose daemon has not published yet).
                match annotation(BACKEND_TYPE) {
                    None => return Err("no VTEP published yet".into()),
                    Some(t) if !t.eq_ignore_ascii_case("vxlan") => {
                        return Err(format!("a Flannel node with backend {t:?}, not vxlan"));
                    }
                    Some(_) if self.encap != Encap::Vxlan => {
                        return Err(format!(
                            "a Flannel (vxlan) node, and this node's encapsulation is {}",
                            encap_name(self.encap)
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        let data = annotation(BACKEND_DATA).ok_or(format!("no {BACKEND_DATA}"))?;
        let data: VxlanData =
            serde_json::from_str(data).map_err(|e| format!("{BACKEND_DATA}: {e}"))?;
        if data.vni != self.vni {
            return Err(format!("VNI {}, not this node's {}", data.vni, self.vni));
        }
        Ok(Some(PeerConfig {
            node_ip: node_ip.into(),
            pod_cidr,
            pod_cidr6: pod_cidr6(node),
            vtep_mac: Some(data.vtep_mac),
        }))
    }
}

/// `vxlan` or `geneve`, as the configuration writes it.
fn encap_name(encap: Encap) -> String {
    match serde_json::to_value(encap) {
        Ok(Value::String(name)) => name,
        _ => format!("{encap:?}").to_lowercase(),
    }
}

/// A Node's IPv4 pod CIDR: from `spec.podCIDRs`, else `spec.podCIDR`.
fn pod_cidr(node: &Node) -> Option<Ipv4Net> {
    pod_cidr_of::<Ipv4Net>(node).map(|c| c.trunc())
}

/// A dual-stack Node's IPv6 pod CIDR, from `spec.podCIDRs`.
fn pod_cidr6(node: &Node) -> Option<Ipv6Net> {
    pod_cidr_of::<Ipv6Net>(node).map(|c| c.trunc())
}

/// A Node's first pod CIDR that parses as `N` (one address family).
fn pod_cidr_of<N: FromStr>(node: &Node) -> Option<N> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidrs
        .iter()
        .flatten()
        .chain(spec.pod_cidr.iter())
        .find_map(|c| c.parse::<N>().ok())
}

/// A Node's first IPv4 InternalIP.
fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse().ok())
}

struct Source {
    me: Me,
    node_name: String,
    settings: KubernetesSettings,
    plane: Arc<dyn Plane>,
    applied: Applied,
    /// The Nodes as last listed and watched, by name.
    nodes: BTreeMap<String, Node>,
    /// The Nodes of a listing under way.
    relisted: Option<BTreeMap<String, Node>>,
    /// Why each node that is no peer is not, as last logged.
    skipped: BTreeMap<String, String>,
    /// Whether this node's annotations are on its Node.
    published: bool,
    stop: Arc<AtomicBool>,
    reachability: Reachability,
}

impl Source {
    fn run(&mut self) {
        self.reachability.report(&*self.plane, None);
        let runtime = match runtime() {
            Ok(r) => r,
            Err(e) => {
                self.reachability.failed(&*self.plane, format!("{e:#}"));
                return;
            }
        };
        runtime.block_on(self.follow());
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Make a client (again, while that fails), then follow the Nodes
    /// until stopped.
    async fn follow(&mut self) {
        let failed = |e| self.reachability.failed(&*self.plane, e);
        let Some(client) = connect(&self.settings, &self.stop, failed).await else {
            return;
        };
        let api: Api<Node> = Api::all(client);
        while !self.stopped() {
            self.watch(&api).await;
            // The watcher's stream does not end; if it did, start again.
            self.reachability
                .failed(&*self.plane, "the watch of the Nodes ended".into());
            tokio::time::sleep(RETRY).await;
        }
    }

    /// Follow the Nodes through one watcher until stopped (or its stream
    /// ends), publishing this node's annotations when they are missing.
    async fn watch(&mut self, api: &Api<Node>) {
        let nodes = watch_nodes(api.clone(), watcher::Config::default()).default_backoff();
        let mut nodes = std::pin::pin!(nodes);
        let mut next_publish = Instant::now();
        let mut next_probe = Instant::now();
        while !self.stopped() {
            // A watch that resumes from where it was tells nothing until
            // something changes: while the API server has not answered,
            // ask it for this node's Node.
            if self.reachability.unreachable() && Instant::now() >= next_probe {
                next_probe = Instant::now() + RETRY;
                if let Ok(Ok(_)) =
                    tokio::time::timeout(CALL_TIMEOUT, api.get(&self.node_name)).await
                {
                    self.reachability.answered(&*self.plane, "API server");
                }
            }
            if !self.published && Instant::now() >= next_publish {
                match self.publish(api).await {
                    Ok(()) => self.published = true,
                    Err(e) => {
                        tracing::warn!("membership: this node's annotations not published: {e:#}");
                        next_publish = Instant::now() + RETRY;
                    }
                }
            }
            match tokio::time::timeout(Duration::from_millis(200), nodes.next()).await {
                Err(_) => {}
                Ok(None) => return,
                Ok(Some(Ok(event))) => self.handle(event),
                Ok(Some(Err(watcher::Error::WatchError(status)))) if status.code == 410 => {
                    tracing::info!(
                        "membership: the API server no longer has our resourceVersion: \
                         listing the Nodes again"
                    );
                }
                Ok(Some(Err(e))) => self.reachability.failed(&*self.plane, format!("{e:#}")),
            }
        }
    }

    /// Write this node's annotations on its Node (a merge patch).
    async fn publish(&self, api: &Api<Node>) -> Result<()> {
        let patch = json!({ "metadata": { "annotations": self.me.annotations() } });
        let (params, patch) = (PatchParams::default(), Patch::Merge(&patch));
        let call = api.patch(&self.node_name, &params, &patch);
        tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| anyhow!("PATCH Node {}: no answer", self.node_name))?
            .map_err(|e| anyhow!("PATCH Node {}: {e}", self.node_name))?;
        tracing::info!(node = %self.node_name, "membership: published this node's annotations");
        Ok(())
    }

    fn handle(&mut self, event: Event<Node>) {
        match event {
            Event::Init => self.relisted = Some(BTreeMap::new()),
            Event::InitApply(node) => {
                self.reachability.answered(&*self.plane, "API server");
                if let Some(listed) = self.relisted.as_mut() {
                    listed.insert(name(&node), node);
                }
            }
            Event::InitDone => {
                self.reachability.answered(&*self.plane, "API server");
                if let Some(listed) = self.relisted.take() {
                    self.nodes = listed;
                }
                tracing::info!(nodes = self.nodes.len(), "membership: listed the Nodes");
                self.changed();
            }
            Event::Apply(node) => {
                self.reachability.answered(&*self.plane, "API server");
                self.nodes.insert(name(&node), node);
                self.changed();
            }
            Event::Delete(node) => {
                self.reachability.answered(&*self.plane, "API server");
                self.nodes.remove(&name(&node));
                self.changed();
            }
        }
    }

    /// Bring the peers to what the Nodes now describe.
    fn changed(&mut self) {
        if let Some(own) = self.nodes.get(&self.node_name) {
            if !self.me.published_on(own) {
                self.published = false;
            }
            if let Some(cidr) = pod_cidr(own)
                && cidr != self.me.pod_cidr
            {
                self.skip(
                    &self.node_name.clone(),
                    format!(
                        "this node's Node has pod CIDR {cidr}, its configuration {}",
                        self.me.pod_cidr
                    ),
                );
            }
        }
        let wanted = desired(&self.me, &self.node_name, &self.nodes, |name, why| {
            if self.skipped.get(name) != Some(&why) {
                tracing::warn!(node = %name, "membership: not a peer: {why}");
                self.skipped.insert(name.to_string(), why);
            }
        });
        self.skipped.retain(|name, _| self.nodes.contains_key(name));
        self.applied.apply(&*self.plane, &wanted);
    }

    /// Log `why` for node `name` unless it was the last thing logged.
    fn skip(&mut self, name: &str, why: String) {
        if self.skipped.get(name) != Some(&why) {
            tracing::warn!(node = %name, "membership: {why}");
            self.skipped.insert(name.to_string(), why);
        }
    }
}

/// A Node's name.
fn name(node: &Node) -> String {
    node.metadata.name.clone().unwrap_or_default()
}

/// The peers the Nodes other than `own` describe; `skipped` is told why
/// each one that could be but is not.
fn desired(
    me: &Me,
    own: &str,
    nodes: &BTreeMap<String, Node>,
    mut skipped: impl FnMut(&str, String),
) -> BTreeMap<IpAddr, PeerConfig> {
    let mut peers = BTreeMap::new();
    for (name, node) in nodes.iter().filter(|(name, _)| *name != own) {
        match me.peer_of(node) {
            Ok(Some(peer)) if peer.node_ip == me.node_ip => {
                skipped(name, format!("it has this node's address {}", me.node_ip));
            }
            Ok(Some(peer)) => {
                if let Some(other) = peers.insert(peer.node_ip, peer) {
                    skipped(
                        name,
                        format!("another Node has its address {}", other.node_ip),
                    );
                }
            }
            Ok(None) => {}
            Err(why) => skipped(name, why),
        }
    }
    peers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::parse(&format!(
            "node_ip = \"10.1.0.11\"\nuplink = \"ul0\"\npod_cidr = \"10.244.1.0/24\"\n\
             udp_port = 8472\n{extra}"
        ))
        .unwrap()
    }

    fn node(json: Value) -> Node {
        serde_json::from_value(json).unwrap()
    }

    /// A Node as a cluster returns it, with Flannel's annotations when
    /// `vtep_mac` is given.
    fn flannel_node(name: &str, i: u8, vtep_mac: Option<&str>) -> Node {
        let mut annotations = serde_json::Map::new();
        if let Some(mac) = vtep_mac {
            annotations.insert(BACKEND_TYPE.into(), "vxlan".into());
            annotations.insert(
                BACKEND_DATA.into(),
                format!("{{\"VNI\":1,\"VtepMAC\":\"{mac}\"}}").into(),
            );
            annotations.insert(PUBLIC_IP.into(), format!("10.1.0.{}", 10 + i).into());
            annotations.insert(KUBE_SUBNET_MANAGER.into(), "true".into());
        }
        node(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": name, "resourceVersion": "7", "annotations": annotations },
            "spec": { "podCIDR": format!("10.244.{i}.0/24"), "podCIDRs": [format!("10.244.{i}.0/24")] },
            "status": { "addresses": [
                { "type": "InternalIP", "address": format!("192.168.0.{i}") },
                { "type": "Hostname", "address": name } ] }
        }))
    }

    #[test]
    fn this_nodes_annotations_are_flannels_and_podswitchs() {
        let me = Me::of(&config(""));
        let annotations = me.annotations();
        assert_eq!(annotations[BACKEND_TYPE].as_deref(), Some("vxlan"));
        assert_eq!(
            annotations[BACKEND_DATA].as_deref(),
            Some(r#"{"VNI":1,"VtepMAC":"0a:70:0a:01:00:0b"}"#)
        );
        assert_eq!(annotations[PUBLIC_IP].as_deref(), Some("10.1.0.11"));
        assert_eq!(annotations[KUBE_SUBNET_MANAGER].as_deref(), Some("true"));
        assert_eq!(annotations[ENCAPSULATION].as_deref(), Some("vxlan"));
        assert_eq!(annotations[UDP_PORT].as_deref(), Some("8472"));
        // Geneve is no Flannel backend: Flannel's type is withdrawn.
        let geneve = Me::of(&config("encap = \"geneve\""));
        assert_eq!(geneve.annotations()[BACKEND_TYPE], None);
        assert_eq!(
            geneve.annotations()[ENCAPSULATION].as_deref(),
            Some("geneve")
        );
        let mut own = flannel_node("n1", 1, None);
        assert!(!me.published_on(&own));
        own.metadata.annotations = Some(
            annotations
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), v?)))
                .collect(),
        );
        assert!(me.published_on(&own));
    }

    #[test]
    fn flannel_nodes_are_peers_at_their_public_ip_or_internal_ip() {
        let me = Me::of(&config(""));
        let peer = me
            .peer_of(&flannel_node("n2", 2, Some("02:6b:76:00:00:02")))
            .unwrap()
            .unwrap();
        assert_eq!(peer.node_ip.to_string(), "10.1.0.12");
        assert_eq!(peer.pod_cidr.to_string(), "10.244.2.0/24");
        assert_eq!(peer.vtep_mac.unwrap().to_string(), "02:6b:76:00:00:02");
        let internal = Me::of(&config("[kubernetes]\naddress = \"internal-ip\""));
        let peer = internal
            .peer_of(&flannel_node("n2", 2, Some("02:6b:76:00:00:02")))
            .unwrap()
            .unwrap();
        assert_eq!(peer.node_ip.to_string(), "192.168.0.2");
        // No annotations yet: not a peer, and said why.
        let bare = me.peer_of(&flannel_node("n3", 3, None)).unwrap_err();
        assert!(bare.contains("no VTEP"), "{bare}");
        // No pod CIDR (yet, or any more): silently no peer.
        let mut no_cidr = flannel_node("n4", 4, Some("02:6b:76:00:00:04"));
        no_cidr.spec = None;
        assert_eq!(me.peer_of(&no_cidr), Ok(None));
    }

    #[test]
    fn nodes_that_cannot_peer_are_skipped_with_the_reason() {
        let geneve = Me::of(&config("encap = \"geneve\""));
        let e = geneve
            .peer_of(&flannel_node("n2", 2, Some("02:6b:76:00:00:02")))
            .unwrap_err();
        assert!(e.contains("Flannel") && e.contains("geneve"), "{e}");
        let me = Me::of(&config(""));
        let mut other = flannel_node("n2", 2, Some("02:6b:76:00:00:02"));
        let set = |node: &mut Node, key: &str, value: &str| {
            node.metadata
                .annotations
                .get_or_insert_default()
                .insert(key.into(), value.into());
        };
        set(&mut other, ENCAPSULATION, "geneve");
        assert!(me.peer_of(&other).unwrap_err().contains("geneve"));
        set(&mut other, ENCAPSULATION, "vxlan");
        set(&mut other, UDP_PORT, "4789");
        assert!(me.peer_of(&other).unwrap_err().contains("4789"));
        set(&mut other, UDP_PORT, "8472");
        assert!(me.peer_of(&other).unwrap().is_some());
        for (key, value, why) in [
            (
                BACKEND_DATA,
                r#"{"VNI":2,"VtepMAC":"02:00:00:00:00:01"}"#,
                "VNI 2",
            ),
            (BACKEND_DATA, "{", BACKEND_DATA),
            (PUBLIC_IP, "fd00::1", "IPv4"),
        ] {
            let mut bad = other.clone();
            set(&mut bad, key, value);
            let e = me.peer_of(&bad).unwrap_err();
            assert!(e.contains(why), "{key}={value}: {e}");
        }
        let mut host_gw = flannel_node("n5", 5, Some("02:6b:76:00:00:05"));
        set(&mut host_gw, BACKEND_TYPE, "host-gw");
        assert!(me.peer_of(&host_gw).unwrap_err().contains("host-gw"));
    }

    #[test]
    fn the_desired_peers_are_every_other_node_that_can_peer() {
        let me = Me::of(&config(""));
        let nodes: BTreeMap<String, Node> = [
            ("n1", flannel_node("n1", 1, Some("0a:70:0a:01:00:0b"))),
            ("n2", flannel_node("n2", 2, Some("02:6b:76:00:00:02"))),
            ("n3", flannel_node("n3", 3, None)),
            ("n4", flannel_node("n4", 2, Some("02:6b:76:00:00:04"))),
        ]
        .into_iter()
        .map(|(n, node)| (n.to_string(), node))
        .collect();
        let mut skipped = Vec::new();
        let peers = desired(&me, "n1", &nodes, |name, why| {
            skipped.push((name.to_string(), why))
        });
        assert_eq!(peers.len(), 1, "{peers:?}");
        let names: Vec<&str> = skipped.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["n3", "n4"], "{skipped:?}");
    }
}
