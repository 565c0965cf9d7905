//! Kubernetes Service translation for the podswitch data path, in five
//! pure pieces the switch drives:
//!
//! - [`flow`]: the 5-tuple of an IPv4 packet ([`FlowKey`]), read in place;
//! - [`table`]: the Service table built from the sources'
//!   [`podswitch_control::service::Service`] lists, which picks an endpoint
//!   for a new connection ([`ServiceTable::select`]);
//! - [`conntrack`]: the connection table shared by the workers, which finds
//!   both directions of a connection in one probe and expires them;
//! - [`rewrite`]: the in-place address and port rewrite with incremental
//!   checksums;
//! - [`fragments`]: the rewrites of fragmented datagrams, which their
//!   later fragments (without ports) follow.
//!
//! [`Translator`] puts them together: [`Translator::outbound`] for a packet
//! a pod sends, [`Translator::inbound`] for one delivered to a pod.

pub mod conntrack;
pub mod flow;
pub mod fragments;
pub mod rewrite;
pub mod table;
mod translator;

pub use conntrack::{ConnTable, Timeouts};
pub use flow::FlowKey;
pub use rewrite::{L4Checksum, Nat};
pub use table::{Affinity, Backend, NodeAddress, Nodes, PortView, Selection, ServiceTable, check};
pub use translator::{Translator, Verdict};
