//! What the CNI lab tests share: the plugin and daemon binaries, a
//! two-node lab with running switches, and checks that nothing of an
//! attachment is left behind.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, Result, bail, ensure};
use podswitch_lab::cluster::{
    PeerEntry, Pod, SwitchNode, SwitchOptions, UPLINK, add_underlay_ipv6, connect_underlay,
    expect_iperf, set_queues,
};
use podswitch_lab::cni::{CniCall, CniPlugin, netns_path};
use podswitch_lab::traffic::IperfClient;
use podswitch_lab::{Lab, Netns};
use serde_json::{Value, json};

/// One lab at a time on a 2-core machine.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The plugin as built by this workspace, with Debian's plugins on
/// `CNI_PATH` for delegation and chaining.
pub fn plugin() -> CniPlugin {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_podswitch-cni"));
    CniPlugin {
        path: vec![
            binary.parent().map(PathBuf::from).unwrap_or_default(),
            "/usr/lib/cni".into(),
        ],
        binary,
    }
}

/// The `podswitch` daemon built beside the plugin.
pub fn daemon_binary() -> Result<PathBuf> {
    let cni = PathBuf::from(env!("CARGO_BIN_EXE_podswitch-cni"));
    let daemon = cni.with_file_name("podswitch");
    ensure!(
        daemon.exists(),
        "{} is not built: run the tests with `cargo test --workspace`",
        daemon.display()
    );
    Ok(daemon)
}

/// Nodes 1 and 2 on a veth underlay (MTU `SwitchOptions::underlay_mtu`); podswitch on the first `switches`
/// of them, peered with each other. The lab removes both namespaces.
pub struct Nodes {
    /// The running switches.
    pub switches: Vec<SwitchNode>,
    /// Node 2's namespace, whether or not it runs a switch.
    pub n2: Netns,
    /// The lab, owning the namespaces and the scratch directory; dropped
    /// last, after the daemons, which write their state as they stop.
    pub lab: Lab,
}

/// Start [`Nodes`]: lab namespaces named after `tag`.
pub fn nodes(tag: &str, switches: usize) -> Result<Nodes> {
    nodes_with(tag, switches, &SwitchOptions::default())
}

/// Start [`Nodes`] whose switches run with `options`.
pub fn nodes_with(tag: &str, switches: usize, options: &SwitchOptions) -> Result<Nodes> {
    let mut lab = Lab::new(tag)?;
    let n1 = lab.netns("n1")?;
    let n2 = lab.netns("n2")?;
    connect_underlay(&n1, 1, &n2, 2, options.underlay_mtu)?;
    if options.underlay_ipv6 {
        add_underlay_ipv6(&n1, 1)?;
        add_underlay_ipv6(&n2, 2)?;
    }
    if let Some(workers) = options.workers.filter(|&w| w > 1) {
        // A queue of the uplink for each worker, before the daemons
        // share them out.
        for ns in [&n1, &n2] {
            set_queues(ns, UPLINK, workers)?;
        }
    }
    let dir = lab.scratch_dir()?;
    let binary = daemon_binary()?;
    let peer = |index| PeerEntry {
        index,
        vtep_mac: None,
    };
    let peers_of_1 = if switches > 1 {
        vec![peer(2)]
    } else {
        Vec::new()
    };
    let mut started = vec![SwitchNode::start(
        n1,
        1,
        &binary,
        &dir,
        options,
        &peers_of_1,
    )?];
    if switches > 1 {
        started.push(SwitchNode::start(
            n2.clone(),
            2,
            &binary,
            &dir,
            options,
            &[peer(1)],
        )?);
    }
    Ok(Nodes {
        lab,
        switches: started,
        n2,
    })
}

/// The podswitch-cni entry of a conflist: the network configuration
/// `conf` without the list's own `cniVersion` and `name`, declaring the
/// `ips` and `mac` capabilities (a runtime passes a requested address and
/// MAC in `runtimeConfig` only to a plugin that declares them).
pub fn plugin_entry(conf: &Value) -> Value {
    let mut entry = conf.clone();
    if let Some(fields) = entry.as_object_mut() {
        fields.remove("cniVersion");
        fields.remove("name");
    }
    entry["capabilities"] = json!({"ips": true, "mac": true});
    entry
}

/// A call for interface `eth0`.
pub fn call<'a>(command: &'a str, container_id: &'a str, netns: Option<&'a Path>) -> CniCall<'a> {
    CniCall {
        command,
        container_id,
        netns,
        ifname: "eth0",
        args: "",
    }
}

