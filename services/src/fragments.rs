//! IP fragments of translated connections, followed without reassembly
//! (VPP's "shallow virtual reassembly"): the first fragment carries the
//! ports, so it is translated as a whole packet would be and its rewrite
//! is remembered under its datagram's identity (addresses, protocol, IP
//! ID); the later fragments, which carry no ports, get the same addresses.
//! The kernel's NAT reassembles instead (`nf_defrag_ipv4`) and cuts again;
//! a switch that forwards fragments as they come needs neither the
//! buffers nor the copy. Fragments that arrive before their first are not
//! held: on a pod network the sender's kernel sends a datagram's
//! fragments in order and nothing on the way reorders them.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use foldhash::fast::FixedState;

use crate::Pass;
use crate::flow::{self, Fragment};
use crate::rewrite;

/// A datagram's identity among fragments: source, destination, protocol
/// and IP identification, as its fragments arrive (before any rewrite).
pub type DatagramKey = (Ipv4Addr, Ipv4Addr, u8, u16);

/// How long a remembered rewrite waits for the datagram's other
/// fragments, in milliseconds; they follow the first within microseconds.
const FOLLOW_MS: u64 = 2_000;

/// Datagrams followed at once at most: a full memory forgets the expired
/// ones, and remembers no more until some expire or end.
const CAPACITY: usize = 4_096;

/// What a first fragment's datagram was rewritten to.
#[derive(Debug, Clone, Copy)]
struct Followed {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    until_ms: u64,
}

/// The rewrites of fragmented datagrams whose first fragment was
/// translated, until their last fragment passes or they expire. Locked
/// per use: only fragments of Service traffic touch it, and whole packets
/// never do.
#[derive(Debug, Default)]
pub struct Fragments {
    followed: Mutex<HashMap<DatagramKey, Followed, FixedState>>,
}

impl Fragments {
    fn followed(&self) -> std::sync::MutexGuard<'_, HashMap<DatagramKey, Followed, FixedState>> {
        self.followed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A first fragment was translated: `ipv4` holds it rewritten.
    /// Remember its addresses for the datagram's later fragments.
    pub fn remember(&self, fragment: &Fragment, ipv4: &[u8], now_ms: u64) {
        let Some(Fragment {
            key: (src, dst, ..),
            ..
        }) = flow::fragment(ipv4)
        else {
            return;
        };
        let followed = Followed {
            src,
            dst,
            until_ms: now_ms + FOLLOW_MS,
        };
        let mut all = self.followed();
        if all.len() >= CAPACITY {
            all.retain(|_, f| f.until_ms > now_ms);
            if all.len() >= CAPACITY {
                return;
            }
        }
        all.insert(fragment.key, followed);
    }

    /// A later fragment: rewritten to its datagram's remembered addresses
    /// (`true`), or left as it is when its first fragment was not
    /// translated (`false`). A live pass's last fragment ends the memory;
    /// a dry run (a trace) changes nothing.
    pub fn follow(&self, fragment: &Fragment, ipv4: &mut [u8], now_ms: u64, pass: Pass) -> bool {
        let mut all = self.followed();
        let Some(followed) = all.get(&fragment.key).copied() else {
            return false;
        };
        if followed.until_ms <= now_ms {
            if pass == Pass::Live {
                all.remove(&fragment.key);
            }
            return false;
        }
        if pass == Pass::Live && fragment.last {
            all.remove(&fragment.key);
        }
        drop(all);
        let (src, dst, ..) = fragment.key;
        rewrite::readdress_fragment(ipv4, (src, dst), (followed.src, followed.dst));
        true
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.followed().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(offset_words: u16, more: bool) -> Vec<u8> {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
        let flags = if more { 0x2000 } else { 0 } | offset_words;
        p[6..8].copy_from_slice(&flags.to_be_bytes());
        p[8] = 64;
        p[9] = flow::UDP;
        p[12..16].copy_from_slice(&[10, 244, 1, 2]);
        p[16..20].copy_from_slice(&[10, 96, 0, 10]);
        podswitch_encap::checksum::fill_ipv4_header(&mut p[..20]);
        p
    }

    #[test]
    fn later_fragments_get_the_first_ones_addresses_until_the_last() {
        let fragments = Fragments::default();
        let first = fragment(0, true);
        let key = flow::fragment(&first).unwrap();
        assert!(key.first && !key.last);
        // The first fragment, as the translator left it.
        let mut translated = first.clone();
        translated[16..20].copy_from_slice(&[10, 244, 2, 7]);
        podswitch_encap::checksum::fill_ipv4_header(&mut translated[..20]);
        fragments.remember(&key, &translated, 0);

        for (offset, more) in [(185, true), (370, false)] {
            let mut later = fragment(offset, more);
            let info = flow::fragment(&later).unwrap();
            assert!(!info.first && info.last != more);
            // A trace looks, changes nothing.
            let mut copy = later.clone();
            assert!(fragments.follow(&info, &mut copy, 1, Pass::DryRun));
            assert!(fragments.follow(&info, &mut later, 1, Pass::Live));
            assert_eq!(later[16..20], [10, 244, 2, 7]);
            assert_eq!(later[12..16], [10, 244, 1, 2]);
            assert!(podswitch_encap::checksum::ipv4_header_ok(&later[..20]));
        }
        // The last fragment ended it.
        assert!(fragments.is_empty());
        let mut again = fragment(185, true);
        let info = flow::fragment(&again).unwrap();
        assert!(!fragments.follow(&info, &mut again, 2, Pass::Live));
        assert_eq!(again, fragment(185, true));
    }

    #[test]
    fn an_unfinished_datagram_is_forgotten_after_its_time() {
        let fragments = Fragments::default();
        let first = fragment(0, true);
        let key = flow::fragment(&first).unwrap();
        fragments.remember(&key, &first, 0);
        let mut later = fragment(185, true);
        let info = flow::fragment(&later).unwrap();
        assert!(!fragments.follow(&info, &mut later, FOLLOW_MS, Pass::Live));
        assert!(fragments.is_empty());
    }
}
