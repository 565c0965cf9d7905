//! The rtnetlink operations podswitch needs — interfaces, addresses,
//! routes, the kernel's neighbour table — as blocking calls: each builds a
//! netlink-packet-route message and sends it on a blocking socket
//! (`route_socket.rs`), which waits for the kernel's answer. No async
//! runtime.
//!
//! A connection acts on the network namespace it was opened in.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context, Result, bail};
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as LinkInfoAttribute,
    LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use podswitch_control::MacAddr;

use crate::route_socket::RouteSocket;

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

/// A connection to rtnetlink. Calls from several threads take turns.
pub struct Netlink {
    socket: Mutex<RouteSocket>,
}

/// Errno values the calls below treat as "already so".
const EEXIST: i32 = libc::EEXIST;
const ESRCH: i32 = libc::ESRCH;
const ENODEV: i32 = libc::ENODEV;

/// Whether `result` failed with `errno`.
fn failed_with<T>(result: &io::Result<T>, errno: i32) -> bool {
    matches!(result, Err(e) if e.raw_os_error() == Some(errno))
}

/// Turn IPv6 off on `ifname` in the caller's network namespace (through
/// `/proc/sys`, not netlink), so that the interface sends no router
/// solicitations or MLD reports into an IPv4-only pod network. Nothing to
/// do where the kernel has no IPv6.
pub fn disable_ipv6(ifname: &str) -> Result<()> {
    write_ipv6_conf(ifname, "disable_ipv6", "1")
}

/// Turn IPv6 on for `ifname` in the caller's network namespace, for
/// addresses and routes set by hand: no duplicate address detection (the
/// addresses are allocated, and the link-local one is usable at once) and
/// no router advertisements heeded.
pub fn enable_static_ipv6(ifname: &str) -> Result<()> {
    write_ipv6_conf(ifname, "disable_ipv6", "0")?;
    write_ipv6_conf(ifname, "accept_dad", "0")?;
    write_ipv6_conf(ifname, "accept_ra", "0")
}

/// Write `value` to `ifname`'s IPv6 setting `key` under `/proc/sys`;
/// nothing to do where the kernel has no IPv6.
fn write_ipv6_conf(ifname: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/{key}");
    match std::fs::write(&path, value) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("writing {value} to {path}"))
        }
        _ => Ok(()),
    }
}

impl Netlink {
    /// Open a connection in the current network namespace.
    pub fn open() -> Result<Netlink> {
        let socket = RouteSocket::open().context("opening an rtnetlink socket")?;
        Ok(Netlink {
            socket: Mutex::new(socket),
        })
    }

    /// Send `message` and wait for the kernel's acknowledgement: the
    /// messages it answered with, or its error (the errno in
    /// [`io::Error::raw_os_error`]).
    pub fn request(&self, message: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.exchange(message, 0)
    }

    /// Send `message` with `flags` besides NLM_F_REQUEST and NLM_F_ACK.
    fn exchange(
        &self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.socket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .request(message, flags)
    }

    /// The interface `name`, or `None` if there is none.
    pub fn link(&self, name: &str) -> Result<Option<LinkInfo>> {
        let mut query = LinkMessage::default();
        query
            .attributes
            .push(LinkAttribute::IfName(name.to_string()));
        let answers = self.request(RouteNetlinkMessage::GetLink(query));
        if failed_with(&answers, ENODEV) {
            return Ok(None);
        }
        let answers = answers.with_context(|| format!("looking up interface {name}"))?;
        Ok(answers.iter().find_map(|answer| match answer {
            RouteNetlinkMessage::NewLink(link) => Some(link_info(link)),
            _ => None,
        }))
    }