/// TCP from `from` to `to` with `streams` streams; its rate in Gbit/s.
pub fn tcp(from: &Pod, to: &Pod, streams: u32, what: &str) -> Result<f64> {
    let client = IperfClient {
        streams,
        ..IperfClient::default()
    };
    Ok(expect_iperf(&client, from, to, what)?.gbps())
}

/// The first of `node`'s ports (`podswitch ports`) that `which` picks.
pub fn find_port(node: &SwitchNode, which: impl Fn(&Value) -> bool) -> Result<Option<Value>> {
    let ports = node.cli_json(&["ports"])?;
    Ok(ports
        .as_array()
        .context("ports")?
        .iter()
        .find(|p| which(p))
        .cloned())
}

/// `node`'s port for `pod`, with its counters, found by the pod's address.
pub fn port_of(node: &SwitchNode, pod: &Pod) -> Result<Value> {
    find_port(node, |p| p["ip"] == pod.ip.to_string())?
        .with_context(|| format!("no port for {}", pod.ip))
}

/// A port's offload counter `counter` (`super_frames_sent`, …).
pub fn offload(port: &Value, counter: &str) -> u64 {
    port["counters"]["offload"][counter].as_u64().unwrap_or(0)
}

/// DEL the pods [`SwitchNode::add_cni_pod_as`] made on `node`, each
/// given with its `n` and `podInterface`: each loses its `eth0`, and the
/// switch keeps no pod port.
pub fn delete_cni_pods(node: &SwitchNode, pods: &[(&Pod, u8, &str)]) -> Result<()> {
    let plugin = plugin();
    for &(pod, n, kind) in pods {
        let mut network = node.cni_network("1.0.0");
        network["podInterface"] = kind.into();
        let path = netns_path(&pod.ns);
        let container_id = format!("pod{}{n}", node.index);
        plugin.expect_ok(&node.ns, &call("DEL", &container_id, Some(&path)), &network)?;
        let links = pod.ns.ip(&["-o", "link", "show"])?;
        ensure!(
            !links.contains("eth0"),
            "pod {} keeps eth0 after DEL:\n{links}",
            pod.ip
        );
    }
    let ports = pod_ports(node)?;
    ensure!(ports.is_empty(), "ports left: {ports:?}");
    Ok(())
}

/// Interfaces in `ns` whose names the plugin makes (`ps` + 12 hex digits).
pub fn plugin_links(ns: &Netns) -> Result<Vec<String>> {
    let text = ns.ip(&["-o", "link", "show"])?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.len() == 14 && n.starts_with("ps"))
        .collect())
}

/// Address files the built-in IPAM holds for `network` in `data_dir`.
pub fn allocations(config: &Value) -> Vec<String> {
    let dir = Path::new(config["dataDir"].as_str().unwrap_or_default()).join("podnet");
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The pod ports on `node`'s switch, as `podswitch ports` describes them.
fn pod_port_list(node: &SwitchNode) -> Result<Vec<Value>> {
    let mut ports = match node.cli_json(&["ports"])? {
        Value::Array(ports) => ports,
        other => bail!("podswitch ports answered {other}"),
    };
    ports.retain(|p| p["role"] == "pod");
    Ok(ports)
}

/// The kind (`tap`, `afxdp`) of each pod port on `node`'s switch.
pub fn pod_port_kinds(node: &SwitchNode) -> Result<Vec<String>> {
    Ok(pod_port_list(node)?
        .iter()
        .map(|p| p["kind"].as_str().unwrap_or_default().to_string())
        .collect())
}

/// The names of the pod ports on `node`'s switch.
pub fn pod_ports(node: &SwitchNode) -> Result<Vec<String>> {
    Ok(pod_port_list(node)?
        .iter()
        .map(|p| p["name"].as_str().unwrap_or_default().to_string())
        .collect())
}

/// The address and MAC (lower case) of every pod port on `node`'s switch.
pub fn pod_port_addresses(node: &SwitchNode) -> Result<BTreeSet<(String, String)>> {
    Ok(pod_port_list(node)?
        .iter()
        .map(|p| {
            let field = |k: &str| p[k].as_str().unwrap_or_default().to_lowercase();
            (field("ip"), field("mac"))
        })
        .collect())
}

/// Nothing of any attachment is left on `node`: no veth, no port, no
/// address.
pub fn nothing_left(node: &SwitchNode, config: &Value) -> Result<()> {
    let links = plugin_links(&node.ns)?;
    ensure!(links.is_empty(), "veths left behind: {links:?}");
    let ports = pod_ports(node)?;
    ensure!(ports.is_empty(), "switch ports left behind: {ports:?}");
    let addresses = allocations(config);
    ensure!(
        addresses.is_empty(),
        "addresses left allocated: {addresses:?}"
    );
    Ok(())
}
