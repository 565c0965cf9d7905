//! Counters as the `stats` request reports them: per port (packets,
//! bytes, drops by reason, the kernel's AF_XDP counters, offload work),
//! per worker (polls, batches, ring levels) and where the buffer frames are.

use serde::{Deserialize, Serialize};

/// Batch size histogram buckets: 1, 2–3, 4–7, 8–15, 16–31, 32–63, 64.
pub const BATCH_BUCKETS: usize = 7;

/// Ring occupancy a worker last saw on its sockets, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingLevelsTotal {
    /// Frames on fill rings.
    pub fill: u64,
    /// Frames received and not yet taken off RX rings.
    pub rx: u64,
    /// Frames on TX rings not yet sent.
    pub tx: u64,
    /// Frames sent, not yet taken off completion rings.
    pub completion: u64,
}

/// What the kernel counted on a port's AF_XDP sockets: frames lost before
/// the switch saw them, or descriptors it refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelDrops {
    /// Dropped on receive: no fill-ring frame, or too big for a frame.
    pub rx_dropped: u64,
    /// Dropped on receive because the RX ring was full (the worker fell behind).
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub fill_ring_empty: u64,
    /// Invalid descriptors on the fill or TX ring (a switch bug if not 0).
    pub invalid_descs: u64,
}

impl std::ops::AddAssign for KernelDrops {
    fn add_assign(&mut self, other: KernelDrops) {
        self.rx_dropped += other.rx_dropped;
        self.rx_ring_full += other.rx_ring_full;
        self.fill_ring_empty += other.fill_ring_empty;
        self.invalid_descs += other.invalid_descs;
    }
}

/// A port's counters summed over workers, as `podswitch stats` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortReport {
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Drops by reason name; reasons with no drops are left out.
    pub drops: std::collections::BTreeMap<String, u64>,
    /// The kernel's AF_XDP counters (zero for TAP ports).
    pub kernel: KernelDrops,
    /// Frames the kernel dropped at the port's interface itself, before
    /// any XDP program or socket saw them (a veth whose receive queue was
    /// full) — `ip -s link`'s RX dropped.
    pub interface_rx_dropped: u64,
    /// For a pod's TAP port: frames the pod's kernel dropped in the TAP
    /// device's queue because the switch had not read them yet (the
    /// device's `TX dropped` in the pod): the pod sent faster than the
    /// switch read, and the kernel gives a TAP sender no backpressure.
    #[serde(default)]
    pub tap_queue_dropped: u64,
    /// Large-segment work on the port (TAP ports with offloads).
    #[serde(default)]
    pub offload: OffloadCounts,
}

/// What a port did with TCP super-frames.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffloadCounts {
    /// Super-frames received here and cut into segments on the way out
    /// (to a port that takes only frames: AF_XDP pods, the uplink).
    pub super_frames_cut: u64,
    /// The segments they were cut into.
    pub segments_made: u64,
    /// Super-frames sent here: coalesced from frames, or passed through
    /// whole from another TAP port.
    pub super_frames_sent: u64,
    /// The frames coalesced into them.
    pub frames_coalesced: u64,
}

/// A worker's polling summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Loop passes that found work.
    pub busy_polls: u64,
    /// Loop passes that found none.
    pub idle_polls: u64,
    /// Times it slept waiting for traffic.
    pub sleeps: u64,
    /// Times it fell behind its senders and took `overload_nice`.
    #[serde(default)]
    pub raised: u64,
    /// Batches by size bucket: 1, 2–3, 4–7, 8–15, 16–31, 32–63, 64.
    pub batches: [u64; BATCH_BUCKETS],
    /// Ring occupancy last seen.
    pub rings: RingLevelsTotal,
}

/// How many frames are in each place.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Census {
    /// On the free list.
    pub free: u64,
    /// On fill or RX rings.
    pub fill_or_rx: u64,
    /// Held by workers.
    pub in_flight: u64,
    /// On TX or completion rings.
    pub tx_or_completion: u64,
    /// Between workers.
    pub queued: u64,
}

impl Census {
    /// Frames counted in all places: always the frame count.
    pub fn total(&self) -> u64 {
        self.free + self.fill_or_rx + self.in_flight + self.tx_or_completion + self.queued
    }
}
