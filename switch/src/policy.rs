//! NetworkPolicy in the switch (`docs/policy.md`): the policies in force,
//! compiled for this node's pods into a snapshot the workers read once per
//! pass (arc-swap, as the FIB); the connections they let through, in a
//! `podswitch-services` connection table with their tuples untranslated,
//! so that replies and later packets pass without a rule lookup; what each
//! policy denied; and the sources (`podswitch policy set`, the
//! `policy_file`, the Kubernetes API), whose sets are merged.
//!
//! [`PolicyStage::check`] is the stage the dispatch runs on each routed
//! packet: egress is checked at the sending pod's node, ingress at the
//! receiving pod's, as Kubernetes places them.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::Result;
use arc_swap::{ArcSwap, Guard};
use ipnet::Ipv4Net;
use podswitch_control::protocol::{
    PodPolicyStatus, PolicyCounter, PolicySourceStatus, PolicyStatus,
};
use podswitch_policy::compile::RuleSet;
use podswitch_policy::{Cluster, CompiledPolicies, Direction, compile_for};
use podswitch_services::conntrack::{Refused, Timeouts};
use podswitch_services::flow::{self, FlowKey, Tracked};
use podswitch_services::{ConnTable, Pass};

use crate::drops::DropCause;
use crate::sources::{FILE_SOURCE, FileSource, lock, read_json};

/// Read a [`Cluster`] (the `policy_file`, the file of `podswitch policy
/// set`), checked: an error names the file and what to fix.
pub fn read_cluster(path: &Path) -> Result<Cluster> {
    let cluster: Cluster = read_json(
        path,
        "a JSON object of namespaces, pods and policies (see docs/policy.md)",
    )?;
    cluster
        .check()
        .map_err(|problem| anyhow::anyhow!("{}: {problem}", path.display()))?;
    Ok(cluster)
}

/// The policy stage's state, shared by the control plane and the workers.
#[derive(Debug)]
pub struct Policies {
    enforced: ArcSwap<Enforced>,
    /// The connections policy let through; made when a policy first
    /// selects a local pod (until then nothing is tracked).
    conns: OnceLock<ConnTable>,
    /// Connections the table holds.
    capacity: usize,
    /// This node's pods are those in it.
    pod_cidr: Ipv4Net,
    /// This node's own addresses: traffic between a pod and its node
    /// always passes.
    node_addresses: Vec<Ipv4Addr>,
    /// Each source's set, by source name.
    sources: Mutex<BTreeMap<String, Cluster>>,
    /// The `policy_file`.
    file: FileSource,
    /// Denied packets by policy, kept across changes.
    denied: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    /// Where the connection table's clock starts.
    epoch: Instant,
}

/// The policies in force: one snapshot, replaced whole.
#[derive(Debug, Default)]
pub struct Enforced {
    compiled: CompiledPolicies,
    /// For each local pod and direction some policy restricts, the
    /// counters of the policies that do: what a denial adds to. Empty
    /// while no policy selects a local pod.
    denying: HashMap<(Ipv4Addr, Direction), Box<[Arc<AtomicU64>]>>,
}

impl Policies {
    /// No policies yet, for a node whose pods are in `pod_cidr` and whose
    /// own addresses are `node_addresses`; room for `capacity` tracked
    /// connections once a policy selects a local pod.
    pub fn new(pod_cidr: Ipv4Net, node_addresses: Vec<Ipv4Addr>, capacity: usize) -> Policies {
        Policies {
            enforced: ArcSwap::default(),
            conns: OnceLock::new(),
            capacity,
            pod_cidr,
            node_addresses,
            sources: Mutex::new(BTreeMap::new()),
            file: FileSource::default(),
            denied: Mutex::new(BTreeMap::new()),
            epoch: Instant::now(),
        }
    }

