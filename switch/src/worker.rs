//! Polling workers. Each worker owns some ports and moves their frames in
//! batches of up to 64, as VPP and OVS's dpif-netdev do: take completions
//! back, top up fill rings, receive a batch per socket, decide each frame
//! ([`Forwarder`]), then send everything bound for a port with one kick.
//! Frames bound for another worker's port cross over as descriptors
//! through that worker's inbox; the buffer memory is shared.
//!
//! In adaptive mode (the default) a worker that finds no work for a short
//! while sleeps in `poll()` on its sockets, TAP devices and wake-up event,
//! so an idle node does not burn a core; in busy mode it always spins.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{Receiver, Sender};
use crossbeam::queue::ArrayQueue;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::EventFd;
use podswitch_encap::DropReason;
use podswitch_encap::coalesce::Coalescer;
use podswitch_encap::segment::{TcpSegments, complete_checksum};
use podswitch_encap::virtio_net::{
    Checksum, GsoKind, HEADER_LEN as VNET_HEADER_LEN, Header as VnetHeader, Offload,
};

use crate::afxdp::{Desc, Umem, XDP_PKT_CONTD, XskSocket};
use crate::config::PollMode;
use crate::drops::DropCause;
use crate::fib::SharedFib;
use crate::forward::{Forwarder, Verdict};
use crate::frame_budget::{FillBudget, FillGrowth};
use crate::frames::{FrameCache, FrameLedger, Location};
use crate::stats::{KernelDrops, RingLevelsTotal, WorkerStats};
use crate::tap::{MAX_SUPER_FRAME, TapDevice};
use crate::topology::{PeerId, PortId, RouteTarget, Topology};
use crate::xdp::XdpProgram;

/// Most frames taken from one socket (or TAP device) per pass.
pub const BATCH: usize = 64;
/// Idle passes an adaptive worker spins through before it sleeps.
const SPIN_PASSES: u32 = 256;
/// Longest sleep; the worker also wakes on traffic and on commands.
const SLEEP: Duration = Duration::from_secs(1);
/// Longest wait for a removed port's in-flight transmissions to complete.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a worker reads the kernel's socket counters and lets the fill
/// budgets of quiet sockets shrink.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Passes between looks at the clock for housekeeping.
const CLOCK_PASSES: u64 = 256;
/// Frames handed between workers that may wait in one inbox.
pub const INBOX_CAPACITY: usize = 4096;
/// Most segments one super-frame is cut into; one that would need more (a
/// tiny GSO size from a misbehaving pod) is dropped, so that one frame
/// cannot drain the buffer pool.
const MAX_SEGMENTS: usize = 128;
/// Most buffer frames (chunks) one packet spans: a multi-buffer packet
/// longer than this is dropped as `oversize`. Four 4096-byte chunks hold
/// the largest underlay frame the configuration accepts (9216 + 18).
pub const MAX_PACKET_CHUNKS: usize = 4;

/// An AF_XDP port: its XDP program and a socket per RX queue.
pub struct AfXdpPort {
    /// The program redirecting the port's frames to the sockets (shared
    /// with the control plane, which reads the uplink's counters).
    pub program: Arc<Mutex<XdpProgram>>,
    /// One socket per active RX queue, in queue order.
    pub sockets: Vec<XskSocket>,
    /// How many frames to keep on each socket's fill ring, per socket.
    fill: Vec<FillBudget>,
    /// Frames put on TX rings, per socket.
    sent: Vec<u64>,
    /// Frames whose completion was read, per socket.
    completed: Vec<u64>,
}

impl AfXdpPort {
    /// A port from its program and bound sockets (not yet registered in
    /// the program's XSKMAP: the worker does that once the fill rings hold
    /// frames); each socket keeps between `fill.min` and `fill.max` frames
    /// on its fill ring.
    pub fn new(
        program: Arc<Mutex<XdpProgram>>,
        sockets: Vec<XskSocket>,
        fill: FillBudget,
    ) -> AfXdpPort {
        let n = sockets.len();
        AfXdpPort {
            program,
            sockets,
            fill: vec![fill; n],
            sent: vec![0; n],
            completed: vec![0; n],
        }
    }
}

/// How a port moves frames.
pub enum PortIo {
    /// Through AF_XDP sockets sharing the switch's buffer area.
    AfXdp(AfXdpPort),
    /// Through a TAP device: frames are read into and written from buffer
    /// frames.
    Tap(TapPort),
}

/// A TAP device and how eagerly to read it: a read is a syscall, so a
/// device that had nothing is read again only every few passes (its frames
/// wait microseconds; an idle or busy worker saves a syscall per pass).
pub struct TapPort {
    device: Arc<TapDevice>,
    quiet_passes: u32,
}

/// Passes between reads of a TAP device that had nothing to read.
const TAP_QUIET_PASSES: u32 = 8;

impl TapPort {
    /// A TAP port on `device`.
    pub fn new(device: TapDevice) -> TapPort {
        TapPort {
            device: Arc::new(device),
            quiet_passes: 0,
        }
    }

    /// The device, shared (the control plane watches it vanish).
    pub fn device(&self) -> Arc<TapDevice> {
        Arc::clone(&self.device)
    }

    /// Whether the device carries super-frames with virtio-net headers.
    fn offloaded(&self) -> bool {
        self.device.has_vnet_header()
    }

    /// Whether to read the device this pass.
    fn due(&mut self) -> bool {
        if self.quiet_passes == 0 {
            return true;
        }
        self.quiet_passes -= 1;
        false
    }
}

/// A port handed to a worker.
pub struct WorkerPort {
    /// The port's id.
    pub id: PortId,
    /// Its I/O.
    pub io: PortIo,
}

/// What the control plane asks of a worker.
pub enum Command {
    /// Start polling a port; the answer says whether it is live.
    Add(WorkerPort, Sender<anyhow::Result<()>>),
    /// Stop polling a port and return all its frames; answered when done.
    Remove(PortId, Sender<()>),
    /// Poll these new sockets too: an AF_XDP port gained RX queues.
    AddSockets(PortId, Vec<XskSocket>, Sender<anyhow::Result<()>>),
    /// Remove every port and exit.
    Stop,
}

/// A packet bound for another worker's port: the descriptors of its
/// chunks, handed over together so that no other packet comes between
/// them.
#[derive(Debug, Clone, Copy)]
pub struct Handoff {
    /// The output port.
    pub port: PortId,
    /// The packet's descriptors; the first `chunks` are used.
    pub descs: [Desc; MAX_PACKET_CHUNKS],
    /// How many chunks the packet spans (1 for a frame in one chunk).
    pub chunks: u8,
}

