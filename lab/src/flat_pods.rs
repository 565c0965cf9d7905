//! Pods on one flat layer-2 network (`10.244.0.0/16`, no gateway): what an
//! L2 overlay such as Open vSwitch with MAC learning gives pods, and the
//! direct veth pair — two pods wired to each other with nothing between —
//! that is the ceiling of a frame-at-a-time path on a machine.

use std::net::Ipv4Addr;

use anyhow::Result;

use crate::cluster::{Pod, offloads_off};
use crate::netns::{Lab, Netns, format_mac};

/// The prefix length of the flat pod network.
pub const FLAT_PREFIX: u8 = 16;

/// Pod `host` of node `node` on the flat network: `10.244.<node>.<host>`.
pub fn flat_pod_ip(node: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, node, host)
}

/// The MAC of that pod (the same scheme as the lab's other pods).
pub fn flat_pod_mac(node: u8, host: u8) -> String {
    format_mac([0x0a, 0x58, 10, 244, node, host])
}

/// Give `eth0` in `pod_ns` pod `host` of node `node`'s address on the
/// flat network, its MAC and `mtu`, bring it up, and turn its TX checksum
/// offload, TSO and GSO off (frame-at-a-time paths need finished frames).
fn address_flat_pod(pod_ns: &Netns, node: u8, host: u8, mtu: u32) -> Result<(Ipv4Addr, String)> {
    let ip = flat_pod_ip(node, host);
    let mac = flat_pod_mac(node, host);
    pod_ns.ip(&[
        "link",
        "set",
        "eth0",
        "address",
        &mac,
        "mtu",
        &mtu.to_string(),
        "up",
    ])?;
    pod_ns.ip(&["addr", "add", &format!("{ip}/{FLAT_PREFIX}"), "dev", "eth0"])?;
    offloads_off(pod_ns, "eth0")?;
    Ok((ip, mac))
}

/// Create pod `pod<node><host>` with a veth whose other end,
/// `host_ifname`, stays in `node_ns`, up and with its offloads off; the
/// pod is on the flat network. The node end is left for the caller to
/// attach to its switch.
pub fn flat_pod(
    lab: &mut Lab,
    node_ns: &Netns,
    node: u8,
    host: u8,
    host_ifname: &str,
    mtu: u32,
) -> Result<Pod> {
    let ns = lab.netns(&format!("pod{node}{host}"))?;
    node_ns.add_veth(host_ifname, &ns, "eth0")?;
    node_ns.ip(&["link", "set", host_ifname, "mtu", &mtu.to_string(), "up"])?;
    offloads_off(node_ns, host_ifname)?;
    let (ip, mac) = address_flat_pod(&ns, node, host, mtu)?;
    Ok(Pod {
        ns,
        ip,
        mac,
        port: host_ifname.to_string(),
    })
}

/// Two pods, `10.244.1.2` and `10.244.2.2`, joined by one veth pair
/// (`eth0` on both sides) with offloads off.
pub fn direct_veth_pods(lab: &mut Lab, mtu: u32) -> Result<[Pod; 2]> {
    let a = lab.netns("pod12")?;
    let b = lab.netns("pod22")?;
    a.add_veth("eth0", &b, "eth0")?;
    let pod = |ns: Netns, node: u8| -> Result<Pod> {
        let (ip, mac) = address_flat_pod(&ns, node, 2, mtu)?;
        Ok(Pod {
            ns,
            ip,
            mac,
            port: "eth0".into(),
        })
    };
    Ok([pod(a, 1)?, pod(b, 2)?])
}
