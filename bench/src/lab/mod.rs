//! `podswitch-bench lab`: podswitch side by side with the kernel path,
//! Open vSwitch and a bare veth pair, in one invocation. Each contender's
//! two-node testbed is built in turn, the same traffic runs through it
//! (TCP, packet rate, round trips, idle), every figure is kept, and one
//! report comes out: JSON, markdown and SVG plots, also spliced into
//! `docs/benchmarks.md` for a full run.
//!
//! | file | its one job |
//! |---|---|
//! | `contenders.rs` | the contenders and building their testbeds |
//! | `measure.rs` | the measurements and their raw figures |
//! | `latency.rs` | round trips in an HdrHistogram: percentiles and curves |
//! | `stats.rs` | medians, ranges, ratios, counter deltas |
//! | `report.rs` | the report's data and its summary over runs |
//! | `markdown.rs` | the report as markdown, spliced into the docs |
//! | `plot.rs` | the SVG plots |
//! | `criterion.rs` | the criterion benchmarks' last per-frame figures |

mod contenders;
mod criterion;
mod latency;
mod markdown;
mod measure;
mod plot;
mod report;
mod stats;

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use podswitch_lab::cni::CniPlugin;
use podswitch_lab::host::{cpu_count, cpu_model, kernel_release, load_average};
use podswitch_lab::interrupt::{catch_interrupts, check_interrupted};

use crate::demo::sibling_binary;
use contenders::{ALL, Binaries, Contender, Kind, Placement, QUICK, Testbed, select};
use markdown::Plots;
use measure::Settings;
use plot::{BarRow, LatencyPanel};
use report::{ContenderResult, Report, RunFigures, Summary, set_tcp_ratios, utc_timestamp};
use stats::Spread;

/// Options of `podswitch-bench lab`.
#[derive(clap::Args)]
pub struct LabArgs {
    /// Seconds, not minutes: one short run of one contender of each kind
    /// (what CI runs); never touches the docs unless --docs is given.
    #[arg(long)]
    quick: bool,
    /// Where report.json, report.md and the plots go.
    #[arg(long, default_value = "target/lab")]
    out: PathBuf,
    /// Runs per figure [default: 3, or 1 with --quick].
    #[arg(long)]
    runs: Option<u32>,
    /// Only these contenders, comma-separated (see --list).
    #[arg(long)]
    only: Option<String>,
    /// Also write the report into DIR/benchmarks.md (between its lab
    /// markers) and DIR/img/ [default: docs, for a full run of every
    /// contender].
    #[arg(long, value_name = "DIR")]
    docs: Option<PathBuf>,
    /// Leave the docs alone.
    #[arg(long, conflicts_with = "docs")]
    no_docs: bool,
    /// List the contenders and exit.
    #[arg(long)]
    list: bool,
    /// podswitch's adaptive spin window (`spin_us`) for every podswitch
    /// contender of this invocation [default: the daemon's].
    #[arg(long, value_name = "MICROSECONDS")]
    spin_us: Option<u32>,
    /// podswitch's `overload_nice` (a worker's nice value while it is
    /// behind; 0 never changes it) for every podswitch contender of this
    /// invocation [default: the daemon's].
    #[arg(long, value_name = "NICE", allow_negative_numbers = true)]
    overload_nice: Option<i32>,
    /// podswitch's `sleep_on_any_cpu` (whether an adaptive worker lets
    /// go of its core while asleep) for every podswitch contender of this
    /// invocation [default: the daemon's].
    #[arg(long, value_name = "BOOL")]
    sleep_on_any_cpu: Option<bool>,
    /// Pin both nodes' podswitch workers to this CPU (a pinning choice to
    /// compare) [default: node 1's to CPU 0 beside the sender, node 2's to
    /// CPU 1 beside the receiver].
    #[arg(long, value_name = "CPU")]
    worker_cpu: Option<usize>,
    /// podswitch's `tunnel_offload` ("auto", "udp-segment" or "off": TAP
    /// pods' TCP to peers whole through the node's kernel, cut by the
    /// switch and sent a super-frame at a time through a UDP_SEGMENT
    /// socket, or cut by the switch and sent frame by frame through
    /// AF_XDP) for every podswitch contender [default: the daemon's].
    #[arg(long, value_name = "MODE", value_parser = ["auto", "udp-segment", "off"])]
    tunnel_offload: Option<String>,
    /// podswitch's `tunnel_receive` ("auto" or "afxdp": peers' TCP
    /// through the node's kernel, merged by GRO, into the tunnel port, or
    /// every tunnel packet through the uplink's AF_XDP socket) for every
    /// podswitch contender [default: the daemon's].
    #[arg(long, value_name = "MODE", value_parser = ["auto", "afxdp"])]
    tunnel_receive: Option<String>,
    /// podswitch's `xdp_mode` ("auto", "native" or "generic": where the
    /// uplink's and veth pods' XDP programs run) for every podswitch
    /// contender [default: "auto"].
    #[arg(long, value_name = "MODE", value_parser = ["auto", "native", "generic"])]
    xdp_mode: Option<String>,
}

