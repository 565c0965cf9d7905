//! `podswitch capture` read back with tshark: two podswitch nodes in
//! namespaces, veth pods, pings across nodes. A capture on a pod port
//! holds the pod's echo requests marked inbound and the replies marked
//! outbound; one on the uplink holds the same pings encapsulated (VXLAN,
//! the inner addresses the filter named); a filter that matches nothing
//! keeps nothing, and a client that hangs up ends its capture; a bad port
//! is refused. Needs root.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use podswitch_lab::cluster::{SwitchNode, SwitchOptions, SwitchPair, node_ip, ping};
use podswitch_lab::{Lab, tools};

/// Pings sent for each capture.
const PINGS: u32 = 10;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_podswitch"))
}

/// Start `podswitch capture` on `node` writing to `file`.
fn start_capture(node: &SwitchNode, file: &Path, args: &[&str]) -> Result<Child> {
    Command::new(binary())
        .arg("--socket")
        .arg(&node.socket)
        .arg("capture")
        .args(args)
        .arg("-w")
        .arg(file)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting podswitch capture")
}

/// Wait (at most 20 s) for a capture given a count to finish.
fn wait_done(mut child: Child, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            ensure!(
                status.success(),
                "{what}: podswitch capture failed: {status}"
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what}: the capture did not end after its count");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait (at most 10 s) until the daemon's log says `event` ("capture
/// started", "capture ended") `count` times.
fn wait_logged(node: &SwitchNode, event: &str, count: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.log().matches(event).count() < count {
        ensure!(
            Instant::now() < deadline,
            "the daemon's log does not say {event:?} {count} times:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// tshark's fields of every packet in `file`, one line each.
fn tshark(file: &Path, fields: &[&str]) -> Result<Vec<Vec<String>>> {
    let mut command = tools::command("tshark")?;
    command.arg("-n").arg("-r").arg(file).args(["-T", "fields"]);
    for field in fields {
        command.args(["-e", field]);
    }
    let output = command.output().context("running tshark")?;
    ensure!(
        output.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?
        .lines()
        .map(|line| line.split('\t').map(String::from).collect())
        .collect())
}

/// The direction tshark reads from a packet's pcapng flags: 1 inbound,
/// 2 outbound.
fn direction(flags: &str) -> u32 {
    u32::from_str_radix(flags.trim_start_matches("0x"), 16).map_or(0, |f| f & 3)
}

#[test]
fn captures_read_back_with_tshark() -> Result<()> {
    let mut lab = Lab::new("sw-capture")?;
    let dir = lab.scratch_dir()?;
    let SwitchPair { nodes, pods } =
        SwitchPair::build(&mut lab, binary(), &dir, &SwitchOptions::default())?;
    let [n1, _] = &nodes;
    let [[a, _], [c, _]] = &pods;
    ensure!(ping(&a.ns, c.ip, 3)? >= 1, "no ping across nodes");
    let count = (2 * PINGS).to_string();

    // A pod port: requests in, replies out.
    let pod_file = dir.join("pod.pcapng");
    let capture = start_capture(
        n1,
        &pod_file,
        &[&a.port, "-c", &count, "--host", &c.ip.to_string()],
    )?;
    // The capture is running once the daemon says so.
    wait_logged(n1, "capture started", 1)?;
    let replies = ping(&a.ns, c.ip, PINGS)?;
    ensure!(replies == PINGS, "{replies}/{PINGS} pings across nodes");
    wait_done(capture, "pod port")?;
    let packets = tshark(
        &pod_file,
        &[
            "frame.packet_flags_direction",
            "icmp.type",
            "ip.src",
            "ip.dst",
        ],
    )?;
    eprintln!("pod port capture: {packets:?}");
    ensure!(
        packets.len() == 2 * PINGS as usize,
        "{} packets in the pod port's capture",
        packets.len()
    );
    let (a_ip, c_ip) = (a.ip.to_string(), c.ip.to_string());
    let requests = packets
        .iter()
        .filter(|p| direction(&p[0]) == 1 && p[1] == "8" && p[2] == a_ip && p[3] == c_ip)
        .count();
    let answers = packets
        .iter()
        .filter(|p| direction(&p[0]) == 2 && p[1] == "0" && p[2] == c_ip && p[3] == a_ip)
        .count();
    ensure!(
        requests == PINGS as usize && answers == PINGS as usize,
        "{requests} inbound requests and {answers} outbound replies: {packets:?}"
    );
    wait_logged(n1, "capture ended", 1)?;

    // The uplink: the same pings encapsulated, found by their inner
    // addresses.
    let uplink_file = dir.join("uplink.pcapng");
    let capture = start_capture(n1, &uplink_file, &["ul0", "-c", &count, "--host", &c_ip])?;
    wait_logged(n1, "capture started", 2)?;
    let replies = ping(&a.ns, c.ip, PINGS)?;
    ensure!(replies == PINGS, "{replies}/{PINGS} pings across nodes");
    wait_done(capture, "uplink")?;
    let packets = tshark(
        &uplink_file,
        &[
            "frame.packet_flags_direction",
            "vxlan.vni",
            "ip.src",
            "ip.dst",
            "icmp.type",
        ],
    )?;
    eprintln!("uplink capture: {packets:?}");
    let (n1_ip, n2_ip) = (node_ip(1).to_string(), node_ip(2).to_string());
    let sent = packets
        .iter()
        .filter(|p| {
            direction(&p[0]) == 2
                && p[1] == "1"
                && p[2] == format!("{n1_ip},{a_ip}")
                && p[3] == format!("{n2_ip},{c_ip}")
                && p[4] == "8"
        })
        .count();
    let received = packets
        .iter()
        .filter(|p| {
            direction(&p[0]) == 1
                && p[1] == "1"
                && p[2] == format!("{n2_ip},{c_ip}")
                && p[3] == format!("{n1_ip},{a_ip}")
                && p[4] == "0"
        })
        .count();
    ensure!(
        sent == PINGS as usize && received == PINGS as usize,
        "{sent} requests sent encapsulated and {received} replies received: {packets:?}"
    );
    wait_logged(n1, "capture ended", 2)?;

    // A filter that matches nothing keeps nothing; the client hanging up
    // ends the capture.
    let none_file = dir.join("none.pcapng");
    let mut capture = start_capture(n1, &none_file, &[&a.port, "--host", "192.0.2.1"])?;
    wait_logged(n1, "capture started", 3)?;
    ping(&a.ns, c.ip, 3)?;
    capture.kill()?;
    capture.wait()?;
    wait_logged(n1, "capture ended", 3)?;
    ensure!(
        tshark(&none_file, &["frame.number"])?.is_empty(),
        "a capture for 192.0.2.1 kept packets"
    );

    // A bad port is refused, with a message.
    let refused = Command::new(binary())
        .arg("--socket")
        .arg(&n1.socket)
        .args(["capture", "nosuchport", "-c", "1"])
        .output()?;
    ensure!(!refused.status.success(), "a capture on no port started");
    let message = String::from_utf8_lossy(&refused.stderr);
    ensure!(message.contains("no port nosuchport"), "{message}");
    for node in &nodes {
        node.check_frames()?;
    }
    Ok(())
}
