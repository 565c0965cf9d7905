//! Receiving peers' TCP through the node's kernel, whole.
//!
//! AF_XDP has no receive offload: every frame of a peer's 64 KB segment
//! crosses the uplink's socket on its own, and the switch coalesces them
//! again for a TAP pod. The node's kernel can do better: its GRO merges a
//! flow's VXLAN packets into one super-packet (and a segment that crossed
//! the underlay whole stays whole), if it has a VXLAN socket on the port
//! to ask. So, for VXLAN over IPv4:
//!
//! - the uplink's XDP program passes VXLAN packets carrying TCP to the
//!   kernel ([`UplinkFilter::vxlan_tcp_to_kernel`](crate::xdp::UplinkFilter));
//!   everything else still goes to its socket, so small UDP and ICMP keep
//!   AF_XDP's batches;
//! - a kernel VXLAN device on the tunnel's port, up and otherwise unused
//!   ([`GRO_DEVICE`]), is the socket GRO asks; GRO is turned on on the
//!   uplink (a NIC has it on; a veth starts with it off) and back off at
//!   the stop if it was;
//! - a tc filter on the uplink's ingress ([`TC_PREF`]) redirects what GRO
//!   made — UDP to this node's VTEP on the tunnel's port — out of the
//!   tunnel port's TAP device, where the switch reads each super-packet
//!   with its virtio-net header and decapsulates it as it does the
//!   uplink's packets ([`TunnelPort`](crate::worker::TunnelPort)).
//!
//! Nothing reaches the kernel's own VXLAN device (the filter runs before
//! it); a flow stays on one path, since the choice is made by its
//! protocol. The daemon installs this at start and removes it at a clean
//! stop; a start after a crash replaces what the crash left.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{Context, Result, bail};
use podswitch_netdev::ethtool::{self, Offload};

/// The kernel VXLAN device whose socket GRO asks about the tunnel's port.
pub const GRO_DEVICE: &str = "podswgro0";
/// The tc priority of the switch's filter on the uplink's ingress (one no
/// other software on a node is likely to pick).
pub const TC_PREF: u16 = 49_189;

/// The kernel's part of receiving peers' TCP through the tunnel port, as
/// installed; [`remove`](Self::remove) takes it out.
#[derive(Debug)]
pub struct KernelReceive {
    uplink: String,
    /// GRO was off on the uplink, and this turned it on.
    turned_gro_on: bool,
}

impl KernelReceive {
    /// Install it on `uplink` for VXLAN with `vni` on UDP `port` to
    /// `vtep`, redirecting to the TAP device `tunnel_port`, replacing an
    /// earlier copy. A failure leaves nothing behind and names the step.
    pub fn install(
        uplink: &str,
        vtep: Ipv4Addr,
        port: u16,
        vni: u32,
        tunnel_port: &str,
    ) -> Result<KernelReceive> {
        remove_from(uplink);
        let turned_gro_on = !ethtool::is_on(uplink, Offload::Gro)?;
        if turned_gro_on {
            ethtool::set(uplink, Offload::Gro, true)?;
        }
        let installed = KernelReceive {
            uplink: uplink.to_string(),
            turned_gro_on,
        };
        let steps = || -> Result<()> {
            let (vni, dstport) = (vni.to_string(), port.to_string());
            ip(&[
                "link",
                "add",
                GRO_DEVICE,
                "type",
                "vxlan",
                "id",
                &vni,
                "dstport",
                &dstport,
                "nolearning",
            ])?;
            ip(&["link", "set", GRO_DEVICE, "up"]).context(
                "bringing up the GRO device: is another VXLAN device (flannel.1?) on the port?",
            )?;
            if !has_ingress_qdisc(uplink)? {
                tc(&["qdisc", "add", "dev", uplink, "clsact"])?;
            }
            tc(&redirect_filter(uplink, vtep, port, tunnel_port)).map(drop)
        };
        match steps() {
            Ok(()) => Ok(installed),
            Err(e) => {
                installed.remove();
                Err(e)
            }
        }
    }