    /// Every interface, by name.
    pub fn links(&self) -> Result<HashMap<String, LinkInfo>> {
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .context("listing interfaces")?;
        Ok(answers
            .iter()
            .filter_map(|answer| {
                let RouteNetlinkMessage::NewLink(m) = answer else {
                    return None;
                };
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
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.header.flags |= LinkFlags::Up;
        link.header.change_mask |= LinkFlags::Up;
        if let Some(mtu) = mtu {
            link.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = mac {
            link.attributes.push(LinkAttribute::Address(mac.0.to_vec()));
        }
        self.request(RouteNetlinkMessage::SetLink(link))
            .with_context(|| format!("configuring interface {index}"))?;
        Ok(())
    }

    /// Set the largest super-frame the kernel hands an interface
    /// (`gso_max_size`).
    pub fn set_gso_max_size(&self, index: u32, size: u32) -> Result<()> {
        self.set_link_attribute(index, LinkAttribute::GsoMaxSize(size))
            .with_context(|| format!("setting gso_max_size {size} on interface {index}"))
    }

    /// Set how many packets interface `index`'s transmit queue holds
    /// (`txqueuelen`; for a TAP device, the queue the reader drains).
    pub fn set_tx_queue_len(&self, index: u32, packets: u32) -> Result<()> {
        self.set_link_attribute(index, LinkAttribute::TxQueueLen(packets))
            .with_context(|| format!("setting txqueuelen {packets} on interface {index}"))
    }

    /// Set one attribute of interface `index`.
    fn set_link_attribute(&self, index: u32, attribute: LinkAttribute) -> Result<()> {
        let mut link = LinkMessage::default();
        link.header.index = index;
        link.attributes.push(attribute);
        self.request(RouteNetlinkMessage::SetLink(link))?;
        Ok(())
    }

    /// Add an address to an interface; an address already there is fine.
    pub fn add_address(&self, index: u32, address: IpAddr, prefix_len: u8) -> Result<()> {
        let message = RouteNetlinkMessage::NewAddress(address_message(index, address, prefix_len));
        let result = self.exchange(message, NLM_F_CREATE | NLM_F_EXCL);
        if failed_with(&result, EEXIST) {
            return Ok(());
        }
        result.with_context(|| format!("adding {address}/{prefix_len} to interface {index}"))?;
        Ok(())
    }

    /// Route `destination` out of interface `index` — on-link, or `via` a
    /// gateway there — replacing any route to it.
    pub fn replace_route(&self, destination: IpNet, via: Option<IpAddr>, index: u32) -> Result<()> {
        let mut route = route_message(destination);
        if let Some(gateway) = via {
            route
                .attributes
                .push(RouteAttribute::Gateway(route_address(gateway)));
        }
        route.attributes.push(RouteAttribute::Oif(index));
        self.exchange(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .with_context(|| format!("routing {destination} to interface {index}"))?;
        Ok(())
    }

    /// Remove the route to `destination` out of interface `index`; a route
    /// already gone is fine.
    pub fn delete_route(&self, destination: IpNet, index: u32) -> Result<()> {
        let mut route = route_message(destination);
        route.attributes.push(RouteAttribute::Oif(index));
        let result = self.request(RouteNetlinkMessage::DelRoute(route));
        if failed_with(&result, ESRCH) {
            return Ok(());
        }
        result.with_context(|| format!("removing the route to {destination}"))?;
        Ok(())
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
        let mut peer_link = LinkMessage::default();
        peer_link.attributes = vec![
            LinkAttribute::IfName(peer.to_string()),
            LinkAttribute::NetNsFd(peer_netns.as_raw_fd()),
            LinkAttribute::Mtu(mtu),
        ];
        let mut link = LinkMessage::default();
        link.attributes = vec![
            LinkAttribute::IfName(host.to_string()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::LinkInfo(vec![
                LinkInfoAttribute::Kind(InfoKind::Veth),
                LinkInfoAttribute::Data(InfoData::Veth(InfoVeth::Peer(peer_link))),
            ]),
        ];
        self.exchange(
            RouteNetlinkMessage::NewLink(link),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .with_context(|| format!("creating the veth pair {host}/{peer}"))?;
        Ok(())
    }

    /// Delete the interface `name` (and its veth peer with it); false if
    /// there was none.
    pub fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(link) = self.link(name)? else {
            return Ok(false);
        };
        let mut message = LinkMessage::default();
        message.header.index = link.index;
        let result = self.request(RouteNetlinkMessage::DelLink(message));
        if failed_with(&result, ENODEV) {
            return Ok(false);
        }
        result.with_context(|| format!("deleting interface {name}"))?;
        Ok(true)
    }

    /// Route `destination` via `gateway` (of its family) out of interface
    /// `index`, the gateway on-link (it need not be in the interface's
    /// subnet; an IPv6 gateway is a link-local address, on-link anyway).
    pub fn add_route_via(&self, destination: IpNet, gateway: IpAddr, index: u32) -> Result<()> {
        let mut route = route_message(destination);
        if gateway.is_ipv4() {
            route.header.flags.insert(RouteFlags::Onlink);
        }
        route.attributes.extend([
            RouteAttribute::Gateway(route_address(gateway)),
            RouteAttribute::Oif(index),
        ]);
        let result = self.exchange(
            RouteNetlinkMessage::NewRoute(route),
            NLM_F_CREATE | NLM_F_EXCL,
        );
        if failed_with(&result, EEXIST) {
            return Ok(());
        }
        result.with_context(|| format!("routing {destination} via {gateway}"))?;
        Ok(())
    }

    /// The addresses on interface `index`.
    pub fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )
            .with_context(|| format!("listing the addresses of interface {index}"))?;
        Ok(answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewAddress(m) if m.header.index == index => Some(m),
                _ => None,
            })
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
        Ok(self
            .routes(AddressFamily::Inet)?
            .into_iter()
            .filter_map(|(destination, gateway, oif)| match (destination, gateway) {
                (IpNet::V4(d), None) => Some((d, None, oif)),
                (IpNet::V4(d), Some(IpAddr::V4(g))) => Some((d, Some(g), oif)),
                _ => None,
            })
            .collect())
    }

    /// The IPv4 and IPv6 routes of the main table: destination, gateway,
    /// interface.
    pub fn ip_routes(&self) -> Result<Vec<(IpNet, Option<IpAddr>, u32)>> {
        let mut routes = self.routes(AddressFamily::Inet)?;
        routes.extend(self.routes(AddressFamily::Inet6)?);
        Ok(routes)
    }

    /// The routes of `family` in the main table.
    fn routes(&self, family: AddressFamily) -> Result<Vec<(IpNet, Option<IpAddr>, u32)>> {
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetRoute(route_header(family)),
                NLM_F_DUMP,
            )
            .context("listing routes")?;
        Ok(answers
            .iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewRoute(m)
                    if m.header.table == RouteHeader::RT_TABLE_MAIN
                        && m.header.address_family == family =>
                {
                    Some(m)
                }
                _ => None,
            })
            .filter_map(|m| {
                let mut destination = None;
                let mut gateway = None;
                let mut oif = 0;
                for attribute in &m.attributes {
                    match attribute {
                        RouteAttribute::Destination(address) => destination = ip_of(address),
                        RouteAttribute::Gateway(address) => gateway = ip_of(address),
                        RouteAttribute::Oif(index) => oif = *index,
                        _ => {}
                    }
                }
                // No destination attribute: the default route.
                let destination = destination.unwrap_or(match family {
                    AddressFamily::Inet6 => Ipv6Addr::UNSPECIFIED.into(),
                    _ => Ipv4Addr::UNSPECIFIED.into(),
                });
                let prefix = IpNet::new(destination, m.header.destination_prefix_length).ok()?;
                Some((prefix, gateway, oif))
            })
            .collect())
    }

