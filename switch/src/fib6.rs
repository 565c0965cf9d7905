//! The FIB's IPv6 table: longest-prefix match for the packet path. Its
//! routes (pods' /128s, peers' IPv6 pod CIDRs) change only with ports and
//! peers, so the control plane builds the table into each topology
//! snapshot it publishes ([`Topology::fib6`](crate::topology::Topology)),
//! which the workers read without locks.
//!
//! # Structure
//!
//! One hash table per prefix length that has routes, keyed by the
//! prefix's network address, tried longest length first: a lookup is one
//! probe per length in use, and stops at the first hit. This is how VPP's
//! IPv6 FIB looks up (a bihash probed per non-empty prefix length). A
//! trie by address bits, as IPv4 has, would take 128 bits of strides: six
//! or more dependent reads of sparse nodes for a /128 where a pod network
//! uses a handful of lengths — a pod's /128, a node's /64, the cluster's
//! /48 or /56, the Service range, a default route — so a handful of
//! probes, each one cache miss in a large table.
//!
//! Each length's table is cut into [`SHARDS`] shards behind [`Arc`]s,
//! copied on write as the IPv4 trie's nodes are: a clone of the table
//! shares every shard, and a change to the clone copies one shard (1/64
//! of that length's routes).

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::sync::Arc;

use foldhash::fast::FixedState;
/// The prefix type of the IPv6 table's API, re-exported so that callers
/// need not depend on `ipnet` themselves.
pub use ipnet::Ipv6Net;

/// Shards per prefix length: a change copies one.
const SHARDS: usize = 64;

/// The routes of one prefix length in one shard, by network address.
type Shard<T> = HashMap<u128, T, FixedState>;

/// The routes of one prefix length.
#[derive(Clone)]
struct LengthTable<T> {
    shards: Box<[Arc<Shard<T>>; SHARDS]>,
    len: usize,
}

impl<T: Copy> LengthTable<T> {
    fn new() -> Self {
        Self {
            shards: Box::new(std::array::from_fn(|_| Arc::default())),
            len: 0,
        }
    }

    #[inline]
    fn get(&self, key: u128) -> Option<T> {
        self.shards[shard(key)].get(&key).copied()
    }
}

/// The shard of a network address: its two halves mixed (a /64's low half
/// is zero, a pod's /128 differs from its neighbours in it).
#[inline]
fn shard(key: u128) -> usize {
    let mixed = (key as u64) ^ ((key >> 64) as u64);
    (mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SHARDS.trailing_zeros())) as usize
}

/// `addr` with all but its first `len` bits cleared.
#[inline]
fn network(addr: u128, len: u8) -> u128 {
    match len {
        0 => 0,
        len => addr & (!0u128 << (128 - u32::from(len))),
    }
}

/// An IPv6 longest-prefix-match table of small `Copy` values.
///
/// Cloning is cheap (a pointer per prefix length in use is copied, every
/// shard is shared) and the clone is independent: changes to one never
/// show in the other. See the [module documentation](self).
#[derive(Clone)]
pub struct Ipv6Lpm<T> {
    /// The prefix lengths that have routes, longest first, with their
    /// routes.
    lengths: Vec<(u8, Arc<LengthTable<T>>)>,
    /// Number of routes.
    len: usize,
}

