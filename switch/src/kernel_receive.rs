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
//! stop; a start after a crash replaces what the crash left, and a start
//! that does not receive through the kernel removes it
//! ([`clear_leftovers`]). That GRO was off before the switch turned it
//! on is written down in the state directory ([`GRO_MARKER`]), so that it
//! is turned off again even after a crash left it on.

use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use podswitch_netdev::ethtool::{self, Offload};

/// The kernel VXLAN device whose socket GRO asks about the tunnel's port.
pub const GRO_DEVICE: &str = "podswgro0";
/// The tc priority of the switch's filter on the uplink's ingress (one no
/// other software on a node is likely to pick).
pub const TC_PREF: u16 = 49_189;

/// The file in the state directory that names the uplink whose GRO the
/// switch turned on (it was off before).
pub const GRO_MARKER: &str = "uplink-gro-turned-on";

/// The kernel's part of receiving peers' TCP through the tunnel port, as
/// installed; [`remove`](Self::remove) takes it out.
#[derive(Debug)]
pub struct KernelReceive {
    uplink: String,
    /// GRO was off on the uplink, and the switch turned it on (this
    /// daemon, or one before it that did not stop cleanly): where that
    /// is written down.
    turned_gro_on: Option<PathBuf>,
}

impl KernelReceive {
    /// Install it on `uplink` for VXLAN with `vni` on UDP `port` to
    /// `vtep`, redirecting to the TAP device `tunnel_port`, replacing an
    /// earlier copy; `state_dir` keeps the note that GRO was off. A
    /// failure leaves nothing behind and names the step.
    pub fn install(
        uplink: &str,
        vtep: Ipv4Addr,
        port: u16,
        vni: u32,
        tunnel_port: &str,
        state_dir: &Path,
    ) -> Result<KernelReceive> {
        remove_from(uplink);
        let marker = state_dir.join(GRO_MARKER);
        let turned_on_before = marked(&marker, uplink);
        let turned_gro_on = if ethtool::is_on(uplink, Offload::Gro)? {
            turned_on_before.then_some(marker)
        } else {
            // Noted before it is turned on, so that a crash right after
            // cannot lose it.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .and_then(|()| std::fs::write(&marker, uplink))
                .with_context(|| format!("writing {}", marker.display()))?;
            ethtool::set(uplink, Offload::Gro, true)?;
            Some(marker)
        };
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
        if let Some(marker) = &self.turned_gro_on {
            turn_gro_back_off(&self.uplink, marker);
        }
    }
}

/// For a start that does not receive through the kernel: remove what an
/// earlier daemon that did, and stopped without cleaning up, left on
/// `uplink` — the filter, the GRO device, and GRO turned on.
pub fn clear_leftovers(uplink: &str, state_dir: &Path) {
    remove_from(uplink);
    let marker = state_dir.join(GRO_MARKER);
    if marked(&marker, uplink) {
        turn_gro_back_off(uplink, &marker);
    }
}

/// Whether `marker` says the switch turned GRO on on `uplink`.
fn marked(marker: &Path, uplink: &str) -> bool {
    std::fs::read_to_string(marker).is_ok_and(|name| name.trim() == uplink)
}

/// Turn GRO off on `uplink`, as it was, and drop the note; failures are
/// logged (the note stays, for the next start to try again).
fn turn_gro_back_off(uplink: &str, marker: &Path) {
    match ethtool::set(uplink, Offload::Gro, false) {
        Ok(()) => {
            if let Err(e) = std::fs::remove_file(marker)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("removing {}: {e}", marker.display());
            }
        }
        Err(e) => tracing::warn!("turning GRO back off on {uplink}: {e}"),
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
