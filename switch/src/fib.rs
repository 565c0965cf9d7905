//! The forwarding information base: IPv4 longest-prefix match, read by the
//! packet path without locks and updated by the control plane while traffic
//! flows.
//!
//! # Structure
//!
//! [`Ipv4Lpm`] is a three-level multibit trie with strides 12, 12 and 8: the
//! DIR-24-8 layout of DPDK's `rte_lpm`, with its 2^24-entry first table cut
//! into 4096 chunks that exist only where routes are, and that snapshots
//! share.
//!
//! - The **root** resolves the first 12 bits. For each of its 4096 slots it
//!   holds the chunk below it (if any) and the value of the longest route of
//!   length 0..=12 covering it.
//! - A **chunk** covers a /12: 4096 /24s, one 16-bit entry each. An entry is
//!   empty, or the place of the /24's value in the chunk's value array (the
//!   longest route of length 13..=24 covering it; only /24s that have one
//!   take room there), or the place of its group in the chunk's group array.
//! - A **group** covers a /24 that has routes of length 25..=32, with a value
//!   per address: that of the longest such route, or else the /24's own chunk
//!   route, so that the group's answer is final.
//!
//! Each node keeps the routes whose length falls in its stride, and its
//! entries stand for the longest of those. A lookup takes the group's or the
//! chunk's answer, and the root's when they have none. So a change stays in
//! the node its route belongs to (a default route is one root route, not
//! 16 M rewritten entries; a pod's /32 is one group), and removing a route
//! hands its entries to the next-shorter route of the same node, or empties
//! them so that the lookup falls through to the level above.
//!
//! Nodes are behind [`Arc`]s and copied on write ([`Arc::make_mut`]). A clone
//! of the table copies the root's 4096 chunk pointers and shares every node;
//! a change then copies only the nodes on its path: the root's values for a
//! route of length 0..=12, else one chunk, and one group for a route longer
//! than /24. That is how [`SharedFib`] publishes a changed copy per update
//! without copying the table or stalling readers.
//!
//! # Why this structure
//!
//! A lookup is bound by cache and TLB misses, and by the instructions on the
//! path between them. On the target machines (2 vCPUs under KVM, 2 MiB of L2
//! per core) a random read costs about 2 ns in 4 MiB, 5 ns in 16 MiB and
//! 10 ns in 64 MiB, and each read that depends on a miss adds its own. A
//! lookup here reads the root's chunk pointer (32 KiB, in cache), the
//! chunk's entry and one value: a /24 pod CIDR's, or the address's in its
//! group. That is as many dependent reads as `rte_lpm`'s two tables and next
//! hop, and measured as fast, without their fixed 64 MiB first table or its
//! copy per update. Compressing the chunks further (a bitmap of the /24s with
//! routes and a population count, as poptrie does) cut their memory by
//! eight, but the count costs a dozen instructions on the baseline x86-64
//! target, and lookups took 1.6 times as long. The crates measured
//! (`prefix-trie`, `ip_network_table`, `iptrie`) are pointer-chasing tries,
//! 3 to 30 times slower at a million routes. The `fib` criterion bench has
//! the figures.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::{ArcSwap, Guard};
/// The prefix type of the FIB's API, re-exported so that callers need not
/// depend on `ipnet` themselves.
pub use ipnet::Ipv4Net;

/// Address bits resolved by the root: the first 12, one slot per /12.
const ROOT_BITS: u8 = 12;
/// Address bits resolved by a chunk: the next 12, one entry per /24.
const CHUNK_BITS: u8 = 12;
/// Address bits resolved by a group: the last 8, one entry per address.
const GROUP_BITS: u8 = 8;
/// Routes longer than this belong to a chunk (or a group).
const CHUNK_BASE: u8 = ROOT_BITS;
/// Routes longer than this belong to a group.
const GROUP_BASE: u8 = ROOT_BITS + CHUNK_BITS;
/// Number of root slots, and of chunks at most.
const ROOT_SLOTS: usize = 1 << ROOT_BITS;
/// Number of /24s in a chunk.
const CHUNK_SLOTS: usize = 1 << CHUNK_BITS;
/// Number of addresses in a group.
const GROUP_SLOTS: usize = 1 << GROUP_BITS;

/// An IPv4 longest-prefix-match table of small `Copy` values (the switch
/// stores a route target enum in it).
///
/// Cloning is cheap (4096 pointers are copied, every node is shared) and the
/// clone is independent: changes to one never show in the other. See the
/// [module documentation](self) for the structure.
#[derive(Clone)]
pub struct Ipv4Lpm<T> {
    /// The chunk under each root slot, if a route longer than /12 is there.
    chunks: Box<[Option<Arc<Chunk<T>>>; ROOT_SLOTS]>,
    /// The routes of length 0..=12.
    root: Arc<Node<T, Direct<T, ROOT_SLOTS>>>,
    /// Number of routes.
    len: usize,
}

/// A /12: its routes of length 13..=24, its /24s and their groups.
type Chunk<T> = Node<T, Slash24s<T>>;

/// A /24 with routes of length 25..=32 inside it.
type Group<T> = Node<T, Direct<T, GROUP_SLOTS>>;

/// One node of the trie: the routes whose length falls in its stride, and its
/// entries, which stand for the longest of those routes covering each
/// position.
#[derive(Clone)]
struct Node<T, E> {
    entries: E,
    routes: Routes<T>,
}

/// The routes of one node, in no particular order (removing one moves the
/// last into its place). A route's index here is its slot; slot 0 is a
/// sentinel with no value, for positions that no route covers.
///
/// A route is known in its node by its key: its place in the binary tree of
/// the stride, `1 << depth | bits`, where `depth` is its length minus the
/// node's base length and `bits` its `depth` address bits after the base.
#[derive(Clone)]
struct Routes<T> {
    keys: Vec<u16>,
    values: Vec<Option<T>>,
}

