//! The Prometheus endpoint through the real path: two podswitch nodes in
//! namespaces serving metrics on their underlay address, scraped with curl
//! before and after real traffic. Checks the exposition parses line by
//! line, that the packet counters of the pod ports and the tunnel moved by
//! at least the traffic's packet count, that a drop reason counter moves
//! when frames are dropped for that reason, and that bad requests get 404
//! or 405 and leave the endpoint serving. Needs root.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use podswitch_lab::cluster::{
    Pod, SwitchNode, SwitchOptions, SwitchPair, node_ip, ping, router_mac,
};
use podswitch_lab::flood::{self, UDP_HEADERS, UdpFlow};
use podswitch_lab::{Lab, RawLink, parse_mac};

/// The port the lab's daemons serve metrics on.
const METRICS_PORT: u16 = 9469;
/// Pings across nodes.
const PINGS: u32 = 20;
/// Frames with a bad IPv4 checksum sent from a pod.
const BAD_FRAMES: u64 = 20;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_podswitch"))
}

fn url(node: &SwitchNode, path: &str) -> String {
    format!("http://{}:{METRICS_PORT}{path}", node_ip(node.index))
}

/// One scrape: sample (name with labels, as written) → value, after every
/// line was checked to be a sample, `# HELP`, `# TYPE`, `# UNIT` or the
/// final `# EOF`, and every sample's family was declared.
type Samples = BTreeMap<String, f64>;

/// Scrape `node` with curl from inside its namespace, and parse.
fn scrape(node: &SwitchNode) -> Result<Samples> {
    let text = node.ns.run(
        "curl",
        &["-sS", "--fail", "--max-time", "10", &url(node, "/metrics")],
    )?;
    parse(&text).with_context(|| format!("the exposition:\n{text}"))
}

/// A metric or label name.
fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Check `labels` (between the braces) is `name="value",…` with escaped
/// quotes only.
fn check_labels(labels: &str) -> Result<()> {
    let mut rest = labels;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").context("a label without =\"")?;
        ensure!(is_name(name), "label name {name:?}");
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.context("an unterminated label value")?;
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(())
}

fn parse(text: &str) -> Result<Samples> {
    let mut samples = Samples::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = BTreeSet::new();
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines.last() == Some(&"# EOF"),
        "the exposition must end with # EOF"
    );
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name, rest) = (words.next(), words.next(), words.next());
            let name = name
                .filter(|n| is_name(n))
                .context("a comment without a name")?;
            match (kind, rest) {
                (Some("HELP"), Some(help)) if !help.is_empty() => {
                    helped.insert(name.to_string());
                }
                (Some("TYPE"), Some(t @ ("counter" | "gauge"))) => {
                    typed.insert(name.to_string(), t.to_string());
                }
                (Some("UNIT"), Some(unit)) => {
                    ensure!(
                        name.ends_with(&format!("_{unit}")),
                        "unit {unit} not in {name}"
                    )
                }
                _ => bail!("a bad comment line {line:?}"),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').context("a sample without a value")?;
        let value: f64 = value
            .parse()
            .with_context(|| format!("value in {line:?}"))?;
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                check_labels(labels.strip_suffix('}').context("unclosed labels")?)?;
                name
            }
            None => series,
        };
        ensure!(is_name(name), "metric name {name:?}");
        ensure!(name.starts_with("podswitch_"), "{name} is not podswitch_…");
        let family = match name.strip_suffix("_total") {
            Some(family) if typed.get(family).is_some_and(|t| t == "counter") => family,
            _ => name,
        };
        ensure!(
            typed.contains_key(family) && helped.contains(family),
            "{name}: its family has no # TYPE or # HELP before it"
        );
        ensure!(
            samples.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    Ok(samples)
}

/// A sample's value, 0 if absent (drop reasons with no drops are left out).
fn value(samples: &Samples, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn port_counter(samples: &Samples, metric: &str, port: &str) -> f64 {
    value(
        samples,
        &format!("podswitch_{metric}_total{{port=\"{port}\"}}"),
    )
}

/// A UDP frame from `pod` to `to` with a corrupted IPv4 header checksum.
fn bad_checksum_frame(pod: &Pod, to: Ipv4Addr, router: [u8; 6]) -> Result<Vec<u8>> {
    let flow = UdpFlow {
        src_mac: parse_mac(&pod.mac)?,
        dst_mac: router,
        src: SocketAddrV4::new(pod.ip, 40000),
        dst: SocketAddrV4::new(to, 9),
    };
    let mut frame = flood::udp_frame(&flow, UDP_HEADERS + 32)?;
    frame[24] ^= 0xff;
    Ok(frame)
}

/// The HTTP status curl gets for `method path`.
fn status(node: &SwitchNode, method: &str, path: &str) -> Result<String> {
    node.ns.run(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "-X",
            method,
            &url(node, path),
        ],
    )
}

