//! A port on a device read and written a frame per system call: a TAP
//! device (the host port into the node's stack, or a pod's), or a packet
//! socket on the host end of a pod's veth. A plain device carries one
//! frame per read and write; an offloaded one (a virtio-net header on
//! each) hands over TCP super-frames of up to 64 KB with partial checksums
//! and takes them back, and the frames queued for it are coalesced per
//! flow into super-frames (userspace GRO) as it transmits.

use std::io::IoSlice;
use std::os::fd::AsFd;
use std::sync::Arc;

use arrayvec::ArrayVec;
use nix::poll::{PollFd, PollFlags};
use podswitch_encap::DropReason;
use podswitch_encap::coalesce::Coalescer;
use podswitch_encap::flow::{IPPROTO_TCP, ip_protocol};
use podswitch_encap::segment::complete_checksum;
use podswitch_encap::virtio_net::{
    Checksum, GsoKind, HEADER_LEN as VNET_HEADER_LEN, Header as VnetHeader, Offload,
};
use podswitch_netdev::FrameDevice;
use podswitch_netdev::packet_socket::MANY_MAX;

use super::BATCH;
use super::buffers::{Buffer, MAX_BUFFERS};
use super::pipeline::{MAX_PACKET_CHUNKS, Packet, Pipeline, Takes};
use super::port::{Port, TxContext};
use crate::drops::DropCause;
use crate::frame_budget::FillGrowth;
use crate::frames::FramePool;
use crate::packet_port::PacketDevice;
use crate::tap::{MAX_SUPER_FRAME, TapDevice};
use crate::topology::PortId;

/// Passes between reads of a TAP device that had nothing to read: a read
/// is a system call, so a quiet device's frames wait microseconds instead.
const TAP_QUIET_PASSES: u32 = 8;
/// The longest link header in front of an IP packet of the MTU: Ethernet
/// and one 802.1Q tag.
const MAX_LINK_HEADER: usize = 18;
/// The most bytes of an IP packet of the MTU that are not TCP payload:
/// IPv4 and TCP headers with their options at most as Linux sends them
/// (timestamps), so a segment carries at least the MTU less this.
const MAX_TCP_HEADERS: usize = 80;

/// A port on a TAP device.
pub type TapPort = DevicePort<TapDevice>;

/// A port on a packet socket on a pod veth's host end.
pub type PacketPort = DevicePort<PacketDevice>;

/// A frame device and how eagerly to read it.
pub struct DevicePort<D> {
    device: Arc<D>,
    quiet: QuietPasses,
    read_size: ReadSize,
    /// Frames no coalescing would change, sent together.
    unmerged: Vec<Packet>,
    coalescer: Coalescer,
    gather: Vec<u8>,
    run: Vec<Packet>,
}

impl<D: FrameDevice> DevicePort<D> {
    /// A port on `device`.
    pub fn new(device: D) -> DevicePort<D> {
        let read_size = ReadSize::new(device.reads_many());
        DevicePort {
            device: Arc::new(device),
            quiet: QuietPasses::default(),
            read_size,
            unmerged: Vec::with_capacity(MANY_MAX),
            coalescer: Coalescer::new(),
            gather: Vec::new(),
            run: Vec::with_capacity(MAX_PACKET_CHUNKS),
        }
    }

    /// The device, shared (the control plane watches it vanish and reads
    /// its drops).
    pub fn device(&self) -> Arc<D> {
        Arc::clone(&self.device)
    }

    /// Whether the device carries super-frames with virtio-net headers.
    fn offloaded(&self) -> bool {
        self.device.has_vnet_header()
    }

