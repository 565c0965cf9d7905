//! A UDP flood from a veth pod and from a TAP pod to a pod on the other
//! node, through podswitch, and the same flood through the kernel path
//! (Flannel-style: bridge, vxlan, pods on veth with offloads), in one
//! run. The senders are applications: a UDP socket sending as fast as it
//! may, blocking when the path pushes back. Loss is what the sender
//! handed the kernel and the receiving pod's interface never saw. Every
//! datagram podswitch loses must be counted where an operator looks
//! (`podswitch stats`: drops by reason, the kernel's AF_XDP counters, the
//! interfaces' own drops, a TAP pod's queue); the loss beside the kernel
//! path's is printed (it depends on what else the shared machine runs).
//! Node 1's worker, behind the pod that floods it from its own CPU, must
//! have taken its `overload_nice` (what slows such a sender down instead
//! of losing its datagrams) and be back at its own nice once idle.
//! Bounded by datagram counts, no timed assertions. Needs root.

mod common;

use std::net::SocketAddrV4;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use common::{nodes_with, plugin, serial};
use podswitch_cni::pod_link::TAP_QUEUE_LEN;
use podswitch_lab::Lab;
use podswitch_lab::cluster::{Pod, SwitchNode, SwitchOptions, expect_pings, kernel_pods};
use podswitch_lab::flood::{FloodEnd, SocketFloodOutcome, socket_flood};
use serde_json::Value;

/// Datagrams per flood.
const DATAGRAMS: u64 = 300_000;
/// UDP payload of a 64-byte frame (FCS included).
const SMALL: usize = 18;
/// UDP payload of a 1400-byte frame.
const LARGE: usize = 1354;
/// Where the receiving pod counts datagrams.
const SINK_PORT: u16 = 9000;
/// The sender's port.
const SOURCE_PORT: u16 = 40000;
/// The sending pod's CPU (node 1's worker's), and the receiving one's.
const SENDER_CPU: usize = 0;
const RECEIVER_CPU: usize = 1;

/// Flood `to` from `from` with `DATAGRAMS` datagrams of `payload` bytes.
fn flood(from: &Pod, to: &Pod, payload: usize) -> Result<SocketFloodOutcome> {
    socket_flood(
        FloodEnd {
            ns: &from.ns,
            ifname: "eth0",
            address: SocketAddrV4::new(from.ip, SOURCE_PORT),
            cpu: SENDER_CPU,
        },
        FloodEnd {
            ns: &to.ns,
            ifname: "eth0",
            address: SocketAddrV4::new(to.ip, SINK_PORT),
            cpu: RECEIVER_CPU,
        },
        payload,
        DATAGRAMS,
    )
}

/// Each port's counters on `node` (`podswitch stats`).
fn port_counters(node: &SwitchNode) -> Result<Value> {
    node.cli_json(&["stats"])
        .map(|stats| stats["ports"].clone())
        .context("podswitch stats")
}

/// The frames `ports_after - ports_before` shows lost, per port and place.
/// One frame may be counted in several places of a port: a frame the
/// kernel could not hand to an AF_XDP socket (`kernel: rx_dropped` and
/// `rx_ring_full`) is also its interface's `rx_dropped`, so a port's loss
/// is the larger of the two, plus the switch's own drops by reason and a
/// TAP pod's queue drops.
fn losses(before: &Value, after: &Value) -> Vec<(String, u64)> {
    let mut places = Vec::new();
    for (name, port) in after.as_object().into_iter().flatten() {
        let old = &before[name];
        let delta = |path: &[&str]| {
            let get = |v: &Value| path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0);
            get(port).saturating_sub(get(old))
        };
        let reasons: u64 = port["drops"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(reason, _)| delta(&["drops", reason]))
            .sum();
        let socket = delta(&["kernel", "rx_dropped"]) + delta(&["kernel", "rx_ring_full"]);
        let lost =
            reasons + socket.max(delta(&["interface_rx_dropped"])) + delta(&["tap_queue_dropped"]);
        if lost > 0 {
            places.push((name.clone(), lost));
        }
    }
    places
}

