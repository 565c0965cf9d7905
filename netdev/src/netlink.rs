//! The rtnetlink operations the switch needs — interfaces, addresses,
//! routes, the kernel's neighbour table — as blocking calls on top of the
//! `rtnetlink` crate (which is async) and a private single-threaded
//! runtime. Every call acts on the caller's network namespace.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use anyhow::{Context, Result, bail};
use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use podswitch_control::MacAddr;

/// An interface as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// MAC, for Ethernet-like interfaces.
    pub mac: Option<MacAddr>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Received frames the kernel dropped at this interface (for a veth,
    /// frames its peer sent that found the receive queue full).
    pub rx_dropped: u64,
    /// Frames the kernel dropped sending through this interface.
    pub tx_dropped: u64,
}

/// Where the kernel would send packets for an address: the neighbour to
/// resolve (the gateway, or the address itself when on-link) and the
/// interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// The neighbour whose MAC frames go to.
    pub neighbour: IpAddr,
    /// The interface they leave through.
    pub ifindex: u32,
}

/// A connection to rtnetlink.
pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

/// Errno values the calls below treat as "already so".
const EEXIST: i32 = libc::EEXIST;
const ESRCH: i32 = libc::ESRCH;
const ENODEV: i32 = libc::ENODEV;

fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|c| -c.get()),
        _ => None,
    }
}

/// Turn IPv6 off on `ifname` in the caller's network namespace (through
/// `/proc/sys`, not netlink), so that the interface sends no router
/// solicitations or MLD reports into an IPv4-only pod network. Nothing to
/// do where the kernel has no IPv6.
pub fn disable_ipv6(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("writing 1 to {path}"))
        }
        _ => Ok(()),
    }
}

