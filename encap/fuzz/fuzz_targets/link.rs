//! Ethernet/VLAN parsing and the inner flow hash on arbitrary frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podswitch_encap::ethernet::LinkHeader;
use podswitch_encap::flow::{flow_hash, source_port};

fuzz_target!(|frame: &[u8]| {
    if let Ok(link) = LinkHeader::parse(frame) {
        assert!(link.header_len <= frame.len());
    }
    assert!(source_port(flow_hash(frame)) >= 49152);
});
