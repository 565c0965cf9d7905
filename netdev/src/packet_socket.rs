//! A packet socket (`AF_PACKET`, `SOCK_RAW`) on one interface, with a
//! virtio-net header before every frame (`PACKET_VNET_HDR_SZ`): the way
//! the switch reads and writes the host end of a pod's veth when the pod
//! keeps its offloads. The pod's kernel hands the veth 64 KB TCP segments
//! with partial checksums; the socket gives them whole with a header that
//! says so, as an offloaded TAP device does, and takes super-frames back
//! the same way. Frames the socket sends itself are not read back
//! (`PACKET_IGNORE_OUTGOING`).
//!
//! A packet socket gets a copy of what arrives: the node's stack still sees
//! the frame unless something after the socket's tap drops it (the daemon
//! attaches a tc program that does, `bpf/packet_port.c`).

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::tap::VNET_HEADER_LEN;

/// The receive buffer: what the pod sent while the worker was busy, off
/// its CPU or asleep. A veth gives its pod no backpressure toward a
/// packet socket (it hands every frame on), so a pod flooding from the
/// worker's CPU has only this: 16 MiB holds some 6 000 frames of 1400
/// bytes (each charged over 2 KB), about 20 ms at the rate one worker
/// forwards them, where 4 MiB lost 9–19 % of such a flood in the lab
/// (decisions.md, "Offloaded veth pods"). Memory is taken only while
/// frames wait.
const RECEIVE_BUFFER_BYTES: libc::c_int = 16 << 20;

/// The send buffer: room for about 60 super-frames of 64 KB on their way
/// into the pod (a veth hands them on at once).
const SEND_BUFFER_BYTES: libc::c_int = 4 << 20;

/// Frames [`PacketSocket::recv_many`] reads, and
/// [`PacketSocket::send_many`] sends, with one system call at most.
pub const MANY_MAX: usize = 64;

/// `PACKET_STATISTICS` of `<linux/if_packet.h>`.
const PACKET_STATISTICS: libc::c_int = 6;

/// An open packet socket on one interface, non-blocking.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifname: String,
    /// Frames the kernel dropped at the socket's full receive queue, summed
    /// over reads of its statistics (each read resets the kernel's).
    dropped: AtomicU64,
}