/// The per-/24 entries of a chunk. The packet path reads `index` and then
/// one value or one group; the rest is for updates.
#[derive(Clone)]
struct Slash24s<T> {
    /// Per /24: 0 if it has neither route nor group, the index + 1 of its
    /// value in `values`, or [`GROUPED`] | the index of its group in `groups`.
    index: [u16; CHUNK_SLOTS],
    /// The value of the longest chunk route of each /24 that has one, in
    /// address order.
    values: Vec<T>,
    /// The groups, in address order.
    groups: Vec<Arc<Group<T>>>,
    /// Which /24s have a chunk route, 64 to a word.
    route_bits: [u64; CHUNK_SLOTS / 64],
    /// Which /24s have a group, 64 to a word.
    group_bits: [u64; CHUNK_SLOTS / 64],
    /// The slot of each value's route.
    slots: Vec<u16>,
}

/// The flag of an `index` entry that names a group.
const GROUPED: u16 = 1 << 15;

/// How many bits of `bits` are set below bit `bit`.
fn count_below(bits: u64, bit: usize) -> usize {
    (bits & ((1 << bit) - 1)).count_ones() as usize
}

/// How many bits of `words` are set before bit `index`.
fn count_before(words: &[u64; CHUNK_SLOTS / 64], index: usize) -> usize {
    let whole: u32 = words[..index / 64].iter().map(|w| w.count_ones()).sum();
    whole as usize
        + words
            .get(index / 64)
            .map_or(0, |&w| count_below(w, index % 64))
}

/// Whether bit `index` of `words` is set.
fn is_set(words: &[u64; CHUNK_SLOTS / 64], index: usize) -> bool {
    words[index / 64] & (1 << (index % 64)) != 0
}

/// A node's entries, as the route logic of [`Node`] sees them: a slot per
/// position.
trait Entries<T> {
    /// Address bits resolved: the node has `1 << BITS` positions.
    const BITS: u8;
    /// Applies `change` to the slot of every position in `span`, and brings
    /// what the packet path reads up to date from `values` (the node's route
    /// values, by slot).
    fn update(&mut self, span: Range<usize>, values: &[Option<T>], change: impl FnMut(&mut u16));
}

/// Entries with a value per position, for the root and the groups.
#[derive(Clone)]
struct Direct<T, const N: usize> {
    /// The value of the longest route covering each position, or else
    /// `fallback`: what the packet path reads.
    values: [Option<T>; N],
    /// The slot of that route, for updates.
    slots: [u16; N],
    /// The answer where no route of the node matches: for a group, its /24's
    /// chunk route, so that the group's answer is final.
    fallback: Option<T>,
}

impl<T: Copy, const N: usize> Entries<T> for Direct<T, N> {
    const BITS: u8 = N.trailing_zeros() as u8;

    fn update(
        &mut self,
        span: Range<usize>,
        values: &[Option<T>],
        mut change: impl FnMut(&mut u16),
    ) {
        for i in span {
            change(&mut self.slots[i]);
            self.values[i] = values[usize::from(self.slots[i])].or(self.fallback);
        }
    }
}

impl<T: Copy, const N: usize> Direct<T, N> {
    fn new(fallback: Option<T>) -> Self {
        Self {
            values: [fallback; N],
            slots: [0; N],
            fallback,
        }
    }

    /// Changes the answer where no route of the node matches.
    fn set_fallback(&mut self, fallback: Option<T>) {
        self.fallback = fallback;
        for (value, &slot) in self.values.iter_mut().zip(&self.slots) {
            if slot == 0 {
                *value = fallback;
            }
        }
    }
}

impl<T: Copy + PartialEq> Entries<T> for Slash24s<T> {
    const BITS: u8 = CHUNK_BITS;

    fn update(&mut self, span: Range<usize>, values: &[Option<T>], change: impl FnMut(&mut u16)) {
        let mut slots: Vec<u16> = span.clone().map(|i| self.slot(i)).collect();
        slots.iter_mut().for_each(change);
        self.write_routes(span.start, &slots, values);
    }
}

impl<T: Copy + PartialEq> Slash24s<T> {
    fn new() -> Self {
        Self {
            index: [0; CHUNK_SLOTS],
            values: Vec::new(),
            groups: Vec::new(),
            route_bits: [0; CHUNK_SLOTS / 64],
            group_bits: [0; CHUNK_SLOTS / 64],
            slots: Vec::new(),
        }
    }

    /// The slot of the longest chunk route of /24 `index`, 0 for none.
    fn slot(&self, index: usize) -> u16 {
        match is_set(&self.route_bits, index) {
            true => self.slots[count_before(&self.route_bits, index)],
            false => 0,
        }
    }

    /// The value of the longest chunk route of /24 `index`.
    fn value(&self, index: usize) -> Option<T> {
        is_set(&self.route_bits, index).then(|| self.values[count_before(&self.route_bits, index)])
    }

    /// The group of /24 `index`, if it has one.
    fn group(&self, index: usize) -> Option<&Arc<Group<T>>> {
        is_set(&self.group_bits, index).then(|| &self.groups[count_before(&self.group_bits, index)])
    }

    /// Sets the route slots of the /24s from `start` on, taking their values
    /// from `values`.
    fn write_routes(&mut self, start: usize, slots: &[u16], values: &[Option<T>]) {
        let end = start + slots.len();
        let first = count_before(&self.route_bits, start);
        let last = count_before(&self.route_bits, end);
        let mut new_values = Vec::with_capacity(slots.len());
        let mut new_slots = Vec::with_capacity(slots.len());
        for (i, &slot) in (start..end).zip(slots) {
            let value = values[usize::from(slot)];
            let bit = 1 << (i % 64);
            match value {
                Some(value) => {
                    self.route_bits[i / 64] |= bit;
                    new_values.push(value);
                    new_slots.push(slot);
                }
                None => self.route_bits[i / 64] &= !bit,
            }
            if is_set(&self.group_bits, i) {
                let g = count_before(&self.group_bits, i);
                if self.groups[g].entries.fallback != value {
                    Arc::make_mut(&mut self.groups[g])
                        .entries
                        .set_fallback(value);
                }
            }
        }
        let added = new_values.len() as u16;
        self.values.splice(first..last, new_values);
        self.slots.splice(first..last, new_slots);
        self.reindex(start..end);
        self.shift(end, added.wrapping_sub((last - first) as u16), 0);
    }

