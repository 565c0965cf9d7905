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

    /// Read up to `bufs.len()` frames, one into each buffer as
    /// [`FrameDevice::recv`] does, their lengths into `lens`: how many
    /// were read, none when none is waiting. This one reads a frame per
    /// system call; a device that can read several with one overrides it.
    fn recv_many(&self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        recv_each(|buf| self.recv(buf), bufs, lens)
    }

    /// Whether [`FrameDevice::recv_many`] reads several frames with one
    /// system call.
    fn reads_many(&self) -> bool {
        false
    }

    /// Send one frame given in pieces (a virtio-net header, then the
    /// frame), with one system call.
    fn send_parts(&self, parts: &[IoSlice]) -> io::Result<()>;

    /// Send frames, each given as a virtio-net header and the frame: how
    /// many were sent, in order (an error only when not even the first
    /// was). This one sends a frame per system call; a device that can
    /// send several with one overrides it.
    fn send_many(&self, frames: &[[IoSlice; 2]]) -> io::Result<usize> {
        let mut sent = 0;
        for parts in frames {
            match self.send_parts(parts) {
                Ok(()) => sent += 1,
                Err(e) if sent == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(sent)
    }

    /// Whether every frame carries a virtio-net header.
    fn has_vnet_header(&self) -> bool;
}

/// Read into `bufs` one frame each with `recv` (one read, `None` when
/// none is waiting) until none is waiting, their lengths into `lens`: how
/// many were read. An error after some were read ends the run; the next
/// read meets it again.
pub fn recv_each(
    mut recv: impl FnMut(&mut [u8]) -> io::Result<Option<usize>>,
    bufs: &mut [&mut [u8]],
    lens: &mut [usize],
) -> io::Result<usize> {
    let mut read = 0;
    for (buf, len) in bufs.iter_mut().zip(lens.iter_mut()) {
        match recv(buf) {
            Ok(Some(n)) => *len = n,
            Ok(None) => break,
            Err(e) if read == 0 => return Err(e),
            Err(_) => break,
        }
        read += 1;
    }
    Ok(read)
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
