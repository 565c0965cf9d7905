//! The measurements, each on a built [`Testbed`] from its sending pod
//! (node 1, CPU 0) to its receiving pod (node 2, CPU 1): TCP throughput
//! with iperf3, UDP packet rate with the lab's AF_PACKET flood and a
//! counting sink, request/response round trips with and without
//! background traffic, and the switch's CPU when idle. Each records the
//! CPU the switch processes, the kernel and the whole machine spent, and
//! for podswitch what its counters saw.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use podswitch_control::service::ServiceProtocol;
use podswitch_lab::cluster::Pod;
use podswitch_lab::cpu::CpuMeter;
use podswitch_lab::flood::{
    Flood, FloodEnd, SocketFloodOutcome, UDP_HEADERS, UdpFlow, socket_flood, udp_frame,
};
use podswitch_lab::host::{MachineMeter, on_cpu, process_system_seconds};
use podswitch_lab::parse_mac;
use podswitch_lab::ping_pong::{EchoServer, PingPong};
use podswitch_lab::traffic::{IPERF_PORT, IperfClient, iperf_server};
use podswitch_lab::udp_sink::{LinkCounters, UdpSink};
use serde::Serialize;
use serde_json::Value;

use super::contenders::Testbed;
use super::latency::{Percentiles, record};
use super::stats::counter_delta;

/// The CPU the sending pod, node 1 and its switch use.
pub const SENDER_CPU: usize = 0;
/// The CPU the receiving pod, node 2 and its switch use.
pub const RECEIVER_CPU: usize = 1;
/// UDP port of the packet-rate sink.
const SINK_PORT: u16 = 9000;
/// UDP port the flood sends from.
const FLOOD_PORT: u16 = 40000;
/// UDP port of the echo server.
const ECHO_PORT: u16 = 7007;
/// iperf3 port of the background load.
const BACKGROUND_PORT: u16 = IPERF_PORT + 1;
/// Every port the measurements send to, with its protocol: what a
/// Service in front of the receiving pod must carry (iperf3's UDP load
/// keeps a TCP control connection on its port).
pub const SERVICE_PORTS: [(ServiceProtocol, u16); 5] = [
    (ServiceProtocol::Tcp, IPERF_PORT),
    (ServiceProtocol::Udp, SINK_PORT),
    (ServiceProtocol::Udp, ECHO_PORT),
    (ServiceProtocol::Tcp, BACKGROUND_PORT),
    (ServiceProtocol::Udp, BACKGROUND_PORT),
];
/// Bytes of each background datagram.
const BACKGROUND_DATAGRAM: u32 = 1400;
/// Bytes of the frame check sequence, which frame sizes include (as
/// RFC 2544 counts them) but no socket sends.
const FCS: usize = 4;
/// Counters that are levels, not counts: left out of counter deltas.
const GAUGES: [&str; 2] = ["frames", "rings"];

/// How long and how much each measurement runs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Settings {
    /// Seconds of each iperf3 TCP run.
    pub tcp_seconds: u32,
    /// Parallel TCP streams of each TCP test.
    pub tcp_streams: [u32; 2],
    /// Seconds of each flood.
    pub udp_seconds: f64,
    /// Ethernet frame sizes of the packet-rate tests, FCS included.
    pub frame_bytes: [usize; 2],
    /// Seconds the idle switch is watched.
    pub idle_seconds: f64,
    /// Round trips per latency test, at most.
    pub rtt_count: u64,
    /// Seconds per latency test, at most.
    pub rtt_seconds: f64,
    /// Pause between an answer and the next request, microseconds.
    pub rtt_pause_us: u64,
    /// A request unanswered for this long is lost, milliseconds.
    pub rtt_timeout_ms: u64,
    /// The background load under which latency is measured again: iperf3
    /// UDP, 1400-byte datagrams, at this many bits per second, between the
    /// same pods.
    pub background_bps: u64,
    /// Sparse traffic: the pauses between one request's answer and the
    /// next, microseconds, under which the switch's CPU is measured.
    pub sparse_pauses_us: [u64; 2],
    /// Seconds of each sparse exchange.
    pub sparse_seconds: f64,
    /// Datagrams of the application's flood (64-byte frames from a UDP
    /// socket, blocking when the path pushes back).
    pub socket_flood_datagrams: u64,
}

