//! The wire formats of the podswitch data path. No I/O, and no allocation
//! on the packet path.
//!
//! - Header views: Ethernet, ARP, IPv4, IPv6, ICMP, UDP, TCP from
//!   [`smoltcp::wire`] (re-exported as [`wire`]); 802.1Q tags in
//!   [`ethernet`]; [`vxlan`] (RFC 7348) and [`geneve`] (RFC 8926) written
//!   here in the same style, since no crate has them.
//! - [`template`]: per-peer outer headers, prepended in place by
//!   [`OuterTemplate::encapsulate`].
//! - [`decap`]: [`Decapsulator::decapsulate`] validates a tunnel packet and
//!   finds its inner frame, or returns a [`DropReason`].
//! - [`ipv4_options`]: IPv4 options, checked as the kernel checks those of
//!   a packet it receives.
//! - [`flow`]: the outer UDP source port from the inner flow.
//! - [`neighbor`]: ARP replies and IPv6 neighbour advertisements for the
//!   addresses the switch answers for.
//! - [`icmp`]: the ICMP port unreachable the switch answers a refused
//!   packet with.
//! - [`virtio_net`]: the virtio-net header of TAP ports opened with
//!   `IFF_VNET_HDR`; [`Offload`] says what it means (checksum state, GSO).
//! - [`segment`]: [`TcpSegments`] cuts a TCP/IPv4 super-frame into
//!   MSS-sized frames for ports without offloads;
//!   [`complete_checksum`](segment::complete_checksum) finishes a partial
//!   checksum.
//! - [`coalesce`]: [`Coalescer`], userspace GRO: in-order TCP/IPv4 segments
//!   merged into super-frames for TAP ports.
//!
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use podswitch_encap::{Decapsulator, OuterTemplate, TunnelKind, TunnelSpec, Vni};
//! use podswitch_encap::wire::EthernetAddress;
//!
//! let vni = Vni::new(1).unwrap();
//! let (a, b) = (Ipv4Addr::new(10, 1, 0, 11), Ipv4Addr::new(10, 1, 0, 12));
//! let template = OuterTemplate::new(&TunnelSpec {
//!     kind: TunnelKind::Vxlan,
//!     vni,
//!     udp_port: 4789,
//!     local_mac: EthernetAddress([2, 0, 0, 0, 0, 11]),
//!     next_hop_mac: EthernetAddress([2, 0, 0, 0, 0, 12]),
//!     vlan: None,
//!     local_ip: IpAddr::V4(a),
//!     remote_ip: IpAddr::V4(b),
//!     ttl: 64,
//!     geneve_options: &[],
//!     underlay_mtu: 1500,
//! })
//! .unwrap();
//! assert_eq!(template.pod_mtu(), 1450);
//!
//! // A 60-byte frame with 64 bytes of headroom before it.
//! let mut buf = [0u8; 124];
//! let packet = template.encapsulate(&mut buf, 64..124).unwrap();
//! assert_eq!(packet, 14..124);
//!
//! let decap = Decapsulator::new(TunnelKind::Vxlan, IpAddr::V4(b), vni);
//! let inner = decap.decapsulate(&buf[packet]).unwrap();
//! assert_eq!(inner.inner.len(), 60);
//! assert_eq!(inner.sender, IpAddr::V4(a));
//! ```

pub mod checksum;
pub mod coalesce;
pub mod decap;
pub mod drop_reason;
pub mod error;
pub mod ethernet;
pub mod flow;
pub mod geneve;
pub mod icmp;
pub mod ipv4_options;
pub mod neighbor;
pub mod segment;
pub mod template;
pub mod virtio_net;
pub mod vni;
pub mod vxlan;

pub use smoltcp::wire;

pub use coalesce::{CoalesceStats, Coalescer};
pub use decap::{Decapsulated, Decapsulator};
pub use drop_reason::DropReason;
pub use error::{Header, WireError};
pub use segment::TcpSegments;
pub use template::{OuterTemplate, TemplateError, TunnelKind, TunnelSpec};
pub use virtio_net::Offload;
pub use vni::Vni;
