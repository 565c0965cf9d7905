//! The demo: a two-node pod lab running podswitch, traffic across it, and a
//! summary of what happened and what it measured. Everything lives in
//! network namespaces named `ps-demo-…` and is removed at the end, on
//! failure and on Ctrl-C too.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use podswitch_lab::cluster::{
    Pod, SwitchNode, SwitchOptions, SwitchPair, kernel_pods, node_ip, ping_stats, pod_cidr6,
    pod_ip6, udp_receive_buffer_drops,
};
use podswitch_lab::cni::CniPlugin;
use podswitch_lab::cpu::CpuMeter;
use podswitch_lab::interrupt::{catch_interrupts, check_interrupted};
use podswitch_lab::tools;
use podswitch_lab::traffic::{IPERF_PORT, IperfClient, iperf_server};
use podswitch_lab::{Lab, Netns};

/// How the lab's podswitch nodes run.
#[derive(clap::Args)]
pub struct SwitchArgs {
    /// Overlay encapsulation: vxlan or geneve.
    #[arg(long, default_value = "vxlan")]
    encap: String,
    /// Worker poll mode: adaptive or busy.
    #[arg(long, default_value = "adaptive")]
    poll_mode: String,
    /// XDP mode on the switch's interfaces: auto, native or generic.
    #[arg(long, default_value = "auto")]
    xdp_mode: String,
    /// How pods are attached (the CNI's podInterface): veth-offload (a
    /// packet socket on the veth's host end; the plugin's default on
    /// Linux 6.6+), veth (AF_XDP) or tap; all but veth carry 64 KB TCP
    /// segments.
    #[arg(long, default_value = "veth-offload", value_parser = ["veth", "veth-offload", "tap"])]
    pod_interface: String,
    /// Whether an adaptive worker lets go of its core while asleep, so
    /// the packet that wakes it wakes it on the sender's CPU (the daemons'
    /// `sleep_on_any_cpu`) [default: the daemon's, true].
    #[arg(long, value_name = "BOOL")]
    sleep_on_any_cpu: Option<bool>,
}

impl SwitchArgs {
    /// The lab's options for them: pods made by the podswitch-cni binary
    /// next to this one, as a container runtime would.
    pub fn options(&self) -> Result<SwitchOptions> {
        let cni = sibling_binary("podswitch-cni")?;
        Ok(SwitchOptions {
            encap: self.encap.clone(),
            poll_mode: self.poll_mode.clone(),
            xdp_mode: self.xdp_mode.clone(),
            cni: Some(CniPlugin {
                path: vec![cni.parent().map(PathBuf::from).unwrap_or_default()],
                binary: cni,
            }),
            pod_interface: Some(self.pod_interface.clone()),
            sleep_on_any_cpu: self.sleep_on_any_cpu,
            underlay_mtu: 1500,
            dual_stack: true,
            ..SwitchOptions::default()
        })
    }
}

/// Options of `podswitch-bench demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    switch: SwitchArgs,
    /// Seconds of each iperf3 run.
    #[arg(long, default_value_t = 3)]
    seconds: u32,
}

/// One line of the summary.
struct Row {
    what: String,
    result: String,
    /// The check failed (a ping that got no reply).
    failed: bool,
}

/// The executable `name` next to this one (the workspace's build output).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating podswitch-bench")?;
    let binary = me.with_file_name(name);
    anyhow::ensure!(
        binary.exists(),
        "{} not found: build the workspace first (cargo build --release)",
        binary.display()
    );
    Ok(binary)
}

fn step(what: &str) -> Result<()> {
    check_interrupted()?;
    eprintln!("  … {what}");
    Ok(())
}