    /// Take the filter and the GRO device out (the uplink's ingress qdisc
    /// stays: other filters may hang on it), and turn GRO back off if it
    /// was. Failures are logged.
    pub fn remove(&self) {
        remove_from(&self.uplink);
        if self.turned_gro_on
            && let Err(e) = ethtool::set(&self.uplink, Offload::Gro, false)
        {
            tracing::warn!("{e}");
        }
    }
}

/// `tc` arguments of the filter that redirects UDP to `vtep` on `port`
/// arriving on `uplink` out of `tunnel_port` (interface names hold no
/// whitespace).
fn redirect_filter(uplink: &str, vtep: Ipv4Addr, port: u16, tunnel_port: &str) -> Vec<String> {
    format!(
        "filter add dev {uplink} ingress pref {TC_PREF} protocol ip u32 match ip dst {vtep}/32 \
         match ip protocol 17 0xff match ip dport {port} 0xffff \
         action mirred egress redirect dev {tunnel_port}"
    )
    .split_whitespace()
    .map(str::to_string)
    .collect()
}

/// Remove the filter from `uplink` and the GRO device, if there; log any
/// other failure.
fn remove_from(uplink: &str) {
    let pref = TC_PREF.to_string();
    if has_ingress_qdisc(uplink).unwrap_or(false)
        && let Err(e) = tc(&["filter", "del", "dev", uplink, "ingress", "pref", &pref])
        && !is_absent(&e)
    {
        tracing::warn!("{e:#}");
    }
    if let Err(e) = ip(&["link", "del", GRO_DEVICE])
        && !is_absent(&e)
    {
        tracing::warn!("{e:#}");
    }
}

/// Whether `uplink` has an ingress or clsact qdisc for filters to hang on.
fn has_ingress_qdisc(uplink: &str) -> Result<bool> {
    let shown = run("tc", &["qdisc", "show", "dev", uplink])?;
    Ok(shown
        .lines()
        .any(|line| line.starts_with("qdisc ingress") || line.starts_with("qdisc clsact")))
}

/// Whether a failure says that what was to be removed is not there.
fn is_absent(error: &anyhow::Error) -> bool {
    let message = format!("{error:#}");
    [
        "Cannot find device",
        "No such file",
        "Cannot find specified",
        "not found",
    ]
    .iter()
    .any(|absent| message.contains(absent))
}

fn ip<S: AsRef<str>>(args: &[S]) -> Result<String> {
    run("ip", args)
}

fn tc<S: AsRef<str>>(args: &[S]) -> Result<String> {
    run("tc", args)
}

/// Run `program` (from iproute2) with `args`; its output, or its message.
fn run<S: AsRef<str>>(program: &str, args: &[S]) -> Result<String> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let output = Command::new(program)
        .args(&args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "{program} is not installed (Debian package iproute2); install it, or set \
                 tunnel_receive = \"afxdp\""
            ),
            _ => anyhow::Error::new(e).context(format!("running {program}")),
        })?;
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_redirects_udp_to_the_vtep_on_the_port() {
        let args = redirect_filter("ul0", Ipv4Addr::new(10, 0, 0, 1), 4789, "podswt0");
        assert_eq!(
            args.join(" "),
            "filter add dev ul0 ingress pref 49189 protocol ip u32 match ip dst 10.0.0.1/32 \
             match ip protocol 17 0xff match ip dport 4789 0xffff action mirred egress redirect \
             dev podswt0"
        );
    }

    #[test]
    fn absent_things_are_recognised() {
        assert!(is_absent(&anyhow::anyhow!(
            "ip link del podswgro0 failed (exit status: 1): Cannot find device \"podswgro0\""
        )));
        assert!(!is_absent(&anyhow::anyhow!("Operation not permitted")));
    }
}
