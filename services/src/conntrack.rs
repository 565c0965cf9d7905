//! The connection table: every translated connection under both of its
//! tuples (the original, client to ClusterIP, and the reply, endpoint to
//! client), so either direction is found in one probe. It is shared by the
//! workers (a reply may arrive on another worker than its request).
//!
//! Each connection is one 64-byte slot of a slab allocated up front: its
//! original tuple, its rewrite, its endpoint, its clock and its flags, all
//! atomics. Its two tuples index that slot from open-addressed tables of
//! 64-byte buckets, each holding seven short hash signatures and seven
//! slot references (the reply bit marks the direction), so a probe reads
//! one bucket and one slot: two cache lines. The buckets are spread over
//! shards, each with its `RwLock`: a packet read-locks its tuple's shard
//! and updates the slot's state through atomics; a new connection or a
//! sweep write-locks. [`ConnTable::lookup_batch`] and
//! [`ConnTable::prefetch`] hash a batch's tuples and prefetch their
//! buckets, then their slots, in a staggered pipeline ahead of the probes,
//! so that the cache misses of a batch overlap instead of following one
//! another; buckets and slots sit in memory the kernel is asked to back
//! with huge pages, so that a miss needs no page walk. The NetworkPolicy
//! stage keeps its connections here too.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use foldhash::fast::FixedState;

use crate::Pass;
use crate::flow::{FlowKey, ICMP, SCTP, TCP, TCP_FIN, TCP_RST, UDP};
use crate::rewrite::Nat;
use crate::table::Backend;
/// Which tuple of its connection a packet matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to Service: the packet goes to the endpoint.
    Original,
    /// Endpoint to client: the packet gets the ClusterIP back.
    Reply,
}

/// What a lookup finds: the direction and the rewrite to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// The direction the packet travels.
    pub direction: Direction,
    /// The packet's new addresses and ports.
    pub nat: Nat,
}

/// Why [`ConnTable::insert`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The table holds its capacity (`conntrack_full`).
    Full,
    /// Another live connection has the same reply tuple
    /// (`conntrack_clash`): the same client port sent to two Services
    /// that picked the same endpoint.
    Clash,
}

/// Idle timeouts in milliseconds, by protocol and state (the defaults
/// are kube-proxy's and the kernel conntrack's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP once the endpoint answered and neither side closed (kube-proxy
    /// sets the kernel's to 86400 s).
    pub tcp_established: u64,
    /// TCP before the endpoint answered, or after a FIN (the kernel's
    /// SYN_SENT and TIME_WAIT: 120 s).
    pub tcp_closing: u64,
    /// TCP after a RST (the kernel's CLOSE: 10 s).
    pub tcp_reset: u64,
    /// UDP before a reply (the kernel's `udp_timeout`: 30 s).
    pub udp: u64,
    /// UDP once replied (`udp_timeout_stream`: 120 s).
    pub udp_replied: u64,
    /// SCTP, any state (300 s; heartbeats keep a quiet association alive).
    pub sctp: u64,
    /// ICMP queries (the kernel's `icmp_timeout`: 30 s).
    pub icmp: u64,
    /// Any other protocol (the kernel's `generic_timeout`: 600 s).
    pub other: u64,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            tcp_established: 86_400_000,
            tcp_closing: 120_000,
            tcp_reset: 10_000,
            udp: 30_000,
            udp_replied: 120_000,
            sctp: 300_000,
            icmp: 30_000,
            other: 600_000,
        }
    }
}

/// State flags of a connection.
const FIN_ORIGINAL: u8 = 1;
const FIN_REPLY: u8 = 2;
const RESET: u8 = 4;
const REPLIED: u8 = 8;

/// A tuple packed in two words: the addresses, then the ports and the
/// protocol.
type Packed = [u64; 2];

fn pack(key: &FlowKey) -> Packed {
    [
        u64::from(u32::from(key.src)) << 32 | u64::from(u32::from(key.dst)),
        u64::from(key.sport) << 32 | u64::from(key.dport) << 16 | u64::from(key.protocol),
    ]
}

fn unpack([addresses, rest]: Packed) -> FlowKey {
    FlowKey {
        src: Ipv4Addr::from((addresses >> 32) as u32),
        dst: Ipv4Addr::from(addresses as u32),
        sport: (rest >> 32) as u16,
        dport: (rest >> 16) as u16,
        protocol: rest as u8,
    }
}

/// An address and port packed in one word.
fn pack_end((address, port): (Ipv4Addr, u16)) -> u64 {
    u64::from(u32::from(address)) << 16 | u64::from(port)
}

fn unpack_end(end: u64) -> (Ipv4Addr, u16) {
    (Ipv4Addr::from((end >> 16) as u32), end as u16)
}

/// One connection: the state both its tuples share, in one cache line.
/// Written whole only while no bucket refers to it (before its tuples
/// are published, under their shards' write locks); a packet updates only
/// its clock and flags.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot {
    /// The original tuple, packed.
    original: [AtomicU64; 2],
    /// The original direction's rewrite: source and destination, packed.
    nat: [AtomicU64; 2],
    /// The endpoint, packed.
    backend: AtomicU64,
    last_seen_ms: AtomicU64,
    flags: AtomicU8,
    /// How many tuples refer to it (two, or one once the other was
    /// removed or taken by a newer connection); free at zero.
    links: AtomicU8,
}

/// The fields of a slot, read.
fn load([a, b]: &[AtomicU64; 2]) -> Packed {
    [a.load(Ordering::Relaxed), b.load(Ordering::Relaxed)]
}

