//! The one dispatch every received packet goes through, in stages as
//! VPP's graph nodes are:
//!
//! ```text
//!  port receive ─► dispatch: count ─► decide (forward.rs) ─┬─ drop (counted by reason)
//!                                                          ├─ to a port ─────────────┐
//!                                                          └─ to a peer: encapsulate ┤
//!                                        (a super-frame: segment first, unless the   │
//!                                         way out takes it whole)                    ▼
//!                                   output: as the port takes it (frames, a run of frames,
//!                                   bytes, super-frames) ─► its TX queue, or another
//!                                   worker's inbox ─► port transmit (coalescing for
//!                                   offloaded TAP ports) ─► the wire
//! ```
//!
//! [`Pipeline::dispatch`] is the one place a received packet is counted
//! and the one place a verdict is applied; a policy stage goes between
//! the decision and applying it. No I/O happens here: ports receive into
//! [`Packet`]s and transmit what is queued for them.

use std::ops::Range;

use arrayvec::ArrayVec;
use podswitch_encap::DropReason;
use podswitch_encap::flow::{IPPROTO_TCP, ip_protocol};
use podswitch_encap::segment::TcpSegments;
use podswitch_encap::virtio_net::{Checksum, GsoKind, Offload, TunnelOffload};
use podswitch_services::L4Checksum;
use podswitch_services::flow::{self, FlowKey};

use super::BATCH;
use super::buffers::{Buffer, Buffers};
use super::inbox::Inbox;
use crate::capture::Direction;
use crate::drops::DropCause;
use crate::forward::{Forwarder, Verdict};
use crate::frames::{Frame, FramePool};
use crate::stats::WorkerStats;
use crate::topology::{PeerId, PortId, Topology};

/// Most buffer frames one packet spans: a multi-buffer packet longer than
/// this is dropped as `oversize`. Four 4096-byte frames hold the largest
/// underlay frame the configuration accepts (9216 + 18).
pub const MAX_PACKET_CHUNKS: usize = 4;
/// Most segments one super-frame is cut into; one that would need more (a
/// tiny GSO size from a misbehaving pod) is dropped, so that one frame
/// cannot drain the buffer pool.
pub const MAX_SEGMENTS: usize = 128;

/// A packet in the switch: received, queued or about to be sent.
#[derive(Debug)]
pub enum Packet {
    /// A frame in one buffer frame; in a TX queue, also one frame of a
    /// multi-buffer packet (all but its last [`Frame::continues`]).
    Frame(Frame),
    /// A packet larger than a buffer frame, or read outside the buffer
    /// area, in a worker [`Buffer`].
    Large {
        /// Where it lies.
        buffer: Buffer,
        /// For a TCP super-frame, its offload header (checksum state and
        /// how to cut it); `None` for a frame.
        super_frame: Option<Offload>,
    },
    /// A frame or super-frame encapsulated for the tunnel port, in a
    /// buffer, with the tunnel-form virtio-net header that tells the
    /// node's kernel how to finish and cut it.
    Tunnel {
        /// Where the encapsulated packet lies.
        buffer: Buffer,
        /// The header to write before it.
        header: TunnelOffload,
    },
}

impl Packet {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Packet::Frame(frame) => frame.len(),
            Packet::Large { buffer, .. } | Packet::Tunnel { buffer, .. } => buffer.len(),
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Narrow it to `range` of its memory: the frame a verdict names,
    /// which is the inner frame of a decapsulated packet. A super-frame's
    /// offload follows its frame's start back past the outer headers
    /// ([`Offload::without_outer_headers`]), or the packet is refused.
    fn narrow(&mut self, range: Range<usize>) -> Result<(), DropReason> {
        if let Packet::Large {
            buffer,
            super_frame: Some(offload),
        } = self
        {
            let outer_len = range.start.saturating_sub(buffer.range().start);
            if outer_len > 0 {
                *offload = offload.without_outer_headers(outer_len)?;
            }
        }
        self.set_range(range);
        Ok(())
    }

    fn set_range(&mut self, range: Range<usize>) {
        match self {
            Packet::Frame(frame) => frame.set_range(range),
            Packet::Large { buffer, .. } | Packet::Tunnel { buffer, .. } => buffer.set_range(range),
        }
    }
}

/// What a port can send, which decides the form a packet takes on its way
/// there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// Buffer frames only (an AF_XDP socket's TX ring): a larger packet is
    /// copied into a run of frames, a super-frame cut into segments.
    Frames,
    /// Any frame, as bytes (a plain TAP device): a super-frame is cut.
    Bytes,
    /// Frames and TCP super-frames with their offload header (an offloaded
    /// TAP device, whose kernel takes super-frames).
    SuperFrames,
    /// Packets encapsulated for the kernel to finish and cut (the tunnel
    /// port): nothing else is sent there.
    Encapsulated,
}

/// A packet bound for another worker's port: its frames, handed over
/// together so that no other packet comes between them.
#[derive(Debug)]
pub struct Handoff {
    /// The output port.
    pub port: PortId,
    /// The packet's frames, in order.
    pub frames: ArrayVec<Frame, MAX_PACKET_CHUNKS>,
}

/// Packets to send this pass, by port, in the order of the worker's port
/// list.
#[derive(Default)]
pub struct TxQueues {
    ids: Vec<PortId>,
    takes: Vec<Takes>,
    pending: Vec<Vec<Packet>>,
}

impl TxQueues {
    /// A queue for port `id`, which takes packets as `takes` says.
    pub fn add(&mut self, id: PortId, takes: Takes) {
        self.ids.push(id);
        self.takes.push(takes);
        self.pending.push(Vec::new());
    }

    /// Remove queue `i` (as `Vec::swap_remove` does), returning what it
    /// held.
    pub fn swap_remove(&mut self, i: usize) -> Vec<Packet> {
        self.ids.swap_remove(i);
        self.takes.swap_remove(i);
        self.pending.swap_remove(i)
    }

