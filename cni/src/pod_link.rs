//! The pod's interface, named `CNI_IFNAME` in the pod's network namespace
//! with the pod's address, MTU and routes. Either
//! - one end of a veth pair whose host end the switch polls through
//!   AF_XDP, with TX checksum offload, TSO and GSO off (AF_XDP carries
//!   frames as they are: a partial checksum or a 64 KB super-frame would
//!   reach the other pod unfinished);
//! - one end of a veth pair whose host end the switch reads through a
//!   packet socket with a virtio-net header, offloads on but for every
//!   segmentation other than TCP over IPv4 (the one the switch carries
//!   whole; the pod's kernel cuts the rest); or
//! - a persistent TAP device the switch attaches to with a virtio-net
//!   header, offloads on: the switch takes and gives TCP super-frames.

use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nix::sched::{CloneFlags, setns};
use podswitch_control::MacAddr;
use podswitch_control::protocol::POD_GATEWAY6;
use podswitch_netdev::ethtool::{self, Offload};
use podswitch_netdev::netlink::{Netlink, disable_ipv6, enable_static_ipv6};
use podswitch_netdev::netns::in_netns;
use podswitch_netdev::tap::TapDevice;
use sha2::{Digest, Sha256};

/// The host end's name for attachment (`container_id`, `ifname`): `ps`
/// and 12 hex digits of a SHA-256 of both — stable across versions of the
/// plugin (DEL must find what an older ADD made), 14 bytes (Linux allows
/// 15), and 48 bits make a collision on one node vanishingly unlikely.
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let digest = Sha256::new()
        .chain_update(container_id)
        .chain_update([0])
        .chain_update(ifname)
        .finalize();
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("ps{hex}")
}

/// Whether `name` is a host end this plugin makes.
pub fn is_host_ifname(name: &str) -> bool {
    name.len() == 14 && name.starts_with("ps") && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Open a network namespace file, refusing what is not one.
pub fn open_netns(path: &Path) -> Result<OwnedFd> {
    let file = File::open(path)
        .with_context(|| format!("CNI_NETNS {}: cannot open it", path.display()))?;
    // A namespace file is the only thing setns(CLONE_NEWNET) accepts:
    // check on a scratch thread, which then exits.
    let fd = OwnedFd::from(file);
    let probe = fd.try_clone()?;
    std::thread::spawn(move || setns(probe.as_fd(), CloneFlags::CLONE_NEWNET))
        .join()
        .map_err(|_| anyhow::anyhow!("checking CNI_NETNS failed"))?
        .with_context(|| format!("CNI_NETNS {} is not a network namespace", path.display()))?;
    Ok(fd)
}

/// What the pod's interface should be.
#[derive(Debug, Clone)]
pub struct PodInterface<'a> {
    /// Its name in the pod (`CNI_IFNAME`).
    pub ifname: &'a str,
    /// The host end's name.
    pub host: &'a str,
    /// Its MTU.
    pub mtu: u32,
    /// The pod's address and prefix.
    pub address: Ipv4Net,
    /// The gateway the switch answers for.
    pub gateway: Ipv4Addr,
    /// Routes besides the default route via the gateway.
    pub routes: &'a [(Ipv4Net, Ipv4Addr)],
    /// A dual-stack pod's IPv6 address (a /128, the default route via
    /// [`POD_GATEWAY6`]); IPv6 is off on a pod without one.
    pub address6: Option<Ipv6Addr>,
    /// The MAC the runtime asked for; the kernel's random one if none.
    pub mac: Option<MacAddr>,
    /// Whether the pod keeps its offloads (a TAP device, or a veth read
    /// through a packet socket); a plain veth's are turned off.
    pub offloaded: bool,
    /// The largest super-frame an offloaded pod's kernel may hand the switch
    /// (`gso_max_size`), when the switch says so: it must fit one outer
    /// packet once encapsulated.
    pub gso_max_size: Option<u32>,
}

/// What was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedLink {
    /// The pod end's MAC.
    pub pod_mac: MacAddr,
    /// The host end's MAC (a veth's; a TAP device has no host end).
    pub host_mac: Option<MacAddr>,
}

