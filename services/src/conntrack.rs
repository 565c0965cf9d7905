//! The connection table: every translated connection under both of its
//! tuples (the original, client to ClusterIP, and the reply, endpoint to
//! client), so either direction is found in one probe. It is shared by the
//! workers (a reply may arrive on another worker than its request): the
//! tuples are spread over sharded `RwLock`ed maps, packets only read-lock
//! a shard and update the connection's state through atomics, and only a
//! new connection or a sweep write-locks. The NetworkPolicy stage is meant
//! to keep its connections here too.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use foldhash::fast::FixedState;

use crate::flow::{FlowKey, TCP, TCP_FIN, TCP_RST, UDP};
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
        }
    }
}

/// State flags of a connection.
const FIN_ORIGINAL: u8 = 1;
const FIN_REPLY: u8 = 2;
const RESET: u8 = 4;
const REPLIED: u8 = 8;

/// The state both tuples of a connection share.
#[derive(Debug)]
struct Conn {
    original: FlowKey,
    backend: Backend,
    last_seen_ms: AtomicU64,
    flags: AtomicU8,
}

impl Conn {
    /// When it expires, in milliseconds.
    fn deadline(&self, timeouts: &Timeouts) -> u64 {
        let flags = self.flags.load(Ordering::Relaxed);
        let timeout = match self.original.protocol {
            TCP if flags & RESET != 0 => timeouts.tcp_reset,
            TCP if flags & (FIN_ORIGINAL | FIN_REPLY) != 0 || flags & REPLIED == 0 => {
                timeouts.tcp_closing
            }
            TCP => timeouts.tcp_established,
            UDP if flags & REPLIED != 0 => timeouts.udp_replied,
            UDP => timeouts.udp,
            _ => timeouts.sctp,
        };
        self.last_seen_ms
            .load(Ordering::Relaxed)
            .saturating_add(timeout)
    }

    /// Whether a new connection may take its tuples: it expired, or a TCP
    /// connection that closed (a client reusing its port after a FIN/RST).
    fn replaceable(&self, now_ms: u64, timeouts: &Timeouts) -> bool {
        self.deadline(timeouts) <= now_ms
            || (self.original.protocol == TCP
                && self.flags.load(Ordering::Relaxed) & (FIN_ORIGINAL | FIN_REPLY | RESET) != 0)
    }
}

/// One tuple's entry: its direction, its rewrite and the shared state.
#[derive(Debug)]
struct Half {
    direction: Direction,
    nat: Nat,
    conn: Arc<Conn>,
}

type Shard = HashMap<FlowKey, Half, FixedState>;

/// Shards: a power of two, several per worker so that two workers rarely
/// meet on one lock.
const SHARDS: usize = 64;

/// The connection table (see the module documentation).
#[derive(Debug)]
pub struct ConnTable {
    shards: Box<[RwLock<Shard>]>,
    hasher: FixedState,
    connections: AtomicUsize,
    capacity: usize,
    timeouts: Timeouts,
}