    /// Read up to a batch of frames from a plain device, each straight
    /// into a buffer frame — or, when the pod MTU lets frames outgrow
    /// one (a jumbo underlay), into a buffer; how many.
    fn receive_plain(&self, pipeline: &mut Pipeline) -> usize {
        let into_buffers = !mtu_fits_a_frame(pipeline);
        let mut read = 0;
        while read < BATCH {
            let packet = if into_buffers {
                let Some(mut buffer) = pipeline.buffers.alloc() else {
                    break;
                };
                let start = buffer.range().start;
                match self
                    .device
                    .recv(&mut pipeline.buffers.memory_mut(&mut buffer)[start..])
                {
                    Ok(Some(len)) => {
                        buffer.set_range(start..start + len);
                        let super_frame = None;
                        Packet::Large {
                            buffer,
                            super_frame,
                        }
                    }
                    Ok(None) | Err(_) => {
                        pipeline.buffers.free(buffer);
                        break;
                    }
                }
            } else {
                let Some(mut frame) = pipeline.frames.alloc() else {
                    break;
                };
                let start = pipeline.frames.headroom();
                match self
                    .device
                    .recv(&mut pipeline.frames.chunk_mut(&mut frame)[start..])
                {
                    Ok(Some(len)) => {
                        frame.set_range(start..start + len);
                        Packet::Frame(frame)
                    }
                    Ok(None) | Err(_) => {
                        pipeline.frames.free(frame);
                        break;
                    }
                }
            };
            read += 1;
            pipeline.dispatch(packet);
        }
        read
    }

    /// Read up to a batch of frames from an offloaded device into buffers,
    /// each after its virtio-net header ([`receive_with_headers`]).
    fn receive_offloaded(&mut self, pipeline: &mut Pipeline) -> usize {
        receive_with_headers(
            pipeline,
            &mut self.read_size,
            |bufs, lens| self.device.recv_many(bufs, lens),
            VNET_HEADER_LEN,
            |header| VnetHeader::new_checked(header).and_then(|h| Offload::parse(&h)),
        )
    }

    /// Write each queued packet to a plain device: a run of frames as one
    /// vectored write, a buffer as one write.
    fn transmit_plain(&mut self, id: PortId, queue: &mut Vec<Packet>, tx: &mut TxContext) {
        let run = &mut self.run;
        for packet in queue.drain(..) {
            let last = !matches!(&packet, Packet::Frame(frame) if frame.continues());
            run.push(packet);
            if !last {
                continue;
            }
            let mut parts = [IoSlice::new(&[]); MAX_PACKET_CHUNKS];
            let mut len = 0;
            for (part, packet) in parts.iter_mut().zip(run.iter()) {
                let bytes = tx.bytes(packet);
                len += bytes.len();
                *part = IoSlice::new(bytes);
            }
            let sent = run.len() <= MAX_PACKET_CHUNKS
                && self.device.send_parts(&parts[..run.len()]).is_ok();
            if sent {
                tx.stats.tx(id, len);
            } else {
                tx.stats.dropped(id, DropCause::TxError);
            }
            for packet in run.drain(..) {
                tx.release(packet);
            }
        }
        for packet in run.drain(..) {
            tx.release(packet);
        }
    }

    /// Send the packets queued for an offloaded device: frames coalesced
    /// per flow into super-frames (all flushed before returning, so no
    /// frame waits for the next batch), super-frames whole after what
    /// came before them.
    fn transmit_offloaded(&mut self, id: PortId, queue: &mut Vec<Packet>, tx: &mut TxContext) {
        let device = &*self.device;
        let stats = tx.stats;
        let mut send = |offload: &Offload, frame: &[u8]| {
            if write_offloaded(device, offload, frame).is_err() {
                return stats.dropped(id, DropCause::TxError);
            }
            stats.tx(id, frame.len());
            if let Some(gso) = offload.gso {
                let payload = frame.len().saturating_sub(usize::from(gso.hdr_len));
                stats.super_frame_sent(id, payload.div_ceil(usize::from(gso.size).max(1)));
            }
        };
        for packet in queue.drain(..) {
            if self.gather.is_empty() && goes_unmerged(&packet, tx) {
                self.unmerged.push(packet);
                if self.unmerged.len() == MANY_MAX {
                    send_unmerged(device, id, &mut self.unmerged, tx);
                }
                continue;
            }
            match &packet {
                Packet::Frame(frame) if frame.continues() || !self.gather.is_empty() => {
                    // A multi-buffer packet: gathered, then coalesced.
                    self.gather.extend_from_slice(tx.frames.bytes(frame));
                    if !frame.continues() {
                        self.coalescer.push(&self.gather, &mut send);
                        self.gather.clear();
                    }
                }
                Packet::Frame(frame) => self.coalescer.push(tx.frames.bytes(frame), &mut send),
                Packet::Large {
                    buffer,
                    super_frame: None,
                } => self.coalescer.push(tx.buffers.bytes(buffer), &mut send),
                Packet::Large {
                    buffer,
                    super_frame: Some(offload),
                } => {
                    // What came before it goes first: a flow keeps its
                    // order. It goes as it came, coalesced from nothing.
                    self.coalescer.flush(&mut send);
                    let bytes = tx.buffers.bytes(buffer);
                    if write_offloaded(device, offload, bytes).is_ok() {
                        stats.tx(id, bytes.len());
                        stats.super_frame_sent(id, 0);
                    } else {
                        stats.dropped(id, DropCause::TxError);
                    }
                }
                // Made only for the tunnel port.
                Packet::Tunnel { .. } => stats.dropped(id, DropCause::TxError),
            }
            tx.release(packet);
        }
        send_unmerged(device, id, &mut self.unmerged, tx);
        self.gather.clear();
        self.coalescer.flush(&mut send);
    }
}

