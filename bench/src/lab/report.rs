//! The report of one `podswitch-bench lab` invocation: every raw figure
//! of every run of every contender, where and how they were taken, and
//! the summary over runs (median and range) that the tables and plots
//! show. Written out as JSON.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::contenders::{Contender, KERNEL_BASELINE, KERNEL_SAME_NODE, Placement, Underlay, Via};
use super::criterion::CriterionFigure;
use super::latency::{CurvePoint, Percentiles, curve, histogram};
use super::measure::{
    Cpu, IdleRun, LatencyRun, Settings, SocketFloodRun, SparseRun, TcpRun, UdpRun,
};
use super::stats::{Spread, per_unit, ratio};

/// Everything one invocation measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The command line, as typed.
    pub command: String,
    /// When it started, UTC.
    pub date: String,
    /// `uname -r`.
    pub kernel: String,
    /// The CPU model.
    pub cpu_model: String,
    /// CPUs of the machine.
    pub cpus: usize,
    /// The 1-minute load average before the first test (other work on
    /// the machine disturbs the figures).
    pub load_average_before: f64,
    /// Whether this was `--quick`.
    pub quick: bool,
    /// Runs per figure.
    pub runs: u32,
    /// How long the whole invocation took, seconds.
    pub wall_seconds: f64,
    /// How long and how much each measurement ran.
    pub settings: Settings,
    /// Each contender's figures.
    pub contenders: Vec<ContenderResult>,
    /// criterion's per-frame figures, when `cargo bench` has run.
    pub criterion: Vec<CriterionFigure>,
}

/// One contender's figures.
#[derive(Debug, Serialize)]
pub struct ContenderResult {
    /// Its key.
    pub key: &'static str,
    /// Its name.
    pub name: &'static str,
    /// What its path is.
    pub description: String,
    /// Where its pods are: "across-nodes" or "same-node".
    pub placement: Placement,
    /// Its underlay: model ("whole" or "wire-size") and MTU.
    pub underlay: Underlay,
    /// Measured with TCP alone.
    pub tcp_only: bool,
    /// How the sender addressed the receiver.
    pub via: Via,
    /// Whether NetworkPolicy was in force.
    pub policy: bool,
    /// For a ClusterIP or policy contender, the key of the same path with
    /// the receiving pod addressed directly and no policy.
    pub plain_twin: Option<&'static str>,
    /// The key of the kernel contender on the same underlay model and
    /// MTU, which `tcp_ratios` hold it against.
    pub same_underlay_kernel: Option<&'static str>,
    /// Why it was not measured at all, if it was not.
    pub skipped: Option<String>,
    /// Each run, in order.
    pub runs: Vec<RunFigures>,
    /// Median and range over the runs.
    pub summary: Summary,
    /// Its TCP medians against the kernel's, per stream count.
    pub tcp_ratios: Vec<TcpRatios>,
}

impl ContenderResult {
    /// A contender about to be measured.
    pub fn new(contender: &Contender) -> ContenderResult {
        ContenderResult {
            key: contender.key,
            name: contender.name,
            description: contender.description(),
            placement: contender.placement,
            underlay: contender.underlay,
            tcp_only: contender.tcp_only,
            via: contender.via,
            policy: contender.policy,
            plain_twin: contender.plain_twin().map(|c| c.key),
            same_underlay_kernel: contender.same_underlay_kernel().map(|k| k.key),
            skipped: None,
            runs: Vec::new(),
            summary: Summary::default(),
            tcp_ratios: Vec::new(),
        }
    }

    /// Its Gbit/s over the same-underlay kernel's with `streams` streams.
    pub fn gbps_to_same_underlay_kernel(&self, streams: u32) -> Option<f64> {
        self.tcp_ratios
            .iter()
            .find(|r| r.streams == streams)?
            .gbps_to_same_underlay_kernel
    }

