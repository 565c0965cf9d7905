//! Where every buffer frame is. The switch owns a fixed number of frames
//! (UMEM chunks) and each is, at any moment, in exactly one place: the free
//! list, a fill ring (given to the kernel for receiving; the RX ring once
//! filled), in flight in a worker, a TX ring (until its completion is
//! read), or queued between workers. The [`FrameLedger`] records every
//! move; with checking on it also verifies that each move starts where the
//! frame really is, and counts any that does not.

use std::ops::Range;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use podswitch_control::stats::Census;

use crate::afxdp::{Desc, Umem, XDP_PKT_CONTD};

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

/// A buffer frame held by whoever holds this value: on no ring and in no
/// queue, and the only handle to its chunk, so its bytes are lent out by
/// [`FramePool::chunk_mut`] without `unsafe` where they are used. Not
/// `Clone`: a frame moves to a ring ([`FramePool::to_tx`]), a queue or the
/// free list ([`FramePool::free`]) and is never copied. It remembers where
/// its packet data lies in the chunk, and whether the packet goes on in
/// the next frame (a multi-buffer packet).
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    chunk: u64,
    start: u32,
    len: u32,
    continues: bool,
}

impl Frame {
    /// Where the data lies in the chunk.
    pub fn range(&self) -> Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }

    /// Bytes of data.
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether the frame holds no data.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Say where the data lies in the chunk now (after encapsulation,
    /// decapsulation or a write).
    pub fn set_range(&mut self, range: Range<usize>) {
        self.start = range.start as u32;
        self.len = range.len() as u32;
    }

    /// Whether the packet goes on in the next frame.
    pub fn continues(&self) -> bool {
        self.continues
    }

    /// Mark the frame as followed by more of its packet (or not).
    pub fn set_continues(&mut self, continues: bool) {
        self.continues = continues;
    }

    /// The descriptor a ring carries for it.
    fn desc(&self) -> Desc {
        Desc {
            addr: self.chunk + u64::from(self.start),
            len: self.len,
            options: if self.continues { XDP_PKT_CONTD } else { 0 },
        }
    }
}

/// A worker's view of the buffer frames: the shared area, the ledger, and
/// its own stock of free frames (refilled from and spilled to the ledger's
/// global list in batches, so workers rarely touch its lock). Every move of
/// a frame between the free list, rings, the worker and other workers goes
/// through it, and it records each in the ledger.
pub struct FramePool {
    umem: Arc<Umem>,
    ledger: Arc<FrameLedger>,
    stock: Vec<u64>,
}

/// Frames moved between a worker's stock and the global list at a time.
const STOCK_BATCH: usize = 64;
/// A stock holding more than this spills a batch back.
const STOCK_HIGH: usize = 4 * STOCK_BATCH;

impl FramePool {
    /// A pool over `umem`, its frames recorded in `ledger`.
    pub fn new(umem: Arc<Umem>, ledger: Arc<FrameLedger>) -> FramePool {
        FramePool {
            umem,
            ledger,
            stock: Vec::with_capacity(STOCK_HIGH + STOCK_BATCH),
        }
    }

    /// The ledger.
    pub fn ledger(&self) -> &FrameLedger {
        &self.ledger
    }

    /// Offset from a chunk's start to where received data (and data the
    /// switch writes) starts; the bytes before it are room for headers.
    pub fn headroom(&self) -> usize {
        self.umem.rx_data_offset() as usize
    }

    /// Bytes of data a frame holds after the headroom.
    pub fn room(&self) -> usize {
        (self.umem.frame_size() - self.umem.rx_data_offset()) as usize
    }

    /// Bytes in a chunk.
    pub fn chunk_size(&self) -> usize {
        self.umem.frame_size() as usize
    }

    fn take_free(&mut self) -> Option<u64> {
        if self.stock.is_empty() {
            self.ledger.take_free(STOCK_BATCH, &mut self.stock);
        }
        self.stock.pop()
    }