/// Whether `packet` is a whole frame that no coalescing would change (IP,
/// not TCP), so that it may go with others in one system call.
fn goes_unmerged(packet: &Packet, tx: &TxContext) -> bool {
    let whole = match packet {
        Packet::Frame(frame) => !frame.continues(),
        Packet::Large { super_frame, .. } => super_frame.is_none(),
        Packet::Tunnel { .. } => false,
    };
    whole && ip_protocol(tx.bytes(packet)).is_some_and(|protocol| protocol != IPPROTO_TCP)
}

/// Send `packets` (each one [`goes_unmerged`]) to an offloaded device, as
/// many per system call as it takes, and release them; counted sent, or
/// dropped as a TX error when the device refused them.
fn send_unmerged(
    device: &impl FrameDevice,
    id: PortId,
    packets: &mut Vec<Packet>,
    tx: &mut TxContext,
) {
    if packets.is_empty() {
        return;
    }
    let mut header = [0u8; VNET_HEADER_LEN];
    Offload::NONE.emit(&mut VnetHeader::new_unchecked(&mut header[..]));
    let stats = tx.stats;
    for chunk in packets.chunks(MANY_MAX) {
        let frames: ArrayVec<[IoSlice; 2], MANY_MAX> = chunk
            .iter()
            .map(|packet| [IoSlice::new(&header), IoSlice::new(tx.bytes(packet))])
            .collect();
        let mut done = 0;
        while done < frames.len() {
            match device.send_many(&frames[done..]) {
                Ok(n) if n > 0 => done += n,
                _ => break,
            }
        }
        for (i, [_, frame]) in frames.iter().enumerate() {
            if i < done {
                stats.tx(id, frame.len());
            } else {
                stats.dropped(id, DropCause::TxError);
            }
        }
    }
    for packet in packets.drain(..) {
        tx.release(packet);
    }
}

/// Write `frame` to an offloaded device after the virtio-net header that
/// describes it.
fn write_offloaded(
    device: &impl FrameDevice,
    offload: &Offload,
    frame: &[u8],
) -> std::io::Result<()> {
    let mut header = [0u8; VNET_HEADER_LEN];
    offload.emit(&mut VnetHeader::new_unchecked(&mut header[..]));
    device.send_parts(&[IoSlice::new(&header), IoSlice::new(frame)])
}

/// Whether a frame of the pod MTU (with its link header) fits a buffer
/// frame; where not, it, or a segment cut to it, takes a buffer.
fn mtu_fits_a_frame(pipeline: &Pipeline) -> bool {
    pipeline.forwarder.topology.pod_mtu as usize + MAX_LINK_HEADER <= pipeline.frames.room()
}

/// How many packets a port asks its device for in one read. A device
/// that reads one per system call (a TAP device) is read one at a time,
/// as reading several would save nothing. A packet socket, which reads
/// many with one, is asked for up to [`MANY_READ`] while what it gives are
/// plain frames, and one at a time again after it gave a super-frame until
/// a pass reads only plain frames: what becomes of a super-frame (cut
/// into dozens of segments, each in a frame or, past a frame's room, in a
/// buffer) needs room that a read of many super-frames would have taken. Where a
/// segment of the pod MTU outgrows a frame (a jumbo underlay) it is read
/// one at a time too: a segment then takes one of the worker's few
/// buffers.
#[derive(Debug)]
pub(super) struct ReadSize {
    many: bool,
    super_frames: bool,
}