    /// The queue of port `i` of the worker's list.
    pub fn pending_mut(&mut self, i: usize) -> &mut Vec<Packet> {
        &mut self.pending[i]
    }

    /// Where port `id`'s queue is, if this worker has the port.
    pub(super) fn find(&self, id: PortId) -> Option<usize> {
        self.ids.iter().position(|&p| p == id)
    }

    /// The tunnel port's queue, when packets from `in_port` to peers go
    /// there: `in_port` hands over super-frames and this worker has the
    /// tunnel port (`tunnel`, the topology's). Found once per batch.
    pub fn tunnel_for(&self, in_port: PortId, tunnel: Option<PortId>) -> Option<usize> {
        let in_port = self.find(in_port)?;
        if self.takes[in_port] != Takes::SuperFrames {
            return None;
        }
        self.find(tunnel?)
    }

    /// Queue a packet for the port at `i`.
    fn push(&mut self, i: usize, packet: Packet) {
        self.pending[i].push(packet);
    }
}

/// Where the segments of a cut super-frame go.
#[derive(Debug, Clone, Copy)]
enum CutTo {
    /// Out of a port.
    Port(PortId),
    /// Encapsulated, to a peer.
    Peer(PeerId),
}

/// One port's batch on its way through the pipeline: the snapshots it is
/// decided on and the worker state it is carried out with.
pub struct Pipeline<'a> {
    /// The decision, on this pass's topology and FIB snapshots.
    pub forwarder: Forwarder<'a>,
    /// The worker's counters.
    pub stats: &'a WorkerStats,
    /// Every worker's inbox, by worker index.
    pub inboxes: &'a [Inbox],
    /// The worker's buffer frames.
    pub frames: &'a mut FramePool,
    /// The worker's large-packet buffers.
    pub buffers: &'a mut Buffers,
    /// The worker's TX queues.
    pub queues: &'a mut TxQueues,
    /// The port the batch came in on.
    pub in_port: PortId,
    /// The tunnel port's queue when the batch's packets to peers go there
    /// ([`TxQueues::tunnel_for`]).
    pub tunnel: Option<usize>,
}

