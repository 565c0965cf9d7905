//! Policies compiled into what the switch evaluates per packet: for each
//! pod and direction, nothing (no policy selects the pod in that
//! direction) or a [`RuleSet`] of what is allowed, with pods resolved to
//! their addresses and named ports to numbers.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::Protocol;
use crate::model::{Direction, IpBlock, Namespace, NetworkPolicy, Peer, Pod, Port, Rule};
use crate::selector::Labels;

/// What the policies say about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No policy selects the pod in this direction: everything passes.
    Unrestricted,
    /// A rule allows it.
    Allowed,
    /// The pod is selected and no rule allows it.
    Denied,
}

impl Verdict {
    /// Whether the packet may pass.
    pub fn passes(self) -> bool {
        self != Verdict::Denied
    }
}

/// A port range of a compiled rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    /// The protocol; `None` for a rule without ports, which allows every
    /// protocol (ICMP included) and every port.
    pub protocol: Option<Protocol>,
    /// The first port.
    pub first: u16,
    /// The last port.
    pub last: u16,
}

/// One compiled rule: traffic with any of the remote addresses on any of
/// the port ranges is allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledRule {
    /// The remote addresses: pods as /32s, ipBlocks as disjoint prefixes
    /// with their excepts carved out.
    pub remotes: Vec<Ipv4Net>,
    /// The port ranges.
    pub ports: Vec<PortRange>,
}

/// What is allowed for one pod in one direction, indexed for evaluation.
#[derive(Debug, Clone)]
pub struct RuleSet {
    policies: Vec<String>,
    rules: Vec<CompiledRule>,
    tables: [PrefixTable; TABLES],
}

/// The policy of one pod in one direction.
#[derive(Debug, Clone)]
pub enum DirectionPolicy {
    /// No policy selects the pod in this direction.
    Unrestricted,
    /// Policies select it: only what their rules allow passes.
    Restricted(Box<RuleSet>),
}

/// The policies of one pod.
#[derive(Debug, Clone)]
pub struct PodPolicy {
    /// For traffic to the pod.
    pub ingress: DirectionPolicy,
    /// For traffic from the pod.
    pub egress: DirectionPolicy,
}

/// Every pod's policies, by the pod's address.
#[derive(Debug, Clone, Default)]
pub struct CompiledPolicies {
    pods: foldhash::HashMap<u32, PodPolicy>,
}

/// Tables per rule set: TCP, UDP, SCTP, and every other protocol.
const TABLES: usize = 4;
const OTHER: usize = 3;

/// Compiles policies for every pod given. `pods` are all the pods of the
/// cluster (peers are resolved among them, and pod addresses are unique);
/// `namespaces` give the labels of namespaces (one not given has only its
/// name label).
pub fn compile(
    policies: &[NetworkPolicy],
    pods: &[Pod],
    namespaces: &[Namespace],
) -> CompiledPolicies {
    compile_for(policies, pods, namespaces, |_| true)
}

/// [`compile`] for the pods `local` picks only (a switch's own pods: it
/// asks about no other), peers still resolved among all `pods`.
pub fn compile_for(
    policies: &[NetworkPolicy],
    pods: &[Pod],
    namespaces: &[Namespace],
    local: impl Fn(&Pod) -> bool,
) -> CompiledPolicies {
    let world = World { pods, namespaces };
    let prepared: Vec<[Vec<PreparedRule>; 2]> = policies
        .iter()
        .map(|policy| {
            [Direction::Ingress, Direction::Egress]
                .map(|direction| world.prepare(policy, policy.rules(direction), direction))
        })
        .collect();
    let direction_policy = |pod: &Pod, direction: Direction| {
        let index = direction as usize;
        let mut names = Vec::new();
        let mut rules = Vec::new();
        for (policy, prepared) in policies.iter().zip(&prepared) {
            if policy.namespace == pod.namespace
                && policy.applies_to(direction)
                && policy.pod_selector.matches(&pod.labels)
            {
                names.push(policy.full_name());
                for rule in &prepared[index] {
                    rule.compile(pod, direction, &mut rules);
                }
            }
        }
        if names.is_empty() {
            DirectionPolicy::Unrestricted
        } else {
            DirectionPolicy::Restricted(Box::new(RuleSet::new(names, rules)))
        }
    };
    CompiledPolicies {
        pods: pods
            .iter()
            .filter(|pod| local(pod))
            .map(|pod| {
                let policy = PodPolicy {
                    ingress: direction_policy(pod, Direction::Ingress),
                    egress: direction_policy(pod, Direction::Egress),
                };
                (u32::from(pod.ip), policy)
            })
            .collect(),
    }
}

/// The pods and namespaces peers are resolved among.
struct World<'a> {
    pods: &'a [Pod],
    namespaces: &'a [Namespace],
}