/// The most packets one read of many asks for: half the worker's buffers,
/// leaving the rest to what the packets read become.
const MANY_READ: usize = MAX_BUFFERS / 2;

impl ReadSize {
    /// For a device that reads several packets with one system call
    /// (`many`), or one per call.
    pub(super) fn new(many: bool) -> ReadSize {
        ReadSize {
            many,
            super_frames: false,
        }
    }

    /// How many packets to ask for when `rest` would fill the batch and
    /// `segments_in_frames` says whether a segment of the pod MTU fits a
    /// buffer frame.
    fn wanted(&self, rest: usize, segments_in_frames: bool) -> usize {
        if self.many && !self.super_frames && segments_in_frames {
            rest.min(MANY_READ)
        } else {
            1
        }
    }
}

/// Read up to a batch of packets with `read_many` (a non-blocking read of
/// up to `bufs.len()` packets, one into each buffer, their lengths into
/// `lens`; how many, none when none is waiting) into buffers, each after
/// a virtio-net header of `header_len` bytes that `parse` reads (offsets
/// from the frame's start), and dispatch them: a plain frame has its
/// partial checksum completed, a TCP/IPv4 super-frame keeps its offload
/// for the pipeline to send it whole or cut it. Reading stops once the
/// packets read and the segments made reach a batch, so one pass does not
/// queue more than a TX ring holds (`size` says how many one read asks
/// for). How many packets were read.
pub(super) fn receive_with_headers(
    pipeline: &mut Pipeline,
    size: &mut ReadSize,
    mut read_many: impl FnMut(&mut [&mut [u8]], &mut [usize]) -> std::io::Result<usize>,
    header_len: usize,
    parse: impl Fn(&[u8]) -> Result<Offload, DropReason>,
) -> usize {
    let (mut read, mut work) = (0, 0);
    let mut super_frames = false;
    let mtu = pipeline.forwarder.topology.pod_mtu as usize;
    let segments_in_frames = mtu_fits_a_frame(pipeline);
    // A super-frame cut for a port that takes frames needs a buffer for
    // each segment where a segment outgrows a buffer frame, beside the
    // one it was read into: a read waits for that many to be free (the
    // packets queued before it give theirs back as they are sent).
    let per_read = if segments_in_frames {
        1
    } else {
        let segments = MAX_SUPER_FRAME.div_ceil(mtu.saturating_sub(MAX_TCP_HEADERS).max(1));
        (1 + segments).min(MAX_BUFFERS)
    };
    while work < BATCH && MAX_BUFFERS - pipeline.buffers.in_use() >= per_read {
        let wanted = size.wanted(BATCH - work, segments_in_frames);
        // The buffers' memory is lent out, so that one read fills them all.
        let mut lent: ArrayVec<(Buffer, Box<[u8]>), BATCH> = ArrayVec::new();
        while lent.len() < wanted {
            let Some(mut buffer) = pipeline.buffers.alloc() else {
                break;
            };
            let memory = pipeline.buffers.lend(&mut buffer);
            lent.push((buffer, memory));
        }
        if lent.is_empty() {
            break;
        }
        let asked = lent.len();
        let mut lens = [0; BATCH];
        let got = {
            let mut bufs: ArrayVec<&mut [u8], BATCH> = lent
                .iter_mut()
                .map(|(buffer, memory)| &mut memory[buffer.range().start..])
                .collect();
            read_many(&mut bufs, &mut lens[..asked]).unwrap_or(0)
        };
        for (i, (mut buffer, memory)) in lent.into_iter().enumerate() {
            pipeline.buffers.give_back(&mut buffer, memory);
            if i >= got {
                pipeline.buffers.free(buffer);
                continue;
            }
            let (done, super_frame) = receive_one(pipeline, buffer, lens[i], header_len, &parse);
            super_frames |= super_frame;
            work += done;
        }
        read += got;
        if got < asked {
            break;
        }
    }
    if read > 0 {
        size.super_frames = super_frames;
    }
    read
}

