//! The switch's own Service translation (`service_translation =
//! "switch"`): the Service table the workers read once per pass (an
//! arc-swap snapshot, as the FIB), replaced whenever the Services change,
//! and the long-lived translator (the connection table and the session
//! affinity memory) from `podswitch-services`.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use ipnet::Ipv4Net;
use podswitch_control::service::Service;
use podswitch_services::{ServiceTable, Timeouts, Translator};

/// Connections the table holds by default: at about 200 bytes per
/// connection (two map entries and the shared state), 256 MiB at most.
pub const DEFAULT_CONNECTIONS: usize = 1 << 20;

/// The Service stage's state, shared by the control plane and the workers.
#[derive(Debug)]
pub struct Services {
    table: ArcSwap<ServiceTable>,
    /// The connections and the affinity memory.
    pub translator: Translator,
    /// This node's pod CIDR: the endpoints in it are local
    /// (`internalTrafficPolicy: Local`).
    pod_cidr: Ipv4Net,
    /// Where the connection table's clock starts.
    epoch: Instant,
}

impl Services {
    /// An empty table for a node whose pods are in `pod_cidr`, with room
    /// for `capacity` connections.
    pub fn new(pod_cidr: Ipv4Net, capacity: usize) -> Services {
        Services {
            table: ArcSwap::from_pointee(ServiceTable::new(Vec::new(), |_| false)),
            translator: Translator::new(capacity, Timeouts::default()),
            pod_cidr,
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since the switch started: the connection table's clock.
    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The current table, for one pass of a worker.
    pub fn table(&self) -> Guard<Arc<ServiceTable>> {
        self.table.load()
    }

    /// Put a new set of Services in place, and end the connections of the
    /// endpoints it no longer has: their next packet picks a current
    /// endpoint.
    pub fn publish(&self, services: Vec<Service>) {
        let pod_cidr = self.pod_cidr;
        let table = ServiceTable::new(services, |address| pod_cidr.contains(&address));
        let ended = self
            .translator
            .conns
            .remove_unkept(|original, backend| table.keeps(original, backend));
        self.table.store(Arc::new(table));
        if ended > 0 {
            tracing::info!("ended {ended} connections to endpoints that left their Service");
        }
    }

    /// Forget expired connections and affinities (the maintenance thread's
    /// round).
    pub fn sweep(&self) {
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
    fn publishing_ends_the_connections_of_removed_endpoints_and_knows_local_ones() {
        let services = Services::new("10.244.1.0/24".parse().unwrap(), 16);
        let (local, remote) = (Ipv4Addr::new(10, 244, 1, 5), Ipv4Addr::new(10, 244, 2, 7));
        services.publish(vec![web(&[local, remote])]);
        // internalTrafficPolicy Local: only the pod CIDR's endpoint.
        let usable = services
            .table()
            .usable(Ipv4Addr::new(10, 96, 0, 10), 6, 80)
            .unwrap()
            .to_vec();
        assert_eq!(usable.len(), 1);
        assert_eq!(usable[0].address, local);
        let flow = FlowKey {
            src: Ipv4Addr::new(10, 244, 1, 9),
            dst: Ipv4Addr::new(10, 96, 0, 10),
            sport: 40000,
            dport: 80,
            protocol: 6,
        };
        let nat = Nat {
            src: (flow.src, flow.sport),
            dst: (local, 8080),
        };
        services
            .translator
            .conns
            .insert(flow, nat, usable[0], services.now_ms())
            .unwrap();
        services.publish(vec![web(&[local, remote])]);
        assert_eq!(
            services.translator.conns.len(),
            1,
            "kept while the endpoint stays"
        );
        services.publish(vec![web(&[remote])]);
        assert!(services.translator.conns.is_empty());
        services.sweep();
    }
}
