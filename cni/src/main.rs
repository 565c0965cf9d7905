//! `podswitch-cni`: the CNI plugin that wires pods into the podswitch
//! daemon. A container runtime runs it with the `CNI_*` environment and the
//! network configuration on stdin; it answers on stdout with a result or
//! the spec's error JSON. See docs/cni.md.

use std::io::{Read, Write};
use std::process::ExitCode;

use podswitch_cni::commands;
use podswitch_cni::spec::{CniError, Environment, code};

/// The longest network configuration read from stdin.
const MAX_STDIN: u64 = 1 << 20;

fn main() -> ExitCode {
    let outcome = Environment::from_vars(|name| std::env::var(name).ok()).and_then(|env| {
        let mut stdin = Vec::new();
        std::io::stdin()
            .take(MAX_STDIN + 1)
            .read_to_end(&mut stdin)
            .map_err(|e| {
                CniError::new(
                    code::IO_FAILURE,
                    format!("reading the network config from stdin: {e}"),
                )
            })?;
        if stdin.len() as u64 > MAX_STDIN {
            return Err(CniError::new(
                code::DECODING_FAILURE,
                format!("the network config on stdin is larger than {MAX_STDIN} bytes"),
            ));
        }
        commands::run(&env, &stdin)
    });
    let mut stdout = std::io::stdout().lock();
    match outcome {
        Ok(output) => {
            if let Some(text) = output {
                let _ = writeln!(stdout, "{text}");
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            let _ = writeln!(
                stdout,
                "{}",
                serde_json::to_string(&error).unwrap_or_default()
            );
            ExitCode::FAILURE
        }
    }
}
