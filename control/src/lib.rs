//! The podswitch control protocol, shared by the daemon, its CLI and the
//! CNI plugin: one JSON object per line each way over the daemon's Unix
//! socket.
//!
//! - [`protocol`]: requests, answers and the types they carry (ports,
//!   peers, routes, the node's parameters);
//! - [`stats`]: counters as the `stats` request reports them;
//! - [`mac`]: MAC addresses as the protocol and the configuration write them;
//! - [`service`]: Kubernetes Services as the switch translates them;
//! - [`policy`]: Kubernetes NetworkPolicies and the pods and namespaces
//!   they select;
//! - [`client`]: the blocking client the CLI and the CNI plugin use.
//!
//! The daemon's server side stays in the `podswitch` crate. With the
//! `encap` feature, the types convert to `podswitch-encap`'s wire types.

pub mod client;
#[cfg(feature = "encap")]
mod encap;
pub mod mac;
pub mod policy;
pub mod protocol;
pub mod service;
pub mod stats;

pub use client::{Client, ClientError};
pub use mac::MacAddr;
pub use protocol::{Request, Response};

/// Where the control socket lives unless configured.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/podswitch/podswitch.sock";
