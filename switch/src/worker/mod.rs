//! Polling workers. Each worker owns some ports and moves their packets
//! in batches of up to 64, as VPP and OVS's dpif-netdev do. A pass:
//!
//! 1. service every port ([`Port::service`]: completions back, fill rings
//!    topped up);
//! 2. receive a batch on every port ([`Port::receive`]) into the one
//!    dispatch ([`Pipeline::dispatch`]: count, decide, carry out), which
//!    queues each packet for its output port — this worker's, or another
//!    worker's through that worker's inbox, as frames of the shared buffer
//!    area;
//! 3. take what other workers handed over;
//! 4. transmit every port's queue ([`Port::transmit`]), one kick per port.
//!
//! Where to find a packet: received in `afxdp_port.rs` and `tap_port.rs`,
//! decided in `crate::forward`, changed (encapsulated, cut, copied) in
//! `pipeline.rs`, sent in the ports again.
//!
//! In adaptive mode (the default) a worker keeps polling for a time window
//! after the last packet (`spin_us`, longer than a request/response round
//! trip, so the answer finds it awake), then sleeps in `poll()` on its
//! ports and wake-up event, so an idle node does not burn a core; in busy
//! mode it always spins. Either way a pass that found nothing yields the
//! CPU (`sched_yield`) to any other thread waiting for it, so a spinning
//! worker does not hold up the pods that share its core.

mod affinity;
mod afxdp_port;
mod buffers;
mod inbox;
mod pipeline;
mod port;
mod priority;
mod tap_port;
mod tunnel_port;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam::channel::{Receiver, Sender};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::sched_yield;
use nix::sys::eventfd::EventFd;
use podswitch_services::Pass;

pub use afxdp_port::AfXdpPort;
pub use inbox::Inbox;
pub use pipeline::{Handoff, MAX_PACKET_CHUNKS, Packet, Pipeline, Takes, TxQueues};
pub use port::{Port, TxContext};
pub use tap_port::{PacketPort, TapPort};
pub use tunnel_port::{TunnelDevice, TunnelPort};

use self::affinity::Affinity;
use self::priority::{Load, Priority};
use crate::afxdp::{Umem, XskSocket};
use crate::capture::{CaptureTap, Direction};
use crate::config::PollMode;
use crate::fib::SharedFib;
use crate::forward::Forwarder;
use crate::frame_budget::FillGrowth;
use crate::frames::{FrameLedger, FramePool};
use crate::policy::Policies;
use crate::services::Services;
use crate::stats::{RingLevelsTotal, WorkerStats};
use crate::topology::{PortId, RouteTarget, Topology};
use buffers::Buffers;

/// Most packets taken from one socket (or TAP device) per pass.
pub const BATCH: usize = 64;
/// Longest sleep; the worker also wakes on traffic and on commands.
const SLEEP: Duration = Duration::from_secs(1);
/// How often a worker reads the kernel's socket counters and lets the fill
/// budgets of quiet sockets shrink.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Passes between looks at the clock for housekeeping.
const CLOCK_PASSES: u64 = 256;
/// Packets handed between workers that may wait in one inbox.
pub const INBOX_CAPACITY: usize = 4096;

/// A port handed to a worker.
pub struct WorkerPort {
    /// The port's id.
    pub id: PortId,
    /// Its I/O.
    pub port: Box<dyn Port>,
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
    /// The Service stage, with `service_translation = "switch"`.
    pub services: Option<Arc<Services>>,
    /// The NetworkPolicy stage.
    pub policies: Arc<Policies>,
    /// Every worker's inbox, by worker index.
    pub inboxes: Arc<[Inbox]>,
    /// This worker's counters.
    pub stats: Arc<WorkerStats>,
    /// Written to wake the worker when it sleeps (its inbox has it too).
    pub wake: Arc<EventFd>,
    /// Frames pod sockets may keep on fill rings past their minimum.
    pub growth: Arc<FillGrowth>,
    /// Adaptive or busy.
    pub poll_mode: PollMode,
    /// How long an adaptive worker keeps polling after its last work
    /// before it sleeps.
    pub spin: Duration,
    /// The worker's index.
    pub index: usize,
    /// Its core.
    pub core: usize,
    /// Adaptive mode: whether it lets go of its core while asleep
    /// (`sleep_on_any_cpu`).
    pub sleep_on_any_cpu: bool,
    /// Its nice value while it is behind (`overload_nice`).
    pub overload_nice: i32,
}