    /// Replace the set of `source` (`control`, `file`, `kubernetes`) and
    /// put the union of every source's in force; refused, with what to
    /// fix, when the set does not [`Cluster::check`]. An object two
    /// sources both list (by namespace and name) is the one of the source
    /// first in name order. New rules apply to new connections: open ones
    /// go on.
    pub fn set(&self, source: &str, cluster: Cluster) -> Result<(), String> {
        cluster.check()?;
        let mut sources = lock(&self.sources);
        sources.insert(source.to_string(), cluster);
        self.publish(&sources);
        Ok(())
    }

    /// Compile the union of the sources' sets and put it in force. The
    /// caller holds the sources' lock, so that two changes publish in
    /// order.
    fn publish(&self, sources: &BTreeMap<String, Cluster>) {
        let merged = merge(sources.values());
        let compiled = compile_for(&merged.policies, &merged.pods, &merged.namespaces, |pod| {
            self.pod_cidr.contains(&pod.ip)
        });
        let mut registry = lock(&self.denied);
        let mut denying = HashMap::new();
        for (address, pod) in compiled.pods() {
            for direction in [Direction::Ingress, Direction::Egress] {
                if let Some(rules) = pod.direction(direction).restricted() {
                    let counters = rules
                        .policies()
                        .iter()
                        .map(|name| registry.entry(name.clone()).or_default().clone());
                    denying.insert((address, direction), counters.collect());
                }
            }
        }
        if !denying.is_empty() {
            self.conns
                .get_or_init(|| ConnTable::new(self.capacity, Timeouts::default()));
        }
        self.enforced
            .store(Arc::new(Enforced { compiled, denying }));
    }

    /// Read `path` as the file source now, and again whenever it changes
    /// ([`Policies::maintain`]).
    pub fn watch_file(&self, path: &Path) -> Result<()> {
        self.file
            .watch(path, read_cluster, |cluster| self.set(FILE_SOURCE, cluster))
    }

    /// The maintenance thread's round: reread the file source if it
    /// changed, forget expired connections.
    pub fn maintain(&self) {
        self.file.reread("policies", read_cluster, |cluster| {
            self.set(FILE_SOURCE, cluster)
        });
        if let Some(conns) = self.conns.get() {
            conns.sweep(self.now_ms());
        }
    }

    /// Milliseconds since the switch started: the connection table's clock.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The policies in force, for one pass of a worker.
    pub fn enforced(&self) -> Guard<Arc<Enforced>> {
        self.enforced.load()
    }

    /// The stage for one pass over `enforced`; `None` while no policy
    /// selects a local pod (nothing to check, nothing tracked). A
    /// worker's [`Pass::Live`] tracks, notes and counts; `podswitch
    /// trace`'s [`Pass::DryRun`] gives the same verdicts, tracking, noting
    /// and counting nothing (a tracked connection is only looked at: its
    /// clock and state stay as they were).
    pub fn stage<'a>(&'a self, enforced: &'a Enforced, pass: Pass) -> Option<PolicyStage<'a>> {
        if enforced.denying.is_empty() {
            return None;
        }
        Some(PolicyStage {
            enforced,
            conns: self.conns.get()?,
            node_addresses: &self.node_addresses,
            now_ms: self.now_ms(),
            pass,
        })
    }

    /// Connections tracked.
    pub fn connections(&self) -> usize {
        self.conns.get().map_or(0, ConnTable::len)
    }