impl Pipeline<'_> {
    fn topology(&self) -> &Topology {
        self.forwarder.topology
    }

    /// Count a received packet: the one place, so that every packet a
    /// port took off its device is in `rx` whatever becomes of it.
    fn count_received(&self, len: usize) {
        self.stats.rx(self.in_port, len);
    }

    /// Prefetch the Service and policy stages' connection probes of a
    /// batch of received Ethernet frames, before they are dispatched one
    /// by one (see [`podswitch_services::Translator::prefetch`]): each
    /// frame's tuple is read once for both, and not at all while neither
    /// stage's table is large enough for prefetching to pay. A frame that
    /// continues in the next one is left out.
    pub fn prefetch<'f>(&self, frames: impl Iterator<Item = &'f Frame>) {
        let services = (self.forwarder.services.as_ref()).filter(|s| s.translator.wants_prefetch());
        let policy = (self.forwarder.policy.as_ref()).filter(|p| p.wants_prefetch());
        if services.is_none() && policy.is_none() {
            return;
        }
        let mut keys: ArrayVec<FlowKey, BATCH> = ArrayVec::new();
        let ipv4 = frames
            .filter(|frame| !frame.continues())
            .filter_map(|frame| {
                let bytes = self.frames.bytes(frame);
                (bytes.get(12..14) == Some(&[0x08, 0x00][..])).then(|| &bytes[14..])
            });
        // A port hands over at most a batch; more would only go unprefetched.
        keys.extend(ipv4.filter_map(flow::connection_key).take(BATCH));
        if let Some(stage) = services {
            stage.translator.prefetch(stage.table, keys.iter().copied());
        }
        if let Some(stage) = policy {
            stage.prefetch(keys);
        }
    }

    /// Count, decide and carry out the fate of a packet received on the
    /// batch's port. How much work it was: one, plus the segments a
    /// super-frame was cut into (a port reading super-frames stops once a
    /// batch's worth of frames is queued).
    pub fn dispatch(&mut self, mut packet: Packet) -> usize {
        self.count_received(packet.len());
        if let Some(tap) = self.forwarder.topology.capture(self.in_port) {
            tap.offer(
                Direction::Received,
                packet_bytes(self.frames, self.buffers, &packet),
            );
        }
        let verdict = {
            let Pipeline {
                forwarder,
                frames,
                buffers,
                in_port,
                ..
            } = self;
            let super_frame = match &packet {
                Packet::Large {
                    super_frame: Some(offload),
                    ..
                } => Some(match offload.checksum {
                    Checksum::Partial { .. } => L4Checksum::Partial,
                    Checksum::Complete | Checksum::Verified => L4Checksum::Full,
                }),
                _ => None,
            };
            let (buf, range) = packet_bytes_mut(frames, buffers, &mut packet);
            match super_frame {
                Some(checksum) => forwarder.forward_super_frame(*in_port, buf, range, checksum),
                None => forwarder.forward(*in_port, buf, range),
            }
        };
        // A policy stage goes here: it may turn any verdict into a drop.
        match verdict {
            Verdict::Drop(cause) => {
                self.drop_packet(packet, cause);
                1
            }
            Verdict::Transmit { port, frame } => {
                if let Err(reason) = packet.narrow(frame) {
                    self.drop_packet(packet, DropCause::Wire(reason));
                    return 1;
                }
                1 + self.output(port, packet)
            }
            Verdict::Answer { cause, port, frame } => {
                self.stats.dropped(self.in_port, cause);
                // The reply is a plain frame, its checksums complete,
                // whatever the packet it replaced was.
                if let Packet::Large { super_frame, .. } = &mut packet {
                    *super_frame = None;
                }
                packet.set_range(frame);
                1 + self.output(port, packet)
            }
            Verdict::ToPeer { peer, frame } => {
                packet.set_range(frame);
                1 + self.send_to_peer(peer, packet)
            }
        }
    }

    /// A packet the port received but cannot hand on (a bad offload
    /// header, a broken multi-buffer run, no buffer to read it into):
    /// counted as received, and dropped for `cause`.
    pub fn refuse(&mut self, len: usize, cause: DropCause) {
        self.count_received(len);
        self.stats.dropped(self.in_port, cause);
    }

    /// Drop `packet` for `cause`, counted on the port it came in on.
    fn drop_packet(&mut self, packet: Packet, cause: DropCause) {
        self.stats.dropped(self.in_port, cause);
        self.release(packet);
    }

    /// Give a packet's frames or buffer back.
    pub fn release(&mut self, packet: Packet) {
        match packet {
            Packet::Frame(frame) => self.frames.free(frame),
            Packet::Large { buffer, .. } | Packet::Tunnel { buffer, .. } => {
                self.buffers.free(buffer)
            }
        }
    }

    /// The encapsulation stage: a routed packet for `peer` goes out in its
    /// tunnel. A TCP packet from a pod that hands over super-frames, when
    /// this worker has the tunnel port, is encapsulated whole for the
    /// node's kernel to cut (every packet of the pod's TCP flows takes that
    /// way, so none overtakes another); anything else leaves by the uplink,
    /// in batches — a super-frame cut into segments first and each
    /// encapsulated. How many segments were made here.
    fn send_to_peer(&mut self, peer: PeerId, mut packet: Packet) -> usize {
        if let Some(tunnel) = self.tunnel {
            match self.send_to_tunnel(tunnel, peer, packet) {
                Some(unsent) => packet = unsent,
                None => return 0,
            }
        }
        if let Packet::Large {
            buffer,
            super_frame: Some(offload),
        } = packet
        {
            return self.segment(buffer, offload, CutTo::Peer(peer));
        }
        let encapsulated = {
            let Pipeline {
                forwarder,
                frames,
                buffers,
                ..
            } = self;
            let (buf, range) = packet_bytes_mut(frames, buffers, &mut packet);
            forwarder.encapsulate(peer, buf, range)
        };
        match encapsulated {
            Ok(range) => {
                packet.set_range(range);
                let uplink = self.topology().uplink;
                self.output(uplink, packet)
            }
            Err(cause) => {
                self.drop_packet(packet, cause);
                0
            }
        }
    }

    /// Encapsulate a packet from a TAP pod in its buffer and queue it on
    /// the tunnel port (queue `tunnel`). The packet comes back unchanged
    /// when it does not go that way: not TCP (it can never be a
    /// super-frame, and a `write` per frame into the node's stack costs
    /// more than the uplink's batches; the protocol is fixed for a flow,
    /// so a flow keeps one path), not in a buffer, no template for the
    /// peer, or a super-frame too long for one outer packet (from a pod
    /// whose `gso_max_size` was not lowered: it is cut here instead). A
    /// packet the encapsulation refuses for any other reason is dropped,
    /// counted.
    fn send_to_tunnel(&mut self, tunnel: usize, peer: PeerId, packet: Packet) -> Option<Packet> {
        let Packet::Large {
            mut buffer,
            super_frame,
        } = packet
        else {
            return Some(packet);
        };
        if super_frame.is_none() && ip_protocol(self.buffers.bytes(&buffer)) != Some(IPPROTO_TCP) {
            return Some(Packet::Large {
                buffer,
                super_frame,
            });
        }
        let Some(template) = self
            .forwarder
            .topology
            .peer(peer)
            .and_then(|p| p.tunnel_template.as_ref())
        else {
            return Some(Packet::Large {
                buffer,
                super_frame,
            });
        };
        let offload = super_frame.unwrap_or(Offload::NONE);
        let range = buffer.range();
        let memory = self.buffers.memory_mut(&mut buffer);
        match template.encapsulate_offloaded(memory, range, &offload) {
            Ok((packet, header)) => {
                buffer.set_range(packet);
                self.queues.push(tunnel, Packet::Tunnel { buffer, header });
                None
            }
            Err(DropReason::Oversize) if super_frame.is_some() => Some(Packet::Large {
                buffer,
                super_frame,
            }),
            Err(reason) => {
                self.buffers.free(buffer);
                self.stats.dropped(self.in_port, DropCause::Wire(reason));
                None
            }
        }
    }

    /// The output stage: put `packet` in the form `port` takes and queue
    /// it there (on this worker, or through its worker's inbox, which
    /// takes buffer frames only). How many segments a cut made.
    fn output(&mut self, port: PortId, packet: Packet) -> usize {
        let local = self.queues.find(port);
        let takes = local.map_or(Takes::Frames, |i| self.queues.takes[i]);
        match packet {
            Packet::Frame(frame) => {
                let mut run = ArrayVec::new();
                run.push(frame);
                self.queue_frames(port, local, run);
                0
            }
            Packet::Large {
                buffer,
                super_frame: Some(offload),
            } => match (local, takes) {
                (Some(i), Takes::SuperFrames) => {
                    let super_frame = Some(offload);
                    self.queues.push(
                        i,
                        Packet::Large {
                            buffer,
                            super_frame,
                        },
                    );
                    0
                }
                _ => self.segment(buffer, offload, CutTo::Port(port)),
            },
            Packet::Large {
                buffer,
                super_frame: None,
            } => match (local, takes) {
                (Some(i), Takes::Bytes | Takes::SuperFrames) => {
                    let super_frame = None;
                    self.queues.push(
                        i,
                        Packet::Large {
                            buffer,
                            super_frame,
                        },
                    );
                    0
                }
                _ => {
                    self.copy_to_frames(port, local, buffer);
                    0
                }
            },
            // Made only for the tunnel port, and queued there directly.
            tunneled @ Packet::Tunnel { .. } => {
                self.drop_packet(tunneled, DropCause::TxError);
                0
            }
        }
    }

    /// Queue the frames of one packet for `port`: on this worker's queue
    /// (`local`), or through its owner's inbox.
    fn queue_frames(
        &mut self,
        port: PortId,
        local: Option<usize>,
        run: ArrayVec<Frame, MAX_PACKET_CHUNKS>,
    ) {
        if let Some(i) = local {
            for frame in run {
                self.queues.push(i, Packet::Frame(frame));
            }
            return;
        }
        let owner = self.topology().port(port).map(|p| p.worker);
        let Some(inbox) = owner.and_then(|w| self.inboxes.get(w)) else {
            self.stats.dropped(self.in_port, DropCause::PortGone);
            for frame in run {
                self.frames.free(frame);
            }
            return;
        };
        for frame in &run {
            self.frames.to_inbox(frame);
        }
        if let Err(refused) = inbox.push(Handoff { port, frames: run }) {
            self.stats.dropped(self.in_port, DropCause::TxRingFull);
            for frame in refused.frames {
                self.frames.free_queued(frame);
            }
        }
    }

    /// Copy a packet from a buffer into as many buffer frames as it needs
    /// (whole frames from their start), give the buffer back and queue
    /// them for `port` as one packet: a multi-buffer packet when it spans
    /// several.
    fn copy_to_frames(&mut self, port: PortId, local: Option<usize>, buffer: Buffer) {
        let chunk_size = self.frames.chunk_size();
        let bytes = self.buffers.bytes(&buffer);
        if bytes.is_empty() || bytes.len().div_ceil(chunk_size) > MAX_PACKET_CHUNKS {
            self.buffers.free(buffer);
            return self
                .stats
                .dropped(self.in_port, DropCause::Wire(DropReason::Oversize));
        }
        let mut run: ArrayVec<Frame, MAX_PACKET_CHUNKS> = ArrayVec::new();
        for piece in bytes.chunks(chunk_size) {
            let Some(mut frame) = self.frames.alloc() else {
                break;
            };
            self.frames.chunk_mut(&mut frame)[..piece.len()].copy_from_slice(piece);
            frame.set_range(0..piece.len());
            frame.set_continues(true);
            run.push(frame);
        }
        let complete = run.len() == bytes.len().div_ceil(chunk_size);
        self.buffers.free(buffer);
        if !complete {
            self.stats.dropped(self.in_port, DropCause::NoFreeFrame);
            for frame in run {
                self.frames.free(frame);
            }
            return;
        }
        if let Some(last) = run.last_mut() {
            last.set_continues(false);
        }
        self.queue_frames(port, local, run);
    }

    /// The segmentation stage: cut the routed TCP super-frame in `buffer`
    /// into segments of its GSO size, each in a buffer frame of its own
    /// (or a buffer, past a buffer frame's room: a jumbo MSS), and send
    /// each to `to`. How many segments it made.
    fn segment(&mut self, mut buffer: Buffer, offload: Offload, to: CutTo) -> usize {
        let Some(gso) = offload.gso.filter(|gso| gso.kind == GsoKind::TcpV4) else {
            self.buffers.free(buffer);
            self.stats.dropped(self.in_port, DropCause::NotIpv4);
            return 0;
        };
        // The super-frame's memory is lent out while segments are written
        // from it into frames and other buffers.
        let memory = self.buffers.lend(&mut buffer);
        let made = match TcpSegments::new(&memory[buffer.range()], gso.size) {
            Ok(segments) if segments.count() <= MAX_SEGMENTS => {
                self.stats.segmented(self.in_port, segments.count());
                for i in 0..segments.count() {
                    if let Some(segment) = self.write_segment(&segments, i) {
                        match to {
                            CutTo::Port(port) => {
                                self.output(port, segment);
                            }
                            CutTo::Peer(peer) => {
                                self.send_to_peer(peer, segment);
                            }
                        }
                    }
                }
                segments.count()
            }
            Ok(_) => {
                let cause = DropCause::Wire(DropReason::Oversize);
                self.stats.dropped(self.in_port, cause);
                0
            }
            Err(reason) => {
                self.stats.dropped(self.in_port, DropCause::Wire(reason));
                0
            }
        };
        self.buffers.give_back(&mut buffer, memory);
        self.buffers.free(buffer);
        made
    }

    /// Write segment `i` into a buffer frame after its headroom, or a
    /// buffer when it is larger; `None` (counted) when there is no room.
    fn write_segment(&mut self, segments: &TcpSegments, i: usize) -> Option<Packet> {
        let len = segments.segment_len(i);
        let written = if len <= self.frames.room() {
            self.frames.alloc().map(|mut frame| {
                let start = self.frames.headroom();
                let written = segments.write(i, &mut self.frames.chunk_mut(&mut frame)[start..]);
                if let Some(n) = written {
                    frame.set_range(start..start + n);
                }
                (Packet::Frame(frame), written)
            })
        } else {
            self.buffers.alloc().map(|mut buffer| {
                let start = buffer.range().start;
                let written = segments.write(i, &mut self.buffers.memory_mut(&mut buffer)[start..]);
                if let Some(n) = written {
                    buffer.set_range(start..start + n);
                }
                let super_frame = None;
                (
                    Packet::Large {
                        buffer,
                        super_frame,
                    },
                    written,
                )
            })
        };
        match written {
            Some((packet, Some(_))) => Some(packet),
            Some((packet, None)) => {
                self.drop_packet(packet, DropCause::Wire(DropReason::Oversize));
                None
            }
            None => {
                self.stats.dropped(self.in_port, DropCause::NoFreeFrame);
                None
            }
        }
    }
}