    /// Ask the kernel's routing table where packets to `destination` go.
    pub fn next_hop(&self, destination: IpAddr) -> Result<NextHop> {
        // A route *get* for one address (prefix length 0): the kernel
        // resolves it.
        let (family, address) = match destination {
            IpAddr::V4(v4) => (AddressFamily::Inet, RouteAddress::Inet(v4)),
            IpAddr::V6(v6) => (AddressFamily::Inet6, RouteAddress::Inet6(v6)),
        };
        let mut query = route_header(family);
        query.attributes.push(RouteAttribute::Destination(address));
        let answer = self
            .request(RouteNetlinkMessage::GetRoute(query))
            .with_context(|| format!("looking up the route to {destination}"))?
            .into_iter()
            .find_map(|answer| match answer {
                RouteNetlinkMessage::NewRoute(route) => Some(route),
                _ => None,
            })
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
        let answers = self
            .exchange(
                RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()),
                NLM_F_DUMP,
            )
            .context("reading the neighbour table")?;
        let mut table = HashMap::new();
        for answer in answers {
            let RouteNetlinkMessage::NewNeighbour(entry) = answer else {
                continue;
            };
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
        let mut entry = NeighbourMessage::default();
        entry.header.ifindex = ifindex;
        entry.header.state = NeighbourState::Delay;
        entry.header.flags = NeighbourFlags::Use;
        let destination = match address {
            IpAddr::V4(v4) => {
                entry.header.family = AddressFamily::Inet;
                NeighbourAddress::Inet(v4)
            }
            IpAddr::V6(v6) => {
                entry.header.family = AddressFamily::Inet6;
                NeighbourAddress::Inet6(v6)
            }
        };
        entry
            .attributes
            .push(NeighbourAttribute::Destination(destination));
        self.exchange(
            RouteNetlinkMessage::NewNeighbour(entry),
            NLM_F_CREATE | NLM_F_REPLACE,
        )
        .with_context(|| format!("asking the kernel to resolve {address}"))?;
        Ok(())
    }
}

