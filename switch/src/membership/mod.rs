//! Where a node's peers come from: its configuration file and `podswitch
//! peer add` (`static`), or a datastore it watches (`etcd`, in Flannel's
//! layout, or `kubernetes`, Node objects with Flannel's annotations). A watching source keeps the set of peers the datastore
//! describes and hands every change to the control plane through the same
//! path as `peer add`/`peer del` ([`PeerSet`]), so workers never stop.
//! The cluster's Services ([`kubernetes_services`]) and what NetworkPolicy
//! is decided on ([`kubernetes_policy`]) come the same way, through the
//! Kubernetes source's client ([`kubernetes_watch`]).

pub mod etcd;
pub mod flannel;
pub mod kubernetes;
pub mod kubernetes_policy;
pub mod kubernetes_services;
pub mod kubernetes_watch;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use serde::{Deserialize, Serialize};

use crate::config::PeerConfig;
use crate::control::protocol::MembershipReport;

/// Which source the configuration chooses (`membership = …`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MembershipSource {
    /// Peers from the file and `podswitch peer add`.
    #[default]
    Static,
    /// Peers from etcd, Flannel's layout (`[etcd]`).
    Etcd,
    /// Peers from the cluster's Node objects (`[kubernetes]`).
    Kubernetes,
}

impl MembershipSource {
    /// Its name in the configuration and in `podswitch info`.
    pub fn name(self) -> &'static str {
        match self {
            MembershipSource::Static => "static",
            MembershipSource::Etcd => "etcd",
            MembershipSource::Kubernetes => "kubernetes",
        }
    }
}

/// Default etcd endpoint (flanneld's).
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";
/// Default key prefix (flanneld's `-etcd-prefix`).
pub const DEFAULT_ETCD_PREFIX: &str = "/coreos.com/network";
/// Default TTL of this node's subnet lease, in seconds.
pub const DEFAULT_LEASE_TTL_S: u32 = 60;

/// `[etcd]`: the etcd source's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSettings {
    /// `http://host:port` of each etcd member, tried in turn.
    #[serde(default = "default_endpoints")]
    pub endpoints: Vec<String>,
    /// The key prefix of Flannel's layout.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Seconds this node's subnet lease lives unless renewed (it is
    /// renewed every third of that while the daemon runs).
    #[serde(default = "default_lease_ttl_s")]
    pub lease_ttl_s: u32,
}

fn default_endpoints() -> Vec<String> {
    vec![DEFAULT_ETCD_ENDPOINT.into()]
}
fn default_prefix() -> String {
    DEFAULT_ETCD_PREFIX.into()
}
fn default_lease_ttl_s() -> u32 {
    DEFAULT_LEASE_TTL_S
}

impl Default for EtcdSettings {
    fn default() -> EtcdSettings {
        EtcdSettings {
            endpoints: default_endpoints(),
            prefix: default_prefix(),
            lease_ttl_s: default_lease_ttl_s(),
        }
    }
}

impl EtcdSettings {
    /// The problem with these settings, as (key, problem, fix).
    pub fn problem(&self) -> Option<(&'static str, String, &'static str)> {
        if self.endpoints.is_empty() {
            return Some((
                "etcd.endpoints",
                "is empty".into(),
                "list at least one http://host:port",
            ));
        }
        if let Some(bad) = self.endpoints.iter().find(|e| !e.starts_with("http://")) {
            return Some((
                "etcd.endpoints",
                format!("{bad:?} is not an http:// URL"),
                "write http://host:port (TLS is not supported yet)",
            ));
        }
        if !self.prefix.starts_with('/') {
            return Some((
                "etcd.prefix",
                format!("{:?} does not start with /", self.prefix),
                "write an absolute key prefix such as /coreos.com/network",
            ));
        }
        if !(5..=86_400).contains(&self.lease_ttl_s) {
            return Some((
                "etcd.lease_ttl_s",
                format!("{} is out of range", self.lease_ttl_s),
                "use 5 to 86400 seconds",
            ));
        }
        None
    }
}

/// Where a node's underlay address comes from (`kubernetes.address`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeAddress {
    /// Flannel's `flannel.alpha.coreos.com/public-ip` annotation when the
    /// Node has one (flanneld's own choice), else its InternalIP.
    #[default]
    PublicIpAnnotation,
    /// The Node's InternalIP, annotations ignored.
    InternalIp,
}

/// `[kubernetes]`: the Kubernetes source's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
    /// A kubeconfig file; when left out, the in-cluster configuration
    /// (`KUBERNETES_SERVICE_HOST`/`PORT`, the service account's token and
    /// CA), else `$KUBECONFIG` or `~/.kube/config`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's Node object; `$NODE_NAME`, else the hostname, when
    /// left out.
    #[serde(default)]
    pub node_name: Option<String>,
    /// Where the other nodes' underlay addresses come from.
    #[serde(default)]
    pub address: NodeAddress,
}

