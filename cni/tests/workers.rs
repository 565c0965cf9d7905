//! Several workers per node: the uplink's RX queues shared out among
//! them (each worker receiving on its own and sending on its own), pods
//! spread over them, the tunnel port with a queue for each, and packets
//! for another worker's port handed over through its inbox. Two podswitch
//! nodes with two workers each and a two-queue underlay; veth and TAP
//! pods on both workers of node 1. Needs root.

mod common;

use anyhow::{Context, Result, ensure};
use podswitch_lab::cluster::{Pod, SwitchNode, SwitchOptions, expect_iperf, expect_pings};
use podswitch_lab::traffic::IperfClient;
use serde_json::Value;

use common::{nodes_with, plugin, serial};

/// The worker each of `node`'s pod ports is on, by pod address.
fn workers_of(node: &SwitchNode, pods: &[&Pod]) -> Result<Vec<u64>> {
    let ports = node.cli_json(&["ports"])?;
    let ports = ports.as_array().context("ports")?;
    pods.iter()
        .map(|pod| {
            ports
                .iter()
                .find(|p| p["ip"] == pod.ip.to_string())
                .and_then(|p| p["worker"].as_u64())
                .with_context(|| format!("no port for {}", pod.ip))
        })
        .collect()
}

/// How many batches each of `node`'s workers received.
fn batches_per_worker(node: &SwitchNode) -> Result<Vec<u64>> {
    let stats = node.cli_json(&["stats"])?;
    let workers = stats["workers"].as_array().context("workers")?;
    Ok(workers
        .iter()
        .map(|w| {
            w["batches"]
                .as_array()
                .map_or(0, |b| b.iter().filter_map(Value::as_u64).sum())
        })
        .collect())
}

#[test]
fn two_workers_share_the_uplink_and_the_pods() -> Result<()> {
    let _serial = serial();
    let options = SwitchOptions {
        workers: Some(2),
        ..SwitchOptions::default()
    };
    let mut nodes = nodes_with("workers", 2, &options)?;
    let plugin = plugin();
    let (n1, n2) = (&nodes.switches[0], &nodes.switches[1]);
    // Node 1: pods round-robin over its two workers; node 2: one of each
    // kind.
    let veth_a = n1.add_cni_pod_as(&mut nodes.lab, &plugin, 2, "veth")?;
    let veth_b = n1.add_cni_pod_as(&mut nodes.lab, &plugin, 3, "veth")?;
    let tap_a = n1.add_cni_pod_as(&mut nodes.lab, &plugin, 4, "tap")?;
    let tap_b = n1.add_cni_pod_as(&mut nodes.lab, &plugin, 5, "tap")?;
    let far_veth = n2.add_cni_pod_as(&mut nodes.lab, &plugin, 2, "veth")?;
    let far_tap = n2.add_cni_pod_as(&mut nodes.lab, &plugin, 3, "tap")?;
    let mut workers = workers_of(n1, &[&veth_a, &veth_b, &tap_a, &tap_b])?;
    workers.sort_unstable();
    ensure!(
        workers == [0, 0, 1, 1],
        "node 1's pods are not spread over both workers: {workers:?}"
    );
    let uplink_queues = n1.cli_json(&["ports"])?[0]["queues"].as_u64();
    ensure!(
        uplink_queues == Some(2),
        "node 1's uplink has {uplink_queues:?} queues, not 2"
    );

    // Every pod reaches every other, whichever worker each is on.
    let everyone = [&veth_a, &veth_b, &tap_a, &tap_b, &far_veth, &far_tap];
    for from in everyone {
        for to in everyone {
            if from.ip != to.ip {
                expect_pings(from, to.ip, &format!("{} to {}", from.ip, to.ip))?;
            }
        }
    }
    let four = IperfClient {
        streams: 4,
        ..IperfClient::default()
    };
    for (from, to, what) in [
        (&veth_a, &far_veth, "veth to veth across nodes, 4 streams"),
        (&veth_b, &far_tap, "veth to TAP across nodes, 4 streams"),
        (&tap_a, &far_tap, "TAP to TAP across nodes, 4 streams"),
        (&tap_b, &far_veth, "TAP to veth across nodes, 4 streams"),
        (&far_tap, &tap_b, "TAP to TAP back, 4 streams"),
        (&veth_a, &tap_b, "veth to TAP on one node, across workers"),
    ] {
        expect_iperf(&four, from, to, what)?;
    }

    // Both workers of each node received, and the tunnel port carried
    // TAP pods' super-frames from both.
    for node in [n1, n2] {
        let batches = batches_per_worker(node)?;
        ensure!(
            batches.len() == 2 && batches.iter().all(|&b| b > 0),
            "node {}: batches per worker {batches:?}",
            node.index
        );
        node.check_frames()?;
    }
    let tunnel = n1.cli_json(&["ports"])?;
    let tunnel = tunnel
        .as_array()
        .context("ports")?
        .iter()
        .find(|p| p["role"] == "tunnel")
        .cloned()
        .context("no tunnel port on node 1")?;
    ensure!(
        tunnel["counters"]["offload"]["super_frames_sent"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "no super-frame went through the tunnel port: {tunnel}"
    );
    Ok(())
}