/// The docs a full run updates, relative to the working directory.
const DOCS: &str = "docs";

/// Run `podswitch-bench lab`.
pub fn run(args: &LabArgs) -> Result<()> {
    if args.list {
        let width = ALL.iter().map(|c| c.key.len()).max().unwrap_or(0);
        for c in ALL {
            println!("{:<width$} {}", c.key, c.description());
        }
        return Ok(());
    }
    podswitch_lab::require_root()?;
    catch_interrupts()?;
    let started = Instant::now();
    let cni = sibling_binary("podswitch-cni")?;
    let binaries = Binaries {
        podswitch: sibling_binary("podswitch")?,
        cni: CniPlugin {
            path: vec![cni.parent().map(PathBuf::from).unwrap_or_default()],
            binary: cni,
        },
        spin_us: args.spin_us,
        overload_nice: args.overload_nice,
        sleep_on_any_cpu: args.sleep_on_any_cpu,
        worker_cpu: args.worker_cpu,
        tunnel_offload: args.tunnel_offload.clone(),
        tunnel_receive: args.tunnel_receive.clone(),
        xdp_mode: args.xdp_mode.clone(),
    };
    let all: Vec<&str> = ALL.iter().map(|c| c.key).collect();
    let contenders = select(args.only.as_deref(), if args.quick { &QUICK } else { &all })?;
    let settings = if args.quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let docs = match (
        &args.docs,
        args.no_docs || args.quick || args.only.is_some(),
    ) {
        (Some(dir), _) => Some(dir.clone()),
        (None, false) if Path::new(DOCS).join("benchmarks.md").is_file() => {
            Some(PathBuf::from(DOCS))
        }
        (None, false) => {
            eprintln!(
                "no {DOCS}/benchmarks.md here: the docs are left alone (run from the repository, \
                 or give --docs)"
            );
            None
        }
        (None, true) => None,
    };
    let date = utc_timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    );
    let load_average_before = load_average();
    eprintln!(
        "podswitch lab benchmark: {} contenders × {runs} run(s){}; namespaces {}-bl-*, removed as \
         each testbed is torn down",
        contenders.len(),
        if args.quick { ", quick" } else { "" },
        podswitch_lab::Lab::base(),
    );

    let mut results: Vec<ContenderResult> = contenders.iter().map(ContenderResult::new).collect();
    for run in 1..=runs {
        for (contender, result) in contenders.iter().zip(results.iter_mut()) {
            if result.skipped.is_some() {
                continue;
            }
            check_interrupted()?;
            eprintln!("run {run}/{runs} · {}", contender.name);
            let testbed = match Testbed::build(contender, &binaries) {
                Ok(testbed) => testbed,
                Err(e) => {
                    check_interrupted()?;
                    let why = format!("{e:#}");
                    eprintln!("  could not build the testbed: {why}");
                    if contender.kind == Kind::Ovs && run == 1 {
                        result.skipped = Some(why);
                    } else {
                        result.runs.push(RunFigures {
                            run,
                            errors: vec![format!("building the testbed: {why}")],
                            ..RunFigures::default()
                        });
                    }
                    continue;
                }
            };
            let mut figures = if contender.tcp_only {
                measure_tcp_only(&testbed, &settings, run)?
            } else {
                measure_all(&testbed, &settings, run)?
            };
            match testbed.uplink_tso() {
                Ok(tso) => figures.uplink_tso = tso,
                Err(e) => figures
                    .errors
                    .push(format!("reading node 1's uplink offloads: {e:#}")),
            }
            result.runs.push(figures);
        }
    }
    for result in &mut results {
        result.summary = Summary::of(&result.runs)?;
    }
    set_tcp_ratios(&mut results);

    let criterion = criterion::criterion_dir()
        .map(|dir| criterion::read_all(&dir))
        .transpose()?
        .unwrap_or_default();
    let report = Report {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date,
        kernel: kernel_release(),
        cpu_model: cpu_model(),
        cpus: cpu_count(),
        load_average_before,
        quick: args.quick,
        runs,
        wall_seconds: started.elapsed().as_secs_f64(),
        settings,
        contenders: results,
        criterion,
    };
    write_outputs(&report, &args.out, docs.as_deref())?;
    let failures = failures(&report, &contenders);
    anyhow::ensure!(
        failures == 0,
        "{failures} measurement(s) failed; the report in {} says which",
        args.out.display()
    );
    Ok(())
}