    /// What `ethtool -k` said of TSO on node 1's uplink in the last run
    /// that read it.
    pub fn uplink_tso(&self) -> Option<&str> {
        self.runs.iter().rev().find_map(|r| r.uplink_tso.as_deref())
    }
}

/// A contender's TCP median against the kernel's, with one stream count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TcpRatios {
    /// Parallel streams.
    pub streams: u32,
    /// Gbit/s over the kernel's on the same underlay model and MTU
    /// (higher is better).
    pub gbps_to_same_underlay_kernel: Option<f64>,
    /// Datapath cores per Gbit/s over that kernel's (lower is better).
    pub datapath_cores_per_gbps_to_same_underlay_kernel: Option<f64>,
    /// Gbit/s over the issue's baseline, `kernel-offloads-on` (MTU 1500,
    /// segments whole), whatever this contender's underlay.
    pub gbps_to_kernel_offloads_on: Option<f64>,
}

/// Fill every contender's `tcp_ratios` from the summaries: against the
/// kernel on its own underlay (when it has one and it was measured) and
/// against [`KERNEL_BASELINE`].
pub fn set_tcp_ratios(results: &mut [ContenderResult]) {
    let summary_of = |key: &str| find(results, key).map(|c| &c.summary);
    let all: Vec<Vec<TcpRatios>> = results
        .iter()
        .map(|c| {
            let same = c.same_underlay_kernel.and_then(summary_of);
            let base = summary_of(KERNEL_BASELINE);
            c.summary
                .tcp
                .iter()
                .map(|t| {
                    let kernel = same.and_then(|k| k.tcp_of(t.streams));
                    TcpRatios {
                        streams: t.streams,
                        gbps_to_same_underlay_kernel: ratio(
                            Some(t.gbps.median),
                            kernel.map(|k| k.gbps.median),
                        ),
                        datapath_cores_per_gbps_to_same_underlay_kernel: ratio(
                            t.datapath_cores_per_gbps,
                            kernel.and_then(|k| k.datapath_cores_per_gbps),
                        ),
                        gbps_to_kernel_offloads_on: ratio(
                            Some(t.gbps.median),
                            base.and_then(|b| b.tcp_gbps(t.streams)),
                        ),
                    }
                })
                .collect()
        })
        .collect();
    for (c, ratios) in results.iter_mut().zip(all) {
        c.tcp_ratios = ratios;
    }
}

/// One run of one contender.
#[derive(Debug, Default, Serialize)]
pub struct RunFigures {
    /// The run's number, from 1.
    pub run: u32,
    /// The switch with no traffic.
    pub idle: Option<IdleRun>,
    /// TCP, per stream count.
    pub tcp: Vec<TcpRun>,
    /// Packet rate, per frame size.
    pub udp: Vec<UdpRun>,
    /// The application's UDP flood.
    pub socket_flood: Option<SocketFloodRun>,
    /// Round trips, without and with background load.
    pub latency: Vec<LatencyRun>,
    /// TSO on node 1's uplink, as `ethtool -k` said it ("off [requested
    /// on]": veth turned it off beside node 2's XDP program); `None`
    /// without nodes.
    pub uplink_tso: Option<String>,
    /// The switch's CPU under sparse round trips, per pause.
    pub sparse: Vec<SparseRun>,
    /// What failed in this run.
    pub errors: Vec<String>,
}

/// A contender's figures over its runs.
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    /// Cores the switch processes use with no traffic, per node.
    pub idle_cores_per_node: Option<Spread>,
    /// Cores the rest of the machine used meanwhile (other work).
    pub idle_others_cores: Option<Spread>,
    /// TCP, per stream count.
    pub tcp: Vec<TcpSummary>,
    /// Packet rate, per frame size.
    pub udp: Vec<UdpSummary>,
    /// Datagrams lost in the application's UDP flood, %.
    pub socket_flood_lost_pct: Option<Spread>,
    /// Round trips, without and with background load.
    pub latency: Vec<LatencySummary>,
    /// The switch's CPU under sparse round trips, per pause.
    pub sparse: Vec<SparseSummary>,
}

