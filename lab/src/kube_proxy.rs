//! kube-proxy's Service rules, written into a lab node as kube-proxy
//! writes them, for the Services of the switch's own model
//! ([`Service`]): iptables mode (`KUBE-SERVICES` → `KUBE-SVC-*` →
//! `KUBE-SEP-*` DNAT, endpoints picked by `statistic`) and nftables mode
//! (`table ip kube-proxy`, a service map and `dnat to`); and IPv6
//! Services of a dual-stack cluster in both modes (`ip6tables-restore`,
//! `table ip6 kube-proxy`: the same shapes). No kube-proxy runs in the lab; these are
//! the rules it would leave, so that a test or the lab benchmark can send
//! pods' traffic through them.

use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::{Context, Result};
use podswitch_control::service::{Service, ServiceProtocol};

use crate::{Lab, Netns};

/// The cluster CIDR kube-proxy is told (`--cluster-cidr`): traffic to a
/// ClusterIP from outside it is marked for masquerade.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The IPv6 cluster CIDR kube-proxy is told on a dual-stack cluster.
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/48";
/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x4000";

/// How kube-proxy writes its rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeProxyMode {
    /// `iptables-restore` into the `nat` table (`ip6tables-restore` for
    /// IPv6).
    Iptables,
    /// `nft -f` into `table ip kube-proxy` (`table ip6 kube-proxy`).
    Nftables,
}

/// Every Service port of `services` as kube-proxy writes rules for it,
/// with the ready endpoints (as kube-proxy writes).
fn proxied_ports(services: &[Service]) -> Vec<ProxiedPort<Ipv4Addr>> {
    services
        .iter()
        .flat_map(|svc| {
            svc.ports.iter().map(|port| ProxiedPort {
                name: svc.name.clone(),
                cluster_ip: svc.cluster_ip,
                protocol: port.protocol,
                port: port.port,
                endpoints: port
                    .endpoints
                    .iter()
                    .filter(|e| e.ready)
                    .map(|e| (e.address, e.port))
                    .collect(),
            })
        })
        .collect()
}

