//! The daemon's own nftables tables, `table ip podswitch` and, on a node
//! with a `pod_cidr6`, `table ip6 podswitch`: its source NAT for pods'
//! traffic that crosses the node's stack.
//!
//! **Services through kube-proxy.** The table makes the node's kube-proxy
//! (iptables or nftables mode) work for pods although the switch carries
//! pod-to-pod replies past the node's stack (see docs/services.md).
//! A pod's packet to a ClusterIP reaches the node's stack through the host
//! port, is DNATed there to an endpoint pod and leaves through the host
//! port again. The endpoint's reply would go straight back through the
//! switch, never meeting the node's conntrack, so the client would see an
//! answer from the endpoint's address. The table's one NAT rule
//! masquerades such connections: their source becomes the host port's
//! address (the pods' gateway, or its IPv6 mirror), so the reply is
//! addressed to the node and crosses its stack, which undoes both
//! translations.
//!
//! **Egress.** A pod's packet to an address outside the pod network
//! reaches the node's stack through the host port and leaves by another
//! interface; it is masqueraded to the node's address there, as Flannel's
//! `--ip-masq` does, so the world answers the node. Pod-to-pod traffic
//! never leaves by another interface (every pod CIDR is routed through the
//! host port), so it keeps its addresses.
//!
//! **One table per family**, the same rules in each: the `ip` table is
//! what an IPv4-only node has always had (its name, its rules), and a
//! dual-stack node adds the `ip6` one beside it. The tables are written
//! with `nft -f -` in one transaction that deletes any earlier copy of
//! both first (a restart, or tables a killed daemon left, ends with
//! exactly one of each it wants, and none of a family it no longer
//! serves), and deleted on a clean stop.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use ipnet::{Ipv4Net, Ipv6Net};

/// The daemon's nftables tables' name (families `ip` and `ip6`): nobody
/// else's rules are in them, and nothing of the daemon's is anywhere else.
pub const TABLE: &str = "podswitch";

/// The `nft` program and the Debian package that installs it.
const NFT: &str = "nft";
const NFT_PACKAGE: &str = "nftables";

/// The address families the daemon writes a table for.
const FAMILIES: [&str; 2] = ["ip", "ip6"];

/// What the daemon's tables masquerade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatRules {
    /// Pods' connections the node DNATs back to pods (`service_masquerade`).
    pub services: bool,
    /// Pods' connections to the world, from this node's pod CIDRs
    /// (`egress_masquerade`).
    pub egress: bool,
    /// This node's pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// This node's IPv6 pod CIDR, if it has one: the host port then
    /// carries IPv6, and each rule has an `ip6` table too.
    pub pod_cidr6: Option<Ipv6Net>,
}

impl NatRules {
    /// Whether there is anything to masquerade (else no table).
    pub fn any(&self) -> bool {
        self.services || self.egress
    }

    /// Whether the host port carries IPv6 (the node has a `pod_cidr6`).
    pub fn ipv6(&self) -> bool {
        self.pod_cidr6.is_some()
    }
}

/// The ruleset of the daemon's tables for a node whose host port is
/// `host_port`: written whole, replacing any earlier copies.
///
/// Services: a connection the node's stack DNATed (`ct status dnat`) that came in
/// through the host port (from a pod) and leaves through it (toward a
/// pod, here or on another node) is masqueraded, after kube-proxy's own
/// source NAT. The node's own connections to a ClusterIP (no input
/// interface) and those from outside the pod network (another input
/// interface, their replies routed through the node) keep their source.
///
/// Egress: a connection from this node's pod CIDR that came in through
/// the host port and leaves by any other interface is masqueraded to
/// that interface's address.
///
/// Each rule is in the `ip` table for IPv4 and, where the host port
/// carries IPv6, in the `ip6` table for IPv6.
///
/// No rule is needed against the ICMP redirects the node sends when it
/// forwards a Service packet back out the host port: netfilter's NAT
/// drops a redirect about a NATed connection before it leaves
/// (`nf_nat_icmp_reply_translation`), and this table's NAT chain is
/// enough for NAT's hooks to be there.
pub fn ruleset(host_port: &str, rules: NatRules) -> String {
    let mut text = removal();
    if !rules.any() {
        return text;
    }
    let egress = rules.egress.then(|| format!("ip saddr {}", rules.pod_cidr));
    text += &table("ip", host_port, rules.services, egress);
    if let Some(pods6) = rules.pod_cidr6 {
        let egress = rules.egress.then(|| format!("ip6 saddr {pods6}"));
        text += &table("ip6", host_port, rules.services, egress);
    }
    text
}