impl Handoff {
    /// The packet's descriptors.
    fn packet(&self) -> &[Desc] {
        &self.descs[..usize::from(self.chunks).min(MAX_PACKET_CHUNKS)]
    }
}

/// Frames to send this pass, by port, parallel to the worker's port list.
#[derive(Default)]
struct TxQueues {
    ids: Vec<PortId>,
    pending: Vec<Vec<Desc>>,
}

impl TxQueues {
    fn add(&mut self, id: PortId) {
        self.ids.push(id);
        self.pending.push(Vec::with_capacity(BATCH));
    }

    /// Remove port `i`'s queue (as `Vec::swap_remove` does), returning its
    /// unsent frames.
    fn swap_remove(&mut self, i: usize) -> Vec<Desc> {
        self.ids.swap_remove(i);
        self.pending.swap_remove(i)
    }

    /// Queue a packet (one descriptor, or a multi-buffer run) for `id`;
    /// false if this worker has no such port.
    fn push(&mut self, id: PortId, packet: &[Desc]) -> bool {
        match self.ids.iter().position(|&p| p == id) {
            Some(i) => {
                self.pending[i].extend_from_slice(packet);
                true
            }
            None => false,
        }
    }
}

/// What a worker shares with the rest of the switch.
pub struct WorkerContext {
    /// The buffer area.
    pub umem: Arc<Umem>,
    /// Where every frame is.
    pub ledger: Arc<FrameLedger>,
    /// Ports and peers.
    pub topology: Arc<ArcSwap<Topology>>,
    /// Routes.
    pub fib: Arc<SharedFib<RouteTarget>>,
    /// Every worker's inbox, by worker index.
    pub inboxes: Arc<[ArrayQueue<Handoff>]>,
    /// This worker's counters.
    pub stats: Arc<WorkerStats>,
    /// Written to wake the worker when it sleeps.
    pub wake: Arc<EventFd>,
    /// Frames pod sockets may keep on fill rings past their minimum.
    pub growth: Arc<FillGrowth>,
    /// Adaptive or busy.
    pub poll_mode: PollMode,
    /// The worker's index.
    pub index: usize,
}

/// A polling worker.
pub struct Worker {
    ctx: WorkerContext,
    commands: Receiver<Command>,
    cache: FrameCache,
    ports: Vec<WorkerPort>,
    queues: TxQueues,
    rx_scratch: Vec<Desc>,
    addr_scratch: Vec<u64>,
    offload: OffloadScratch,
}

/// What a worker keeps for frames larger than a buffer frame: where a TCP
/// super-frame or a jumbo frame from an offloaded TAP port lands (after
/// headroom for outer headers, virtio-net header first), where a
/// multi-buffer packet or a jumbo segment is gathered to be routed and
/// encapsulated (also after headroom), and the coalescer that builds
/// super-frames for offloaded TAP ports from frames.
struct OffloadScratch {
    frame: Box<[u8]>,
    gather: Box<[u8]>,
    coalescer: Coalescer,
}

impl Worker {
    /// A worker with no ports yet.
    pub fn new(ctx: WorkerContext, commands: Receiver<Command>) -> Worker {
        let headroom = ctx.umem.rx_data_offset() as usize;
        let packet_room = MAX_PACKET_CHUNKS * ctx.umem.frame_size() as usize;
        Worker {
            ctx,
            commands,
            cache: FrameCache::new(),
            ports: Vec::new(),
            queues: TxQueues::default(),
            rx_scratch: Vec::with_capacity(BATCH),
            addr_scratch: Vec::with_capacity(4 * BATCH),
            offload: OffloadScratch {
                frame: vec![0; headroom + VNET_HEADER_LEN + MAX_SUPER_FRAME].into_boxed_slice(),
                gather: vec![0; headroom + packet_room].into_boxed_slice(),
                coalescer: Coalescer::new(),
            },
        }
    }

    /// Poll until told to stop; then return every frame.
    pub fn run(mut self) {
        let mut idle_passes = 0u32;
        let mut passes = 0u64;
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        loop {
            if !self.run_commands() {
                break;
            }
            passes += 1;
            if passes.is_multiple_of(CLOCK_PASSES) && Instant::now() >= next_housekeeping {
                self.housekeeping();
                next_housekeeping = Instant::now() + HOUSEKEEPING;
            }
            let worked = self.pass();
            self.ctx.stats.poll(worked);
            if worked {
                idle_passes = 0;
            } else {
                idle_passes += 1;
                if self.ctx.poll_mode == PollMode::Adaptive && idle_passes >= SPIN_PASSES {
                    self.publish_kernel_drops();
                    self.sleep();
                    idle_passes = 0;
                }
            }
        }
        let ids: Vec<PortId> = self.ports.iter().map(|p| p.id).collect();
        for id in ids {
            self.remove_port(id);
        }
        self.cache.flush(&self.ctx.ledger);
    }

