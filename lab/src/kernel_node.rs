//! A Flannel-style kernel VXLAN node inside a namespace: the kernel's own
//! `vxlan` device as the peer podswitch interoperates with and is compared
//! against.
//!
//! Flannel's vxlan backend (L3): the device carries the node's pod subnet
//! address as a /32; each remote node gets a route to its pod CIDR via its
//! subnet address `onlink`, a permanent neighbour entry mapping that address
//! to the remote VTEP MAC, and an FDB entry sending that MAC to the remote
//! node's underlay IP.

use std::net::IpAddr;

use anyhow::Result;

use crate::netns::Netns;

/// The kernel VXLAN device of one node.
#[derive(Debug, Clone)]
pub struct KernelVxlan {
    /// Device name, e.g. `vxlan0`.
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// Destination UDP port.
    pub udp_port: u16,
    /// The node's underlay address (the VTEP).
    pub local: IpAddr,
    /// The underlay interface.
    pub underlay: String,
    /// The device's MAC: the node's VTEP MAC.
    pub mac: String,
    /// The node's address on the device, e.g. `10.244.2.0/32`.
    pub address: String,
    /// The device MTU: underlay MTU less the encapsulation overhead.
    pub mtu: u32,
}

impl KernelVxlan {
    /// Create the device in `ns` and bring it up.
    pub fn create(&self, ns: &Netns) -> Result<()> {
        let vni = self.vni.to_string();
        let port = self.udp_port.to_string();
        let local = self.local.to_string();
        let mtu = self.mtu.to_string();
        ns.ip(&[
            "link",
            "add",
            &self.name,
            "type",
            "vxlan",
            "id",
            &vni,
            "local",
            &local,
            "dev",
            &self.underlay,
            "dstport",
            &port,
            "nolearning",
        ])?;
        ns.ip(&["link", "set", &self.name, "address", &self.mac, "mtu", &mtu])?;
        ns.ip(&["addr", "add", &self.address, "dev", &self.name])?;
        ns.ip(&["link", "set", &self.name, "up"])?;
        Ok(())
    }

    /// Route `pod_cidr` (whose first address is `pod_gateway`) to the node
    /// whose VTEP is `vtep_ip` with MAC `vtep_mac`, as Flannel does.
    pub fn add_peer(
        &self,
        ns: &Netns,
        pod_cidr: &str,
        pod_gateway: &str,
        vtep_mac: &str,
        vtep_ip: IpAddr,
    ) -> Result<()> {
        let vtep_ip = vtep_ip.to_string();
        ns.ip(&[
            "neigh",
            "replace",
            pod_gateway,
            "lladdr",
            vtep_mac,
            "dev",
            &self.name,
            "nud",
            "permanent",
        ])?;
        ns.ip(&[
            "route",
            "replace",
            pod_cidr,
            "via",
            pod_gateway,
            "dev",
            &self.name,
            "onlink",
        ])?;
        let bridge = |args: &[&str]| ns.run("bridge", args);
        bridge(&[
            "fdb",
            "replace",
            vtep_mac,
            "dev",
            &self.name,
            "dst",
            &vtep_ip,
            "self",
            "permanent",
        ])?;
        Ok(())
    }
}
