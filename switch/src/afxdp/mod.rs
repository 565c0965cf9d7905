//! AF_XDP ports: one buffer area ([`Umem`]) shared by every socket of the
//! switch, and [`XskSocket`]s bound to (interface, rx queue) with their own
//! fill, completion, RX and TX rings, written directly on the kernel ABI
//! (libc only).
//!
//! A frame received on one port leaves on another as the same descriptor:
//! [`XskSocket::recv`] on one socket, [`XskSocket::send`] on another, its
//! frame back through [`XskSocket::complete`] on the sender and
//! [`XskSocket::fill`] on whichever socket needs frames. Every frame is at
//! any moment the caller's or held by exactly one socket
//! ([`XskSocket::frames_held`]); [`XskSocket::reclaim`] returns a closing
//! socket's frames.
//!
//! Rules the kernel imposes (kernel 6.18):
//! - A socket sharing the UMEM binds with `XDP_SHARED_UMEM` only; copy mode
//!   and need_wakeup come from the socket it shares with (measured).
//! - One UMEM is all copy mode or all zero-copy (`xp_assign_dev_shared`
//!   forces the owner's mode on every shared socket). veth has no
//!   zero-copy, so a UMEM serving veth pod ports must run in copy mode:
//!   bind its owner with [`CopyMode::Copy`] when the owner sits on a NIC
//!   that has zero-copy, or every veth socket after it fails to bind.
//! - One socket per (device, queue); bind every active queue
//!   ([`active_rx_queues`]), since the XDP program redirects by queue.
//! - In copy mode TX happens only inside a syscall: kick after every batch.
//! - Received data starts [`Umem::rx_data_offset`] bytes into a chunk; the
//!   bytes before it are free for outer headers.
//! - Chunks are at most a page (larger ones are refused, hugetlb or not),
//!   so a packet larger than a chunk is multi-buffer: sockets bind with
//!   `XDP_USE_SG` (the UMEM's owner; sharers inherit it), a packet is a
//!   run of descriptors chained by `XDP_PKT_CONTD`, and the XDP programs
//!   must be loaded with `BPF_F_XDP_HAS_FRAGS` (`SEC("xdp.frags")`) or
//!   native XDP on a veth refuses a peer MTU over about 3.5 KB.
//!
//! Interface indices and names are those of the calling thread's network
//! namespace.

mod queues;
mod ring;
mod socket;
mod sys;
mod umem;

pub use queues::active_rx_queues;
pub use socket::{
    CopyMode, Desc, RingLevels, UmemShare, XDP_PKT_CONTD, XskConfig, XskSocket, XskStatistics,
};
pub use umem::{Umem, UmemConfig, XDP_PACKET_HEADROOM};
