//! ARP request and neighbour solicitation parsing on arbitrary frames, and
//! the replies built from whatever parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podswitch_encap::neighbor::{
    ARP_REPLY_LEN, ArpRequest, NEIGHBOR_ADVERT_LEN, NeighborSolicit, emit_arp_reply,
    emit_neighbor_advert,
};
use podswitch_encap::wire::EthernetAddress;

const GATEWAY_MAC: EthernetAddress = EthernetAddress([2, 0x70, 0x73, 0, 0, 1]);

fuzz_target!(|frame: &[u8]| {
    if let Ok(request) = ArpRequest::parse(frame) {
        let mut out = [0u8; ARP_REPLY_LEN];
        assert_eq!(emit_arp_reply(&request, GATEWAY_MAC, &mut out), Ok(ARP_REPLY_LEN));
    }
    if let Ok(solicit) = NeighborSolicit::parse(frame) {
        let mut out = [0u8; NEIGHBOR_ADVERT_LEN];
        assert_eq!(
            emit_neighbor_advert(&solicit, GATEWAY_MAC, &mut out),
            Ok(NEIGHBOR_ADVERT_LEN)
        );
    }
});
