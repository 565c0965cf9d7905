//! A full node: Kubernetes runs up to 110 pods per node by default, and
//! clusters raise it. Every pod on a node filled through the CNI plugin
//! must be reachable with the default configuration — idle pods must not
//! hold the buffer frames that new ones need — and a veth pod past
//! `max_pods` is refused with a message, never wired and starved. TAP pods
//! hold no frames, so `max_pods` does not bound them.
//!
//! Run as root: `cargo test --release -p podswitch-cni --test pod_density`.

mod common;

use std::net::Ipv4Addr;

use anyhow::{Context, Result, ensure};
use podswitch_lab::cluster::{Pod, SwitchOptions, ping};
use podswitch_lab::cni::netns_path;

use common::{call, nodes_with, plugin, serial};

/// Fill node 1 with `pods` pods through the CNI plugin (its daemon set to
/// `max_pods`; the pods' `podInterface` is `pod_interface`), then check from a pod on node 2 that every one
/// of them answers, that one more is refused if it is a veth pod (an
/// AF_XDP socket the frames were not planned for) and taken if it is a
/// TAP pod, and that every frame is accounted for.
fn fill_node(tag: &str, max_pods: Option<u32>, pods: u8, pod_interface: &str) -> Result<()> {
    let _serial = serial();
    let options = SwitchOptions {
        max_pods,
        pod_interface: Some(pod_interface.into()),
        ..SwitchOptions::default()
    };
    let mut nodes = nodes_with(tag, 2, &options)?;
    let plugin = plugin();
    let (n1, n2) = (&nodes.switches[0], &nodes.switches[1]);
    let prober = n2.add_cni_pod(&mut nodes.lab, &plugin, 1)?;
    let mut filled: Vec<Pod> = Vec::with_capacity(usize::from(pods));
    for n in 1..=pods {
        let pod = n1
            .add_cni_pod(&mut nodes.lab, &plugin, n)
            .with_context(|| format!("adding pod {n} of {pods}"))?;
        filled.push(pod);
    }
    eprintln!(
        "{pods} pods on node 1; its frames: {}",
        n1.cli_json(&["stats"])?["frames"]
    );

    let mut silent: Vec<Ipv4Addr> = Vec::new();
    for pod in &filled {
        // Up to three single pings: a pod answers at once or never.
        let answered = (0..3).any(|_| ping(&prober.ns, pod.ip, 1).is_ok_and(|r| r == 1));
        if !answered {
            silent.push(pod.ip);
        }
    }
    ensure!(
        silent.is_empty(),
        "{} of {pods} pods answered no ping from node 2: {silent:?}; node 1's frames: {}",
        silent.len(),
        n1.cli_json(&["stats"])?["frames"]
    );

    // One more veth pod than planned for is refused, saying what to
    // change; a TAP pod holds no frames and is taken.
    let extra = nodes.lab.netns("podextra")?;
    let path = netns_path(&extra);
    let output = plugin.run(
        &n1.ns,
        &call("ADD", "podextra", Some(&path)),
        &n1.cni_network("1.0.0"),
    )?;
    if pod_interface == "veth" {
        ensure!(
            !output.success && output.stdout.contains("max_pods"),
            "veth pod {} was not refused with a message naming max_pods: {}",
            u32::from(pods) + 1,
            output.stdout
        );
    } else {
        ensure!(
            output.success,
            "TAP pod {} was refused: {}",
            u32::from(pods) + 1,
            output.stdout
        );
    }
    n1.check_frames()?;
    n2.check_frames()?;
    Ok(())
}

#[test]
fn a_node_of_110_pods_reaches_every_pod_with_the_default_configuration() -> Result<()> {
    fill_node("dens110", None, 110, "veth")
}

#[test]
fn a_node_of_110_tap_pods_takes_a_111th() -> Result<()> {
    fill_node("dens110t", None, 110, "tap")
}

#[test]
fn a_node_raised_to_250_pods_reaches_every_pod() -> Result<()> {
    fill_node("dens250", Some(250), 250, "veth")
}