    /// What `podswitch policy` shows.
    pub fn status(&self) -> PolicyStatus {
        let sources = lock(&self.sources);
        let enforced = self.enforced();
        let merged = merge(sources.values());
        let names = |policy: &podswitch_policy::DirectionPolicy| {
            policy
                .restricted()
                .map_or_else(Vec::new, |rules| rules.policies().to_vec())
        };
        let mut pods: Vec<PodPolicyStatus> = merged
            .pods
            .iter()
            .filter_map(|pod| {
                let policy = enforced.compiled.pod(pod.ip)?;
                Some(PodPolicyStatus {
                    pod: pod.full_name(),
                    address: pod.ip,
                    ingress: names(&policy.ingress),
                    egress: names(&policy.egress),
                })
            })
            .collect();
        pods.sort_unstable_by_key(|pod| pod.address);
        let source_of = |namespace: &str, name: &str| {
            sources
                .iter()
                .find(|(_, cluster)| {
                    cluster
                        .policies
                        .iter()
                        .any(|p| p.namespace == namespace && p.name == name)
                })
                .map_or_else(String::new, |(source, _)| source.clone())
        };
        let registry = lock(&self.denied);
        let mut policies: Vec<PolicyCounter> = merged
            .policies
            .iter()
            .map(|policy| {
                let name = policy.full_name();
                PolicyCounter {
                    source: source_of(&policy.namespace, &policy.name),
                    denied: registry
                        .get(&name)
                        .map_or(0, |counter| counter.load(Ordering::Relaxed)),
                    policy: name,
                }
            })
            .collect();
        policies.sort_unstable_by(|a, b| a.policy.cmp(&b.policy));
        PolicyStatus {
            sources: sources
                .iter()
                .map(|(source, cluster)| PolicySourceStatus {
                    source: source.clone(),
                    namespaces: cluster.namespaces.len(),
                    pods: cluster.pods.len(),
                    policies: cluster.policies.len(),
                })
                .collect(),
            connections: self.connections() as u64,
            pods,
            policies,
        }
    }
}

/// The union of the sources' sets: each namespace, pod and policy once,
/// from the first source (in name order) that lists it.
fn merge<'a>(sets: impl Iterator<Item = &'a Cluster>) -> Cluster {
    let mut namespaces = BTreeMap::new();
    let mut pods = BTreeMap::new();
    let mut policies = BTreeMap::new();
    for set in sets {
        for namespace in &set.namespaces {
            namespaces
                .entry(namespace.name.clone())
                .or_insert_with(|| namespace.clone());
        }
        for pod in &set.pods {
            pods.entry((pod.namespace.clone(), pod.name.clone()))
                .or_insert_with(|| pod.clone());
        }
        for policy in &set.policies {
            policies
                .entry((policy.namespace.clone(), policy.name.clone()))
                .or_insert_with(|| policy.clone());
        }
    }
    Cluster {
        namespaces: namespaces.into_values().collect(),
        pods: pods.into_values().collect(),
        policies: policies.into_values().collect(),
    }
}

/// One pass's view of the policy stage: the policies in force, the
/// connection table and the pass's clock.
#[derive(Debug, Clone, Copy)]
pub struct PolicyStage<'a> {
    enforced: &'a Enforced,
    conns: &'a ConnTable,
    /// As [`Policies::node_addresses`].
    node_addresses: &'a [Ipv4Addr],
    now_ms: u64,
    /// A worker's (tracks what it allows, notes the packets of tracked
    /// connections, counts what it denies), or a trace's (none of these).
    pass: Pass,
}

