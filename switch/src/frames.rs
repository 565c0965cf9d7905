//! Where every buffer frame is. The switch owns a fixed number of frames
//! (UMEM chunks) and each is, at any moment, in exactly one place: the free
//! list, a fill ring (given to the kernel for receiving; the RX ring once
//! filled), in flight in a worker, a TX ring (until its completion is
//! read), or queued between workers. The [`FrameLedger`] records every
//! move; with checking on it also verifies that each move starts where the
//! frame really is, and counts any that does not.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

pub use podswitch_control::stats::Census;

/// One place a frame can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Location {
    /// On the free list (global or a worker's cache).
    Free = 0,
    /// On a socket's fill ring, or received onto its RX ring.
    Fill = 1,
    /// Held by a worker while it forwards the frame.
    InFlight = 2,
    /// On a socket's TX ring, or back on its completion ring.
    Tx = 3,
    /// In another worker's inbox.
    Queued = 4,
}

const LOCATIONS: [Location; 5] = [
    Location::Free,
    Location::Fill,
    Location::InFlight,
    Location::Tx,
    Location::Queued,
];

/// Every frame's place, and the global free list.
pub struct FrameLedger {
    frame_size: u64,
    places: Box<[AtomicU8]>,
    check: bool,
    violations: AtomicU64,
    free: Mutex<Vec<u64>>,
}

impl FrameLedger {
    /// A ledger of `frame_count` frames of `frame_size` bytes, all free.
    /// With `check`, every move verifies where the frame was.
    pub fn new(frame_count: u32, frame_size: u32, check: bool) -> FrameLedger {
        let frame_size = u64::from(frame_size);
        FrameLedger {
            frame_size,
            places: (0..frame_count)
                .map(|_| AtomicU8::new(Location::Free as u8))
                .collect(),
            check,
            violations: AtomicU64::new(0),
            free: Mutex::new(
                (0..u64::from(frame_count))
                    .rev()
                    .map(|i| i * frame_size)
                    .collect(),
            ),
        }
    }

    /// How many frames there are.
    pub fn frame_count(&self) -> u32 {
        self.places.len() as u32
    }

    /// The chunk (frame) base address holding `addr`.
    pub fn chunk_base(&self, addr: u64) -> u64 {
        addr - addr % self.frame_size
    }

    /// Record that the frame at `addr` moved from `from` to `to`.
    pub fn moved(&self, addr: u64, from: Location, to: Location) {
        let Some(place) = self.places.get((addr / self.frame_size) as usize) else {
            self.violations.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if self.check {
            let was = place.swap(to as u8, Ordering::Relaxed);
            if was != from as u8 {
                self.violations.fetch_add(1, Ordering::Relaxed);
                tracing::error!(addr, ?from, ?to, was, "frame accounting: impossible move");
            }
        } else {
            place.store(to as u8, Ordering::Relaxed);
        }
    }

    /// Record that the frame at `addr`, found in a removed socket's rings,
    /// is free again; it must have been on a fill or TX ring.
    pub fn reclaimed(&self, addr: u64) {
        let Some(place) = self.places.get((addr / self.frame_size) as usize) else {
            self.violations.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let was = place.swap(Location::Free as u8, Ordering::Relaxed);
        if self.check && was != Location::Fill as u8 && was != Location::Tx as u8 {
            self.violations.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                addr,
                was,
                "frame accounting: reclaimed a frame that was on no ring"
            );
        }
    }

    /// Take up to `n` free frames from the global list into `out` (their
    /// place stays `Free`: worker caches are part of the free list).
    pub fn take_free(&self, n: usize, out: &mut Vec<u64>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let keep = free.len().saturating_sub(n);
        out.extend(free.drain(keep..));
    }

    /// Give free frames back to the global list.
    pub fn give_free(&self, frames: impl IntoIterator<Item = u64>) {
        self.free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(frames);
    }

    /// Count the frames in each place.
    pub fn census(&self) -> Census {
        let mut counts = [0u64; LOCATIONS.len()];
        for place in self.places.iter() {
            let i = usize::from(place.load(Ordering::Relaxed));
            if let Some(count) = counts.get_mut(i) {
                *count += 1;
            }
        }
        let [free, fill_or_rx, in_flight, tx_or_completion, queued] = counts;
        Census {
            free,
            fill_or_rx,
            in_flight,
            tx_or_completion,
            queued,
        }
    }

    /// Moves that did not start where the frame was (always 0 unless
    /// something is wrong; only counted with checking on).
    pub fn violations(&self) -> u64 {
        self.violations.load(Ordering::Relaxed)
    }

    /// Whether moves are checked.
    pub fn checking(&self) -> bool {
        self.check
    }
}

/// A worker's own stock of free frames, refilled from and spilled to the
/// ledger's global list in batches so workers rarely touch the lock.
pub struct FrameCache {
    frames: Vec<u64>,
}

/// Frames moved between a cache and the global list at a time.
const CACHE_BATCH: usize = 64;
/// A cache holding more than this spills a batch back.
const CACHE_HIGH: usize = 4 * CACHE_BATCH;

impl FrameCache {
    /// An empty cache.
    pub fn new() -> FrameCache {
        FrameCache {
            frames: Vec::with_capacity(CACHE_HIGH + CACHE_BATCH),
        }
    }

