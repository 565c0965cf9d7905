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
//! a pod sends, [`Translator::inbound`] for one delivered to a pod, each
//! run as a worker's or a trace's [`Pass`].

pub mod conntrack;
pub mod flow;
pub mod fragments;
pub mod rewrite;
pub mod table;
mod translator;

pub use conntrack::{ConnTable, Timeouts};
pub use flow::FlowKey;
pub use rewrite::{L4Checksum, Nat};
pub use table::{
    Affinity, Backend, NodeAddress, Nodes, PortView, Selection, ServiceTable, check,
    usable_backends,
};
pub use translator::{Translator, Verdict};

/// What one pass of a stage over a packet may do to the state it reads
/// (connections, session affinity, counters): a worker's pass changes it,
/// a trace's only reads it. Both give the same verdicts and rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// A worker's: opens connections, notes the packets of those it finds
    /// (their clock, TCP flags, a reply), renews session affinity, counts.
    Live,
    /// `podswitch trace`'s: opens, notes, renews and counts nothing; a
    /// connection it finds is only looked at.
    DryRun,
}