#[test]
fn metrics_follow_traffic_and_drops() -> Result<()> {
    let mut lab = Lab::new("sw-metrics")?;
    let options = SwitchOptions {
        metrics_port: Some(METRICS_PORT),
        ..SwitchOptions::default()
    };
    let dir = lab.scratch_dir()?;
    let SwitchPair { nodes, pods } = SwitchPair::build(&mut lab, binary(), &dir, &options)?;
    let [n1, n2] = &nodes;
    let [[a, _], [c, _]] = &pods;

    let before = [scrape(n1)?, scrape(n2)?];
    let replies = ping(&a.ns, c.ip, PINGS)?;
    ensure!(replies >= PINGS / 2, "{replies}/{PINGS} pings across nodes");
    let after = [scrape(n1)?, scrape(n2)?];
    let moved = |node: usize, metric: &str, port: &str| {
        port_counter(&after[node], metric, port) - port_counter(&before[node], metric, port)
    };
    let n = f64::from(replies);
    // Node 1: pod a sent the requests and got the replies; the tunnel
    // (the uplink, or the tunnel port when the kernel offloads) carried
    // them both ways.
    let tunnel =
        |node: usize, metric: &str| moved(node, metric, "ul0") + moved(node, metric, "podswt0");
    for (node, port, metric) in [
        (0, a.port.as_str(), "port_received_packets"),
        (0, a.port.as_str(), "port_sent_packets"),
        (1, c.port.as_str(), "port_received_packets"),
        (1, c.port.as_str(), "port_sent_packets"),
    ] {
        let m = moved(node, metric, port);
        ensure!(
            m >= n,
            "node {}: {metric} of {port} moved by {m}, {replies} pings",
            node + 1
        );
    }
    for node in 0..2 {
        for metric in ["port_received_packets", "port_sent_packets"] {
            let m = tunnel(node, metric);
            ensure!(
                m >= n,
                "node {}: the tunnel's {metric} moved by {m}, {replies} pings",
                node + 1
            );
        }
        let bytes =
            moved(node, "port_sent_bytes", "ul0") + moved(node, "port_sent_bytes", "podswt0");
        // An encapsulated echo request: 98-byte frame + 50 bytes of VXLAN.
        ensure!(
            bytes >= n * 148.0,
            "node {}: the tunnel's sent bytes moved by {bytes}",
            node + 1
        );
        let worker =
            |s: &Samples| value(s, "podswitch_worker_received_packets_total{worker=\"0\"}");
        let w = worker(&after[node]) - worker(&before[node]);
        ensure!(
            w >= 2.0 * n,
            "node {}: worker 0 received {w} frames",
            node + 1
        );
        let busy = |s: &Samples| {
            value(
                s,
                "podswitch_worker_polls_total{worker=\"0\",result=\"busy\"}",
            )
        };
        ensure!(
            busy(&after[node]) > busy(&before[node]),
            "node {}: no busy poll",
            node + 1
        );
    }
    let peer = format!(
        "podswitch_peer_up{{peer=\"{}\",pod_cidr=\"10.244.2.0/24\"}}",
        node_ip(2)
    );
    ensure!(value(&after[0], &peer) == 1.0, "node 1: {peer} is not 1");
    ensure!(value(&after[0], "podswitch_peers{state=\"resolved\"}") == 1.0);
    // Gateway, default route, two pods, the peer's CIDR.
    ensure!(value(&after[0], "podswitch_fib_routes") >= 5.0);
    ensure!(value(&after[0], "podswitch_frames{place=\"free\"}") > 0.0);
    let adds = value(
        &after[0],
        "podswitch_control_requests_total{op=\"port_add\",result=\"ok\"}",
    );
    ensure!(adds == 2.0, "node 1: {adds} port adds counted, 2 made");

    // Frames with a bad IPv4 checksum from pod a: dropped as bad_ipv4.
    let drops = format!(
        "podswitch_port_drops_total{{port=\"{}\",reason=\"bad_ipv4\"}}",
        a.port
    );
    let dropped_before = value(&scrape(n1)?, &drops);
    let frame = bad_checksum_frame(a, c.ip, parse_mac(&router_mac(1))?)?;
    let mut link = RawLink::open(&a.ns, "eth0", Duration::from_millis(100))?;
    for _ in 0..BAD_FRAMES {
        link.send(&frame)?;
    }
    // The worker counts within a batch; give it a moment to get there.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let counted = value(&scrape(n1)?, &drops) - dropped_before;
        if counted >= BAD_FRAMES as f64 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{counted} of {BAD_FRAMES} bad-checksum frames counted in {drops}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Bad requests: answered, and the endpoint keeps serving.
    ensure!(status(n1, "GET", "/nope")? == "404");
    ensure!(status(n1, "POST", "/metrics")? == "405");
    ensure!(status(n1, "GET", "/metrics?x=%zz")? == "200");
    scrape(n1)?;
    for node in &nodes {
        node.check_frames()?;
    }
    Ok(())
}
