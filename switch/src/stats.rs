//! Counters: per port (packets, bytes, drops by reason) and per worker
//! (polls, batches, ring levels). Each worker writes only its own block,
//! with plain stores — no locked instructions on the packet path — and the
//! control plane sums the blocks when asked.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::drops::{DROP_COUNT, DropCause};
use crate::topology::PortId;

pub use podswitch_control::stats::{
    BATCH_BUCKETS, KernelDrops, OffloadCounts, PortReport, RingLevelsTotal, WorkerReport,
};

/// Most ports a switch can have (pods, uplink and host port).
pub const MAX_PORTS: usize = 1024;

/// Add to a counter only its owner writes.
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// One worker's counters for one port.
pub struct PortCounters {
    rx_packets: AtomicU64,
    rx_bytes: AtomicU64,
    tx_packets: AtomicU64,
    tx_bytes: AtomicU64,
    drops: [AtomicU64; DROP_COUNT],
    kernel: [AtomicU64; KERNEL_DROP_COUNT],
    offload: [AtomicU64; OFFLOAD_COUNT],
}

/// How many offload counters a port has.
const OFFLOAD_COUNT: usize = 4;

/// How many kernel-side AF_XDP counters a port has.
const KERNEL_DROP_COUNT: usize = 4;

impl PortCounters {
    fn new() -> PortCounters {
        PortCounters {
            rx_packets: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            tx_packets: AtomicU64::new(0),
            tx_bytes: AtomicU64::new(0),
            drops: std::array::from_fn(|_| AtomicU64::new(0)),
            kernel: std::array::from_fn(|_| AtomicU64::new(0)),
            offload: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn reset(&self) {
        for c in [
            &self.rx_packets,
            &self.rx_bytes,
            &self.tx_packets,
            &self.tx_bytes,
        ]
        .into_iter()
        .chain(self.drops.iter())
        .chain(self.kernel.iter())
        .chain(self.offload.iter())
        {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Counters a worker keeps about its own polling.
#[derive(Default)]
struct PollCounters {
    busy_polls: AtomicU64,
    idle_polls: AtomicU64,
    sleeps: AtomicU64,
    raised: AtomicU64,
    batches: [AtomicU64; BATCH_BUCKETS],
    fill_ring: AtomicU64,
    rx_ring: AtomicU64,
    tx_ring: AtomicU64,
    completion_ring: AtomicU64,
}

/// Everything one worker counts.
pub struct WorkerStats {
    ports: Box<[PortCounters]>,
    poll: PollCounters,
}

impl WorkerStats {
    /// Zeroed counters.
    pub fn new() -> WorkerStats {
        WorkerStats {
            ports: (0..MAX_PORTS).map(|_| PortCounters::new()).collect(),
            poll: PollCounters::default(),
        }
    }

    fn port(&self, port: PortId) -> Option<&PortCounters> {
        self.ports.get(usize::from(port.0))
    }

    /// A frame received on `port`.
    pub fn rx(&self, port: PortId, bytes: usize) {
        if let Some(c) = self.port(port) {
            bump(&c.rx_packets, 1);
            bump(&c.rx_bytes, bytes as u64);
        }
    }

    /// A frame sent on `port`.
    pub fn tx(&self, port: PortId, bytes: usize) {
        if let Some(c) = self.port(port) {
            bump(&c.tx_packets, 1);
            bump(&c.tx_bytes, bytes as u64);
        }
    }

    /// A super-frame received on `port` (counted in `rx` too) was cut into
    /// `segments` frames on its way out.
    pub fn segmented(&self, port: PortId, segments: usize) {
        if let Some(c) = self.port(port) {
            bump(&c.offload[0], 1);
            bump(&c.offload[1], segments as u64);
        }
    }

    /// A super-frame sent on `port` (counted in `tx` too), coalesced
    /// from `coalesced` frames (0: passed through whole from a TAP port).
    pub fn super_frame_sent(&self, port: PortId, coalesced: usize) {
        if let Some(c) = self.port(port) {
            bump(&c.offload[2], 1);
            bump(&c.offload[3], coalesced as u64);
        }
    }

    /// A frame received on `port` and dropped for `reason`.
    pub fn dropped(&self, port: PortId, reason: DropCause) {
        if let Some(c) = self.port(port) {
            bump(&c.drops[reason.index()], 1);
        }
    }

    /// Publish the kernel's counters for a port's AF_XDP sockets (summed).
    pub fn kernel_drops(&self, port: PortId, drops: KernelDrops) {
        if let Some(c) = self.port(port) {
            let values = [
                drops.rx_dropped,
                drops.rx_ring_full,
                drops.fill_ring_empty,
                drops.invalid_descs,
            ];
            for (counter, value) in c.kernel.iter().zip(values) {
                counter.store(value, Ordering::Relaxed);
            }
        }
    }

    /// Zero a port's counters (its id is being reused).
    pub fn reset_port(&self, port: PortId) {
        if let Some(c) = self.port(port) {
            c.reset();
        }
    }

    /// One pass of the poll loop that found work (`true`) or none.
    pub fn poll(&self, busy: bool) {
        bump(
            if busy {
                &self.poll.busy_polls
            } else {
                &self.poll.idle_polls
            },
            1,
        );
    }

    /// The worker went to sleep waiting for traffic.
    pub fn slept(&self) {
        bump(&self.poll.sleeps, 1);
    }

    /// The worker fell behind its senders and raised its priority.
    pub fn raised(&self) {
        bump(&self.poll.raised, 1);
    }

    /// A batch of `size` frames received from one socket.
    pub fn batch(&self, size: usize) {
        let bucket = (usize::BITS - size.max(1).leading_zeros()) as usize - 1;
        bump(&self.poll.batches[bucket.min(BATCH_BUCKETS - 1)], 1);
    }

    /// Publish the ring occupancy seen this pass.
    pub fn ring_levels(&self, levels: RingLevelsTotal) {
        let p = &self.poll;
        p.fill_ring.store(levels.fill, Ordering::Relaxed);
        p.rx_ring.store(levels.rx, Ordering::Relaxed);
        p.tx_ring.store(levels.tx, Ordering::Relaxed);
        p.completion_ring
            .store(levels.completion, Ordering::Relaxed);
    }
}

impl Default for WorkerStats {
    fn default() -> WorkerStats {
        WorkerStats::new()
    }
}

/// Sum `port`'s counters over every worker's block.
pub fn port_report(blocks: &[&WorkerStats], port: PortId) -> PortReport {
    let mut report = PortReport::default();
    for block in blocks {
        let Some(c) = block.port(port) else { continue };
        report.rx_packets += c.rx_packets.load(Ordering::Relaxed);
        report.rx_bytes += c.rx_bytes.load(Ordering::Relaxed);
        report.tx_packets += c.tx_packets.load(Ordering::Relaxed);
        report.tx_bytes += c.tx_bytes.load(Ordering::Relaxed);
        let k = |i: usize| c.kernel[i].load(Ordering::Relaxed);
        report.kernel += KernelDrops {
            rx_dropped: k(0),
            rx_ring_full: k(1),
            fill_ring_empty: k(2),
            invalid_descs: k(3),
        };
        let o = |i: usize| c.offload[i].load(Ordering::Relaxed);
        report.offload.super_frames_cut += o(0);
        report.offload.segments_made += o(1);
        report.offload.super_frames_sent += o(2);
        report.offload.frames_coalesced += o(3);
        for (reason, counter) in DropCause::all().zip(c.drops.iter()) {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                *report.drops.entry(reason.as_str().to_string()).or_default() += n;
            }
        }
    }
    report
}

/// The frames and bytes one worker received and sent, summed over every
/// port slot (a removed port's counts stay in until its id is reused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerTraffic {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Sum one worker's traffic counters over all its port slots.
pub fn worker_traffic(block: &WorkerStats) -> WorkerTraffic {
    let mut sum = WorkerTraffic::default();
    for c in block.ports.iter() {
        sum.rx_packets += c.rx_packets.load(Ordering::Relaxed);
        sum.rx_bytes += c.rx_bytes.load(Ordering::Relaxed);
        sum.tx_packets += c.tx_packets.load(Ordering::Relaxed);
        sum.tx_bytes += c.tx_bytes.load(Ordering::Relaxed);
    }
    sum
}

/// A worker's polling summary.
pub fn worker_report(block: &WorkerStats) -> WorkerReport {
    let p = &block.poll;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    WorkerReport {
        busy_polls: load(&p.busy_polls),
        idle_polls: load(&p.idle_polls),
        sleeps: load(&p.sleeps),
        raised: load(&p.raised),
        batches: std::array::from_fn(|i| load(&p.batches[i])),
        rings: RingLevelsTotal {
            fill: load(&p.fill_ring),
            rx: load(&p.rx_ring),
            tx: load(&p.tx_ring),
            completion: load(&p.completion_ring),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use podswitch_encap::DropReason;

    #[test]
    fn reports_sum_workers_and_skip_zero_drops() {
        let a = WorkerStats::new();
        let b = WorkerStats::new();
        let port = PortId(3);
        a.rx(port, 100);
        b.rx(port, 50);
        b.tx(port, 60);
        a.dropped(port, DropCause::NoRoute);
        a.dropped(port, DropCause::Wire(DropReason::UnknownVni));
        a.dropped(port, DropCause::NoRoute);
        let r = port_report(&[&a, &b], port);
        assert_eq!(
            (r.rx_packets, r.rx_bytes, r.tx_packets, r.tx_bytes),
            (2, 150, 1, 60)
        );
        assert_eq!(r.drops.len(), 2);
        assert_eq!(r.drops["no_route"], 2);
        assert_eq!(r.drops["unknown_vni"], 1);
        a.tx(PortId(7), 40);
        assert_eq!(
            worker_traffic(&a),
            WorkerTraffic {
                rx_packets: 1,
                rx_bytes: 100,
                tx_packets: 1,
                tx_bytes: 40
            }
        );
        a.reset_port(port);
        assert_eq!(port_report(&[&a], port), PortReport::default());
        // Out-of-range ports are ignored, not a panic.
        a.rx(PortId(u16::MAX), 1);
    }

    #[test]
    fn batch_buckets() {
        let s = WorkerStats::new();
        for size in [1, 2, 3, 4, 63, 64, 64, 0] {
            s.batch(size);
        }
        assert_eq!(worker_report(&s).batches, [2, 2, 1, 0, 0, 1, 2]);
    }
}