/// The bytes of a packet.
pub(super) fn packet_bytes<'a>(
    frames: &'a FramePool,
    buffers: &'a Buffers,
    packet: &'a Packet,
) -> &'a [u8] {
    match packet {
        Packet::Frame(frame) => frames.bytes(frame),
        Packet::Large { buffer, .. } | Packet::Tunnel { buffer, .. } => buffers.bytes(buffer),
    }
}

/// The memory a packet lies in (its whole buffer frame or buffer, headroom
/// included) and where in it the packet is.
pub(super) fn packet_bytes_mut<'a>(
    frames: &'a FramePool,
    buffers: &'a mut Buffers,
    packet: &'a mut Packet,
) -> (&'a mut [u8], Range<usize>) {
    match packet {
        Packet::Frame(frame) => {
            let range = frame.range();
            (frames.chunk_mut(frame), range)
        }
        Packet::Large { buffer, .. } | Packet::Tunnel { buffer, .. } => {
            let range = buffer.range();
            (buffers.memory_mut(buffer), range)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
    use nix::sys::eventfd::{EfdFlags, EventFd};
    use podswitch_encap::virtio_net::Gso;
    use podswitch_encap::wire::EthernetAddress;
    use podswitch_encap::{Decapsulator, OuterTemplate, TunnelKind, TunnelSpec, Vni};

    use super::*;
    use crate::afxdp::{Umem, UmemConfig};
    use crate::fib::Ipv4Lpm;
    use crate::frames::FrameLedger;
    use crate::mac::MacAddr;
    use crate::stats::port_report;
    use crate::topology::{PeerView, PortRole, PortView, RouteTarget};

    const ROUTER: MacAddr = MacAddr([0x0a, 0x70, 10, 1, 0, 11]);
    const PEER_VTEP_MAC: MacAddr = MacAddr([0x0a, 0x70, 10, 1, 0, 12]);
    const NODE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 11);
    const PEER_NODE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 12);
    const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 7);
    const UPLINK: PortId = PortId(0);
    const HOST: PortId = PortId(1);
    /// Pods: an AF_XDP pod, a TAP pod with offloads, and an AF_XDP pod
    /// of another worker.
    const POD_A: (PortId, [u8; 4]) = (PortId(2), [10, 244, 1, 5]);
    const POD_B: (PortId, [u8; 4]) = (PortId(3), [10, 244, 1, 6]);
    const POD_ELSEWHERE: (PortId, [u8; 4]) = (PortId(4), [10, 244, 1, 7]);
    const FRAMES: u32 = 256;

    fn pod_mac(ip: [u8; 4]) -> MacAddr {
        MacAddr([0x0a, 0x58, ip[0], ip[1], ip[2], ip[3]])
    }

    fn pod_view(name: &str, (_, ip): (PortId, [u8; 4]), worker: usize) -> Option<PortView> {
        Some(PortView {
            ip6: None,
            name: name.into(),
            role: PortRole::Pod,
            mac: pod_mac(ip),
            ip: Some(ip.into()),
            worker,
        })
    }

    /// A node as forward.rs's tests have it, with a peer 10.1.0.12 holding
    /// 10.244.2.0/24 behind a 1500-byte VXLAN underlay.
    struct Node {
        topology: Topology,
        fib: Ipv4Lpm<RouteTarget>,
        frames: FramePool,
        buffers: Buffers,
        queues: TxQueues,
        stats: WorkerStats,
        inboxes: Vec<Inbox>,
    }

    impl Node {
        fn new() -> Node {
            let template = OuterTemplate::new(&TunnelSpec {
                kind: TunnelKind::Vxlan,
                vni: Vni::new(1).unwrap(),
                udp_port: 4789,
                local_mac: EthernetAddress([2, 0, 0, 0, 0, 11]),
                next_hop_mac: EthernetAddress([2, 0, 0, 0, 0, 12]),
                vlan: None,
                local_ip: IpAddr::V4(NODE),
                remote_ip: IpAddr::V4(PEER_NODE),
                ttl: 64,
                geneve_options: &[],
                underlay_mtu: 1500,
            })
            .unwrap();
            let mut peer_by_vtep = HashMap::default();
            peer_by_vtep.insert(IpAddr::V4(PEER_NODE), PeerId(0));
            let uplink = PortView {
                ip6: None,
                name: "ul0".into(),
                role: PortRole::Uplink,
                mac: MacAddr([2, 0, 0, 0, 0, 11]),
                ip: None,
                worker: 0,
            };
            let host = PortView {
                ip6: None,
                name: "podsw0".into(),
                role: PortRole::Host,
                mac: MacAddr([2, 0, 0, 0, 0, 0x99]),
                ip: None,
                worker: 0,
            };
            let topology = Topology {
                fib6: Default::default(),
                host_ipv6: false,
                router_mac: ROUTER,
                gateway: Ipv4Addr::new(10, 244, 1, 1),
                pod_mtu: 1450,
                decapsulator: Decapsulator::new(
                    TunnelKind::Vxlan,
                    IpAddr::V4(NODE),
                    Vni::new(1).unwrap(),
                ),
                uplink: UPLINK,
                host: Some(HOST),
                tunnel: None,
                ports: vec![
                    Some(uplink),
                    Some(host),
                    pod_view("veth-a", POD_A, 0),
                    pod_view("tap-b", POD_B, 0),
                    pod_view("veth-c", POD_ELSEWHERE, 1),
                ],
                peers: vec![Some(PeerView {
                    node_ip: IpAddr::V4(PEER_NODE),
                    vtep_mac: PEER_VTEP_MAC,
                    template: Some(template),
                    tunnel_template: None,
                })],
                peer_by_vtep,
                captures: Vec::new(),
            };
            let mut fib = Ipv4Lpm::new();
            fib.insert("0.0.0.0/0".parse().unwrap(), RouteTarget::Host);
            for (port, ip) in [POD_A, POD_B, POD_ELSEWHERE] {
                let prefix = ipnet::Ipv4Net::new(ip.into(), 32).unwrap();
                fib.insert(prefix, RouteTarget::Pod(port));
            }
            fib.insert(
                "10.244.2.0/24".parse().unwrap(),
                RouteTarget::Peer(PeerId(0)),
            );
            let umem = Umem::new(&UmemConfig {
                frame_count: FRAMES,
                frame_size: 4096,
                headroom: 0,
            })
            .unwrap();
            let ledger = FrameLedger::new(FRAMES, 4096, true);
            let mut queues = TxQueues::default();
            queues.add(UPLINK, Takes::Frames);
            queues.add(HOST, Takes::Bytes);
            queues.add(POD_A.0, Takes::Frames);
            queues.add(POD_B.0, Takes::SuperFrames);
            Node {
                topology,
                fib,
                frames: FramePool::new(Arc::new(umem), Arc::new(ledger)),
                buffers: Buffers::default(),
                queues,
                stats: WorkerStats::new(),
                inboxes: (0..2)
                    .map(|_| {
                        let wake = EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap();
                        Inbox::new(16, Arc::new(wake))
                    })
                    .collect(),
            }
        }

        fn pipeline(&mut self, in_port: PortId) -> Pipeline<'_> {
            Pipeline {
                forwarder: Forwarder {
                    topology: &self.topology,
                    fib: &self.fib,
                    services: None,
                    policy: None,
                },
                stats: &self.stats,
                inboxes: &self.inboxes,
                frames: &mut self.frames,
                buffers: &mut self.buffers,
                tunnel: self.queues.tunnel_for(in_port, self.topology.tunnel),
                queues: &mut self.queues,
                in_port,
            }
        }

        /// A TCP frame from `from` to `to` with `payload`, its checksums
        /// complete, addressed to the router.
        fn tcp_bytes(from: [u8; 4], to: [u8; 4], payload: &[u8]) -> Vec<u8> {
            let mut bytes = Vec::new();
            PacketBuilder::ethernet2(pod_mac(from).0, ROUTER.0)
                .ipv4(from, to, 64)
                .tcp(40000, 5201, 1000, 500)
                .ack(1)
                .write(&mut bytes, payload)
                .unwrap();
            bytes
        }

        /// `bytes` in a buffer frame, as an AF_XDP port receives it.
        fn frame(&mut self, bytes: &[u8]) -> Packet {
            let mut frame = self.frames.alloc().unwrap();
            let start = self.frames.headroom();
            self.frames.chunk_mut(&mut frame)[start..start + bytes.len()].copy_from_slice(bytes);
            frame.set_range(start..start + bytes.len());
            Packet::Frame(frame)
        }

        /// `bytes` in a buffer, as a TAP port reads it: a super-frame of
        /// `mss`-byte segments when `mss` is given.
        fn large(&mut self, bytes: &[u8], mss: Option<u16>) -> Packet {
            let mut buffer = self.buffers.alloc().unwrap();
            let start = buffer.range().start;
            self.buffers.memory_mut(&mut buffer)[start..start + bytes.len()].copy_from_slice(bytes);
            buffer.set_range(start..start + bytes.len());
            let super_frame = mss.map(|size| Offload {
                checksum: Checksum::Complete,
                gso: Some(Gso {
                    kind: GsoKind::TcpV4,
                    ecn: false,
                    size,
                    hdr_len: 54,
                }),
            });
            Packet::Large {
                buffer,
                super_frame,
            }
        }

        fn queue(&mut self, i: usize) -> Vec<Packet> {
            std::mem::take(self.queues.pending_mut(i))
        }

        fn bytes(&self, packet: &Packet) -> Vec<u8> {
            match packet {
                Packet::Frame(frame) => self.frames.bytes(frame).to_vec(),
                Packet::Large { buffer, .. } | Packet::Tunnel { buffer, .. } => {
                    self.buffers.bytes(buffer).to_vec()
                }
            }
        }

        /// Give every queued packet back; then every frame must be free
        /// and no move impossible.
        fn check_frames_return(&mut self, queued: Vec<Packet>) {
            for packet in queued {
                self.pipeline(UPLINK).release(packet);
            }
            for inbox in &self.inboxes {
                while let Some(handoff) = inbox.pop() {
                    for frame in handoff.frames {
                        self.frames.free_queued(frame);
                    }
                }
            }
            self.frames.flush();
            let census = self.frames.ledger().census();
            assert_eq!(census.free, u64::from(FRAMES), "{census:?}");
            assert_eq!(self.frames.ledger().violations(), 0);
            assert_eq!(self.buffers.in_use(), 0, "a buffer was not given back");
        }
    }

    /// The queue indices, in the order `Node::new` added them.
    const UPLINK_Q: usize = 0;
    const HOST_Q: usize = 1;
    const POD_A_Q: usize = 2;
    const POD_B_Q: usize = 3;

    fn tcp_payload(packet: &[u8]) -> (u32, usize) {
        let sliced = SlicedPacket::from_ethernet(packet).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
            panic!("not TCP");
        };
        (tcp.sequence_number(), tcp.payload().len())
    }

    #[test]
    fn a_frame_to_a_local_pod_is_queued_where_it_lies_and_counted_once() {
        let mut node = Node::new();
        let bytes = Node::tcp_bytes(POD_A.1, POD_B.1, b"hello");
        let packet = node.frame(&bytes);
        assert_eq!(node.pipeline(POD_A.0).dispatch(packet), 1);
        let queued = node.queue(POD_B_Q);
        assert_eq!(queued.len(), 1);
        let out = node.bytes(&queued[0]);
        assert_eq!(&out[..6], &pod_mac(POD_B.1).0, "to pod B's MAC");
        assert_eq!(&out[6..12], &ROUTER.0, "from the router");
        let report = port_report(&[&node.stats], POD_A.0);
        assert_eq!(
            (report.rx_packets, report.rx_bytes),
            (1, bytes.len() as u64)
        );
        assert!(report.drops.is_empty());
        node.check_frames_return(queued);
    }

    #[test]
    fn a_frame_to_a_peer_is_encapsulated_in_its_buffer_frame_for_the_uplink() {
        let mut node = Node::new();
        let bytes = Node::tcp_bytes(POD_A.1, REMOTE_POD.octets(), b"across");
        let packet = node.frame(&bytes);
        node.pipeline(POD_A.0).dispatch(packet);
        let queued = node.queue(UPLINK_Q);
        assert_eq!(queued.len(), 1);
        assert!(matches!(queued[0], Packet::Frame(_)), "no copy");
        let out = node.bytes(&queued[0]);
        let peer = Decapsulator::new(
            TunnelKind::Vxlan,
            IpAddr::V4(PEER_NODE),
            Vni::new(1).unwrap(),
        );
        let inner = peer.decapsulate(&out).unwrap();
        assert_eq!(&out[inner.inner.clone()][..6], &PEER_VTEP_MAC.0);
        assert_eq!(out.len(), bytes.len() + 50);
        node.check_frames_return(queued);
    }

    #[test]
    fn a_frame_for_another_workers_port_goes_through_its_inbox() {
        let mut node = Node::new();
        let bytes = Node::tcp_bytes(POD_A.1, POD_ELSEWHERE.1, b"next door");
        let packet = node.frame(&bytes);
        node.pipeline(POD_A.0).dispatch(packet);
        let handoff = node.inboxes[1].pop().expect("handed to worker 1");
        assert_eq!(handoff.port, POD_ELSEWHERE.0);
        assert_eq!(handoff.frames.len(), 1);
        assert_eq!(node.frames.ledger().census().queued, 1);
        for frame in handoff.frames {
            node.frames.free_queued(frame);
        }
        node.check_frames_return(Vec::new());
    }

    #[test]
    fn a_dropped_frame_is_counted_by_reason_on_its_port_and_freed() {
        let mut node = Node::new();
        // Pod A sending from pod B's address.
        let mut bytes = Node::tcp_bytes(POD_B.1, REMOTE_POD.octets(), b"spoofed");
        bytes[6..12].copy_from_slice(&pod_mac(POD_A.1).0);
        let packet = node.frame(&bytes);
        node.pipeline(POD_A.0).dispatch(packet);
        let report = port_report(&[&node.stats], POD_A.0);
        assert_eq!(report.rx_packets, 1);
        assert_eq!(report.drops["spoofed"], 1);
        assert!(node.queue(UPLINK_Q).is_empty());
        node.pipeline(POD_A.0).refuse(100, DropCause::NoFreeFrame);
        let report = port_report(&[&node.stats], POD_A.0);
        assert_eq!((report.rx_packets, report.drops["no_free_frame"]), (2, 1));
        node.check_frames_return(Vec::new());
    }

    #[test]
    fn a_super_frame_to_a_peer_is_cut_and_each_segment_encapsulated() {
        let mut node = Node::new();
        let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let bytes = Node::tcp_bytes(POD_B.1, REMOTE_POD.octets(), &payload);
        let packet = node.large(&bytes, Some(1400));
        let work = node.pipeline(POD_B.0).dispatch(packet);
        assert_eq!(work, 1 + 4, "5000 bytes cut at 1400: four segments");
        let queued = node.queue(UPLINK_Q);
        assert_eq!(queued.len(), 4);
        let peer = Decapsulator::new(
            TunnelKind::Vxlan,
            IpAddr::V4(PEER_NODE),
            Vni::new(1).unwrap(),
        );
        let mut next_seq = 1000;
        let mut carried = 0;
        for packet in &queued {
            let out = node.bytes(packet);
            assert!(out.len() <= 1514, "a segment over the underlay MTU");
            let inner = peer.decapsulate(&out).unwrap().inner;
            let (seq, len) = tcp_payload(&out[inner]);
            assert_eq!(seq, next_seq, "segments in order, contiguous");
            next_seq += len as u32;
            carried += len;
        }
        assert_eq!(carried, payload.len());
        let report = port_report(&[&node.stats], POD_B.0);
        assert_eq!(report.offload.super_frames_cut, 1);
        assert_eq!(report.offload.segments_made, 4);
        node.check_frames_return(queued);
    }

    #[test]
    fn a_super_frame_goes_whole_to_a_port_that_takes_them_and_cut_to_one_that_does_not() {
        let mut node = Node::new();
        let payload = vec![7u8; 3000];
        // Pod A (AF_XDP) to the TAP pod B: whole.
        let bytes = Node::tcp_bytes(POD_A.1, POD_B.1, &payload);
        let packet = node.large(&bytes, Some(1000));
        assert_eq!(node.pipeline(POD_A.0).dispatch(packet), 1);
        let whole = node.queue(POD_B_Q);
        assert!(matches!(
            whole.as_slice(),
            [Packet::Large {
                super_frame: Some(_),
                ..
            }]
        ));
        // Pod B (TAP) to the AF_XDP pod A: three frames; to the host
        // port (bytes, no super-frames): three too.
        let bytes = Node::tcp_bytes(POD_B.1, POD_A.1, &payload);
        let packet = node.large(&bytes, Some(1000));
        assert_eq!(node.pipeline(POD_B.0).dispatch(packet), 4);
        let cut = node.queue(POD_A_Q);
        assert_eq!(cut.len(), 3);
        assert!(
            cut.iter()
                .all(|p| matches!(p, Packet::Frame(f) if !f.continues()))
        );
        let bytes = Node::tcp_bytes(POD_B.1, [192, 0, 2, 1], &payload);
        let packet = node.large(&bytes, Some(1000));
        assert_eq!(node.pipeline(POD_B.0).dispatch(packet), 4);
        let to_host = node.queue(HOST_Q);
        assert_eq!(to_host.len(), 3);
        node.check_frames_return(whole.into_iter().chain(cut).chain(to_host).collect());
    }

    #[test]
    fn a_large_frame_is_copied_into_a_run_of_frames_for_an_afxdp_port() {
        let mut node = Node::new();
        // Jumbo pods: raise the pod MTU the router checks against.
        node.topology.pod_mtu = 9000;
        let payload = vec![1u8; 8000];
        let bytes = Node::tcp_bytes(POD_B.1, POD_A.1, &payload);
        let packet = node.large(&bytes, None);
        node.pipeline(POD_B.0).dispatch(packet);
        let run = node.queue(POD_A_Q);
        assert_eq!(run.len(), 2, "8054 bytes in two 4096-byte frames");
        let continues: Vec<bool> = run
            .iter()
            .map(|p| matches!(p, Packet::Frame(f) if f.continues()))
            .collect();
        assert_eq!(continues, [true, false]);
        let joined: Vec<u8> = run.iter().flat_map(|p| node.bytes(p)).collect();
        assert_eq!(joined.len(), bytes.len());
        assert_eq!(joined[34..], bytes[34..], "the payload as it came");
        node.check_frames_return(run);
    }

    /// The queue index of the tunnel port [`Node::with_tunnel`] adds.
    const TUNNEL_Q: usize = 4;

    impl Node {
        /// The node with a tunnel port (port 5, queue [`TUNNEL_Q`]) and a
        /// tunnel template toward the peer.
        fn with_tunnel() -> Node {
            let mut node = Node::new();
            let tunnel = PortId(5);
            node.topology.tunnel = Some(tunnel);
            let peer = node.topology.peers[0].as_mut().unwrap();
            peer.tunnel_template = peer.template.clone();
            node.queues.add(tunnel, Takes::Encapsulated);
            node
        }

        /// A UDP frame from `from` to `to` with `payload`.
        fn udp_bytes(from: [u8; 4], to: [u8; 4], payload: &[u8]) -> Vec<u8> {
            let mut bytes = Vec::new();
            PacketBuilder::ethernet2(pod_mac(from).0, ROUTER.0)
                .ipv4(from, to, 64)
                .udp(40000, 9000)
                .write(&mut bytes, payload)
                .unwrap();
            bytes
        }
    }

    #[test]
    fn a_tap_pods_tcp_goes_to_the_tunnel_port_and_its_udp_to_the_uplink() {
        let mut node = Node::with_tunnel();
        let remote = REMOTE_POD.octets();
        // A TCP frame and a TCP super-frame: through the tunnel port.
        let tcp = Node::tcp_bytes(POD_B.1, remote, b"tcp");
        let packet = node.large(&tcp, None);
        node.pipeline(POD_B.0).dispatch(packet);
        let packet = node.large(&Node::tcp_bytes(POD_B.1, remote, &[5; 3000]), Some(1000));
        node.pipeline(POD_B.0).dispatch(packet);
        // UDP, whatever its size: by the uplink, in a buffer frame.
        for len in [18, 1400] {
            let udp = Node::udp_bytes(POD_B.1, remote, &vec![9; len]);
            let packet = node.large(&udp, None);
            node.pipeline(POD_B.0).dispatch(packet);
        }
        let tunneled = node.queue(TUNNEL_Q);
        assert_eq!(tunneled.len(), 2);
        assert!(tunneled.iter().all(|p| matches!(p, Packet::Tunnel { .. })));
        let uplink = node.queue(UPLINK_Q);
        assert_eq!(uplink.len(), 2, "both UDP frames by the uplink");
        let peer = Decapsulator::new(
            TunnelKind::Vxlan,
            IpAddr::V4(PEER_NODE),
            Vni::new(1).unwrap(),
        );
        for (packet, len) in uplink.iter().zip([18, 1400]) {
            assert!(matches!(packet, Packet::Frame(f) if !f.continues()));
            let out = node.bytes(packet);
            let inner = peer.decapsulate(&out).unwrap().inner;
            assert_eq!(out[inner].len(), 14 + 20 + 8 + len);
        }
        // A veth pod's TCP does not take the tunnel port.
        let packet = node.frame(&Node::tcp_bytes(POD_A.1, remote, b"veth"));
        node.pipeline(POD_A.0).dispatch(packet);
        let from_veth = node.queue(UPLINK_Q);
        assert_eq!(from_veth.len(), 1);
        assert!(node.queue(TUNNEL_Q).is_empty());
        node.check_frames_return(
            tunneled
                .into_iter()
                .chain(uplink)
                .chain(from_veth)
                .collect(),
        );
    }

    #[test]
    fn no_free_frame_is_a_counted_drop_not_a_panic() {
        let mut node = Node::new();
        let hoard: Vec<Frame> = (0..FRAMES).map(|_| node.frames.alloc().unwrap()).collect();
        let payload = vec![3u8; 3000];
        let bytes = Node::tcp_bytes(POD_B.1, REMOTE_POD.octets(), &payload);
        let packet = node.large(&bytes, Some(1000));
        node.pipeline(POD_B.0).dispatch(packet);
        let report = port_report(&[&node.stats], POD_B.0);
        assert_eq!(report.drops["no_free_frame"], 3);
        assert!(node.queue(UPLINK_Q).is_empty());
        for frame in hoard {
            node.frames.free(frame);
        }
        node.check_frames_return(Vec::new());
    }
}