impl PacketSocket {
    /// Open a socket on the interface `ifname` (index `ifindex`) of the
    /// calling thread's network namespace, every frame after a virtio-net
    /// header of [`VNET_HEADER_LEN`] bytes.
    pub fn open(ifname: &str, ifindex: u32) -> io::Result<PacketSocket> {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments; the result is checked
        // before it is owned.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(protocol),
            )
        };
        if raw < 0 {
            return Err(context(io::Error::last_os_error(), "opening", ifname));
        }
        // SAFETY: `raw` is a descriptor just opened and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let socket = PacketSocket {
            fd,
            ifname: ifname.to_string(),
            dropped: AtomicU64::new(0),
        };
        let header_len = VNET_HEADER_LEN as libc::c_int;
        socket.set(libc::SOL_PACKET, libc::PACKET_VNET_HDR_SZ, header_len)?;
        socket.set(libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)?;
        // Root may exceed the system's limits; without it the kernel's
        // maximum is used.
        for (forced, plain, bytes) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF, RECEIVE_BUFFER_BYTES),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF, SEND_BUFFER_BYTES),
        ] {
            if socket.set(libc::SOL_SOCKET, forced, bytes).is_err() {
                socket.set(libc::SOL_SOCKET, plain, bytes)?;
            }
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: bind(2) reads a sockaddr_ll of the length given, which
        // `address` is and outlives the call.
        let bound = unsafe {
            libc::bind(
                socket.fd.as_raw_fd(),
                (&raw const address).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if bound < 0 {
            return Err(context(io::Error::last_os_error(), "binding", ifname));
        }
        Ok(socket)
    }

    fn set(&self, level: libc::c_int, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
        // SAFETY: setsockopt(2) reads an int of the length given, which
        // `value` is and outlives the call.
        let set = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                option,
                (&raw const value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if set < 0 {
            let e = io::Error::last_os_error();
            return Err(context(
                e,
                &format!("setting option {option} on"),
                &self.ifname,
            ));
        }
        Ok(())
    }

    /// Read one frame, after its virtio-net header, into `buf`: its length
    /// with the header, or `None` when none is waiting. A frame longer than
    /// `buf` is cut short to its length (the caller tells by the length).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: recv(2) writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        match io::Error::last_os_error() {
            e if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            e => Err(e),
        }
    }

    /// Read up to `bufs.len()` frames (at most [`MANY_MAX`]), one
    /// into each buffer as [`PacketSocket::recv`] does, with one system
    /// call (`recvmmsg`), their lengths into `lens`: how many were read,
    /// none when none is waiting.
    pub fn recv_many(&self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        let count = bufs.len().min(lens.len()).min(MANY_MAX);
        // SAFETY: iovec and mmsghdr are plain old data; all-zero (null
        // pointers, zero lengths) is a valid value of each.
        let mut iovecs: [libc::iovec; MANY_MAX] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut messages: [libc::mmsghdr; MANY_MAX] = unsafe { std::mem::zeroed() };
        for ((iovec, message), buf) in iovecs.iter_mut().zip(&mut messages).zip(&mut *bufs) {
            iovec.iov_base = buf.as_mut_ptr().cast();
            iovec.iov_len = buf.len();
            message.msg_hdr.msg_iov = iovec;
            message.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: recvmmsg(2) fills at most `count` messages of
        // `messages`, each writing at most its one iovec's length into
        // the buffer it points at; messages, iovecs and buffers outlive
        // the call, and no timeout is passed.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                messages.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return match io::Error::last_os_error() {
                e if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                e => Err(e),
            };
        }
        let n = n as usize;
        for (len, message) in lens.iter_mut().zip(&messages[..n]) {
            *len = message.msg_len as usize;
        }
        Ok(n)
    }

    /// Send one frame given in pieces (its virtio-net header, then the
    /// frame) out of the interface, with one system call.
    pub fn send_parts(&self, parts: &[IoSlice]) -> io::Result<()> {
        // SAFETY: writev(2) reads `parts.len()` iovecs, which IoSlice is
        // ABI-compatible with, each pointing at memory that outlives the call.
        let n = unsafe {
            libc::writev(
                self.fd.as_raw_fd(),
                parts.as_ptr().cast(),
                parts.len() as libc::c_int,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Send frames, each given as its virtio-net header and the frame,
    /// with one system call (`sendmmsg`) for up to [`MANY_MAX`] of them:
    /// how many were sent, in order (an error only when not even the first
    /// was).
    pub fn send_many(&self, frames: &[[IoSlice; 2]]) -> io::Result<usize> {
        let count = frames.len().min(MANY_MAX);
        // SAFETY: mmsghdr is plain old data; all-zero (null pointers, zero
        // lengths) is a valid value.
        let mut messages: [libc::mmsghdr; MANY_MAX] = unsafe { std::mem::zeroed() };
        for (message, parts) in messages.iter_mut().zip(frames) {
            // IoSlice is ABI-compatible with iovec; sendmmsg only reads it.
            message.msg_hdr.msg_iov = parts.as_ptr().cast_mut().cast();
            message.msg_hdr.msg_iovlen = parts.len();
        }
        // SAFETY: sendmmsg(2) reads `count` messages of `messages`, each
        // reading the two iovecs it points at and the memory they point
        // at, all of which outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                self.fd.as_raw_fd(),
                messages.as_mut_ptr(),
                count as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Frames the kernel dropped because the socket's receive queue was
    /// full (the switch fell behind), since the socket was opened.
    pub fn dropped(&self) -> io::Result<u64> {
        let mut stats = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: getsockopt(2) writes at most `len` bytes into `stats`, a
        // tpacket_stats, and the length into `len`; both outlive the call.
        let got = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &mut len,
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let dropped = u64::from(stats.tp_drops);
        Ok(self.dropped.fetch_add(dropped, Ordering::Relaxed) + dropped)
    }
}

fn context(e: io::Error, what: &str, ifname: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what} a packet socket on {ifname}: {e}"))
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
