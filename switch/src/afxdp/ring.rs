//! The single-producer, single-consumer rings an AF_XDP socket shares with
//! the kernel: fill and TX (user space produces), RX and completion (the
//! kernel produces).
//!
//! Memory ordering follows libxdp's `xsk.h`: a producer writes its slots,
//! then publishes the producer index with a Release store; a consumer
//! loads the producer index with Acquire before reading slots, and
//! publishes its consumer index with a Release store once it has read
//! them. Each side caches the other side's index and refreshes it only
//! when the cached view runs short.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};

/// One ring's shared memory, unmapped on drop.
struct RingMap {
    base: NonNull<u8>,
    len: usize,
}

impl RingMap {
    fn map(fd: BorrowedFd<'_>, len: usize, page_offset: u64) -> io::Result<RingMap> {
        // SAFETY: a fresh shared mapping of the socket's ring at the offset
        // the kernel defines for it; nothing else is mapped or aliased.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                page_offset as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(base.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(RingMap { base, len })
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`; the ring's
        // pointers die with it.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Pointers into one mapped ring: its producer and consumer indices, its
/// flags word and its `size` slots of `T` (`u64` addresses or `Desc`).
struct Ring<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    slots: NonNull<T>,
    size: u32,
    _map: RingMap,
}

// SAFETY: the ring is owned by one socket, which one thread uses at a time;
// the kernel side is synchronised through the atomic indices.
unsafe impl<T: Send> Send for Ring<T> {}

impl<T: Copy> Ring<T> {
    /// Map the ring of `size` slots (a power of two) that the kernel set
    /// up on `fd`, laid out as `offsets` says, at `page_offset`.
    fn map(
        fd: BorrowedFd<'_>,
        offsets: &libc::xdp_ring_offset,
        size: u32,
        page_offset: u64,
    ) -> io::Result<Ring<T>> {
        let len = offsets.desc as usize + size as usize * size_of::<T>();
        let map = RingMap::map(fd, len, page_offset)?;
        let at = |offset: u64| {
            // SAFETY: the kernel's offsets lie inside the `len` bytes just
            // mapped, and the mapping is page-aligned, so the index words
            // (u32) and slots (u64-aligned) are aligned.
            unsafe { NonNull::new_unchecked(map.base.as_ptr().add(offset as usize)) }
        };
        Ok(Ring {
            producer: at(offsets.producer).cast(),
            consumer: at(offsets.consumer).cast(),
            flags: at(offsets.flags).cast(),
            slots: at(offsets.desc).cast(),
            size,
            _map: map,
        })
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping; the kernel only accesses
        // the word atomically.
        unsafe { self.producer.as_ref() }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`. libxdp reads the flags without ordering.
        let flags = unsafe { self.flags.as_ref() }.load(Ordering::Relaxed);
        flags & libc::XDP_RING_NEED_WAKEUP != 0
    }

    fn slot(&self, index: u32) -> *mut T {
        // SAFETY: `index & (size - 1)` is below `size`, the number of slots
        // mapped.
        unsafe { self.slots.as_ptr().add((index & (self.size - 1)) as usize) }
    }
}

/// A ring user space fills and the kernel drains: fill (addresses) or TX
/// (descriptors).
pub(super) struct ProducerRing<T> {
    ring: Ring<T>,
    /// Our producer index, published after every batch.
    producer: u32,
    /// The kernel's consumer index as last read, plus `size`: so
    /// `cached_limit - producer` is the number of free slots.
    cached_limit: u32,
}

impl<T: Copy> ProducerRing<T> {
    /// Map a producer ring (see [`Ring::map`]).
    pub(super) fn map(
        fd: BorrowedFd<'_>,
        offsets: &libc::xdp_ring_offset,
        size: u32,
        page_offset: u64,
    ) -> io::Result<ProducerRing<T>> {
        let ring = Ring::map(fd, offsets, size, page_offset)?;
        let producer = ring.producer().load(Ordering::Relaxed);
        let cached_limit = ring.consumer().load(Ordering::Acquire).wrapping_add(size);
        Ok(ProducerRing {
            ring,
            producer,
            cached_limit,
        })
    }

