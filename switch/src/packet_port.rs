//! A packet port's kernel side ([`PacketDevice`]): a packet socket
//! ([`PacketSocket`](podswitch_netdev::packet_socket::PacketSocket)) on
//! the host end of a pod's veth, and the tc program on that interface
//! (`bpf/packet_port.c`). The socket gets its copy of each frame before tc
//! runs; the program then drops the frame, so that the node's stack never
//! also routes the pod's traffic, answers its ARP or tracks its
//! connections.
//!
//! Attached through tcx (Linux 6.6 and later), which needs no qdisc and so
//! leaves the interface's `ingress` qdisc to other software (the
//! `bandwidth` CNI plugin adds one). As with the XDP programs, the link
//! lives as long as this object: the kernel removes it when the daemon
//! exits, even by SIGKILL, and a restarted daemon attaches it again.
//!
//! Interface names are those of the calling thread's network namespace.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result, bail};
use aya::Ebpf;
use aya::programs::{SchedClassifier, TcAttachType};
use aya::util::KernelVersion;
use podswitch_netdev::FrameDevice;
use podswitch_netdev::packet_socket::PacketSocket;

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/packet_port.o"));

/// The program's name in its object.
const PROGRAM: &str = "packet_port";

/// The program attached to one interface's ingress; dropping it detaches.
#[derive(Debug)]
pub struct PacketPortProgram {
    /// The program and its link.
    _ebpf: Ebpf,
}

/// Whether this kernel can take packet ports: tcx came with Linux 6.6 (a
/// kernel whose version cannot be read is tried).
pub fn supported() -> bool {
    !KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(6, 6, 0))
}

impl PacketPortProgram {
    /// Load the program and attach it to `ifname`'s ingress through tcx.
    pub fn attach(ifname: &str) -> Result<PacketPortProgram> {
        if !supported() {
            bail!(
                "a packet port needs tcx (Linux 6.6 or later) to keep the node's stack off \
                 {ifname}: give such pods a veth (\"podInterface\": \"veth\") or a TAP device"
            );
        }
        let mut ebpf = Ebpf::load(OBJECT).context("loading the packet port's tc object")?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(PROGRAM)
            .context("the packet port's tc object has no program")?
            .try_into()?;
        program
            .load()
            .context("verifying the packet port's tc program")?;
        program
            .attach(ifname, TcAttachType::Ingress)
            .with_context(|| format!("attaching the packet port's tc program to {ifname}"))?;
        Ok(PacketPortProgram { _ebpf: ebpf })
    }
}

/// A packet port's device: its socket, and the program that keeps the
/// node's stack off its interface for as long as the port lives.
#[derive(Debug)]
pub struct PacketDevice {
    socket: PacketSocket,
    _program: PacketPortProgram,
}

impl PacketDevice {
    /// Attach the program to `ifname` (index `ifindex`), then open the
    /// socket: no frame reaches both the socket and the node's stack.
    pub fn open(ifname: &str, ifindex: u32) -> Result<PacketDevice> {
        let program = PacketPortProgram::attach(ifname)?;
        let socket = PacketSocket::open(ifname, ifindex)?;
        Ok(PacketDevice {
            socket,
            _program: program,
        })
    }

    /// The socket.
    pub fn socket(&self) -> &PacketSocket {
        &self.socket
    }
}

impl FrameDevice for PacketDevice {
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        self.socket.recv(buf)
    }

    fn recv_many(&self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        self.socket.recv_many(bufs, lens)
    }

    fn reads_many(&self) -> bool {
        true
    }

    fn send_parts(&self, parts: &[IoSlice]) -> io::Result<()> {
        self.socket.send_parts(parts)
    }

    fn send_many(&self, frames: &[[IoSlice; 2]]) -> io::Result<usize> {
        self.socket.send_many(frames)
    }

    fn has_vnet_header(&self) -> bool {
        true
    }
}

impl AsFd for PacketDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}
