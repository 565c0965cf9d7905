//! The switch's own Service translation (`service_translation =
//! "switch"`): the Service table the workers read once per pass (an
//! arc-swap snapshot, as the FIB), replaced whenever the Services change,
//! and the long-lived translator (the connection table and the session
//! affinity memory) from `podswitch-services`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::Result;
use arc_swap::{ArcSwap, Guard};
use ipnet::Ipv4Net;
use podswitch_control::protocol::{EndpointStatus, ServicePortStatus};
use podswitch_control::service::{Service, ServiceProtocol};
use podswitch_services::{NodeAddress, Nodes, Pass, ServiceTable, Timeouts, Translator};

use crate::external_services::ExternalServices;
use crate::forward::ServiceStage;
use crate::sources::{FILE_SOURCE, FileSource, lock, read_json};

/// Connections the table holds by default: at 128 bytes per connection
/// (its slot and its share of the buckets), 128 MiB, allocated at start.
pub const DEFAULT_CONNECTIONS: usize = 1 << 20;

/// The Service stage's state, shared by the control plane and the workers.
#[derive(Debug)]
pub struct Services {
    table: ArcSwap<ServiceTable>,
    /// The connections and the affinity memory.
    pub translator: Translator,
    /// This node's pod CIDR (its endpoints are the local ones) and every
    /// node's address and pod CIDR (for NodePorts).
    nodes: Mutex<Nodes>,
    /// Set when a new table is in place: the next maintenance round ends
    /// the unkept connections once more, for those a worker still
    /// reading the table before it opened meanwhile.
    recheck: AtomicBool,
    /// Where the connection table's clock starts.
    epoch: Instant,
    /// Each source's Services, by source name.
    sources: Mutex<BTreeMap<String, Vec<Service>>>,
    /// The `services_file`, and what it looked like when last read.
    file: FileSource,
    /// The node's netfilter table for traffic from outside the pod
    /// network, when the daemon keeps one ([`Services::serve_external`]).
    external: Option<ExternalServices>,
}

/// Read a JSON list of Services (the `services_file`, the file of
/// `podswitch services set`), checked: an error names the file and what
/// to fix.
pub fn read_services(path: &Path) -> Result<Vec<Service>> {
    let services: Vec<Service> = read_json(path, "a JSON list of Services (see docs/services.md)")?;
    podswitch_services::check(&services)
        .map_err(|problem| anyhow::anyhow!("{}: {problem}", path.display()))?;
    Ok(services)
}

impl Services {
    /// An empty table for a node whose pods are in `pod_cidr`, with room
    /// for `capacity` connections; NodePorts are served at the addresses
    /// [`Services::set_nodes`] gives.
    pub fn new(pod_cidr: Ipv4Net, capacity: usize) -> Services {
        let nodes = Nodes {
            local: Some(pod_cidr),
            all: Vec::new(),
        };
        Services {
            table: ArcSwap::from_pointee(ServiceTable::new(Vec::new(), &nodes)),
            translator: Translator::new(capacity, Timeouts::default()),
            nodes: Mutex::new(nodes),
            recheck: AtomicBool::new(false),
            epoch: Instant::now(),
            sources: Mutex::new(BTreeMap::new()),
            file: FileSource::default(),
            external: None,
        }
    }

    /// Also translate traffic from outside the pod network to the
    /// Services' NodePorts and external addresses, in the node's
    /// netfilter (see [`crate::external_services`]): its table is
    /// installed now and follows every change.
    pub fn serve_external(mut self) -> Services {
        self.external = Some(ExternalServices::default());
        self.publish(&self.sources());
        self
    }