/// A rule with its peers resolved, before its ports are (they may depend
/// on the selected pod).
struct PreparedRule<'a> {
    rule: &'a Rule,
    remotes: Vec<Ipv4Net>,
    /// For an egress rule with named ports: the pods among its peers,
    /// whose ports the names resolve against.
    named_targets: Vec<&'a Pod>,
}

impl<'a> World<'a> {
    fn prepare(
        &self,
        policy: &'a NetworkPolicy,
        rules: &'a [Rule],
        direction: Direction,
    ) -> Vec<PreparedRule<'a>> {
        rules
            .iter()
            .map(|rule| {
                let selectors: Vec<_> = rule
                    .peers
                    .iter()
                    .map(|peer| self.selected_namespaces(policy, peer))
                    .collect();
                let in_peers = |pod: &Pod| {
                    rule.peers.is_empty()
                        || rule.peers.iter().zip(&selectors).any(|(peer, namespaces)| {
                            selects_pod(peer, namespaces.as_ref(), pod)
                                || peer.ip_block.as_ref().is_some_and(|b| b.contains(pod.ip))
                        })
                };
                let mut remotes = Vec::new();
                if rule.peers.is_empty() {
                    remotes.push(Ipv4Net::default());
                }
                for (peer, namespaces) in rule.peers.iter().zip(&selectors) {
                    remotes.extend(
                        self.pods
                            .iter()
                            .filter(|pod| selects_pod(peer, namespaces.as_ref(), pod))
                            .map(|pod| Ipv4Net::from(pod.ip)),
                    );
                    if let Some(block) = &peer.ip_block {
                        block_prefixes(block, &mut remotes);
                    }
                }
                remotes.sort_unstable();
                remotes.dedup();
                let named = rule
                    .ports
                    .iter()
                    .any(|port| matches!(port.port, Some(Port::Name(_))));
                let named_targets = if named && direction == Direction::Egress {
                    self.pods.iter().filter(|pod| in_peers(pod)).collect()
                } else {
                    Vec::new()
                };
                PreparedRule {
                    rule,
                    remotes,
                    named_targets,
                }
            })
            .collect()
    }

    /// The namespaces a peer's selectors select pods in, `None` if it has
    /// no selector.
    fn selected_namespaces(
        &self,
        policy: &'a NetworkPolicy,
        peer: &Peer,
    ) -> Option<HashSet<&'a str>> {
        if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
            return None;
        }
        let Some(selector) = &peer.namespace_selector else {
            return Some(HashSet::from([policy.namespace.as_str()]));
        };
        let mut selected: HashSet<&'a str> = self
            .namespaces
            .iter()
            .filter(|namespace| namespace.selected_by(selector))
            .map(|namespace| namespace.name.as_str())
            .collect();
        let listed: HashSet<&str> = self.namespaces.iter().map(|n| n.name.as_str()).collect();
        for pod in self.pods {
            if listed.contains(pod.namespace.as_str()) || selected.contains(pod.namespace.as_str())
            {
                continue;
            }
            let unlisted = Namespace {
                name: pod.namespace.clone(),
                labels: Labels::new(),
            };
            if unlisted.selected_by(selector) {
                selected.insert(&pod.namespace);
            }
        }
        Some(selected)
    }
}

/// Whether a peer's selectors select a pod, given the namespaces they
/// select pods in.
fn selects_pod(peer: &Peer, namespaces: Option<&HashSet<&str>>, pod: &Pod) -> bool {
    namespaces.is_some_and(|namespaces| namespaces.contains(pod.namespace.as_str()))
        && peer
            .pod_selector
            .as_ref()
            .is_none_or(|s| s.matches(&pod.labels))
}

/// An ipBlock as disjoint prefixes: its CIDR with the excepts carved out.
fn block_prefixes(block: &IpBlock, out: &mut Vec<Ipv4Net>) {
    let excepts: Vec<Ipv4Net> = block.except.iter().map(Ipv4Net::trunc).collect();
    carve(block.cidr.trunc(), &excepts, out);
}

fn carve(net: Ipv4Net, excepts: &[Ipv4Net], out: &mut Vec<Ipv4Net>) {
    if excepts.iter().any(|except| except.contains(&net)) {
        return;
    }
    if !excepts.iter().any(|except| net.contains(except)) {
        out.push(net);
        return;
    }
    // An except lies strictly inside: `net` is shorter than /32.
    for half in net.subnets(net.prefix_len() + 1).into_iter().flatten() {
        carve(half, excepts, out);
    }
}