impl Netlink {
    /// Open a connection in the current network namespace.
    pub fn open() -> Result<Netlink> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("netlink runtime")?;
        let (connection, handle, _) = runtime
            .block_on(async { rtnetlink::new_connection() })
            .context("opening an rtnetlink socket")?;
        runtime.spawn(connection);
        Ok(Netlink { runtime, handle })
    }

    /// The interface `name`, or `None` if there is none.
    pub fn link(&self, name: &str) -> Result<Option<LinkInfo>> {
        let mut request = std::pin::pin!(
            self.handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute()
        );
        match self.runtime.block_on(request.try_next()) {
            Ok(Some(message)) => Ok(Some(link_info(&message))),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("looking up interface {name}")),
        }
    }

    /// Every interface, by name.
    pub fn links(&self) -> Result<std::collections::HashMap<String, LinkInfo>> {
        let request = self.handle.link().get().execute();
        let messages: Vec<LinkMessage> = self
            .runtime
            .block_on(request.try_collect())
            .context("listing interfaces")?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                let name = m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })?;
                Some((name, link_info(m)))
            })
            .collect())
    }

    /// The interface `name`, or an error saying it does not exist.
    pub fn require_link(&self, name: &str) -> Result<LinkInfo> {
        self.link(name)?
            .with_context(|| format!("no interface named {name} in this network namespace"))
    }

    /// Bring an interface up, with an MTU and MAC if given.
    pub fn set_link_up(&self, index: u32, mtu: Option<u32>, mac: Option<MacAddr>) -> Result<()> {
        let mut builder = LinkUnspec::new_with_index(index).up();
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        if let Some(mac) = mac {
            builder = builder.address(mac.0.to_vec());
        }
        self.runtime
            .block_on(self.handle.link().set(builder.build()).execute())
            .with_context(|| format!("configuring interface {index}"))
    }

    /// Add an address to an interface; an address already there is fine.
    pub fn add_address(&self, index: u32, address: IpAddr, prefix_len: u8) -> Result<()> {
        let request = self
            .handle
            .address()
            .add(index, address, prefix_len)
            .execute();
        match self.runtime.block_on(request) {
            Err(e) if errno(&e) != Some(EEXIST) => Err(e)
                .with_context(|| format!("adding {address}/{prefix_len} to interface {index}")),
            _ => Ok(()),
        }
    }

    /// Route `destination` out of interface `index`, replacing any route to it.
    pub fn replace_route(&self, destination: Ipv4Net, index: u32) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .output_interface(index)
            .build();
        self.runtime
            .block_on(self.handle.route().add(route).replace().execute())
            .with_context(|| format!("routing {destination} to interface {index}"))
    }

    /// Remove the route to `destination` out of interface `index`; a route
    /// already gone is fine.
    pub fn delete_route(&self, destination: Ipv4Net, index: u32) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .output_interface(index)
            .build();
        match self
            .runtime
            .block_on(self.handle.route().del(route).execute())
        {
            Err(e) if errno(&e) != Some(ESRCH) => {
                Err(e).with_context(|| format!("removing the route to {destination}"))
            }
            _ => Ok(()),
        }
    }

    /// Create the veth pair `host` — `peer`, `host` in this namespace and
    /// `peer` directly in the namespace `peer_netns` refers to (so no
    /// temporary name can clash here), both with `mtu`.
    pub fn create_veth(
        &self,
        host: &str,
        peer: &str,
        peer_netns: BorrowedFd,
        mtu: u32,
    ) -> Result<()> {
        let peer_message = LinkUnspec::new_with_name(peer)
            .setns_by_fd(peer_netns.as_raw_fd())
            .mtu(mtu)
            .build();
        let message = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
            .name(host.to_string())
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message)))
            .build();
        self.runtime
            .block_on(self.handle.link().add(message).execute())
            .with_context(|| format!("creating the veth pair {host}/{peer}"))
    }

    /// Delete the interface `name` (and its veth peer with it); false if
    /// there was none.
    pub fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link(name)? else {
            return Ok(false);
        };
        match self
            .runtime
            .block_on(self.handle.link().del(link.index).execute())
        {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("deleting interface {name}")),
        }
    }

    /// Route `destination` via `gateway` out of interface `index`, the
    /// gateway on-link (it need not be in the interface's subnet).
    pub fn add_route_via(&self, destination: Ipv4Net, gateway: Ipv4Addr, index: u32) -> Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix_len())
            .gateway(gateway)
            .output_interface(index)
            .onlink()
            .build();
        match self
            .runtime
            .block_on(self.handle.route().add(route).execute())
        {
            Err(e) if errno(&e) != Some(EEXIST) => {
                Err(e).with_context(|| format!("routing {destination} via {gateway}"))
            }
            _ => Ok(()),
        }
    }

    /// The addresses on interface `index`.
    pub fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let messages: Vec<AddressMessage> = self
            .runtime
            .block_on(request.try_collect())
            .with_context(|| format!("listing the addresses of interface {index}"))?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                let prefix = m.header.prefix_len;
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => IpNet::new(*ip, prefix).ok(),
                    _ => None,
                })
            })
            .collect())
    }

    /// The IPv4 routes of the main table: destination, gateway, interface.
    pub fn routes_v4(&self) -> Result<Vec<(Ipv4Net, Option<Ipv4Addr>, u32)>> {
        let request = self
            .handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute();
        let messages: Vec<netlink_packet_route::route::RouteMessage> = self
            .runtime
            .block_on(request.try_collect())
            .context("listing routes")?;
        Ok(messages
            .iter()
            .filter(|m| m.header.table == libc::RT_TABLE_MAIN)
            .map(|m| {
                let mut destination = Ipv4Addr::UNSPECIFIED;
                let mut gateway = None;
                let mut oif = 0;
                for attribute in &m.attributes {
                    match attribute {
                        RouteAttribute::Destination(RouteAddress::Inet(v4)) => destination = *v4,
                        RouteAttribute::Gateway(RouteAddress::Inet(v4)) => gateway = Some(*v4),
                        RouteAttribute::Oif(index) => oif = *index,
                        _ => {}
                    }
                }
                let prefix = Ipv4Net::new(destination, m.header.destination_prefix_length)
                    .unwrap_or_default();
                (prefix, gateway, oif)
            })
            .collect())
    }

    /// Ask the kernel's routing table where packets to `destination` go.
    pub fn next_hop(&self, destination: IpAddr) -> Result<NextHop> {
        let mut route = match destination {
            IpAddr::V4(v4) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(v4, 32)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(v6, 128)
                .build(),
        };
        // A route *get* for one address: the kernel resolves it.
        route.header.destination_prefix_length = 0;
        let mut request = std::pin::pin!(self.handle.route().get(route).execute());
        let answer = self
            .runtime
            .block_on(request.try_next())
            .with_context(|| format!("looking up the route to {destination}"))?
            .with_context(|| format!("no route to {destination}"))?;
        let mut hop = NextHop {
            neighbour: destination,
            ifindex: 0,
        };
        for attribute in &answer.attributes {
            match attribute {
                RouteAttribute::Gateway(RouteAddress::Inet(v4)) => hop.neighbour = (*v4).into(),
                RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => hop.neighbour = (*v6).into(),
                RouteAttribute::Oif(index) => hop.ifindex = *index,
                _ => {}
            }
        }
        if hop.ifindex == 0 {
            bail!("the route to {destination} has no output interface");
        }
        Ok(hop)
    }

    /// The kernel's resolved neighbours: (address, interface) → MAC.
    pub fn neighbours(&self) -> Result<HashMap<(IpAddr, u32), MacAddr>> {
        let request = self.handle.neighbours().get().execute();
        let entries: Vec<_> = self
            .runtime
            .block_on(request.try_collect())
            .context("reading the neighbour table")?;
        let mut table = HashMap::new();
        for entry in entries {
            if matches!(
                entry.header.state,
                NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
            ) {
                continue;
            }
            let mut destination = None;
            let mut mac = None;
            for attribute in &entry.attributes {
                match attribute {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        destination = Some(IpAddr::V4(*v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        destination = Some(IpAddr::V6(*v6))
                    }
                    NeighbourAttribute::LinkLayerAddress(bytes) => {
                        mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
                    }
                    _ => {}
                }
            }
            if let (Some(destination), Some(mac)) = (destination, mac) {
                table.insert((destination, entry.header.ifindex), mac);
            }
        }
        Ok(table)
    }

    /// Have the kernel (re)resolve `address` on `ifindex` (NTF_USE): an
    /// unknown neighbour gets probed, a stale one re-validated. The switch
    /// sends its tunnel packets past the kernel, so it must keep the
    /// entries it relies on in use itself.
    pub fn probe_neighbour(&self, address: IpAddr, ifindex: u32) -> Result<()> {
        let request = self
            .handle
            .neighbours()
            .add(ifindex, address)
            .state(NeighbourState::Delay)
            .flags(NeighbourFlags::Use)
            .replace()
            .execute();
        self.runtime
            .block_on(request)
            .with_context(|| format!("asking the kernel to resolve {address}"))
    }
}

fn link_info(message: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: message.header.index,
        mac: None,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        rx_dropped: 0,
        tx_dropped: 0,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Address(bytes) => {
                info.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
            }
            LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
            LinkAttribute::Stats64(stats) => {
                info.rx_dropped = stats.rx_dropped;
                info.tx_dropped = stats.tx_dropped;
            }
            _ => {}
        }
    }
    info
}
