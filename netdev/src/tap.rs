//! TAP devices (`/dev/net/tun`, IFF_TAP | IFF_NO_PI).
//!
//! Two kinds: the plain host port that joins the node's own stack to the
//! pod network (one frame per read, checksums complete; persistent, so
//! that what the node and other tools set on it outlives a daemon
//! restart), and the pod port
//! opened with a virtio-net header and offloads (IFF_VNET_HDR,
//! TUNSETOFFLOAD with CSUM and TSO4), through which the pod's kernel
//! hands the switch TCP super-frames of up to 64 KB with partial checksums
//! and takes super-frames back, as a virtio-net NIC does for a VM. (No
//! TSO6: the switch routes IPv6 frame by frame, so a dual-stack pod's
//! kernel cuts its IPv6 TCP segments itself.)
//!
//! A pod's TAP device lives in the pod's network namespace: the CNI plugin
//! creates it persistent ([`TapDevice::create_persistent`]) and the daemon
//! attaches to it from there ([`TapDevice::attach_in_netns`]) — again after
//! a restart, since a persistent device outlives the descriptor.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::netns::Namespace;

/// An open TAP device, non-blocking.
#[derive(Debug)]
pub struct TapDevice {
    file: File,
    name: String,
    vnet_header: bool,
}

/// Longest interface name, with its terminating NUL.
const IFNAMSIZ: usize = libc::IFNAMSIZ;

/// What the pod's kernel may hand the switch on an offloaded device:
/// partial checksums and IPv4 TCP super-frames.
const POD_OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4;

/// Length of the virtio-net header an offloaded device puts before every
/// frame (`struct virtio_net_hdr_v1`, which `podswitch-encap` parses).
pub const VNET_HEADER_LEN: usize = 12;

/// The largest frame an offloaded device hands over: a 64 KB IP packet
/// and its Ethernet header.
pub const MAX_SUPER_FRAME: usize = 65535 + 14;

impl TapDevice {
    /// Create (or attach to) the plain TAP device `name` in the current
    /// network namespace: no virtio-net header, no offloads.
    pub fn create(name: &str) -> io::Result<TapDevice> {
        let file = open_tun(name, libc::IFF_TAP | libc::IFF_NO_PI)?;
        Ok(TapDevice {
            file,
            name: name.to_string(),
            vnet_header: false,
        })
    }

    /// Create (or attach to) the TAP device `name` in the current network
    /// namespace with a virtio-net header on every frame and the pod
    /// offloads on.
    pub fn open_offloaded(name: &str) -> io::Result<TapDevice> {
        let file = open_tun(name, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR)?;
        set_vnet_header_len(&file, VNET_HEADER_LEN)?;
        set_offloads(&file, POD_OFFLOADS)?;
        Ok(TapDevice {
            file,
            name: name.to_string(),
            vnet_header: true,
        })
    }

    /// Attach, with offloads, to the TAP device `ifname` in the network
    /// namespace `netns` (a pod's). The descriptor keeps working wherever
    /// the calling thread is; only the attaching thread enters the
    /// namespace, and it exits afterwards.
    pub fn attach_in_netns(netns: &Namespace, ifname: &str) -> anyhow::Result<TapDevice> {
        netns.run(|| Ok(TapDevice::open_offloaded(ifname)?))
    }

    /// Create the TAP device `name` in the current network namespace,
    /// persistent (it stays when no descriptor holds it) and with a
    /// virtio-net header, for the daemon to attach to.
    pub fn create_persistent(name: &str) -> io::Result<()> {
        TapDevice::open_offloaded(name)?.persist()
    }

    /// Make the device persistent: it stays, with its addresses, routes
    /// and sysctls, when this descriptor is closed (the daemon exits), and
    /// the next [`TapDevice::create`] or [`TapDevice::open_offloaded`] of
    /// its name attaches to it. Deleting the link removes it.
    pub fn persist(&self) -> io::Result<()> {
        // SAFETY: TUNSETPERSIST takes its argument by value; the
        // descriptor is an attached tun descriptor.
        if unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETPERSIST,
                1 as libc::c_ulong,
            )
        } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether every frame carries a virtio-net header.
    pub fn has_vnet_header(&self) -> bool {
        self.vnet_header
    }

    /// Whether the device is gone (deleted, or its namespace destroyed):
    /// the descriptor then answers every call with EBADFD.
    pub fn is_detached(&self) -> bool {
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes an ifreq, which `request` is.
        let result = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNGETIFF, &mut request) };
        result < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EBADFD)
    }

    /// Read one frame (after its virtio-net header, on an offloaded
    /// device) into `buf`: its length, or `None` when none is waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match (&self.file).read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Send one frame to the kernel (with its virtio-net header first, on
    /// an offloaded device).
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        (&self.file).write(frame).map(drop)
    }

    /// Send one frame given in pieces (a virtio-net header, then the
    /// frame), with one system call.
    pub fn send_parts(&self, parts: &[IoSlice]) -> io::Result<()> {
        (&self.file).write_vectored(parts).map(drop)
    }
}

/// Set the length of the virtio-net header before every frame of the tun
/// descriptor `file` (`TUNSETVNETHDRSZ`).
pub fn set_vnet_header_len(file: &File, len: usize) -> io::Result<()> {
    let len = len as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which
    // points at one; `file` is an attached tun descriptor.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Turn on the offloads `TUN_F_*` of the tun descriptor `file`
/// (`TUNSETOFFLOAD`); a kernel that does not know one refuses with EINVAL.
pub fn set_offloads(file: &File, offloads: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; `file` is an
    // attached tun descriptor.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, offloads) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Open `/dev/net/tun` and attach it to the device `name` with `flags`.
pub fn open_tun(name: &str, flags: libc::c_int) -> io::Result<File> {
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?}: interface names are 1 to 15 bytes"),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `request` is,
    // and `file` is an open /dev/net/tun descriptor.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

impl AsFd for TapDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for TapDevice {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}
