//! The interface every kind of port gives its worker. The worker loop
//! knows ports only through [`Port`]: it services them, asks each to
//! receive a batch into the [`Pipeline`], asks each to transmit what the
//! pipeline queued for it, and sleeps on their descriptors. A new kind of
//! port (an uplink that hands segments to the kernel, say) is one more
//! implementation.

use nix::poll::PollFd;

use super::buffers::Buffers;
use super::pipeline::{Packet, Pipeline, Takes};
use crate::afxdp::XskSocket;
use crate::frame_budget::FillGrowth;
use crate::frames::FramePool;
use crate::stats::{RingLevelsTotal, WorkerStats};
use crate::topology::PortId;

/// What transmitting needs besides the queue: where queued packets' frames
/// and buffers go back to, and the counters.
pub struct TxContext<'a> {
    /// The worker's buffer frames.
    pub frames: &'a mut FramePool,
    /// The worker's large-packet buffers.
    pub buffers: &'a mut Buffers,
    /// The worker's counters.
    pub stats: &'a WorkerStats,
}

impl TxContext<'_> {
    /// The bytes of a queued packet.
    pub fn bytes<'p>(&'p self, packet: &'p Packet) -> &'p [u8] {
        super::pipeline::packet_bytes(self.frames, self.buffers, packet)
    }

    /// The bytes of a queued packet, to change before sending.
    pub fn bytes_mut<'p>(&'p mut self, packet: &'p mut Packet) -> &'p mut [u8] {
        let (memory, range) = super::pipeline::packet_bytes_mut(self.frames, self.buffers, packet);
        &mut memory[range]
    }

    /// Give a sent (or failed) packet's frames or buffer back.
    pub fn release(&mut self, packet: Packet) {
        match packet {
            Packet::Frame(frame) => self.frames.free(frame),
            Packet::Large { buffer, .. } | Packet::Tunnel { buffer, .. } => {
                self.buffers.free(buffer)
            }
        }
    }
}

/// A port as its worker drives it.
pub trait Port: Send {
    /// What the port can send, which decides the form packets take on
    /// their way to it.
    fn takes(&self) -> Takes;

    /// Get the port going before the worker polls it (an AF_XDP port fills
    /// its fill rings, then lets its XDP program redirect to its sockets).
    fn start(&mut self, _frames: &mut FramePool) -> anyhow::Result<()> {
        Ok(())
    }

    /// Take back completed transmissions, top up fill rings and push on
    /// sends the kernel has not finished, adding ring occupancy to
    /// `levels`; how much work that was.
    fn service(&mut self, _frames: &mut FramePool, _levels: &mut RingLevelsTotal) -> usize {
        0
    }

    /// Receive up to a batch and hand each packet to `pipeline`; how many
    /// packets (or work units) that was.
    fn receive(&mut self, pipeline: &mut Pipeline, growth: &FillGrowth) -> usize;

    /// Send the packets queued for port `id`, leaving `queue` empty; how
    /// many there were.
    fn transmit(&mut self, id: PortId, queue: &mut Vec<Packet>, tx: &mut TxContext) -> usize;

    /// The descriptors whose readability wakes the worker from sleep.
    fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>);

    /// The worker woke up: look at the device on the next pass whatever
    /// woke it.
    fn woken(&mut self) {}

    /// Publish the kernel's counters for port `id`.
    fn publish_kernel_drops(&self, _id: PortId, _stats: &WorkerStats) {}

    /// Once a second: publish the kernel's counters and let fill budgets
    /// of quiet sockets shrink.
    fn housekeeping(&mut self, id: PortId, stats: &WorkerStats, _growth: &FillGrowth) {
        self.publish_kernel_drops(id, stats);
    }

    /// Poll these new sockets too (an AF_XDP port gained RX queues).
    fn add_sockets(
        &mut self,
        _sockets: Vec<XskSocket>,
        _frames: &mut FramePool,
    ) -> anyhow::Result<()> {
        anyhow::bail!("not an AF_XDP port")
    }

    /// Stop: give back every frame the port holds, on its rings and in the
    /// kernel.
    fn close(self: Box<Self>, frames: &mut FramePool, growth: &FillGrowth);
}