/// Every measurement on one testbed, in a fixed order; a measurement that
/// fails is recorded and the next one runs, unless the run was
/// interrupted.
fn measure_all(testbed: &Testbed, settings: &Settings, run: u32) -> Result<RunFigures> {
    let mut figures = RunFigures {
        run,
        ..RunFigures::default()
    };
    let mut errors = Vec::new();
    attempt(testbed, "idle", &mut errors, || {
        let idle = measure::idle(testbed, settings)?;
        let line = format!("{:.1} % of a core per node", 100.0 * idle.per_node_cores);
        figures.idle = Some(idle);
        Ok(line)
    })?;
    attempt(testbed, "round trips, no load", &mut errors, || {
        let l = measure::latency(testbed, settings, false)?;
        let line = latency_line(&l);
        figures.latency.push(l);
        Ok(line)
    })?;
    measure_tcp(testbed, settings, &mut figures, &mut errors)?;
    for frame in settings.frame_bytes {
        attempt(
            testbed,
            &format!("UDP, {frame}-byte frames"),
            &mut errors,
            || {
                let u = measure::udp(testbed, settings, frame)?;
                let line = format!(
                    "{:.0} kpps delivered of {:.0} offered ({:.1} % lost), {:.0} kpps to the app; \
                 cores: switch {:.2}, softirq {:.2}, machine {:.2}",
                    u.delivered_pps / 1e3,
                    u.offered_pps / 1e3,
                    u.lost_pct,
                    u.app_pps / 1e3,
                    u.cpu.switch,
                    u.cpu.kernel_softirq,
                    u.cpu.machine
                );
                figures.udp.push(u);
                Ok(line)
            },
        )?;
    }
    attempt(
        testbed,
        "UDP flood from a socket, 64-byte frames",
        &mut errors,
        || {
            let f = measure::udp_socket(testbed, settings)?;
            let line = f.outcome.to_string();
            figures.socket_flood = Some(f);
            Ok(line)
        },
    )?;
    for pause_us in settings.sparse_pauses_us {
        attempt(
            testbed,
            &format!("sparse round trips, {pause_us} µs apart"),
            &mut errors,
            || {
                let Some(run) = measure::sparse(testbed, settings, pause_us)? else {
                    return Ok("no switch processes".into());
                };
                let line = format!(
                    "{} round trips, switch {:.1} % of a core per node",
                    run.round_trips,
                    100.0 * run.per_node_cores
                );
                figures.sparse.push(run);
                Ok(line)
            },
        )?;
    }
    attempt(testbed, "round trips, loaded", &mut errors, || {
        let l = measure::latency(testbed, settings, true)?;
        let line = latency_line(&l);
        figures.latency.push(l);
        Ok(line)
    })?;
    figures.errors = errors;
    Ok(figures)
}