    fn sources(&self) -> MutexGuard<'_, BTreeMap<String, Vec<Service>>> {
        lock(&self.sources)
    }

    /// Replace the Services of `source` (`control`, `file`, `kubernetes`)
    /// and put the union of every source's in place; refused, with what to
    /// fix, when the set does not [`podswitch_services::check`]. A
    /// ClusterIP port two sources both list goes to the source first in
    /// name order.
    pub fn set(&self, source: &str, services: Vec<Service>) -> Result<(), String> {
        podswitch_services::check(&services)?;
        let mut sources = self.sources();
        sources.insert(source.to_string(), services);
        self.publish(&sources);
        Ok(())
    }

    /// The cluster's nodes changed (this node's included): serve the
    /// NodePorts at their addresses. Nothing is rebuilt when they did not.
    pub fn set_nodes(&self, mut all: Vec<NodeAddress>) {
        all.sort_unstable_by_key(|node| (node.address, node.pod_cidr));
        all.dedup();
        let sources = self.sources();
        {
            let mut nodes = lock(&self.nodes);
            if nodes.all == all {
                return;
            }
            nodes.all = all;
        }
        self.publish(&sources);
    }

    /// Read `path` as the file source now, and again whenever it changes
    /// ([`Services::maintain`]).
    pub fn watch_file(&self, path: &Path) -> Result<()> {
        self.file.watch(path, read_services, |services| {
            self.set(FILE_SOURCE, services)
        })
    }

    /// The table as `podswitch services` shows it: every Service port,
    /// its source, and its endpoints with their connections.
    pub fn status(&self) -> Vec<ServicePortStatus> {
        let table = self.table();
        let connections = self.translator.conns.per_backend();
        let sources = self.sources();
        let source_of = |name: &str| {
            sources
                .iter()
                .find(|(_, services)| services.iter().any(|s| s.name == name))
                .map_or_else(String::new, |(source, _)| source.clone())
        };
        table
            .ports()
            .into_iter()
            .filter_map(|port| {
                Some(ServicePortStatus {
                    service: port.service.to_string(),
                    source: source_of(port.service),
                    cluster_ip: port.cluster_ip,
                    protocol: ServiceProtocol::from_ip_protocol(port.protocol)?,
                    port: port.port,
                    node_port: port.node_port,
                    external_ips: port.external_ips.to_vec(),
                    endpoints: port
                        .endpoints
                        .iter()
                        .map(|backend| EndpointStatus {
                            address: backend.address,
                            port: backend.port,
                            connections: connections.get(backend).copied().unwrap_or(0) as u64,
                        })
                        .collect(),
                })
            })
            .collect()
    }

    /// Milliseconds since the switch started: the connection table's clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The current table, for one pass of a worker.
    pub fn table(&self) -> Guard<Arc<ServiceTable>> {
        self.table.load()
    }

    /// The Service stage for one pass over `table` (a [`Services::table`]
    /// snapshot): a worker's [`Pass::Live`], or `podswitch trace`'s
    /// [`Pass::DryRun`], which opens, notes and counts nothing.
    pub fn stage<'a>(&'a self, table: &'a ServiceTable, pass: Pass) -> ServiceStage<'a> {
        ServiceStage {
            table,
            translator: &self.translator,
            now_ms: self.now_ms(),
            pass,
        }
    }

    /// Put the union of the sources' Services in place, then end the
    /// connections to the endpoints it no longer has: their next packet
    /// picks a current endpoint. (The new table goes in first, so that no
    /// worker opens a connection to a removed endpoint after the removal;
    /// a worker's pass that began before the swap is caught by the next
    /// maintenance round.) Last, the node's table for traffic from
    /// outside the pod network follows, if the daemon keeps one. The
    /// caller holds the sources' lock, so that two changes publish in
    /// order.
    fn publish(&self, sources: &BTreeMap<String, Vec<Service>>) {
        let services = sources.values().flatten().cloned().collect();
        let (table, local) = {
            let nodes = lock(&self.nodes);
            (Arc::new(ServiceTable::new(services, &nodes)), nodes.local)
        };
        self.table.store(Arc::clone(&table));
        self.recheck.store(true, Ordering::Relaxed);
        self.end_unkept_connections();
        // After the workers have the new table: the node's rules (an `nft`
        // run) must not hold it back.
        if let (Some(external), Some(local)) = (&self.external, local) {
            external.update(table.services(), local);
        }
    }

    /// End the connections whose endpoint the current table does not keep.
    fn end_unkept_connections(&self) {
        let table = self.table();
        let ended = self
            .translator
            .conns
            .remove_unkept(|original, backend| table.keeps(original, backend));
        if ended > 0 {
            tracing::info!("ended {ended} connections to endpoints that left their Service");
        }
    }

    /// The maintenance thread's round: reread the file source if it
    /// changed, forget expired connections and affinities.
    pub fn maintain(&self) {
        self.file.reread("Services", read_services, |services| {
            self.set(FILE_SOURCE, services)
        });
        if self.recheck.swap(false, Ordering::Relaxed) {
            self.end_unkept_connections();
        }
        let now = self.now_ms();
        self.translator.conns.sweep(now);
        self.translator.affinity.expire(now);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use podswitch_control::service::{Endpoint, ServicePort, ServiceProtocol, TrafficPolicy};
    use podswitch_services::{FlowKey, Nat};

    use super::*;
    use crate::sources::CONTROL_SOURCE;

    fn web(endpoints: &[Ipv4Addr]) -> Service {
        let endpoints = endpoints
            .iter()
            .map(|&a| Endpoint::ready(a, 8080))
            .collect();
        let port = ServicePort::new(ServiceProtocol::Tcp, 80, endpoints);
        Service {
            internal_traffic_policy: TrafficPolicy::Local,
            ..Service::new("default/web", Ipv4Addr::new(10, 96, 0, 10), vec![port])
        }
    }

    #[test]
    fn a_new_set_ends_the_connections_of_removed_endpoints_and_knows_local_ones() {
        let services = Services::new("10.244.1.0/24".parse().unwrap(), 16);
        let (local, remote) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 2, 7));
        services
            .set(CONTROL_SOURCE, vec![web(&[local, remote])])
            .unwrap();
        // internalTrafficPolicy Local: only the pod CIDR's endpoint.
        let vip = Ipv4Addr::new(10, 96, 0, 10);
        let usable = services.table().usable(vip, 6, 80).unwrap().to_vec();
        assert_eq!(usable.len(), 1);
        assert_eq!(usable[0].address, local);
        let flow = FlowKey {
            src: Ipv4Addr::new(10, 244, 1, 9),
            dst: vip,
            sport: 40000,
            dport: 80,
            protocol: 6,
        };
        let nat = Nat {
            src: (flow.src, flow.sport),
            dst: (local, 8080),
        };
        let conns = &services.translator.conns;
        conns
            .insert(flow, nat, usable[0], services.now_ms())
            .unwrap();
        let status = services.status();
        assert_eq!(status.len(), 1);
        assert_eq!(
            (
                status[0].source.as_str(),
                status[0].endpoints[0].connections
            ),
            ("control", 1)
        );
        services
            .set(CONTROL_SOURCE, vec![web(&[local, remote])])
            .unwrap();
        assert_eq!(conns.len(), 1, "kept while the endpoint stays");
        services.set(CONTROL_SOURCE, vec![web(&[remote])]).unwrap();
        assert!(conns.is_empty());
        services.maintain();
    }

    #[test]
    fn sources_keep_their_own_sets_and_a_bad_set_is_refused() {
        let services = Services::new("10.244.1.0/24".parse().unwrap(), 16);
        let mut dns = web(&[Ipv4Addr::new(10, 244, 1, 5)]);
        dns.name = "kube-system/dns".into();
        dns.cluster_ip = Ipv4Addr::new(10, 96, 0, 53);
        services.set("kubernetes", vec![dns]).unwrap();
        services.set(CONTROL_SOURCE, vec![web(&[])]).unwrap();
        assert_eq!(services.status().len(), 2);
        let error = services
            .set(CONTROL_SOURCE, vec![web(&[]), web(&[])])
            .unwrap_err();
        assert!(error.contains("listed twice"), "{error}");
        services.set(CONTROL_SOURCE, vec![]).unwrap();
        let status = services.status();
        assert_eq!(status.len(), 1);
        assert_eq!(
            (status[0].service.as_str(), status[0].source.as_str()),
            ("kube-system/dns", "kubernetes")
        );
    }

    #[test]
    fn the_file_source_is_reread_when_it_changes_and_a_bad_file_keeps_the_last_set() {
        let dir = std::env::temp_dir().join(format!("podswitch-services-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("services.json");
        let write = |services: &[Service]| {
            std::fs::write(&path, serde_json::to_string(services).unwrap()).unwrap()
        };
        let endpoints =
            |n: usize| web(&[Ipv4Addr::new(10, 244, 1, 7), Ipv4Addr::new(10, 244, 1, 8)][..n]);
        write(&[endpoints(1)]);
        let services = Services::new("10.244.1.0/24".parse().unwrap(), 16);
        services.watch_file(&path).unwrap();
        let count = || services.status()[0].endpoints.len();
        assert_eq!(count(), 1);
        // A different length, so the change shows whatever the clock's grain.
        write(&[endpoints(2)]);
        services.maintain();
        assert_eq!(count(), 2);
        std::fs::write(&path, "[{\"name\": \"x\"}]").unwrap();
        services.maintain();
        assert_eq!(count(), 2);
        let error = read_services(&path).unwrap_err().to_string();
        assert!(
            error.contains("services.json") && error.contains("JSON list of Services"),
            "{error}"
        );
        std::fs::write(
            &path,
            serde_json::to_string(&[endpoints(1), endpoints(1)]).unwrap(),
        )
        .unwrap();
        let error = format!("{:#}", read_services(&path).unwrap_err());
        assert!(error.contains("listed twice"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn node_ports_follow_the_nodes_and_the_table_is_rebuilt_only_when_they_change() {
        let services = Services::new("10.244.1.0/24".parse().unwrap(), 16);
        let mut np = web(&[Ipv4Addr::new(10, 244, 2, 7)]);
        np.ports[0].node_port = Some(30080);
        services.set(CONTROL_SOURCE, vec![np]).unwrap();
        let node = |address: [u8; 4], cidr: &str| NodeAddress {
            address: address.into(),
            pod_cidr: cidr.parse().unwrap(),
        };
        let peer = [192, 168, 0, 2];
        assert!(!services.table().is_service_address(peer.into()));
        let nodes = vec![
            node(peer, "10.244.2.0/24"),
            node([192, 168, 0, 1], "10.244.1.0/24"),
        ];
        services.set_nodes(nodes.clone());
        let table = services.table();
        assert!(table.is_service_address(peer.into()));
        assert_eq!(table.usable(peer.into(), 6, 30080).map(<[_]>::len), Some(1));
        // The same nodes in another order: the same table.
        services.set_nodes(nodes.into_iter().rev().collect());
        assert!(Arc::ptr_eq(&table, &services.table()));
        assert_eq!(services.status()[0].node_port, Some(30080));
    }
}
