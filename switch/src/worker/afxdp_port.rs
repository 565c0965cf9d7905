//! An AF_XDP port: its XDP program and a socket per RX queue, all on the
//! switch's shared buffer area. Frames cross between its rings and the
//! pipeline as [`Frame`]s: taken off the RX ring (the one `unsafe` step,
//! where the kernel gives a frame back), handed to the TX ring by value,
//! and freed from the completion ring.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrayvec::ArrayVec;
use nix::poll::{PollFd, PollFlags};
use podswitch_encap::DropReason;

use super::BATCH;
use super::pipeline::{MAX_PACKET_CHUNKS, Packet, Pipeline, Takes};
use super::port::{Port, TxContext};
use crate::afxdp::{Desc, XskSocket, XskStatistics};
use crate::drops::DropCause;
use crate::frame_budget::{FillBudget, FillGrowth};
use crate::frames::{Frame, FramePool};
use crate::stats::{KernelDrops, RingLevelsTotal, WorkerStats};
use crate::topology::PortId;
use crate::xdp::XdpProgram;

/// Longest wait for a removed port's in-flight transmissions to complete.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
/// Fewest missing frames worth a trip to the fill ring.
const REFILL_MIN: u32 = BATCH as u32 / 4;

/// An AF_XDP port: its XDP program and a socket per RX queue, each with
/// its fill budget.
pub struct AfXdpPort {
    program: Arc<Mutex<XdpProgram>>,
    sockets: Vec<XskSocket>,
    fill: Vec<FillBudget>,
    /// Each socket's `fill_ring_empty` at the last housekeeping.
    fill_empty_seen: Vec<u64>,
    received: Vec<Desc>,
    /// The frames of `received`, taken off the ring.
    batch: Vec<Frame>,
    completed: Vec<u64>,
    to_send: Vec<Desc>,
}

impl AfXdpPort {
    /// A port from its program (shared with the control plane, which
    /// reads the uplink's counters) and bound sockets, not yet registered
    /// in the program's XSKMAP: [`Port::start`] does that once the fill
    /// rings hold frames. Each socket keeps `fill` on its fill ring.
    pub fn new(
        program: Arc<Mutex<XdpProgram>>,
        sockets: Vec<XskSocket>,
        fill: FillBudget,
    ) -> AfXdpPort {
        AfXdpPort {
            program,
            fill: vec![fill; sockets.len()],
            fill_empty_seen: vec![0; sockets.len()],
            sockets,
            received: Vec::with_capacity(BATCH + MAX_PACKET_CHUNKS),
            batch: Vec::with_capacity(BATCH + MAX_PACKET_CHUNKS),
            completed: Vec::with_capacity(4 * BATCH),
            to_send: Vec::with_capacity(BATCH),
        }
    }

    /// Fill the rings of sockets `first..`, then register them in the XDP
    /// program, so frames are redirected only where frames can land.
    fn start_sockets(&mut self, frames: &mut FramePool, first: usize) -> anyhow::Result<()> {
        for s in first..self.sockets.len() {
            self.refill(frames, s);
        }
        let mut program = self.program.lock().unwrap_or_else(|e| e.into_inner());
        for socket in &self.sockets[first..] {
            program.register_socket(socket.queue(), socket.as_raw_fd())?;
        }
        Ok(())
    }

    /// Top up socket `s`'s fill ring to its budget.
    fn refill(&mut self, frames: &mut FramePool, s: usize) {
        let socket = &mut self.sockets[s];
        let want = self.fill[s]
            .target()
            .saturating_sub(socket.frames_held_for_rx())
            .min(socket.fill_free_slots());
        if want < REFILL_MIN {
            return;
        }
        let mut chunks = [0u64; 4 * BATCH];
        let mut n = 0;
        while n < (want as usize).min(chunks.len()) {
            let Some(chunk) = frames.take_for_fill() else {
                break;
            };
            chunks[n] = chunk;
            n += 1;
        }
        let given = socket.fill(&chunks[..n]);
        for &chunk in &chunks[given..n] {
            frames.unfilled(chunk);
        }
    }

    /// Take socket `s`'s completed transmissions back to the free list;
    /// how many.
    fn reclaim_completions(&mut self, frames: &mut FramePool, s: usize) -> usize {
        self.completed.clear();
        let n = self.sockets[s].complete(&mut self.completed, 4 * BATCH);
        for &addr in &self.completed {
            frames.completed(addr);
        }
        n
    }

