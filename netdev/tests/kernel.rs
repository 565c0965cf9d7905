//! Every `Netlink` call against the kernel, in lab namespaces: requests
//! the kernel accepts, answers read back as `ip` shows them, and the
//! "already so" errors the callers rely on tolerated (an address or
//! on-link route already there, a route or interface already gone).
//! Needs root.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;

use anyhow::{Result, ensure};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use podswitch_control::MacAddr;
use podswitch_lab::Lab;
use podswitch_netdev::ethtool::{self, Offload};
use podswitch_netdev::netlink::{Netlink, NextHop};

fn ip4(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

fn net4(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

#[test]
fn every_call_against_the_kernel() -> Result<()> {
    let mut lab = Lab::new("netdev")?;
    let node = lab.netns("node")?;
    let pod = lab.netns("pod")?;
    let pod_netns = File::open(format!("/var/run/netns/{}", pod.name()))?;
    let mac = MacAddr([0x0a, 0x58, 0x0a, 0x63, 0, 1]);
    let pods = net4("10.98.0.0/16");
    let remote = net4("10.97.0.0/16");

    let host = node.enter(|| {
        let netlink = Netlink::open()?;
        ensure!(netlink.link("vhost")?.is_none());
        ensure!(netlink.require_link("vhost").is_err());

        netlink.create_veth("vhost", "eth0", pod_netns.as_fd(), 1400)?;
        let again = netlink.create_veth("vhost", "eth1", pod_netns.as_fd(), 1400);
        ensure!(again.is_err(), "a second veth named vhost");
        let host = netlink.require_link("vhost")?;
        ensure!(host.mtu == 1400 && !host.up, "{host:?}");
        netlink.set_link_up(host.index, Some(1450), Some(mac))?;
        let host = netlink.require_link("vhost")?;
        ensure!(
            host.up && host.mtu == 1450 && host.mac == Some(mac),
            "{host:?}"
        );
        let links = netlink.links()?;
        ensure!(links.get("vhost") == Some(&host), "{links:?}");

        // ethtool: a veth names its driver, and its TX checksum offload
        // turns off (what the daemon does to a veth uplink).
        ensure!(ethtool::driver("vhost")? == "veth");
        ethtool::turn_off("vhost", &[Offload::TxChecksum])?;
        ensure!(links.contains_key("lo") && !links.contains_key("eth0"));

        // An address twice: the second is "already there", fine.
        for _ in 0..2 {
            netlink.add_address(host.index, IpAddr::V4(ip4("10.99.0.1")), 24)?;
        }
        let expected: IpNet = "10.99.0.1/24".parse()?;
        ensure!(netlink.addresses(host.index)? == [expected]);

        // A route replaced, an on-link route via a gateway added twice.
        netlink.replace_route(pods.into(), None, host.index)?;
        netlink.replace_route(pods.into(), None, host.index)?;
        netlink.add_route_via(remote.into(), ip4("10.99.0.9").into(), host.index)?;
        netlink.add_route_via(remote.into(), ip4("10.99.0.9").into(), host.index)?;
        let routes = netlink.routes_v4()?;
        ensure!(routes.contains(&(pods, None, host.index)), "{routes:?}");
        ensure!(
            routes.contains(&(remote, Some(ip4("10.99.0.9")), host.index)),
            "{routes:?}"
        );

        // The kernel resolves next hops: the gateway, or the address itself.
        let via = netlink.next_hop(IpAddr::V4(ip4("10.97.1.1")))?;
        ensure!(
            via == NextHop {
                neighbour: IpAddr::V4(ip4("10.99.0.9")),
                ifindex: host.index
            },
            "{via:?}"
        );
        let direct = netlink.next_hop(IpAddr::V4(ip4("10.98.1.1")))?;
        ensure!(
            direct.neighbour == IpAddr::V4(ip4("10.98.1.1")),
            "{direct:?}"
        );
        ensure!(netlink.next_hop(IpAddr::V4(ip4("192.0.2.1"))).is_err());

        // A route deleted twice: the second is "already gone", fine.
        netlink.delete_route(pods.into(), host.index)?;
        netlink.delete_route(pods.into(), host.index)?;
        ensure!(!netlink.routes_v4()?.iter().any(|r| r.0 == pods));

        // IPv6: a route via a link-local gateway, replaced, listed, deleted.
        let pods6: Ipv6Net = "fd00:98::/64".parse()?;
        let gateway6: Ipv6Addr = "fe80::1".parse()?;
        for _ in 0..2 {
            netlink.replace_route(pods6.into(), Some(gateway6.into()), host.index)?;
        }
        let routes = netlink.ip_routes()?;
        ensure!(
            routes.contains(&(pods6.into(), Some(gateway6.into()), host.index)),
            "{routes:?}"
        );
        for _ in 0..2 {
            netlink.delete_route(pods6.into(), host.index)?;
        }
        ensure!(
            !netlink
                .ip_routes()?
                .iter()
                .any(|r| r.0 == IpNet::from(pods6))
        );
        Ok(host)
    })?;
    let features = node.run("ethtool", &["-k", "vhost"])?;
    ensure!(
        features.contains("tx-checksumming: off"),
        "TX checksum offload still on: {features}"
    );

    // Neighbours: a resolved (permanent) entry is listed; a probed one
    // exists in the kernel but is not resolved, so it is not.
    node.ip(&[
        "neigh",
        "add",
        "10.99.0.5",
        "lladdr",
        "02:00:00:00:00:05",
        "dev",
        "vhost",
    ])?;
    node.enter(|| {
        let netlink = Netlink::open()?;
        netlink.probe_neighbour(IpAddr::V4(ip4("10.99.0.7")), host.index)?;
        let table = netlink.neighbours()?;
        ensure!(
            table.get(&(IpAddr::V4(ip4("10.99.0.5")), host.index))
                == Some(&MacAddr([2, 0, 0, 0, 0, 5])),
            "{table:?}"
        );
        ensure!(!table.contains_key(&(IpAddr::V4(ip4("10.99.0.7")), host.index)));
        Ok(())
    })?;
    let probed = node.ip(&["neigh", "show", "to", "10.99.0.7", "dev", "vhost"])?;
    ensure!(!probed.trim().is_empty(), "the probe left no entry");

    // The pod end was made in the pod's namespace, with the MTU.
    let peer = pod.enter(|| Netlink::open()?.require_link("eth0"))?;
    ensure!(peer.mtu == 1400, "{peer:?}");

    // Deleting the host end takes the pod end with it; twice is fine.
    node.enter(|| {
        let netlink = Netlink::open()?;
        ensure!(netlink.delete_link("vhost")?);
        ensure!(!netlink.delete_link("vhost")?);
        Ok(())
    })?;
    ensure!(pod.enter(|| Netlink::open()?.link("eth0"))?.is_none());
    Ok(())
}