/// TCP alone, for the same-node contenders and those that differ from
/// another only in their underlay.
fn measure_tcp_only(testbed: &Testbed, settings: &Settings, run: u32) -> Result<RunFigures> {
    let mut figures = RunFigures {
        run,
        ..RunFigures::default()
    };
    let mut errors = Vec::new();
    measure_tcp(testbed, settings, &mut figures, &mut errors)?;
    figures.errors = errors;
    Ok(figures)
}

/// Every TCP test on `testbed`, into `figures`.
fn measure_tcp(
    testbed: &Testbed,
    settings: &Settings,
    figures: &mut RunFigures,
    errors: &mut Vec<String>,
) -> Result<()> {
    for streams in settings.tcp_streams {
        attempt(
            testbed,
            &format!("TCP, {streams} stream(s)"),
            errors,
            || {
                let t = measure::tcp(testbed, settings, streams)?;
                let line = format!(
                    "{:.2} Gbit/s, {} retransmits; cores: switch {:.2}, softirq {:.2}, machine {:.2}",
                    t.gbps, t.retransmits, t.cpu.switch, t.cpu.kernel_softirq, t.cpu.machine
                );
                figures.tcp.push(t);
                Ok(line)
            },
        )?;
    }
    Ok(())
}

/// Run one measurement `f`, printing its one-line result; a failure is
/// added to `errors` (with the end of the switches' logs), an interrupt
/// is returned.
fn attempt(
    testbed: &Testbed,
    what: &str,
    errors: &mut Vec<String>,
    f: impl FnOnce() -> Result<String>,
) -> Result<()> {
    check_interrupted()?;
    match f() {
        Ok(line) => eprintln!("  {what}: {line}"),
        Err(e) => {
            check_interrupted()?;
            eprintln!("  {what} FAILED: {e:#}");
            let logs = testbed.logs();
            let tail: Vec<&str> = logs.lines().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            errors.push(if tail.is_empty() {
                format!("{what}: {e:#}")
            } else {
                format!("{what}: {e:#} (switch logs end: {})", tail.join(" | "))
            });
        }
    }
    Ok(())
}

fn latency_line(l: &measure::LatencyRun) -> String {
    let p = &l.percentiles;
    format!(
        "p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs over {} round trips, {} lost",
        p.p50_us, p.p99_us, p.p999_us, p.max_us, p.samples, l.lost
    )
}

/// Failures that make the command fail: any but Open vSwitch's, which is
/// not ours to fix.
fn failures(report: &Report, contenders: &[Contender]) -> usize {
    report
        .contenders
        .iter()
        .zip(contenders)
        .filter(|(_, c)| c.kind != Kind::Ovs)
        .map(|(r, _)| r.runs.iter().map(|run| run.errors.len()).sum::<usize>())
        .sum()
}

/// Write the report to `out` (report.json, report.md, plots) and, with
/// `docs`, into `docs/benchmarks.md` and `docs/img/`.
fn write_outputs(report: &Report, out: &Path, docs: Option<&Path>) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    report.write_json(&out.join("lab-report.json"))?;
    write_plots(report, out)?;
    let section = markdown::section(report, &Plots { dir: "" });
    std::fs::write(
        out.join("report.md"),
        format!("# podswitch lab benchmark\n\n{section}"),
    )?;
    println!("{}", headline_only(&section));
    println!("report: {}", out.join("report.md").display());
    if let Some(docs) = docs {
        let img = docs.join("img");
        std::fs::create_dir_all(&img).with_context(|| format!("creating {}", img.display()))?;
        report.write_json(&img.join("lab-report.json"))?;
        write_plots(report, &img)?;
        let path = docs.join("benchmarks.md");
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        let section = markdown::section(report, &Plots { dir: "img/" });
        std::fs::write(&path, markdown::splice(&doc, &section))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("docs: {} and {}", path.display(), img.display());
    }
    Ok(())
}