/// The switch's CPU under sparse round trips over runs.
#[derive(Debug, Serialize)]
pub struct SparseSummary {
    /// Pause between an answer and the next request, microseconds.
    pub pause_us: u64,
    /// Cores per node.
    pub per_node_cores: Spread,
}

/// CPU over runs, in cores.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuSummary {
    /// The switch processes.
    pub switch: Spread,
    /// The datapath: switch, softirq and system time, each tick counted once.
    pub datapath: Spread,
    /// Kernel system time.
    pub kernel_system: Spread,
    /// Kernel softirq time.
    pub kernel_softirq: Spread,
    /// The whole machine.
    pub machine: Spread,
}

impl CpuSummary {
    fn of<'a>(cpus: impl Iterator<Item = &'a Cpu> + Clone) -> Option<CpuSummary> {
        Some(CpuSummary {
            switch: Spread::of(cpus.clone().map(|c| c.switch))?,
            datapath: Spread::of(cpus.clone().map(Cpu::datapath))?,
            kernel_system: Spread::of(cpus.clone().map(|c| c.kernel_system))?,
            kernel_softirq: Spread::of(cpus.clone().map(|c| c.kernel_softirq))?,
            machine: Spread::of(cpus.map(|c| c.machine))?,
        })
    }
}

/// TCP over runs.
#[derive(Debug, Serialize)]
pub struct TcpSummary {
    /// Parallel streams.
    pub streams: u32,
    /// Throughput.
    pub gbps: Spread,
    /// Retransmitted segments.
    pub retransmits: Spread,
    /// CPU.
    pub cpu: CpuSummary,
    /// Median machine cores per Gbit/s.
    pub machine_cores_per_gbps: Option<f64>,
    /// Median datapath cores per Gbit/s.
    pub datapath_cores_per_gbps: Option<f64>,
}

/// Packet rate over runs.
#[derive(Debug, Serialize)]
pub struct UdpSummary {
    /// Frame size, FCS included.
    pub frame_bytes: usize,
    /// Delivered to the receiving pod, millions per second.
    pub delivered_mpps: Spread,
    /// Received by the application in that pod, millions per second.
    pub app_mpps: Spread,
    /// Offered by the generator, millions per second.
    pub offered_mpps: Spread,
    /// Lost before the receiving pod, %.
    pub lost_pct: Spread,
    /// Dropped at the receiving socket, % of those delivered.
    pub socket_dropped_pct: Spread,
    /// CPU.
    pub cpu: CpuSummary,
    /// Median machine CPU per delivered packet, microseconds (cores per
    /// Mpps).
    pub machine_us_per_packet: Option<f64>,
    /// Median datapath CPU (switch, kernel softirq and system time) per
    /// delivered packet, microseconds.
    pub datapath_us_per_packet: Option<f64>,
}

/// Round trips over runs.
#[derive(Debug, Serialize)]
pub struct LatencySummary {
    /// Whether the background load ran.
    pub loaded: bool,
    /// Percentiles of every round trip of every run together.
    pub merged: Percentiles,
    /// The 99th percentile of each run.
    pub p99_us: Spread,
    /// The 99.9th percentile of each run.
    pub p999_us: Spread,
    /// Requests never answered, all runs.
    pub lost: u64,
    /// The background load's throughput.
    pub background_gbps: Option<Spread>,
    /// The merged percentile curve.
    pub curve: Vec<CurvePoint>,
}

