//! The Service table: what each (ClusterIP, protocol, port) and each
//! NodePort at every node's address translates to, built from the sources'
//! Service lists, and the endpoint choice for a new connection.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use foldhash::fast::FixedState;
use ipnet::Ipv4Net;
use podswitch_control::service::{Endpoint, Service, TrafficPolicy, is_external_address};

use crate::Pass;
use crate::flow::FlowKey;

/// One endpoint address and port, as connections are sent to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    /// The pod's address.
    pub address: Ipv4Addr,
    /// The port it serves on.
    pub port: u16,
}

/// What [`ServiceTable::select`] says for the first packet of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The destination is no Service port this table knows: leave it.
    NotAService,
    /// A Service port with no usable endpoint: drop
    /// (`service_no_endpoints`).
    NoEndpoints,
    /// Send the connection to this endpoint.
    Endpoint(Backend),
}

/// A Service port's lookup key: ClusterIP (or a node's address, for a
/// NodePort), IP protocol, port.
type PortKey = (Ipv4Addr, u8, u16);

/// A node of the cluster as the Service table sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeAddress {
    /// Its address: NodePorts are served there.
    pub address: Ipv4Addr,
    /// Its pods' CIDR: with `externalTrafficPolicy: Local` a NodePort at
    /// its address goes only to the endpoints in it.
    pub pod_cidr: Ipv4Net,
}

/// The nodes a Service table is built for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Nodes {
    /// This node's pod CIDR: the endpoints in it are the local ones, for
    /// `internalTrafficPolicy: Local` (`None`: no endpoint is local).
    pub local: Option<Ipv4Net>,
    /// Every node, this one included: a pod reaches a NodePort at any of
    /// their addresses.
    pub all: Vec<NodeAddress>,
}

/// One Service port (at its ClusterIP, or a NodePort at one node's
/// address) as the table keeps it.
#[derive(Debug)]
struct PortEntry {
    /// Index of its Service in [`ServiceTable::services`].
    service: usize,
    /// Index of the port in its Service's ports.
    port: usize,
    /// The endpoints new connections go to: the ready ones, or the
    /// serving terminating ones when none is ready (as kube-proxy does),
    /// within the traffic policy.
    usable: Vec<Backend>,
    /// The endpoints whose existing connections are kept: every ready or
    /// serving one within the traffic policy.
    kept: Vec<Backend>,
    /// `sessionAffinity: ClientIP` timeout in milliseconds.
    affinity_ms: Option<u64>,
}

impl PortEntry {
    /// The entry of Service `service`'s port `port` with `endpoints`, of
    /// which `allowed` (the traffic policy) may serve it.
    fn new(
        service: usize,
        port: usize,
        endpoints: &[Endpoint],
        allowed: impl Fn(&Endpoint) -> bool,
        affinity_ms: Option<u64>,
    ) -> PortEntry {
        let usable = usable_backends(endpoints, &allowed);
        PortEntry {
            service,
            port,
            usable,
            kept: backends(endpoints, |endpoint| {
                allowed(endpoint) && (endpoint.ready || endpoint.serving)
            }),
            affinity_ms,
        }
    }
}

/// The endpoints new connections go to, of those `allowed` (a traffic
/// policy) lets serve: the ready ones, or the serving terminating ones
/// when none is ready (as kube-proxy does).
pub fn usable_backends(
    endpoints: &[Endpoint],
    allowed: impl Fn(&Endpoint) -> bool,
) -> Vec<Backend> {
    let usable = backends(endpoints, |endpoint| allowed(endpoint) && endpoint.ready);
    if usable.is_empty() {
        backends(endpoints, |endpoint| {
            allowed(endpoint) && endpoint.serving && endpoint.terminating
        })
    } else {
        usable
    }
}

/// The backends of the `endpoints` that pass `keep`, sorted (so the same
/// set picks the same way whatever order the source listed it in) and
/// without repeats.
fn backends(endpoints: &[Endpoint], keep: impl Fn(&Endpoint) -> bool) -> Vec<Backend> {
    let mut backends: Vec<Backend> = endpoints
        .iter()
        .filter(|endpoint| keep(endpoint))
        .map(|endpoint| Backend {
            address: endpoint.address,
            port: endpoint.port,
        })
        .collect();
    backends.sort_unstable();
    backends.dedup();
    backends
}