impl Slot {
    fn protocol(&self) -> u8 {
        self.original[1].load(Ordering::Relaxed) as u8
    }

    /// The tuple of `direction`, packed.
    fn tuple(&self, direction: Direction) -> Packed {
        match direction {
            Direction::Original => load(&self.original),
            Direction::Reply => {
                // The translated tuple reversed: from the rewrite's
                // destination to its source.
                let [src, dst] = load(&self.nat);
                [
                    (dst >> 16) << 32 | src >> 16,
                    (dst & 0xffff) << 32 | (src & 0xffff) << 16 | u64::from(self.protocol()),
                ]
            }
        }
    }

    /// The rewrite of a packet travelling in `direction`.
    fn nat(&self, direction: Direction) -> Nat {
        match direction {
            Direction::Original => {
                let [src, dst] = load(&self.nat);
                Nat {
                    src: unpack_end(src),
                    dst: unpack_end(dst),
                }
            }
            Direction::Reply => {
                let original = unpack(load(&self.original));
                Nat {
                    src: (original.dst, original.dport),
                    dst: (original.src, original.sport),
                }
            }
        }
    }

    fn backend(&self) -> Backend {
        let (address, port) = unpack_end(self.backend.load(Ordering::Relaxed));
        Backend { address, port }
    }

    /// When it expires, in milliseconds.
    fn deadline(&self, timeouts: &Timeouts) -> u64 {
        let flags = self.flags.load(Ordering::Relaxed);
        let timeout = match self.protocol() {
            TCP if flags & RESET != 0 => timeouts.tcp_reset,
            TCP if flags & (FIN_ORIGINAL | FIN_REPLY) != 0 || flags & REPLIED == 0 => {
                timeouts.tcp_closing
            }
            TCP => timeouts.tcp_established,
            UDP if flags & REPLIED != 0 => timeouts.udp_replied,
            UDP => timeouts.udp,
            SCTP => timeouts.sctp,
            ICMP => timeouts.icmp,
            _ => timeouts.other,
        };
        self.last_seen_ms
            .load(Ordering::Relaxed)
            .saturating_add(timeout)
    }

    /// Whether a new connection may take its tuples: it expired, or a TCP
    /// connection that closed (a client reusing its port after a FIN/RST).
    fn replaceable(&self, now_ms: u64, timeouts: &Timeouts) -> bool {
        self.deadline(timeouts) <= now_ms
            || (self.protocol() == TCP
                && self.flags.load(Ordering::Relaxed) & (FIN_ORIGINAL | FIN_REPLY | RESET) != 0)
    }
}

/// Tuples per bucket.
const WAYS: usize = 7;
/// The reference bit of a reply tuple.
const REPLY: u32 = 1 << 31;

/// Seven tuples: their hash signatures (zero for a free way) and their
/// slot references, and how many tuples whose home this is went on to a
/// later bucket (a probe stops at a bucket with none).
#[derive(Debug, Default)]
#[repr(align(64))]
struct Bucket {
    signatures: [AtomicU32; WAYS],
    overflow: AtomicU32,
    refs: [AtomicU32; WAYS],
}

/// Where a tuple was found.
#[derive(Debug, Clone, Copy)]
struct Found {
    bucket: usize,
    way: usize,
    slot: usize,
    direction: Direction,
}

/// A tuple's hash: the top bits pick the shard, the low ones the bucket,
/// the middle ones sign it.
fn shard_of(hash: u64) -> usize {
    (hash >> 58) as usize & (SHARDS - 1)
}

fn signature(hash: u64) -> u32 {
    (hash >> 24) as u32 | 1
}

/// One shard's buckets (its lock, [`ConnTable::read`] and
/// [`ConnTable::write`], orders their changes).
#[derive(Debug, Clone, Copy)]
struct Shard<'a> {
    buckets: &'a [Bucket],
}