impl Summary {
    /// Summarize `runs` (each must hold the same measurements in the
    /// same order; runs that failed part-way add what they have).
    pub fn of(runs: &[RunFigures]) -> Result<Summary> {
        let idle_cores_per_node =
            Spread::of(runs.iter().filter_map(|r| r.idle.map(|i| i.per_node_cores)));
        let idle_others_cores =
            Spread::of(runs.iter().filter_map(|r| r.idle.map(|i| i.others_cores)));
        let mut tcp = Vec::new();
        for streams in distinct(runs.iter().flat_map(|r| r.tcp.iter().map(|t| t.streams))) {
            let all: Vec<&TcpRun> = runs
                .iter()
                .flat_map(|r| r.tcp.iter().filter(|t| t.streams == streams))
                .collect();
            let (Some(gbps), Some(retransmits), Some(cpu)) = (
                Spread::of(all.iter().map(|t| t.gbps)),
                Spread::of(all.iter().map(|t| t.retransmits as f64)),
                CpuSummary::of(all.iter().map(|t| &t.cpu)),
            ) else {
                continue;
            };
            tcp.push(TcpSummary {
                streams,
                machine_cores_per_gbps: per_unit(cpu.machine.median, gbps.median),
                datapath_cores_per_gbps: per_unit(cpu.datapath.median, gbps.median),
                gbps,
                retransmits,
                cpu,
            });
        }
        let mut udp = Vec::new();
        for frame_bytes in distinct(
            runs.iter()
                .flat_map(|r| r.udp.iter().map(|u| u.frame_bytes)),
        ) {
            let all: Vec<&UdpRun> = runs
                .iter()
                .flat_map(|r| r.udp.iter().filter(|u| u.frame_bytes == frame_bytes))
                .collect();
            let (Some(delivered), Some(app), Some(offered), Some(lost), Some(socket), Some(cpu)) = (
                Spread::of(all.iter().map(|u| u.delivered_pps / 1e6)),
                Spread::of(all.iter().map(|u| u.app_pps / 1e6)),
                Spread::of(all.iter().map(|u| u.offered_pps / 1e6)),
                Spread::of(all.iter().map(|u| u.lost_pct)),
                Spread::of(all.iter().map(|u| u.socket_dropped_pct)),
                CpuSummary::of(all.iter().map(|u| &u.cpu)),
            ) else {
                continue;
            };
            udp.push(UdpSummary {
                frame_bytes,
                machine_us_per_packet: per_unit(cpu.machine.median, delivered.median),
                datapath_us_per_packet: per_unit(cpu.datapath.median, delivered.median),
                delivered_mpps: delivered,
                app_mpps: app,
                offered_mpps: offered,
                lost_pct: lost,
                socket_dropped_pct: socket,
                cpu,
            });
        }
        let mut latency = Vec::new();
        for loaded in [false, true] {
            let all: Vec<&LatencyRun> = runs
                .iter()
                .flat_map(|r| r.latency.iter().filter(|l| l.loaded == loaded))
                .collect();
            let (Some(p99_us), Some(p999_us)) = (
                Spread::of(all.iter().map(|l| l.percentiles.p99_us)),
                Spread::of(all.iter().map(|l| l.percentiles.p999_us)),
            ) else {
                continue;
            };
            let mut merged = histogram()?;
            for h in all.iter().filter_map(|l| l.histogram.as_ref()) {
                merged.add(h).context("merging round-trip histograms")?;
            }
            latency.push(LatencySummary {
                loaded,
                merged: Percentiles::of(&merged),
                p99_us,
                p999_us,
                lost: all.iter().map(|l| l.lost).sum(),
                background_gbps: Spread::of(
                    all.iter().filter_map(|l| l.background.map(|b| b.gbps)),
                ),
                curve: curve(&merged),
            });
        }
        let sparse = distinct(
            runs.iter()
                .flat_map(|r| r.sparse.iter().map(|s| s.pause_us)),
        )
        .into_iter()
        .filter_map(|pause_us| {
            let cores = runs
                .iter()
                .flat_map(|r| r.sparse.iter().filter(|s| s.pause_us == pause_us))
                .map(|s| s.per_node_cores);
            Some(SparseSummary {
                pause_us,
                per_node_cores: Spread::of(cores)?,
            })
        })
        .collect();
        let socket_flood_lost_pct = Spread::of(
            runs.iter()
                .filter_map(|r| r.socket_flood.as_ref())
                .map(|f| f.lost_pct),
        );
        Ok(Summary {
            idle_cores_per_node,
            idle_others_cores,
            tcp,
            udp,
            socket_flood_lost_pct,
            latency,
            sparse,
        })
    }