    /// Gives /24 `index` a group, or takes it away.
    fn set_group(&mut self, index: usize, group: Option<Group<T>>) {
        let at = count_before(&self.group_bits, index);
        let bit = 1 << (index % 64);
        let added = match group {
            Some(group) => {
                self.group_bits[index / 64] |= bit;
                self.groups.insert(at, Arc::new(group));
                1
            }
            None => {
                self.group_bits[index / 64] &= !bit;
                self.groups.remove(at);
                u16::MAX
            }
        };
        self.reindex(index..index + 1);
        self.shift(index + 1, 0, added);
    }

    /// Brings the `index` entries of `span` up to date.
    fn reindex(&mut self, span: Range<usize>) {
        let mut values = count_before(&self.route_bits, span.start);
        let mut groups = count_before(&self.group_bits, span.start);
        for i in span {
            let (routed, grouped) = (is_set(&self.route_bits, i), is_set(&self.group_bits, i));
            self.index[i] = match (grouped, routed) {
                (true, _) => GROUPED | groups as u16,
                (false, true) => values as u16 + 1,
                (false, false) => 0,
            };
            values += usize::from(routed);
            groups += usize::from(grouped);
        }
    }

    /// Adds `values` to the value entries of `index` from /24 `from` on, and
    /// `groups` to the group entries (wrapping: `u16::MAX` takes one away).
    fn shift(&mut self, from: usize, values: u16, groups: u16) {
        if (values, groups) == (0, 0) {
            return;
        }
        for entry in &mut self.index[from..] {
            let delta = match (*entry & GROUPED != 0, *entry != 0) {
                (true, _) => groups,
                (false, true) => values,
                (false, false) => 0,
            };
            *entry = entry.wrapping_add(delta);
        }
    }

    /// The /24s that have a group, with it.
    fn groups(&self) -> impl Iterator<Item = (usize, &Group<T>)> + '_ {
        let indexes = self.group_bits.iter().enumerate().flat_map(|(w, &bits)| {
            (0..64)
                .filter(move |bit| bits & (1 << bit) != 0)
                .map(move |bit| w * 64 + bit)
        });
        indexes.zip(self.groups.iter().map(|group| &**group))
    }
}

/// A route's depth in its node, from its key.
fn depth(key: u16) -> u8 {
    key.ilog2() as u8
}

/// The key of the route `addr/len` in the node whose routes are longer than
/// `base` (or, for the root, at least `base`).
fn key(addr: u32, base: u8, len: u8) -> u16 {
    let depth = len - base;
    let bits = u64::from(addr << base) >> (32 - depth);
    ((1 << depth) | bits) as u16
}

/// The route with `key` in the node at `node_addr` whose routes are longer
/// than `base`, as (address, length).
fn route(node_addr: u32, base: u8, key: u16) -> (u32, u8) {
    let depth = depth(key);
    let bits = u64::from(key) - (1 << depth);
    let addr = node_addr | (bits << (32 - base - depth)) as u32;
    (addr, base + depth)
}

impl<T: Copy + PartialEq> Routes<T> {
    fn new() -> Self {
        Self {
            keys: vec![0],
            values: vec![None],
        }
    }

    /// The slot of the route `key`.
    fn find(&self, key: u16) -> Option<u16> {
        self.keys
            .iter()
            .position(|&k| k == key)
            .map(|slot| slot as u16)
    }

    fn len(&self) -> usize {
        self.keys.len() - 1
    }

    /// Heap bytes of the route list.
    fn heap_bytes(&self) -> usize {
        self.keys.capacity() * size_of::<u16>() + self.values.capacity() * size_of::<Option<T>>()
    }
}

impl<T: Copy + PartialEq, E: Entries<T>> Node<T, E> {
    fn new(entries: E) -> Self {
        Self {
            entries,
            routes: Routes::new(),
        }
    }

    /// The positions covered by the route `key`.
    fn span(key: u16) -> Range<usize> {
        let depth = depth(key);
        let start = usize::from(key - (1 << depth)) << (E::BITS - depth);
        start..start + (1 << (E::BITS - depth))
    }

    fn get(&self, key: u16) -> Option<T> {
        self.routes.values[usize::from(self.routes.find(key)?)]
    }

    fn is_empty(&self) -> bool {
        self.routes.len() == 0
    }

    /// Adds the route `key` or replaces its value; returns the old value.
    fn insert(&mut self, key: u16, value: T) -> Option<T> {
        let routes = &mut self.routes;
        if let Some(slot) = routes.find(key) {
            let old = routes.values[usize::from(slot)].replace(value);
            // Refresh the copies of the value in the entries.
            self.entries.update(Self::span(key), &routes.values, |_| ());
            return old;
        }
        let slot = routes.keys.len() as u16;
        routes.keys.push(key);
        routes.values.push(Some(value));
        let (keys, depth) = (&routes.keys, depth(key));
        // The positions it covers hold either routes that cover it (shorter,
        // which it overrides) or routes it covers (longer, which stay).
        self.entries
            .update(Self::span(key), &routes.values, |entry| {
                if *entry == 0 || self::depth(keys[usize::from(*entry)]) < depth {
                    *entry = slot;
                }
            });
        None
    }

