//! `podswitch-bench`: the demo (a two-node pod lab with a summary) and,
//! later, the lab benchmark.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Testbed { command } => testbed::run(&command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podswitch-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
