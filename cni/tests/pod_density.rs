//! A full node: Kubernetes runs up to 110 pods per node by default, and
//! clusters raise it. Every pod on a node filled through the CNI plugin
//! must be reachable with the default configuration — idle pods must not
//! hold the buffer frames that new ones need — and a pod past `max_pods`
//! is refused with a message, never wired and starved.
//!
//! Run as root: `cargo test --release -p podswitch-cni --test pod_density`.

mod common;

use std::net::Ipv4Addr;

use anyhow::{Context, Result, ensure};
use podswitch_lab::cluster::{Pod, SwitchOptions, ping};
use podswitch_lab::cni::netns_path;

use common::{call, nodes_with, plugin, serial};

/// Fill node 1 with `pods` pods through the CNI plugin (its daemon set to
/// `max_pods`), then check from a pod on node 2 that every one of them
/// answers, that one more is refused, and that every frame is accounted
/// for.
fn fill_node(tag: &str, max_pods: Option<u32>, pods: u8) -> Result<()> {
    let _serial = serial();
    let options = SwitchOptions {
        max_pods,
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

    // One more pod than planned for is refused, saying what to change.
    let extra = nodes.lab.netns("podextra")?;
    let path = netns_path(&extra);
    let output = plugin.run(
        &n1.ns,
        &call("ADD", "podextra", Some(&path)),
        &n1.cni_network("1.0.0"),
    )?;
    ensure!(
        !output.success && output.stdout.contains("max_pods"),
        "pod {} was not refused with a message naming max_pods: {}",
        u32::from(pods) + 1,
        output.stdout
    );
    n1.check_frames()?;
    n2.check_frames()?;
    Ok(())
}

#[test]
fn a_node_of_110_pods_reaches_every_pod_with_the_default_configuration() -> Result<()> {
    fill_node("dens110", None, 110)
}

#[test]
fn a_node_raised_to_250_pods_reaches_every_pod() -> Result<()> {
    fill_node("dens250", Some(250), 250)
}