    /// Removes the route `key`; returns its value.
    fn remove(&mut self, key: u16) -> Option<T> {
        let routes = &mut self.routes;
        let slot = routes.find(key)?;
        // Its positions go to the longest route of this node covering it.
        let heir = std::iter::successors(Some(key >> 1), |k| Some(k >> 1))
            .take_while(|&k| k != 0)
            .find_map(|k| routes.find(k))
            .unwrap_or(0);
        self.entries
            .update(Self::span(key), &routes.values, |entry| {
                if *entry == slot {
                    *entry = heir;
                }
            });
        routes.keys.swap_remove(usize::from(slot));
        let value = routes.values.swap_remove(usize::from(slot));
        if let Some(&moved) = routes.keys.get(usize::from(slot)) {
            // The last route took its slot: renumber its positions.
            let old = routes.keys.len() as u16;
            self.entries
                .update(Self::span(moved), &routes.values, |entry| {
                    if *entry == old {
                        *entry = slot;
                    }
                });
        }
        value
    }

    /// The node's routes as (address, length, value), given its first
    /// address and base length.
    fn routes(&self, node_addr: u32, base: u8) -> impl Iterator<Item = (u32, u8, T)> + '_ {
        let routes = self.routes.keys.iter().zip(&self.routes.values).skip(1);
        routes.filter_map(move |(&key, &value)| {
            let (addr, len) = route(node_addr, base, key);
            Some((addr, len, value?))
        })
    }
}

impl<T: Copy + PartialEq> Chunk<T> {
    fn is_empty_chunk(&self) -> bool {
        self.is_empty() && self.entries.groups.is_empty()
    }

    /// The group of /24 `index`, created if missing, for writing.
    fn group_mut(&mut self, index: usize) -> &mut Group<T> {
        let s = &mut self.entries;
        if !is_set(&s.group_bits, index) {
            // Where none of its routes matches, a group answers its /24's.
            s.set_group(index, Some(Node::new(Direct::new(s.value(index)))));
        }
        let at = count_before(&s.group_bits, index);
        Arc::make_mut(&mut s.groups[at])
    }
}

/// The root slot (and chunk) of an address.
fn root_index(addr: u32) -> usize {
    (addr >> (32 - ROOT_BITS)) as usize
}

/// The /24 of an address in its chunk.
fn chunk_index(addr: u32) -> usize {
    ((addr >> GROUP_BITS) as usize) & (CHUNK_SLOTS - 1)
}

/// The address in its group.
fn group_index(addr: u32) -> usize {
    (addr as usize) & (GROUP_SLOTS - 1)
}

impl<T: Copy + PartialEq> Default for Ipv4Lpm<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + PartialEq> Ipv4Lpm<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            chunks: Box::new([const { None }; ROOT_SLOTS]),
            root: Arc::new(Node::new(Direct::new(None))),
            len: 0,
        }
    }

    /// Adds a route, or replaces the value of an existing one; returns the
    /// old value. The prefix is normalised (host bits cleared, as
    /// [`Ipv4Net::trunc`]).
    pub fn insert(&mut self, prefix: Ipv4Net, value: T) -> Option<T> {
        let old = self.get(prefix);
        if old == Some(value) {
            // Nothing changes: keep sharing every node.
            return old;
        }
        let (addr, len) = (u32::from(prefix.network()), prefix.prefix_len());
        if len <= CHUNK_BASE {
            Arc::make_mut(&mut self.root).insert(key(addr, 0, len), value);
        } else {
            let chunk = self.chunks[root_index(addr)]
                .get_or_insert_with(|| Arc::new(Node::new(Slash24s::new())));
            let chunk = Arc::make_mut(chunk);
            if len <= GROUP_BASE {
                chunk.insert(key(addr, CHUNK_BASE, len), value);
            } else {
                let group = chunk.group_mut(chunk_index(addr));
                group.insert(key(addr, GROUP_BASE, len), value);
            }
        }
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes a route (normalised as in [`insert`](Self::insert)); returns
    /// its value. Addresses it covered fall back to the next-shorter route
    /// covering them.
    pub fn remove(&mut self, prefix: Ipv4Net) -> Option<T> {
        // Look first, so that removing a missing route copies nothing.
        self.get(prefix)?;
        let (addr, len) = (u32::from(prefix.network()), prefix.prefix_len());
        let old = if len <= CHUNK_BASE {
            Arc::make_mut(&mut self.root).remove(key(addr, 0, len))
        } else {
            let slot = &mut self.chunks[root_index(addr)];
            let chunk = Arc::make_mut(slot.as_mut()?);
            let old = if len <= GROUP_BASE {
                chunk.remove(key(addr, CHUNK_BASE, len))
            } else {
                let index = chunk_index(addr);
                let group = chunk.group_mut(index);
                let old = group.remove(key(addr, GROUP_BASE, len));
                if group.is_empty() {
                    chunk.entries.set_group(index, None);
                }
                old
            };
            if chunk.is_empty_chunk() {
                *slot = None;
            }
            old
        };
        self.len -= 1;
        old
    }

    /// The value of exactly this route (normalised as in
    /// [`insert`](Self::insert)), if present.
    pub fn get(&self, prefix: Ipv4Net) -> Option<T> {
        let (addr, len) = (u32::from(prefix.network()), prefix.prefix_len());
        if len <= CHUNK_BASE {
            return self.root.get(key(addr, 0, len));
        }
        let chunk = self.chunks[root_index(addr)].as_ref()?;
        if len <= GROUP_BASE {
            chunk.get(key(addr, CHUNK_BASE, len))
        } else {
            chunk
                .entries
                .group(chunk_index(addr))?
                .get(key(addr, GROUP_BASE, len))
        }
    }

    /// The value of the longest route covering `addr`: the packet path's
    /// lookup. It reads the root's chunk pointer, the chunk's entry for the
    /// /24 and then one value, or the group's value for the address.
    #[inline]
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<T> {
        let addr = u32::from(addr);
        let root = root_index(addr);
        if let Some(chunk) = &self.chunks[root] {
            let s = &chunk.entries;
            let entry = s.index[chunk_index(addr)];
            if entry & GROUPED != 0 {
                // Final, but for the routes of the root.
                let found =
                    s.groups[usize::from(entry & !GROUPED)].entries.values[group_index(addr)];
                if found.is_some() {
                    return found;
                }
            } else if entry != 0 {
                return Some(s.values[usize::from(entry) - 1]);
            }
        }
        self.root.entries.values[root]
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every route, sorted by network address then prefix length (the order
    /// `podswitch routes` prints).
    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Net, T)> + '_ {
        let mut short: Vec<(u32, u8, T)> = self.root.routes(0, 0).collect();
        short.sort_unstable_by_key(|&(addr, len, _)| (addr, len));
        let mut short = short.into_iter().peekable();
        // One /12 at a time: its short routes (those starting in it), then
        // its chunk's and groups' routes, sorted together.
        (0..ROOT_SLOTS).flat_map(move |r| {
            let start = (r as u32) << (32 - ROOT_BITS);
            let end = start | ((1 << (32 - ROOT_BITS)) - 1);
            let mut routes: Vec<(u32, u8, T)> =
                std::iter::from_fn(|| short.next_if(|&(addr, _, _)| addr <= end)).collect();
            if let Some(chunk) = &self.chunks[r] {
                routes.extend(chunk.routes(start, CHUNK_BASE));
                for (index, group) in chunk.entries.groups() {
                    let group_addr = start | (index as u32) << GROUP_BITS;
                    routes.extend(group.routes(group_addr, GROUP_BASE));
                }
                routes.sort_unstable_by_key(|&(addr, len, _)| (addr, len));
            }
            routes.into_iter().map(|(addr, len, value)| {
                let net = Ipv4Net::new(Ipv4Addr::from(addr), len).expect("prefix length ≤ 32");
                (net, value)
            })
        })
    }

    /// Heap bytes this table holds, counting nodes it shares with other
    /// snapshots in full: what it would cost alone.
    pub fn memory_bytes(&self) -> usize {
        let group_bytes = |group: &Group<T>| size_of::<Group<T>>() + group.routes.heap_bytes();
        let chunks: usize = self
            .chunks
            .iter()
            .flatten()
            .map(|chunk| {
                let s = &chunk.entries;
                size_of::<Chunk<T>>()
                    + chunk.routes.heap_bytes()
                    + s.values.capacity() * size_of::<T>()
                    + s.slots.capacity() * size_of::<u16>()
                    + s.groups.capacity() * size_of::<Arc<Group<T>>>()
                    + s.groups.iter().map(|g| group_bytes(g)).sum::<usize>()
            })
            .sum();
        size_of::<[Option<Arc<Chunk<T>>>; ROOT_SLOTS]>()
            + size_of::<Node<T, Direct<T, ROOT_SLOTS>>>()
            + self.root.routes.heap_bytes()
            + chunks
    }
}