    fn put_free(&mut self, chunk: u64) {
        self.stock.push(chunk);
        if self.stock.len() > STOCK_HIGH {
            let keep = self.stock.len() - STOCK_BATCH;
            self.ledger.give_free(self.stock.drain(keep..));
        }
    }

    /// A free frame for the worker to write into, its data empty at the
    /// headroom; `None` when the switch has no free frame at all.
    pub fn alloc(&mut self) -> Option<Frame> {
        let chunk = self.take_free()?;
        self.ledger.moved(chunk, Location::Free, Location::InFlight);
        Some(Frame {
            chunk,
            start: self.umem.rx_data_offset(),
            len: 0,
            continues: false,
        })
    }

    /// Put a frame back on the free list.
    pub fn free(&mut self, frame: Frame) {
        self.ledger
            .moved(frame.chunk, Location::InFlight, Location::Free);
        self.put_free(frame.chunk);
    }

    /// The whole chunk of `frame` (headroom, data and tailroom).
    pub fn chunk_mut<'a>(&'a self, frame: &'a mut Frame) -> &'a mut [u8] {
        // SAFETY: a `Frame` is the only handle to its chunk (made only by
        // `alloc` from the free list and `from_rx` from an RX ring, both of
        // which hand each chunk out once, and never cloned), and it is
        // borrowed mutably for as long as the slice lives.
        unsafe { self.umem.chunk_mut(frame.chunk) }
    }

    /// The data of `frame`.
    pub fn bytes<'a>(&'a self, frame: &'a Frame) -> &'a [u8] {
        // SAFETY: `frame` is the only handle to its chunk (see
        // `chunk_mut`), and it is borrowed for as long as the slice lives,
        // so nothing writes the chunk meanwhile.
        let chunk = unsafe { self.umem.chunk(frame.chunk) };
        &chunk[frame.range()]
    }

    /// The frame a descriptor taken off an RX ring describes.
    ///
    /// # Safety
    /// `desc` came off an RX ring just now: the kernel has given its chunk
    /// back, and no other `Frame` for it exists.
    pub unsafe fn from_rx(&self, desc: Desc) -> Frame {
        let chunk = self.ledger.chunk_base(desc.addr);
        self.ledger.moved(chunk, Location::Fill, Location::InFlight);
        Frame {
            chunk,
            start: (desc.addr - chunk) as u32,
            len: desc.len,
            continues: desc.continues(),
        }
    }

    /// Hand `frame` to a TX ring: the descriptor to put there.
    pub fn to_tx(&self, frame: Frame) -> Desc {
        self.ledger
            .moved(frame.chunk, Location::InFlight, Location::Tx);
        frame.desc()
    }

    /// A free chunk to give to a fill ring, recorded there.
    pub fn take_for_fill(&mut self) -> Option<u64> {
        let chunk = self.take_free()?;
        self.ledger.moved(chunk, Location::Free, Location::Fill);
        Some(chunk)
    }

    /// A chunk taken for a fill ring that the ring did not take.
    pub fn unfilled(&mut self, chunk: u64) {
        self.ledger.moved(chunk, Location::Fill, Location::Free);
        self.put_free(chunk);
    }

    /// A chunk back off a completion ring: its transmission is done.
    pub fn completed(&mut self, addr: u64) {
        let chunk = self.ledger.chunk_base(addr);
        self.ledger.moved(chunk, Location::Tx, Location::Free);
        self.put_free(chunk);
    }

    /// A chunk a closed socket still held on one of its rings.
    pub fn reclaimed(&mut self, addr: u64) {
        let chunk = self.ledger.chunk_base(addr);
        self.ledger.reclaimed(chunk);
        self.put_free(chunk);
    }

    /// `frame` goes into another worker's inbox (it travels with the
    /// handoff).
    pub fn to_inbox(&self, frame: &Frame) {
        self.ledger
            .moved(frame.chunk, Location::InFlight, Location::Queued);
    }