    /// Carry out pending commands; false once told to stop.
    fn run_commands(&mut self) -> bool {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Add(port, done) => {
                    let result = self.add_port(port);
                    let _ = done.send(result);
                }
                Command::Remove(id, done) => {
                    self.remove_port(id);
                    let _ = done.send(());
                }
                Command::AddSockets(id, sockets, done) => {
                    let _ = done.send(self.add_sockets(id, sockets));
                }
                Command::Stop => return false,
            }
        }
        true
    }

    fn add_port(&mut self, mut port: WorkerPort) -> anyhow::Result<()> {
        if let PortIo::AfXdp(afxdp) = &mut port.io {
            start_sockets(&mut self.cache, &self.ctx.ledger, afxdp, 0)?;
        }
        self.queues.add(port.id);
        self.ports.push(port);
        Ok(())
    }

    fn add_sockets(&mut self, id: PortId, sockets: Vec<XskSocket>) -> anyhow::Result<()> {
        let port = self
            .ports
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| anyhow::anyhow!("no port {id:?} on this worker"))?;
        let PortIo::AfXdp(afxdp) = &mut port.io else {
            anyhow::bail!("port {id:?} is not an AF_XDP port");
        };
        let first_new = afxdp.sockets.len();
        let budget = afxdp.fill[0].fresh();
        for socket in sockets {
            afxdp.sockets.push(socket);
            afxdp.fill.push(budget);
            afxdp.sent.push(0);
            afxdp.completed.push(0);
        }
        start_sockets(&mut self.cache, &self.ctx.ledger, afxdp, first_new)?;
        // Only a program installed after the queues appeared covers them.
        let registered: Vec<(u32, std::os::fd::RawFd)> = afxdp
            .sockets
            .iter()
            .map(|s| (s.queue(), s.as_raw_fd()))
            .collect();
        afxdp
            .program
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reinstall(&registered)
    }

    /// Stop polling a port and put every frame it holds back on the free
    /// list: those in its rings (after in-flight transmissions complete)
    /// and those waiting to be sent.
    fn remove_port(&mut self, id: PortId) {
        let Some(i) = self.ports.iter().position(|p| p.id == id) else {
            return;
        };
        let mut port = self.ports.swap_remove(i);
        let pending = self.queues.swap_remove(i);
        if let PortIo::AfXdp(afxdp) = &mut port.io {
            for budget in &mut afxdp.fill {
                budget.release(&self.ctx.growth);
            }
        }
        let ledger = &self.ctx.ledger;
        for desc in pending {
            free(&mut self.cache, ledger, desc.addr, Location::InFlight);
        }
        if let PortIo::AfXdp(mut afxdp) = port.io {
            {
                let mut program = afxdp.program.lock().unwrap_or_else(|e| e.into_inner());
                for socket in &afxdp.sockets {
                    let _ = program.unregister_socket(socket.queue());
                }
            }
            let deadline = Instant::now() + DRAIN_TIMEOUT;
            while (0..afxdp.sockets.len()).any(|s| in_kernel_tx(&afxdp, s) > 0)
                && Instant::now() < deadline
            {
                for s in 0..afxdp.sockets.len() {
                    reclaim_completions(
                        &mut self.cache,
                        ledger,
                        &mut afxdp,
                        s,
                        &mut self.addr_scratch,
                    );
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            for socket in afxdp.sockets.drain(..) {
                self.addr_scratch.clear();
                socket.reclaim(&mut self.addr_scratch);
                for &addr in &self.addr_scratch {
                    let base = ledger.chunk_base(addr);
                    ledger.reclaimed(base);
                    self.cache.put(ledger, base);
                }
            }
        }
        self.ctx.stats.reset_port(id);
    }

    /// Once a second: publish the kernel's counters, and shrink the fill
    /// budgets of sockets that received less than their budget.
    fn housekeeping(&mut self) {
        self.publish_kernel_drops();
        for port in &mut self.ports {
            if let PortIo::AfXdp(afxdp) = &mut port.io {
                for budget in &mut afxdp.fill {
                    budget.decay(&self.ctx.growth);
                }
            }
        }
    }

    /// Read the kernel's counters of every AF_XDP socket into the stats.
    fn publish_kernel_drops(&self) {
        for port in &self.ports {
            let PortIo::AfXdp(afxdp) = &port.io else {
                continue;
            };
            let mut total = KernelDrops::default();
            for socket in &afxdp.sockets {
                if let Ok(s) = socket.statistics() {
                    total += KernelDrops {
                        rx_dropped: s.rx_dropped,
                        rx_ring_full: s.rx_ring_full,
                        fill_ring_empty: s.rx_fill_ring_empty_descs,
                        invalid_descs: s.rx_invalid_descs + s.tx_invalid_descs,
                    };
                }
            }
            self.ctx.stats.kernel_drops(port.id, total);
        }
    }

    /// One pass over every port. True if any frame moved.
    fn pass(&mut self) -> bool {
        let topology = self.ctx.topology.load();
        let fib = self.ctx.fib.load();
        let forwarder = Forwarder {
            topology: &topology,
            fib: &fib,
        };
        let mut work = 0;
        let mut levels = RingLevelsTotal::default();
        for i in 0..self.ports.len() {
            work += self.service_rings(i, &mut levels);
            work += self.receive(i, &forwarder, &topology);
        }
        work += self.drain_inbox();
        work += self.flush_tx();
        self.ctx.stats.ring_levels(levels);
        work > 0
    }

    /// Take completions back and top up fill rings on port `i`.
    fn service_rings(&mut self, i: usize, levels: &mut RingLevelsTotal) -> usize {
        let PortIo::AfXdp(afxdp) = &mut self.ports[i].io else {
            return 0;
        };
        let mut work = 0;
        for s in 0..afxdp.sockets.len() {
            work += reclaim_completions(
                &mut self.cache,
                &self.ctx.ledger,
                afxdp,
                s,
                &mut self.addr_scratch,
            );
            refill(&mut self.cache, &self.ctx.ledger, afxdp, s);
            let l = afxdp.sockets[s].ring_levels();
            if l.tx > 0 {
                // Copy mode sends at most 32 frames per kick: keep kicking
                // while frames wait, and count it as work so the worker
                // does not sleep on them.
                let _ = afxdp.sockets[s].kick_tx();
                work += 1;
            }
            levels.fill += u64::from(l.fill);
            levels.rx += u64::from(l.rx);
            levels.tx += u64::from(l.tx);
            levels.completion += u64::from(l.completion);
        }
        work
    }

    /// Receive a batch on every socket of port `i` and decide each frame.
    fn receive(&mut self, i: usize, forwarder: &Forwarder, topology: &Topology) -> usize {
        let in_port = self.ports[i].id;
        let dispatch = Dispatch {
            ctx: &self.ctx,
            forwarder,
            topology,
            in_port,
        };
        let mut received = 0;
        match &mut self.ports[i].io {
            PortIo::AfXdp(afxdp) => {
                for (socket, budget) in afxdp.sockets.iter_mut().zip(afxdp.fill.iter_mut()) {
                    self.rx_scratch.clear();
                    let n = socket.recv(&mut self.rx_scratch, BATCH);
                    if n == 0 {
                        continue;
                    }
                    budget.received(n, BATCH, &self.ctx.growth);
                    if socket.fill_needs_wakeup() {
                        socket.kick_rx();
                    }
                    self.ctx.stats.batch(n);
                    received += n;
                    let mut first = 0;
                    while first < n {
                        let desc = self.rx_scratch[first];
                        if !desc.continues() {
                            // The fast path: a frame in one chunk.
                            self.ctx
                                .ledger
                                .moved(desc.addr, Location::Fill, Location::InFlight);
                            dispatch.frame(&mut self.cache, &mut self.queues, desc);
                            first += 1;
                            continue;
                        }
                        let last = self.rx_scratch[first..n]
                            .iter()
                            .position(|d| !d.continues())
                            .map_or(n - 1, |i| first + i);
                        let packet = &self.rx_scratch[first..=last];
                        for d in packet {
                            self.ctx
                                .ledger
                                .moved(d.addr, Location::Fill, Location::InFlight);
                        }
                        dispatch.multi_buffer(
                            &mut self.cache,
                            &mut self.queues,
                            packet,
                            &mut self.offload.gather,
                        );
                        first = last + 1;
                    }
                }
            }
            PortIo::Tap(tap) => {
                if !tap.due() {
                    return 0;
                }
                let device = tap.device();
                let mut side = TxSide {
                    cache: &mut self.cache,
                    queues: &mut self.queues,
                };
                let batch = if device.has_vnet_header() {
                    receive_offloaded(
                        &dispatch,
                        &device,
                        &self.ports,
                        &mut side,
                        &mut self.offload,
                    )
                } else {
                    receive_plain(&dispatch, &device, &mut side, &mut self.offload.gather)
                };
                if batch > 0 {
                    self.ctx.stats.batch(batch);
                } else if let PortIo::Tap(tap) = &mut self.ports[i].io {
                    tap.quiet_passes = TAP_QUIET_PASSES;
                }
                received += batch;
            }
        }
        received
    }

    /// Take frames other workers handed over for this worker's ports.
    fn drain_inbox(&mut self) -> usize {
        let mut n = 0;
        let inbox = &self.ctx.inboxes[self.ctx.index];
        while let Some(handoff) = inbox.pop() {
            n += 1;
            for desc in handoff.packet() {
                self.ctx
                    .ledger
                    .moved(desc.addr, Location::Queued, Location::InFlight);
            }
            if !self.queues.push(handoff.port, handoff.packet()) {
                for desc in handoff.packet() {
                    free(
                        &mut self.cache,
                        &self.ctx.ledger,
                        desc.addr,
                        Location::InFlight,
                    );
                }
            }
        }
        n
    }

    /// Send what this pass queued for each port, one kick per port.
    fn flush_tx(&mut self) -> usize {
        let mut sent_total = 0;
        for (port, pending) in self.ports.iter_mut().zip(self.queues.pending.iter_mut()) {
            if pending.is_empty() {
                continue;
            }
            sent_total += pending.len();
            match &mut port.io {
                PortIo::AfXdp(afxdp) => {
                    let socket = &mut afxdp.sockets[0];
                    let sent = socket.send(pending);
                    afxdp.sent[0] += sent as u64;
                    let mut packet_len = 0;
                    for desc in &pending[..sent] {
                        self.ctx
                            .ledger
                            .moved(desc.addr, Location::InFlight, Location::Tx);
                        packet_len += desc.len as usize;
                        if !desc.continues() {
                            self.ctx.stats.tx(port.id, packet_len);
                            packet_len = 0;
                        }
                    }
                    for desc in &pending[sent..] {
                        if !desc.continues() {
                            self.ctx.stats.dropped(port.id, DropCause::TxRingFull);
                        }
                        free(
                            &mut self.cache,
                            &self.ctx.ledger,
                            desc.addr,
                            Location::InFlight,
                        );
                    }
                    if sent > 0 && socket.tx_needs_wakeup() {
                        let _ = socket.kick_tx();
                    }
                }
                PortIo::Tap(tap) if tap.offloaded() => flush_offloaded(
                    &self.ctx,
                    &mut self.cache,
                    &mut self.offload.coalescer,
                    &mut self.offload.gather,
                    port.id,
                    &tap.device,
                    pending,
                ),
                PortIo::Tap(tap) => {
                    for packet in pending.split_inclusive(|desc| !desc.continues()) {
                        let mut parts = [IoSlice::new(&[]); MAX_PACKET_CHUNKS];
                        let mut len = 0;
                        for (part, desc) in parts.iter_mut().zip(packet) {
                            // SAFETY: the frame is in flight in this
                            // worker: no ring and no other reference holds
                            // it.
                            *part = IoSlice::new(unsafe { packet_bytes(&self.ctx, desc) });
                            len += desc.len as usize;
                        }
                        let sent = packet.len() <= MAX_PACKET_CHUNKS
                            && tap.device.send_parts(&parts[..packet.len()]).is_ok();
                        if sent {
                            self.ctx.stats.tx(port.id, len);
                        } else {
                            self.ctx.stats.dropped(port.id, DropCause::TxError);
                        }
                        for desc in packet {
                            free(
                                &mut self.cache,
                                &self.ctx.ledger,
                                desc.addr,
                                Location::InFlight,
                            );
                        }
                    }
                }
            }
            pending.clear();
        }
        sent_total
    }

    /// Sleep until a socket or TAP device has a frame, a command arrives,
    /// or [`SLEEP`] passes.
    fn sleep(&mut self) {
        self.ctx.stats.slept();
        let mut fds: Vec<PollFd> = Vec::with_capacity(self.ports.len() + 1);
        fds.push(PollFd::new(self.ctx.wake.as_fd(), PollFlags::POLLIN));
        for port in &self.ports {
            match &port.io {
                PortIo::AfXdp(afxdp) => {
                    for socket in &afxdp.sockets {
                        fds.push(PollFd::new(socket.as_fd(), PollFlags::POLLIN));
                    }
                }
                PortIo::Tap(tap) => fds.push(PollFd::new(tap.device.as_fd(), PollFlags::POLLIN)),
            }
        }
        let timeout = PollTimeout::try_from(SLEEP).unwrap_or(PollTimeout::NONE);
        let woken_by_command = poll(&mut fds, timeout).is_ok()
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN));
        drop(fds);
        if woken_by_command {
            let _ = self.ctx.wake.read();
        }
        // Whatever woke us, every TAP device is read on the next pass.
        for port in &mut self.ports {
            if let PortIo::Tap(tap) = &mut port.io {
                tap.quiet_passes = 0;
            }
        }
    }
}