impl KubernetesSettings {
    /// The name of this node's Node object.
    pub fn node_name(&self) -> String {
        self.node_name
            .clone()
            .or_else(|| std::env::var("NODE_NAME").ok().filter(|n| !n.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_default()
    }
}

/// The pod CIDR the datastore gives the node whose configuration file is
/// `text` and leaves `pod_cidr` out (etcd: a free subnet; Kubernetes: its
/// Node's `spec.podCIDR`), or `None` for a static node.
pub fn assign_pod_cidr(text: &str) -> anyhow::Result<Option<Ipv4Net>> {
    match etcd::assign_pod_cidr(text)? {
        Some(cidr) => Ok(Some(cidr)),
        None => kubernetes::assign_pod_cidr(text),
    }
}

/// What the control plane offers a membership source: the same calls as
/// `podswitch peer add` and `peer del`.
pub trait PeerSet {
    /// Add a peer, or replace the one with the same node IP.
    fn add(&self, peer: PeerConfig) -> anyhow::Result<()>;
    /// Remove a peer and its routes.
    fn remove(&self, node_ip: IpAddr) -> anyhow::Result<()>;
}

/// What a source needs of the control plane: its peer table and a place
/// to report how the source is doing.
pub trait Plane: PeerSet + Send + Sync {
    /// Publish the source's state for `podswitch info` and `peers`.
    fn report(&self, report: MembershipReport);
}

/// A source following its datastore on a thread of its own.
pub struct Follower {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Follower {
    /// Run `follow` on a thread named `membership`, with the flag that
    /// asks it to stop.
    pub fn spawn(
        follow: impl FnOnce(std::sync::Arc<std::sync::atomic::AtomicBool>) + Send + 'static,
    ) -> anyhow::Result<Follower> {
        Follower::spawn_named("membership", follow)
    }

    /// The same on a thread named `name`.
    pub fn spawn_named(
        name: &str,
        follow: impl FnOnce(std::sync::Arc<std::sync::atomic::AtomicBool>) + Send + 'static,
    ) -> anyhow::Result<Follower> {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || follow(flag))
            .map_err(|e| anyhow::anyhow!("spawning the {name} thread: {e}"))?;
        Ok(Follower { stop, thread })
    }

    /// Ask it to stop and wait for it.
    pub fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// When a source's datastore stopped answering, and the report of it.
#[derive(Debug)]
pub struct Reachability {
    source: &'static str,
    /// What the source keeps while its datastore is away, as the log
    /// says it.
    kept: &'static str,
    unreachable_since: Option<std::time::SystemTime>,
}

impl Reachability {
    /// A source named `source` (as `podswitch info` shows it), answering.
    pub fn new(source: &'static str) -> Reachability {
        Reachability {
            source,
            kept: "peers",
            unreachable_since: None,
        }
    }

    /// The same, for a source that keeps `kept` (not peers) while its
    /// datastore is away.
    pub fn keeping(source: &'static str, kept: &'static str) -> Reachability {
        Reachability {
            kept,
            ..Reachability::new(source)
        }
    }

    /// Whether the datastore has failed since it last answered.
    pub fn unreachable(&self) -> bool {
        self.unreachable_since.is_some()
    }

    /// The datastore failed with `error`: logged the first time, the
    /// report says since when.
    pub fn failed(&mut self, plane: &dyn Plane, error: String) {
        self.lost(&error);
        self.report(plane, Some(error));
    }

    /// The datastore answered (`from` says which): reported, and logged
    /// if it had not been answering.
    pub fn answered(&mut self, plane: &dyn Plane, from: &str) {
        self.regained(from);
        self.report(plane, None);
    }

    /// [`Self::failed`] without a report: logged the first time.
    pub fn lost(&mut self, error: &str) {
        if self.unreachable_since.is_none() {
            tracing::warn!(
                "membership: {} unreachable, keeping the last known {}: {error}",
                self.source,
                self.kept
            );
            self.unreachable_since = Some(std::time::SystemTime::now());
        }
    }

    /// [`Self::answered`] without a report: logged if it had not been
    /// answering.
    pub fn regained(&mut self, from: &str) {
        if let Some(since) = self.unreachable_since.take() {
            let down = since.elapsed().unwrap_or_default().as_secs();
            tracing::info!(
                "membership: {} {from} answers again after {down} s",
                self.source
            );
        }
    }

    /// Publish the state, with `error` if there is one.
    pub fn report(&self, plane: &dyn Plane, error: Option<String>) {
        plane.report(self.state(error));
    }

    /// The state, with `error` if there is one.
    pub fn state(&self, error: Option<String>) -> MembershipReport {
        MembershipReport {
            source: self.source.into(),
            unreachable_since: self.unreachable_since.map(|t| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            }),
            error,
        }
    }
}

/// The peers a source has put into the control plane, keyed by node IP,
/// and the changes that bring them to what the source now describes.
#[derive(Debug, Default)]
pub struct Applied {
    peers: BTreeMap<IpAddr, PeerConfig>,
}

/// One change to the peer table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Add or replace this peer.
    Add(PeerConfig),
    /// Remove the peer with this node IP.
    Remove(IpAddr),
}

impl Applied {
    /// Start from peers the source owns already (restored after a
    /// restart): the first [`Self::changes`] removes those it no longer
    /// describes.
    pub fn owning(peers: impl IntoIterator<Item = PeerConfig>) -> Applied {
        Applied {
            peers: peers.into_iter().map(|p| (p.node_ip, p)).collect(),
        }
    }

