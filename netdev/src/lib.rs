//! The kernel's interfaces and namespaces as podswitch uses them, shared
//! by the daemon and the CNI plugin:
//!
//! - [`ethtool`]: an interface's driver, and turning offloads off;
//! - [`netlink`]: interfaces, addresses, routes and neighbours over a
//!   blocking rtnetlink socket, and the `disable_ipv6` sysctl;
//! - [`netns`]: running code inside another network namespace;
//! - [`tap`]: TAP devices, plain or with a virtio-net header and offloads;
//! - [`packet_socket`]: packet sockets on a veth's host end, with a
//!   virtio-net header;
//! - [`FrameDevice`]: what the two have in common for the switch.
//!
//! Every call acts on the calling thread's network namespace.

pub mod ethtool;
pub mod netlink;
pub mod netns;
pub mod packet_socket;
mod route_socket;
pub mod tap;

use std::io::{self, IoSlice};
use std::os::fd::AsFd;

/// A descriptor the switch reads and writes whole frames on, one per
/// system call, each after a virtio-net header if it has them: a TAP
/// device, or a packet socket (with its tc program, in the switch).
pub trait FrameDevice: AsFd + Send + Sync {
    /// Read one frame (after its virtio-net header, if any) into `buf`:
    /// its length, or `None` when none is waiting.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>>;

    /// Send one frame given in pieces (a virtio-net header, then the
    /// frame), with one system call.
    fn send_parts(&self, parts: &[IoSlice]) -> io::Result<()>;

    /// Whether every frame carries a virtio-net header.
    fn has_vnet_header(&self) -> bool;
}

impl FrameDevice for tap::TapDevice {
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        tap::TapDevice::recv(self, buf)
    }

    fn send_parts(&self, parts: &[IoSlice]) -> io::Result<()> {
        tap::TapDevice::send_parts(self, parts)
    }

    fn has_vnet_header(&self) -> bool {
        tap::TapDevice::has_vnet_header(self)
    }
}