/// What deciding a received frame's fate needs, for one port's batch.
struct Dispatch<'a> {
    ctx: &'a WorkerContext,
    forwarder: &'a Forwarder<'a>,
    topology: &'a Topology,
    in_port: PortId,
}

impl Dispatch<'_> {
    /// Decide the fate of a received frame (in flight in this worker), then
    /// queue it for its output port — this worker's, or another's through
    /// its inbox — or drop it.
    fn frame(&self, cache: &mut FrameCache, queues: &mut TxQueues, desc: Desc) {
        let ctx = self.ctx;
        ctx.stats.rx(self.in_port, desc.len as usize);
        let base = ctx.ledger.chunk_base(desc.addr);
        let offset = (desc.addr - base) as usize;
        // SAFETY: the frame just came off an RX ring or the free list into
        // this worker: no ring and no other reference holds it.
        let chunk = unsafe { ctx.umem.chunk_mut(base) };
        let end = (offset + desc.len as usize).min(chunk.len());
        let (out_port, frame) = match self.forwarder.forward(self.in_port, chunk, offset..end) {
            Verdict::Transmit { port, frame } => (port, frame),
            Verdict::ToPeer { peer, frame } => match self.forwarder.encapsulate(peer, chunk, frame)
            {
                Ok(packet) => (self.topology.uplink, packet),
                Err(reason) => return self.drop_frame(cache, base, reason),
            },
            Verdict::Drop(reason) => return self.drop_frame(cache, base, reason),
        };
        let out = Desc {
            addr: base + frame.start as u64,
            len: frame.len() as u32,
            options: 0,
        };
        self.send(cache, queues, out_port, out);
    }

    /// Count the frame at `base` (in flight in this worker) as dropped for
    /// `reason`, and free it.
    fn drop_frame(&self, cache: &mut FrameCache, base: u64, reason: DropCause) {
        self.ctx.stats.dropped(self.in_port, reason);
        free(cache, &self.ctx.ledger, base, Location::InFlight);
    }

    /// Queue the frame `out` (in flight in this worker) for `out_port`:
    /// on this worker's queue, through its owner's inbox, or dropped.
    fn send(&self, cache: &mut FrameCache, queues: &mut TxQueues, out_port: PortId, out: Desc) {
        self.send_packet(cache, queues, out_port, &[out]);
    }

    /// Queue `packet` — one descriptor, or a multi-buffer run of at most
    /// [`MAX_PACKET_CHUNKS`] — (in flight in this worker) for `out_port`,
    /// as [`Dispatch::send`] does a frame.
    fn send_packet(
        &self,
        cache: &mut FrameCache,
        queues: &mut TxQueues,
        out_port: PortId,
        packet: &[Desc],
    ) {
        let ctx = self.ctx;
        if queues.push(out_port, packet) {
            return;
        }
        let owner = self.topology.port(out_port).map(|p| p.worker);
        let (Some(inbox), Some(chunks)) = (
            owner.and_then(|w| ctx.inboxes.get(w)),
            u8::try_from(packet.len())
                .ok()
                .filter(|&n| usize::from(n) <= MAX_PACKET_CHUNKS),
        ) else {
            ctx.stats.dropped(self.in_port, DropCause::PortGone);
            for desc in packet {
                free(cache, &ctx.ledger, desc.addr, Location::InFlight);
            }
            return;
        };
        let mut handoff = Handoff {
            port: out_port,
            descs: [Desc {
                addr: 0,
                len: 0,
                options: 0,
            }; MAX_PACKET_CHUNKS],
            chunks,
        };
        for (slot, desc) in handoff.descs.iter_mut().zip(packet) {
            *slot = *desc;
            ctx.ledger
                .moved(desc.addr, Location::InFlight, Location::Queued);
        }
        if inbox.push(handoff).is_err() {
            ctx.stats.dropped(self.in_port, DropCause::TxRingFull);
            for desc in packet {
                free(cache, &ctx.ledger, desc.addr, Location::Queued);
            }
        }
    }

    /// Gather a multi-buffer packet received on an AF_XDP port (its chunks
    /// in flight in this worker) into `gather`, after as much headroom as
    /// a chunk has, give its chunks back, and route it there
    /// ([`Dispatch::routed_in_place`]).
    fn multi_buffer(
        &self,
        cache: &mut FrameCache,
        queues: &mut TxQueues,
        packet: &[Desc],
        gather: &mut [u8],
    ) {
        let ctx = self.ctx;
        let headroom = ctx.umem.rx_data_offset() as usize;
        let mut end = headroom;
        let mut fits = true;
        for desc in packet {
            // SAFETY: the frame just came off an RX ring into this worker:
            // no ring and no other reference holds it.
            let bytes = unsafe { packet_bytes(ctx, desc) };
            match gather.get_mut(end..end + bytes.len()) {
                Some(room) if fits => room.copy_from_slice(bytes),
                _ => fits = false,
            }
            end += bytes.len();
            free(cache, &ctx.ledger, desc.addr, Location::InFlight);
        }
        ctx.stats.rx(self.in_port, end - headroom);
        if packet.last().is_some_and(Desc::continues) {
            return ctx.stats.dropped(self.in_port, DropCause::IncompletePacket);
        }
        if !fits {
            return ctx
                .stats
                .dropped(self.in_port, DropCause::Wire(DropReason::Oversize));
        }
        self.routed_in_place(cache, queues, gather, headroom..end);
    }

    /// Decide the fate of a frame larger than a buffer frame where it lies
    /// (`frame` in `buf`, with headroom in front of it for outer headers),
    /// then copy the result into as many chunks as it needs and queue them
    /// as one multi-buffer packet.
    fn routed_in_place(
        &self,
        cache: &mut FrameCache,
        queues: &mut TxQueues,
        buf: &mut [u8],
        frame: std::ops::Range<usize>,
    ) {
        let (out_port, out) = match self.forwarder.forward(self.in_port, buf, frame) {
            Verdict::Transmit { port, frame } => (port, frame),
            Verdict::ToPeer { peer, frame } => match self.forwarder.encapsulate(peer, buf, frame) {
                Ok(packet) => (self.topology.uplink, packet),
                Err(reason) => return self.ctx.stats.dropped(self.in_port, reason),
            },
            Verdict::Drop(reason) => return self.ctx.stats.dropped(self.in_port, reason),
        };
        self.send_copied(cache, queues, out_port, &buf[out]);
    }

    /// Copy a routed frame of any size (up to [`MAX_PACKET_CHUNKS`]
    /// chunks) into free chunks, whole chunks from their start, and queue
    /// it for `out_port`: a multi-buffer packet when it spans several.
    fn send_copied(
        &self,
        cache: &mut FrameCache,
        queues: &mut TxQueues,
        out_port: PortId,
        bytes: &[u8],
    ) {
        let ctx = self.ctx;
        let frame_size = ctx.umem.frame_size() as usize;
        let pieces = bytes.chunks(frame_size);
        if bytes.is_empty() || pieces.len() > MAX_PACKET_CHUNKS {
            return ctx
                .stats
                .dropped(self.in_port, DropCause::Wire(DropReason::Oversize));
        }
        let count = pieces.len();
        let mut packet = [Desc {
            addr: 0,
            len: 0,
            options: 0,
        }; MAX_PACKET_CHUNKS];
        for (i, piece) in pieces.enumerate() {
            let Some(base) = cache.get(&ctx.ledger) else {
                ctx.stats.dropped(self.in_port, DropCause::NoFreeFrame);
                for desc in &packet[..i] {
                    free(cache, &ctx.ledger, desc.addr, Location::InFlight);
                }
                return;
            };
            ctx.ledger.moved(base, Location::Free, Location::InFlight);
            // SAFETY: `base` came off the free list: no ring and no other
            // reference holds this frame.
            let chunk = unsafe { ctx.umem.chunk_mut(base) };
            chunk[..piece.len()].copy_from_slice(piece);
            packet[i] = Desc {
                addr: base,
                len: piece.len() as u32,
                options: if i + 1 < count { XDP_PKT_CONTD } else { 0 },
            };
        }
        self.send_packet(cache, queues, out_port, &packet[..count]);
    }

    /// Copy a frame received outside the buffer area (from an offloaded
    /// TAP device) into a buffer frame and decide its fate.
    fn copied_frame(&self, cache: &mut FrameCache, queues: &mut TxQueues, bytes: &[u8]) {
        let ctx = self.ctx;
        let Some(base) = cache.get(&ctx.ledger) else {
            ctx.stats.rx(self.in_port, bytes.len());
            return ctx.stats.dropped(self.in_port, DropCause::NoFreeFrame);
        };
        ctx.ledger.moved(base, Location::Free, Location::InFlight);
        let offset = ctx.umem.rx_data_offset() as usize;
        // SAFETY: `base` came off the free list: no ring and no other
        // reference holds this frame.
        let chunk = unsafe { ctx.umem.chunk_mut(base) };
        let Some(room) = chunk.get_mut(offset..offset + bytes.len()) else {
            ctx.stats.rx(self.in_port, bytes.len());
            ctx.stats
                .dropped(self.in_port, DropCause::Wire(DropReason::Oversize));
            return free(cache, &ctx.ledger, base, Location::InFlight);
        };
        room.copy_from_slice(bytes);
        let desc = Desc {
            addr: base + offset as u64,
            len: bytes.len() as u32,
            options: 0,
        };
        self.frame(cache, queues, desc);
    }

    /// Cut the routed TCP super-frame `frame` into segments of at most
    /// `mss` payload bytes, each in a buffer frame of its own, and send
    /// them to `to`: a port, or encapsulated to a peer through the uplink.
    /// How many segments it made.
    ///
    /// A segment larger than a buffer frame (a jumbo MSS) is written into
    /// `gather` instead, encapsulated there, and copied into a
    /// multi-buffer packet.
    fn cut(
        &self,
        side: &mut TxSide,
        frame: &[u8],
        mss: u16,
        to: CutTo,
        gather: &mut [u8],
    ) -> usize {
        let ctx = self.ctx;
        let segments = match TcpSegments::new(frame, mss) {
            Ok(s) if s.count() <= MAX_SEGMENTS => s,
            Ok(_) => {
                ctx.stats
                    .dropped(self.in_port, DropCause::Wire(DropReason::Oversize));
                return 0;
            }
            Err(reason) => {
                ctx.stats.dropped(self.in_port, DropCause::Wire(reason));
                return 0;
            }
        };
        ctx.stats.segmented(self.in_port, segments.count());
        let offset = ctx.umem.rx_data_offset() as usize;
        let room = ctx.umem.frame_size() as usize - offset;
        for i in 0..segments.count() {
            if segments.segment_len(i) > room {
                self.cut_jumbo(side, &segments, i, to, gather);
                continue;
            }
            let Some(base) = side.cache.get(&ctx.ledger) else {
                ctx.stats.dropped(self.in_port, DropCause::NoFreeFrame);
                continue;
            };
            ctx.ledger.moved(base, Location::Free, Location::InFlight);
            // SAFETY: `base` came off the free list: no ring and no other
            // reference holds this frame.
            let chunk = unsafe { ctx.umem.chunk_mut(base) };
            let Some(written) = segments.write(i, &mut chunk[offset..]) else {
                ctx.stats
                    .dropped(self.in_port, DropCause::Wire(DropReason::Oversize));
                free(side.cache, &ctx.ledger, base, Location::InFlight);
                continue;
            };
            let segment = offset..offset + written;
            let (port, packet) = match to {
                CutTo::Port(port) => (port, segment),
                CutTo::Peer(peer) => match self.forwarder.encapsulate(peer, chunk, segment) {
                    Ok(packet) => (self.topology.uplink, packet),
                    Err(cause) => {
                        ctx.stats.dropped(self.in_port, cause);
                        free(side.cache, &ctx.ledger, base, Location::InFlight);
                        continue;
                    }
                },
            };
            let out = Desc {
                addr: base + packet.start as u64,
                len: packet.len() as u32,
                options: 0,
            };
            self.send(side.cache, side.queues, port, out);
        }
        segments.count()
    }
}

