//! The daemon's configuration file, arbitrary: parsing and checking it
//! never panics, and every refusal names what is wrong.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podswitch::config::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = Config::parse(text)
    {
        assert!(!e.to_string().is_empty());
    }
});
