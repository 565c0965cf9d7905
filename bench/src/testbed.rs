//! `podswitch-bench testbed up|down`: the demo's two-node lab, left
//! running for people to explore — ping between pods, run iperf3, read
//! `podswitch stats` — until they take it down.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podswitch_lab::Lab;
use podswitch_lab::cluster::{SwitchOptions, SwitchPair};
use podswitch_lab::netns::delete_namespaces;

use crate::demo::{SwitchArgs, sibling_binary};

/// Namespaces of the testbed start with this.
const PREFIX: &str = "pslab";
/// Where the testbed keeps its configs, sockets, logs and daemon PIDs.
const STATE_DIR: &str = "/run/podswitch-testbed";

/// `testbed` subcommands.
#[derive(clap::Subcommand)]
pub enum TestbedCommand {
    /// Build the lab and leave it running.
    Up(SwitchArgs),
    /// Stop the daemons and remove every namespace of the lab.
    Down,
}

/// Run a `testbed` subcommand.
pub fn run(command: &TestbedCommand) -> Result<()> {
    match command {
        TestbedCommand::Up(args) => up(args.options()?),
        TestbedCommand::Down => down(),
    }
}

fn pid_file() -> PathBuf {
    PathBuf::from(STATE_DIR).join("daemons.pid")
}

fn up(options: SwitchOptions) -> Result<()> {
    podswitch_lab::require_root()?;
    let binary = sibling_binary("podswitch")?;
    let mut lab = Lab::named(PREFIX)?;
    let mut pair = SwitchPair::build(&mut lab, &binary, STATE_DIR.as_ref(), &options)?;
    // Built: from here on nothing is cleaned up when this program ends.
    let pids: Vec<String> = pair
        .nodes
        .iter_mut()
        .filter_map(|n| n.detach())
        .map(|p| p.to_string())
        .collect();
    std::fs::write(pid_file(), pids.join("\n"))?;
    let prefix = lab.keep();
    println!("testbed up: namespaces {prefix}*, files in {STATE_DIR}");
    for node in &pair.nodes {
        println!(
            "  node {}: namespace {}, control socket {}",
            node.index,
            node.ns.name(),
            node.socket.display()
        );
    }
    for pod in pair.pods.iter().flatten() {
        println!("  pod {}: namespace {}", pod.ip, pod.ns.name());
    }
    let (a, c) = (&pair.pods[0][0], &pair.pods[1][0]);
    println!("\ntry:");
    println!("  ip netns exec {} ping -c 3 {}", a.ns.name(), c.ip);
    println!(
        "  target/release/podswitch --socket {} stats",
        pair.nodes[0].socket.display()
    );
    println!("  scripts/lab.sh down");
    Ok(())
}

fn down() -> Result<()> {
    podswitch_lab::require_root()?;
    if let Ok(text) = std::fs::read_to_string(pid_file()) {
        for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let pid = Pid::from_raw(pid);
            if kill(pid, Signal::SIGTERM).is_ok() {
                for _ in 0..100 {
                    if kill(pid, None).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
    }
    let removed = delete_namespaces(&format!("{PREFIX}-")).context("removing namespaces")?;
    let _ = std::fs::remove_dir_all(STATE_DIR);
    println!("testbed down: {removed} namespaces removed");
    Ok(())
}