/// A routing table as the data path sees it: readers get a consistent
/// snapshot without locks; writers publish a new snapshot.
///
/// Readers [`load`](Self::load) a snapshot per batch of frames and never wait.
/// A writer copies the current table (cheaply: [`Ipv4Lpm`] and
/// [`Ipv6Lpm`](crate::fib6::Ipv6Lpm) share their nodes between copies),
/// changes the copy and publishes it with one atomic swap, so a reader
/// sees a change whole or not at all. Replaced snapshots are kept by the
/// writers until no reader holds them and freed at a later update, so that
/// freeing them never lands on a packet-processing thread.
pub struct SharedTable<L> {
    current: ArcSwap<L>,
    /// Serialises writers, and holds the snapshots they replaced that
    /// readers may still hold.
    retired: Mutex<Vec<Arc<L>>>,
}

/// The IPv4 FIB as the data path sees it.
pub type SharedFib<T> = SharedTable<Ipv4Lpm<T>>;

impl<L: Clone + Default> Default for SharedTable<L> {
    fn default() -> Self {
        Self::new()
    }
}

impl<L: Clone + Default> SharedTable<L> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            current: ArcSwap::from_pointee(L::default()),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// A snapshot for one batch of frames: lock-free, wait-free for readers
    /// (arc-swap). Hold it for a batch, not for long: a held snapshot keeps
    /// the nodes it shares no more with the current table alive.
    #[inline]
    pub fn load(&self) -> Guard<Arc<L>> {
        self.current.load()
    }

    /// Applies `change` to a copy of the current table and publishes it
    /// atomically; writers are serialised (a mutex for writers only). Returns
    /// what `change` returns. If `change` panics, nothing is published.
    pub fn update<R>(&self, change: impl FnOnce(&mut L) -> R) -> R {
        // The lock guards no data of its own that a panic could leave half
        // changed, so a poisoned lock is fine to take.
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = L::clone(&self.current.load());
        let result = change(&mut next);
        retired.push(self.current.swap(Arc::new(next)));
        // Out of the ArcSwap, a snapshot only this list holds cannot be
        // reached by a reader any more.
        retired.retain(|old| Arc::strong_count(old) > 1);
        result
    }
}

/// The obvious implementation of a routing table, the one the tables'
/// tests hold both families' tables against: a list of routes, scanned.
#[cfg(test)]
pub(crate) mod reference {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use ipnet::{Ipv4Net, Ipv6Net};

    /// What the reference needs of a prefix type.
    pub(crate) trait Prefix: Copy + PartialEq {
        /// Its address type.
        type Addr: Copy + Ord;
        /// The prefix with its host bits cleared.
        fn normalised(&self) -> Self;
        /// Whether it covers `addr`.
        fn covers(&self, addr: &Self::Addr) -> bool;
        /// Its network address and length, the order routes are listed in.
        fn order(&self) -> (Self::Addr, u8);
    }