impl Dispatch<'_> {
    /// Write segment `i` of `segments`, larger than a buffer frame, into
    /// `gather` after headroom, encapsulate it there for a peer, and send
    /// it as a multi-buffer packet.
    fn cut_jumbo(
        &self,
        side: &mut TxSide,
        segments: &TcpSegments,
        i: usize,
        to: CutTo,
        gather: &mut [u8],
    ) {
        let ctx = self.ctx;
        let headroom = ctx.umem.rx_data_offset() as usize;
        let Some(written) = segments.write(i, &mut gather[headroom..]) else {
            return ctx
                .stats
                .dropped(self.in_port, DropCause::Wire(DropReason::Oversize));
        };
        let segment = headroom..headroom + written;
        let (port, packet) = match to {
            CutTo::Port(port) => (port, segment),
            CutTo::Peer(peer) => match self.forwarder.encapsulate(peer, gather, segment) {
                Ok(packet) => (self.topology.uplink, packet),
                Err(cause) => return ctx.stats.dropped(self.in_port, cause),
            },
        };
        self.send_copied(side.cache, side.queues, port, &gather[packet]);
    }
}

/// Where the segments of a cut super-frame go.
#[derive(Debug, Clone, Copy)]
enum CutTo {
    /// Out of a port (an AF_XDP pod, the host port).
    Port(PortId),
    /// Encapsulated, to a peer.
    Peer(PeerId),
}