impl Settings {
    /// The full run's settings.
    pub fn full() -> Settings {
        Settings {
            tcp_seconds: 3,
            tcp_streams: [1, 4],
            udp_seconds: 3.0,
            frame_bytes: [64, 1400],
            idle_seconds: 2.0,
            rtt_count: 10_000,
            rtt_seconds: 3.0,
            rtt_pause_us: 100,
            rtt_timeout_ms: 100,
            background_bps: 500_000_000,
            sparse_pauses_us: [1_000, 10_000],
            sparse_seconds: 2.0,
            socket_flood_datagrams: 300_000,
        }
    }

    /// `--quick`: every measurement, briefly.
    pub fn quick() -> Settings {
        Settings {
            tcp_seconds: 1,
            udp_seconds: 1.0,
            idle_seconds: 0.5,
            rtt_count: 300,
            rtt_seconds: 0.5,
            sparse_seconds: 0.5,
            socket_flood_datagrams: 50_000,
            ..Settings::full()
        }
    }
}

/// CPU used during a measurement, in cores (1.0 = one CPU all the time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Cpu {
    /// The switch processes (podswitch daemons, ovs-vswitchd), user and
    /// system time; 0 for the kernel paths.
    pub switch: f64,
    /// The switch processes' system time alone (also inside the
    /// kernel's system and softirq time).
    pub switch_system: f64,
    /// The kernel's system time, all CPUs (includes the switch's
    /// syscalls).
    pub kernel_system: f64,
    /// The kernel's softirq time, all CPUs: where the kernel path forwards.
    pub kernel_softirq: f64,
    /// Everything the machine did: switch, kernel, the traffic's own
    /// senders and receivers, and anything else running.
    pub machine: f64,
}

impl Cpu {
    /// The datapath's CPU, each tick counted once: the switch processes'
    /// user time, and the kernel's system and softirq time (the switch's
    /// own system time is in there: with tick-based accounting a tick
    /// spent in the kernel is both the process's system time and the
    /// machine's system or softirq time).
    pub fn datapath(&self) -> f64 {
        (self.switch - self.switch_system).max(0.0) + self.kernel_system + self.kernel_softirq
    }
}

/// Measures [`Cpu`] over an interval.
struct Meter {
    switch: CpuMeter,
    machine: MachineMeter,
    pids: Vec<u32>,
    switch_system: f64,
    started: Instant,
}

impl Meter {
    fn start(testbed: &Testbed) -> Result<Meter> {
        let pids = testbed.switch_pids();
        Ok(Meter {
            switch: CpuMeter::start(&pids)?,
            machine: MachineMeter::start()?,
            switch_system: system_seconds(&pids)?,
            pids,
            started: Instant::now(),
        })
    }

    fn stop(&self) -> Result<Cpu> {
        let machine = self.machine.stop()?;
        let used = self.switch.stop()?;
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        Ok(Cpu {
            switch: used.processes,
            switch_system: (system_seconds(&self.pids)? - self.switch_system) / elapsed,
            kernel_system: used.kernel_system,
            kernel_softirq: used.kernel_softirq,
            machine,
        })
    }
}

/// System CPU seconds of `pids` so far, together.
fn system_seconds(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&pid| process_system_seconds(pid)).sum()
}

/// The switch's CPU with no traffic.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct IdleRun {
    /// Cores the switch processes used, both nodes together.
    pub switch_cores: f64,
    /// Per node.
    pub per_node_cores: f64,
    /// Cores the rest of the machine kept busy meanwhile, with no lab
    /// traffic: other work on the machine, which disturbs the figures.
    pub others_cores: f64,
}

