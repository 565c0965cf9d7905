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

use nix::poll::{PollFd, PollFlags};
use podswitch_encap::DropReason;
use podswitch_encap::coalesce::Coalescer;
use podswitch_encap::segment::complete_checksum;
use podswitch_encap::virtio_net::{
    Checksum, GsoKind, HEADER_LEN as VNET_HEADER_LEN, Header as VnetHeader, Offload,
};
use podswitch_netdev::FrameDevice;

use super::BATCH;
use super::pipeline::{MAX_PACKET_CHUNKS, Packet, Pipeline, Takes};
use super::port::{Port, TxContext};
use crate::drops::DropCause;
use crate::frame_budget::FillGrowth;
use crate::frames::FramePool;
use crate::packet_port::PacketDevice;
use crate::tap::TapDevice;
use crate::topology::PortId;

/// Passes between reads of a TAP device that had nothing to read: a read
/// is a system call, so a quiet device's frames wait microseconds instead.
const TAP_QUIET_PASSES: u32 = 8;
/// The longest link header in front of an IP packet of the MTU: Ethernet
/// and one 802.1Q tag.
const MAX_LINK_HEADER: usize = 18;

/// A port on a TAP device.
pub type TapPort = DevicePort<TapDevice>;

/// A port on a packet socket on a pod veth's host end.
pub type PacketPort = DevicePort<PacketDevice>;

/// A frame device and how eagerly to read it.
pub struct DevicePort<D> {
    device: Arc<D>,
    quiet: QuietPasses,
    coalescer: Coalescer,
    gather: Vec<u8>,
    run: Vec<Packet>,
}

impl<D: FrameDevice> DevicePort<D> {
    /// A port on `device`.
    pub fn new(device: D) -> DevicePort<D> {
        DevicePort {
            device: Arc::new(device),
            quiet: QuietPasses::default(),
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
        let mtu = pipeline.forwarder.topology.pod_mtu as usize;
        let into_buffers = mtu + MAX_LINK_HEADER > pipeline.frames.room();
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
    fn receive_offloaded(&self, pipeline: &mut Pipeline) -> usize {
        receive_with_headers(
            pipeline,
            |buf| self.device.recv(buf),
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
        self.gather.clear();
        self.coalescer.flush(&mut send);
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

/// Read up to a batch of packets with `read` (a non-blocking read of one
/// packet, `None` when there is none) into buffers, each after a
/// virtio-net header of `header_len` bytes that `parse` reads (offsets
/// from the frame's start), and dispatch them: a plain frame has its
/// partial checksum completed, a TCP/IPv4 super-frame keeps its offload
/// for the pipeline to send it whole or cut it. Reading stops once the
/// packets read and the segments made reach a batch, so one pass does not
/// queue more than a TX ring holds. How many packets were read.
pub(super) fn receive_with_headers(
    pipeline: &mut Pipeline,
    mut read_packet: impl FnMut(&mut [u8]) -> std::io::Result<Option<usize>>,
    header_len: usize,
    parse: impl Fn(&[u8]) -> Result<Offload, DropReason>,
) -> usize {
    let (mut read, mut work) = (0, 0);
    while work < BATCH {
        let Some(mut buffer) = pipeline.buffers.alloc() else {
            break;
        };
        let start = buffer.range().start;
        let memory = pipeline.buffers.memory_mut(&mut buffer);
        let room = memory.len() - start;
        let len = match read_packet(&mut memory[start..]) {
            Ok(Some(len)) => len,
            Ok(None) | Err(_) => {
                pipeline.buffers.free(buffer);
                break;
            }
        };
        read += 1;
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
                work += 1;
                continue;
            }
        };
        buffer.set_range(frame.clone());
        match offload.gso {
            None => {
                let super_frame = None;
                work += pipeline.dispatch(Packet::Large {
                    buffer,
                    super_frame,
                });
            }
            Some(gso) if gso.kind == GsoKind::TcpV4 => {
                let super_frame = Some(offload);
                work += pipeline.dispatch(Packet::Large {
                    buffer,
                    super_frame,
                });
            }
            Some(_) => {
                pipeline.buffers.free(buffer);
                pipeline.refuse(frame.len(), DropCause::NotIpv4);
                work += 1;
            }
        }
    }
    read
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
