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
//! The table is rewritten whenever the Services change (and only when
//! its text does) — changed in place over the daemon's own copy, so that
//! the affinity sets keep their clients, else replaced whole — and
//! removed on a clean stop and by a daemon started in `kube-proxy` mode. `sessionAffinity: ClientIP` is kept as
//! kube-proxy keeps it: a client's new connections go to the endpoint it
//! was last given while its timeout runs.

use std::fmt::Write as _;
use std::sync::Mutex;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use podswitch_control::service::{Service, ServiceProtocol, TrafficPolicy};
use podswitch_services::{Backend, usable_backends};

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
    ///
    /// Over a table this daemon installed, the change keeps the affinity
    /// sets that are still wanted, with the clients in them: it flushes
    /// the rules (nft keeps sets' elements), deletes the chains and sets
    /// that are gone and adds the new ones. Otherwise (the first install,
    /// or that change failed) it replaces the table whole.
    pub fn update(&self, services: &[Service], local: Ipv4Net) {
        let table = ruleset(services, local);
        let mut installed = lock(&self.installed);
        if installed.as_deref() == Some(table.as_str()) {
            return;
        }
        let changed = match installed
            .as_deref()
            .map(|old| run_nft(&change(old, &table)))
        {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                tracing::info!("replacing `{TABLE}` whole (its affinity sets emptied): {e:#}");
                false
            }
            None => false,
        };
        let result = match changed {
            true => Ok(()),
            false => run_nft(&format!("{}{table}", removal())),
        };
        match result.with_context(|| format!("installing the nftables table `{TABLE}`")) {
            Ok(()) => *installed = Some(table),
            Err(e) => {
                tracing::warn!("traffic from outside the pod network to Services: {e:#}");
                *installed = None;
            }
        }
    }
}

/// The transaction that turns the installed table `old` into `new` (both
/// as [`ruleset`] writes them) keeping the sets both declare, elements
/// and all: flush every rule, delete the chains and sets `new` does not
/// declare, then declare `new` (existing chains and sets are kept).
fn change(old: &str, new: &str) -> String {
    let wanted = declared(new);
    let mut text = format!("table ip {TABLE}\nflush table ip {TABLE}\n");
    for (kind, name) in declared(old) {
        if !wanted.contains(&(kind, name)) {
            let _ = writeln!(text, "delete {kind} ip {TABLE} {name}");
        }
    }
    text.push_str(new);
    text
}

/// The chains and sets a table's text declares, as (`chain` or `set`,
/// name).
fn declared(table: &str) -> Vec<(&str, &str)> {
    table
        .lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix('\t')?.split(' ');
            let kind = words.next().filter(|k| matches!(*k, "chain" | "set"))?;
            Some((kind, words.next()?))
        })
        .collect()
}

/// Remove the table if it exists; nft's message on failure.
pub fn remove() -> Result<()> {
    run_nft(&removal()).with_context(|| format!("removing the nftables table `{TABLE}`"))
}

/// The transaction that removes the table if it exists.
fn removal() -> String {
    table_removal("ip", TABLE)
}

/// The whole table for `services` on a node whose pods are in `local`.
pub fn ruleset(services: &[Service], local: Ipv4Net) -> String {
    let mut dispatch = String::new();
    let mut endpoint_chains = String::new();
    let mut refusals = String::new();
    let mut sets = String::new();
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
            let dnat = Dnat {
                chain: &chain,
                protocol,
                mark: &mark,
                comment: &comment,
            };
            match service.affinity_seconds {
                None => spread(&mut endpoint_chains, &dnat, &backends),
                Some(seconds) => {
                    // Named by what it means, so that a change of the
                    // Services keeps a set (and its clients) while its
                    // endpoint serves the port.
                    let clients = format!("affinity-{}/{protocol}/{}", service.name, port.port);
                    sticky(
                        (&mut endpoint_chains, &mut sets),
                        &dnat,
                        &backends,
                        &clients,
                        seconds,
                    );
                }
            }
        }
    }
    format!(
        "table ip {TABLE} {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tjump services\n\
         \t}}\n\
         \tchain output {{\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tjump services\n\
         \t}}\n\
         {sets}\
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
         }}\n"
    )
}

/// What a Service port's chain DNATs with: its name, protocol, the
/// masquerade mark (empty for `Local`) and the comment naming the port.
struct Dnat<'a> {
    chain: &'a str,
    protocol: &'a str,
    mark: &'a str,
    comment: &'a str,
}

/// The port's chain without affinity: a random usable endpoint per new
/// connection.
fn spread(chains: &mut String, dnat: &Dnat, backends: &[Backend]) {
    let Dnat {
        chain,
        protocol,
        mark,
        comment,
    } = dnat;
    let targets: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {} . {}", b.address, b.port))
        .collect();
    let _ = write!(
        chains,
        "\tchain {chain} {{\n\
         \t\tmeta l4proto {protocol} {mark}dnat ip to numgen random mod {} map {{ {} }} \
         comment \"{comment}\"\n\
         \t}}\n",
        backends.len(),
        targets.join(", ")
    );
}