/// A worker's free frames and send queues, lent together.
struct TxSide<'a> {
    cache: &'a mut FrameCache,
    queues: &'a mut TxQueues,
}

/// Read up to a batch of frames from a plain TAP device straight into
/// buffer frames and decide each; how many were read. When the pod MTU
/// lets frames outgrow a buffer frame (a jumbo underlay), each is read
/// into `gather` instead: one that fits is copied into a buffer frame, a
/// larger one is routed where it lies and sent as a multi-buffer packet.
fn receive_plain(
    dispatch: &Dispatch,
    device: &TapDevice,
    side: &mut TxSide,
    gather: &mut [u8],
) -> usize {
    let ctx = dispatch.ctx;
    let (cache, queues) = (&mut *side.cache, &mut *side.queues);
    let offset = ctx.umem.rx_data_offset() as usize;
    let room = ctx.umem.frame_size() as usize - offset;
    if dispatch.topology.pod_mtu as usize + MAX_LINK_HEADER > room {
        return receive_plain_jumbo(dispatch, device, side, gather);
    }
    let mut batch = 0;
    while batch < BATCH {
        let Some(base) = cache.get(&ctx.ledger) else {
            break;
        };
        ctx.ledger.moved(base, Location::Free, Location::InFlight);
        // SAFETY: `base` came off the free list: no ring and no other
        // reference holds this frame.
        let chunk = unsafe { ctx.umem.chunk_mut(base) };
        match device.recv(&mut chunk[offset..]) {
            Ok(Some(len)) => {
                batch += 1;
                let desc = Desc {
                    addr: base + offset as u64,
                    len: len as u32,
                    options: 0,
                };
                dispatch.frame(cache, queues, desc);
            }
            Ok(None) | Err(_) => {
                free(cache, &ctx.ledger, base, Location::InFlight);
                break;
            }
        }
    }
    batch
}