    /// The changes from what was applied to `desired` (removals first, so
    /// a pod CIDR that moved to another node is free when it is added).
    pub fn changes(&self, desired: &BTreeMap<IpAddr, PeerConfig>) -> Vec<Change> {
        let removed = self
            .peers
            .keys()
            .filter(|ip| !desired.contains_key(ip))
            .map(|ip| Change::Remove(*ip));
        let added = desired
            .values()
            .filter(|p| self.peers.get(&p.node_ip) != Some(p))
            .map(|p| Change::Add(p.clone()));
        removed.chain(added).collect()
    }

    /// Bring `table` to `desired`; a change the table refuses is logged
    /// and tried again at the next call.
    pub fn apply(&mut self, table: &dyn PeerSet, desired: &BTreeMap<IpAddr, PeerConfig>) {
        for change in self.changes(desired) {
            match change {
                Change::Remove(ip) => match table.remove(ip) {
                    Ok(()) => {
                        self.peers.remove(&ip);
                    }
                    Err(e) => {
                        tracing::warn!(peer = %ip, "membership: not removed: {e:#}");
                        self.peers.remove(&ip);
                    }
                },
                Change::Add(peer) => match table.add(peer.clone()) {
                    Ok(()) => {
                        self.peers.insert(peer.node_ip, peer);
                    }
                    Err(e) => tracing::warn!(peer = %peer.node_ip, "membership: not added: {e:#}"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(i: u8, mac: u8) -> PeerConfig {
        PeerConfig {
            pod_cidr6: None,
            node_ip: IpAddr::from([10, 1, 0, 10 + i]),
            pod_cidr: format!("10.244.{i}.0/24").parse().unwrap(),
            vtep_mac: Some(format!("02:00:00:00:00:{mac:02x}").parse().unwrap()),
        }
    }

    fn set(peers: &[PeerConfig]) -> BTreeMap<IpAddr, PeerConfig> {
        peers.iter().map(|p| (p.node_ip, p.clone())).collect()
    }

    /// Records what it was asked, refusing the node IPs in `refuse`.
    #[derive(Default)]
    struct Table {
        calls: std::sync::Mutex<Vec<Change>>,
        refuse: Vec<IpAddr>,
    }

    impl PeerSet for Table {
        fn add(&self, peer: PeerConfig) -> anyhow::Result<()> {
            anyhow::ensure!(!self.refuse.contains(&peer.node_ip), "refused");
            self.calls.lock().unwrap().push(Change::Add(peer));
            Ok(())
        }
        fn remove(&self, node_ip: IpAddr) -> anyhow::Result<()> {
            self.calls.lock().unwrap().push(Change::Remove(node_ip));
            Ok(())
        }
    }

    #[test]
    fn joins_changes_and_departures_become_adds_and_removes() {
        let table = Table::default();
        let mut applied = Applied::default();
        applied.apply(&table, &set(&[peer(2, 2), peer(3, 3)]));
        // Node 2 changes its VTEP MAC, node 3 leaves, node 4 joins.
        applied.apply(&table, &set(&[peer(2, 9), peer(4, 4)]));
        // Nothing changed: nothing to do.
        applied.apply(&table, &set(&[peer(2, 9), peer(4, 4)]));
        assert_eq!(
            *table.calls.lock().unwrap(),
            [
                Change::Add(peer(2, 2)),
                Change::Add(peer(3, 3)),
                Change::Remove(peer(3, 3).node_ip),
                Change::Add(peer(2, 9)),
                Change::Add(peer(4, 4)),
            ]
        );
    }

    #[test]
    fn restored_peers_the_source_no_longer_has_are_removed_and_refusals_retried() {
        let mut applied = Applied::owning([peer(2, 2), peer(5, 5)]);
        let table = Table {
            refuse: vec![peer(3, 3).node_ip],
            ..Table::default()
        };
        let desired = set(&[peer(2, 2), peer(3, 3)]);
        applied.apply(&table, &desired);
        assert_eq!(
            *table.calls.lock().unwrap(),
            [Change::Remove(peer(5, 5).node_ip)]
        );
        assert_eq!(applied.changes(&desired), [Change::Add(peer(3, 3))]);
    }
}