    macro_rules! prefix {
        ($net:ty, $addr:ty) => {
            impl Prefix for $net {
                type Addr = $addr;
                fn normalised(&self) -> Self {
                    self.trunc()
                }
                fn covers(&self, addr: &$addr) -> bool {
                    self.contains(addr)
                }
                fn order(&self) -> ($addr, u8) {
                    (self.network(), self.prefix_len())
                }
            }
        };
    }
    prefix!(Ipv4Net, Ipv4Addr);
    prefix!(Ipv6Net, Ipv6Addr);

    /// Routes and their values, in no order.
    #[derive(Clone)]
    pub(crate) struct Reference<P>(pub(crate) Vec<(P, u32)>);

    impl<P> Default for Reference<P> {
        fn default() -> Self {
            Reference(Vec::new())
        }
    }

    impl<P: Prefix> Reference<P> {
        pub(crate) fn insert(&mut self, prefix: P, value: u32) -> Option<u32> {
            let prefix = prefix.normalised();
            match self.0.iter_mut().find(|(p, _)| *p == prefix) {
                Some((_, v)) => Some(std::mem::replace(v, value)),
                None => {
                    self.0.push((prefix, value));
                    None
                }
            }
        }

        pub(crate) fn remove(&mut self, prefix: P) -> Option<u32> {
            let i = self.0.iter().position(|(p, _)| *p == prefix.normalised())?;
            Some(self.0.swap_remove(i).1)
        }

        pub(crate) fn get(&self, prefix: P) -> Option<u32> {
            self.0
                .iter()
                .find(|(p, _)| *p == prefix.normalised())
                .map(|&(_, v)| v)
        }

        pub(crate) fn lookup(&self, addr: P::Addr) -> Option<u32> {
            self.0
                .iter()
                .filter(|(p, _)| p.covers(&addr))
                .max_by_key(|(p, _)| p.order().1)
                .map(|&(_, v)| v)
        }