/// One family's table: the Service rule if `services`, the egress rule
/// for the source match `egress` if given.
fn table(family: &str, host_port: &str, services: bool, egress: Option<String>) -> String {
    let mut text = format!(
        "table {family} {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat + 10; policy accept;\n"
    );
    if services {
        text += &format!(
            "\t\tiifname \"{host_port}\" oifname \"{host_port}\" ct status dnat counter \
             masquerade comment \"pod to a Service endpoint pod\"\n"
        );
    }
    if let Some(source) = egress {
        text += &format!(
            "\t\tiifname \"{host_port}\" {source} oifname != \"{host_port}\" counter \
             masquerade comment \"pod to the world\"\n"
        );
    }
    text + "\t}\n}\n"
}

/// The transaction that removes the tables of both families if they
/// exist.
fn removal() -> String {
    FAMILIES
        .iter()
        .map(|family| table_removal(family, TABLE))
        .collect()
}

/// The nft commands that delete table `table` of `family` if it exists
/// (declaring it first makes the deletion succeed when it does not).
pub(crate) fn table_removal(family: &str, table: &str) -> String {
    format!("table {family} {table}\ndelete table {family} {table}\n")
}

/// Install the tables for `host_port` in the calling thread's network
/// namespace, replacing any earlier copies; nft's message on failure.
pub fn install(host_port: &str, rules: NatRules) -> Result<()> {
    run_nft(&ruleset(host_port, rules))
        .with_context(|| format!("installing the masquerade tables `{TABLE}`"))
}

/// Remove the tables if they exist; nft's message on failure.
pub fn remove() -> Result<()> {
    run_nft(&removal()).with_context(|| format!("removing the nftables tables `{TABLE}`"))
}

/// Run `nft -f -` with `script` on its standard input; nft's message on
/// failure.
pub(crate) fn run_nft(script: &str) -> Result<()> {
    nft(NFT, script)
}

