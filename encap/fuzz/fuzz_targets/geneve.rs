//! The Geneve view, its option TLVs and Repr on arbitrary bytes: never
//! panics, and emitting a parsed header gives back the same meaning.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podswitch_encap::geneve::{GeneveOptionRepr, OptionIter, Packet, Repr};

fuzz_target!(|data: &[u8]| {
    let _ = Packet::new_unchecked(data).to_string();
    for option in OptionIter::new(data).flatten() {
        let _ = GeneveOptionRepr::parse(&option).map(|o| o.critical());
    }
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let _ = (packet.oam(), packet.critical(), packet.protocol_type(), packet.payload());
    if let Ok(repr) = Repr::parse(&packet) {
        let mut out = vec![0u8; repr.buffer_len()];
        repr.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        assert_eq!(Repr::parse(&Packet::new_unchecked(&out[..])), Ok(repr));
    }
});