/// The port's chains with `sessionAffinity: ClientIP`, as kube-proxy's
/// nftables mode keeps it: a set per endpoint of the clients it served
/// (named `clients`, then `__<endpoint>/<port>`), each entry living
/// `seconds` from the client's last new connection; a client in one goes
/// back to that endpoint, any other is spread at random.
fn sticky(
    (chains, sets): (&mut String, &mut String),
    dnat: &Dnat,
    backends: &[Backend],
    clients: &str,
    seconds: u32,
) {
    let Dnat {
        chain,
        protocol,
        mark,
        comment,
    } = dnat;
    let mut service_chain = String::new();
    let mut picks = Vec::new();
    for (i, backend) in backends.iter().enumerate() {
        let endpoint = format!("{chain}-{i}");
        let clients = format!("{clients}__{}/{}", backend.address, backend.port);
        let _ = write!(
            sets,
            "\tset {clients} {{\n\
             \t\ttype ipv4_addr\n\
             \t\tflags dynamic,timeout\n\
             \t\ttimeout {seconds}s\n\
             \t}}\n"
        );
        let _ = writeln!(service_chain, "\t\tip saddr @{clients} goto {endpoint}");
        picks.push(format!("{i} : goto {endpoint}"));
        let _ = write!(
            chains,
            "\tchain {endpoint} {{\n\
             \t\tupdate @{clients} {{ ip saddr }}\n\
             \t\tmeta l4proto {protocol} {mark}dnat ip to {}:{} comment \"{comment}\"\n\
             \t}}\n",
            backend.address, backend.port
        );
    }
    let _ = write!(
        chains,
        "\tchain {chain} {{\n{service_chain}\
         \t\tnumgen random mod {} vmap {{ {} }}\n\
         \t}}\n",
        backends.len(),
        picks.join(", ")
    );
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
    fn affinity_sends_a_client_back_to_its_endpoint() {
        let mut service = web(TrafficPolicy::Cluster, &[[10, 244, 1, 5], [10, 244, 2, 5]]);
        service.affinity_seconds = Some(10_800);
        let text = ruleset(&[service], local());
        let set = "affinity-default/web/tcp/80__10.244.1.5/8080";
        assert!(text.contains(&format!(
            "\tset {set} {{\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 10800s\n"
        )));
        assert!(text.contains(&format!(
            "\tchain service-0-0 {{\n\t\tip saddr @{set} goto service-0-0-0\n\
             \t\tip saddr @affinity-default/web/tcp/80__10.244.2.5/8080 goto service-0-0-1\n\
             \t\tnumgen random mod 2 vmap {{ 0 : goto service-0-0-0, 1 : goto service-0-0-1 }}\n"
        )));
        assert!(text.contains(&format!(
            "\tchain service-0-0-0 {{\n\t\tupdate @{set} {{ ip saddr }}\n\
             \t\tmeta l4proto tcp meta mark set meta mark | 0x200000 dnat ip to 10.244.1.5:8080"
        )));
    }

    #[test]
    fn a_change_keeps_the_affinity_sets_still_wanted() {
        let sticky = |endpoints: &[[u8; 4]]| {
            let mut service = web(TrafficPolicy::Cluster, endpoints);
            service.affinity_seconds = Some(60);
            ruleset(&[service], local())
        };
        let old = sticky(&[[10, 244, 1, 5], [10, 244, 2, 5]]);
        let new = sticky(&[[10, 244, 1, 5]]);
        let text = change(&old, &new);
        assert!(text.starts_with(
            "table ip podswitch-external\nflush table ip podswitch-external\n\
             delete set ip podswitch-external affinity-default/web/tcp/80__10.244.2.5/8080\n\
             delete chain ip podswitch-external service-0-0-1\n\
             table ip podswitch-external {\n"
        ));
        assert!(text.ends_with(&new));
        assert!(
            !text.contains(
                "delete set ip podswitch-external affinity-default/web/tcp/80__10.244.1.5"
            )
        );
        assert!(!text.contains("delete chain ip podswitch-external prerouting"));
        // Back to no affinity: every set goes, with the chains only it used.
        let plain = ruleset(&[web(TrafficPolicy::Cluster, &[[10, 244, 1, 5]])], local());
        let text = change(&new, &plain);
        assert!(text.contains(
            "delete set ip podswitch-external affinity-default/web/tcp/80__10.244.1.5/8080\n"
        ));
        assert!(text.contains("delete chain ip podswitch-external service-0-0-0\n"));
        assert!(!text.contains("delete chain ip podswitch-external service-0-0\n"));
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