    /// Gather a multi-buffer packet's frames into a buffer (giving the
    /// frames back) and hand it to the pipeline.
    fn gather(pipeline: &mut Pipeline, run: ArrayVec<Frame, MAX_PACKET_CHUNKS>, whole: bool) {
        let len: usize = run.iter().map(Frame::len).sum();
        let buffer = if whole {
            pipeline.buffers.alloc()
        } else {
            None
        };
        let Some(mut buffer) = buffer else {
            for frame in run {
                pipeline.frames.free(frame);
            }
            let cause = if whole {
                DropCause::NoFreeFrame
            } else {
                DropCause::IncompletePacket
            };
            return pipeline.refuse(len, cause);
        };
        let start = buffer.range().start;
        let memory = pipeline.buffers.memory_mut(&mut buffer);
        let mut end = start;
        for frame in run {
            let bytes = pipeline.frames.bytes(&frame);
            memory[end..end + bytes.len()].copy_from_slice(bytes);
            end += bytes.len();
            pipeline.frames.free(frame);
        }
        buffer.set_range(start..end);
        let super_frame = None;
        pipeline.dispatch(Packet::Large {
            buffer,
            super_frame,
        });
    }
}

impl Port for AfXdpPort {
    fn takes(&self) -> Takes {
        Takes::Frames
    }

    fn start(&mut self, frames: &mut FramePool) -> anyhow::Result<()> {
        self.start_sockets(frames, 0)
    }

    fn service(&mut self, frames: &mut FramePool, levels: &mut RingLevelsTotal) -> usize {
        let mut work = 0;
        for s in 0..self.sockets.len() {
            work += self.reclaim_completions(frames, s);
            self.refill(frames, s);
            let socket = &self.sockets[s];
            let l = socket.ring_levels();
            if l.tx > 0 {
                // Copy mode sends at most 32 frames per kick: keep kicking
                // while frames wait, and count it as work so the worker
                // does not sleep on them.
                let _ = socket.kick_tx();
                work += 1;
            }
            levels.fill += u64::from(l.fill);
            levels.rx += u64::from(l.rx);
            levels.tx += u64::from(l.tx);
            levels.completion += u64::from(l.completion);
        }
        work
    }

    fn receive(&mut self, pipeline: &mut Pipeline, growth: &FillGrowth) -> usize {
        let mut received = 0;
        for (socket, budget) in self.sockets.iter_mut().zip(self.fill.iter_mut()) {
            self.received.clear();
            let n = socket.recv(&mut self.received, BATCH);
            if n == 0 {
                continue;
            }
            budget.received(n, BATCH, growth);
            if socket.fill_needs_wakeup() {
                socket.kick_rx();
            }
            pipeline.stats.batch(n);
            received += n;
            let mut run: ArrayVec<Frame, MAX_PACKET_CHUNKS> = ArrayVec::new();
            let mut fits = true;
            self.batch.extend(self.received.iter().map(|&desc| {
                // SAFETY: `desc` came off this socket's RX ring just now:
                // the kernel gave its frame back, and nothing else holds it.
                unsafe { pipeline.frames.from_rx(desc) }
            }));
            pipeline.prefetch(self.batch.iter());
            for frame in self.batch.drain(..) {
                if !frame.continues() && run.is_empty() {
                    // The fast path: a frame in one buffer frame.
                    pipeline.dispatch(Packet::Frame(frame));
                    continue;
                }
                let last = !frame.continues();
                if let Err(overflow) = run.try_push(frame) {
                    // Longer than any packet the switch carries.
                    fits = false;
                    pipeline.frames.free(overflow.element());
                }
                if last {
                    if fits {
                        Self::gather(pipeline, std::mem::take(&mut run), true);
                    } else {
                        let len = run.iter().map(Frame::len).sum();
                        for frame in run.drain(..) {
                            pipeline.frames.free(frame);
                        }
                        pipeline.refuse(len, DropCause::Wire(DropReason::Oversize));
                    }
                    fits = true;
                }
            }
            if !run.is_empty() {
                // The kernel publishes a packet whole: never expected.
                Self::gather(pipeline, run, false);
            }
        }
        received
    }