/// The longest link header in front of an IP packet of the MTU: Ethernet
/// and one 802.1Q tag.
const MAX_LINK_HEADER: usize = 18;

/// [`receive_plain`] for frames that may outgrow a buffer frame.
fn receive_plain_jumbo(
    dispatch: &Dispatch,
    device: &TapDevice,
    side: &mut TxSide,
    gather: &mut [u8],
) -> usize {
    let headroom = dispatch.ctx.umem.rx_data_offset() as usize;
    let mut batch = 0;
    while batch < BATCH {
        let len = match device.recv(&mut gather[headroom..]) {
            Ok(Some(len)) => len,
            Ok(None) | Err(_) => break,
        };
        batch += 1;
        let frame = headroom..headroom + len;
        if len <= dispatch.ctx.umem.frame_size() as usize - headroom {
            dispatch.copied_frame(side.cache, side.queues, &gather[frame]);
        } else {
            dispatch.ctx.stats.rx(dispatch.in_port, len);
            dispatch.routed_in_place(side.cache, side.queues, gather, frame);
        }
    }
    batch
}

/// Read up to a batch of frames from an offloaded TAP device, each after
/// its virtio-net header, and decide each: a plain frame (its partial
/// checksum completed) is copied into a buffer frame and forwarded as any
/// other; a TCP super-frame is routed where it lies, then passed whole to
/// an offloaded TAP port of this worker, or cut into segments for any
/// other port or peer. Reading stops once the frames read and the
/// segments made reach a batch, so one pass does not queue more than a
/// TX ring holds. How many frames were read.
fn receive_offloaded(
    dispatch: &Dispatch,
    device: &TapDevice,
    ports: &[WorkerPort],
    side: &mut TxSide,
    scratch: &mut OffloadScratch,
) -> usize {
    let ctx = dispatch.ctx;
    let in_port = dispatch.in_port;
    // Room in front for outer headers: a jumbo frame is encapsulated
    // where it lies.
    let headroom = ctx.umem.rx_data_offset() as usize;
    let room = ctx.umem.frame_size() as usize - headroom;
    let (mut read, mut work) = (0, 0);
    while work < BATCH {
        let len = match device.recv(&mut scratch.frame[headroom..]) {
            Ok(Some(len)) => len,
            Ok(None) | Err(_) => break,
        };
        read += 1;
        work += 1;
        let buf = &mut scratch.frame[..headroom + len];
        let vnet = headroom..headroom + VNET_HEADER_LEN.min(len);
        let offload =
            match VnetHeader::new_checked(&buf[headroom..]).and_then(|h| Offload::parse(&h)) {
                Ok(offload) => offload,
                Err(reason) => {
                    ctx.stats.rx(in_port, len);
                    ctx.stats.dropped(in_port, DropCause::Wire(reason));
                    continue;
                }
            };
        let frame = vnet.end..headroom + len;
        let Some(gso) = offload.gso else {
            if let Checksum::Partial { start, offset } = offload.checksum
                && let Err(reason) =
                    complete_checksum(&mut buf[frame.clone()], start.into(), offset.into())
            {
                ctx.stats.rx(in_port, frame.len());
                ctx.stats.dropped(in_port, DropCause::Wire(reason));
                continue;
            }
            if frame.len() <= room {
                dispatch.copied_frame(side.cache, side.queues, &buf[frame]);
            } else {
                ctx.stats.rx(in_port, frame.len());
                dispatch.routed_in_place(side.cache, side.queues, buf, frame);
            }
            continue;
        };
        ctx.stats.rx(in_port, frame.len());
        if gso.kind != GsoKind::TcpV4 {
            ctx.stats.dropped(in_port, DropCause::NotIpv4);
            continue;
        }
        let verdict = dispatch.forwarder.forward_super_frame(in_port, buf, frame);
        // Whole to an offloaded TAP port of this worker.
        if let Verdict::Transmit { port, frame } = &verdict
            && let Some(j) = ports.iter().position(|p| p.id == *port)
            && let PortIo::Tap(tap) = &ports[j].io
            && tap.offloaded()
        {
            // Frames already queued for that port go first, so a flow is
            // not reordered; routing rewrote MACs and TTL in place, so the
            // header still describes the frame.
            flush_offloaded(
                ctx,
                side.cache,
                &mut scratch.coalescer,
                &mut scratch.gather,
                *port,
                &tap.device,
                &mut side.queues.pending[j],
            );
            let parts = [
                IoSlice::new(&buf[vnet.clone()]),
                IoSlice::new(&buf[frame.clone()]),
            ];
            match tap.device.send_parts(&parts) {
                Ok(()) => {
                    ctx.stats.tx(*port, frame.len());
                    ctx.stats.super_frame_sent(*port, 0);
                }
                Err(_) => ctx.stats.dropped(*port, DropCause::TxError),
            }
            continue;
        }
        // Anywhere else it is cut into segments.
        let (frame, cut_to) = match verdict {
            Verdict::Drop(cause) => {
                ctx.stats.dropped(in_port, cause);
                continue;
            }
            Verdict::ToPeer { peer, frame } => (frame, CutTo::Peer(peer)),
            Verdict::Transmit { port, frame } => (frame, CutTo::Port(port)),
        };
        work += dispatch.cut(side, &buf[frame], gso.size, cut_to, &mut scratch.gather);
    }
    read
}