impl Shard<'_> {
    fn home(&self, hash: u64) -> usize {
        hash as usize & (self.buckets.len() - 1)
    }

    /// Find `tuple` (under the shard's lock).
    fn find(&self, slots: &[Slot], tuple: &Packed, hash: u64) -> Option<Found> {
        let signature = signature(hash);
        let mut b = self.home(hash);
        for _ in 0..self.buckets.len() {
            let bucket = &self.buckets[b];
            for way in 0..WAYS {
                if bucket.signatures[way].load(Ordering::Relaxed) != signature {
                    continue;
                }
                let reference = bucket.refs[way].load(Ordering::Relaxed);
                let slot = (reference & !REPLY) as usize;
                let direction = if reference & REPLY != 0 {
                    Direction::Reply
                } else {
                    Direction::Original
                };
                if slots[slot].tuple(direction) == *tuple {
                    return Some(Found {
                        bucket: b,
                        way,
                        slot,
                        direction,
                    });
                }
            }
            if bucket.overflow.load(Ordering::Relaxed) == 0 {
                return None;
            }
            b = (b + 1) & (self.buckets.len() - 1);
        }
        None
    }

    /// Add a tuple (under the shard's write lock); false if the shard is
    /// full.
    fn add(&self, hash: u64, reference: u32) -> bool {
        let home = self.home(hash);
        let mask = self.buckets.len() - 1;
        let Some(steps) = (0..self.buckets.len()).find(|&step| {
            self.buckets[(home + step) & mask]
                .signatures
                .iter()
                .any(|s| s.load(Ordering::Relaxed) == 0)
        }) else {
            return false;
        };
        for step in 0..steps {
            self.buckets[(home + step) & mask]
                .overflow
                .fetch_add(1, Ordering::Relaxed);
        }
        let bucket = &self.buckets[(home + steps) & mask];
        let way = (0..WAYS)
            .find(|&way| bucket.signatures[way].load(Ordering::Relaxed) == 0)
            .expect("found free above");
        bucket.refs[way].store(reference, Ordering::Relaxed);
        bucket.signatures[way].store(signature(hash), Ordering::Relaxed);
        true
    }

    /// Remove the tuple at `found`, whose hash is `hash` (under the
    /// shard's write lock).
    fn take(&self, found: &Found, hash: u64) {
        let mask = self.buckets.len() - 1;
        self.buckets[found.bucket].signatures[found.way].store(0, Ordering::Relaxed);
        let mut b = self.home(hash);
        while b != found.bucket {
            self.buckets[b].overflow.fetch_sub(1, Ordering::Relaxed);
            b = (b + 1) & mask;
        }
    }

    /// Every tuple it holds.
    fn each(&self, mut visit: impl FnMut(Found)) {
        for (b, bucket) in self.buckets.iter().enumerate() {
            for way in 0..WAYS {
                if bucket.signatures[way].load(Ordering::Relaxed) == 0 {
                    continue;
                }
                let reference = bucket.refs[way].load(Ordering::Relaxed);
                visit(Found {
                    bucket: b,
                    way,
                    slot: (reference & !REPLY) as usize,
                    direction: if reference & REPLY != 0 {
                        Direction::Reply
                    } else {
                        Direction::Original
                    },
                });
            }
        }
    }
}

/// Shards: a power of two, several per worker so that two workers rarely
/// meet on one lock.
const SHARDS: usize = 64;

/// Probes a batch prepares at once ([`ConnTable::lookup_batch`]).
pub const BATCH: usize = 32;

/// How many steps of a batch's pipeline a tuple's bucket is prefetched
/// before its slot, and its slot before its probe
/// ([`ConnTable::pipeline`]); chosen by measurement (docs/benchmarks.md).
const AHEAD: usize = 8;

/// The fewest connections at which prefetching a batch's probes pays
/// ([`ConnTable::worth_prefetching`]): in a smaller table the probes'
/// lines are most likely in the cache already, and the prefetch pass (a
/// hash and a bucket read a packet) only adds to each packet's cost.
/// Chosen by measurement (docs/benchmarks.md, "Prefetch only where it
/// pays").
pub const PREFETCH_FROM: usize = 1 << 14;

/// The size of a huge page.
const HUGE_PAGE: usize = 2 << 20;

/// `n` default values, in memory the kernel is asked to back with huge
/// pages where it can: in a table far larger than the TLB covers with
/// 4 KiB pages, a probe's two cache lines then cost no page walks.
fn huge<T: Default>(n: usize) -> Box<[T]> {
    let mut values = Vec::with_capacity(n);
    let start = values.as_ptr() as usize;
    let end = (start + n * size_of::<T>()) & !(HUGE_PAGE - 1);
    let aligned = start.next_multiple_of(HUGE_PAGE);
    if end > aligned {
        // SAFETY: madvise only advises on pages of this allocation, not
        // yet touched; a refusal (no transparent huge pages) leaves them
        // as they were, so its result is ignored.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_HUGEPAGE,
            );
        }
    }
    values.extend((0..n).map(|_| T::default()));
    values.into_boxed_slice()
}

/// Ask the CPU to bring `value`'s cache line in; a hint, nothing else.
#[inline]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the intrinsic needs SSE, which every x86_64 CPU has; a
    // prefetch reads nothing the program sees and never faults, and the
    // address is that of a live reference anyway.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (value as *const T).cast(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// The connection table (see the module documentation).
#[derive(Debug)]
pub struct ConnTable {
    /// The shards' locks.
    locks: Box<[RwLock<()>]>,
    /// The shards' buckets, one run after another.
    buckets: Box<[Bucket]>,
    slots: Box<[Slot]>,
    /// The slots no tuple refers to.
    free: Mutex<Vec<u32>>,
    hasher: FixedState,
    connections: AtomicUsize,
    capacity: usize,
    timeouts: Timeouts,
}

impl ConnTable {
    /// An empty table for at most `capacity` connections: 64 bytes a
    /// connection and 32 to 64 more of buckets (filled to between a
    /// quarter and a half), allocated here.
    pub fn new(capacity: usize, timeouts: Timeouts) -> ConnTable {
        let capacity = capacity.min(REPLY as usize);
        let per_shard = (capacity * 2).div_ceil(SHARDS);
        let buckets = (per_shard * 2).div_ceil(WAYS).next_power_of_two().max(4);
        ConnTable {
            locks: (0..SHARDS).map(|_| RwLock::new(())).collect(),
            buckets: huge(SHARDS * buckets),
            slots: huge(capacity),
            free: Mutex::new((0..capacity as u32).rev().collect()),
            hasher: FixedState::with_seed(0xc0ec_7ac4),
            connections: AtomicUsize::new(0),
            capacity,
            timeouts,
        }
    }

    /// How many connections it holds.
    pub fn len(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether it holds no connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether prefetching a batch's probes ([`ConnTable::prefetch`])
    /// pays: the table holds at least [`PREFETCH_FROM`] connections.
    pub fn worth_prefetching(&self) -> bool {
        self.len() >= PREFETCH_FROM
    }

    /// Shard `index`.
    fn shard(&self, index: usize) -> Shard<'_> {
        let per_shard = self.buckets.len() / SHARDS;
        Shard {
            buckets: &self.buckets[index * per_shard..][..per_shard],
        }
    }