/// The switch's CPU while requests come one at a time with a pause after
/// each answer: what adaptive polling's spin window costs when traffic is
/// sparse.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SparseRun {
    /// Pause between an answer and the next request, microseconds.
    pub pause_us: u64,
    /// Round trips made.
    pub round_trips: u64,
    /// Cores the switch processes used, per node.
    pub per_node_cores: f64,
}

/// One TCP run.
#[derive(Debug, Clone, Serialize)]
pub struct TcpRun {
    /// Parallel streams.
    pub streams: u32,
    /// Received throughput.
    pub gbps: f64,
    /// Retransmitted segments.
    pub retransmits: u64,
    /// CPU meanwhile.
    pub cpu: Cpu,
    /// What podswitch's counters saw (changes only).
    pub counters: Option<Value>,
}

/// One packet-rate run.
#[derive(Debug, Clone, Serialize)]
pub struct UdpRun {
    /// Ethernet frame size, FCS included.
    pub frame_bytes: usize,
    /// Seconds the flood ran.
    pub seconds: f64,
    /// Frames per second the generator offered (accepted and refused).
    pub offered_pps: f64,
    /// Frames the sending pod's interface refused outright (its peer's
    /// queue was full): part of the loss.
    pub refused: u64,
    /// Frames per second that reached the receiving pod (its interface
    /// counted them): what the path delivered.
    pub delivered_pps: f64,
    /// Datagrams per second the receiving pod's socket handed the
    /// application.
    pub app_pps: f64,
    /// Offered frames that never reached the receiving pod, %.
    pub lost_pct: f64,
    /// Frames that reached the pod but not the application (its socket's
    /// buffer was full), % of those delivered.
    pub socket_dropped_pct: f64,
    /// CPU meanwhile.
    pub cpu: Cpu,
    /// What podswitch's counters saw (changes only).
    pub counters: Option<Value>,
}

/// One flood from an application's UDP socket (64-byte frames).
#[derive(Debug, Clone, Serialize)]
pub struct SocketFloodRun {
    /// What was sent, delivered and read (its fields, in the report).
    #[serde(flatten)]
    pub outcome: SocketFloodOutcome,
    /// Sent and never delivered, % ([`SocketFloodOutcome::lost_pct`],
    /// kept in the report).
    pub lost_pct: f64,
    /// What podswitch's counters saw (changes only): where any loss was.
    pub counters: Option<Value>,
}

/// The background load of a loaded latency run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Background {
    /// Throughput the receiving pod got (iperf3's).
    pub gbps: f64,
    /// Its datagrams lost, %.
    pub lost_pct: f64,
}

/// One latency run.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRun {
    /// Whether the background load ran meanwhile.
    pub loaded: bool,
    /// Round-trip percentiles.
    pub percentiles: Percentiles,
    /// Requests never answered.
    pub lost: u64,
    /// The background load, when there was one.
    pub background: Option<Background>,
    /// CPU meanwhile.
    pub cpu: Cpu,
    /// What podswitch's counters saw (changes only): whether its workers
    /// slept between requests, for one.
    pub counters: Option<Value>,
    /// Every round trip, for merging runs (not written out).
    #[serde(skip)]
    pub histogram: Option<Histogram<u64>>,
}

/// Run `f` and return what podswitch's counters saw meanwhile.
fn counted<R>(testbed: &Testbed, f: impl FnOnce() -> Result<R>) -> Result<(R, Option<Value>)> {
    let before = testbed.switch_counters()?;
    let result = f()?;
    let after = testbed.switch_counters()?;
    let delta = match (before, after) {
        (Some(b), Some(a)) => counter_delta(&b, &a, &GAUGES),
        _ => None,
    };
    Ok((result, delta))
}