/// Send the frames queued for an offloaded TAP port, coalescing each
/// flow's consecutive TCP segments into super-frames (userspace GRO; all
/// flushed before returning, so no frame waits for the next batch). A
/// multi-buffer packet is gathered into `gather` first.
#[allow(clippy::too_many_arguments)]
fn flush_offloaded(
    ctx: &WorkerContext,
    cache: &mut FrameCache,
    coalescer: &mut Coalescer,
    gather: &mut [u8],
    id: PortId,
    device: &TapDevice,
    pending: &mut Vec<Desc>,
) {
    let mut header = [0u8; VNET_HEADER_LEN];
    let mut send = |offload: &Offload, frame: &[u8]| {
        offload.emit(&mut VnetHeader::new_unchecked(&mut header[..]));
        match device.send_parts(&[IoSlice::new(&header), IoSlice::new(frame)]) {
            Ok(()) => {
                ctx.stats.tx(id, frame.len());
                if let Some(gso) = offload.gso {
                    let payload = frame.len().saturating_sub(usize::from(gso.hdr_len));
                    let frames = payload.div_ceil(usize::from(gso.size).max(1));
                    ctx.stats.super_frame_sent(id, frames);
                }
            }
            Err(_) => ctx.stats.dropped(id, DropCause::TxError),
        }
    };
    for packet in pending.split_inclusive(|desc| !desc.continues()) {
        if let [desc] = packet {
            // SAFETY: the frame is in flight in this worker: no ring and
            // no other reference holds it.
            coalescer.push(unsafe { packet_bytes(ctx, desc) }, &mut send);
        } else {
            let mut len = 0;
            for desc in packet {
                // SAFETY: as above.
                let bytes = unsafe { packet_bytes(ctx, desc) };
                if let Some(room) = gather.get_mut(len..len + bytes.len()) {
                    room.copy_from_slice(bytes);
                }
                len += bytes.len();
            }
            match gather.get(..len) {
                Some(frame) => coalescer.push(frame, &mut send),
                None => ctx.stats.dropped(id, DropCause::Wire(DropReason::Oversize)),
            }
        }
        for desc in packet {
            free(cache, &ctx.ledger, desc.addr, Location::InFlight);
        }
    }
    pending.clear();
    coalescer.flush(&mut send);
}

/// The bytes `desc` describes, in its chunk.
///
/// # Safety
/// The frame must be in flight in this worker: on no ring, and no other
/// reference to its chunk alive.
unsafe fn packet_bytes<'a>(ctx: &'a WorkerContext, desc: &Desc) -> &'a [u8] {
    let base = ctx.ledger.chunk_base(desc.addr);
    let offset = (desc.addr - base) as usize;
    // SAFETY: the caller guarantees no one else holds the chunk.
    let chunk = unsafe { ctx.umem.chunk_mut(base) };
    let end = (offset + desc.len as usize).min(chunk.len());
    &chunk[offset.min(end)..end]
}

fn free(cache: &mut FrameCache, ledger: &FrameLedger, addr: u64, from: Location) {
    let base = ledger.chunk_base(addr);
    ledger.moved(base, from, Location::Free);
    cache.put(ledger, base);
}

/// Frames socket `s` handed to the kernel for sending that have not come
/// back on its completion ring yet.
fn in_kernel_tx(port: &AfXdpPort, s: usize) -> u64 {
    port.sent[s] - port.completed[s]
}

/// Take socket `s`'s completed transmissions back onto the free list.
fn reclaim_completions(
    cache: &mut FrameCache,
    ledger: &FrameLedger,
    port: &mut AfXdpPort,
    s: usize,
    scratch: &mut Vec<u64>,
) -> usize {
    scratch.clear();
    let n = port.sockets[s].complete(scratch, 4 * BATCH);
    port.completed[s] += n as u64;
    for &addr in scratch.iter() {
        free(cache, ledger, addr, Location::Tx);
    }
    n
}

/// Fill the rings of sockets `first..` of `port`, then register them in
/// its XDP program, so frames are redirected only where frames can land.
fn start_sockets(
    cache: &mut FrameCache,
    ledger: &FrameLedger,
    port: &mut AfXdpPort,
    first: usize,
) -> anyhow::Result<()> {
    for s in first..port.sockets.len() {
        refill(cache, ledger, port, s);
    }
    let mut program = port.program.lock().unwrap_or_else(|e| e.into_inner());
    for socket in &port.sockets[first..] {
        program.register_socket(socket.queue(), socket.as_raw_fd())?;
    }
    Ok(())
}

/// Top up socket `s`'s fill ring to the port's target.
fn refill(cache: &mut FrameCache, ledger: &FrameLedger, port: &mut AfXdpPort, s: usize) {
    let socket = &mut port.sockets[s];
    let on_ring = socket.frames_held_for_rx();
    let want = port.fill[s]
        .target()
        .saturating_sub(on_ring)
        .min(socket.fill_free_slots()) as usize;
    if want < BATCH / 4 {
        return;
    }
    let mut frames = [0u64; 4 * BATCH];
    let mut n = 0;
    while n < want.min(frames.len()) {
        let Some(base) = cache.get(ledger) else { break };
        ledger.moved(base, Location::Free, Location::Fill);
        frames[n] = base;
        n += 1;
    }
    let given = socket.fill(&frames[..n]);
    for &base in &frames[given..n] {
        ledger.moved(base, Location::Fill, Location::Free);
        cache.put(ledger, base);
    }
}