/// The Service table: a snapshot the workers read without locking (the
/// switch swaps a new one in when a source changes). The
/// `sessionAffinity: ClientIP` memory ([`Affinity`]) outlives it.
#[derive(Debug)]
pub struct ServiceTable {
    ports: HashMap<PortKey, PortEntry, FixedState>,
    /// Every ClusterIP, and every node's address when a Service has a
    /// NodePort: a packet to another address is no Service's.
    service_addresses: HashSet<Ipv4Addr, FixedState>,
    /// Every endpoint's address, protocol and port: a packet from
    /// another is no endpoint's reply.
    endpoints: HashSet<PortKey, FixedState>,
    services: Vec<Service>,
}

/// The seed of the flow hash that spreads connections over endpoints: fixed,
/// so that every worker and every snapshot picks alike.
const FLOW_SEED: u64 = 0x5e41_ce5e_1ec7_0a11;

impl ServiceTable {
    /// Build the table from the Services of every source for `nodes`: the
    /// local ones for `internalTrafficPolicy: Local`, every node's address
    /// for the NodePorts. A ClusterIP (or node address), protocol and port
    /// listed twice keeps its first Service.
    pub fn new(services: Vec<Service>, nodes: &Nodes) -> ServiceTable {
        let mut ports = HashMap::with_hasher(FixedState::default());
        let mut service_addresses = HashSet::with_hasher(FixedState::default());
        let mut endpoints = HashSet::with_hasher(FixedState::default());
        let is_local = |address: Ipv4Addr| nodes.local.is_some_and(|cidr| cidr.contains(&address));
        for (index, service) in services.iter().enumerate() {
            let affinity_ms = service.affinity_seconds.map(|s| u64::from(s) * 1000);
            for (port_index, port) in service.ports.iter().enumerate() {
                let protocol = port.protocol.ip_protocol();
                // The ClusterIP port: internalTrafficPolicy applies.
                let internal = |endpoint: &Endpoint| {
                    service.internal_traffic_policy == TrafficPolicy::Cluster
                        || is_local(endpoint.address)
                };
                let entry =
                    PortEntry::new(index, port_index, &port.endpoints, internal, affinity_ms);
                ports
                    .entry((service.cluster_ip, protocol, port.port))
                    .or_insert(entry);
                // The same port at its external addresses: every endpoint,
                // as kube-proxy sends pods' traffic to them through the
                // Service's cluster chain whatever its policies.
                for &address in &service.external_ips {
                    let entry =
                        PortEntry::new(index, port_index, &port.endpoints, |_| true, affinity_ms);
                    ports.entry((address, protocol, port.port)).or_insert(entry);
                }
                // The NodePort at each node's address: externalTrafficPolicy
                // applies, with that node's endpoints as the local ones.
                if let Some(node_port) = port.node_port {
                    for node in &nodes.all {
                        let external = |endpoint: &Endpoint| {
                            service.external_traffic_policy == TrafficPolicy::Cluster
                                || node.pod_cidr.contains(&endpoint.address)
                        };
                        let entry = PortEntry::new(
                            index,
                            port_index,
                            &port.endpoints,
                            external,
                            affinity_ms,
                        );
                        ports
                            .entry((node.address, protocol, node_port))
                            .or_insert(entry);
                        service_addresses.insert(node.address);
                    }
                }
                endpoints.extend(port.endpoints.iter().map(|e| (e.address, protocol, e.port)));
            }
            service_addresses.insert(service.cluster_ip);
            service_addresses.extend(&service.external_ips);
        }
        ServiceTable {
            ports,
            service_addresses,
            endpoints,
            services,
        }
    }

    /// Whether `address` is a ClusterIP of the table, or a node's address
    /// serving NodePorts: only packets to one are a Service's (a new
    /// connection, one established, or an endpoint's answer to its own
    /// hairpin connection). One probe of a small set, so that other
    /// traffic never probes the connection table.
    #[inline]
    pub fn is_service_address(&self, address: Ipv4Addr) -> bool {
        self.service_addresses.contains(&address)
    }