/// Watch the switch for `settings.idle_seconds` with no traffic.
pub fn idle(testbed: &Testbed, settings: &Settings) -> Result<IdleRun> {
    // Let the last test's traffic drain and adaptive workers fall asleep.
    std::thread::sleep(Duration::from_millis(500));
    let meter = Meter::start(testbed)?;
    std::thread::sleep(Duration::from_secs_f64(settings.idle_seconds));
    let cpu = meter.stop()?;
    let nodes = testbed.switch_pids().len().max(1) as f64;
    Ok(IdleRun {
        switch_cores: cpu.switch,
        per_node_cores: cpu.switch / nodes,
        others_cores: (cpu.machine - cpu.switch).max(0.0),
    })
}

/// Round trips `pause_us` apart for `settings.sparse_seconds`, and the
/// switch's CPU meanwhile; `None` for a path without switch processes.
pub fn sparse(testbed: &Testbed, settings: &Settings, pause_us: u64) -> Result<Option<SparseRun>> {
    let nodes = testbed.switch_pids().len();
    if nodes == 0 {
        return Ok(None);
    }
    let [a, b] = &testbed.pods;
    let echo = EchoServer::start(&b.ns, ECHO_PORT, RECEIVER_CPU)?;
    let client = PingPong {
        count: u64::MAX,
        limit: Duration::from_secs_f64(settings.sparse_seconds),
        pause: Duration::from_micros(pause_us),
        timeout: Duration::from_millis(settings.rtt_timeout_ms),
    };
    let meter = Meter::start(testbed)?;
    let trips = on_cpu(SENDER_CPU, || {
        client.run(&a.ns, SocketAddrV4::new(testbed.server, ECHO_PORT))
    })?;
    let cpu = meter.stop()?;
    echo.stop()?;
    Ok(Some(SparseRun {
        pause_us,
        round_trips: trips.rtts_ns.len() as u64,
        per_node_cores: cpu.switch / nodes as f64,
    }))
}

/// iperf3 TCP from the sending pod to the receiving pod with `streams`
/// parallel streams.
pub fn tcp(testbed: &Testbed, settings: &Settings, streams: u32) -> Result<TcpRun> {
    let [a, b] = &testbed.pods;
    let _server = on_cpu(RECEIVER_CPU, || iperf_server(&b.ns, IPERF_PORT))?;
    let client = IperfClient {
        seconds: settings.tcp_seconds,
        streams,
        ..IperfClient::default()
    };
    let ((result, cpu), counters) = counted(testbed, || {
        let meter = Meter::start(testbed)?;
        let result = on_cpu(SENDER_CPU, || client.run(&a.ns, testbed.server))?;
        Ok((result, meter.stop()?))
    })?;
    Ok(TcpRun {
        streams,
        gbps: result.gbps(),
        retransmits: result.retransmits,
        cpu,
        counters,
    })
}