impl PreparedRule<'_> {
    /// The compiled rules this rule gives a selected pod.
    fn compile(&self, pod: &Pod, direction: Direction, out: &mut Vec<CompiledRule>) {
        if self.rule.ports.is_empty() {
            out.push(CompiledRule {
                remotes: self.remotes.clone(),
                ports: vec![PortRange {
                    protocol: None,
                    first: 0,
                    last: u16::MAX,
                }],
            });
            return;
        }
        let mut ports = Vec::new();
        let mut by_target: BTreeMap<PortRange, Vec<Ipv4Net>> = BTreeMap::new();
        for port in &self.rule.ports {
            let range = |first, last| PortRange {
                protocol: Some(port.protocol),
                first,
                last,
            };
            match &port.port {
                None => ports.push(range(0, u16::MAX)),
                Some(Port::Number(first)) => {
                    let last = port.end_port.unwrap_or(*first);
                    if last >= *first {
                        ports.push(range(*first, last));
                    }
                }
                Some(Port::Name(name)) => match direction {
                    Direction::Ingress => ports.extend(
                        named_port(pod, port.protocol, name).map(|number| range(number, number)),
                    ),
                    Direction::Egress => {
                        for target in &self.named_targets {
                            if let Some(number) = named_port(target, port.protocol, name) {
                                let remotes = by_target.entry(range(number, number)).or_default();
                                remotes.push(Ipv4Net::from(target.ip));
                            }
                        }
                    }
                },
            }
        }
        if !ports.is_empty() {
            out.push(CompiledRule {
                remotes: self.remotes.clone(),
                ports,
            });
        }
        out.extend(by_target.into_iter().map(|(range, remotes)| CompiledRule {
            remotes,
            ports: vec![range],
        }));
    }
}

/// The number of a pod's port by name and protocol.
fn named_port(pod: &Pod, protocol: Protocol, name: &str) -> Option<u16> {
    pod.ports
        .iter()
        .find(|port| port.name == name && port.protocol == protocol)
        .map(|port| port.port)
}

impl RuleSet {
    fn new(policies: Vec<String>, rules: Vec<CompiledRule>) -> RuleSet {
        let mut entries: [BTreeMap<Ipv4Net, Vec<(u16, u16)>>; TABLES] = Default::default();
        for rule in &rules {
            for range in &rule.ports {
                let tables = match range.protocol {
                    None => 0..TABLES,
                    Some(protocol) => {
                        table(protocol.ip_protocol())..table(protocol.ip_protocol()) + 1
                    }
                };
                for table in tables {
                    for remote in &rule.remotes {
                        let ranges = entries[table].entry(*remote).or_default();
                        ranges.push((range.first, range.last));
                    }
                }
            }
        }
        RuleSet {
            policies,
            rules,
            tables: entries.map(|entries| PrefixTable::new(&entries)),
        }
    }

    /// The policies selecting the pod in this direction, as
    /// `namespace/name`.
    pub fn policies(&self) -> &[String] {
        &self.policies
    }

    /// The compiled rules.
    pub fn rules(&self) -> &[CompiledRule] {
        &self.rules
    }

    /// Whether the rules allow traffic with a remote address on an IP
    /// protocol and port (the port is ignored for protocols without).
    pub fn allows(&self, remote: Ipv4Addr, protocol: u8, port: u16) -> bool {
        self.tables[table(protocol)].allows(u32::from(remote), port)
    }
}

/// The table of an IP protocol number.
fn table(protocol: u8) -> usize {
    match Protocol::from_ip_protocol(protocol) {
        Some(Protocol::Tcp) => 0,
        Some(Protocol::Udp) => 1,
        Some(Protocol::Sctp) => 2,
        None => OTHER,
    }
}

/// Remote addresses to the port ranges allowed with them, as disjoint
/// address intervals in order: `starts[i]` begins an interval, running to
/// the next start. An address's interval is found by binary search, so
/// the cost grows with the log of the number of intervals, whatever the
/// prefix lengths (an except carved out of a block makes prefixes of
/// many lengths, but only three intervals).
#[derive(Debug, Clone)]
struct PrefixTable {
    starts: Box<[u32]>,
    /// Interval `i`'s ranges are `ranges[bounds[i]..bounds[i + 1]]`.
    bounds: Box<[u32]>,
    ranges: Box<[(u16, u16)]>,
}

/// Port ranges, sorted and disjoint.
type Ranges = Box<[(u16, u16)]>;