    /// Whether a packet from `address` and `port` over `protocol` may be
    /// an endpoint's reply (any endpoint the sources list, whatever its
    /// conditions).
    #[inline]
    pub fn is_endpoint(&self, address: Ipv4Addr, protocol: u8, port: u16) -> bool {
        self.endpoints.contains(&(address, protocol, port))
    }

    /// Whether the table has no Service port.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// The Services it was built from, as the sources gave them.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The endpoints new connections to a Service port go to (empty for
    /// none); `None` for a port the table does not know.
    pub fn usable(&self, cluster_ip: Ipv4Addr, protocol: u8, port: u16) -> Option<&[Backend]> {
        Some(&self.ports.get(&(cluster_ip, protocol, port))?.usable)
    }

    /// Pick the endpoint for a new connection `flow` (client to ClusterIP):
    /// the client's remembered endpoint under `sessionAffinity: ClientIP`
    /// while it is usable, else one by a hash of the flow. A
    /// [`Pass::Live`] remembers (or renews) the pick for the client; a
    /// [`Pass::DryRun`] (a trace) gets the same pick and leaves the
    /// client's affinity as it is.
    pub fn select(
        &self,
        flow: &FlowKey,
        affinity: &Affinity,
        now_ms: u64,
        pass: Pass,
    ) -> Selection {
        let Some(entry) = self.ports.get(&(flow.dst, flow.protocol, flow.dport)) else {
            return Selection::NotAService;
        };
        if entry.usable.is_empty() {
            return Selection::NoEndpoints;
        }
        let hashed = || {
            let hash = FixedState::with_seed(FLOW_SEED).hash_one(flow);
            entry.usable[(hash % entry.usable.len() as u64) as usize]
        };
        let Some(timeout) = entry.affinity_ms else {
            return Selection::Endpoint(hashed());
        };
        let key = (flow.dst, flow.protocol, flow.dport, flow.src);
        let mut remembered = affinity.lock();
        let backend = match remembered.get(&key) {
            Some(&(backend, expiry)) if expiry > now_ms && entry.usable.contains(&backend) => {
                backend
            }
            _ => hashed(),
        };
        if pass == Pass::Live {
            remembered.insert(key, (backend, now_ms.saturating_add(timeout)));
        }
        Selection::Endpoint(backend)
    }

    /// Whether a connection sent to `backend` for the Service port its
    /// `original` flow addressed keeps going: the endpoint is still listed,
    /// ready or serving. The switch removes the connections it does not
    /// keep when a new table comes in.
    pub fn keeps(&self, original: &FlowKey, backend: &Backend) -> bool {
        self.ports
            .get(&(original.dst, original.protocol, original.dport))
            .is_some_and(|entry| entry.kept.contains(backend))
    }

    /// Every Service port at its ClusterIP, with its NodePort if it has
    /// one, sorted by ClusterIP, protocol and port.
    pub fn ports(&self) -> Vec<PortView<'_>> {
        let mut ports: Vec<PortView<'_>> = self
            .ports
            .iter()
            .map(|(&(address, protocol, port), entry)| {
                (
                    address,
                    protocol,
                    port,
                    entry,
                    &self.services[entry.service],
                )
            })
            // The NodePorts at the nodes' addresses are shown with their
            // ClusterIP port.
            .filter(|&(address, .., service)| address == service.cluster_ip)
            .map(|(cluster_ip, protocol, port, entry, service)| PortView {
                service: &service.name,
                cluster_ip,
                protocol,
                port,
                node_port: service.ports[entry.port].node_port,
                external_ips: &service.external_ips,
                endpoints: &entry.usable,
            })
            .collect();
        ports.sort_unstable_by_key(|p| (p.cluster_ip, p.protocol, p.port));
        ports
    }
}