        pub(crate) fn sorted(&self) -> Vec<(P, u32)> {
            let mut routes = self.0.clone();
            routes.sort_by_key(|(p, _)| p.order());
            routes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    type Reference = reference::Reference<Ipv4Net>;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// Addresses worth probing for these routes: each one's first and last
    /// address and their neighbours, plus `extra`.
    fn probes(routes: &[(Ipv4Net, u32)], extra: &[Ipv4Addr]) -> Vec<Ipv4Addr> {
        let mut probes = extra.to_vec();
        for (p, _) in routes {
            let (first, last) = (u32::from(p.network()), u32::from(p.broadcast()));
            for a in [first, last, first.wrapping_sub(1), last.wrapping_add(1)] {
                probes.push(Ipv4Addr::from(a));
            }
        }
        probes
    }

    /// Everything observable about `lpm` agrees with `reference`.
    fn check(lpm: &Ipv4Lpm<u32>, reference: &Reference, extra: &[Ipv4Addr]) {
        assert_eq!(lpm.len(), reference.0.len());
        assert_eq!(lpm.is_empty(), reference.0.is_empty());
        assert_eq!(lpm.iter().collect::<Vec<_>>(), reference.sorted());
        for &(p, v) in &reference.0 {
            assert_eq!(lpm.get(p), Some(v), "get {p}");
        }
        for a in probes(&reference.0, extra) {
            assert_eq!(lpm.lookup(a), reference.lookup(a), "lookup {a}");
        }
    }

    /// An address equal to `addr` in its first `len` bits and different in
    /// the next one.
    fn diverging(addr: u32, len: u8) -> Ipv4Addr {
        Ipv4Addr::from(if len == 32 {
            addr
        } else {
            addr ^ (1 << (31 - len))
        })
    }

    #[test]
    fn empty_table_matches_nothing() {
        let lpm = Ipv4Lpm::<u32>::default();
        assert!(lpm.is_empty());
        assert_eq!(lpm.lookup(ip("10.0.0.1")), None);
        assert_eq!(lpm.get(net("0.0.0.0/0")), None);
        assert_eq!(lpm.iter().count(), 0);
    }

    #[test]
    fn default_route_matches_everything_until_removed() {
        let mut lpm = Ipv4Lpm::new();
        assert_eq!(lpm.insert(net("0.0.0.0/0"), 7), None);
        for a in ["0.0.0.0", "10.1.2.3", "255.255.255.255"] {
            assert_eq!(lpm.lookup(ip(a)), Some(7));
        }
        assert_eq!(lpm.remove(net("0.0.0.0/0")), Some(7));
        assert_eq!(lpm.lookup(ip("10.1.2.3")), None);
        assert!(lpm.is_empty());
    }

    #[test]
    fn nested_routes_of_every_length() {
        let addr = u32::from(ip("172.20.97.201"));
        let all: Vec<u8> = (0..=32).collect();
        // Remove them ascending, descending and interleaved, then put them back.
        let mut interleaved = all.clone();
        interleaved.sort_by_key(|&len| (len % 3, len));
        for order in [
            all.clone(),
            all.iter().rev().copied().collect(),
            interleaved,
        ] {
            let mut lpm = Ipv4Lpm::new();
            let mut reference = Reference::default();
            for len in 0..=32 {
                let p = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap();
                assert_eq!(lpm.insert(p, u32::from(len)), None);
                reference.insert(p, u32::from(len));
            }
            let extra: Vec<Ipv4Addr> = all.iter().map(|&len| diverging(addr, len)).collect();
            for len in 0..=32 {
                assert_eq!(lpm.lookup(diverging(addr, len)), Some(u32::from(len)));
            }
            check(&lpm, &reference, &extra);
            for &len in &order {
                let p = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap();
                assert_eq!(lpm.remove(p), Some(u32::from(len)));
                reference.remove(p);
                check(&lpm, &reference, &extra);
            }
            for &len in order.iter().rev() {
                let p = Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap();
                assert_eq!(lpm.insert(p, 100 + u32::from(len)), None);
                reference.insert(p, 100 + u32::from(len));
                check(&lpm, &reference, &extra);
            }
        }
    }

    #[test]
    fn removal_restores_the_next_shorter_route_across_levels() {
        let mut lpm = Ipv4Lpm::new();
        for (p, v) in [
            ("10.0.0.0/8", 8),
            ("10.0.0.0/12", 12),
            ("10.0.0.0/13", 13),
            ("10.0.0.0/24", 24),
            ("10.0.0.0/25", 25),
            ("10.0.0.7/32", 32),
        ] {
            lpm.insert(net(p), v);
        }
        let a = ip("10.0.0.7");
        for (p, next) in [
            ("10.0.0.7/32", Some(25)),
            ("10.0.0.0/25", Some(24)),
            ("10.0.0.0/24", Some(13)),
            ("10.0.0.0/13", Some(12)),
            ("10.0.0.0/12", Some(8)),
            ("10.0.0.0/8", None),
        ] {
            lpm.remove(net(p));
            assert_eq!(lpm.lookup(a), next, "after removing {p}");
        }
    }

    #[test]
    fn a_group_answers_its_slash24s_route_where_its_own_routes_do_not_match() {
        let mut lpm = Ipv4Lpm::new();
        lpm.insert(net("10.244.1.5/32"), 1);
        let other = ip("10.244.1.6");
        assert_eq!(lpm.lookup(other), None);
        for (change, expected) in [
            ("add 10.244.0.0/16", Some(16)),
            ("add 10.244.1.0/24", Some(24)),
            ("set 10.244.1.0/24", Some(25)),
            ("remove 10.244.1.0/24", Some(16)),
            ("add 0.0.0.0/0", Some(16)),
            ("remove 10.244.0.0/16", Some(0)),
        ] {
            let (verb, p) = change.split_once(' ').unwrap();
            match verb {
                "add" => lpm.insert(net(p), net(p).prefix_len().into()),
                "set" => lpm.insert(net(p), 25),
                _ => lpm.remove(net(p)),
            };
            assert_eq!(lpm.lookup(other), expected, "after {change}");
            assert_eq!(lpm.lookup(ip("10.244.1.5")), Some(1), "after {change}");
        }
    }

    #[test]
    fn prefixes_are_normalised() {
        let mut lpm = Ipv4Lpm::new();
        assert_eq!(lpm.insert(net("10.1.2.3/24"), 1), None);
        assert_eq!(lpm.get(net("10.1.2.0/24")), Some(1));
        assert_eq!(lpm.insert(net("10.1.2.99/24"), 2), Some(1));
        assert_eq!(lpm.iter().collect::<Vec<_>>(), [(net("10.1.2.0/24"), 2)]);
        assert_eq!(lpm.remove(net("10.1.2.200/24")), Some(2));
        assert!(lpm.is_empty());
    }

    #[test]
    fn insert_replaces_and_remove_of_a_missing_route_changes_nothing() {
        let mut lpm = Ipv4Lpm::new();
        lpm.insert(net("10.244.1.5/32"), 1);
        assert_eq!(lpm.insert(net("10.244.1.5/32"), 1), Some(1));
        assert_eq!(lpm.insert(net("10.244.1.5/32"), 2), Some(1));
        assert_eq!(lpm.len(), 1);
        assert_eq!(lpm.remove(net("10.244.1.6/32")), None);
        assert_eq!(lpm.remove(net("10.244.1.0/24")), None);
        assert_eq!(lpm.remove(net("10.0.0.0/8")), None);
        assert_eq!(lpm.len(), 1);
        assert_eq!(lpm.lookup(ip("10.244.1.5")), Some(2));
    }

    #[test]
    fn iter_sorts_by_address_then_length() {
        let mut lpm = Ipv4Lpm::new();
        let routes = [
            "10.244.1.7/32",
            "0.0.0.0/0",
            "10.244.1.0/24",
            "10.0.0.0/8",
            "192.168.0.0/16",
            "10.244.0.0/16",
            "10.244.1.0/32",
            "9.255.255.255/32",
        ];
        for (i, p) in routes.iter().enumerate() {
            lpm.insert(net(p), i as u32);
        }
        let order: Vec<String> = lpm.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(
            order,
            [
                "0.0.0.0/0",
                "9.255.255.255/32",
                "10.0.0.0/8",
                "10.244.0.0/16",
                "10.244.1.0/24",
                "10.244.1.0/32",
                "10.244.1.7/32",
                "192.168.0.0/16",
            ]
        );
    }

    #[test]
    fn groups_and_chunks_are_freed_when_emptied() {
        let empty = Ipv4Lpm::<u32>::new().memory_bytes();
        let mut lpm = Ipv4Lpm::new();
        let mut reference = Reference::default();
        // Several groups in one chunk, removed first to last so that the
        // last group keeps moving into the freed index.
        let hosts: Vec<Ipv4Net> = (0..20)
            .map(|i| Ipv4Net::new(Ipv4Addr::new(10, 244, i * 3, 9), 32).unwrap())
            .collect();
        for (i, &p) in hosts.iter().enumerate() {
            lpm.insert(p, i as u32);
            reference.insert(p, i as u32);
        }
        lpm.insert(net("10.244.0.0/16"), 99);
        reference.insert(net("10.244.0.0/16"), 99);
        assert!(lpm.memory_bytes() > empty);
        for &p in &hosts {
            lpm.remove(p);
            reference.remove(p);
            check(&lpm, &reference, &[]);
        }
        lpm.remove(net("10.244.0.0/16"));
        assert!(lpm.is_empty());
        assert_eq!(lpm.memory_bytes(), empty);
        assert!(lpm.chunks.iter().all(Option::is_none));
    }

    #[test]
    fn clones_are_independent() {
        let mut a = Ipv4Lpm::new();
        let mut reference_a = Reference::default();
        for (p, v) in [("10.244.1.0/24", 1), ("10.244.1.5/32", 2), ("0.0.0.0/0", 3)] {
            a.insert(net(p), v);
            reference_a.insert(net(p), v);
        }
        let mut b = a.clone();
        let mut reference_b = reference_a.clone();
        for (p, v) in [
            ("10.244.1.6/32", 4),
            ("10.244.1.5/32", 5),
            ("10.0.0.0/8", 6),
        ] {
            b.insert(net(p), v);
            reference_b.insert(net(p), v);
        }
        b.remove(net("10.244.1.0/24"));
        reference_b.remove(net("10.244.1.0/24"));
        check(&a, &reference_a, &[]);
        check(&b, &reference_b, &[]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(Ipv4Net, u32),
        Remove(Ipv4Net),
        Get(Ipv4Net),
        /// Keep a clone, checked at the end against the reference of its time.
        Snapshot,
    }

    /// Prefixes that overlap a lot: each address byte is one of four values,
    /// so the 256 addresses share long prefixes, at every length.
    fn prefix() -> impl Strategy<Value = Ipv4Net> {
        let byte = || prop::sample::select(vec![0u8, 1, 128, 255]);
        (byte(), byte(), byte(), byte(), 0u8..=32)
            .prop_map(|(a, b, c, d, len)| Ipv4Net::new(Ipv4Addr::new(a, b, c, d), len).unwrap())
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (prefix(), 0u32..4).prop_map(|(p, v)| Op::Insert(p, v)),
            3 => prefix().prop_map(Op::Remove),
            2 => prefix().prop_map(Op::Get),
            1 => Just(Op::Snapshot),
        ]
    }

    proptest! {
        #[test]
        fn matches_the_reference(ops in prop::collection::vec(op(), 1..200)) {
            let mut lpm = Ipv4Lpm::new();
            let mut reference = Reference::default();
            let mut snapshots = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(p, v) => prop_assert_eq!(lpm.insert(p, v), reference.insert(p, v)),
                    Op::Remove(p) => prop_assert_eq!(lpm.remove(p), reference.remove(p)),
                    Op::Get(p) => prop_assert_eq!(lpm.get(p), reference.get(p)),
                    Op::Snapshot => snapshots.push((lpm.clone(), reference.clone())),
                }
                prop_assert_eq!(lpm.len(), reference.0.len());
            }
            let extra: Vec<Ipv4Addr> = [0u8, 1, 2, 127, 128, 129, 254, 255]
                .iter()
                .flat_map(|&x| [Ipv4Addr::new(x, x, x, x), Ipv4Addr::new(x, 1, 128, 255)])
                .collect();
            check(&lpm, &reference, &extra);
            for (snapshot, reference) in &snapshots {
                check(snapshot, reference, &extra);
            }
        }
    }