#[test]
fn udp_floods_lose_only_what_the_switch_counts() -> Result<()> {
    let _serial = serial();
    // podswitch: a veth pod and a TAP pod on node 1, the receiver on node 2.
    let mut nodes = nodes_with("fl", 2, &SwitchOptions::default())?;
    let plugin = plugin();
    let veth = nodes.switches[0].add_cni_pod_as(&mut nodes.lab, &plugin, 2, "veth")?;
    let tap = nodes.switches[0].add_cni_pod_as(&mut nodes.lab, &plugin, 3, "tap")?;
    let target = nodes.switches[1].add_cni_pod_as(&mut nodes.lab, &plugin, 2, "veth")?;
    // The kernel path beside it.
    let mut lab = Lab::new("fk")?;
    let [kernel_from, kernel_to] = kernel_pods(&mut lab, 1500)?;
    for (from, to, what) in [
        (&veth, &target, "veth pod"),
        (&tap, &target, "TAP pod"),
        (&kernel_from, &kernel_to, "kernel path"),
    ] {
        expect_pings(from, to.ip, what)?;
    }

    // The TAP pod's queue holds what its bursts need while the worker is
    // off the CPU, not the kernel's 1000.
    let tap_link = tap.ns.ip(&["-j", "link", "show", "eth0"])?;
    let qlen = serde_json::from_str::<Value>(&tap_link)?[0]["txqlen"].as_u64();
    ensure!(
        qlen == Some(TAP_QUEUE_LEN.into()),
        "the TAP pod's queue holds {qlen:?} packets: {tap_link}"
    );
    for payload in [SMALL, LARGE] {
        let kernel = flood(&kernel_from, &kernel_to, payload)?;
        println!("{payload}-byte datagrams through the kernel path: {kernel}");
        for (from, what) in [(&veth, "veth pod"), (&tap, "TAP pod")] {
            let before: Vec<Value> = nodes
                .switches
                .iter()
                .map(port_counters)
                .collect::<Result<_>>()?;
            let outcome = flood(from, &target, payload)?;
            let mut counted = Vec::new();
            for (node, old) in nodes.switches.iter().zip(&before) {
                for (port, n) in losses(old, &port_counters(node)?) {
                    counted.push((format!("node {} {port}", node.index), n));
                }
            }
            let total: u64 = counted.iter().map(|(_, n)| n).sum();
            println!(
                "{payload}-byte datagrams from a {what}: {outcome}; counted by podswitch: \
                 {counted:?} (the kernel path lost {})",
                kernel.lost()
            );
            ensure!(
                outcome.lost() <= total,
                "{payload}-byte datagrams from a {what}: {} lost, {total} counted ({counted:?})",
                outcome.lost()
            );
        }
    }
    // Node 1's worker fell behind the flooding TAP pod at least once and
    // took `overload_nice` (the default, -10) then; idle again, it is
    // back at its own nice.
    let node = &nodes.switches[0];
    let stats = node.cli_json(&["stats"])?;
    let raised = stats["workers"][0]["raised"].as_u64();
    ensure!(
        raised.is_some_and(|n| n > 0),
        "node 1's worker never raised its priority under the floods: {raised:?}"
    );
    let worker = node.worker_task(0)?;
    podswitch_lab::membership::wait_for("node 1's worker back at nice 0", || {
        Ok(nice(&worker)? == 0)
    })?;
    Ok(())
}

/// The nice value of the thread whose /proc directory is `task`.
fn nice(task: &Path) -> Result<i64> {
    let stat = std::fs::read_to_string(task.join("stat"))?;
    // After the command's closing parenthesis: state is field 3, nice 19.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    fields
        .get(16)
        .and_then(|nice| nice.parse().ok())
        .with_context(|| format!("no nice value in {stat:?}"))
}