impl ConnTable {
    /// An empty table for at most `capacity` connections.
    pub fn new(capacity: usize, timeouts: Timeouts) -> ConnTable {
        let per_shard = (capacity * 2).div_ceil(SHARDS).min(1 << 20);
        ConnTable {
            shards: (0..SHARDS)
                .map(|_| {
                    RwLock::new(HashMap::with_capacity_and_hasher(
                        per_shard,
                        FixedState::default(),
                    ))
                })
                .collect(),
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

    fn shard_of(&self, key: &FlowKey) -> usize {
        (self.hasher.hash_one(key) >> 32) as usize & (SHARDS - 1)
    }

    fn read(&self, shard: usize) -> RwLockReadGuard<'_, Shard> {
        // A worker that panicked under the lock left a consistent map: each
        // write is one insert or remove.
        self.shards[shard]
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, shard: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[shard]
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Find the connection a packet with tuple `key` belongs to (either
    /// direction), note the packet (its time, TCP FIN/RST, a reply) and
    /// return the rewrite. A connection that expired, or a TCP SYN on one
    /// that closed, is not found: the packet starts a new one.
    pub fn lookup(&self, key: &FlowKey, tcp_flags: u8, now_ms: u64) -> Option<Hit> {
        let shard = self.read(self.shard_of(key));
        let half = shard.get(key)?;
        let conn = &half.conn;
        let syn_only = tcp_flags & 0x12 == 0x02;
        if conn.deadline(&self.timeouts) <= now_ms
            || (syn_only && conn.replaceable(now_ms, &self.timeouts))
        {
            return None;
        }
        // Written only when the clock moved: most packets of a busy
        // connection then read the shared state without dirtying its line.
        if conn.last_seen_ms.load(Ordering::Relaxed) < now_ms {
            conn.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
        }
        let mut flags = 0;
        if tcp_flags & TCP_FIN != 0 {
            flags |= if half.direction == Direction::Original {
                FIN_ORIGINAL
            } else {
                FIN_REPLY
            };
        }
        if tcp_flags & TCP_RST != 0 {
            flags |= RESET;
        }
        if half.direction == Direction::Reply {
            flags |= REPLIED;
        }
        if flags != 0 && conn.flags.load(Ordering::Relaxed) & flags != flags {
            conn.flags.fetch_or(flags, Ordering::Relaxed);
        }
        Some(Hit {
            direction: half.direction,
            nat: half.nat,
        })
    }

    /// Record a new connection: `original` (client to ClusterIP) rewritten
    /// to `nat` goes to `backend`. A live connection already under the
    /// original tuple (another worker got there first) is returned as is;
    /// an expired or closed one is replaced.
    pub fn insert(
        &self,
        original: FlowKey,
        nat: Nat,
        backend: Backend,
        now_ms: u64,
    ) -> Result<Hit, Refused> {
        let translated = FlowKey {
            src: nat.src.0,
            dst: nat.dst.0,
            sport: nat.src.1,
            dport: nat.dst.1,
            protocol: original.protocol,
        };
        let reply = translated.reversed();
        let mut locked = Locked::new(self, self.shard_of(&original), self.shard_of(&reply));
        let replacing = match locked.shard(0).get(&original) {
            Some(existing) if !existing.conn.replaceable(now_ms, &self.timeouts) => {
                return Ok(Hit {
                    direction: existing.direction,
                    nat: existing.nat,
                });
            }
            existing => existing.is_some_and(|existing| existing.direction == Direction::Original),
        };
        if locked
            .shard(1)
            .get(&reply)
            .is_some_and(|existing| !existing.conn.replaceable(now_ms, &self.timeouts))
        {
            return Err(Refused::Clash);
        }
        if !replacing && self.connections.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Full);
        }
        let conn = Arc::new(Conn {
            original,
            backend,
            last_seen_ms: AtomicU64::new(now_ms),
            flags: AtomicU8::new(0),
        });
        // A replaced connection's other tuple stays until it expires (a
        // sweep removes it): it is in a shard not locked here.
        let reverse = Nat {
            src: (original.dst, original.dport),
            dst: (original.src, original.sport),
        };
        let half = |direction, nat| Half {
            direction,
            nat,
            conn: conn.clone(),
        };
        locked
            .shard(1)
            .insert(reply, half(Direction::Reply, reverse));
        locked
            .shard(0)
            .insert(original, half(Direction::Original, nat));
        Ok(Hit {
            direction: Direction::Original,
            nat,
        })
    }

    /// Remove the connections `ended` says are over, both tuples; returns
    /// how many. Shard by shard: a connection's two tuples may be removed
    /// a moment apart, each on its own.
    fn remove(&self, ended: impl Fn(&Conn) -> bool) -> usize {
        let mut removed = 0;
        for shard in 0..SHARDS {
            self.write(shard).retain(|_, half| {
                let keep = !ended(&half.conn);
                if !keep && half.direction == Direction::Original {
                    removed += 1;
                }
                keep
            });
        }
        self.connections.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Remove the connections that expired by `now_ms`; returns how many.
    /// The switch calls it every few seconds.
    pub fn sweep(&self, now_ms: u64) -> usize {
        self.remove(|conn| conn.deadline(&self.timeouts) <= now_ms)
    }

    /// Remove the connections whose endpoint the new Service table no
    /// longer keeps (`keeps(original tuple, endpoint)`); returns how many.
    /// Their next packet from the client starts a new connection to a
    /// current endpoint (a TCP one gets a reset from it).
    pub fn remove_unkept(&self, keeps: impl Fn(&FlowKey, &Backend) -> bool) -> usize {
        self.remove(|conn| !keeps(&conn.original, &conn.backend))
    }

    /// How many connections go to each endpoint, for `podswitch services`.
    pub fn per_backend(&self) -> HashMap<Backend, usize> {
        let mut counts = HashMap::new();
        for shard in 0..SHARDS {
            for half in self.read(shard).values() {
                if half.direction == Direction::Original {
                    *counts.entry(half.conn.backend).or_insert(0) += 1;
                }
            }
        }
        counts
    }
}

/// The one or two shards a new connection's tuples fall in, write-locked
/// in index order so two inserts never wait on each other crosswise.
struct Locked<'a> {
    /// Index of the original tuple's shard, of the reply tuple's.
    indices: [usize; 2],
    guards: [Option<RwLockWriteGuard<'a, Shard>>; 2],
}

impl<'a> Locked<'a> {
    fn new(table: &'a ConnTable, original: usize, reply: usize) -> Locked<'a> {
        let mut guards = [None, None];
        if original <= reply {
            guards[0] = Some(table.write(original));
        }
        if original != reply {
            guards[1] = Some(table.write(reply));
        }
        if original > reply {
            guards[0] = Some(table.write(original));
        }
        Locked {
            indices: [original, reply],
            guards,
        }
    }

    /// The shard of tuple `which` (0 original, 1 reply).
    fn shard(&mut self, which: usize) -> &mut Shard {
        let slot = if self.indices[0] == self.indices[1] {
            0
        } else {
            which
        };
        self.guards[slot].as_deref_mut().expect("locked in new")
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
}
