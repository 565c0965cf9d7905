//! The VXLAN view and Repr on arbitrary bytes: parse never panics, and
//! emitting a parsed header gives back the same meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podswitch_encap::vxlan::{Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let packet = Packet::new_unchecked(data);
    let _ = packet.to_string();
    if let Ok(packet) = Packet::new_checked(data) {
        let _ = (packet.flags(), packet.vni(), packet.payload());
        if let Ok(repr) = Repr::parse(&packet) {
            let mut out = vec![0u8; repr.buffer_len()];
            repr.emit(&mut Packet::new_unchecked(&mut out[..]));
            assert_eq!(Repr::parse(&Packet::new_unchecked(&out[..])), Ok(repr));
        }
    }
});