    /// Free slots, re-reading the kernel's consumer index only when the
    /// cached view shows fewer than `wanted` (libxdp's `xsk_prod_nb_free`).
    pub(super) fn free(&mut self, wanted: u32) -> u32 {
        let free = self.cached_limit.wrapping_sub(self.producer);
        if free >= wanted {
            return free;
        }
        self.cached_limit = self
            .ring
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.ring.size);
        self.cached_limit.wrapping_sub(self.producer)
    }

    /// Put as many of `items` as fit and publish them; how many went on.
    pub(super) fn produce(&mut self, items: &[T]) -> usize {
        let count = self.free(items.len() as u32).min(items.len() as u32);
        for (offset, item) in (0..count).zip(items) {
            // SAFETY: the slot is free (between the kernel's consumer index
            // and ours), so the kernel does not read it until we publish.
            unsafe {
                self.ring
                    .slot(self.producer.wrapping_add(offset))
                    .write(*item)
            };
        }
        if count > 0 {
            self.producer = self.producer.wrapping_add(count);
            self.ring.producer().store(self.producer, Ordering::Release);
        }
        count as usize
    }

    /// Entries published and not yet consumed by the kernel. For the fill
    /// ring this can overstate what is left: the kernel publishes its
    /// consumer index when it flushes (after each packet in generic mode,
    /// after each NAPI poll in native mode).
    pub(super) fn level(&self) -> u32 {
        self.producer
            .wrapping_sub(self.ring.consumer().load(Ordering::Acquire))
    }

    /// The kernel asked to be woken up before it consumes more.
    pub(super) fn needs_wakeup(&self) -> bool {
        self.ring.needs_wakeup()
    }
}

/// A ring the kernel fills and user space drains: RX (descriptors) or
/// completion (addresses).
pub(super) struct ConsumerRing<T> {
    ring: Ring<T>,
    /// Our consumer index, published after every batch.
    consumer: u32,
    /// The kernel's producer index as last read.
    cached_producer: u32,
}

impl<T: Copy> ConsumerRing<T> {
    /// Map a consumer ring (see [`Ring::map`]).
    pub(super) fn map(
        fd: BorrowedFd<'_>,
        offsets: &libc::xdp_ring_offset,
        size: u32,
        page_offset: u64,
    ) -> io::Result<ConsumerRing<T>> {
        let ring = Ring::map(fd, offsets, size, page_offset)?;
        let consumer = ring.consumer().load(Ordering::Relaxed);
        let cached_producer = ring.producer().load(Ordering::Acquire);
        Ok(ConsumerRing {
            ring,
            consumer,
            cached_producer,
        })
    }

    /// Take up to `max` entries, handing each to `take`, and give their
    /// slots back to the kernel; how many were taken. The kernel's producer
    /// index is re-read only when the cached view has fewer than `max`
    /// (libxdp's `xsk_cons_nb_avail`).
    pub(super) fn consume(&mut self, max: usize, mut take: impl FnMut(T)) -> usize {
        let max = max.min(self.ring.size as usize) as u32;
        let mut ready = self.cached_producer.wrapping_sub(self.consumer);
        if ready < max {
            self.cached_producer = self.ring.producer().load(Ordering::Acquire);
            ready = self.cached_producer.wrapping_sub(self.consumer);
        }
        let count = ready.min(max);
        for offset in 0..count {
            // SAFETY: the slot lies between our consumer index and the
            // producer index loaded with Acquire, so the kernel wrote it
            // and does not touch it until we publish our consumer index.
            take(unsafe { self.ring.slot(self.consumer.wrapping_add(offset)).read() });
        }
        if count > 0 {
            self.consumer = self.consumer.wrapping_add(count);
            self.ring.consumer().store(self.consumer, Ordering::Release);
        }
        count as usize
    }

    /// Entries the kernel has published that we have not taken yet.
    pub(super) fn level(&self) -> u32 {
        self.ring
            .producer()
            .load(Ordering::Acquire)
            .wrapping_sub(self.consumer)
    }
}