/// Check and dispatch the packet of `len` bytes (with its virtio-net
/// header of `header_len`) just read into `buffer` at its range's start;
/// how much work it was ([`Pipeline::dispatch`]), and whether it was a
/// super-frame.
fn receive_one(
    pipeline: &mut Pipeline,
    mut buffer: Buffer,
    len: usize,
    header_len: usize,
    parse: &impl Fn(&[u8]) -> Result<Offload, DropReason>,
) -> (usize, bool) {
    let start = buffer.range().start;
    let memory = pipeline.buffers.memory_mut(&mut buffer);
    let room = memory.len() - start;
    let frame = start + header_len.min(len)..start + len;
    let offload = if len == room {
        // It may have been longer than the buffer: cut short.
        Err(DropReason::Oversize)
    } else {
        parse(&memory[start..start + len])
    };
    let offload = offload.and_then(|offload| {
        if offload.gso.is_none()
            && let Checksum::Partial { start, offset } = offload.checksum
        {
            let bytes = &mut memory[frame.clone()];
            complete_checksum(bytes, start.into(), offset.into())?;
            return Ok(Offload::NONE);
        }
        Ok(offload)
    });
    let offload = match offload {
        Ok(offload) => offload,
        Err(reason) => {
            pipeline.buffers.free(buffer);
            pipeline.refuse(frame.len(), DropCause::Wire(reason));
            return (1, false);
        }
    };
    buffer.set_range(frame.clone());
    match offload.gso {
        None => {
            let super_frame = None;
            let work = pipeline.dispatch(Packet::Large {
                buffer,
                super_frame,
            });
            (work, false)
        }
        Some(gso) if gso.kind == GsoKind::TcpV4 => {
            let super_frame = Some(offload);
            let work = pipeline.dispatch(Packet::Large {
                buffer,
                super_frame,
            });
            (work, true)
        }
        Some(_) => {
            pipeline.buffers.free(buffer);
            pipeline.refuse(frame.len(), DropCause::NotIpv4);
            (1, true)
        }
    }
}

/// Passes to skip reading a device that had nothing to read: a read is a
/// system call, so a quiet device's frames wait microseconds instead.
#[derive(Debug, Default)]
pub(super) struct QuietPasses(u32);

impl QuietPasses {
    /// Whether to skip the device this pass.
    pub(super) fn skip(&mut self) -> bool {
        if self.0 > 0 {
            self.0 -= 1;
            return true;
        }
        false
    }

    /// A pass read `read` packets: none, and the next passes skip it.
    pub(super) fn after(&mut self, read: usize) {
        if read == 0 {
            self.0 = TAP_QUIET_PASSES;
        }
    }

    /// The worker woke up: read on the next pass.
    pub(super) fn reset(&mut self) {
        self.0 = 0;
    }
}

impl<D: FrameDevice + 'static> Port for DevicePort<D> {
    fn takes(&self) -> Takes {
        if self.offloaded() {
            Takes::SuperFrames
        } else {
            Takes::Bytes
        }
    }

    fn receive(&mut self, pipeline: &mut Pipeline, _growth: &FillGrowth) -> usize {
        if self.quiet.skip() {
            return 0;
        }
        let read = if self.offloaded() {
            self.receive_offloaded(pipeline)
        } else {
            self.receive_plain(pipeline)
        };
        if read > 0 {
            pipeline.stats.batch(read);
        }
        self.quiet.after(read);
        read
    }

    fn transmit(&mut self, id: PortId, queue: &mut Vec<Packet>, tx: &mut TxContext) -> usize {
        let count = queue.len();
        if self.offloaded() {
            self.transmit_offloaded(id, queue, tx);
        } else {
            self.transmit_plain(id, queue, tx);
        }
        count
    }

    fn poll_fds<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) {
        fds.push(PollFd::new(self.device.as_fd(), PollFlags::POLLIN));
    }

    fn woken(&mut self) {
        self.quiet.reset();
    }

    fn close(self: Box<Self>, _frames: &mut FramePool, _growth: &FillGrowth) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packet_socket_reads_many_plain_frames_and_super_frames_one_at_a_time() {
        let mut size = ReadSize::new(true);
        assert_eq!(size.wanted(BATCH, true), MANY_READ);
        assert_eq!(size.wanted(3, true), 3, "no more than the batch's rest");
        assert_eq!(size.wanted(BATCH, false), 1, "segments would take buffers");
        size.super_frames = true;
        assert_eq!(size.wanted(BATCH, true), 1);
        let tap = ReadSize::new(false);
        assert_eq!(tap.wanted(BATCH, true), 1);
    }
}