/// Create and configure the pod's veth. On failure nothing is left: the
/// pair is deleted.
pub fn create(netlink: &Netlink, netns: &OwnedFd, pod: &PodInterface) -> Result<CreatedLink> {
    netlink.create_veth(pod.host, pod.ifname, netns.as_fd(), pod.mtu)?;
    let made = configure(netlink, netns, pod);
    if made.is_err() {
        let _ = netlink.delete_link(pod.host);
    }
    made
}

fn configure(netlink: &Netlink, netns: &OwnedFd, pod: &PodInterface) -> Result<CreatedLink> {
    let pod_mac = in_netns(netns, || {
        if pod.offloaded {
            segmentation_off_but_tcp4(pod.ifname)?;
        } else {
            offloads_off(pod.ifname)?;
        }
        configure_in_pod(pod)
    })?;
    let host = netlink.require_link(pod.host)?;
    disable_ipv6(pod.host)?;
    netlink.set_link_up(host.index, Some(pod.mtu), None)?;
    Ok(CreatedLink {
        pod_mac,
        host_mac: Some(host.mac.context("the host end has no MAC")?),
    })
}

/// Packets a pod's TAP device queues for the switch to read. The kernel
/// drops at the tail of a full TAP queue (no backpressure to the pod's
/// sender), so the queue is what absorbs the pod's bursts while the
/// switch's worker is off its CPU: as many as an AF_XDP pod socket's
/// largest fill ring (`frame_budget::FILL_MAX`), not the kernel's 1000.
pub const TAP_QUEUE_LEN: u32 = 4096;

/// Create and configure the pod's TAP device (persistent, with a
/// virtio-net header and offloads on, a queue of [`TAP_QUEUE_LEN`]) for
/// the switch to attach to; its MAC. On failure nothing is left.
pub fn create_tap(netns: &OwnedFd, pod: &PodInterface) -> Result<MacAddr> {
    in_netns(netns, || {
        TapDevice::create_persistent(pod.ifname)
            .with_context(|| format!("creating TAP device {}", pod.ifname))?;
        let configured = Netlink::open().and_then(|netlink| {
            let link = netlink.require_link(pod.ifname)?;
            netlink.set_tx_queue_len(link.index, TAP_QUEUE_LEN)?;
            configure_in_pod(pod)
        });
        configured.inspect_err(|_| {
            let _ = Netlink::open().and_then(|n| n.delete_link(pod.ifname));
        })
    })
}

/// Delete the pod's TAP device, if the namespace and the device are there.
pub fn delete_tap(netns_path: &Path, ifname: &str) -> Result<()> {
    let Ok(netns) = open_netns(netns_path) else {
        return Ok(());
    };
    in_netns(&netns, || Netlink::open()?.delete_link(ifname).map(drop))
}

/// In the pod's namespace: bring `lo` and the pod interface up with its
/// MTU, MAC (if one was asked for), addresses and routes — IPv6 on it
/// only for a dual-stack pod, without duplicate address detection or
/// router advertisements (the switch answers neither), and off otherwise
/// (the switch would drop its router solicitations and MLD reports); the
/// interface's MAC.
fn configure_in_pod(pod: &PodInterface) -> Result<MacAddr> {
    let netlink = Netlink::open()?;
    if let Some(lo) = netlink.link("lo")? {
        netlink.set_link_up(lo.index, None, None)?;
    }
    let link = netlink.require_link(pod.ifname)?;
    match pod.address6 {
        None => disable_ipv6(pod.ifname)?,
        Some(_) => enable_static_ipv6(pod.ifname)?,
    }
    if let Some(size) = pod.gso_max_size {
        netlink.set_gso_max_size(link.index, size)?;
    }
    netlink.set_link_up(link.index, Some(pod.mtu), pod.mac)?;
    netlink.add_address(
        link.index,
        pod.address.addr().into(),
        pod.address.prefix_len(),
    )?;
    netlink.add_route_via(Ipv4Net::default().into(), pod.gateway.into(), link.index)?;
    for &(destination, gateway) in pod.routes {
        netlink.add_route_via(destination.into(), gateway.into(), link.index)?;
    }
    if let Some(address6) = pod.address6 {
        netlink.add_address(link.index, address6.into(), 128)?;
        netlink.add_route_via(Ipv6Net::default().into(), POD_GATEWAY6.into(), link.index)?;
    }
    pod.mac.or(link.mac).context("the pod interface has no MAC")
}

