//! `podswitch-bench`: the demo (a two-node pod lab with a summary), the
//! testbed left running to explore, and the lab benchmark (podswitch side
//! by side with the kernel path, Open vSwitch and a bare veth pair).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
mod lab;
mod testbed;

/// podswitch's lab driver.
#[derive(Parser)]
#[command(name = "podswitch-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a two-node lab (podswitch on both nodes, two pods each), send
    /// traffic across it, print what happened, and tear it down.
    Demo(demo::DemoArgs),
    /// Leave that two-node lab running to explore, or take it down.
    Testbed {
        #[command(subcommand)]
        command: testbed::TestbedCommand,
    },
    /// Measure podswitch side by side with the kernel path (Flannel-style),
    /// Open vSwitch and a bare veth pair: TCP, packet rate, round trips
    /// and CPU; write JSON, markdown and plots (and, for a full run, the
    /// lab section of docs/benchmarks.md).
    Lab(lab::LabArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Testbed { command } => testbed::run(&command),
        Command::Lab(args) => lab::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podswitch-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