impl PrefixTable {
    /// The table of prefixes with their ranges; prefixes nest or are
    /// disjoint, and an address gets the ranges of every prefix holding it.
    fn new(entries: &BTreeMap<Ipv4Net, Vec<(u16, u16)>>) -> PrefixTable {
        let mut intervals: Vec<(u32, Ranges)> = vec![(0, Box::default())];
        let mut open: Vec<(u64, Ranges)> = Vec::new();
        let close = |open: &mut Vec<(u64, Ranges)>, intervals: &mut Vec<_>, until: u64| {
            while let Some(&(end, _)) = open.last() {
                if end > until {
                    break;
                }
                open.pop();
                if end <= u64::from(u32::MAX) {
                    let outer = open.last().map(|(_, r)| r.clone()).unwrap_or_default();
                    push_interval(intervals, end as u32, outer);
                }
            }
        };
        // In address order, a prefix before the longer ones it holds.
        for (prefix, ranges) in entries {
            let start = u32::from(prefix.network());
            close(&mut open, &mut intervals, u64::from(start));
            let mut all = ranges.clone();
            if let Some((_, outer)) = open.last() {
                all.extend_from_slice(outer);
            }
            let all = merge(all);
            push_interval(&mut intervals, start, all.clone());
            open.push((u64::from(start) + (1u64 << (32 - prefix.prefix_len())), all));
        }
        close(&mut open, &mut intervals, u64::MAX);
        let starts = intervals.iter().map(|&(start, _)| start).collect();
        let mut bounds = vec![0];
        let mut flat = Vec::new();
        for (_, ranges) in &intervals {
            flat.extend_from_slice(ranges);
            bounds.push(u32::try_from(flat.len()).expect("fewer than 2^32 ranges"));
        }
        PrefixTable {
            starts,
            bounds: bounds.into_boxed_slice(),
            ranges: flat.into_boxed_slice(),
        }
    }

    fn allows(&self, remote: u32, port: u16) -> bool {
        // The first interval starts at 0, so there is one at or before.
        let interval = self.starts.partition_point(|&start| start <= remote) - 1;
        let ranges =
            &self.ranges[self.bounds[interval] as usize..self.bounds[interval + 1] as usize];
        let next = ranges.partition_point(|&(_, last)| last < port);
        ranges.get(next).is_some_and(|&(first, _)| first <= port)
    }
}

/// Appends an interval, replacing one that starts at the same address and
/// joining one with the same ranges before it.
fn push_interval(intervals: &mut Vec<(u32, Ranges)>, start: u32, ranges: Box<[(u16, u16)]>) {
    if intervals.last().is_some_and(|(last, _)| *last == start) {
        intervals.pop();
    }
    if intervals.last().is_some_and(|(_, last)| *last == ranges) {
        return;
    }
    intervals.push((start, ranges));
}

/// Ranges sorted, with overlapping and adjacent ones merged.
fn merge(mut ranges: Vec<(u16, u16)>) -> Ranges {
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (first, last) in ranges {
        match merged.last_mut() {
            Some(previous) if u32::from(first) <= u32::from(previous.1) + 1 => {
                previous.1 = previous.1.max(last);
            }
            _ => merged.push((first, last)),
        }
    }
    merged.into_boxed_slice()
}

impl DirectionPolicy {
    /// The rules, if some policy restricts the direction.
    pub fn restricted(&self) -> Option<&RuleSet> {
        match self {
            DirectionPolicy::Unrestricted => None,
            DirectionPolicy::Restricted(rules) => Some(rules),
        }
    }
}

impl PodPolicy {
    /// Whether some policy selects the pod, in either direction.
    pub fn is_restricted(&self) -> bool {
        self.ingress.restricted().is_some() || self.egress.restricted().is_some()
    }

    /// The policy of a direction.
    pub fn direction(&self, direction: Direction) -> &DirectionPolicy {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

impl CompiledPolicies {
    /// Every compiled pod, by address.
    pub fn pods(&self) -> impl Iterator<Item = (Ipv4Addr, &PodPolicy)> {
        self.pods
            .iter()
            .map(|(&address, policy)| (Ipv4Addr::from(address), policy))
    }

    /// The policies of the pod with this address, if it is known.
    pub fn pod(&self, address: Ipv4Addr) -> Option<&PodPolicy> {
        self.pods.get(&u32::from(address))
    }

    /// The verdict on a packet of a local pod: `Ingress` for one to it
    /// from `remote`, `Egress` for one from it to `remote`, on an IP
    /// protocol and the port at the destination. This is for the first
    /// packet of a connection; replies and later packets pass on the
    /// switch's connection table, as Kubernetes wants. An address that
    /// is no known pod's is unrestricted.
    pub fn allows(
        &self,
        direction: Direction,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        protocol: u8,
        port: u16,
    ) -> Verdict {
        let Some(pod) = self.pods.get(&u32::from(local)) else {
            return Verdict::Unrestricted;
        };
        match pod.direction(direction) {
            DirectionPolicy::Unrestricted => Verdict::Unrestricted,
            DirectionPolicy::Restricted(rules) if rules.allows(remote, protocol, port) => {
                Verdict::Allowed
            }
            DirectionPolicy::Restricted(_) => Verdict::Denied,
        }
    }
}