/// The headline table of the section, for the terminal.
fn headline_only(section: &str) -> String {
    section
        .lines()
        .skip_while(|l| !l.starts_with("| contender"))
        .take_while(|l| l.starts_with('|'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// lab-throughput.svg, lab-tcp-same-underlay.svg, lab-same-node.svg,
/// lab-packet-rate.svg and lab-latency.svg in `dir`.
fn write_plots(report: &Report, dir: &Path) -> Result<()> {
    let measured = report.measured(Placement::AcrossNodes);
    // One bar per stream count, for each contender: `value` of it.
    let stream_bars = |contenders: &[&ContenderResult],
                       value: fn(&ContenderResult, u32) -> Option<Spread>|
     -> Vec<BarRow> {
        contenders
            .iter()
            .map(|c| BarRow {
                name: c.name,
                values: report
                    .settings
                    .tcp_streams
                    .iter()
                    .map(|&n| value(c, n))
                    .collect(),
            })
            .collect()
    };
    let tcp_bars = |contenders: &[&ContenderResult]| {
        stream_bars(contenders, |c, n| c.summary.tcp_of(n).map(|t| t.gbps))
    };
    let streams: Vec<String> = report
        .settings
        .tcp_streams
        .iter()
        .map(|&n| markdown::streams_label(n))
        .collect();
    plot::bar_chart(
        &dir.join("lab-throughput.svg"),
        "TCP pod to pod across nodes (iperf3)",
        "Gbit/s (bar: median; line: range over runs)",
        &streams.iter().map(String::as_str).collect::<Vec<_>>(),
        &tcp_bars(&measured),
    )?;
    if report.has_same_underlay_ratios() {
        // Each switch against the kernel on its own underlay model and
        // MTU (its name says which: MTU 1500 and wire-size unless it says
        // otherwise).
        let mut rows = stream_bars(&measured, |c, n| {
            c.gbps_to_same_underlay_kernel(n)
                .and_then(|r| Spread::of([r]))
        });
        rows.retain(|row| row.values.iter().any(Option::is_some));
        plot::bar_chart(
            &dir.join("lab-tcp-same-underlay.svg"),
            "TCP across nodes against the kernel on the same underlay model and MTU",
            "the kernel's Gbit/s = 1 (bar: ratio of the medians)",
            &streams.iter().map(String::as_str).collect::<Vec<_>>(),
            &rows,
        )?;
    }
    let same_node = report.measured(Placement::SameNode);
    if !same_node.is_empty() {
        plot::bar_chart(
            &dir.join("lab-same-node.svg"),
            "TCP pod to pod on one node (iperf3)",
            "Gbit/s (bar: median; line: range over runs)",
            &streams.iter().map(String::as_str).collect::<Vec<_>>(),
            &tcp_bars(&same_node),
        )?;
    }
    // Packet rate and round trips: the contenders that ran everything.
    let measured = report.fully_measured();
    let udp_rows: Vec<BarRow> = measured
        .iter()
        .map(|c| BarRow {
            name: c.name,
            values: report
                .settings
                .frame_bytes
                .iter()
                .map(|&f| c.summary.udp_of(f).map(|u| u.delivered_mpps.scaled(1e3)))
                .collect(),
        })
        .collect();
    let frames: Vec<String> = report
        .settings
        .frame_bytes
        .iter()
        .map(|f| format!("{f}-byte frames"))
        .collect();
    plot::bar_chart(
        &dir.join("lab-packet-rate.svg"),
        "UDP packets delivered pod to pod across nodes",
        "thousand packets per second (bar: median; line: range over runs)",
        &frames.iter().map(String::as_str).collect::<Vec<_>>(),
        &udp_rows,
    )?;
    let panel = |loaded: bool, title| LatencyPanel {
        title,
        curves: measured
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                c.summary
                    .latency_of(loaded)
                    .map(|l| (c.name, i, l.curve.as_slice()))
            })
            .collect(),
    };
    plot::latency_chart(
        &dir.join("lab-latency.svg"),
        "Request/response round trips pod to pod across nodes",
        &[
            panel(false, "no other traffic"),
            panel(true, "under background UDP load"),
        ],
    )
}
