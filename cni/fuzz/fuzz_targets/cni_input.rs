//! What a runtime hands the plugin, arbitrary: the first line of the
//! input is the `CNI_*` environment (`NAME=value` pairs separated by
//! `;`), the rest the network configuration on stdin. Parsing never
//! panics, every refusal is a CNI error with a code and a message (the
//! address and MAC a runtime may request among them), and a `prevResult`
//! that parses as a result converts to every spec version.
#![no_main]

use std::collections::HashMap;
use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use podswitch_cni::requests::Requests;
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
    let env = Environment::from_vars(|name| vars.get(name).cloned());
    if let Err(e) = &env {
        assert!(e.code != 0 && !e.msg.is_empty());
    }
    match NetConf::parse(stdin) {
        Err(e) => assert!(e.code != 0 && !e.msg.is_empty()),
        Ok(conf) => {
            if let Ok(env) = &env {
                let checked = Requests::parse(env, &conf).and_then(|requests| {
                    requests.check(
                        "10.244.1.0/24".parse().expect("a CIDR"),
                        Ipv4Addr::new(10, 244, 1, 1),
                        "0a:70:0a:01:00:0b".parse().expect("a MAC"),
                    )
                });
                if let Err(e) = checked {
                    assert!(e.code != 0 && !e.msg.is_empty());
                }
            }
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