/// Flood the receiving pod with `frame_bytes`-byte UDP frames (FCS
/// included) from the sending pod for `settings.udp_seconds`, as fast as
/// its interface takes them, and count what arrives: at the receiving
/// pod's interface, and at its application's socket.
pub fn udp(testbed: &Testbed, settings: &Settings, frame_bytes: usize) -> Result<UdpRun> {
    let [a, b] = &testbed.pods;
    let flow = UdpFlow {
        src_mac: a.ns.mac("eth0")?,
        dst_mac: next_hop_mac(a, testbed.server)?,
        src: SocketAddrV4::new(a.ip, FLOOD_PORT),
        dst: SocketAddrV4::new(testbed.server, SINK_PORT),
    };
    let flood = Flood::open(&a.ns, "eth0", udp_frame(&flow, frame_bytes - FCS)?)?;
    let sink = UdpSink::bind(&b.ns, SINK_PORT)?;
    let duration = Duration::from_secs_f64(settings.udp_seconds);
    // Far more than any path here carries: the time bound ends the flood.
    let max_frames = (settings.udp_seconds * 20e6) as u64;
    let ((sent, received, cpu, interface), counters) = counted(testbed, || {
        let before = LinkCounters::read(&b.ns, "eth0")?;
        let stop = AtomicBool::new(false);
        let (sent, received, cpu) = std::thread::scope(|scope| {
            let receiver = scope.spawn(|| {
                on_cpu(RECEIVER_CPU, || {
                    sink.run(&stop, duration + Duration::from_secs(5))
                })
            });
            let meter = Meter::start(testbed);
            let sent = on_cpu(SENDER_CPU, || flood.run(duration, max_frames));
            let cpu = meter.and_then(|m| m.stop());
            stop.store(true, Ordering::Relaxed);
            let received = receiver
                .join()
                .unwrap_or_else(|_| bail!("the sink thread panicked"));
            Ok::<_, anyhow::Error>((sent?, received?, cpu?))
        })?;
        let after = LinkCounters::read(&b.ns, "eth0")?;
        Ok((sent, received, cpu, after.rx_packets - before.rx_packets))
    })?;
    let seconds = sent.elapsed.as_secs_f64().max(1e-3);
    let offered = sent.offered().max(1) as f64;
    Ok(UdpRun {
        frame_bytes,
        seconds,
        offered_pps: sent.offered() as f64 / seconds,
        refused: sent.refused,
        delivered_pps: interface as f64 / seconds,
        app_pps: received.packets as f64 / seconds,
        lost_pct: 100.0 * (1.0 - interface as f64 / offered).max(0.0),
        socket_dropped_pct: 100.0
            * (1.0 - received.packets as f64 / interface.max(1) as f64).max(0.0),
        cpu,
        counters,
    })
}

/// Flood the receiving pod with `settings.socket_flood_datagrams`
/// 64-byte frames from a UDP socket in the sending pod, as an application
/// floods: through the pod's qdisc, blocking when the path pushes back
/// (where [`udp`]'s packet socket passes the qdisc by); count what arrives.
pub fn udp_socket(testbed: &Testbed, settings: &Settings) -> Result<SocketFloodRun> {
    let [a, b] = &testbed.pods;
    let end = |ns, address, cpu| FloodEnd {
        ns,
        ifname: "eth0",
        address,
        cpu,
    };
    let (outcome, counters) = counted(testbed, || {
        socket_flood(
            end(&a.ns, SocketAddrV4::new(a.ip, FLOOD_PORT), SENDER_CPU),
            end(
                &b.ns,
                SocketAddrV4::new(testbed.server, SINK_PORT),
                RECEIVER_CPU,
            ),
            64 - FCS - UDP_HEADERS,
            settings.socket_flood_datagrams,
        )
    })?;
    Ok(SocketFloodRun {
        outcome,
        lost_pct: outcome.lost_pct(),
        counters,
    })
}

