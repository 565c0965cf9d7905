//! podswitch: a userspace pod network switch. The daemon (`podswitch
//! daemon`) and its CLI are in `main.rs`; this library holds the parts,
//! from the wire up:
//!
//! - [`afxdp`], [`xdp`], [`tap`], [`packet_port`]: ports — AF_XDP sockets
//!   on a shared buffer area with the project's XDP programs, TAP devices,
//!   and packet sockets on offloaded veths with their tc program;
//! - [`tunnel_tap`]: the kernel-offload path toward peers, a node-side TAP
//!   device with UDP tunnel GSO that takes encapsulated super-frames whole;
//! - [`frames`]: where every buffer frame is; [`frame_budget`]: how
//!   many each socket may keep on its fill ring;
//! - [`fib`] (IPv4), [`fib6`] (IPv6), [`topology`]: what the workers read
//!   without locks;
//! - [`forward`]: the decision for one frame; [`drops`]: why frames die;
//!   [`trace`]: that decision on one packet, reported stage by stage;
//! - [`worker`]: the pinned polling loops; [`stats`]: their counters;
//!   [`metrics`]: the counters served to Prometheus;
//! - [`control_plane`], [`control`], [`netlink`]: ports, peers and routes,
//!   the control socket, and the kernel state the switch reads and writes;
//! - [`config`], [`daemon`], [`mac`]: configuration and startup;
//! - [`node_nat`]: the nftables table that masquerades pods' traffic
//!   through the node (kube-proxy's Services, egress);
//!   [`external_services`]: the one that translates traffic from outside
//!   the pod network to Services when the switch replaces kube-proxy.
//!
//! What the CNI plugin shares with the daemon lives in two small crates,
//! re-exported here under their old paths: `podswitch-control` (the
//! protocol types and client in [`control`], [`mac`]) and
//! `podswitch-netdev` ([`netlink`], [`netns`], [`tap`]).

pub mod afxdp;
pub mod capture;
pub mod config;
pub mod control;
pub mod control_plane;
pub mod daemon;
pub mod drops;
pub mod external_services;
pub mod fib;
pub mod fib6;
pub mod forward;
pub mod frame_budget;
pub mod frames;
pub mod kernel_receive;
pub mod membership;
pub mod metrics;
pub mod node_nat;
pub mod packet_port;
pub mod policy;
pub mod saved_state;
pub mod services;
pub mod sources;
pub mod stats;
pub mod topology;
pub mod trace;
pub mod tunnel_socket;
pub mod tunnel_tap;
pub mod worker;
pub mod xdp;

pub use podswitch_control::mac;
pub use podswitch_netdev::{netlink, netns, tap};

// The TAP devices `tap` opens and the virtio-net headers `podswitch-encap`
// reads and writes on them must agree on the header's length.
const _: () = assert!(tap::VNET_HEADER_LEN == podswitch_encap::virtio_net::HEADER_LEN);