    fn hash(&self, tuple: &Packed) -> u64 {
        self.hasher.hash_one(tuple)
    }

    fn read(&self, shard: usize) -> RwLockReadGuard<'_, ()> {
        // A worker that panicked under the lock left consistent buckets:
        // each change is one store or a run of counter updates.
        self.locks[shard]
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, shard: usize) -> RwLockWriteGuard<'_, ()> {
        self.locks[shard]
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Find the connection a packet with tuple `key` belongs to (either
    /// direction), note the packet (its time, TCP FIN/RST, a reply) and
    /// return the rewrite. A connection that expired, or a TCP SYN on one
    /// that closed, is not found: the packet starts a new one.
    pub fn lookup(&self, key: &FlowKey, tcp_flags: u8, now_ms: u64) -> Option<Hit> {
        self.find(key, tcp_flags, now_ms, Pass::Live)
    }

    /// Find the connection under tuple `key` (either direction) as
    /// [`ConnTable::lookup`] does, noting nothing: for a packet about the
    /// connection rather than of it (an ICMP error) and for a trace.
    pub fn peek(&self, key: &FlowKey, now_ms: u64) -> Option<Hit> {
        let tuple = pack(key);
        self.lookup_hashed(&tuple, self.hash(&tuple), 0, now_ms, false)
    }

    /// The connection of a packet with tuple `key` as a stage's `pass`
    /// finds it: noted by a [`Pass::Live`] ([`ConnTable::lookup`]), only
    /// looked at by a [`Pass::DryRun`] ([`ConnTable::peek`]).
    pub fn find(&self, key: &FlowKey, tcp_flags: u8, now_ms: u64, pass: Pass) -> Option<Hit> {
        let tuple = pack(key);
        let note = pass == Pass::Live;
        self.lookup_hashed(&tuple, self.hash(&tuple), tcp_flags, now_ms, note)
    }

    /// [`ConnTable::lookup`] for a batch: `hits[i]` for `keys[i]` with
    /// `tcp_flags[i]`. Each run of [`BATCH`] tuples is hashed first, then
    /// probed in a pipeline that prefetches each probe's bucket and slot
    /// some steps ahead of it.
    pub fn lookup_batch(
        &self,
        keys: &[FlowKey],
        tcp_flags: &[u8],
        now_ms: u64,
        hits: &mut [Option<Hit>],
    ) {
        assert!(keys.len() == tcp_flags.len() && keys.len() == hits.len());
        for start in (0..keys.len()).step_by(BATCH) {
            let end = keys.len().min(start + BATCH);
            let mut tuples = [[0; 2]; BATCH];
            let mut hashes = [0; BATCH];
            for (i, key) in keys[start..end].iter().enumerate() {
                tuples[i] = pack(key);
                hashes[i] = self.hash(&tuples[i]);
            }
            self.pipeline(&hashes[..end - start], |i| {
                hits[start + i] =
                    self.lookup_hashed(&tuples[i], hashes[i], tcp_flags[start + i], now_ms, true);
            });
        }
    }

    /// Prepare the probes of a batch of tuples: their buckets, then their
    /// slots, are brought into the cache, so that the
    /// [`ConnTable::lookup`]s that follow find them there.
    pub fn prefetch(&self, keys: impl IntoIterator<Item = FlowKey>) {
        let mut hashes = [0; BATCH];
        let mut n = 0;
        for key in keys {
            hashes[n] = self.hash(&pack(&key));
            n += 1;
            if n == BATCH {
                self.pipeline(&hashes, drop);
                n = 0;
            }
        }
        self.pipeline(&hashes[..n], drop);
    }

    /// Run `probe(i)` for each tuple `i` of a batch, given by its hash,
    /// in order, its cache lines prefetched in a staggered pipeline: at
    /// step `s` the bucket of tuple `s` is prefetched, the slot of tuple
    /// `s - AHEAD` (its bucket asked for `AHEAD` steps before, so most
    /// likely arrived), and tuple `s - 2 * AHEAD` is probed. A probe thus
    /// never waits for a miss issued just before, and about `2 * AHEAD`
    /// misses are in flight at any time.
    fn pipeline(&self, hashes: &[u64], mut probe: impl FnMut(usize)) {
        for step in 0..hashes.len() + 2 * AHEAD {
            if let Some(&hash) = hashes.get(step) {
                let shard = self.shard(shard_of(hash));
                prefetch(&shard.buckets[shard.home(hash)]);
            }
            if let Some(&hash) = step.checked_sub(AHEAD).and_then(|i| hashes.get(i)) {
                self.prefetch_slot(hash);
            }
            if let Some(i) = step.checked_sub(2 * AHEAD).filter(|&i| i < hashes.len()) {
                probe(i);
            }
        }
    }

    /// Prefetch the slot the home bucket of the tuple hashed `hash`
    /// points to. Without the lock: a signature read as it changes only
    /// prefetches the wrong slot.
    fn prefetch_slot(&self, hash: u64) {
        let shard = self.shard(shard_of(hash));
        let bucket = &shard.buckets[shard.home(hash)];
        let signature = signature(hash);
        for way in 0..WAYS {
            if bucket.signatures[way].load(Ordering::Relaxed) == signature {
                let slot = bucket.refs[way].load(Ordering::Relaxed) & !REPLY;
                if let Some(slot) = self.slots.get(slot as usize) {
                    prefetch(slot);
                }
            }
        }
    }

    /// The probe of [`ConnTable::lookup`]; `note`: whether the packet is
    /// noted (its time, flags and direction) or only looked at.
    fn lookup_hashed(
        &self,
        tuple: &Packed,
        hash: u64,
        tcp_flags: u8,
        now_ms: u64,
        note: bool,
    ) -> Option<Hit> {
        let shard = shard_of(hash);
        let _locked = self.read(shard);
        let found = self.shard(shard).find(&self.slots, tuple, hash)?;
        let slot = &self.slots[found.slot];
        let syn_only = tcp_flags & 0x12 == 0x02;
        if slot.deadline(&self.timeouts) <= now_ms
            || (syn_only && slot.replaceable(now_ms, &self.timeouts))
        {
            return None;
        }
        let hit = Hit {
            direction: found.direction,
            nat: slot.nat(found.direction),
        };
        if !note {
            return Some(hit);
        }
        // Written only when the clock moved: most packets of a busy
        // connection then read the shared state without dirtying its line.
        if slot.last_seen_ms.load(Ordering::Relaxed) < now_ms {
            slot.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
        let mut flags = 0;
        if tcp_flags & TCP_FIN != 0 {
            flags |= if found.direction == Direction::Original {
                FIN_ORIGINAL
            } else {
                FIN_REPLY
            };
        }
        if tcp_flags & TCP_RST != 0 {
            flags |= RESET;
        }
        if found.direction == Direction::Reply {
            flags |= REPLIED;
        }
        if flags != 0 && slot.flags.load(Ordering::Relaxed) & flags != flags {
            slot.flags.fetch_or(flags, Ordering::Relaxed);
        }
        Some(hit)
    }

    /// Drop a tuple's reference to its slot (under the tuple's shard's
    /// write lock); the last one frees the slot.
    fn unlink(&self, slot: usize) {
        if self.slots[slot].links.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.free
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(slot as u32);
        }
    }

    /// Record a new connection: `original` (client to ClusterIP) rewritten
    /// to `nat` goes to `backend`. A live connection already under the
    /// original tuple (another worker got there first) is returned as is;
    /// an expired or closed one is replaced. A shard with no room left
    /// (never at the sizes `new` gives, short of a hash flood) refuses as
    /// a full table.
    pub fn insert(
        &self,
        original: FlowKey,
        nat: Nat,
        backend: Backend,
        now_ms: u64,
    ) -> Result<Hit, Refused> {
        let reply = FlowKey {
            src: nat.dst.0,
            dst: nat.src.0,
            sport: nat.dst.1,
            dport: nat.src.1,
            protocol: original.protocol,
        };
        let tuples = [pack(&original), pack(&reply)];
        let hashes = tuples.map(|tuple| self.hash(&tuple));
        let shards = hashes.map(shard_of);
        let _locked = Locked::new(self, shards);
        let [original_shard, reply_shard] = shards.map(|shard| self.shard(shard));
        let existing = original_shard.find(&self.slots, &tuples[0], hashes[0]);
        if let Some(found) = existing {
            let slot = &self.slots[found.slot];
            if !slot.replaceable(now_ms, &self.timeouts) {
                return Ok(Hit {
                    direction: found.direction,
                    nat: slot.nat(found.direction),
                });
            }
        }
        let taken = reply_shard.find(&self.slots, &tuples[1], hashes[1]);
        if taken.is_some_and(|found| !self.slots[found.slot].replaceable(now_ms, &self.timeouts)) {
            return Err(Refused::Clash);
        }
        let replacing = existing.is_some_and(|found| found.direction == Direction::Original);
        if !replacing && self.connections.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        // The tuples of replaced connections go; their other tuples stay
        // until they expire (a sweep removes them): they are in shards not
        // locked here. A replaced original's slot may be the one the reply
        // tuple found: take each tuple once.
        let same_entry =
            |a: Found, b: Found| shards[0] == shards[1] && (a.bucket, a.way) == (b.bucket, b.way);
        let taken = taken.filter(|&t| !existing.is_some_and(|e| same_entry(e, t)));
        for (found, shard, hash) in [
            (existing, original_shard, hashes[0]),
            (taken, reply_shard, hashes[1]),
        ] {
            if let Some(found) = found {
                shard.take(&found, hash);
                self.unlink(found.slot);
            }
        }
        let free = self
            .free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let Some(index) = free else {
            // Every slot still has a tuple of a replaced connection. The
            // count held this connection, or the replaced one just taken.
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Full);
        };
        let slot = &self.slots[index as usize];
        for (field, value) in slot.original.iter().zip(tuples[0]) {
            field.store(value, Ordering::Relaxed);
        }
        slot.nat[0].store(pack_end(nat.src), Ordering::Relaxed);
        slot.nat[1].store(pack_end(nat.dst), Ordering::Relaxed);
        slot.backend
            .store(pack_end((backend.address, backend.port)), Ordering::Relaxed);
        slot.last_seen_ms.store(now_ms, Ordering::Relaxed);
        slot.flags.store(0, Ordering::Relaxed);
        slot.links.store(2, Ordering::Relaxed);
        // The original first: a tuple that is also its own reply (a
        // hairpin from the Service's port to itself) is found as original.
        if !(original_shard.add(hashes[0], index) && reply_shard.add(hashes[1], index | REPLY)) {
            // No room in a shard: undo.
            for (shard, tuple, hash) in [
                (original_shard, &tuples[0], hashes[0]),
                (reply_shard, &tuples[1], hashes[1]),
            ] {
                if let Some(found) = shard.find(&self.slots, tuple, hash)
                    && found.slot == index as usize
                {
                    shard.take(&found, hash);
                }
            }
            slot.links.store(1, Ordering::Relaxed);
            self.unlink(index as usize);
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        Ok(Hit {
            direction: Direction::Original,
            nat,
        })
    }

    /// Record a connection that is not translated (the NetworkPolicy
    /// stage's): its tuple `key`, its reply tuple `key` reversed.
    pub fn track(&self, key: FlowKey, now_ms: u64) -> Result<(), Refused> {
        let nat = Nat {
            src: (key.src, key.sport),
            dst: (key.dst, key.dport),
        };
        let to = Backend {
            address: key.dst,
            port: key.dport,
        };
        self.insert(key, nat, to, now_ms).map(drop)
    }

    /// Remove the connections `ended` says are over, both tuples; returns
    /// how many. Shard by shard: a connection's two tuples may be removed
    /// a moment apart, each on its own.
    fn remove(&self, ended: impl Fn(&FlowKey, &Slot) -> bool) -> usize {
        let mut removed = 0;
        for index in 0..SHARDS {
            let shard = self.shard(index);
            let _locked = self.write(index);
            let mut gone = Vec::new();
            shard.each(|found| {
                let slot = &self.slots[found.slot];
                if ended(&unpack(load(&slot.original)), slot) {
                    gone.push(found);
                }
            });
            for found in gone {
                let tuple = self.slots[found.slot].tuple(found.direction);
                shard.take(&found, self.hash(&tuple));
                self.unlink(found.slot);
                if found.direction == Direction::Original {
                    removed += 1;
                }
            }
        }
        self.connections.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Remove the connections that expired by `now_ms`; returns how many.
    /// The switch calls it every few seconds.
    pub fn sweep(&self, now_ms: u64) -> usize {
        self.remove(|_, slot| slot.deadline(&self.timeouts) <= now_ms)
    }

    /// Remove the connections whose endpoint the new Service table no
    /// longer keeps (`keeps(original tuple, endpoint)`); returns how many.
    /// Their next packet from the client starts a new connection to a
    /// current endpoint (a TCP one gets a reset from it).
    pub fn remove_unkept(&self, keeps: impl Fn(&FlowKey, &Backend) -> bool) -> usize {
        self.remove(|original, slot| !keeps(original, &slot.backend()))
    }

    /// How many connections go to each endpoint, for `podswitch services`.
    pub fn per_backend(&self) -> HashMap<Backend, usize> {
        let mut counts = HashMap::new();
        for index in 0..SHARDS {
            let shard = self.shard(index);
            let _locked = self.read(index);
            shard.each(|found| {
                if found.direction == Direction::Original {
                    *counts.entry(self.slots[found.slot].backend()).or_insert(0) += 1;
                }
            });
        }
        counts
    }
}

/// The one or two shards a new connection's tuples fall in, write-locked
/// in index order so two inserts never wait on each other crosswise.
struct Locked<'a> {
    _guards: [Option<RwLockWriteGuard<'a, ()>>; 2],
}

impl<'a> Locked<'a> {
    fn new(table: &'a ConnTable, [original, reply]: [usize; 2]) -> Locked<'a> {
        let (first, second) = (original.min(reply), original.max(reply));
        let first_guard = table.write(first);
        Locked {
            _guards: [
                Some(first_guard),
                (second != first).then(|| table.write(second)),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::flow::tests::key;
    use crate::flow::{TCP_SYN, UDP};

    const ENDPOINT: Backend = Backend {
        address: Ipv4Addr::new(10, 244, 2, 7),
        port: 8080,
    };

    fn original(client_port: u16, protocol: u8) -> FlowKey {
        key([10, 244, 1, 9], client_port, [10, 96, 0, 10], 80, protocol)
    }

    fn dnat(original: &FlowKey) -> Nat {
        Nat {
            src: (original.src, original.sport),
            dst: (ENDPOINT.address, ENDPOINT.port),
        }
    }

    fn reply_of(original: &FlowKey) -> FlowKey {
        key(
            ENDPOINT.address.octets(),
            ENDPOINT.port,
            original.src.octets(),
            original.sport,
            original.protocol,
        )
    }

    #[test]
    fn both_directions_are_found_with_their_rewrites() {
        let table = ConnTable::new(16, Timeouts::default());
        let flow = original(40000, TCP);
        assert_eq!(table.lookup(&flow, TCP_SYN, 0), None);
        let hit = table.insert(flow, dnat(&flow), ENDPOINT, 0).unwrap();
        assert_eq!(
            hit,
            Hit {
                direction: Direction::Original,
                nat: dnat(&flow)
            }
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.lookup(&flow, 0x10, 1), Some(hit));
        let back = table.lookup(&reply_of(&flow), 0x12, 2).unwrap();
        assert_eq!(back.direction, Direction::Reply);
        assert_eq!(
            back.nat,
            Nat {
                src: (flow.dst, flow.dport),
                dst: (flow.src, flow.sport)
            }
        );
        // The translated packet's own tuple is not a key.
        let translated = key([10, 244, 1, 9], 40000, [10, 244, 2, 7], 8080, TCP);
        assert_eq!(table.lookup(&translated, 0, 3), None);
        // Inserting again (a second worker) returns the first entry.
        let other = Nat {
            src: dnat(&flow).src,
            dst: (Ipv4Addr::new(10, 244, 3, 3), 1),
        };
        assert_eq!(table.insert(flow, other, ENDPOINT, 4), Ok(hit));
        assert_eq!(table.len(), 1);
        assert_eq!(table.per_backend().get(&ENDPOINT), Some(&1));
    }

    #[test]
    fn tcp_lives_long_once_answered_and_briefly_after_fin_or_rst() {
        let timeouts = Timeouts::default();
        let table = ConnTable::new(16, timeouts);
        let flow = original(40000, TCP);
        table.insert(flow, dnat(&flow), ENDPOINT, 0).unwrap();
        // Unanswered: the SYN_SENT timeout.
        assert_eq!(table.sweep(timeouts.tcp_closing - 1), 0);
        assert!(table.lookup(&reply_of(&flow), 0x12, 1000).is_some());
        assert_eq!(
            table.sweep(1000 + timeouts.tcp_closing),
            0,
            "answered: established"
        );
        assert!(
            table
                .lookup(&flow, 0x10, 1000 + timeouts.tcp_established - 1)
                .is_some()
        );
        // A FIN shortens it.
        let t = 3 * timeouts.tcp_established;
        assert!(
            table.lookup(&flow, 0x11, t).is_none(),
            "expired before the FIN"
        );
        table.insert(flow, dnat(&flow), ENDPOINT, t).unwrap();
        assert_eq!(
            table.len(),
            1,
            "an expired connection is replaced, not added"
        );
        assert!(table.lookup(&reply_of(&flow), 0x12, t).is_some());
        assert!(table.lookup(&flow, 0x11, t).is_some());
        assert!(
            table
                .lookup(&flow, 0x10, t + timeouts.tcp_closing - 1)
                .is_some()
        );
        assert_eq!(table.sweep(t + 2 * timeouts.tcp_closing), 1);
        assert!(table.is_empty());
        // A RST: shorter still.
        table.insert(flow, dnat(&flow), ENDPOINT, t).unwrap();
        assert!(table.lookup(&reply_of(&flow), 0x14, t).is_some());
        assert!(table.lookup(&flow, 0x10, t + timeouts.tcp_reset).is_none());
        assert_eq!(table.sweep(t + timeouts.tcp_reset), 1);
    }

    #[test]
    fn a_syn_after_a_close_starts_a_new_connection() {
        let table = ConnTable::new(16, Timeouts::default());
        let flow = original(40000, TCP);
        table.insert(flow, dnat(&flow), ENDPOINT, 0).unwrap();
        assert!(
            table.lookup(&flow, TCP_SYN, 1).is_some(),
            "a retransmitted SYN"
        );
        assert!(table.lookup(&reply_of(&flow), 0x14, 2).is_some());
        assert!(table.lookup(&flow, TCP_SYN, 3).is_none());
        let moved = Nat {
            src: (flow.src, flow.sport),
            dst: (Ipv4Addr::new(10, 244, 1, 5), 8080),
        };
        let hit = table.insert(flow, moved, ENDPOINT, 3).unwrap();
        assert_eq!(hit.nat, moved);
        assert_eq!(table.lookup(&flow, 0x10, 4).unwrap().nat, moved);
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_peek_finds_either_direction_and_notes_nothing() {
        let timeouts = Timeouts::default();
        let table = ConnTable::new(16, timeouts);
        let flow = original(5353, UDP);
        let hit = table.insert(flow, dnat(&flow), ENDPOINT, 0).unwrap();
        assert_eq!(table.peek(&flow, 5), Some(hit));
        let back = table.peek(&reply_of(&flow), 10).unwrap();
        assert_eq!(back.direction, Direction::Reply);
        // Neither the time nor the reply was noted: unanswered, it expires
        // on the first packet's clock.
        assert_eq!(table.peek(&flow, timeouts.udp), None);
        assert_eq!(table.sweep(timeouts.udp), 1);
    }

    #[test]
    fn udp_waits_30_s_for_a_reply_then_120_s() {
        let timeouts = Timeouts::default();
        let table = ConnTable::new(16, timeouts);
        let flow = original(5353, UDP);
        table.insert(flow, dnat(&flow), ENDPOINT, 0).unwrap();
        assert_eq!(table.sweep(timeouts.udp - 1), 0);
        assert_eq!(table.sweep(timeouts.udp), 1);
        table.insert(flow, dnat(&flow), ENDPOINT, 0).unwrap();
        assert!(table.lookup(&reply_of(&flow), 0, 10).is_some());
        assert_eq!(table.sweep(timeouts.udp + 10), 0);
        assert_eq!(table.sweep(timeouts.udp_replied + 10), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn a_full_table_refuses_and_a_taken_reply_tuple_clashes() {
        let table = ConnTable::new(2, Timeouts::default());
        for port in [1, 2] {
            let flow = original(port, UDP);
            table.insert(flow, dnat(&flow), ENDPOINT, 0).unwrap();
        }
        let third = original(3, UDP);
        assert_eq!(
            table.insert(third, dnat(&third), ENDPOINT, 0),
            Err(Refused::Full)
        );
        assert_eq!(table.len(), 2);
        let table = ConnTable::new(16, Timeouts::default());
        let flow = original(1, UDP);
        table.insert(flow, dnat(&flow), ENDPOINT, 0).unwrap();
        // The same client port to another Service picking the same endpoint.
        let mut other = flow;
        other.dst = Ipv4Addr::new(10, 96, 0, 11);
        assert_eq!(
            table.insert(other, dnat(&other), ENDPOINT, 0),
            Err(Refused::Clash)
        );
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn an_endpoints_connections_are_removed_when_the_table_drops_it() {
        let table = ConnTable::new(1000, Timeouts::default());
        let elsewhere = Backend {
            address: Ipv4Addr::new(10, 244, 1, 5),
            port: 8080,
        };
        for port in 1..=100 {
            let flow = original(port, TCP);
            let backend = if port % 2 == 0 { ENDPOINT } else { elsewhere };
            let nat = Nat {
                src: (flow.src, flow.sport),
                dst: (backend.address, backend.port),
            };
            table.insert(flow, nat, backend, 0).unwrap();
        }
        assert_eq!(table.remove_unkept(|_, backend| *backend != ENDPOINT), 50);
        assert_eq!(table.len(), 50);
        assert!(table.lookup(&original(2, TCP), 0x10, 1).is_none());
        assert!(
            table
                .lookup(&reply_of(&original(2, TCP)), 0x10, 1)
                .is_none()
        );
        assert!(table.lookup(&original(1, TCP), 0x10, 1).is_some());
        assert_eq!(table.per_backend().len(), 1);
    }

    #[test]
    fn workers_on_other_threads_share_the_connections() {
        let table = ConnTable::new(100_000, Timeouts::default());
        std::thread::scope(|scope| {
            for worker in 0..4u16 {
                let table = &table;
                scope.spawn(move || {
                    for port in 0..2000u16 {
                        let flow = original(worker * 10_000 + port, TCP);
                        table.insert(flow, dnat(&flow), ENDPOINT, 0).unwrap();
                    }
                });
            }
        });
        assert_eq!(table.len(), 8000);
        std::thread::scope(|scope| {
            for worker in 0..4u16 {
                let table = &table;
                // Each worker answers another worker's connections.
                scope.spawn(move || {
                    for port in 0..2000u16 {
                        let flow = original(((worker + 1) % 4) * 10_000 + port, TCP);
                        assert!(table.lookup(&reply_of(&flow), 0x12, 1).is_some());
                    }
                });
            }
        });
        assert_eq!(table.per_backend().get(&ENDPOINT), Some(&8000));
    }

    #[test]
    fn a_batch_finds_what_single_lookups_find_through_churn() {
        let table = ConnTable::new(2000, Timeouts::default());
        let flows: Vec<FlowKey> = (1..=3000).map(|port| original(port, TCP)).collect();
        for flow in &flows[..2000] {
            table.insert(*flow, dnat(flow), ENDPOINT, 0).unwrap();
        }
        assert_eq!(
            table.remove_unkept(|original, _| original.sport % 2 == 0),
            1000
        );
        for flow in &flows[2000..] {
            table.insert(*flow, dnat(flow), ENDPOINT, 0).unwrap();
        }
        assert_eq!(table.len(), 2000);
        let keys: Vec<FlowKey> = flows
            .iter()
            .flat_map(|flow| [*flow, reply_of(flow)])
            .collect();
        let mut hits = vec![None; keys.len()];
        table.prefetch(keys.iter().copied());
        table.lookup_batch(&keys, &vec![0x10; keys.len()], 1, &mut hits);
        for (key, hit) in keys.iter().zip(&hits) {
            let port = if key.dst == Ipv4Addr::new(10, 96, 0, 10) {
                key.sport
            } else {
                key.dport
            };
            let live = port > 2000 || port % 2 == 0;
            assert_eq!(hit.is_some(), live, "{key:?}");
            assert_eq!(*hit, table.lookup(key, 0x10, 1));
        }
    }

    #[test]
    fn prefetching_pays_from_its_size_on() {
        let table = ConnTable::new(2 * PREFETCH_FROM, Timeouts::default());
        let flows: Vec<FlowKey> = (0..PREFETCH_FROM as u16)
            .map(|port| key([10, 244, 1, 2], port, [10, 244, 2, 7], 80, TCP))
            .collect();
        for flow in &flows[1..] {
            table.track(*flow, 0).unwrap();
        }
        assert!(!table.worth_prefetching());
        table.track(flows[0], 0).unwrap();
        assert!(table.worth_prefetching());
        assert_eq!(table.remove_unkept(|flow, _| flow.sport != 0), 1);
        assert!(!table.worth_prefetching());
    }

    #[test]
    fn a_tracked_connection_is_found_both_ways_untranslated_and_expires_by_protocol() {
        let table = ConnTable::new(16, Timeouts::default());
        let echo = key([10, 244, 1, 9], 77, [10, 244, 2, 7], 0, ICMP);
        let gre = key([10, 244, 1, 9], 0, [10, 244, 2, 7], 0, 47);
        table.track(echo, 0).unwrap();
        table.track(gre, 0).unwrap();
        let hit = table.lookup(&echo.reversed(), 0, 1_000).unwrap();
        assert_eq!(hit.direction, Direction::Reply);
        assert_eq!((hit.nat.src, hit.nat.dst), ((echo.dst, 0), (echo.src, 77)));
        assert_eq!(table.sweep(1_000 + 30_000), 1, "ICMP: 30 s");
        assert!(table.lookup(&gre, 0, 30_000).is_some());
        assert_eq!(table.sweep(30_000 + 600_000), 1, "others: 600 s");
        assert!(table.is_empty());
    }
}