/// One Service port as [`ServiceTable::ports`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortView<'a> {
    /// Its Service's `namespace/name`.
    pub service: &'a str,
    /// The ClusterIP.
    pub cluster_ip: Ipv4Addr,
    /// The IP protocol number.
    pub protocol: u8,
    /// The port on the ClusterIP.
    pub port: u16,
    /// The port on every node's address, for a NodePort Service.
    pub node_port: Option<u16>,
    /// The Service's external addresses, served on the same port.
    pub external_ips: &'a [Ipv4Addr],
    /// The endpoints new connections to the ClusterIP go to.
    pub endpoints: &'a [Backend],
}

/// The longest Service name taken: a namespace and a name of 63
/// characters each, with room to spare.
const MAX_NAME_LEN: usize = 160;

/// Check a source's Services before they replace its set: a message saying
/// what to fix for the first problem found.
pub fn check(services: &[Service]) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    let mut claimed: HashMap<PortKey, &str> = HashMap::new();
    let mut node_ports: HashMap<(u8, u16), &str> = HashMap::new();
    for service in services {
        let name = service.name.as_str();
        if name.is_empty() {
            return Err("a Service has no name: give each one its namespace/name".into());
        }
        // Kubernetes' names are DNS labels; the name also names the
        // Service's nftables sets and comments (external_services.rs).
        if name.len() > MAX_NAME_LEN
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/'))
        {
            return Err(format!(
                "Service name {name:?} is not a namespace/name: use letters, digits, '-', \
                 '.', '_' and '/', at most {MAX_NAME_LEN} characters"
            ));
        }
        if !names.insert(name) {
            return Err(format!(
                "Service {name} is listed twice: list each Service once"
            ));
        }
        let ip = service.cluster_ip;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(format!(
                "Service {name}: cluster_ip {ip} is not a ClusterIP"
            ));
        }
        for &external in &service.external_ips {
            if !is_external_address(external) || external == ip {
                return Err(format!(
                    "Service {name}: external IP {external} is not an address a pod can reach \
                     it at: list unicast addresses other than its cluster_ip"
                ));
            }
        }
        if service.ports.is_empty() {
            return Err(format!("Service {name} has no ports: give it at least one"));
        }
        if let Some(seconds) = service.affinity_seconds
            && !(1..=86_400).contains(&seconds)
        {
            return Err(format!(
                "Service {name}: affinity_seconds {seconds} is out of range: use 1 to 86400 \
                 (Kubernetes' limits), or leave it out for no affinity"
            ));
        }
        for port in &service.ports {
            let protocol = port.protocol.name();
            if port.port == 0 {
                return Err(format!("Service {name}: port 0 ({protocol}) is not a port"));
            }
            for address in std::iter::once(ip).chain(service.external_ips.iter().copied()) {
                let key = (address, port.protocol.ip_protocol(), port.port);
                if let Some(other) = claimed.insert(key, name) {
                    return Err(format!(
                        "Services {other} and {name} both claim {address} {protocol}/{}: keep one",
                        port.port
                    ));
                }
            }
            if let Some(node_port) = port.node_port {
                if node_port == 0 {
                    return Err(format!(
                        "Service {name} {protocol}/{}: node_port 0 is not a port: leave it \
                         out for no NodePort",
                        port.port
                    ));
                }
                let key = (port.protocol.ip_protocol(), node_port);
                if let Some(other) = node_ports.insert(key, name) {
                    return Err(format!(
                        "Services {other} and {name} both claim NodePort {protocol}/{node_port}: \
                         keep one"
                    ));
                }
            }
            for endpoint in &port.endpoints {
                let address = endpoint.address;
                if endpoint.port == 0 || address.is_unspecified() || address.is_broadcast() {
                    return Err(format!(
                        "Service {name} {protocol}/{}: endpoint {address}:{} is not a pod's \
                         address and port",
                        port.port, endpoint.port
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Key of a remembered client: ClusterIP, protocol, port, client address.
type AffinityKey = (Ipv4Addr, u8, u16, Ipv4Addr);

/// `sessionAffinity: ClientIP`: the endpoint each client of a Service port
/// was given and until when, in milliseconds. It outlives table snapshots;
/// only new connections of Services with affinity touch it.
#[derive(Debug, Default)]
pub struct Affinity {
    clients: Mutex<HashMap<AffinityKey, (Backend, u64), FixedState>>,
}

impl Affinity {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AffinityKey, (Backend, u64), FixedState>> {
        // A worker that panicked holding it left a map, still usable.
        self.clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forget the clients whose time ran out; returns how many remain.
    pub fn expire(&self, now_ms: u64) -> usize {
        let mut clients = self.lock();
        clients.retain(|_, &mut (_, expiry)| expiry > now_ms);
        clients.len()
    }
}

#[cfg(test)]
mod tests {
    use podswitch_control::service::{ServicePort, ServiceProtocol};

    use super::*;
    use crate::flow::tests::key;
    use crate::flow::{TCP, UDP};

    fn endpoint(address: [u8; 4], ready: bool, serving: bool, terminating: bool) -> Endpoint {
        Endpoint {
            ready,
            serving,
            terminating,
            ..Endpoint::ready(address.into(), 8080)
        }
    }

    fn service(endpoints: Vec<Endpoint>) -> Service {
        let port = ServicePort::new(ServiceProtocol::Tcp, 80, endpoints);
        Service::new("default/web", Ipv4Addr::new(10, 96, 0, 10), vec![port])
    }

    fn backend(address: [u8; 4]) -> Backend {
        Backend {
            address: address.into(),
            port: 8080,
        }
    }

    /// Nodes whose local pods are in `cidr`, with no NodePort addresses.
    fn local(cidr: &str) -> Nodes {
        Nodes {
            local: Some(cidr.parse().unwrap()),
            all: Vec::new(),
        }
    }

    fn to_web(client_port: u16) -> FlowKey {
        key([10, 244, 1, 9], client_port, [10, 96, 0, 10], 80, TCP)
    }

    #[test]
    fn new_connections_spread_over_the_ready_endpoints_only() {
        let table = ServiceTable::new(
            vec![service(vec![
                endpoint([10, 244, 1, 5], true, true, false),
                endpoint([10, 244, 2, 7], true, true, false),
                endpoint([10, 244, 2, 8], false, false, false),
                endpoint([10, 244, 2, 9], false, true, true),
            ])],
            &Nodes::default(),
        );
        let affinity = Affinity::default();
        let mut seen = std::collections::BTreeMap::new();
        for port in 30000..31000 {
            match table.select(&to_web(port), &affinity, 0, Pass::Live) {
                Selection::Endpoint(b) => *seen.entry(b).or_insert(0) += 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            seen.keys().copied().collect::<Vec<_>>(),
            vec![backend([10, 244, 1, 5]), backend([10, 244, 2, 7])]
        );
        assert!(seen.values().all(|&n| n > 350), "{seen:?}");
        // The same flow picks the same endpoint every time.
        assert_eq!(
            table.select(&to_web(30000), &affinity, 0, Pass::Live),
            table.select(&to_web(30000), &affinity, 5, Pass::Live)
        );
        // Other ports, protocols and addresses are no Service.
        let mut udp = to_web(1);
        udp.protocol = UDP;
        assert_eq!(
            table.select(&udp, &affinity, 0, Pass::Live),
            Selection::NotAService
        );
        let mut other_port = to_web(1);
        other_port.dport = 443;
        assert_eq!(
            table.select(&other_port, &affinity, 0, Pass::Live),
            Selection::NotAService
        );
        assert_eq!(affinity.expire(0), 0);
    }

    #[test]
    fn serving_terminating_endpoints_are_the_fallback_and_none_means_no_endpoints() {
        let terminating = endpoint([10, 244, 2, 9], false, true, true);
        let table = ServiceTable::new(
            vec![service(vec![
                terminating.clone(),
                endpoint([10, 244, 2, 8], false, false, true),
            ])],
            &Nodes::default(),
        );
        let affinity = Affinity::default();
        assert_eq!(
            table.select(&to_web(1), &affinity, 0, Pass::Live),
            Selection::Endpoint(backend([10, 244, 2, 9]))
        );
        assert!(table.keeps(&to_web(1), &backend([10, 244, 2, 9])));
        assert!(!table.keeps(&to_web(1), &backend([10, 244, 2, 8])));
        let none = ServiceTable::new(
            vec![service(vec![endpoint(
                [10, 244, 2, 8],
                false,
                false,
                false,
            )])],
            &Nodes::default(),
        );
        assert_eq!(
            none.select(&to_web(1), &affinity, 0, Pass::Live),
            Selection::NoEndpoints
        );
        assert_eq!(
            none.usable(Ipv4Addr::new(10, 96, 0, 10), TCP, 80),
            Some(&[][..])
        );
    }

    #[test]
    fn internal_traffic_policy_local_uses_this_nodes_endpoints_only() {
        let mut web = service(vec![
            endpoint([10, 244, 1, 5], true, true, false),
            endpoint([10, 244, 2, 7], true, true, false),
        ]);
        web.internal_traffic_policy = TrafficPolicy::Local;
        let table = ServiceTable::new(vec![web.clone()], &local("10.244.1.0/24"));
        let affinity = Affinity::default();
        for port in 1..100 {
            assert_eq!(
                table.select(&to_web(port), &affinity, 0, Pass::Live),
                Selection::Endpoint(backend([10, 244, 1, 5]))
            );
        }
        let table = ServiceTable::new(vec![web], &local("10.244.3.0/24"));
        assert_eq!(
            table.select(&to_web(1), &affinity, 0, Pass::Live),
            Selection::NoEndpoints
        );
    }

    #[test]
    fn external_ips_serve_the_same_ports_with_every_endpoint() {
        let mut web = service(vec![
            endpoint([10, 244, 1, 5], true, true, false),
            endpoint([10, 244, 2, 7], true, true, false),
        ]);
        let external = Ipv4Addr::new(192, 0, 2, 10);
        let balancer = Ipv4Addr::new(198, 51, 100, 7);
        web.external_ips = vec![external, balancer];
        // Both policies Local: neither applies to a pod's traffic to an
        // external address (kube-proxy's cluster chain).
        web.internal_traffic_policy = TrafficPolicy::Local;
        web.external_traffic_policy = TrafficPolicy::Local;
        let table = ServiceTable::new(vec![web], &local("10.244.3.0/24"));
        let affinity = Affinity::default();
        for address in [external, balancer] {
            assert!(table.is_service_address(address));
            let mut picks = std::collections::BTreeSet::new();
            for port in 1..100 {
                let mut flow = to_web(port);
                flow.dst = address;
                let Selection::Endpoint(picked) = table.select(&flow, &affinity, 0, Pass::Live)
                else {
                    panic!("{address} is not served")
                };
                picks.insert(picked);
            }
            assert_eq!(
                picks.into_iter().collect::<Vec<_>>(),
                [backend([10, 244, 1, 5]), backend([10, 244, 2, 7])]
            );
            let mut other_port = to_web(1);
            other_port.dst = address;
            other_port.dport = 81;
            assert_eq!(
                table.select(&other_port, &affinity, 0, Pass::Live),
                Selection::NotAService
            );
        }
        // The ClusterIP keeps its internal policy: no endpoint on this node.
        assert_eq!(
            table.select(&to_web(1), &affinity, 0, Pass::Live),
            Selection::NoEndpoints
        );
        let ports = table.ports();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].external_ips, [external, balancer]);
    }

    #[test]
    fn client_ip_affinity_keeps_a_client_on_its_endpoint_until_the_timeout() {
        let mut web = service(
            (1..=8)
                .map(|i| endpoint([10, 244, 2, i], true, true, false))
                .collect(),
        );
        web.affinity_seconds = Some(10);
        let table = ServiceTable::new(vec![web.clone()], &Nodes::default());
        let affinity = Affinity::default();
        // A preview picks what the selection will, remembering nothing.
        let preview = table.select(&to_web(1), &affinity, 0, Pass::DryRun);
        assert_eq!(affinity.expire(0), 0);
        let Selection::Endpoint(first) = table.select(&to_web(1), &affinity, 0, Pass::Live) else {
            panic!()
        };
        assert_eq!(preview, Selection::Endpoint(first));
        assert_eq!(
            table.select(&to_web(2), &affinity, 1, Pass::DryRun),
            Selection::Endpoint(first)
        );
        // Every later connection of the client, each renewing the timeout.
        for (i, port) in (2..200).enumerate() {
            assert_eq!(
                table.select(&to_web(port), &affinity, i as u64 * 1000, Pass::Live),
                Selection::Endpoint(first)
            );
        }
        // Another client is hashed on its own.
        let mut picks = std::collections::BTreeSet::new();
        for client in 1..50 {
            let mut flow = to_web(1);
            flow.src = Ipv4Addr::new(10, 244, 3, client);
            let Selection::Endpoint(b) = table.select(&flow, &affinity, 0, Pass::Live) else {
                panic!()
            };
            picks.insert(b);
        }
        assert!(picks.len() > 1);
        // A new snapshot without the endpoint: the client moves.
        web.ports[0]
            .endpoints
            .retain(|e| e.address != first.address);
        let without = ServiceTable::new(vec![web], &Nodes::default());
        let Selection::Endpoint(moved) =
            without.select(&to_web(500), &affinity, 200_000, Pass::Live)
        else {
            panic!()
        };
        assert_ne!(moved, first);
        // Past the timeout the memory is gone.
        assert_eq!(affinity.expire(200_000 + 10_000), 0);
    }

    #[test]
    fn a_port_listed_twice_keeps_the_first_service_and_ports_lists_sorted() {
        let first = service(vec![endpoint([10, 244, 1, 5], true, true, false)]);
        let mut second = service(vec![endpoint([10, 244, 2, 7], true, true, false)]);
        second.name = "default/other".into();
        second
            .ports
            .push(ServicePort::new(ServiceProtocol::Udp, 53, vec![]));
        let table = ServiceTable::new(vec![first, second], &Nodes::default());
        let ports = table.ports();
        assert_eq!(ports.len(), 2);
        assert_eq!(ports[0].service, "default/web");
        assert_eq!(ports[0].endpoints, &[backend([10, 244, 1, 5])]);
        assert_eq!(
            (ports[1].service, ports[1].protocol, ports[1].port),
            ("default/other", UDP, 53)
        );
        assert_eq!(table.services().len(), 2);
        assert!(!table.is_empty());
    }

    #[test]
    fn node_ports_are_served_at_every_nodes_address_under_the_external_policy() {
        let node = |address: [u8; 4], cidr: &str| NodeAddress {
            address: address.into(),
            pod_cidr: cidr.parse().unwrap(),
        };
        let nodes = Nodes {
            local: Some("10.244.1.0/24".parse().unwrap()),
            all: vec![
                node([192, 168, 0, 1], "10.244.1.0/24"),
                node([192, 168, 0, 2], "10.244.2.0/24"),
            ],
        };
        let mut web = service(vec![
            endpoint([10, 244, 1, 5], true, true, false),
            endpoint([10, 244, 2, 7], true, true, false),
        ]);
        web.ports[0].node_port = Some(30080);
        // internalTrafficPolicy does not apply to NodePorts.
        web.internal_traffic_policy = TrafficPolicy::Local;
        let to = |address: [u8; 4], port: u16| key([10, 244, 1, 9], 40000, address, port, TCP);
        let both = [backend([10, 244, 1, 5]), backend([10, 244, 2, 7])];
        let table = ServiceTable::new(vec![web.clone()], &nodes);
        assert!(table.is_service_address([192, 168, 0, 2].into()));
        assert!(!table.is_service_address([192, 168, 0, 3].into()));
        for address in [[192, 168, 0, 1], [192, 168, 0, 2]] {
            assert_eq!(table.usable(address.into(), TCP, 30080), Some(&both[..]));
            assert!(table.keeps(&to(address, 30080), &both[1]));
        }
        assert_eq!(table.usable([192, 168, 0, 1].into(), TCP, 80), None);
        assert_eq!(
            table.usable([10, 96, 0, 10].into(), TCP, 80),
            Some(&both[..1])
        );
        // The ClusterIP port lists its NodePort; the NodePorts are not
        // listed apart.
        let ports = table.ports();
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].node_port, Some(30080));
        // externalTrafficPolicy Local: each node's address goes to that
        // node's endpoints only.
        web.external_traffic_policy = TrafficPolicy::Local;
        let table = ServiceTable::new(vec![web], &nodes);
        for (address, endpoint) in [([192, 168, 0, 1], &both[0]), ([192, 168, 0, 2], &both[1])] {
            assert_eq!(
                table.usable(address.into(), TCP, 30080),
                Some(std::slice::from_ref(endpoint))
            );
            let affinity = Affinity::default();
            for port in 1..50 {
                let mut flow = to(address, 30080);
                flow.sport = port;
                assert_eq!(
                    table.select(&flow, &affinity, 0, Pass::Live),
                    Selection::Endpoint(*endpoint)
                );
            }
        }
    }

    #[test]
    fn check_says_what_to_fix() {
        let good = service(vec![endpoint([10, 244, 1, 5], true, true, false)]);
        assert_eq!(check(std::slice::from_ref(&good)), Ok(()));
        let mut dns = good.clone();
        dns.name = "kube-system/dns".into();
        let cases: Vec<(Vec<Service>, &str)> = vec![
            (
                vec![Service {
                    name: String::new(),
                    ..good.clone()
                }],
                "no name",
            ),
            (vec![good.clone(), good.clone()], "listed twice"),
            (
                vec![Service {
                    name: "default/web\" accept".into(),
                    ..good.clone()
                }],
                "is not a namespace/name",
            ),
            (
                vec![Service {
                    name: "a".repeat(MAX_NAME_LEN + 1),
                    ..good.clone()
                }],
                "at most 160 characters",
            ),
            (
                vec![Service {
                    cluster_ip: Ipv4Addr::UNSPECIFIED,
                    ..good.clone()
                }],
                "not a ClusterIP",
            ),
            (
                vec![Service {
                    ports: vec![],
                    ..good.clone()
                }],
                "no ports",
            ),
            (
                vec![Service {
                    affinity_seconds: Some(0),
                    ..good.clone()
                }],
                "1 to 86400",
            ),
            (
                vec![good.clone(), dns.clone()],
                "both claim 10.96.0.10 tcp/80",
            ),
        ];
        for (services, message) in cases {
            let error = check(&services).unwrap_err();
            assert!(error.contains(message), "{error}");
        }
        let mut node_port_zero = good.clone();
        node_port_zero.ports[0].node_port = Some(0);
        assert!(
            check(&[node_port_zero])
                .unwrap_err()
                .contains("node_port 0")
        );
        let (mut first, mut second) = (good.clone(), dns.clone());
        first.ports[0].node_port = Some(30080);
        second.cluster_ip = Ipv4Addr::new(10, 96, 0, 11);
        second.ports[0].node_port = Some(30080);
        assert!(
            check(&[first, second])
                .unwrap_err()
                .contains("both claim NodePort tcp/30080")
        );
        for (external, message) in [
            ([0, 0, 0, 0], "external IP 0.0.0.0"),
            ([10, 96, 0, 10], "external IP 10.96.0.10"),
            ([127, 0, 0, 1], "external IP 127.0.0.1"),
        ] {
            let mut bad = good.clone();
            bad.external_ips = vec![external.into()];
            assert!(check(&[bad]).unwrap_err().contains(message));
        }
        let (mut first, mut second) = (good.clone(), dns.clone());
        first.external_ips = vec![Ipv4Addr::new(192, 0, 2, 10)];
        second.cluster_ip = Ipv4Addr::new(10, 96, 0, 11);
        second.external_ips = vec![Ipv4Addr::new(192, 0, 2, 10)];
        assert!(
            check(&[first, second])
                .unwrap_err()
                .contains("both claim 192.0.2.10 tcp/80")
        );
        let mut zero = good.clone();
        zero.ports[0].port = 0;
        assert!(check(&[zero]).unwrap_err().contains("port 0"));
        let mut bad_endpoint = good;
        bad_endpoint.ports[0].endpoints[0].port = 0;
        assert!(
            check(&[bad_endpoint])
                .unwrap_err()
                .contains("endpoint 10.244.1.5:0")
        );
    }
}
