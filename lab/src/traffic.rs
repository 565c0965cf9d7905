//! Traffic between lab pods with iperf3: servers stopped by PID on drop,
//! clients bounded in time, results read from iperf3's JSON.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::process::Process;

/// The port lab iperf3 servers listen on.
pub const IPERF_PORT: u16 = 5201;

/// What an iperf3 run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfResult {
    /// Received throughput, bits per second.
    pub bits_per_second: f64,
    /// TCP retransmissions (0 for UDP).
    pub retransmits: u64,
    /// UDP datagrams lost (0 for TCP).
    pub lost_packets: u64,
    /// UDP datagrams sent (0 for TCP).
    pub packets: u64,
}

impl IperfResult {
    /// Throughput in Gbit/s.
    pub fn gbps(&self) -> f64 {
        self.bits_per_second / 1e9
    }
}

/// Start an iperf3 server in `ns`, listening on `port`; stopped on drop.
pub fn iperf_server(ns: &Netns, port: u16) -> Result<Process> {
    let server = Process::spawn(
        ns.command("iperf3").args(["-s", "-p", &port.to_string()]),
        &format!("iperf3 server in {}", ns.name()),
    )?;
    // Give it a moment to bind before a client connects.
    std::thread::sleep(Duration::from_millis(300));
    Ok(server)
}

/// How an iperf3 client runs.
#[derive(Debug, Clone, Copy)]
pub struct IperfClient {
    /// Seconds of traffic.
    pub seconds: u32,
    /// Parallel streams.
    pub streams: u32,
    /// UDP at this rate (bits/s, 0 = unlimited) with this payload size,
    /// instead of TCP.
    pub udp: Option<(u64, u32)>,
    /// Server port.
    pub port: u16,
}

impl Default for IperfClient {
    fn default() -> IperfClient {
        IperfClient {
            seconds: 2,
            streams: 1,
            udp: None,
            port: IPERF_PORT,
        }
    }
}

impl IperfClient {
    /// Run the client in `ns` against `server`; fails if iperf3 fails or
    /// runs 20 s past its time.
    pub fn run(&self, ns: &Netns, server: Ipv4Addr) -> Result<IperfResult> {
        let mut args = self.args(server);
        args.push("-J".into());
        let limit = (self.seconds + 20).to_string();
        let mut full = vec![limit.as_str(), "iperf3"];
        full.extend(args.iter().map(String::as_str));
        let output = ns
            .command("timeout")
            .args(&full)
            .output()
            .context("running iperf3")?;
        let text = String::from_utf8_lossy(&output.stdout);
        let json: serde_json::Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "iperf3 gave no JSON (exit {}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
        if let Some(error) = json.get("error").and_then(|e| e.as_str()) {
            bail!("iperf3: {error}");
        }
        let end = &json["end"];
        Ok(if self.udp.is_some() {
            let sum = &end["sum"];
            IperfResult {
                bits_per_second: sum["bits_per_second"].as_f64().unwrap_or(0.0),
                retransmits: 0,
                lost_packets: sum["lost_packets"].as_u64().unwrap_or(0),
                packets: sum["packets"].as_u64().unwrap_or(0),
            }
        } else {
            IperfResult {
                bits_per_second: end["sum_received"]["bits_per_second"]
                    .as_f64()
                    .unwrap_or(0.0),
                retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
                lost_packets: 0,
                packets: 0,
            }
        })
    }

    /// Start the client in `ns` against `server` in the background,
    /// reporting every `interval` seconds as text into `log`; stop it with
    /// [`Process::signal_and_wait`] (SIGINT prints the summary).
    pub fn spawn(
        &self,
        ns: &Netns,
        server: Ipv4Addr,
        interval: u32,
        log: std::fs::File,
    ) -> Result<Process> {
        let mut args = self.args(server);
        args.extend(["-i".into(), interval.to_string(), "--forceflush".into()]);
        Process::spawn_logged(
            ns.command("iperf3").args(&args),
            &format!("iperf3 client in {}", ns.name()),
            log,
        )
    }

    /// The client's arguments, output format aside.
    fn args(&self, server: Ipv4Addr) -> Vec<String> {
        let mut args = vec![
            "-c".to_string(),
            server.to_string(),
            "-p".into(),
            self.port.to_string(),
            "-t".into(),
            self.seconds.to_string(),
            "-P".into(),
            self.streams.to_string(),
        ];
        if let Some((rate, size)) = self.udp {
            args.extend([
                "-u".into(),
                "-b".into(),
                rate.to_string(),
                "-l".into(),
                size.to_string(),
            ]);
        }
        args
    }
}