    /// A free frame, refilling from `ledger` when empty; `None` when the
    /// switch has no free frame at all.
    pub fn get(&mut self, ledger: &FrameLedger) -> Option<u64> {
        if self.frames.is_empty() {
            ledger.take_free(CACHE_BATCH, &mut self.frames);
        }
        self.frames.pop()
    }

    /// Put a free frame back, spilling to `ledger` when the cache is full.
    pub fn put(&mut self, ledger: &FrameLedger, frame: u64) {
        self.frames.push(frame);
        if self.frames.len() > CACHE_HIGH {
            let keep = self.frames.len() - CACHE_BATCH;
            ledger.give_free(self.frames.drain(keep..));
        }
    }

    /// Return every cached frame to `ledger` (the worker is stopping).
    pub fn flush(&mut self, ledger: &FrameLedger) {
        ledger.give_free(self.frames.drain(..));
    }

    /// Frames in the cache.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

impl Default for FrameCache {
    fn default() -> FrameCache {
        FrameCache::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn census_follows_moves() {
        let ledger = FrameLedger::new(1024, 4096, true);
        assert_eq!(ledger.census().free, 1024);
        let mut cache = FrameCache::new();
        let a = cache.get(&ledger).unwrap();
        assert_eq!(a % 4096, 0);
        ledger.moved(a, Location::Free, Location::Fill);
        ledger.moved(a + 256, Location::Fill, Location::InFlight); // RX data starts inside the chunk
        ledger.moved(a, Location::InFlight, Location::Tx);
        let census = ledger.census();
        assert_eq!(census.tx_or_completion, 1);
        assert_eq!(census.total(), 1024);
        ledger.moved(a, Location::Tx, Location::Free);
        cache.put(&ledger, a);
        assert_eq!(ledger.violations(), 0);
        assert_eq!(ledger.chunk_base(a + 300), a);
    }

    #[test]
    fn impossible_moves_are_counted_when_checking() {
        let ledger = FrameLedger::new(1024, 4096, true);
        ledger.moved(0, Location::Fill, Location::InFlight);
        assert_eq!(ledger.violations(), 1);
        ledger.moved(1 << 40, Location::Free, Location::Fill);
        assert_eq!(ledger.violations(), 2);
        let unchecked = FrameLedger::new(1024, 4096, false);
        unchecked.moved(0, Location::Fill, Location::InFlight);
        assert_eq!(unchecked.violations(), 0);
    }

    #[test]
    fn caches_spill_and_refill_in_batches() {
        let ledger = FrameLedger::new(1024, 4096, false);
        let mut cache = FrameCache::new();
        let frames: Vec<u64> = (0..600).map(|_| cache.get(&ledger).unwrap()).collect();
        let mut unique = frames.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 600, "no frame handed out twice");
        for f in frames {
            cache.put(&ledger, f);
        }
        assert!(cache.len() <= CACHE_HIGH);
        cache.flush(&ledger);
        assert!(cache.is_empty());
        let mut all = Vec::new();
        ledger.take_free(2000, &mut all);
        assert_eq!(all.len(), 1024);
    }

    #[test]
    fn running_dry_is_reported_not_panicked() {
        let ledger = FrameLedger::new(1024, 4096, false);
        let mut cache = FrameCache::new();
        for _ in 0..1024 {
            assert!(cache.get(&ledger).is_some());
        }
        assert_eq!(cache.get(&ledger), None);
    }
}