    fn transmit(&mut self, id: PortId, queue: &mut Vec<Packet>, tx: &mut TxContext) -> usize {
        let count = queue.len();
        let socket = &mut self.sockets[0];
        let mut room = socket.tx_free_slots() as usize;
        self.to_send.clear();
        let mut packet: ArrayVec<Frame, MAX_PACKET_CHUNKS> = ArrayVec::new();
        for queued in queue.drain(..) {
            let Packet::Frame(frame) = queued else {
                // The pipeline sends an AF_XDP port frames only.
                tx.stats.dropped(id, DropCause::TxError);
                tx.release(queued);
                continue;
            };
            let last = !frame.continues();
            if packet.try_push(frame).is_err() {
                // A run longer than the pipeline makes: never expected.
                tx.stats.dropped(id, DropCause::TxError);
                for frame in packet.drain(..) {
                    tx.frames.free(frame);
                }
                continue;
            }
            if !last {
                continue;
            }
            if packet.len() <= room {
                room -= packet.len();
                let len = packet.iter().map(Frame::len).sum();
                for frame in packet.drain(..) {
                    self.to_send.push(tx.frames.to_tx(frame));
                }
                tx.stats.tx(id, len);
            } else {
                tx.stats.dropped(id, DropCause::TxRingFull);
                for frame in packet.drain(..) {
                    tx.frames.free(frame);
                }
            }
        }
        if !packet.is_empty() {
            // A run whose last frame never came: never expected.
            tx.stats.dropped(id, DropCause::TxError);
            for frame in packet {
                tx.frames.free(frame);
            }
        }
        let sent = socket.send(&self.to_send);
        debug_assert_eq!(sent, self.to_send.len(), "sent what the ring had room for");
        if sent > 0 && socket.tx_needs_wakeup() {
            let _ = socket.kick_tx();
        }
        count
    }

    fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) {
        for socket in &self.sockets {
            fds.push(PollFd::new(socket.as_fd(), PollFlags::POLLIN));
        }
    }

    fn publish_kernel_drops(&self, id: PortId, stats: &WorkerStats) {
        let mut total = KernelDrops::default();
        for socket in &self.sockets {
            if let Ok(s) = socket.statistics() {
                total += kernel_drops(&s);
            }
        }
        stats.kernel_drops(id, total);
    }

    /// Publish the kernel's counters; grow the fill budget of a socket
    /// whose ring the kernel found empty since the last look, and let the
    /// budgets of quiet sockets shrink.
    fn housekeeping(&mut self, id: PortId, stats: &WorkerStats, growth: &FillGrowth) {
        let mut total = KernelDrops::default();
        let budgets = self.fill.iter_mut().zip(&mut self.fill_empty_seen);
        for (socket, (budget, seen)) in self.sockets.iter().zip(budgets) {
            if let Ok(s) = socket.statistics() {
                total += kernel_drops(&s);
                let empty = s.rx_fill_ring_empty_descs;
                budget.starved(empty.saturating_sub(*seen), growth);
                *seen = empty;
            }
            budget.decay(growth);
        }
        stats.kernel_drops(id, total);
    }

    fn add_sockets(
        &mut self,
        sockets: Vec<XskSocket>,
        frames: &mut FramePool,
    ) -> anyhow::Result<()> {
        let first_new = self.sockets.len();
        let budget = self.fill[0].fresh();
        for socket in sockets {
            self.sockets.push(socket);
            self.fill.push(budget);
            self.fill_empty_seen.push(0);
        }
        self.start_sockets(frames, first_new)?;
        // Only a program installed after the queues appeared covers them.
        let registered: Vec<(u32, std::os::fd::RawFd)> = self
            .sockets
            .iter()
            .map(|s| (s.queue(), s.as_raw_fd()))
            .collect();
        self.program
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reinstall(&registered)
    }

    fn close(mut self: Box<Self>, frames: &mut FramePool, growth: &FillGrowth) {
        for budget in &mut self.fill {
            budget.release(growth);
        }
        {
            let mut program = self.program.lock().unwrap_or_else(|e| e.into_inner());
            for socket in &self.sockets {
                let _ = program.unregister_socket(socket.queue());
            }
        }
        let deadline = Instant::now() + DRAIN_TIMEOUT;
        while self.sockets.iter().any(|s| s.frames_held_for_tx() > 0) && Instant::now() < deadline {
            for s in 0..self.sockets.len() {
                self.reclaim_completions(frames, s);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for socket in self.sockets.drain(..) {
            self.completed.clear();
            socket.reclaim(&mut self.completed);
            for &addr in &self.completed {
                frames.reclaimed(addr);
            }
        }
    }
}

/// The kernel's counters of one socket as the switch reports them.
fn kernel_drops(s: &XskStatistics) -> KernelDrops {
    KernelDrops {
        rx_dropped: s.rx_dropped,
        rx_ring_full: s.rx_ring_full,
        fill_ring_empty: s.rx_fill_ring_empty_descs,
        invalid_descs: s.rx_invalid_descs + s.tx_invalid_descs,
    }
}
