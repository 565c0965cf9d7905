//! Traffic between lab pods with iperf3: servers stopped by PID on drop,
//! clients bounded in time, results read from iperf3's JSON.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::process::Process;
use crate::tools;

/// The port lab iperf3 servers listen on.
pub const IPERF_PORT: u16 = 5201;

/// What an iperf3 run measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfResult {
    /// Received throughput, bits per second.
    pub bits_per_second: f64,
    /// Sent throughput, bits per second (for UDP, what the receiver
    /// could not take was lost).
    pub sent_bits_per_second: f64,
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
        ns.command("iperf3")?.args(["-s", "-p", &port.to_string()]),
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
    /// TCP paced to this rate (bits/s, iperf3's `-b`), e.g. so that a
    /// capture keeps up; unlimited when `None`.
    pub tcp_rate: Option<u64>,
    /// Server port.
    pub port: u16,
}

impl Default for IperfClient {
    fn default() -> IperfClient {
        IperfClient {
            seconds: 2,
            streams: 1,
            udp: None,
            tcp_rate: None,
            port: IPERF_PORT,
        }
    }
}

impl IperfClient {
    /// Run the client in `ns` against `server`; fails if iperf3 fails or
    /// runs 20 s past its time.
    pub fn run(&self, ns: &Netns, server: impl Into<IpAddr>) -> Result<IperfResult> {
        Ok(self.run_json(ns, server.into(), &["-J"])?.0)
    }

    /// Run the client in `ns` against `server`, reporting every
    /// `interval` seconds (iperf3 takes 0.1 at the finest); with `reverse`
    /// the server sends and the client receives (`-R`), so the intervals
    /// count the bytes that arrived. Fails as [`IperfClient::run`] does.
    pub fn run_with_intervals(
        &self,
        ns: &Netns,
        server: impl Into<IpAddr>,
        interval: f64,
        reverse: bool,
    ) -> Result<IperfRun> {
        let interval = interval.to_string();
        let mut extra = vec!["-J", "-i", &interval];
        if reverse {
            extra.push("-R");
        }
        let (result, json) = self.run_json(ns, server.into(), &extra)?;
        let intervals = json["intervals"]
            .as_array()
            .map(|intervals| {
                intervals
                    .iter()
                    .map(|i| IperfInterval {
                        start: i["sum"]["start"].as_f64().unwrap_or(0.0),
                        end: i["sum"]["end"].as_f64().unwrap_or(0.0),
                        bytes: i["sum"]["bytes"].as_u64().unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(IperfRun { result, intervals })
    }

    /// Run the client with `extra` arguments (`-J` among them) and read
    /// its JSON: the summary and the whole document.
    fn run_json(
        &self,
        ns: &Netns,
        server: IpAddr,
        extra: &[&str],
    ) -> Result<(IperfResult, serde_json::Value)> {
        let mut args = self.args(server);
        args.extend(extra.iter().map(|a| a.to_string()));
        let limit = (self.seconds + 20).to_string();
        let mut full = vec![limit.as_str(), "iperf3"];
        full.extend(args.iter().map(String::as_str));
        // `timeout` runs iperf3: make sure that one is there too.
        tools::require("iperf3")?;
        let output = ns
            .command("timeout")?
            .args(&full)
            .output()
            .context("running iperf3")?;
        let text = String::from_utf8_lossy(&output.stdout);
        let json: serde_json::Value = serde_json::from_str(&text).with_context(|| {
            format!(
                "iperf3 gave no JSON ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )
        })?;
        if let Some(error) = json.get("error").and_then(|e| e.as_str()) {
            bail!("iperf3: {error}");
        }
        let end = &json["end"];
        let rate = |sum: &str| end[sum]["bits_per_second"].as_f64().unwrap_or(0.0);
        let result = if self.udp.is_some() {
            // "sum" is the sender's rate with the receiver's loss count;
            // newer iperf3s (3.12 here) also give the received rate
            // apart, and an older one's received rate is the sent one.
            let sum = &end["sum"];
            let sent = rate("sum");
            IperfResult {
                bits_per_second: end
                    .get("sum_received")
                    .map_or(sent, |_| rate("sum_received")),
                sent_bits_per_second: sent,
                retransmits: 0,
                lost_packets: sum["lost_packets"].as_u64().unwrap_or(0),
                packets: sum["packets"].as_u64().unwrap_or(0),
            }
        } else {
            IperfResult {
                bits_per_second: rate("sum_received"),
                sent_bits_per_second: rate("sum_sent"),
                retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
                lost_packets: 0,
                packets: 0,
            }
        };
        Ok((result, json))
    }

    /// Start the client in `ns` against `server` in the background,
    /// reporting every `interval` seconds as text into `log`; stop it with
    /// [`Process::signal_and_wait`] (SIGINT prints the summary).
    pub fn spawn(
        &self,
        ns: &Netns,
        server: impl Into<IpAddr>,
        interval: u32,
        log: std::fs::File,
    ) -> Result<Process> {
        let mut args = self.args(server.into());
        args.extend(["-i".into(), interval.to_string(), "--forceflush".into()]);
        Process::spawn_logged(
            ns.command("iperf3")?.args(&args),
            &format!("iperf3 client in {}", ns.name()),
            log,
        )
    }

    /// The client's arguments, output format aside.
    fn args(&self, server: IpAddr) -> Vec<String> {
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
        } else if let Some(rate) = self.tcp_rate {
            args.extend(["-b".into(), rate.to_string()]);
        }
        args
    }
}

/// One reporting interval of an iperf3 run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IperfInterval {
    /// Seconds from the start of the test to the interval's start.
    pub start: f64,
    /// Seconds from the start of the test to the interval's end.
    pub end: f64,
    /// Bytes the client sent (or, in reverse mode, received) in it.
    pub bytes: u64,
}

/// An iperf3 run with its interval records (see
/// [`IperfClient::run_with_intervals`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IperfRun {
    /// The summary.
    pub result: IperfResult,
    /// Every interval, in order.
    pub intervals: Vec<IperfInterval>,
}

/// A stretch of consecutive intervals that carried no bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Silence {
    /// Seconds from the start of the test to the first silent interval.
    pub start: f64,
    /// How long the silent intervals last together, in seconds.
    pub seconds: f64,
    /// How many intervals were silent.
    pub intervals: usize,
    /// Whether a later interval carried bytes again.
    pub resumed: bool,
}

impl IperfRun {
    /// The longest stretch of consecutive intervals without a byte (the
    /// first of equal ones), or `None` when every interval carried data:
    /// the outage the flow saw, to the intervals' resolution (the
    /// intervals where it began and ended carried some bytes and are not
    /// counted).
    pub fn longest_silence(&self) -> Option<Silence> {
        let mut longest: Option<Silence> = None;
        let mut i = 0;
        while i < self.intervals.len() {
            if self.intervals[i].bytes > 0 {
                i += 1;
                continue;
            }
            let first = i;
            while i < self.intervals.len() && self.intervals[i].bytes == 0 {
                i += 1;
            }
            let silence = Silence {
                start: self.intervals[first].start,
                seconds: self.intervals[i - 1].end - self.intervals[first].start,
                intervals: i - first,
                resumed: self.intervals[i..].iter().any(|n| n.bytes > 0),
            };
            if longest.is_none_or(|l| silence.intervals > l.intervals) {
                longest = Some(silence);
            }
        }
        longest
    }