/// A polling worker.
pub struct Worker {
    ctx: WorkerContext,
    commands: Receiver<Command>,
    frames: FramePool,
    buffers: Buffers,
    ports: Vec<WorkerPort>,
    queues: TxQueues,
}

impl Worker {
    /// A worker with no ports yet.
    pub fn new(ctx: WorkerContext, commands: Receiver<Command>) -> Worker {
        let frames = FramePool::new(ctx.umem.clone(), ctx.ledger.clone());
        Worker {
            ctx,
            commands,
            frames,
            buffers: Buffers::default(),
            ports: Vec::new(),
            queues: TxQueues::default(),
        }
    }

    /// Poll until told to stop; then return every frame.
    pub fn run(mut self) {
        let mut idle_since: Option<Instant> = None;
        let mut passes = 0u64;
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        let mut priority = Priority::new(self.ctx.overload_nice);
        let mut affinity = Affinity::pin(
            self.ctx.core,
            self.ctx.sleep_on_any_cpu && self.ctx.poll_mode == PollMode::Adaptive,
        );
        loop {
            if !self.run_commands() {
                break;
            }
            passes += 1;
            if passes.is_multiple_of(CLOCK_PASSES) && Instant::now() >= next_housekeeping {
                self.housekeeping();
                next_housekeeping = Instant::now() + HOUSEKEEPING;
            }
            let load = self.pass();
            self.ctx.stats.poll(load != Load::Idle);
            if priority.follow(load) {
                self.ctx.stats.raised();
            }
            if load != Load::Idle {
                idle_since = None;
                affinity.after_work();
                continue;
            }
            if self.ctx.poll_mode == PollMode::Adaptive {
                let now = Instant::now();
                if now.duration_since(*idle_since.get_or_insert(now)) >= self.ctx.spin {
                    self.publish_kernel_drops();
                    affinity.before_sleep();
                    self.sleep();
                    affinity.woken();
                    idle_since = None;
                    continue;
                }
            }
            // An idle pass: let a thread waiting for this CPU (a pod's
            // sender or receiver on a shared core) run now rather than
            // after the worker's time slice; with nothing else runnable
            // the call returns at once and the spin goes on.
            let _ = sched_yield();
        }
        let ids: Vec<PortId> = self.ports.iter().map(|p| p.id).collect();
        for id in ids {
            self.remove_port(id);
        }
        self.frames.flush();
    }