    /// Median TCP throughput with `streams` streams.
    pub fn tcp_gbps(&self, streams: u32) -> Option<f64> {
        self.tcp_of(streams).map(|t| t.gbps.median)
    }

    /// The TCP summary with `streams` streams.
    pub fn tcp_of(&self, streams: u32) -> Option<&TcpSummary> {
        self.tcp.iter().find(|t| t.streams == streams)
    }

    /// The packet-rate summary for `frame_bytes`-byte frames.
    pub fn udp_of(&self, frame_bytes: usize) -> Option<&UdpSummary> {
        self.udp.iter().find(|u| u.frame_bytes == frame_bytes)
    }

    /// The switch's cores per node under round trips `pause_us` apart.
    pub fn sparse_cores(&self, pause_us: u64) -> Option<f64> {
        self.sparse
            .iter()
            .find(|s| s.pause_us == pause_us)
            .map(|s| s.per_node_cores.median)
    }

    /// The latency summary without (`false`) or with background load.
    pub fn latency_of(&self, loaded: bool) -> Option<&LatencySummary> {
        self.latency.iter().find(|l| l.loaded == loaded)
    }
}

/// The measured contender `key` among `results`.
fn find<'a>(results: &'a [ContenderResult], key: &str) -> Option<&'a ContenderResult> {
    results.iter().find(|c| c.key == key && c.skipped.is_none())
}

/// The distinct values of `values`, in first-seen order.
fn distinct<T: PartialEq>(values: impl Iterator<Item = T>) -> Vec<T> {
    let mut seen = Vec::new();
    for v in values {
        if !seen.contains(&v) {
            seen.push(v);
        }
    }
    seen
}

impl Report {
    /// The kernel baseline's figures, when it was measured.
    pub fn baseline(&self) -> Option<&Summary> {
        self.contender(KERNEL_BASELINE).map(|c| &c.summary)
    }

    /// The same-node kernel baseline's figures, when it was measured.
    pub fn same_node_baseline(&self) -> Option<&Summary> {
        self.contender(KERNEL_SAME_NODE).map(|c| &c.summary)
    }

    /// The measured contenders placed `placement` that address the
    /// receiving pod directly, in order.
    pub fn measured(&self, placement: Placement) -> Vec<&ContenderResult> {
        self.contenders
            .iter()
            .filter(|c| {
                c.skipped.is_none()
                    && c.placement == placement
                    && c.via == Via::PodAddress
                    && !c.policy
            })
            .collect()
    }

    /// The measured contenders with NetworkPolicy in force, in order.
    pub fn with_policy(&self) -> Vec<&ContenderResult> {
        self.contenders
            .iter()
            .filter(|c| c.skipped.is_none() && c.policy)
            .collect()
    }

    /// The measured contenders that reach the receiving pod through a
    /// ClusterIP, in order.
    pub fn through_cluster_ip(&self) -> Vec<&ContenderResult> {
        self.contenders
            .iter()
            .filter(|c| c.skipped.is_none() && c.via != Via::PodAddress)
            .collect()
    }

    /// The measured contenders across nodes that ran every measurement,
    /// not TCP alone, in order.
    pub fn fully_measured(&self) -> Vec<&ContenderResult> {
        self.measured(Placement::AcrossNodes)
            .into_iter()
            .filter(|c| !c.tcp_only)
            .collect()
    }

    /// Whether any contender has a TCP ratio to the kernel on its own
    /// underlay (its kernel was measured too).
    pub fn has_same_underlay_ratios(&self) -> bool {
        self.contenders.iter().any(|c| {
            c.tcp_ratios
                .iter()
                .any(|r| r.gbps_to_same_underlay_kernel.is_some())
        })
    }