/// Run the demo.
pub fn run(args: &DemoArgs) -> Result<()> {
    podswitch_lab::require_root()?;
    // Every program the demo runs, before it builds anything.
    tools::require_all(&[
        "ip", "ethtool", "ping", "iperf3", "timeout", "cat", "sysctl", "bridge",
    ])?;
    catch_interrupts()?;
    let binary = sibling_binary("podswitch")?;
    let mut lab = Lab::new("demo")?;
    // The daemons' configs and logs: kept to look into if the demo fails,
    // removed at the end when it passes.
    lab.keep_scratch();
    let dir = lab.scratch_dir()?;
    println!(
        "podswitch demo: two nodes, two {} pods each, {} overlay, {} polling",
        args.switch.pod_interface, args.switch.encap, args.switch.poll_mode
    );
    println!("  namespaces {}*, removed at the end\n", lab.prefix());

    step(
        "building nodes 10.1.0.11 and 10.1.0.12 on a veth underlay, podswitch on both, two pods each",
    )?;
    let options = args.switch.options()?;
    let SwitchPair {
        nodes: [mut node1, mut node2],
        pods,
    } = SwitchPair::build(&mut lab, &binary, &dir, &options)?;
    let info = node1.cli_json(&["info"])?;
    let pod_mtu = info["pod_mtu"].as_u64().unwrap_or(1450);
    let pods: Vec<Pod> = pods.into_iter().flatten().collect();
    let ports = node1.cli_json(&["ports"])?;
    let uplink_mode = ports
        .as_array()
        .and_then(|p| p.iter().find(|p| p["role"] == "uplink"))
        .map(|p| {
            format!(
                "{} XDP, {} mode",
                p["xdp_mode"].as_str().unwrap_or("?"),
                p["copy_mode"].as_str().unwrap_or("?")
            )
        })
        .unwrap_or_default();

    let mut rows = Vec::new();
    step("pinging: same node, across nodes, node to pod")?;
    // Dual-stack pods: each one's IPv6 address mirrors its IPv4 one.
    let ip6 = |pod: &Pod| {
        let [_, _, node, host] = pod.ip.octets();
        pod_ip6(node, host)
    };
    let pings: [(&Netns, IpAddr, String); 6] = [
        (
            &pods[0].ns,
            pods[1].ip.into(),
            format!("pod {} -> pod {} (same node)", pods[0].ip, pods[1].ip),
        ),
        (
            &pods[0].ns,
            pods[2].ip.into(),
            format!("pod {} -> pod {} (across nodes)", pods[0].ip, pods[2].ip),
        ),
        (
            &pods[0].ns,
            ip6(&pods[2]).into(),
            format!(
                "pod {} -> pod {} (IPv6, across nodes)",
                ip6(&pods[0]),
                ip6(&pods[2])
            ),
        ),
        (
            &pods[3].ns,
            pods[1].ip.into(),
            format!("pod {} -> pod {} (across nodes)", pods[3].ip, pods[1].ip),
        ),
        (
            &node1.ns,
            pods[3].ip.into(),
            format!(
                "node {} -> pod {} (host port, tunnel)",
                node_ip(1),
                pods[3].ip
            ),
        ),
        (
            &node1.ns,
            ip6(&pods[3]).into(),
            format!("node 1 -> pod {} (IPv6, host port, tunnel)", ip6(&pods[3])),
        ),
    ];
    step("the same ping across the kernel path (Flannel-style bridge and VXLAN), to compare")?;
    let mut kernel_lab = Lab::new("demok")?;
    let kernel = kernel_pods(&mut kernel_lab, 1500)?;
    let kernel_ping = (
        &kernel[0].ns,
        kernel[1].ip.into(),
        format!(
            "kernel path: pod {} -> pod {} (across nodes)",
            kernel[0].ip, kernel[1].ip
        ),
    );
    for (from, to, what) in pings.into_iter().chain([kernel_ping]) {
        let p = ping_stats(from, to, 5).with_context(|| format!("ping {what}"))?;
        rows.push(Row {
            what,
            result: if p.received == 0 {
                format!("FAILED: no reply to {} pings", p.sent)
            } else {
                format!(
                    "{}/{} replies, {:.3} ms average round trip",
                    p.received, p.sent, p.avg_ms
                )
            },
            failed: p.received == 0,
        });
    }

    let daemons: Vec<u32> = [&mut node1, &mut node2]
        .into_iter()
        .filter_map(|n| n.daemon().map(|d| d.pid()))
        .collect();
    let tcp = IperfClient {
        seconds: args.seconds,
        ..IperfClient::default()
    };
    // The kernel path's TCP and UDP across nodes run in the same demo, so
    // the podswitch figures have their comparison beside them.
    let across = "TCP, across nodes";
    let udp_across = "UDP 1400 B at 1 Gbit/s offered, across nodes";
    let udp = IperfClient {
        udp: Some((1_000_000_000, 1400)),
        ..tcp
    };
    let flows: [(&Pod, &Pod, &str, IperfClient, Through); 5] = [
        (
            &pods[0],
            &pods[1],
            "TCP, same node",
            tcp,
            Through::Podswitch,
        ),
        (&pods[0], &pods[2], across, tcp, Through::Podswitch),
        (&pods[0], &pods[2], udp_across, udp, Through::Podswitch),
        (&kernel[0], &kernel[1], across, tcp, Through::Kernel),
        (&kernel[0], &kernel[1], udp_across, udp, Through::Kernel),
    ];
    let mut tcp_across = [0.0f64; 2];
    for (from, to, label, client, through) in flows {
        let what = match through {
            Through::Podswitch => label.to_string(),
            Through::Kernel => format!("kernel path: {label}"),
        };
        step(&format!("iperf3 {what} ({} s)", args.seconds))?;
        let _server = iperf_server(&to.ns, IPERF_PORT)?;
        let buffer_errors = udp_receive_buffer_drops(&to.ns)?;
        let meter = CpuMeter::start(match through {
            Through::Podswitch => &daemons,
            Through::Kernel => &[],
        })?;
        let result = client
            .run(&from.ns, to.ip)
            .with_context(|| format!("iperf3 {what}: {} -> {}", from.ip, to.ip))?;
        let cpu = meter.stop()?;
        let loss = if client.udp.is_some() {
            let overflowed = udp_receive_buffer_drops(&to.ns)? - buffer_errors;
            format!(
                " received of {:.2} sent, {:.2}% lost; the receiving socket's buffer \
                 overflowed {overflowed} times",
                result.sent_bits_per_second / 1e9,
                100.0 * result.lost_packets as f64 / result.packets.max(1) as f64,
            )
        } else {
            format!(", {} retransmits", result.retransmits)
        };
        let switches = match through {
            Through::Podswitch => {
                format!("switches used {:.0}% of a core, ", cpu.processes * 100.0)
            }
            Through::Kernel => String::new(),
        };
        if label == across {
            tcp_across[through as usize] = result.gbps();
        }
        rows.push(Row {
            what: format!("{what}: {} -> {}", from.ip, to.ip),
            result: format!(
                "{:.2} Gbit/s{loss}; {switches}kernel softirq {:.0}%",
                result.gbps(),
                cpu.kernel_softirq * 100.0
            ),
            failed: false,
        });
    }

    println!("\nSetup");
    println!(
        "  node 1  10.1.0.11  pod CIDRs 10.244.1.0/24, {}  router MAC {}",
        pod_cidr6(1),
        info["router_mac"].as_str().unwrap_or("?")
    );
    println!(
        "  node 2  10.1.0.12  pod CIDRs 10.244.2.0/24, {}",
        pod_cidr6(2)
    );
    println!(
        "  pod MTU {pod_mtu}; uplink {uplink_mode}; pods made by podswitch-cni (CNI ADD) on {}",
        match args.switch.pod_interface.as_str() {
            "tap" => "TAP devices with offloads on (64 KB TCP segments)",
            "veth-offload" => {
                "veths read through packet sockets, offloads on (64 KB TCP segments)"
            }
            _ => "veths polled through AF_XDP, offloads off",
        }
    );
    println!("\nWhat happened");
    let width = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    for row in &rows {
        println!("  {:<width$}  {}", row.what, row.result);
    }
    let [switch_tcp, kernel_tcp] = tcp_across;
    println!(
        "  TCP across nodes: podswitch moved {:.2}× what the kernel path did{}",
        switch_tcp / kernel_tcp.max(f64::MIN_POSITIVE),
        match args.switch.pod_interface.as_str() {
            "tap" | "veth-offload" => "",
            _ => {
                " (veth pods cut every segment into frames; offloaded veth pods carry 64 KB \
                 segments: --pod-interface veth-offload)"
            }
        }
    );
    println!("\nSwitch counters");
    for node in [&node1, &node2] {
        summarize_node(node)?;
    }
    println!(
        "\nRun `podswitch-bench demo --help` for options; docs/operations.md explains each counter."
    );
    verdict(&rows).with_context(|| format!("the daemons' logs are in {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Which network a demo flow crosses: podswitch's nodes, or the kernel's
/// Flannel-style pair built to compare with.
#[derive(Clone, Copy)]
enum Through {
    Podswitch = 0,
    Kernel = 1,
}

/// Fail, naming each, if a check of the summary failed.
fn verdict(rows: &[Row]) -> Result<()> {
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.failed)
        .map(|r| r.what.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("the demo failed: no ping reply for {}", failed.join("; "));
    }
    Ok(())
}

/// Print a node's traffic, drops by reason and frame accounting.
fn summarize_node(node: &SwitchNode) -> Result<()> {
    let stats = node.cli_json(&["stats"])?;
    let mut rx = 0;
    let mut tx = 0;
    let mut drops: Vec<String> = Vec::new();
    if let Some(ports) = stats["ports"].as_object() {
        for (name, port) in ports {
            rx += port["rx_packets"].as_u64().unwrap_or(0);
            tx += port["tx_packets"].as_u64().unwrap_or(0);
            if let Some(reasons) = port["drops"].as_object() {
                for (reason, n) in reasons {
                    drops.push(format!("{reason} {n} on {name}"));
                }
            }
            if let Some(n) = port["interface_rx_dropped"].as_u64().filter(|&n| n > 0) {
                drops.push(format!("interface rx_dropped {n} on {name}"));
            }
            if let Some(kernel) = port["kernel"].as_object() {
                for (reason, n) in kernel {
                    if n.as_u64() > Some(0) {
                        drops.push(format!("kernel {reason} {n} on {name}"));
                    }
                }
            }
        }
    }
    let frames = &stats["frames"];
    println!(
        "  node {}: {rx} frames received, {tx} sent; drops: {}",
        node.index,
        if drops.is_empty() {
            "none".to_string()
        } else {
            drops.join(", ")
        }
    );
    println!(
        "          buffer frames: {} total = {} free + {} on fill rings + {} in flight/queued; {} accounting violations",
        frames["total"],
        frames["free"],
        frames["fill"].as_u64().unwrap_or(0) + frames["rx"].as_u64().unwrap_or(0),
        frames["in_flight"].as_u64().unwrap_or(0)
            + frames["queued"].as_u64().unwrap_or(0)
            + frames["tx"].as_u64().unwrap_or(0)
            + frames["completion"].as_u64().unwrap_or(0),
        frames["violations"]
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(what: &str, failed: bool) -> Row {
        Row {
            what: what.into(),
            result: String::new(),
            failed,
        }
    }

    #[test]
    fn a_ping_without_replies_fails_the_demo_and_is_named() {
        assert!(verdict(&[row("same node", false), row("TCP", false)]).is_ok());
        let error = verdict(&[
            row("same node", false),
            row("across nodes", true),
            row("node to pod", true),
        ])
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            "the demo failed: no ping reply for across nodes; node to pod"
        );
    }
}