/// kube-proxy's iptables-mode `nat` table for `services`, of the family
/// of `A`, as `iptables-restore --noflush` (`ip6tables-restore`) input.
fn iptables_table<A: Address>(services: &[ProxiedPort<A>]) -> String {
    let cluster_cidr = A::CLUSTER_CIDR;
    let mut chains = vec![
        "KUBE-SERVICES".to_string(),
        "KUBE-POSTROUTING".into(),
        "KUBE-MARK-MASQ".into(),
    ];
    let mut rules = vec![
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING"
            .into(),
        format!("-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}"),
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
        format!("-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}"),
        "-A KUBE-POSTROUTING -j MASQUERADE --random-fully".to_string(),
    ];
    for (i, svc) in services.iter().enumerate() {
        let proto = svc.protocol.name();
        let svc_chain = format!("KUBE-SVC-{i:016}");
        chains.push(svc_chain.clone());
        let matches = format!(
            "-d {}/{} -p {proto} -m comment --comment \"{}:{proto}/{}\" -m {proto} --dport {}",
            svc.cluster_ip,
            A::HOST_PREFIX,
            svc.name,
            svc.port,
            svc.port
        );
        rules.push(format!("-A KUBE-SERVICES {matches} -j {svc_chain}"));
        rules.push(format!(
            "-A {svc_chain} ! -s {cluster_cidr} {matches} -j KUBE-MARK-MASQ"
        ));
        let n = svc.endpoints.len();
        for (j, &(address, target)) in svc.endpoints.iter().enumerate() {
            let to = SocketAddr::new(address.into(), target);
            let sep = format!("KUBE-SEP-{i:08}{j:08}");
            chains.push(sep.clone());
            // kube-proxy: endpoint j of n is taken with probability
            // 1/(n-j) among those left; the last always.
            let pick = if j + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.11}",
                    1.0 / (n - j) as f64
                )
            } else {
                String::new()
            };
            rules.push(format!(
                "-A {svc_chain} -m comment --comment \"{} -> {to}\"{pick} -j {sep}",
                svc.name
            ));
            // Hairpin: an endpoint reaching itself is masqueraded by
            // kube-proxy's own rule.
            rules.push(format!(
                "-A {sep} -s {address}/{} -j KUBE-MARK-MASQ",
                A::HOST_PREFIX
            ));
            rules.push(format!(
                "-A {sep} -p {proto} -m {proto} -j DNAT --to-destination {to}"
            ));
        }
    }
    let mut text = String::from("*nat\n");
    for chain in chains {
        text.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in rules {
        text.push_str(&rule);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    text
}

/// An address family as kube-proxy's rules name it.
pub trait Address: Copy + Display + Into<IpAddr> {
    /// nftables' family (`ip`, `ip6`).
    const FAMILY: &'static str;
    /// nftables' address type.
    const NFT_TYPE: &'static str;
    /// The prefix length of one address.
    const HOST_PREFIX: u8;
    /// The cluster CIDR kube-proxy is told for the family.
    const CLUSTER_CIDR: &'static str;
    /// The iptables-mode loader for the family.
    const IPTABLES_RESTORE: &'static str;
}

impl Address for Ipv4Addr {
    const FAMILY: &'static str = "ip";
    const NFT_TYPE: &'static str = "ipv4_addr";
    const HOST_PREFIX: u8 = 32;
    const CLUSTER_CIDR: &'static str = CLUSTER_CIDR;
    const IPTABLES_RESTORE: &'static str = "iptables-restore";
}

impl Address for Ipv6Addr {
    const FAMILY: &'static str = "ip6";
    const NFT_TYPE: &'static str = "ipv6_addr";
    const HOST_PREFIX: u8 = 128;
    const CLUSTER_CIDR: &'static str = CLUSTER_CIDR6;
    const IPTABLES_RESTORE: &'static str = "ip6tables-restore";
}

/// One Service port as kube-proxy writes rules for it, of the family of
/// `A` (`Ipv4Addr` or `Ipv6Addr`): a ClusterIP and one port with its
/// ready endpoints. The IPv4 ones come from the switch's Service model
/// ([`Service`]); IPv6 Services of a dual-stack cluster are given as
/// these, that model being IPv4.
#[derive(Debug, Clone)]
pub struct ProxiedPort<A> {
    /// `namespace/name`.
    pub name: String,
    /// The ClusterIP.
    pub cluster_ip: A,
    /// TCP or UDP.
    pub protocol: ServiceProtocol,
    /// The Service port.
    pub port: u16,
    /// The endpoints: address and target port.
    pub endpoints: Vec<(A, u16)>,
}

/// kube-proxy's nftables-mode table for `services`, of the family of
/// `A`, as `nft -f` input.
fn nft_table<A: Address>(services: &[ProxiedPort<A>]) -> String {
    let (family, address_type, cluster_cidr) = (A::FAMILY, A::NFT_TYPE, A::CLUSTER_CIDR);
    let mut map = Vec::new();
    let mut chains = String::new();
    for (i, svc) in services.iter().enumerate() {
        let (proto, endpoints) = (svc.protocol.name(), &svc.endpoints);
        let name = svc.name.replace('/', "-");
        let chain = format!("service-{i}-{name}");
        map.push(format!(
            "{} . {proto} . {} : goto {chain}",
            svc.cluster_ip, svc.port
        ));
        let picks: Vec<String> = (0..endpoints.len())
            .map(|j| format!("{j} : goto endpoint-{i}-{j}"))
            .collect();
        chains.push_str(&format!(
            "chain {chain} {{\n\
             {family} daddr {} {proto} dport {} {family} saddr != {cluster_cidr} jump mark-for-masquerade\n\
             numgen random mod {} vmap {{ {} }}\n}}\n",
            svc.cluster_ip,
            svc.port,
            endpoints.len().max(1),
            picks.join(", ")
        ));
        for (j, &(address, target)) in endpoints.iter().enumerate() {
            let to = SocketAddr::new(address.into(), target);
            chains.push_str(&format!(
                "chain endpoint-{i}-{j} {{\n\
                 {family} saddr {address} jump mark-for-masquerade\n\
                 meta l4proto {proto} dnat to {to}\n}}\n"
            ));
        }
    }
    format!(
        "table {family} kube-proxy\ndelete table {family} kube-proxy\ntable {family} kube-proxy {{\n\
         map service-ips {{\n\
         type {address_type} . inet_proto . inet_service : verdict\n\
         elements = {{ {} }}\n}}\n\
         chain nat-prerouting {{\ntype nat hook prerouting priority dstnat; policy accept;\njump services\n}}\n\
         chain nat-output {{\ntype nat hook output priority -100; policy accept;\njump services\n}}\n\
         chain nat-postrouting {{\ntype nat hook postrouting priority srcnat; policy accept;\njump masquerading\n}}\n\
         chain masquerading {{\nmeta mark & {MASQ_MARK} == 0 return\n\
         meta mark set meta mark ^ {MASQ_MARK}\nmasquerade fully-random\n}}\n\
         chain mark-for-masquerade {{\nmeta mark set meta mark | {MASQ_MARK}\n}}\n\
         chain services {{\n{family} daddr . meta l4proto . th dport vmap @service-ips\n}}\n\
         {chains}}}\n",
        map.join(", ")
    )
}

/// Write `mode`'s rules for `services` into `node`, as kube-proxy would
/// (the rules' text is kept in the lab's scratch directory).
pub fn write_rules(
    lab: &Lab,
    node: &Netns,
    mode: KubeProxyMode,
    services: &[Service],
) -> Result<()> {
    write_ports(lab, node, mode, &proxied_ports(services))
}

/// Write `mode`'s rules for `ports`, of the family of `A`, into `node`,
/// beside the other family's (IPv6 ports are given as [`ProxiedPort`]s).
pub fn write_ports<A: Address>(
    lab: &Lab,
    node: &Netns,
    mode: KubeProxyMode,
    ports: &[ProxiedPort<A>],
) -> Result<()> {
    let suffix = format!("rules-{}", A::FAMILY);
    match mode {
        KubeProxyMode::Iptables => load(
            lab,
            node,
            &suffix,
            &iptables_table(ports),
            (A::IPTABLES_RESTORE, &["--noflush"]),
        ),
        KubeProxyMode::Nftables => load(lab, node, &suffix, &nft_table(ports), ("nft", &["-f"])),
    }
}

/// Keep `text` in the lab's scratch directory as `<node>.<suffix>` and
/// load it into `node` with `program args... <file>`.
fn load(
    lab: &Lab,
    node: &Netns,
    suffix: &str,
    text: &str,
    (program, args): (&str, &[&str]),
) -> Result<()> {
    let dir = lab.scratch_dir()?;
    let file = dir.join(format!("{}.{suffix}", node.name()));
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    let file = file.to_string_lossy();
    let args: Vec<&str> = args.iter().copied().chain([file.as_ref()]).collect();
    node.run(program, &args)
        .with_context(|| format!("kube-proxy's rules into {}", node.name()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use podswitch_control::service::{Endpoint, ServicePort};

    fn web() -> Service {
        let endpoint = |last, ready| Endpoint {
            ready,
            serving: ready,
            ..Endpoint::ready(Ipv4Addr::new(10, 244, 1, last), 8080)
        };
        let endpoints = vec![endpoint(2, true), endpoint(3, true), endpoint(4, false)];
        let port = ServicePort {
            name: "http".into(),
            ..ServicePort::new(ServiceProtocol::Tcp, 80, endpoints)
        };
        Service::new("default/web", Ipv4Addr::new(10, 96, 0, 10), vec![port])
    }

    #[test]
    fn iptables_table_picks_among_ready_endpoints() {
        let text = iptables_table(&proxied_ports(&[web()]));
        assert!(text.contains("-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp"));
        assert!(text.contains("--probability 0.50000000000 -j KUBE-SEP-0000000000000000"));
        assert!(text.contains("DNAT --to-destination 10.244.1.3:8080"));
        assert!(
            !text.contains("10.244.1.4"),
            "a not-ready endpoint is left out"
        );
        assert!(text.ends_with("COMMIT\n"));
    }

    #[test]
    fn nft_table_maps_the_service_to_its_chain() {
        let text = nft_table(&proxied_ports(&[web()]));
        assert!(text.contains("10.96.0.10 . tcp . 80 : goto service-0-default-web"));
        assert!(
            text.contains(
                "numgen random mod 2 vmap { 0 : goto endpoint-0-0, 1 : goto endpoint-0-1 }"
            )
        );
        assert!(text.contains("dnat to 10.244.1.2:8080"));
    }

    fn web6() -> ProxiedPort<Ipv6Addr> {
        ProxiedPort {
            name: "default/web6".into(),
            cluster_ip: "fd00:96::10".parse().unwrap(),
            protocol: ServiceProtocol::Tcp,
            port: 80,
            endpoints: vec![
                ("fd00:10:244:1::3".parse().unwrap(), 8080),
                ("fd00:10:244:2::2".parse().unwrap(), 8080),
            ],
        }
    }

    #[test]
    fn ipv6_iptables_rules_are_the_same_table_with_ipv6_addresses() {
        let text = iptables_table(&[web6()]);
        assert!(text.contains("-A KUBE-SERVICES -d fd00:96::10/128 -p tcp"));
        assert!(text.contains("! -s fd00:10:244::/48"));
        assert!(
            text.contains("-A KUBE-SEP-0000000000000001 -s fd00:10:244:2::2/128 -j KUBE-MARK-MASQ")
        );
        assert!(text.contains("DNAT --to-destination [fd00:10:244:2::2]:8080"));
        assert!(!text.contains("/32"));
    }

    #[test]
    fn ipv6_nftables_rules_are_the_same_table_in_the_ip6_family() {
        let text = nft_table(&[web6()]);
        assert!(text.starts_with("table ip6 kube-proxy\ndelete table ip6 kube-proxy\n"));
        assert!(text.contains("type ipv6_addr . inet_proto . inet_service : verdict"));
        assert!(text.contains("fd00:96::10 . tcp . 80 : goto service-0-default-web6"));
        assert!(text.contains("ip6 saddr != fd00:10:244::/48 jump mark-for-masquerade"));
        assert!(text.contains("dnat to [fd00:10:244:2::2]:8080"));
        assert!(text.contains("ip6 daddr . meta l4proto . th dport vmap @service-ips"));
        assert!(!text.contains("ip daddr"));
    }
}