impl<T: Copy + PartialEq + fmt::Debug> fmt::Debug for Ipv6Lpm<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<T: Copy + PartialEq> Default for Ipv6Lpm<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + PartialEq> Ipv6Lpm<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            lengths: Vec::new(),
            len: 0,
        }
    }

    /// Where prefix length `len` is or would go in `lengths`.
    fn position(&self, len: u8) -> Result<usize, usize> {
        // Longest first: search by the reversed order.
        self.lengths.binary_search_by(|(l, _)| len.cmp(l))
    }

    /// Adds a route, or replaces the value of an existing one; returns the
    /// old value. The prefix is normalised (host bits cleared, as
    /// [`Ipv6Net::trunc`]).
    pub fn insert(&mut self, prefix: Ipv6Net, value: T) -> Option<T> {
        let old = self.get(prefix);
        if old == Some(value) {
            // Nothing changes: keep sharing every shard.
            return old;
        }
        let len = prefix.prefix_len();
        let key = network(u128::from(prefix.addr()), len);
        let at = match self.position(len) {
            Ok(at) => at,
            Err(at) => {
                self.lengths.insert(at, (len, Arc::new(LengthTable::new())));
                at
            }
        };
        let table = Arc::make_mut(&mut self.lengths[at].1);
        Arc::make_mut(&mut table.shards[shard(key)]).insert(key, value);
        if old.is_none() {
            table.len += 1;
            self.len += 1;
        }
        old
    }

    /// Removes a route (normalised as in [`insert`](Self::insert)); returns
    /// its value. Addresses it covered fall back to the next-shorter route
    /// covering them.
    pub fn remove(&mut self, prefix: Ipv6Net) -> Option<T> {
        // Look first, so that removing a missing route copies nothing.
        self.get(prefix)?;
        let len = prefix.prefix_len();
        let key = network(u128::from(prefix.addr()), len);
        let at = self.position(len).ok()?;
        let table = Arc::make_mut(&mut self.lengths[at].1);
        let old = Arc::make_mut(&mut table.shards[shard(key)]).remove(&key);
        table.len -= 1;
        if table.len == 0 {
            self.lengths.remove(at);
        }
        self.len -= 1;
        old
    }

    /// The value of exactly this route (normalised as in
    /// [`insert`](Self::insert)), if present.
    pub fn get(&self, prefix: Ipv6Net) -> Option<T> {
        let len = prefix.prefix_len();
        let at = self.position(len).ok()?;
        self.lengths[at]
            .1
            .get(network(u128::from(prefix.addr()), len))
    }

    /// The value of the longest route covering `addr`: the packet path's
    /// lookup, one hash probe per prefix length in use, longest first.
    #[inline]
    pub fn lookup(&self, addr: Ipv6Addr) -> Option<T> {
        let addr = u128::from(addr);
        self.lengths
            .iter()
            .find_map(|(len, table)| table.get(network(addr, *len)))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no route.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The prefix lengths that have routes, longest first: what a lookup
    /// probes.
    pub fn prefix_lengths(&self) -> impl Iterator<Item = u8> + '_ {
        self.lengths.iter().map(|(len, _)| *len)
    }

    /// Every route, sorted by network address then prefix length.
    pub fn iter(&self) -> impl Iterator<Item = (Ipv6Net, T)> + use<T> {
        let mut routes: Vec<(u128, u8, T)> = self
            .lengths
            .iter()
            .flat_map(|(len, table)| {
                table.shards.iter().flat_map(move |shard| {
                    shard.iter().map(move |(&key, &value)| (key, *len, value))
                })
            })
            .collect();
        routes.sort_unstable_by_key(|&(key, len, _)| (key, len));
        routes.into_iter().map(|(key, len, value)| {
            let net = Ipv6Net::new(Ipv6Addr::from(key), len).expect("prefix length ≤ 128");
            (net, value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Reference = crate::fib::reference::Reference<Ipv6Net>;

    fn net(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// Everything observable about `lpm` agrees with `reference`, probed
    /// at each route's first and last address and their neighbours.
    fn check(lpm: &Ipv6Lpm<u32>, reference: &Reference) {
        assert_eq!(lpm.len(), reference.0.len());
        assert_eq!(lpm.is_empty(), reference.0.is_empty());
        assert_eq!(lpm.iter().collect::<Vec<_>>(), reference.sorted());
        let mut lengths: Vec<u8> = reference.0.iter().map(|(p, _)| p.prefix_len()).collect();
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        lengths.dedup();
        assert_eq!(lpm.prefix_lengths().collect::<Vec<_>>(), lengths);
        for &(p, v) in &reference.0 {
            assert_eq!(lpm.get(p), Some(v), "get {p}");
            let (first, last) = (u128::from(p.network()), u128::from(p.broadcast()));
            for a in [first, last, first.wrapping_sub(1), last.wrapping_add(1)] {
                let a = Ipv6Addr::from(a);
                assert_eq!(lpm.lookup(a), reference.lookup(a), "lookup {a}");
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(Ipv6Net, u32),
        Remove(Ipv6Net),
        Get(Ipv6Net),
        /// Keep a clone, checked at the end against the reference of its time.
        Snapshot,
    }

    /// Prefixes that overlap a lot: each 16-bit group is one of four
    /// values, at the lengths a pod network uses and at any length.
    fn prefix() -> impl Strategy<Value = Ipv6Net> {
        let group = || prop::sample::select(vec![0u16, 1, 0x8000, 0xffff]);
        let len = prop_oneof![
            prop::sample::select(vec![0u8, 48, 56, 64, 108, 128]),
            0u8..=128,
        ];
        (prop::array::uniform8(group()), len)
            .prop_map(|(groups, len)| Ipv6Net::new(Ipv6Addr::from(groups), len).unwrap())
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
            let mut lpm = Ipv6Lpm::new();
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
            check(&lpm, &reference);
            for (snapshot, reference) in &snapshots {
                check(snapshot, reference);
            }
        }
    }

    #[test]
    fn a_pod_network_routes_by_the_longest_prefix() {
        let mut lpm = Ipv6Lpm::new();
        lpm.insert(net("::/0"), 0);
        lpm.insert(net("fd00:10:244::/56"), 1);
        lpm.insert(net("fd00:10:244:2::/64"), 2);
        lpm.insert(net("fd00:10:244:1::5/128"), 3);
        // Host bits are cleared.
        lpm.insert(net("fd00:10:244:1::1/64"), 4);
        assert_eq!(lpm.get(net("fd00:10:244:1::/64")), Some(4));
        assert_eq!(lpm.lookup(ip("fd00:10:244:1::5")), Some(3));
        assert_eq!(lpm.lookup(ip("fd00:10:244:1::6")), Some(4));
        assert_eq!(lpm.lookup(ip("fd00:10:244:2::9")), Some(2));
        assert_eq!(lpm.lookup(ip("fd00:10:244:3::9")), Some(1));
        assert_eq!(lpm.lookup(ip("2001:db8::1")), Some(0));
        assert_eq!(lpm.prefix_lengths().collect::<Vec<_>>(), [128, 64, 56, 0]);
        assert_eq!(lpm.remove(net("fd00:10:244:2::/64")), Some(2));
        assert_eq!(lpm.lookup(ip("fd00:10:244:2::9")), Some(1));
        assert_eq!(lpm.remove(net("fd00:10:244:2::/64")), None);
    }
}