/// The pod interface as it is: MAC, MTU, addresses and the routes through it.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Its MAC.
    pub mac: MacAddr,
    /// Its MTU.
    pub mtu: u32,
    /// Its addresses.
    pub addresses: Vec<IpNet>,
    /// Routes out of it: destination and gateway.
    pub routes: Vec<(Ipv4Net, Option<Ipv4Addr>)>,
}

/// Look at the pod's interface `ifname`.
pub fn observe(netns: &OwnedFd, ifname: &str) -> Result<Observed> {
    in_netns(netns, || {
        let netlink = Netlink::open()?;
        let link = netlink
            .link(ifname)?
            .with_context(|| format!("the pod has no interface {ifname}"))?;
        Ok(Observed {
            mac: link.mac.with_context(|| format!("{ifname} has no MAC"))?,
            mtu: link.mtu,
            addresses: netlink.addresses(link.index)?,
            routes: netlink
                .routes_v4()?
                .into_iter()
                .filter(|&(_, _, oif)| oif == link.index)
                .map(|(destination, gateway, _)| (destination, gateway))
                .collect(),
        })
    })
}

/// Turn TX checksum offload, TSO and GSO off on `ifname` in the calling
/// thread's namespace.
fn offloads_off(ifname: &str) -> Result<()> {
    Ok(ethtool::turn_off(
        ifname,
        &[Offload::TxChecksum, Offload::Tso, Offload::Gso],
    )?)
}

/// Segmentation offloads an offloaded veth pod keeps: TCP over IPv4, which
/// the switch carries whole (with or without ECN's CWR, and with IP IDs
/// the kernel may not increment).
const KEPT_SEGMENTATION: &[&str] = &[
    "tx-tcp-segmentation",
    "tx-tcp-ecn-segmentation",
    "tx-tcp-mangleid-segmentation",
];

/// Whether `feature` is a segmentation offload an offloaded veth pod does
/// without: the switch cuts only TCP/IPv4 super-frames (IPv6 TCP, UDP and
/// tunnels are cut by the pod's kernel instead).
fn unsupported_segmentation(feature: &str) -> bool {
    let segmentation = feature.starts_with("tx-")
        && (feature.ends_with("-segmentation") || feature.starts_with("tx-gso-"));
    segmentation && !KEPT_SEGMENTATION.contains(&feature)
}

/// Turn off every segmentation offload on `ifname` (in the calling
/// thread's namespace) but TCP over IPv4's.
fn segmentation_off_but_tcp4(ifname: &str) -> Result<()> {
    ethtool::turn_off_features(ifname, unsupported_segmentation)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offloaded_veth_keeps_tcp4_segmentation_only() {
        for kept in KEPT_SEGMENTATION
            .iter()
            .chain(&["tx-checksum-ip-generic", "rx-gro"])
        {
            assert!(!unsupported_segmentation(kept), "{kept}");
        }
        for off in [
            "tx-tcp6-segmentation",
            "tx-udp-segmentation",
            "tx-udp_tnl-segmentation",
            "tx-gre-csum-segmentation",
            "tx-gso-partial",
            "tx-gso-list",
        ] {
            assert!(unsupported_segmentation(off), "{off}");
        }
    }

    #[test]
    fn host_names_are_stable_short_and_distinct() {
        let a = host_ifname("3f6940ab5ab43bc5", "eth0");
        assert_eq!(a, host_ifname("3f6940ab5ab43bc5", "eth0"));
        assert_eq!(a.len(), 14);
        assert!(is_host_ifname(&a));
        assert_ne!(a, host_ifname("3f6940ab5ab43bc5", "net1"));
        assert_ne!(a, host_ifname("3f6940ab5ab43bc6", "eth0"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(host_ifname("ab", "c"), host_ifname("a", "bc"));
        assert!(!is_host_ifname("eth0"));
        assert!(!is_host_ifname("psxyz0123456789"));
        // Known value, so a change of scheme shows up as a test failure.
        assert_eq!(host_ifname("abc", "eth0"), "psd887cd286879");
    }
}
