//! Kubernetes Services as the switch translates them: what a Service and
//! its EndpointSlices say, resolved to one list of endpoints per Service
//! port. Every source (the Kubernetes API, a file, the control socket)
//! produces these; the switch builds its Service table from them.
//!
//! In JSON (and TOML) a Service reads:
//!
//! ```json
//! {"name": "kube-system/kube-dns", "cluster_ip": "10.96.0.10",
//!  "ports": [{"name": "dns", "protocol": "udp", "port": 53,
//!             "endpoints": [{"address": "10.244.1.5", "port": 53},
//!                           {"address": "10.244.2.7", "port": 53, "ready": false}]}]}
//! ```

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The transport protocol of a Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceProtocol {
    /// TCP (IP protocol 6).
    Tcp,
    /// UDP (IP protocol 17).
    Udp,
    /// SCTP (IP protocol 132).
    Sctp,
}

impl ServiceProtocol {
    /// The IP protocol number.
    pub fn ip_protocol(self) -> u8 {
        match self {
            ServiceProtocol::Tcp => 6,
            ServiceProtocol::Udp => 17,
            ServiceProtocol::Sctp => 132,
        }
    }

    /// Its name as the configuration, iptables and nft write it: `tcp`,
    /// `udp`, `sctp`.
    pub fn name(self) -> &'static str {
        match self {
            ServiceProtocol::Tcp => "tcp",
            ServiceProtocol::Udp => "udp",
            ServiceProtocol::Sctp => "sctp",
        }
    }

    /// The protocol of an IP protocol number, if a Service can have it.
    pub fn from_ip_protocol(number: u8) -> Option<ServiceProtocol> {
        [
            ServiceProtocol::Tcp,
            ServiceProtocol::Udp,
            ServiceProtocol::Sctp,
        ]
        .into_iter()
        .find(|protocol| protocol.ip_protocol() == number)
    }
}

/// Which endpoints a traffic policy lets a node use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrafficPolicy {
    /// Every endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on the node the traffic entered by; none there
    /// means the traffic is dropped, as kube-proxy does.
    Local,
}

/// One Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// `namespace/name`, unique among Services.
    pub name: String,
    /// The Service's virtual address.
    pub cluster_ip: Ipv4Addr,
    /// Its other addresses, on the same ports: `spec.externalIPs` and its
    /// load balancer's addresses (`status.loadBalancer.ingress[].ip`). A
    /// pod reaching one is served by every endpoint whatever the
    /// `externalTrafficPolicy`, as kube-proxy serves traffic from pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_ips: Vec<Ipv4Addr>,
    /// Its ports, each with its endpoints.
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP`: how long a client stays with the
    /// endpoint it was given, in seconds; `None` for no affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_seconds: Option<u32>,
    /// `internalTrafficPolicy`: for traffic from pods to the ClusterIP.
    #[serde(default)]
    pub internal_traffic_policy: TrafficPolicy,
    /// `externalTrafficPolicy`: for traffic to a NodePort.
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
}

/// One port of a Service with the endpoints that serve it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// The port's name (empty for a Service with one unnamed port); it
    /// matches the Service's ports to its EndpointSlices' ports.
    #[serde(default)]
    pub name: String,
    /// Its protocol.
    pub protocol: ServiceProtocol,
    /// The port on the ClusterIP.
    pub port: u16,
    /// The port on every node's address, for a NodePort Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    /// The endpoints, each with the (resolved) target port.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One endpoint of a Service port: a pod's address and port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The pod's address.
    pub address: Ipv4Addr,
    /// The port it serves on.
    pub port: u16,
    /// The node it runs on, when the source says (for display: the
    /// switch tells its own endpoints by their address, in its pod CIDR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// EndpointSlice `conditions.ready`: only ready endpoints get new
    /// connections.
    #[serde(default = "yes")]
    pub ready: bool,
    /// EndpointSlice `conditions.serving`: a terminating endpoint that
    /// still serves is used when no endpoint is ready, as kube-proxy does.
    #[serde(default = "yes")]
    pub serving: bool,
    /// EndpointSlice `conditions.terminating`.
    #[serde(default)]
    pub terminating: bool,
}

fn yes() -> bool {
    true
}

/// Whether `ip` can be a Service's external address, one a pod sends to:
/// a unicast address (not unspecified, broadcast, multicast or loopback).
pub fn is_external_address(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback())
}

impl Service {
    /// A Service with the defaults of the JSON form: no external
    /// addresses, no session affinity, both traffic policies `Cluster`.
    pub fn new(name: impl Into<String>, cluster_ip: Ipv4Addr, ports: Vec<ServicePort>) -> Service {
        Service {
            name: name.into(),
            cluster_ip,
            external_ips: Vec::new(),
            ports,
            affinity_seconds: None,
            internal_traffic_policy: TrafficPolicy::Cluster,
            external_traffic_policy: TrafficPolicy::Cluster,
        }
    }
}

impl ServicePort {
    /// An unnamed port without a NodePort.
    pub fn new(protocol: ServiceProtocol, port: u16, endpoints: Vec<Endpoint>) -> ServicePort {
        ServicePort {
            name: String::new(),
            protocol,
            port,
            node_port: None,
            endpoints,
        }
    }
}

impl Endpoint {
    /// A ready (and serving) endpoint with no node named.
    pub fn ready(address: Ipv4Addr, port: u16) -> Endpoint {
        Endpoint {
            address,
            port,
            node: None,
            ready: true,
            serving: true,
            terminating: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_reads_with_defaults() {
        let text = r#"{"name": "kube-system/kube-dns", "cluster_ip": "10.96.0.10",
          "ports": [{"name": "dns", "protocol": "udp", "port": 53,
                     "endpoints": [{"address": "10.244.1.5", "port": 53},
                                   {"address": "10.244.2.7", "port": 53, "ready": false}]}]}"#;
        let service: Service = serde_json::from_str(text).unwrap();
        assert_eq!(service.internal_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(service.affinity_seconds, None);
        let port = &service.ports[0];
        assert_eq!(port.protocol.ip_protocol(), 17);
        assert_eq!(ServiceProtocol::from_ip_protocol(17), Some(port.protocol));
        assert_eq!(ServiceProtocol::from_ip_protocol(1), None);
        assert!(port.endpoints[0].ready && port.endpoints[0].serving);
        assert!(!port.endpoints[1].ready && !port.endpoints[1].terminating);
        let again: Service =
            serde_json::from_str(&serde_json::to_string(&service).unwrap()).unwrap();
        assert_eq!(again, service);
        let mut built = Service::new(
            "kube-system/kube-dns",
            Ipv4Addr::new(10, 96, 0, 10),
            vec![ServicePort::new(
                ServiceProtocol::Udp,
                53,
                vec![Endpoint::ready(Ipv4Addr::new(10, 244, 1, 5), 53)],
            )],
        );
        built.ports[0].name = "dns".into();
        built.ports[0].endpoints.push(Endpoint {
            ready: false,
            ..Endpoint::ready(Ipv4Addr::new(10, 244, 2, 7), 53)
        });
        assert_eq!(built, service);
    }

    #[test]
    fn an_unknown_protocol_is_refused() {
        let text = r#"{"protocol": "icmp", "port": 1}"#;
        assert!(serde_json::from_str::<ServicePort>(text).is_err());
    }
}
