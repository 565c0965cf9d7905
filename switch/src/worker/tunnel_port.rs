//! The tunnel port: one queue of the node-side TAP device opened for UDP
//! tunnel GSO ([`TunnelTap`]), or, where TAP devices lack it, a UDP socket
//! sending each super-frame cut into datagrams with one `UDP_SEGMENT`
//! send ([`TunnelSocket`]).
//!
//! - Out: the pipeline queues packets from TAP pods here already
//!   encapsulated, each with the tunnel-form virtio-net header that says
//!   how to finish it; the port writes header and packet with one
//!   `writev`, and the node's kernel routes the packet to the peer and
//!   cuts a super-frame into segments of the underlay MTU (in software,
//!   or a NIC with UDP tunnel TSO in hardware).
//! - In, where the node receives through its kernel
//!   ([`KernelReceive`](crate::kernel_receive::KernelReceive)): the
//!   uplink's TCP tunnel packets, merged by the kernel's GRO into
//!   super-packets of up to 64 KB (or arriving whole), are redirected
//!   into the device; the port reads them with their headers and the
//!   pipeline decapsulates them as it does the uplink's.

use nix::poll::{PollFd, PollFlags};
use podswitch_encap::virtio_net::{Checksum, TUNNEL_HEADER_LEN, TunnelHeader, TunnelOffload};
use std::os::fd::AsFd;

use super::pipeline::{Packet, Pipeline, Takes};
use super::port::{Port, TxContext};
use super::tap_port::{QuietPasses, ReadSize, receive_with_headers};
use crate::drops::DropCause;
use crate::frame_budget::FillGrowth;
use crate::frames::FramePool;
use crate::topology::PortId;
use crate::tunnel_socket::SendError;
use crate::tunnel_socket::TunnelSocket;
use crate::tunnel_tap::TunnelTap;
use podswitch_encap::DropReason;

/// What a tunnel port writes into.
pub enum TunnelDevice {
    /// A queue of the TAP device with UDP tunnel GSO: the kernel cuts.
    Tap(TunnelTap),
    /// A UDP socket: the switch cuts, the kernel sends a super-frame's
    /// datagrams in one go.
    Socket(TunnelSocket),
}

/// One worker's tunnel port.
pub struct TunnelPort {
    device: TunnelDevice,
    receives: bool,
    quiet: QuietPasses,
    read_size: ReadSize,
}

impl TunnelPort {
    /// A port writing into `device`, and reading from it when `receives`
    /// (the node's kernel hands the TAP device the peers' packets).
    pub fn new(device: TunnelDevice, receives: bool) -> TunnelPort {
        let receives = receives && matches!(device, TunnelDevice::Tap(_));
        TunnelPort {
            device,
            receives,
            quiet: QuietPasses::default(),
            read_size: ReadSize::new(false),
        }
    }
}

impl Port for TunnelPort {
    fn takes(&self) -> Takes {
        Takes::Encapsulated
    }

    fn receive(&mut self, pipeline: &mut Pipeline, _growth: &FillGrowth) -> usize {
        let TunnelDevice::Tap(device) = &self.device else {
            return 0;
        };
        if !self.receives || self.quiet.skip() {
            return 0;
        }
        let decapsulator = &pipeline.forwarder.topology.decapsulator;
        let read = receive_with_headers(
            pipeline,
            &mut self.read_size,
            |bufs, lens| podswitch_netdev::recv_each(|buf| device.recv(buf), bufs, lens),
            TUNNEL_HEADER_LEN,
            |packet| {
                let header = TunnelHeader::new_checked(packet)?;
                let offload = TunnelOffload::parse_received(&header)?;
                if offload.checksum == Checksum::Complete {
                    // Neither verified by the kernel (GRO verifies what it
                    // sees) nor made on this node: the switch checks it as
                    // it checks the uplink's packets.
                    decapsulator.decapsulate(header.frame())?;
                }
                Ok(offload)
            },
        );
        if read > 0 {
            pipeline.stats.batch(read);
        }
        self.quiet.after(read);
        read
    }

    fn transmit(&mut self, id: PortId, queue: &mut Vec<Packet>, tx: &mut TxContext) -> usize {
        let count = queue.len();
        for mut packet in queue.drain(..) {
            let Packet::Tunnel { header, .. } = &packet else {
                // The pipeline queues encapsulated packets only.
                tx.stats.dropped(id, DropCause::TxError);
                tx.release(packet);
                continue;
            };
            let header = *header;
            let bytes = tx.bytes_mut(&mut packet);
            let len = bytes.len();
            let sent = match &mut self.device {
                TunnelDevice::Tap(device) => {
                    let sent = device.send(&header.to_bytes(), bytes).is_ok();
                    if sent && header.offload.gso.is_some() {
                        // Passed through whole, for the kernel to cut.
                        tx.stats.super_frame_sent(id, 0);
                    }
                    sent
                }
                TunnelDevice::Socket(socket) => match socket.send(&header, bytes) {
                    Ok(datagrams) => {
                        if header.offload.gso.is_some() {
                            // Cut here, sent in one go.
                            tx.stats.segmented(id, datagrams);
                        }
                        true
                    }
                    Err(SendError::Malformed) => {
                        tx.stats
                            .dropped(id, DropCause::Wire(DropReason::BadVnetHeader));
                        tx.release(packet);
                        continue;
                    }
                    Err(SendError::Io(_)) => false,
                },
            };
            if sent {
                tx.stats.tx(id, len);
            } else {
                tx.stats.dropped(id, DropCause::TxError);
            }
            tx.release(packet);
        }
        count
    }

    fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) {
        if let (true, TunnelDevice::Tap(device)) = (self.receives, &self.device) {
            fds.push(PollFd::new(device.as_fd(), PollFlags::POLLIN));
        }
    }

    fn woken(&mut self) {
        self.quiet.reset();
    }

    fn close(self: Box<Self>, _frames: &mut FramePool, _growth: &FillGrowth) {}
}