/// Request/response round trips from the sending pod to an echo server in
/// the receiving pod, one at a time; with `loaded`, while iperf3 sends
/// the background load between the same pods.
pub fn latency(testbed: &Testbed, settings: &Settings, loaded: bool) -> Result<LatencyRun> {
    let [a, b] = &testbed.pods;
    let echo = EchoServer::start(&b.ns, ECHO_PORT, RECEIVER_CPU)?;
    let client = PingPong {
        count: settings.rtt_count,
        limit: Duration::from_secs_f64(settings.rtt_seconds),
        pause: Duration::from_micros(settings.rtt_pause_us),
        timeout: Duration::from_millis(settings.rtt_timeout_ms),
    };
    let server = SocketAddrV4::new(testbed.server, ECHO_PORT);
    let probe = || -> Result<_> {
        let ((trips, cpu), counters) = counted(testbed, || {
            let meter = Meter::start(testbed)?;
            let trips = on_cpu(SENDER_CPU, || client.run(&a.ns, server))?;
            Ok((trips, meter.stop()?))
        })?;
        Ok((trips, cpu, counters))
    };
    let (trips, cpu, counters, background) = if loaded {
        let _server = on_cpu(RECEIVER_CPU, || iperf_server(&b.ns, BACKGROUND_PORT))?;
        let load = IperfClient {
            // The probe starts half a second in and must end before the load.
            seconds: (settings.rtt_seconds + 1.5).ceil() as u32,
            streams: 1,
            udp: Some((settings.background_bps, BACKGROUND_DATAGRAM)),
            port: BACKGROUND_PORT,
            ..IperfClient::default()
        };
        std::thread::scope(|scope| {
            let background = scope.spawn(|| on_cpu(SENDER_CPU, || load.run(&a.ns, testbed.server)));
            std::thread::sleep(Duration::from_millis(500));
            let probed = probe();
            let background = background
                .join()
                .unwrap_or_else(|_| bail!("the background load's thread panicked"))
                .context("the background load")?;
            let (trips, cpu, counters) = probed?;
            let lost_pct =
                100.0 * background.lost_packets as f64 / background.packets.max(1) as f64;
            Ok::<_, anyhow::Error>((
                trips,
                cpu,
                counters,
                Some(Background {
                    gbps: background.gbps(),
                    lost_pct,
                }),
            ))
        })?
    } else {
        let (trips, cpu, counters) = probe()?;
        (trips, cpu, counters, None)
    };
    echo.stop()?;
    let histogram = record(&trips.rtts_ns)?;
    Ok(LatencyRun {
        loaded,
        percentiles: Percentiles::of(&histogram),
        lost: trips.lost,
        background,
        cpu,
        counters,
        histogram: Some(histogram),
    })
}

/// The MAC of the next hop from `pod` to `to`: its gateway's, or the
/// destination's own on a flat network, from the pod's neighbour table
/// (pinging once to fill it if needed).
fn next_hop_mac(pod: &Pod, to: Ipv4Addr) -> Result<[u8; 6]> {
    let route = pod.ns.ip(&["route", "get", &to.to_string()])?;
    let hop = route_next_hop(&route).unwrap_or(to);
    for _ in 0..3 {
        let neigh = pod
            .ns
            .ip(&["neigh", "show", &hop.to_string(), "dev", "eth0"])?;
        if let Some(mac) = neighbour_mac(&neigh) {
            return parse_mac(mac);
        }
        podswitch_lab::cluster::ping(&pod.ns, to, 1)?;
    }
    bail!("no neighbour entry for {hop} in {}", pod.ns.name())
}

/// The gateway in `ip route get` output (`… via 10.244.1.1 dev eth0 …`),
/// or `None` when the destination is on the link.
fn route_next_hop(text: &str) -> Option<Ipv4Addr> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "via")?;
    words.next()?.parse().ok()
}

/// The MAC in `ip neigh show` output (`10.244.1.1 lladdr 0a:… REACHABLE`).
fn neighbour_mac(text: &str) -> Option<&str> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_next_hops() {
        assert_eq!(
            route_next_hop(
                "10.244.2.2 via 10.244.1.1 dev eth0 src 10.244.1.2 uid 0 \n    cache \n"
            ),
            Some(Ipv4Addr::new(10, 244, 1, 1))
        );
        assert_eq!(
            route_next_hop("10.244.2.2 dev eth0 src 10.244.1.2 uid 0 \n    cache \n"),
            None
        );
        assert_eq!(
            neighbour_mac("10.244.1.1 lladdr 0a:70:0a:01:00:0b REACHABLE\n"),
            Some("0a:70:0a:01:00:0b")
        );
        assert_eq!(neighbour_mac("10.244.1.1  FAILED\n"), None);
        assert_eq!(neighbour_mac(""), None);
    }

    #[test]
    fn quick_runs_everything_briefly() {
        let (full, quick) = (Settings::full(), Settings::quick());
        assert_eq!(quick.tcp_streams, full.tcp_streams);
        assert_eq!(quick.frame_bytes, full.frame_bytes);
        assert!(quick.tcp_seconds < full.tcp_seconds);
        assert!(quick.udp_seconds < full.udp_seconds);
        assert!(quick.rtt_count < full.rtt_count);
    }
}