    /// Carry out pending commands; false once told to stop.
    fn run_commands(&mut self) -> bool {
        while let Ok(command) = self.commands.try_recv() {
            match command {
                Command::Add(port, done) => {
                    let _ = done.send(self.add_port(port));
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
        port.port.start(&mut self.frames)?;
        self.queues.add(port.id, port.port.takes());
        self.ports.push(port);
        Ok(())
    }

    fn add_sockets(&mut self, id: PortId, sockets: Vec<XskSocket>) -> anyhow::Result<()> {
        let port = self
            .ports
            .iter_mut()
            .find(|p| p.id == id)
            .ok_or_else(|| anyhow::anyhow!("no port {id:?} on this worker"))?;
        port.port.add_sockets(sockets, &mut self.frames)
    }

    /// Stop polling a port and put every frame it holds back on the free
    /// list: those in its rings (after in-flight transmissions complete)
    /// and those waiting to be sent.
    fn remove_port(&mut self, id: PortId) {
        let Some(i) = self.ports.iter().position(|p| p.id == id) else {
            return;
        };
        let port = self.ports.swap_remove(i);
        let mut tx = TxContext {
            frames: &mut self.frames,
            buffers: &mut self.buffers,
            stats: &self.ctx.stats,
        };
        for packet in self.queues.swap_remove(i) {
            tx.release(packet);
        }
        port.port.close(&mut self.frames, &self.ctx.growth);
        self.ctx.stats.reset_port(id);
    }

    /// Once a second: publish the kernel's counters, and shrink the fill
    /// budgets of sockets that received less than their budget.
    fn housekeeping(&mut self) {
        for port in &mut self.ports {
            port.port
                .housekeeping(port.id, &self.ctx.stats, &self.ctx.growth);
        }
    }

    /// Read the kernel's counters of every port into the stats.
    fn publish_kernel_drops(&self) {
        for port in &self.ports {
            port.port.publish_kernel_drops(port.id, &self.ctx.stats);
        }
    }

    /// One pass over every port. True if anything moved.
    fn pass(&mut self) -> Load {
        let topology = self.ctx.topology.load();
        let fib = self.ctx.fib.load();
        let services = self.ctx.services.as_deref();
        let table = services.map(Services::table);
        let stage = services
            .zip(table.as_deref())
            .map(|(services, table)| services.stage(table, Pass::Live));
        let enforced = self.ctx.policies.enforced();
        let policy = self.ctx.policies.stage(&enforced, Pass::Live);
        let mut work = 0;
        let mut behind = false;
        let mut levels = RingLevelsTotal::default();
        for port in &mut self.ports {
            work += port.port.service(&mut self.frames, &mut levels);
            let mut pipeline = Pipeline {
                forwarder: Forwarder {
                    topology: &topology,
                    fib: &fib,
                    services: stage,
                    policy,
                },
                stats: &self.ctx.stats,
                inboxes: &self.ctx.inboxes,
                frames: &mut self.frames,
                buffers: &mut self.buffers,
                tunnel: self.queues.tunnel_for(port.id, topology.tunnel),
                queues: &mut self.queues,
                in_port: port.id,
            };
            let received = port.port.receive(&mut pipeline, &self.ctx.growth);
            behind |= received >= BATCH;
            work += received;
        }
        work += self.drain_inbox();
        work += self.transmit(&topology);
        self.ctx.stats.ring_levels(levels);
        match (behind, work) {
            (true, _) => Load::Behind,
            (false, 0) => Load::Idle,
            _ => Load::Worked,
        }
    }

    /// Take the packets other workers handed over for this worker's ports.
    fn drain_inbox(&mut self) -> usize {
        let mut n = 0;
        let inbox = &self.ctx.inboxes[self.ctx.index];
        while let Some(handoff) = inbox.pop() {
            n += 1;
            for frame in &handoff.frames {
                self.frames.from_inbox(frame);
            }
            let queue = self.queues.find(handoff.port);
            for frame in handoff.frames {
                match queue {
                    Some(i) => self.queues.pending_mut(i).push(Packet::Frame(frame)),
                    // The port left this worker meanwhile.
                    None => self.frames.free(frame),
                }
            }
        }
        n
    }

    /// Send what this pass queued for each port (a capture on the port
    /// sees it first).
    fn transmit(&mut self, topology: &Topology) -> usize {
        let mut tx = TxContext {
            frames: &mut self.frames,
            buffers: &mut self.buffers,
            stats: &self.ctx.stats,
        };
        let mut sent = 0;
        for (i, port) in self.ports.iter_mut().enumerate() {
            let queue = self.queues.pending_mut(i);
            if !queue.is_empty() {
                if let Some(tap) = topology.capture(port.id) {
                    capture_sent(tap, &tx, queue);
                }
                sent += port.port.transmit(port.id, queue, &mut tx);
            }
        }
        sent
    }

    /// Sleep until a port has something, a command arrives, or [`SLEEP`]
    /// passes.
    fn sleep(&mut self) {
        let inbox = &self.ctx.inboxes[self.ctx.index];
        if !inbox.may_sleep() {
            return;
        }
        self.ctx.stats.slept();
        let mut fds: Vec<PollFd> = Vec::with_capacity(self.ports.len() + 1);
        fds.push(PollFd::new(self.ctx.wake.as_fd(), PollFlags::POLLIN));
        for port in &self.ports {
            port.port.poll_fds(&mut fds);
        }
        let timeout = PollTimeout::try_from(SLEEP).unwrap_or(PollTimeout::NONE);
        let woken_by_command = poll(&mut fds, timeout).is_ok()
            && fds[0]
                .revents()
                .is_some_and(|r| r.contains(PollFlags::POLLIN));
        drop(fds);
        self.ctx.inboxes[self.ctx.index].awake();
        if woken_by_command {
            let _ = self.ctx.wake.read();
        }
        for port in &mut self.ports {
            port.port.woken();
        }
    }
}

/// Offer a port's queue to its capture, a packet at a time: the frames of
/// a multi-buffer run are joined first.
fn capture_sent(tap: &CaptureTap, tx: &TxContext, queue: &[Packet]) {
    let mut run = Vec::new();
    for packet in queue {
        let bytes = tx.bytes(packet);
        match packet {
            Packet::Frame(frame) if frame.continues() => run.extend_from_slice(bytes),
            _ if !run.is_empty() => {
                run.extend_from_slice(bytes);
                tap.offer(Direction::Sent, &run);
                run.clear();
            }
            _ => tap.offer(Direction::Sent, bytes),
        }
    }
}
