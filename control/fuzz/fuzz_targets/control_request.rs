//! A line on the control socket, arbitrary: parsing it as a request never
//! panics, and a request that parses survives a round trip through its
//! JSON form unchanged (what the CLI sends is what the daemon reads).
#![no_main]

use libfuzzer_sys::fuzz_target;
use podswitch_control::Request;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<Request>(data) {
        let text = serde_json::to_vec(&request).expect("a request serialises");
        let again: Request = serde_json::from_slice(&text).expect("its own JSON parses");
        assert_eq!(again, request);
    }
});
