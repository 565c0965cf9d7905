//! The soak: mixed traffic through two nodes for a bounded time (10
//! minutes unless `SOAK_SECONDS` says), with each daemon's resident memory,
//! open fds and buffer frames sampled every 10 s. Not part of the test
//! suite (it is `#[ignore]`d); run it with `scripts/soak.sh`. It fails if
//! memory or fds grow over the second half, if a frame goes missing, or if
//! the traffic stops.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use podswitch_lab::Lab;
use podswitch_lab::cluster::{Footprint, SwitchOptions, SwitchPair, ping_stats};
use podswitch_lab::traffic::{IPERF_PORT, IperfClient, iperf_server};

/// One sample of a daemon.
#[derive(Debug, Clone, Copy)]
struct Sample {
    seconds: u64,
    footprint: Footprint,
}

#[test]
#[ignore = "a 10-minute soak; run it with scripts/soak.sh"]
fn soak() -> Result<()> {
    let seconds: u32 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let mut lab = Lab::new("soak")?;
    let dir = lab.scratch_dir()?;
    let binary = Path::new(env!("CARGO_BIN_EXE_podswitch"));
    let SwitchPair { nodes, pods } =
        SwitchPair::build(&mut lab, binary, &dir, &SwitchOptions::default())?;
    let [[a, b], [c, d]] = &pods;
    let _tcp_server = iperf_server(&c.ns, IPERF_PORT)?;
    let _udp_server = iperf_server(&d.ns, IPERF_PORT + 1)?;
    let tcp_log = dir.join("soak-tcp.log");
    let udp_log = dir.join("soak-udp.log");
    // The flows outlast the sampling loop; they are stopped after it.
    let flow_seconds = seconds + 60;
    let tcp_flow = IperfClient {
        seconds: flow_seconds,
        ..IperfClient::default()
    };
    let udp_flow = IperfClient {
        udp: Some((100_000_000, 1000)),
        port: IPERF_PORT + 1,
        ..tcp_flow
    };
    let mut tcp = tcp_flow.spawn(&a.ns, c.ip, 10, std::fs::File::create(&tcp_log)?)?;
    let mut udp = udp_flow.spawn(&b.ns, d.ip, 10, std::fs::File::create(&udp_log)?)?;

    let start = Instant::now();
    let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    while start.elapsed() < Duration::from_secs(seconds.into()) {
        // Pings across the overlay, and same node, between samples.
        let across = ping_stats(&a.ns, d.ip, 10)?;
        let same = ping_stats(&b.ns, a.ip, 10)?;
        ensure!(
            across.received > 0 && same.received > 0,
            "pings stopped at {} s",
            start.elapsed().as_secs()
        );
        std::thread::sleep(Duration::from_secs(6));
        for (node, series) in nodes.iter().zip(&mut samples) {
            series.push(Sample {
                seconds: start.elapsed().as_secs(),
                footprint: node.footprint()?,
            });
            let f = series[series.len() - 1].footprint;
            ensure!(
                f.idle_frames + f.busy_frames == node.frame_count()?,
                "frames missing: {f:?}"
            );
        }
        ensure!(tcp.is_running() && udp.is_running(), "a flow ended early");
    }
    let _ = tcp.signal_and_wait(nix::sys::signal::Signal::SIGINT, Duration::from_secs(10));
    let _ = udp.signal_and_wait(nix::sys::signal::Signal::SIGINT, Duration::from_secs(10));
    println!("soak of {seconds} s: TCP pod→pod across nodes, UDP at 100 Mbit/s, pings");
    println!("node  seconds  resident KiB  open fds  idle frames  busy frames");
    for (i, series) in samples.iter().enumerate() {
        for s in series {
            let f = s.footprint;
            println!(
                "{:>4}  {:>7}  {:>12}  {:>8}  {:>11}  {:>11}",
                i + 1,
                s.seconds,
                f.resident_kib,
                f.open_fds,
                f.idle_frames,
                f.busy_frames
            );
        }
    }
    for (i, series) in samples.iter().enumerate() {
        ensure!(series.len() >= 4, "too few samples on node {}", i + 1);
        let mid = series[series.len() / 2].footprint;
        let last = series[series.len() - 1].footprint;
        ensure!(
            last.resident_kib <= mid.resident_kib + 4096,
            "node {}: resident memory grew from {} to {} KiB over the second half",
            i + 1,
            mid.resident_kib,
            last.resident_kib
        );
        ensure!(
            last.open_fds <= mid.open_fds,
            "node {}: open fds grew from {} to {}",
            i + 1,
            mid.open_fds,
            last.open_fds
        );
    }
    println!("\nTCP flow:\n{}", std::fs::read_to_string(&tcp_log)?);
    println!("UDP flow:\n{}", std::fs::read_to_string(&udp_log)?);
    Ok(())
}