    /// `frame` came out of this worker's inbox.
    pub fn from_inbox(&self, frame: &Frame) {
        self.ledger
            .moved(frame.chunk, Location::Queued, Location::InFlight);
    }

    /// A frame that went into an inbox that refused it: free it.
    pub fn free_queued(&mut self, frame: Frame) {
        self.from_inbox(&frame);
        self.free(frame);
    }

    /// Give every frame of the worker's stock back to the global list
    /// (the worker is stopping).
    pub fn flush(&mut self) {
        self.ledger.give_free(self.stock.drain(..));
    }

    /// Free frames in the worker's stock.
    pub fn stock(&self) -> usize {
        self.stock.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::afxdp::UmemConfig;

    fn pool(frame_count: u32) -> FramePool {
        let umem = Umem::new(&UmemConfig {
            frame_count,
            frame_size: 4096,
            headroom: 0,
        })
        .unwrap();
        FramePool::new(
            Arc::new(umem),
            Arc::new(FrameLedger::new(frame_count, 4096, true)),
        )
    }

    #[test]
    fn census_follows_moves() {
        let mut pool = pool(1024);
        assert_eq!(pool.ledger().census().free, 1024);
        let chunk = pool.take_for_fill().unwrap();
        assert_eq!(chunk % 4096, 0);
        // The kernel received into it: data starts inside the chunk.
        let desc = Desc {
            addr: chunk + 256,
            len: 60,
            options: 0,
        };
        // SAFETY: the test plays the kernel; this chunk was on no ring.
        let mut frame = unsafe { pool.from_rx(desc) };
        assert_eq!(frame.range(), 256..316);
        pool.chunk_mut(&mut frame)[256] = 7;
        assert_eq!(pool.bytes(&frame)[0], 7);
        let sent = pool.to_tx(frame);
        assert_eq!(sent, desc, "the descriptor it came with");
        assert_eq!(pool.ledger().census().tx_or_completion, 1);
        assert_eq!(pool.ledger().census().total(), 1024);
        pool.completed(sent.addr);
        assert_eq!(pool.ledger().census().free, 1024);
        assert_eq!(pool.ledger().violations(), 0);
    }

    #[test]
    fn frames_are_written_where_their_range_says() {
        let mut pool = pool(1024);
        let mut frame = pool.alloc().unwrap();
        assert!(frame.is_empty());
        let start = pool.headroom();
        pool.chunk_mut(&mut frame)[start..start + 3].copy_from_slice(b"abc");
        frame.set_range(start..start + 3);
        frame.set_continues(true);
        assert_eq!(pool.bytes(&frame), b"abc");
        let desc = pool.to_tx(frame);
        assert_eq!(desc.options, XDP_PKT_CONTD);
        assert_eq!(desc.len, 3);
        pool.completed(desc.addr);
        assert_eq!(pool.ledger().violations(), 0);
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
    fn stocks_spill_and_refill_in_batches() {
        let mut pool = pool(1024);
        let frames: Vec<Frame> = (0..600).map(|_| pool.alloc().unwrap()).collect();
        let mut chunks: Vec<u64> = frames.iter().map(|f| f.chunk).collect();
        chunks.sort_unstable();
        chunks.dedup();
        assert_eq!(chunks.len(), 600, "no frame handed out twice");
        for frame in frames {
            pool.free(frame);
        }
        assert!(pool.stock() <= STOCK_HIGH);
        pool.flush();
        assert_eq!(pool.stock(), 0);
        let mut all = Vec::new();
        pool.ledger().take_free(2000, &mut all);
        assert_eq!(all.len(), 1024);
    }

    #[test]
    fn running_dry_is_reported_not_panicked() {
        let mut pool = pool(1024);
        let held: Vec<Frame> = (0..1024).map(|_| pool.alloc().unwrap()).collect();
        assert_eq!(pool.alloc(), None);
        assert_eq!(pool.take_for_fill(), None);
        assert_eq!(held.len(), 1024);
    }
}
