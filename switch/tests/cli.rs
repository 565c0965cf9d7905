//! The CLI without a lab: configuration errors name the key and the fix
//! and exit non-zero; a CLI call with no daemon says so.

use std::path::Path;
use std::process::Command;

use anyhow::{Result, ensure};

fn podswitch(args: &[&str]) -> Result<(bool, String, String)> {
    let output = Command::new(env!("CARGO_BIN_EXE_podswitch"))
        .args(args)
        .output()?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

fn with_config(text: &str, args: &[&str]) -> Result<(bool, String, String)> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("podswitch-cli-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, text)?;
    let mut full: Vec<&str> = args.to_vec();
    let path_text = path.to_string_lossy().into_owned();
    full.extend(["--config", &path_text]);
    let result = podswitch(&full);
    std::fs::remove_file(&path)?;
    result
}

const GOOD: &str = "node_ip = \"10.1.0.11\"\nuplink = \"eth0\"\npod_cidr = \"10.244.1.0/24\"\n";

#[test]
fn check_config_fills_in_defaults() -> Result<()> {
    let (ok, stdout, stderr) = with_config(GOOD, &["check-config"])?;
    ensure!(ok, "{stderr}");
    for expected in [
        "vni = 1",
        "encap = \"vxlan\"",
        "poll_mode = \"adaptive\"",
        "host_port = \"podsw0\"",
    ] {
        ensure!(
            stdout.contains(expected),
            "{expected} missing from:\n{stdout}"
        );
    }
    Ok(())
}

#[test]
fn bad_configs_are_refused_with_the_key_and_the_fix() -> Result<()> {
    let cases = [
        (GOOD.replace("10.244.1.0/24", "10.244.1.0/33"), "pod_cidr"),
        (format!("{GOOD}vni = 99999999\n"), "0 to 16777215"),
        (format!("{GOOD}encap = \"gre\"\n"), "encap"),
        (format!("{GOOD}speed = 9\n"), "speed"),
        (GOOD.replace("uplink = \"eth0\"\n", ""), "uplink"),
    ];
    for (text, needle) in cases {
        for command in ["check-config", "daemon"] {
            let (ok, _, stderr) = with_config(&text, &[command])?;
            ensure!(!ok, "{command} accepted:\n{text}");
            ensure!(
                stderr.contains(needle),
                "{command}: {stderr:?} lacks {needle:?}"
            );
        }
    }
    let (ok, _, stderr) = podswitch(&["daemon", "--config", "/nonexistent.toml"])?;
    ensure!(!ok && stderr.contains("/nonexistent.toml"), "{stderr}");
    Ok(())
}

#[test]
fn cli_without_a_daemon_says_so() -> Result<()> {
    let socket = Path::new("/nonexistent/podswitch.sock");
    let (ok, _, stderr) = podswitch(&["--socket", &socket.to_string_lossy(), "ports"])?;
    ensure!(!ok, "succeeded without a daemon");
    ensure!(stderr.contains("not running"), "{stderr}");
    Ok(())
}