    /// Seconds from the start of the test to the end of the last interval
    /// that carried bytes (0 if none did).
    pub fn last_data(&self) -> f64 {
        self.intervals
            .iter()
            .rev()
            .find(|i| i.bytes > 0)
            .map_or(0.0, |i| i.end)
    }

    /// Seconds from the start of the test to the end of the last interval.
    pub fn duration(&self) -> f64 {
        self.intervals.last().map_or(0.0, |i| i.end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u64]) -> IperfRun {
        IperfRun {
            result: IperfResult {
                bits_per_second: 0.0,
                sent_bits_per_second: 0.0,
                retransmits: 0,
                lost_packets: 0,
                packets: 0,
            },
            intervals: bytes
                .iter()
                .enumerate()
                .map(|(n, &bytes)| IperfInterval {
                    start: n as f64 * 0.1,
                    end: (n + 1) as f64 * 0.1,
                    bytes,
                })
                .collect(),
        }
    }

    #[test]
    fn the_longest_silence_and_whether_data_came_back() {
        assert_eq!(run(&[5, 5, 5]).longest_silence(), None);
        let gap = run(&[5, 0, 5, 0, 0, 0, 5, 5]).longest_silence().unwrap();
        assert_eq!(gap.intervals, 3);
        assert!((gap.start - 0.3).abs() < 1e-9 && (gap.seconds - 0.3).abs() < 1e-9);
        assert!(gap.resumed);
        let dead = run(&[5, 0, 0]);
        let gap = dead.longest_silence().unwrap();
        assert_eq!(gap.intervals, 2);
        assert!(!gap.resumed);
        assert!((dead.last_data() - 0.1).abs() < 1e-9);
        assert!((dead.duration() - 0.3).abs() < 1e-9);
    }
}