/// Run `program -f -` (nft) with `script` on its standard input.
fn nft(program: &str, script: &str) -> Result<()> {
    let mut child = Command::new(program)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "{program} is not installed (Debian package {NFT_PACKAGE}); install it, or set \
                 service_masquerade = false and egress_masquerade = false (and \
                 service_translation = \"kube-proxy\")"
            ),
            _ => anyhow::Error::new(e).context(format!("running {program}")),
        })?;
    let written = child
        .stdin
        .take()
        .context("nft's standard input")?
        .write_all(script.as_bytes());
    let output = child.wait_with_output().context("waiting for nft")?;
    if !output.status.success() {
        bail!(
            "{program} -f - failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    written.context("writing the ruleset to nft")?;
    Ok(())
}

/// The kernel settings the Service and egress paths need: IPv4
/// forwarding, and IPv6 forwarding too if `ipv6` (the node forwards a
/// pod's Service packet back out the host port, and its packets to the
/// world out another interface). Turned on where off; the error names the
/// file when that fails.
///
/// IPv6 forwarding on (`all`) makes the node a router: its interfaces
/// with `accept_ra = 1` stop taking router advertisements, so a node
/// whose default route comes from them needs `accept_ra = 2` there
/// (docs/operations.md).
pub fn enable_forwarding(ipv6: bool) -> Result<()> {
    turn_on("/proc/sys/net/ipv4/ip_forward", "IPv4")?;
    if ipv6 {
        turn_on("/proc/sys/net/ipv6/conf/all/forwarding", "IPv6")?;
    }
    Ok(())
}

/// Write 1 to the forwarding setting `path` (of `family`) if it is not 1.
fn turn_on(path: &str, family: &str) -> Result<()> {
    let now = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    if now.trim() != "1" {
        std::fs::write(path, "1").with_context(|| {
            format!(
                "writing 1 to {path}: pods' Service and egress traffic needs the node to forward"
            )
        })?;
        tracing::info!(
            "turned {family} forwarding on: pods' Service and egress traffic crosses the node"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPV4_ONLY: NatRules = NatRules {
        services: true,
        egress: false,
        pod_cidr: Ipv4Net::new_assert(std::net::Ipv4Addr::new(10, 244, 1, 0), 24),
        pod_cidr6: None,
    };

    #[test]
    fn the_ruleset_replaces_one_table_and_matches_dnat_from_the_pods() {
        let text = ruleset("podsw0", IPV4_ONLY);
        // Declare, delete, then write: one transaction, one copy, whether
        // or not a table was there before; a leftover IPv6 table goes.
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "table ip podswitch");
        assert_eq!(lines[1], "delete table ip podswitch");
        assert_eq!(lines[2], "table ip6 podswitch");
        assert_eq!(lines[3], "delete table ip6 podswitch");
        assert_eq!(lines[4], "table ip podswitch {");
        assert!(
            text.contains(
                "iifname \"podsw0\" oifname \"podsw0\" ct status dnat counter masquerade"
            )
        );
        assert_eq!(text.matches("table ip ").count(), 3);
        assert!(!text.contains("table ip6 podswitch {"));
        assert_eq!(text.matches("masquerade").count(), 1);
    }

    #[test]
    fn egress_masquerades_the_pod_cidr_leaving_by_another_interface() {
        let both = NatRules {
            egress: true,
            ..IPV4_ONLY
        };
        let text = ruleset("podsw0", both);
        assert!(text.contains(
            "iifname \"podsw0\" ip saddr 10.244.1.0/24 oifname != \"podsw0\" counter masquerade"
        ));
        assert_eq!(text.matches("masquerade comment").count(), 2);
        let egress = NatRules {
            services: false,
            ..both
        };
        assert!(!ruleset("podsw0", egress).contains("ct status dnat"));
        assert!(egress.any());
        assert!(
            !NatRules {
                services: false,
                ..IPV4_ONLY
            }
            .any()
        );
    }

    #[test]
    fn a_dual_stack_node_has_the_same_rules_in_an_ip6_table() {
        let dual = NatRules {
            egress: true,
            pod_cidr6: Some("fd00:10:244:1::/64".parse().unwrap()),
            ..IPV4_ONLY
        };
        let text = ruleset("podsw0", dual);
        let (ip, ip6) = text.split_once("table ip6 podswitch {").unwrap();
        assert!(ip.contains("table ip podswitch {"));
        for table in [ip, ip6] {
            assert!(table.contains("oifname \"podsw0\" ct status dnat counter masquerade"));
        }
        assert!(ip6.contains(
            "iifname \"podsw0\" ip6 saddr fd00:10:244:1::/64 oifname != \"podsw0\" counter \
             masquerade"
        ));
        assert!(!ip6.contains("ip saddr"));
        assert_eq!(text.matches("masquerade comment").count(), 4);
        // Services only: both tables, the Service rule alone in each.
        let services = NatRules {
            egress: false,
            ..dual
        };
        let text = ruleset("podsw0", services);
        assert!(text.contains("table ip6 podswitch {"));
        assert_eq!(text.matches("masquerade comment").count(), 2);
        // Egress only: both tables, the egress rule alone in each.
        let egress = NatRules {
            services: false,
            ..dual
        };
        assert!(egress.any());
        let text = ruleset("podsw0", egress);
        assert!(text.contains("table ip podswitch {") && text.contains("table ip6 podswitch {"));
        assert_eq!(text.matches("pod to the world").count(), 2);
        assert!(!text.contains("ct status dnat"));
    }

    #[test]
    fn removal_is_harmless_when_the_tables_are_absent() {
        assert_eq!(
            removal(),
            "table ip podswitch\ndelete table ip podswitch\n\
             table ip6 podswitch\ndelete table ip6 podswitch\n"
        );
    }

    #[test]
    fn a_missing_nft_names_its_package() {
        let e = nft("/nonexistent/nft", &removal()).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/nft is not installed"), "{e}");
        assert!(e.contains("Debian package nftables"), "{e}");
    }

    #[test]
    fn nfts_message_is_in_the_error() {
        // `sh -f -` runs its standard input as nft would read it.
        let e = nft("sh", "echo 'Error: syntax error' >&2; exit 1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Error: syntax error"), "{e}");
        nft("sh", "exit 0").unwrap();
    }
}
