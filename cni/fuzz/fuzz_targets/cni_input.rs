//! What a runtime hands the plugin, arbitrary: the first line of the
//! input is the `CNI_*` environment (`NAME=value` pairs separated by
//! `;`), the rest the network configuration on stdin. Parsing never
//! panics, every refusal is a CNI error with a code and a message, and a
//! `prevResult` that parses as a result converts to every spec version.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use podswitch_cni::spec::{AddResult, Environment, NetConf, SUPPORTED_VERSIONS};

fuzz_target!(|data: &[u8]| {
    let (first, stdin) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let vars: HashMap<String, String> = String::from_utf8_lossy(first)
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Err(e) = Environment::from_vars(|name| vars.get(name).cloned()) {
        assert!(e.code != 0 && !e.msg.is_empty());
    }
    match NetConf::parse(stdin) {
        Err(e) => assert!(e.code != 0 && !e.msg.is_empty()),
        Ok(conf) => {
            if let Some(prev) = conf.prev_result
                && let Ok(result) = serde_json::from_value::<AddResult>(prev)
            {
                for version in SUPPORTED_VERSIONS {
                    let _ = serde_json::to_string(&result.clone().for_version(version));
                }
            }
        }
    }
});