/// An address for interface `index`, as `ip address add` makes it: local
/// and peer address the same, and for IPv4 the subnet's broadcast address.
fn address_message(index: u32, address: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.index = index;
    message.header.prefix_len = prefix_len;
    message.header.family = match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.attributes = vec![
        AddressAttribute::Address(address),
        AddressAttribute::Local(address),
    ];
    if let IpAddr::V4(v4) = address
        && let Ok(subnet) = Ipv4Net::new(v4, prefix_len)
        && prefix_len < 31
    {
        message
            .attributes
            .push(AddressAttribute::Broadcast(subnet.broadcast()));
    }
    message
}

/// A unicast route of the main table, as `ip route` makes it, with no
/// destination yet.
fn route_header(family: AddressFamily) -> RouteMessage {
    let mut route = RouteMessage::default();
    route.header.address_family = family;
    route.header.table = RouteHeader::RT_TABLE_MAIN;
    route.header.protocol = RouteProtocol::Static;
    route.header.scope = RouteScope::Universe;
    route.header.kind = RouteType::Unicast;
    route
}

/// `address` as a route attribute's address.
fn route_address(address: IpAddr) -> RouteAddress {
    match address {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

/// A route attribute's address, if it is an IP address.
fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some((*v4).into()),
        RouteAddress::Inet6(v6) => Some((*v6).into()),
        _ => None,
    }
}

/// A unicast route of the main table to `destination`.
fn route_message(destination: IpNet) -> RouteMessage {
    let (family, network) = match destination {
        IpNet::V4(net) => (AddressFamily::Inet, RouteAddress::Inet(net.network())),
        IpNet::V6(net) => (AddressFamily::Inet6, RouteAddress::Inet6(net.network())),
    };
    let mut route = route_header(family);
    route.header.destination_prefix_length = destination.prefix_len();
    route.attributes.push(RouteAttribute::Destination(network));
    route
}

/// What `message` says about its interface.
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
