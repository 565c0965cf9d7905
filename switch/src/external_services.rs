//! Traffic from outside the pod network to Services, when the switch
//! translates Services itself (`service_translation = "switch"`) in place
//! of kube-proxy: NodePorts at the node's addresses, and a Service's
//! external and load balancer addresses.
//!
//! Such traffic does not come from a pod: it enters the node through its
//! uplink (the uplink's XDP program passes everything but the tunnel to
//! the kernel) or from the node itself, so the switch never sees it
//! untranslated. The daemon has the node's netfilter translate it from
//! the same Service table, in its table `ip podswitch-external`, the way
//! kube-proxy's nftables mode does: a new connection to a NodePort (any
//! local address) or an external address is DNATed to one of the
//! Service's usable endpoints, chosen at random, and routed through the
//! host port into the switch, which carries it to the endpoint here or on
//! its node. With `externalTrafficPolicy: Cluster` its source is
//! masqueraded to the host port's address (the pods' gateway), so the
//! reply comes back through this node's stack from whichever node it
//! went to; with `Local` only this node's endpoints serve it and the
//! client's address is kept (the endpoint's reply reaches the node
//! through the host port, its default route). A Service port without a
//! usable endpoint refuses the connection (a TCP reset, or ICMP port
//! unreachable), as kube-proxy does.
//!
//! The table is replaced whole whenever the Services change (and only
//! when its text does), and removed on a clean stop and by a daemon
//! started in `kube-proxy` mode. `sessionAffinity` is not kept for these
//! connections.

use std::fmt::Write as _;
use std::sync::Mutex;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use podswitch_control::service::{Service, ServiceProtocol, TrafficPolicy};
use podswitch_services::usable_backends;

use crate::node_nat::{run_nft, table_removal};
use crate::sources::lock;

/// The table's name (family `ip`).
pub const TABLE: &str = "podswitch-external";

/// The packet mark of connections to masquerade (`externalTrafficPolicy:
/// Cluster`), set on their first packet at DNAT and read after routing.
const MASQUERADE_MARK: u32 = 0x0020_0000;

/// The table as last installed, so an unchanged one is not written again.
#[derive(Debug, Default)]
pub struct ExternalServices {
    installed: Mutex<Option<String>>,
}

impl ExternalServices {
    /// Install the table for `services` on a node whose pods are in
    /// `local`, unless the same one is in place; a failure is logged
    /// (the pods' own Service traffic does not depend on it) and retried
    /// at the next change.
    pub fn update(&self, services: &[Service], local: Ipv4Net) {
        let text = ruleset(services, local);
        let mut installed = lock(&self.installed);
        if installed.as_deref() == Some(text.as_str()) {
            return;
        }
        match run_nft(&text).with_context(|| format!("installing the nftables table `{TABLE}`")) {
            Ok(()) => *installed = Some(text),
            Err(e) => {
                tracing::warn!("traffic from outside the pod network to Services: {e:#}");
                *installed = None;
            }
        }
    }
}

/// Remove the table if it exists; nft's message on failure.
pub fn remove() -> Result<()> {
    run_nft(&removal()).with_context(|| format!("removing the nftables table `{TABLE}`"))
}

/// The transaction that removes the table if it exists.
fn removal() -> String {
    table_removal("ip", TABLE)
}