impl PolicyStage<'_> {
    /// The stage on a routed IPv4 packet (`ipv4` starts at its checked
    /// header): `from_pod` when a local pod sent it, `to_pod` when it goes
    /// to a local pod. A packet of a connection the stage let through
    /// passes, either way, and so does an ICMP error about one (not noted
    /// as a packet of it); the first packet of one is checked against the
    /// sender's egress and the receiver's ingress rules, and tracked if
    /// both allow it. Between a pod and its node everything passes.
    /// Tracked are only packets to or from a pod some policy selects.
    pub fn check(&self, ipv4: &[u8], from_pod: bool, to_pod: bool) -> Result<(), DropCause> {
        let address = |at: usize| Ipv4Addr::new(ipv4[at], ipv4[at + 1], ipv4[at + 2], ipv4[at + 3]);
        let (src, dst) = (address(12), address(16));
        let compiled = &self.enforced.compiled;
        let node = |address: Ipv4Addr| self.node_addresses.contains(&address);
        let selected = |local: bool, pod: Ipv4Addr| {
            local
                .then(|| compiled.pod(pod))
                .flatten()
                .filter(|policy| policy.is_restricted())
        };
        let sender = selected(from_pod && !node(dst), src);
        let receiver = selected(to_pod && !node(src), dst);
        if sender.is_none() && receiver.is_none() {
            return Ok(());
        }
        // The tuple to track the packet under, if it has one of its own.
        let tracked = match flow::track(ipv4) {
            Some(Tracked::Connection { key, tcp_flags }) => {
                if self
                    .conns
                    .find(&key, tcp_flags, self.now_ms, self.pass)
                    .is_some()
                {
                    return Ok(());
                }
                Some(key)
            }
            // An error about a packet of a tracked connection passes as
            // the connection's, which is only looked at: the error is no
            // packet of it (it neither answers nor refreshes it).
            Some(Tracked::Related { key }) => {
                if self.conns.peek(&key, self.now_ms).is_some() {
                    return Ok(());
                }
                None
            }
            None => None,
        };
        // A later fragment or an unrelated ICMP error: checked on its
        // protocol alone, not tracked.
        let key = tracked.unwrap_or(FlowKey {
            src,
            dst,
            sport: 0,
            dport: 0,
            protocol: ipv4[9],
        });
        let allows =
            |rules: &RuleSet, remote: Ipv4Addr| rules.allows(remote, key.protocol, key.dport);
        if let Some(rules) = sender.and_then(|policy| policy.egress.restricted())
            && !allows(rules, dst)
        {
            return Err(self.deny(src, Direction::Egress));
        }
        if let Some(rules) = receiver.and_then(|policy| policy.ingress.restricted())
            && !allows(rules, src)
        {
            return Err(self.deny(dst, Direction::Ingress));
        }
        if self.pass == Pass::DryRun {
            return Ok(());
        }
        match tracked.map(|key| self.conns.track(key, self.now_ms)) {
            Some(Err(Refused::Full)) => Err(DropCause::ConntrackFull),
            // Clash: another worker tracked the connection meanwhile.
            Some(Ok(()) | Err(Refused::Clash)) | None => Ok(()),
        }
    }

    /// The stage on a routed IPv6 packet from the local pod whose IPv4
    /// address is `sender` and to the one whose IPv4 address is
    /// `receiver` (`None`: not a local pod). Policies compile to IPv4
    /// rules only, so a pod a policy restricts in a direction has no IPv6
    /// in it (denied and counted as the IPv4 rules' denials are), rather
    /// than IPv6 around its rules; a pod no policy restricts passes.
    pub fn check_ipv6(
        &self,
        sender: Option<Ipv4Addr>,
        receiver: Option<Ipv4Addr>,
    ) -> Result<(), DropCause> {
        let compiled = &self.enforced.compiled;
        let restricted = |pod: Option<Ipv4Addr>, direction: Direction| {
            pod.filter(|&pod| {
                compiled
                    .pod(pod)
                    .is_some_and(|policy| policy.direction(direction).restricted().is_some())
            })
        };
        if let Some(pod) = restricted(sender, Direction::Egress) {
            return Err(self.deny(pod, Direction::Egress));
        }
        if let Some(pod) = restricted(receiver, Direction::Ingress) {
            return Err(self.deny(pod, Direction::Ingress));
        }
        Ok(())
    }

    /// Prefetch the connection-table probes of a batch of packets, given
    /// by their tuples ([`flow::connection_key`]), before
    /// [`PolicyStage::check`] takes them one by one, so that their cache
    /// misses overlap. Nothing unless [`PolicyStage::wants_prefetch`].
    pub fn prefetch(&self, keys: impl IntoIterator<Item = FlowKey>) {
        if self.wants_prefetch() {
            self.conns.prefetch(keys);
        }
    }

    /// Whether [`PolicyStage::prefetch`] would do anything: the
    /// connection table is large enough for it to pay
    /// ([`ConnTable::worth_prefetching`]).
    pub fn wants_prefetch(&self) -> bool {
        self.conns.worth_prefetching()
    }

    /// Count a packet denied to or from the local pod at `address` for
    /// each policy that restricts it in `direction`; the drop cause.
    fn deny(&self, address: Ipv4Addr, direction: Direction) -> DropCause {
        if self.pass == Pass::Live {
            let counters = self.enforced.denying.get(&(address, direction));
            for counter in counters.into_iter().flatten() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        match direction {
            Direction::Ingress => DropCause::PolicyDeniedIngress,
            Direction::Egress => DropCause::PolicyDeniedEgress,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use podswitch_policy::Protocol;
    use podswitch_policy::model::{NetworkPolicy, Peer, Pod, PolicyPort, Port, Rule};
    use podswitch_policy::selector::LabelSelector;

    use super::*;
    use crate::sources::CONTROL_SOURCE;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
    const TCP: u8 = 6;
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;

    fn pod(name: &str, ip: Ipv4Addr, app: &str) -> Pod {
        Pod {
            namespace: "shop".into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ip,
            ports: Vec::new(),
        }
    }

    /// A policy on the `web` pods of `shop` for `directions`, with `rules`
    /// as their ingress rules.
    fn policy(name: &str, directions: &[Direction], ingress: Vec<Rule>) -> NetworkPolicy {
        NetworkPolicy {
            namespace: "shop".into(),
            name: name.into(),
            pod_selector: LabelSelector::labels([("app", "web")]),
            policy_types: directions.to_vec(),
            ingress,
            egress: Vec::new(),
        }
    }

    /// Ingress to port 80 from the `client` pods.
    fn from_clients_to_80() -> Rule {
        Rule {
            peers: vec![Peer {
                pod_selector: Some(LabelSelector::labels([("app", "client")])),
                ..Peer::default()
            }],
            ports: vec![PolicyPort::new(Protocol::Tcp, Some(Port::Number(80)))],
        }
    }

    /// Policies on node 1 (10.244.1.0/24) with the `web` pod at
    /// 10.244.1.5 restricted both ways, allowing nothing.
    pub(crate) fn web_isolated() -> Policies {
        policies(vec![policy(
            "web",
            &[Direction::Ingress, Direction::Egress],
            Vec::new(),
        )])
    }

    fn policies(list: Vec<NetworkPolicy>) -> Policies {
        let policies = Policies::new("10.244.1.0/24".parse().unwrap(), vec![GATEWAY], 64);
        let cluster = Cluster {
            namespaces: Vec::new(),
            pods: vec![
                pod("web-0", SERVER, "web"),
                pod("client-0", CLIENT, "client"),
            ],
            policies: list,
        };
        policies.set(CONTROL_SOURCE, cluster).unwrap();
        policies
    }

    /// A TCP packet with `flags`.
    fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = TCP;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p[32] = 0x50;
        p[33] = flags;
        p
    }

    /// The stage's verdict on a packet from the remote client to the
    /// local server (`inbound`), or back.
    fn check(policies: &Policies, packet: &[u8], inbound: bool) -> Result<(), DropCause> {
        let enforced = policies.enforced();
        let stage = policies
            .stage(&enforced, Pass::Live)
            .expect("a policy selects a local pod");
        stage.check(packet, !inbound, inbound)
    }

    fn denied(policies: &Policies, name: &str) -> u64 {
        let status = policies.status();
        let counter = status.policies.iter().find(|p| p.policy == name).unwrap();
        counter.denied
    }

    #[test]
    fn nothing_is_checked_or_tracked_until_a_policy_selects_a_local_pod() {
        let policies = policies(Vec::new());
        assert!(policies.stage(&policies.enforced(), Pass::Live).is_none());
        assert_eq!(policies.connections(), 0);
    }

    #[test]
    fn a_restricted_pod_gets_no_ipv6_in_the_restricted_direction() {
        let policies = policies(vec![policy("web", &[Direction::Ingress], Vec::new())]);
        let enforced = policies.enforced();
        let stage = policies
            .stage(&enforced, Pass::Live)
            .expect("web is selected");
        // Into the web pod: denied and counted; out of it: not restricted.
        assert_eq!(
            stage.check_ipv6(None, Some(SERVER)),
            Err(DropCause::PolicyDeniedIngress)
        );
        assert_eq!(stage.check_ipv6(Some(SERVER), None), Ok(()));
        // Pods no policy selects, or no local pod at all.
        let other = Ipv4Addr::new(10, 244, 1, 9);
        assert_eq!(stage.check_ipv6(Some(other), Some(other)), Ok(()));
        assert_eq!(stage.check_ipv6(None, None), Ok(()));
        assert_eq!(denied(&policies, "shop/web"), 1);
    }

    #[test]
    fn a_connection_the_rules_allow_is_tracked_and_its_replies_pass_both_ways() {
        let both = [Direction::Ingress, Direction::Egress];
        let policies = policies(vec![policy("web", &both, vec![from_clients_to_80()])]);
        // Egress is default-deny too: the reply passes as the connection's.
        let syn = tcp(CLIENT, 40000, SERVER, 80, SYN);
        assert_eq!(check(&policies, &syn, true), Ok(()));
        assert_eq!(policies.connections(), 1);
        let reply = tcp(SERVER, 80, CLIENT, 40000, SYN | ACK);
        assert_eq!(check(&policies, &reply, false), Ok(()));
        // A port the rule does not name, and the server opening one itself.
        let other = tcp(CLIENT, 40001, SERVER, 81, SYN);
        assert_eq!(
            check(&policies, &other, true),
            Err(DropCause::PolicyDeniedIngress)
        );
        let out = tcp(SERVER, 50000, CLIENT, 80, SYN);
        assert_eq!(
            check(&policies, &out, false),
            Err(DropCause::PolicyDeniedEgress)
        );
        assert_eq!(denied(&policies, "shop/web"), 2);
        // The node (kubelet probes) always reaches its pods.
        let probe = tcp(GATEWAY, 33000, SERVER, 8080, SYN);
        assert_eq!(check(&policies, &probe, true), Ok(()));
    }

    #[test]
    fn a_rule_change_applies_to_new_connections_and_open_ones_go_on() {
        let ingress = [Direction::Ingress];
        let policies = policies(vec![policy("web", &ingress, vec![from_clients_to_80()])]);
        let syn = tcp(CLIENT, 40000, SERVER, 80, SYN);
        assert_eq!(check(&policies, &syn, true), Ok(()));
        let cluster = Cluster {
            pods: vec![
                pod("web-0", SERVER, "web"),
                pod("client-0", CLIENT, "client"),
            ],
            policies: vec![policy("deny", &ingress, Vec::new())],
            ..Cluster::default()
        };
        policies.set(CONTROL_SOURCE, cluster).unwrap();
        let ack = tcp(CLIENT, 40000, SERVER, 80, ACK);
        assert_eq!(check(&policies, &ack, true), Ok(()));
        let new = tcp(CLIENT, 40002, SERVER, 80, SYN);
        assert_eq!(
            check(&policies, &new, true),
            Err(DropCause::PolicyDeniedIngress)
        );
        assert_eq!(denied(&policies, "shop/deny"), 1);
        let status = policies.status();
        let web = status.pods.iter().find(|p| p.address == SERVER).unwrap();
        assert_eq!(
            (web.ingress.as_slice(), web.egress.len()),
            (&["shop/deny".to_string()][..], 0)
        );
        assert!(
            status.pods.iter().all(|p| p.address != CLIENT),
            "another node's pod is not this node's to show"
        );
    }

    #[test]
    fn a_trace_s_dry_run_gives_the_verdicts_but_tracks_and_counts_nothing() {
        let ingress = [Direction::Ingress];
        let policies = policies(vec![policy("web", &ingress, vec![from_clients_to_80()])]);
        let enforced = policies.enforced();
        let dry = policies.stage(&enforced, Pass::DryRun).unwrap();
        let syn = tcp(CLIENT, 40000, SERVER, 80, SYN);
        assert_eq!(dry.check(&syn, false, true), Ok(()));
        let other = tcp(CLIENT, 40000, SERVER, 81, SYN);
        assert_eq!(
            dry.check(&other, false, true),
            Err(DropCause::PolicyDeniedIngress)
        );
        assert_eq!(policies.connections(), 0);
        assert_eq!(denied(&policies, "shop/web"), 0);
    }

    /// An ICMP port unreachable from `src` to `dst` quoting `quoted`.
    fn unreachable(src: Ipv4Addr, dst: Ipv4Addr, quoted: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((28 + quoted.len()) as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 1;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        p[20] = 3;
        p[21] = 3;
        p.extend_from_slice(quoted);
        p
    }

    /// Policies restricting the web pod both ways, with a connection from
    /// the client tracked at time 0 by a worker's stage.
    fn one_connection() -> Policies {
        let both = [Direction::Ingress, Direction::Egress];
        let policies = policies(vec![policy("web", &both, vec![from_clients_to_80()])]);
        let enforced = policies.enforced();
        let live = PolicyStage {
            now_ms: 0,
            ..policies.stage(&enforced, Pass::Live).unwrap()
        };
        let syn = tcp(CLIENT, 40000, SERVER, 80, SYN);
        assert_eq!(live.check(&syn, false, true), Ok(()));
        drop(enforced);
        policies
    }

    /// How many connections a sweep at `now_ms` ends.
    fn swept(policies: &Policies, now_ms: u64) -> usize {
        policies.conns.get().unwrap().sweep(now_ms)
    }

    #[test]
    fn a_trace_only_looks_at_a_tracked_connection() {
        let policies = one_connection();
        let enforced = policies.enforced();
        let dry = PolicyStage {
            now_ms: 100_000,
            ..policies.stage(&enforced, Pass::DryRun).unwrap()
        };
        // The client's next packet and the server's answer, traced.
        let ack = tcp(CLIENT, 40000, SERVER, 80, ACK);
        assert_eq!(dry.check(&ack, false, true), Ok(()));
        let answer = tcp(SERVER, 80, CLIENT, 40000, SYN | ACK);
        assert_eq!(dry.check(&answer, true, false), Ok(()));
        // Still unanswered, on its first packet's clock.
        let unanswered = Timeouts::default().tcp_closing;
        assert_eq!(swept(&policies, unanswered - 1), 0);
        assert_eq!(swept(&policies, unanswered), 1);
    }

    #[test]
    fn an_icmp_error_about_a_tracked_connection_passes_without_being_noted() {
        let policies = one_connection();
        let enforced = policies.enforced();
        let live = PolicyStage {
            now_ms: 1_000,
            ..policies.stage(&enforced, Pass::Live).unwrap()
        };
        // The client refuses the server's answer; the server refuses the
        // client's packet. The rules allow no ICMP either way.
        let answer = tcp(SERVER, 80, CLIENT, 40000, SYN | ACK);
        let refused = unreachable(CLIENT, SERVER, &answer);
        assert_eq!(live.check(&refused, false, true), Ok(()));
        let syn = tcp(CLIENT, 40000, SERVER, 80, SYN);
        let refused = unreachable(SERVER, CLIENT, &syn);
        assert_eq!(live.check(&refused, true, false), Ok(()));
        // About a connection nobody tracked: checked as ICMP, denied.
        let stranger = tcp(SERVER, 80, CLIENT, 40001, SYN | ACK);
        let refused = unreachable(CLIENT, SERVER, &stranger);
        assert_eq!(
            live.check(&refused, false, true),
            Err(DropCause::PolicyDeniedIngress)
        );
        // Neither answered nor refreshed by the errors.
        let unanswered = Timeouts::default().tcp_closing;
        assert_eq!(swept(&policies, unanswered - 1), 0);
        assert_eq!(swept(&policies, unanswered), 1);
    }

    #[test]
    fn a_bad_set_is_refused_and_the_last_one_kept() {
        let ingress = [Direction::Ingress];
        let policies = policies(vec![policy("web", &ingress, Vec::new())]);
        let twice = Cluster {
            policies: vec![
                policy("a", &ingress, Vec::new()),
                policy("a", &ingress, Vec::new()),
            ],
            ..Cluster::default()
        };
        let e = policies.set(CONTROL_SOURCE, twice).unwrap_err();
        assert!(e.contains("shop/a"), "{e}");
        assert_eq!(policies.status().policies.len(), 1);
    }
}