    /// The measured contender `key`, if there is one.
    pub fn contender(&self, key: &str) -> Option<&ContenderResult> {
        find(&self.contenders, key)
    }

    /// Write the report as pretty JSON to `path`.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::contenders::select;
    use crate::lab::latency::record;
    use crate::lab::measure::Background;
    use podswitch_lab::flood::{SocketFloodOutcome, SocketFloodResult};

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc_timestamp(1_795_288_500), "2026-11-21 19:15 UTC");
    }

    fn cpu(machine: f64) -> Cpu {
        Cpu {
            switch: 0.5,
            switch_system: 0.05,
            kernel_system: 0.15,
            kernel_softirq: 0.4,
            machine,
        }
    }

    fn run(n: u32, gbps: f64, pps: f64, rtt_us: u64) -> RunFigures {
        let rtts: Vec<u64> = (0..100).map(|i| (rtt_us + i) * 1000).collect();
        let latency = |loaded| LatencyRun {
            loaded,
            percentiles: Percentiles::of(&record(&rtts).unwrap()),
            lost: 1,
            background: loaded.then_some(Background {
                gbps: 0.5,
                lost_pct: 0.0,
            }),
            cpu: cpu(1.0),
            counters: None,
            histogram: Some(record(&rtts).unwrap()),
        };
        RunFigures {
            run: n,
            idle: Some(IdleRun {
                switch_cores: 0.02,
                per_node_cores: 0.01,
                others_cores: 0.1,
            }),
            tcp: vec![TcpRun {
                streams: 1,
                gbps,
                retransmits: 3,
                cpu: cpu(2.0),
                counters: None,
            }],
            udp: vec![UdpRun {
                frame_bytes: 64,
                seconds: 1.0,
                offered_pps: 2.0 * pps,
                refused: 0,
                delivered_pps: pps,
                app_pps: pps,
                lost_pct: 50.0,
                socket_dropped_pct: 0.0,
                cpu: cpu(2.0),
                counters: None,
            }],
            socket_flood: Some(SocketFloodRun {
                outcome: SocketFloodOutcome {
                    sent: SocketFloodResult {
                        sent: 1000,
                        refused: 0,
                    },
                    delivered: 990 + u64::from(n),
                    app: 990,
                },
                lost_pct: 1.0 - 0.1 * f64::from(n),
                counters: None,
            }),
            latency: vec![latency(false), latency(true)],
            uplink_tso: None,
            sparse: vec![SparseRun {
                pause_us: 1000,
                round_trips: 10,
                per_node_cores: 0.1 * f64::from(n),
            }],
            errors: Vec::new(),
        }
    }

    #[test]
    fn a_socket_flood_is_reported_flat() {
        let flood = run(1, 2.0, 400_000.0, 50).socket_flood.unwrap();
        assert_eq!(
            serde_json::to_string(&flood).unwrap(),
            r#"{"sent":1000,"refused":0,"delivered":991,"app":990,"lost_pct":0.9,"counters":null}"#
        );
    }

    #[test]
    fn summarizes_runs() {
        let runs = [
            run(1, 2.0, 400_000.0, 50),
            run(2, 3.0, 500_000.0, 60),
            run(3, 4.0, 600_000.0, 70),
        ];
        let s = Summary::of(&runs).unwrap();
        assert_eq!(s.idle_cores_per_node.unwrap().median, 0.01);
        assert_eq!(s.idle_others_cores.unwrap().median, 0.1);
        let tcp = s.tcp_of(1).unwrap();
        assert_eq!(
            (tcp.gbps.median, tcp.gbps.min, tcp.gbps.max),
            (3.0, 2.0, 4.0)
        );
        assert_eq!(tcp.machine_cores_per_gbps, Some(2.0 / 3.0));
        assert_eq!(s.tcp_gbps(4), None);
        let udp = s.udp_of(64).unwrap();
        assert_eq!(udp.delivered_mpps.median, 0.5);
        // 2 cores for 0.5 Mpps: 4 µs of CPU per packet; the datapath
        // (0.5 + 0.4 + 0.1 cores) 2 µs.
        assert_eq!(udp.machine_us_per_packet, Some(4.0));
        assert_eq!(udp.datapath_us_per_packet, Some(2.0));
        let flood = s.socket_flood_lost_pct.unwrap();
        assert_eq!((flood.min, flood.median, flood.max), (0.7, 0.8, 0.9));
        let lat = s.latency_of(false).unwrap();
        assert_eq!(lat.merged.samples, 300);
        assert_eq!(lat.lost, 3);
        assert!(lat.background_gbps.is_none());
        assert_eq!(
            s.latency_of(true).unwrap().background_gbps.unwrap().median,
            0.5
        );
        assert!(!lat.curve.is_empty());
        assert_eq!(s.sparse_cores(1000), Some(0.2));
        assert_eq!(s.sparse_cores(10), None);
        // Nothing measured, nothing summarized.
        let empty = Summary::of(&[]).unwrap();
        assert!(empty.tcp.is_empty() && empty.udp.is_empty() && empty.latency.is_empty());
        assert!(empty.sparse.is_empty());
    }

    #[test]
    fn ratios_to_the_kernel_on_the_same_underlay() {
        let keys = "podswitch-vxlan-tap-adaptive-jumbo-whole, kernel-offloads-on-jumbo, \
                    kernel-offloads-on, podswitch-vxlan-tap-adaptive, veth";
        let contenders = select(Some(keys), &[]).unwrap();
        let mut results: Vec<ContenderResult> =
            contenders.iter().map(ContenderResult::new).collect();
        for (r, gbps) in results.iter_mut().zip([8.0, 10.0, 16.0, 4.0, 5.0]) {
            r.runs.push(run(1, gbps, 100_000.0, 50));
            r.summary = Summary::of(&r.runs).unwrap();
        }
        set_tcp_ratios(&mut results);
        let jumbo = results[0].tcp_ratios[0];
        assert_eq!(
            results[0].same_underlay_kernel,
            Some("kernel-offloads-on-jumbo")
        );
        assert_eq!(jumbo.streams, 1);
        assert_eq!(jumbo.gbps_to_same_underlay_kernel, Some(0.8));
        assert_eq!(jumbo.gbps_to_kernel_offloads_on, Some(0.5));
        // The same datapath cores (1.0) for 8 Gbit/s against 10.
        let cores = jumbo
            .datapath_cores_per_gbps_to_same_underlay_kernel
            .unwrap();
        assert!((cores - 1.25).abs() < 1e-9, "{cores}");
        // TAP pods at MTU 1500 on the wire-size underlay: that kernel was
        // not measured, the issue's baseline was.
        let tap = results[3].tcp_ratios[0];
        assert_eq!(results[3].same_underlay_kernel, Some("kernel-wire-frames"));
        assert_eq!(tap.gbps_to_same_underlay_kernel, None);
        assert_eq!(tap.datapath_cores_per_gbps_to_same_underlay_kernel, None);
        assert_eq!(tap.gbps_to_kernel_offloads_on, Some(0.25));
        // The kernels and the bare veth have no same-underlay kernel.
        for r in &results[1..3] {
            assert_eq!(r.same_underlay_kernel, None);
        }
        assert_eq!(results[4].tcp_ratios[0].gbps_to_same_underlay_kernel, None);
        // A skipped kernel gives no ratio.
        results[1].skipped = Some("could not be set up".into());
        set_tcp_ratios(&mut results);
        assert_eq!(results[0].tcp_ratios[0].gbps_to_same_underlay_kernel, None);
        assert_eq!(
            results[0].tcp_ratios[0].gbps_to_kernel_offloads_on,
            Some(0.5)
        );
    }
}