/// The whole table for `services` on a node whose pods are in `local`,
/// replacing any earlier copy.
pub fn ruleset(services: &[Service], local: Ipv4Net) -> String {
    let mut dispatch = String::new();
    let mut endpoint_chains = String::new();
    let mut refusals = String::new();
    for (number, service) in services.iter().enumerate() {
        let policy = service.external_traffic_policy;
        for (index, port) in service.ports.iter().enumerate() {
            let protocol = protocol_name(port.protocol);
            let backends = usable_backends(&port.endpoints, |endpoint| {
                policy == TrafficPolicy::Cluster || local.contains(&endpoint.address)
            });
            let mut matches = Vec::new();
            if let Some(node_port) = port.node_port {
                matches.push(format!(
                    "meta l4proto {protocol} th dport {node_port} fib daddr type local"
                ));
            }
            for address in &service.external_ips {
                matches.push(format!(
                    "ip daddr {address} meta l4proto {protocol} th dport {}",
                    port.port
                ));
            }
            if matches.is_empty() {
                continue;
            }
            let comment = format!("{} {protocol}/{}", service.name, port.port);
            if backends.is_empty() {
                let reject = match port.protocol {
                    ServiceProtocol::Tcp => "reject with tcp reset",
                    _ => "reject",
                };
                for matched in &matches {
                    let _ = writeln!(
                        refusals,
                        "\t\t{matched} {reject} comment \"{comment}: no endpoints\""
                    );
                }
                continue;
            }
            let chain = format!("service-{number}-{index}");
            for matched in &matches {
                let _ = writeln!(dispatch, "\t\t{matched} jump {chain}");
            }
            let mark = match policy {
                TrafficPolicy::Cluster => {
                    format!("meta mark set meta mark | {MASQUERADE_MARK:#x} ")
                }
                TrafficPolicy::Local => String::new(),
            };
            let targets: Vec<String> = backends
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{i} : {} . {}", b.address, b.port))
                .collect();
            let _ = write!(
                endpoint_chains,
                "\tchain {chain} {{\n\
                 \t\tmeta l4proto {protocol} {mark}dnat ip to numgen random mod {} map {{ {} }} \
                 comment \"{comment}\"\n\
                 \t}}\n",
                backends.len(),
                targets.join(", ")
            );
        }
    }
    format!(
        "{removal}table ip {TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tjump services\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tjump services\n\
         \t}}\n\
         \tchain services {{\n{dispatch}\t}}\n\
         {endpoint_chains}\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tmeta mark & {MASQUERADE_MARK:#x} == {MASQUERADE_MARK:#x} counter masquerade\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter - 10; policy accept;\n\
         \t\tjump no-endpoints\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter - 10; policy accept;\n\
         \t\tjump no-endpoints\n\
         \t}}\n\
         \tchain no-endpoints {{\n{refusals}\t}}\n\
         }}\n",
        removal = removal()
    )
}

/// nft's name for a Service protocol.
fn protocol_name(protocol: ServiceProtocol) -> &'static str {
    match protocol {
        ServiceProtocol::Tcp => "tcp",
        ServiceProtocol::Udp => "udp",
        ServiceProtocol::Sctp => "sctp",
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use podswitch_control::service::{Endpoint, ServicePort};

    use super::*;

    fn web(policy: TrafficPolicy, endpoints: &[[u8; 4]]) -> Service {
        let endpoints = endpoints
            .iter()
            .map(|&a| Endpoint::ready(a.into(), 8080))
            .collect();
        let mut port = ServicePort::new(ServiceProtocol::Tcp, 80, endpoints);
        port.node_port = Some(30080);
        let mut service = Service::new("default/web", Ipv4Addr::new(10, 96, 0, 20), vec![port]);
        service.external_traffic_policy = policy;
        service.external_ips = vec![Ipv4Addr::new(203, 0, 113, 7)];
        service
    }

    fn local() -> Ipv4Net {
        "10.244.1.0/24".parse().unwrap()
    }

    #[test]
    fn cluster_policy_spreads_over_every_endpoint_and_masquerades() {
        let text = ruleset(
            &[web(
                TrafficPolicy::Cluster,
                &[[10, 244, 1, 5], [10, 244, 2, 5]],
            )],
            local(),
        );
        assert!(text.contains("tcp th dport 30080 fib daddr type local jump service-0-0"));
        assert!(text.contains("ip daddr 203.0.113.7 meta l4proto tcp th dport 80 jump"));
        assert!(text.contains(
            "meta mark set meta mark | 0x200000 dnat ip to numgen random mod 2 \
             map { 0 : 10.244.1.5 . 8080, 1 : 10.244.2.5 . 8080 }"
        ));
    }

    #[test]
    fn local_policy_keeps_the_client_and_this_nodes_endpoints() {
        let text = ruleset(
            &[web(
                TrafficPolicy::Local,
                &[[10, 244, 1, 5], [10, 244, 2, 5]],
            )],
            local(),
        );
        assert!(text.contains(
            "meta l4proto tcp dnat ip to numgen random mod 1 map { 0 : 10.244.1.5 . 8080 }"
        ));
        assert!(!text.contains("10.244.2.5"));
    }

    #[test]
    fn no_usable_endpoint_refuses_the_connection() {
        let text = ruleset(&[web(TrafficPolicy::Local, &[[10, 244, 2, 5]])], local());
        assert!(text.contains(
            "meta l4proto tcp th dport 30080 fib daddr type local reject with tcp reset \
             comment \"default/web tcp/80: no endpoints\""
        ));
        assert!(!text.contains("jump service-"));
    }

    #[test]
    fn a_clusterip_only_service_writes_no_rule() {
        let mut service = web(TrafficPolicy::Cluster, &[[10, 244, 1, 5]]);
        service.ports[0].node_port = None;
        service.external_ips.clear();
        let text = ruleset(&[service], local());
        assert!(!text.contains("jump service-") && !text.contains("reject"));
    }
}
