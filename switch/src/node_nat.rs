//! The daemon's own nftables table, `table ip podswitch`: its source NAT
//! for pods' traffic that crosses the node's stack.
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
//! address (the pods' gateway), so the reply is addressed to the node and
//! crosses its stack, which undoes both translations.
//!
//! **Egress.** A pod's packet to an address outside the pod network
//! reaches the node's stack through the host port and leaves by another
//! interface; it is masqueraded to the node's address there, as Flannel's
//! `--ip-masq` does, so the world answers the node. Pod-to-pod traffic
//! never leaves by another interface (every pod CIDR is routed through the
//! host port), so it keeps its addresses.
//!
//! The table is written with `nft -f -` in one transaction that deletes any
//! earlier copy first (a restart, or a table a killed daemon left, ends
//! with exactly one), and deleted on a clean stop.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use ipnet::Ipv4Net;

/// The daemon's nftables table (family `ip`): nobody else's rules are in
/// it, and nothing of the daemon's is anywhere else.
pub const TABLE: &str = "podswitch";

/// The `nft` program and the Debian package that installs it.
const NFT: &str = "nft";
const NFT_PACKAGE: &str = "nftables";

/// What the daemon's table masquerades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatRules {
    /// Pods' connections the node DNATs back to pods (`service_masquerade`).
    pub services: bool,
    /// Pods' connections to the world, from this node's pod CIDR
    /// (`egress_masquerade`).
    pub egress_from: Option<Ipv4Net>,
}

impl NatRules {
    /// Whether there is anything to masquerade (else no table).
    pub fn any(&self) -> bool {
        self.services || self.egress_from.is_some()
    }
}

/// The ruleset of the daemon's table for a node whose host port is
/// `host_port`: written whole, replacing any earlier copy.
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
/// No rule is needed against the ICMP redirects the node sends when it
/// forwards a Service packet back out the host port: netfilter's NAT
/// drops a redirect about a NATed connection before it leaves
/// (`nf_nat_icmp_reply_translation`), and this table's NAT chain is
/// enough for NAT's hooks to be there.
pub fn ruleset(host_port: &str, rules: NatRules) -> String {
    let mut text = format!(
        "table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat + 10; policy accept;\n"
    );
    if rules.services {
        text += &format!(
            "\t\tiifname \"{host_port}\" oifname \"{host_port}\" ct status dnat counter \
             masquerade comment \"pod to a Service endpoint pod\"\n"
        );
    }
    if let Some(pods) = rules.egress_from {
        text += &format!(
            "\t\tiifname \"{host_port}\" ip saddr {pods} oifname != \"{host_port}\" counter \
             masquerade comment \"pod to the world\"\n"
        );
    }
    text + "\t}\n}\n"
}

/// The transaction that removes the table if it exists.
fn removal() -> String {
    format!("table ip {TABLE}\ndelete table ip {TABLE}\n")
}

/// Install the table for `host_port` in the calling thread's network
/// namespace, replacing any earlier copy; nft's message on failure.
pub fn install(host_port: &str, rules: NatRules) -> Result<()> {
    nft(NFT, &ruleset(host_port, rules))
        .with_context(|| format!("installing the masquerade table `ip {TABLE}`"))
}

/// Remove the table if it exists; nft's message on failure.
pub fn remove() -> Result<()> {
    nft(NFT, &removal()).with_context(|| format!("removing the nftables table `ip {TABLE}`"))
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
                 service_masquerade = false and egress_masquerade = false"
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
/// forwarding (the node forwards a pod's Service packet back out the host
/// port, and its packets to the world out another interface). Turned on
/// where off; the error names the file when that fails.
pub fn enable_forwarding() -> Result<()> {
    const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
    let now =
        std::fs::read_to_string(IP_FORWARD).with_context(|| format!("reading {IP_FORWARD}"))?;
    if now.trim() != "1" {
        std::fs::write(IP_FORWARD, "1").with_context(|| {
            format!(
                "writing 1 to {IP_FORWARD}: pods' Service and egress traffic needs the node to \
                 forward"
            )
        })?;
        tracing::info!(
            "turned IPv4 forwarding on: pods' Service and egress traffic crosses the node"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_replaces_one_table_and_matches_dnat_from_the_pods() {
        let services = NatRules {
            services: true,
            egress_from: None,
        };
        let text = ruleset("podsw0", services);
        // Declare, delete, then write: one transaction, one copy, whether
        // or not a table was there before.
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "table ip podswitch");
        assert_eq!(lines[1], "delete table ip podswitch");
        assert_eq!(lines[2], "table ip podswitch {");
        assert!(
            text.contains(
                "iifname \"podsw0\" oifname \"podsw0\" ct status dnat counter masquerade"
            )
        );
        assert_eq!(text.matches("table ip").count(), 3);
        assert_eq!(text.matches("masquerade").count(), 1);
    }

    #[test]
    fn egress_masquerades_the_pod_cidr_leaving_by_another_interface() {
        let pods: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let both = NatRules {
            services: true,
            egress_from: Some(pods),
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
                egress_from: None
            }
            .any()
        );
    }

    #[test]
    fn removal_is_harmless_when_the_table_is_absent() {
        assert_eq!(removal(), "table ip podswitch\ndelete table ip podswitch\n");
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