    #[test]
    fn update_publishes_a_new_snapshot_and_old_ones_stay_intact() {
        let fib = SharedFib::new();
        let before = fib.load();
        let old = fib.update(|t| t.insert(net("10.244.0.0/16"), 1));
        assert_eq!(old, None);
        assert_eq!(fib.load().lookup(ip("10.244.3.4")), Some(1));
        assert_eq!(before.lookup(ip("10.244.3.4")), None);
        assert!(before.is_empty());
    }

    #[test]
    fn replaced_snapshots_are_freed_by_a_writer_once_no_reader_holds_them() {
        let fib = SharedFib::new();
        fib.update(|t| t.insert(net("10.244.0.0/16"), 1));
        let held = fib.load();
        fib.update(|t| t.insert(net("10.244.0.0/16"), 2));
        fib.update(|t| t.insert(net("10.244.0.0/16"), 3));
        // The one a reader holds is kept; the one nobody held is gone.
        assert_eq!(fib.retired.lock().unwrap().len(), 1);
        assert_eq!(held.lookup(ip("10.244.1.1")), Some(1));
        drop(held);
        fib.update(|t| t.insert(net("10.244.0.0/16"), 4));
        assert!(fib.retired.lock().unwrap().is_empty());
        assert_eq!(fib.load().lookup(ip("10.244.1.1")), Some(4));
    }

    /// One writer republishes three routes in every update (one per level,
    /// all with the update's number) while churning /32s; readers must see
    /// the three agree in every snapshot, and never go back in time.
    #[test]
    fn readers_never_see_a_torn_update() {
        const UPDATES: u32 = 3000;
        let fib = Arc::new(SharedFib::new());
        let done = Arc::new(AtomicBool::new(false));
        let probes = [ip("8.8.8.8"), ip("10.244.200.1"), ip("10.244.7.77")];
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (fib, done) = (fib.clone(), done.clone());
                std::thread::spawn(move || {
                    let (mut seen, mut last) = (0u64, 0);
                    while !done.load(Ordering::Relaxed) {
                        let snapshot = fib.load();
                        let values = probes.map(|a| snapshot.lookup(a));
                        assert!(values.iter().all(|v| *v == values[0]), "torn: {values:?}");
                        let version = values[0].unwrap_or(0);
                        assert!(version >= last, "went back from {last} to {version}");
                        last = version;
                        seen += 1;
                    }
                    seen
                })
            })
            .collect();
        for version in 1..=UPDATES {
            fib.update(|t| {
                t.insert(net("0.0.0.0/0"), version);
                t.insert(net("10.244.0.0/16"), version);
                t.insert(net("10.244.7.77/32"), version);
                let churn =
                    Ipv4Net::new(Ipv4Addr::from(0x0af4_0000 | (version * 7919) & 0xffff), 32);
                let churn = churn.unwrap();
                if t.get(churn).is_some() {
                    t.remove(churn);
                } else {
                    t.insert(churn, version);
                }
            });
        }
        done.store(true, Ordering::Relaxed);
        for reader in readers {
            assert!(reader.join().unwrap() > 0);
        }
        assert_eq!(fib.load().lookup(ip("10.244.7.77")), Some(UPDATES));
    }
}
