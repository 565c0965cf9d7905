//! The tunnel port: one queue of the node-side TAP device opened for UDP
//! tunnel GSO ([`TunnelTap`]). The pipeline queues packets from TAP pods
//! here already encapsulated, each with the tunnel-form virtio-net header
//! that says how to finish it; the port writes header and packet with one
//! `writev`, and the node's kernel routes the packet to the peer and cuts
//! a super-frame into segments of the underlay MTU (in software, or a NIC
//! with UDP tunnel TSO in hardware). Nothing comes back this way: the
//! peers' packets still arrive on the uplink.

use nix::poll::PollFd;

use super::pipeline::{Packet, Pipeline, Takes};
use super::port::{Port, TxContext};
use crate::drops::DropCause;
use crate::frame_budget::FillGrowth;
use crate::frames::FramePool;
use crate::topology::PortId;
use crate::tunnel_tap::TunnelTap;

/// A queue of the tunnel TAP device.
pub struct TunnelPort {
    device: TunnelTap,
}

impl TunnelPort {
    /// A port writing into `device`.
    pub fn new(device: TunnelTap) -> TunnelPort {
        TunnelPort { device }
    }
}

impl Port for TunnelPort {
    fn takes(&self) -> Takes {
        Takes::Encapsulated
    }

    fn receive(&mut self, _pipeline: &mut Pipeline, _growth: &FillGrowth) -> usize {
        0
    }

    fn transmit(&mut self, id: PortId, queue: &mut Vec<Packet>, tx: &mut TxContext) -> usize {
        let count = queue.len();
        for packet in queue.drain(..) {
            match &packet {
                Packet::Tunnel { header, .. } => {
                    let bytes = tx.bytes(&packet);
                    match self.device.send(&header.to_bytes(), bytes) {
                        Ok(()) => {
                            tx.stats.tx(id, bytes.len());
                            if header.offload.gso.is_some() {
                                // Passed through whole, for the kernel to cut.
                                tx.stats.super_frame_sent(id, 0);
                            }
                        }
                        Err(_) => tx.stats.dropped(id, DropCause::TxError),
                    }
                }
                // The pipeline queues encapsulated packets only.
                _ => tx.stats.dropped(id, DropCause::TxError),
            }
            tx.release(packet);
        }
        count
    }

    fn poll_fds<'a>(&'a self, _fds: &mut Vec<PollFd<'a>>) {}

    fn close(self: Box<Self>, _frames: &mut FramePool, _growth: &FillGrowth) {}
}
