//! The lab testbed of the design brief: nodes are namespaces joined by an
//! underlay (a veth pair for two nodes, a bridge in a fabric namespace for
//! more); node i has `10.1.0.(10+i)/24` and pod CIDR `10.244.i.0/24`. A
//! node runs a podswitch daemon, or is a kernel node (bridge + vxlan,
//! Flannel-style). Pods are namespaces with a veth into their node.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cni::{CniPlugin, podswitch_network};
use crate::kernel_node::KernelVxlan;
use crate::membership::wait_for;
use crate::netns::{Lab, Netns, format_mac};
use crate::process::Process;
use crate::traffic::{IperfClient, IperfResult, iperf_server};

/// The underlay interface of every node.
pub const UPLINK: &str = "ul0";
/// VNI of the lab overlay.
pub const VNI: u32 = 1;

/// Node `i`'s underlay address.
pub fn node_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 0, 10 + i)
}

/// Node `i`'s IPv6 underlay address ([`add_underlay_ipv6`]).
pub fn node_ip6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 10 + u16::from(i))
}

/// Give node `i`'s [`UPLINK`] (in `ns`) its IPv6 underlay address,
/// [`node_ip6`], beside its IPv4 one.
pub fn add_underlay_ipv6(ns: &Netns, i: u8) -> Result<()> {
    let cidr = format!("{}/64", node_ip6(i));
    ns.ip(&["-6", "addr", "add", &cidr, "dev", UPLINK, "nodad"])?;
    Ok(())
}

/// Node `i`'s pod CIDR.
pub fn pod_cidr(i: u8) -> String {
    format!("10.244.{i}.0/24")
}

/// Node `i`'s IPv6 pod CIDR, with [`SwitchOptions::dual_stack`].
pub fn pod_cidr6(i: u8) -> String {
    format!("fd00:10:244:{i}::/64")
}

/// The IPv6 address of node `node`'s pod number `host` (10.244.node.host)
/// on dual-stack nodes: its IPv4 offset in [`pod_cidr6`].
pub fn pod_ip6(node: u8, host: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, node.into(), 0, 0, 0, host.into())
}

/// Node `i`'s pod gateway.
pub fn pod_gateway(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i, 1)
}

/// The router MAC podswitch derives for node `i` (`0a:70` + node IP).
pub fn router_mac(i: u8) -> String {
    let [a, b, c, d] = node_ip(i).octets();
    format_mac([0x0a, 0x70, a, b, c, d])
}

/// The MAC a kernel node gives its vxlan device (its VtepMAC).
pub fn kernel_vtep_mac(i: u8) -> String {
    format_mac([0x02, 0x6b, 0x76, 0, 0, i])
}

/// Join node namespaces `a` and `b` by a veth pair named [`UPLINK`] on both
/// sides, addressed as nodes `ia` and `ib`, offloads off (frames must cross
/// as the wire would carry them: no partial checksums, no super-frames).
pub fn connect_underlay(a: &Netns, ia: u8, b: &Netns, ib: u8, mtu: u32) -> Result<()> {
    a.add_veth(UPLINK, b, UPLINK)?;
    for (ns, i) in [(a, ia), (b, ib)] {
        let cidr = format!("{}/24", node_ip(i));
        ns.ip(&["addr", "add", &cidr, "dev", UPLINK])?;
        ns.ip(&["link", "set", UPLINK, "mtu", &mtu.to_string(), "up"])?;
        offloads_off(ns, UPLINK)?;
    }
    Ok(())
}

/// Join node namespaces `nodes` (each with its index) through a bridge in
/// a new namespace `fabric` of `lab`: each gets [`UPLINK`], addressed as
/// node i, offloads off; the bridge itself has `10.1.0.2/24`, where a
/// service of the lab (etcd) can listen. The fabric namespace.
pub fn fabric(lab: &mut Lab, nodes: &[(&Netns, u8)], mtu: u32) -> Result<Netns> {
    let fabric = lab.netns("fabric")?;
    let mtu = mtu.to_string();
    fabric.ip(&["link", "add", "br0", "mtu", &mtu, "type", "bridge"])?;
    fabric.ip(&["addr", "add", &format!("{FABRIC_IP}/24"), "dev", "br0"])?;
    fabric.ip(&["link", "set", "br0", "up"])?;
    for (ns, i) in nodes {
        let port = format!("f{i}");
        fabric.add_veth(&port, ns, UPLINK)?;
        fabric.ip(&["link", "set", &port, "mtu", &mtu, "master", "br0", "up"])?;
        offloads_off(&fabric, &port)?;
        ns.ip(&["addr", "add", &format!("{}/24", node_ip(*i)), "dev", UPLINK])?;
        ns.ip(&["link", "set", UPLINK, "mtu", &mtu, "up"])?;
        offloads_off(ns, UPLINK)?;
    }
    Ok(fabric)
}

/// The fabric bridge's own address (see [`fabric`]).
pub const FABRIC_IP: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

/// Give `ifname` (a veth) `queues` RX and TX queues: the peer's flows
/// spread over them by its TX queue choice, as RSS spreads them on a NIC.
pub fn set_queues(ns: &Netns, ifname: &str, queues: usize) -> Result<()> {
    let n = queues.to_string();
    ns.run("ethtool", &["-L", ifname, "rx", &n, "tx", &n])
        .map(drop)
}

/// Turn off TX checksum offload, TSO and GSO on `ifname`.
pub fn offloads_off(ns: &Netns, ifname: &str) -> Result<()> {
    ns.run(
        "ethtool",
        &["-K", ifname, "tx", "off", "tso", "off", "gso", "off"],
    )
    .map(drop)
}

/// Settings of a podswitch node beyond the lab's fixed layout.
#[derive(Debug, Clone)]
pub struct SwitchOptions {
    /// "vxlan" or "geneve".
    pub encap: String,
    /// "adaptive" or "busy".
    pub poll_mode: String,
    /// "auto", "native" or "generic".
    pub xdp_mode: String,
    /// Make pods with this CNI plugin (as a runtime would) instead of a
    /// veth and `podswitch port add`.
    pub cni: Option<CniPlugin>,
    /// The CNI network's `podInterface` ("tap" or "veth"); the plugin's
    /// default when `None`.
    pub pod_interface: Option<String>,
    /// The MTU of each node's uplink `ul0` (the underlay), which the
    /// daemon takes as its underlay MTU; pods get it less the tunnel
    /// overhead.
    pub underlay_mtu: u32,
    /// The daemon's `max_pods`; its default (110) when `None`.
    pub max_pods: Option<u32>,
    /// The daemon's `tunnel_offload` ("auto", "udp-segment" or "off"); its default
    /// (auto) when `None`.
    pub tunnel_offload: Option<String>,
    /// The daemon's `tunnel_receive` ("auto" or "afxdp"); its default
    /// (auto) when `None`.
    pub tunnel_receive: Option<String>,
    /// Workers per node, on consecutive CPUs from the node's first one
    /// (modulo the CPUs there are); one when `None`.
    pub workers: Option<usize>,
    /// The daemon's `spin_us` (adaptive polling's spin window); its
    /// default when `None`.
    pub spin_us: Option<u32>,
    /// The daemon's `overload_nice` (a worker's nice value while it is
    /// behind); its default when `None`.
    pub overload_nice: Option<i32>,
    /// The daemon's `sleep_on_any_cpu` (whether an adaptive worker lets
    /// go of its core while asleep); its default when `None`.
    pub sleep_on_any_cpu: Option<bool>,
    /// The CPU every node's first worker is pinned to; node `i`'s goes to
    /// CPU `i - 1` when `None`.
    pub worker_cpu: Option<usize>,
    /// Serve Prometheus metrics on this port of the node's underlay
    /// address (`metrics_address`); off when `None`.
    pub metrics_port: Option<u16>,
    /// TOML added to every node's configuration before its peers, e.g.
    /// `membership = "etcd"` and its `[etcd]` table.
    pub membership: Option<String>,
    /// Dual-stack pods: every node gets an IPv6 pod CIDR
    /// ([`pod_cidr6`]), and its peers' are routed to them.
    pub dual_stack: bool,
    /// Nodes' VTEPs are their IPv6 underlay addresses ([`node_ip6`]; the
    /// caller adds them with [`add_underlay_ipv6`]).
    pub underlay_ipv6: bool,
}

impl Default for SwitchOptions {
    /// VXLAN, adaptive polling, XDP mode chosen automatically, veth pods,
    /// a 1500-byte underlay.
    fn default() -> SwitchOptions {
        SwitchOptions {
            encap: "vxlan".into(),
            poll_mode: "adaptive".into(),
            xdp_mode: "auto".into(),
            cni: None,
            pod_interface: None,
            underlay_mtu: 1500,
            max_pods: None,
            tunnel_offload: None,
            tunnel_receive: None,
            workers: None,
            spin_us: None,
            overload_nice: None,
            sleep_on_any_cpu: None,
            worker_cpu: None,
            metrics_port: None,
            membership: None,
            dual_stack: false,
            underlay_ipv6: false,
        }
    }
}

impl SwitchOptions {
    /// Node `index`'s VTEP: its IPv4 or, with `underlay_ipv6`, its IPv6
    /// underlay address.
    pub fn vtep(&self, index: u8) -> IpAddr {
        if self.underlay_ipv6 {
            node_ip6(index).into()
        } else {
            node_ip(index).into()
        }
    }

    /// The cores of node `index`'s workers (`cores`): consecutive CPUs
    /// from `worker_cpu`, or from CPU `index - 1`, modulo the CPUs there
    /// are.
    pub fn worker_cores(&self, index: u8) -> Vec<usize> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let first = self
            .worker_cpu
            .unwrap_or(usize::from(index.saturating_sub(1)));
        (0..self.workers.unwrap_or(1).max(1))
            .map(|w| (first + w) % cpus)
            .collect()
    }

    /// The router MAC podswitch derives for node `index` from its VTEP
    /// ([`router_mac`] on an IPv4 underlay).
    pub fn router_mac(&self, index: u8) -> String {
        podswitch_control::MacAddr::derived_from(self.vtep(index)).to_string()
    }

    /// Pods made by the `podswitch-cni` built beside the daemon `binary`,
    /// and the switch translating the Services of `services_file` itself
    /// (`service_translation = "switch"`).
    pub fn translating_services(binary: &Path, services_file: &Path) -> Result<SwitchOptions> {
        let dir = binary.parent().context("the binaries' directory")?;
        Ok(SwitchOptions {
            cni: Some(CniPlugin::built_in(dir)?),
            membership: Some(format!(
                "service_translation = \"switch\"\nservices_file = \"{}\"",
                services_file.display()
            )),
            ..SwitchOptions::default()
        })
    }
}

/// A peer as a podswitch node's configuration lists it.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    /// The peer's node index.
    pub index: u8,
    /// Its VTEP MAC, for kernel peers.
    pub vtep_mac: Option<String>,
}

/// A podswitch daemon running in a node namespace.
pub struct SwitchNode {
    /// The node's namespace.
    pub ns: Netns,
    /// The node's index.
    pub index: u8,
    /// The daemon's control socket.
    pub socket: PathBuf,
    binary: PathBuf,
    dir: PathBuf,
    daemon: Option<Process>,
    pod_interface: Option<String>,
    /// Whether its pods are dual-stack ([`SwitchOptions::dual_stack`]).
    dual_stack: bool,
}

impl SwitchNode {
    /// Write node `index`'s configuration into `dir` and start `binary`
    /// (the `podswitch` executable) as its daemon inside `ns`, its worker
    /// pinned to CPU `index - 1` (modulo the CPUs there are) unless
    /// `options` names one; returns once the daemon answers on its
    /// control socket.
    pub fn start(
        ns: Netns,
        index: u8,
        binary: &Path,
        dir: &Path,
        options: &SwitchOptions,
        peers: &[PeerEntry],
    ) -> Result<SwitchNode> {
        let cores = options
            .worker_cores(index)
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::create_dir_all(dir)?;
        let socket = dir.join(format!("node{index}.sock"));
        let mut config = format!(
            "node_ip = \"{}\"\nuplink = \"{UPLINK}\"\npod_cidr = \"{}\"\nvni = {VNI}\n\
             encap = \"{}\"\npoll_mode = \"{}\"\nxdp_mode = \"{}\"\ncores = [{}]\n\
             control_socket = \"{}\"\nstate_dir = \"{}\"\ncheck_frames = true\n",
            options.vtep(index),
            pod_cidr(index),
            options.encap,
            options.poll_mode,
            options.xdp_mode,
            cores,
            socket.display(),
            dir.join(format!("node{index}-state")).display(),
        );
        if options.dual_stack {
            config.push_str(&format!("pod_cidr6 = \"{}\"\n", pod_cidr6(index)));
        }
        if let Some(max_pods) = options.max_pods {
            config.push_str(&format!("max_pods = {max_pods}\n"));
        }
        if let Some(mode) = &options.tunnel_offload {
            config.push_str(&format!("tunnel_offload = \"{mode}\"\n"));
        }
        if let Some(mode) = &options.tunnel_receive {
            config.push_str(&format!("tunnel_receive = \"{mode}\"\n"));
        }
        if let Some(nice) = options.overload_nice {
            config.push_str(&format!("overload_nice = {nice}\n"));
        }
        if let Some(anywhere) = options.sleep_on_any_cpu {
            config.push_str(&format!("sleep_on_any_cpu = {anywhere}\n"));
        }
        if let Some(spin_us) = options.spin_us {
            config.push_str(&format!("spin_us = {spin_us}\n"));
        }
        if let Some(port) = options.metrics_port {
            config.push_str(&format!(
                "metrics_address = \"{}:{port}\"\n",
                node_ip(index)
            ));
        }
        if let Some(membership) = &options.membership {
            config.push_str(membership);
            config.push('\n');
        }
        for peer in peers {
            config.push_str(&format!(
                "[[peers]]\nnode_ip = \"{}\"\npod_cidr = \"{}\"\n",
                options.vtep(peer.index),
                pod_cidr(peer.index)
            ));
            if options.dual_stack {
                config.push_str(&format!("pod_cidr6 = \"{}\"\n", pod_cidr6(peer.index)));
            }
            if let Some(mac) = &peer.vtep_mac {
                config.push_str(&format!("vtep_mac = \"{mac}\"\n"));
            }
        }
        let mut node = SwitchNode {
            ns,
            index,
            socket,
            binary: binary.into(),
            dir: dir.into(),
            daemon: None,
            pod_interface: options.pod_interface.clone(),
            dual_stack: options.dual_stack,
        };
        std::fs::write(node.config_path(), config)?;
        node.launch()?;
        Ok(node)
    }

    /// The /proc directory of the daemon's worker thread `index`
    /// (`worker-<index>`): its `status`, `stat`, `comm`.
    pub fn worker_task(&self, index: usize) -> Result<PathBuf> {
        let pid = self.pid().context("the daemon is not running")?;
        let name = format!("worker-{index}");
        let tasks = PathBuf::from(format!("/proc/{pid}/task"));
        for task in std::fs::read_dir(&tasks)? {
            let task = task?.path();
            if std::fs::read_to_string(task.join("comm"))?.trim() == name {
                return Ok(task);
            }
        }
        bail!("daemon {pid} has no {name} thread")
    }

    /// The daemon's configuration file (edit it, then [`Self::launch`]
    /// again, to restart the daemon with another configuration).
    pub fn config_path(&self) -> PathBuf {
        self.dir.join(format!("node{}.toml", self.index))
    }

    /// Start (or restart) the daemon and wait for it to answer.
    pub fn launch(&mut self) -> Result<()> {
        let config = self.config_path();
        let log = std::fs::File::create(self.log_path())?;
        let mut cmd = self.ns.command(&self.binary.to_string_lossy())?;
        cmd.args(["daemon", "--config"]).arg(&config);
        let daemon =
            Process::spawn_logged(&mut cmd, &format!("podswitch on node {}", self.index), log)?;
        self.daemon = Some(daemon);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.cli(&["info"]).is_ok() {
                return Ok(());
            }
            if !self.daemon.as_mut().is_some_and(Process::is_running) {
                bail!(
                    "podswitch on node {} exited at startup:\n{}",
                    self.index,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "podswitch on node {} did not answer within 15 s:\n{}",
                    self.index,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon process, while it runs.
    pub fn daemon(&mut self) -> Option<&mut Process> {
        self.daemon.as_mut()
    }

    /// Stop the daemon with SIGTERM; true if it exited within 10 s.
    pub fn stop(&mut self) -> bool {
        match self.daemon.take() {
            Some(mut d) => {
                d.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10))
            }
            None => true,
        }
    }

    /// Path of the daemon's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("node{}.log", self.index))
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Run the `podswitch` CLI against this node; its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(&self.binary)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("running the podswitch CLI")?;
        if !output.status.success() {
            bail!(
                "podswitch {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Create pod number `host` on this node (a veth pod, see [`veth_pod`])
    /// and add its port to the switch.
    pub fn add_veth_pod(&self, lab: &mut Lab, host: u8, mtu: u32) -> Result<Pod> {
        let pod = veth_pod(lab, &self.ns, self.index, host, mtu)?;
        let (ip, ip6) = (pod.ip.to_string(), pod_ip6(self.index, host).to_string());
        let mut args = vec!["port", "add", &pod.port, "--ip", &ip, "--mac", &pod.mac];
        if self.dual_stack {
            // As the CNI plugin sets a dual-stack pod up.
            let eth0 = |key: &str| format!("net.ipv6.conf.eth0.{key}");
            for setting in [eth0("disable_ipv6=0"), eth0("accept_dad=0")] {
                pod.ns.run("sysctl", &["-qw", &setting])?;
            }
            pod.ns
                .ip(&["-6", "addr", "add", &format!("{ip6}/128"), "dev", "eth0"])?;
            pod.ns.ip(&[
                "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
            ])?;
            args.extend(["--ip6", &ip6]);
        }
        self.cli(&args)?;
        Ok(pod)
    }

    /// The podswitch-cni network configuration for this node's pods (with
    /// the node's `podInterface`, if its options set one).
    pub fn cni_network(&self, cni_version: &str) -> serde_json::Value {
        let mut network = podswitch_network(
            cni_version,
            &self.socket,
            &self.dir.join(format!("node{}-ipam", self.index)),
        );
        if let Some(kind) = &self.pod_interface {
            network["podInterface"] = kind.as_str().into();
        }
        network
    }

    /// Create pod `pod<node><n>` through the CNI plugin.
    pub fn add_cni_pod(&self, lab: &mut Lab, plugin: &CniPlugin, n: u8) -> Result<Pod> {
        let name = format!("pod{}{n}", self.index);
        Ok(plugin
            .add_pod(lab, &self.ns, &name, &self.cni_network("1.0.0"))?
            .0)
    }

    /// Create pod `pod<node><n>` through the CNI plugin, attached as
    /// `pod_interface` ("tap" or "veth") whatever the node's default.
    pub fn add_cni_pod_as(
        &self,
        lab: &mut Lab,
        plugin: &CniPlugin,
        n: u8,
        pod_interface: &str,
    ) -> Result<Pod> {
        let name = format!("pod{}{n}", self.index);
        let mut network = self.cni_network("1.0.0");
        network["podInterface"] = pod_interface.into();
        Ok(plugin.add_pod(lab, &self.ns, &name, &network)?.0)
    }

    /// The process id of the running daemon.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(Process::pid)
    }

    /// Leave the daemon running after this value is dropped; its PID.
    pub fn detach(&mut self) -> Option<u32> {
        self.daemon.take().map(Process::detach)
    }

    /// The CLI's JSON answer.
    pub fn cli_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        Ok(serde_json::from_str(&self.cli(&full)?)?)
    }

    /// The buffer frames the daemon has (`podswitch info`).
    pub fn frame_count(&self) -> Result<u64> {
        self.cli_json(&["info"])?["frame_count"]
            .as_u64()
            .context("no frame_count in `podswitch info`")
    }

    /// Every buffer frame is somewhere, and no move was impossible (the
    /// lab's daemons check every move).
    pub fn check_frames(&self) -> Result<()> {
        let frames = &self.cli_json(&["stats"])?["frames"];
        if frames["checked"] != true {
            bail!("frame checking is off on node {}: {frames}", self.index);
        }
        if frames["violations"] != 0 {
            bail!(
                "frame accounting violations on node {}: {frames}",
                self.index
            );
        }
        if frames["total"].as_u64() != Some(self.frame_count()?) {
            bail!("frames missing on node {}: {frames}", self.index);
        }
        Ok(())
    }

    /// What the daemon holds now: memory, fds and buffer frames. Fails if
    /// a frame is unaccounted for.
    pub fn footprint(&self) -> Result<Footprint> {
        let pid = self.pid().context("the daemon is not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let resident_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS in /proc/<pid>/status")?;
        // Before the stats request, which holds descriptors of its own
        // for a moment.
        let open_fds = settled_fd_count(pid)?;
        let frames = &self.cli_json(&["stats"])?["frames"];
        if frames["violations"] != 0 {
            bail!(
                "frame accounting violations on node {}: {frames}",
                self.index
            );
        }
        let count = |key: &str| frames[key].as_u64().unwrap_or_default();
        let idle_frames = count("free") + count("fill");
        Ok(Footprint {
            resident_kib,
            open_fds,
            idle_frames,
            busy_frames: count("total").saturating_sub(idle_frames),
        })
    }
}

/// Process `pid`'s open descriptors once two counts 100 ms apart agree
/// (at most a second): a control connection the daemon is still closing,
/// or a netlink socket of a request it just answered, is not what it holds.
fn settled_fd_count(pid: u32) -> Result<usize> {
    let count = || -> Result<usize> { Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count()) };
    let mut last = count()?;
    for _ in 0..10 {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let now = count()?;
        if now == last {
            break;
        }
        last = now;
    }
    Ok(last)
}

/// What a daemon holds (see [`SwitchNode::footprint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Resident memory.
    pub resident_kib: u64,
    /// Open file descriptors.
    pub open_fds: usize,
    /// Buffer frames free or waiting on fill rings.
    pub idle_frames: u64,
    /// Buffer frames anywhere else (rings, in flight).
    pub busy_frames: u64,
}

/// The lab of the demo and the tests: podswitch nodes 1 and 2 on a veth
/// underlay, peered with each other, with two pods on each (10.244.i.2 and
/// .3, which is also what the CNI plugin's IPAM hands out first).
pub struct SwitchPair {
    /// Nodes 1 and 2.
    pub nodes: [SwitchNode; 2],
    /// Pods 10.244.1.2, 10.244.1.3 and 10.244.2.2, 10.244.2.3.
    pub pods: [[Pod; 2]; 2],
}

impl SwitchPair {
    /// Build it in `lab`, running `binary`, keeping files in `dir`.
    pub fn build(
        lab: &mut Lab,
        binary: &Path,
        dir: &Path,
        options: &SwitchOptions,
    ) -> Result<SwitchPair> {
        let n1 = lab.netns("n1")?;
        let n2 = lab.netns("n2")?;
        connect_underlay(&n1, 1, &n2, 2, options.underlay_mtu)?;
        let peer = |index| {
            [PeerEntry {
                index,
                vtep_mac: None,
            }]
        };
        let node1 = SwitchNode::start(n1, 1, binary, dir, options, &peer(2))?;
        let node2 = SwitchNode::start(n2, 2, binary, dir, options, &peer(1))?;
        let mtu = node1.cli_json(&["info"])?["pod_mtu"]
            .as_u64()
            .unwrap_or(1450) as u32;
        let mut pod = |node: &SwitchNode, n: u8| match &options.cni {
            Some(plugin) => node.add_cni_pod(lab, plugin, n),
            None => node.add_veth_pod(lab, n, mtu),
        };
        let pods = [
            [pod(&node1, 2)?, pod(&node1, 3)?],
            [pod(&node2, 2)?, pod(&node2, 3)?],
        ];
        Ok(SwitchPair {
            nodes: [node1, node2],
            pods,
        })
    }
}

/// A pod: a namespace with one interface, `eth0`, into its node.
#[derive(Debug, Clone)]
pub struct Pod {
    /// The pod's namespace.
    pub ns: Netns,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its MAC.
    pub mac: String,
    /// The switch's port for it: a veth pod's host end (an interface in
    /// the node's namespace), or a TAP pod's port, which has no interface
    /// on the node.
    pub port: String,
}

/// Create pod number `host` of node `node` (its namespace `node_ns`): a
/// namespace holding `eth0`, a veth whose other end `host_ifname` stays in
/// the node, the pod's address, MAC, MTU and default route via the
/// gateway. The node end is left for the caller to attach.
fn pod_namespace(
    lab: &mut Lab,
    node_ns: &Netns,
    node: u8,
    host: u8,
    host_ifname: String,
    mtu: u32,
) -> Result<Pod> {
    let ns = lab.netns(&format!("pod{node}{host}"))?;
    let ip = Ipv4Addr::new(10, 244, node, host);
    let mac = format_mac([0x0a, 0x58, 10, 244, node, host]);
    let mtu = mtu.to_string();
    node_ns.add_veth(&host_ifname, &ns, "eth0")?;
    node_ns.ip(&["link", "set", &host_ifname, "mtu", &mtu])?;
    ns.ip(&["link", "set", "eth0", "address", &mac, "mtu", &mtu, "up"])?;
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        &pod_gateway(node).to_string(),
        "dev",
        "eth0",
    ])?;
    Ok(Pod {
        ns,
        ip,
        mac,
        port: host_ifname,
    })
}

/// Create a pod for a podswitch node (see [`pod_namespace`]): its node end
/// `vp<node>x<host>` up and its offloads off, as AF_XDP needs.
pub fn veth_pod(lab: &mut Lab, node_ns: &Netns, node: u8, host: u8, mtu: u32) -> Result<Pod> {
    let pod = pod_namespace(lab, node_ns, node, host, format!("vp{node}x{host}"), mtu)?;
    node_ns.ip(&["link", "set", &pod.port, "up"])?;
    offloads_off(&pod.ns, "eth0")?;
    Ok(pod)
}

/// A podswitch node (node 1, started from `binary` with `options`, its
/// files in `dir`) and a kernel VXLAN node (node 2) in two new namespaces
/// of `lab`, joined by an underlay of `options.underlay_mtu`, each the
/// other's peer.
pub fn switch_and_kernel_node(
    lab: &mut Lab,
    binary: &Path,
    dir: &Path,
    options: &SwitchOptions,
) -> Result<(SwitchNode, KernelNode)> {
    let n1 = lab.netns("n1")?;
    let n2 = lab.netns("n2")?;
    connect_underlay(&n1, 1, &n2, 2, options.underlay_mtu)?;
    if options.underlay_ipv6 {
        add_underlay_ipv6(&n1, 1)?;
        add_underlay_ipv6(&n2, 2)?;
    }
    let kernel = KernelNode::create_with_vtep(n2, 2, options.underlay_mtu, options.vtep(2))?;
    kernel.add_peer_at(1, &options.router_mac(1), options.vtep(1))?;
    let peers = [PeerEntry {
        index: 2,
        vtep_mac: Some(kernel_vtep_mac(2)),
    }];
    let node = SwitchNode::start(n1, 1, binary, dir, options, &peers)?;
    Ok((node, kernel))
}

/// A Flannel-style kernel node: bridge `cni0` with the gateway address,
/// `vxlan0` as its VTEP, and routes to its peers.
pub struct KernelNode {
    /// The node's namespace.
    pub ns: Netns,
    /// The node's index.
    pub index: u8,
    /// Its VXLAN device.
    pub vxlan: KernelVxlan,
}

impl KernelNode {
    /// Set up node `index` in `ns`, whose underlay is already connected.
    pub fn create(ns: Netns, index: u8, underlay_mtu: u32) -> Result<KernelNode> {
        KernelNode::create_with_vtep(ns, index, underlay_mtu, node_ip(index).into())
    }

    /// Set up node `index` in `ns` as [`create`](Self::create) does, with
    /// `vtep` (an address of its underlay, IPv4 or IPv6) as its VTEP.
    pub fn create_with_vtep(
        ns: Netns,
        index: u8,
        underlay_mtu: u32,
        vtep: IpAddr,
    ) -> Result<KernelNode> {
        KernelNode::build(ns, index, underlay_mtu, vtep, "vxlan0", 4789)
    }

    /// Set up node `index` in `ns` as flanneld's vxlan backend would with
    /// the network's `udp_port`: device `flannel.<VNI>`, its pod subnet's
    /// network address as a /32, MAC [`kernel_vtep_mac`]; peers come from
    /// the subnet leases ([`Self::add_flannel_peers`]).
    pub fn create_as_flanneld(
        ns: Netns,
        index: u8,
        underlay_mtu: u32,
        udp_port: u16,
    ) -> Result<KernelNode> {
        let name = format!("flannel.{VNI}");
        KernelNode::build(
            ns,
            index,
            underlay_mtu,
            node_ip(index).into(),
            &name,
            udp_port,
        )
    }

    fn build(
        ns: Netns,
        index: u8,
        underlay_mtu: u32,
        vtep: IpAddr,
        name: &str,
        udp_port: u16,
    ) -> Result<KernelNode> {
        ns.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        // Outer IP, UDP and VXLAN headers and the inner Ethernet header.
        let overhead = if vtep.is_ipv4() { 50 } else { 70 };
        let vxlan = KernelVxlan {
            name: name.into(),
            vni: VNI,
            udp_port,
            local: vtep,
            underlay: UPLINK.into(),
            mac: kernel_vtep_mac(index),
            address: format!("10.244.{index}.0/32"),
            mtu: underlay_mtu - overhead,
        };
        vxlan.create(&ns)?;
        ns.ip(&["link", "add", "cni0", "type", "bridge"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/24", pod_gateway(index)),
            "dev",
            "cni0",
        ])?;
        ns.ip(&["link", "set", "cni0", "mtu", &vxlan.mtu.to_string(), "up"])?;
        Ok(KernelNode { ns, index, vxlan })
    }

    /// Route peer node `peer`'s pod CIDR through the tunnel to its VTEP
    /// MAC (a podswitch node's router MAC, or a kernel node's vxlan MAC).
    pub fn add_peer(&self, peer: u8, vtep_mac: &str) -> Result<()> {
        self.add_peer_at(peer, vtep_mac, node_ip(peer).into())
    }

    /// [`Self::add_peer`] for a peer whose VTEP is `vtep` (its IPv6
    /// underlay address, say).
    pub fn add_peer_at(&self, peer: u8, vtep_mac: &str, vtep: IpAddr) -> Result<()> {
        self.vxlan.add_peer(
            &self.ns,
            &pod_cidr(peer),
            &format!("10.244.{peer}.0"),
            vtep_mac,
            vtep,
        )
    }

    /// Route to every node whose subnet lease is in `records` (key and
    /// JSON value of flannel's `<prefix>/subnets/…` keys, this node's own
    /// left out) as flanneld's vxlan backend does for an added lease: a
    /// permanent neighbour entry for the subnet's network address with
    /// the lease's `VtepMAC`, an FDB entry sending that MAC to its
    /// `PublicIP`, and the route to the subnet via that address onlink.
    pub fn add_flannel_peers(&self, records: &[(String, String)]) -> Result<()> {
        for (key, value) in records {
            let subnet = key
                .rsplit('/')
                .next()
                .and_then(|s| s.split_once('-'))
                .with_context(|| format!("{key} is not a subnet key"))?;
            if subnet.0 == format!("10.244.{}.0", self.index) {
                continue;
            }
            let lease: serde_json::Value = serde_json::from_str(value)?;
            let public_ip: IpAddr = lease["PublicIP"]
                .as_str()
                .and_then(|ip| ip.parse().ok())
                .with_context(|| format!("{key}: no PublicIP in {value}"))?;
            let mac = lease["BackendData"]["VtepMAC"]
                .as_str()
                .with_context(|| format!("{key}: no VtepMAC in {value}"))?;
            let cidr = format!("{}/{}", subnet.0, subnet.1);
            self.vxlan
                .add_peer(&self.ns, &cidr, subnet.0, mac, public_ip)?;
        }
        Ok(())
    }

    /// Turn IPv6 on as on a dual-stack kernel node: forwarding, and the
    /// bridge's IPv6 gateway, the first address of [`pod_cidr6`].
    pub fn enable_ipv6(&self) -> Result<()> {
        self.ns
            .run("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        let gateway = format!("{}/64", pod_ip6(self.index, 1));
        self.ns
            .ip(&["-6", "addr", "add", &gateway, "dev", "cni0", "nodad"])?;
        Ok(())
    }

    /// Route peer node `peer`'s IPv6 pod CIDR ([`pod_cidr6`]) through the
    /// VXLAN device to `vtep_mac`, after [`Self::add_peer`] (whose FDB
    /// entry carries that MAC to the peer's VTEP): a permanent neighbour
    /// entry for the CIDR's network address and a route via it, onlink,
    /// as for IPv4. One device carries both families (Flannel gives IPv6
    /// a second device over an IPv6 underlay).
    pub fn add_peer6(&self, peer: u8, vtep_mac: &str) -> Result<()> {
        let via = pod_ip6(peer, 0).to_string();
        let device = self.vxlan.name.as_str();
        self.ns.ip(&[
            "-6",
            "neigh",
            "replace",
            &via,
            "lladdr",
            vtep_mac,
            "dev",
            device,
            "nud",
            "permanent",
        ])?;
        self.ns.ip(&[
            "-6",
            "route",
            "replace",
            &pod_cidr6(peer),
            "via",
            &via,
            "dev",
            device,
            "onlink",
        ])?;
        Ok(())
    }

    /// Give `pod` (one of [`Self::add_pod`]'s, host number `host`) its IPv6
    /// address ([`pod_ip6`]) and a default route via the bridge's
    /// ([`Self::enable_ipv6`]); the address.
    pub fn add_pod_ipv6(&self, pod: &Pod, host: u8) -> Result<Ipv6Addr> {
        let address = pod_ip6(self.index, host);
        pod.ns.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{address}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        let gateway = pod_ip6(self.index, 1).to_string();
        pod.ns.ip(&[
            "-6", "route", "add", "default", "via", &gateway, "dev", "eth0",
        ])?;
        // Until duplicate address detection is over on the link-local
        // addresses (a second), the node and the pod leave each other's
        // neighbour solicitations unanswered.
        wait_dad(&self.ns, "cni0")?;
        wait_dad(&pod.ns, "eth0")?;
        Ok(address)
    }

    /// Add a pod on the bridge, with offloads on (what Flannel users get)
    /// or off.
    pub fn add_pod(&self, lab: &mut Lab, host: u8, offloads: bool) -> Result<Pod> {
        let ifname = format!("vk{}x{host}", self.index);
        let pod = pod_namespace(lab, &self.ns, self.index, host, ifname, self.vxlan.mtu)?;
        self.ns
            .ip(&["link", "set", &pod.port, "master", "cni0", "up"])?;
        if !offloads {
            offloads_off(&pod.ns, "eth0")?;
        }
        Ok(pod)
    }
}

/// Wait until no IPv6 address of `ifname` in `ns` is tentative.
fn wait_dad(ns: &Netns, ifname: &str) -> Result<()> {
    wait_for(
        &format!("{ifname} in {}: duplicate address detection", ns.name()),
        || {
            let tentative = ns.ip(&["-6", "addr", "show", "dev", ifname, "tentative"])?;
            Ok(tentative.trim().is_empty())
        },
    )
}

/// Two Flannel-style kernel nodes on a veth underlay of `underlay_mtu`,
/// peered with each other, with one pod each (offloads on, as Flannel
/// users have them): the kernel path podswitch is compared with. The pods
/// are 10.244.1.2 and 10.244.2.2; `lab` owns the namespaces.
pub fn kernel_pods(lab: &mut Lab, underlay_mtu: u32) -> Result<[Pod; 2]> {
    let n1 = lab.netns("k1")?;
    let n2 = lab.netns("k2")?;
    connect_underlay(&n1, 1, &n2, 2, underlay_mtu)?;
    let k1 = KernelNode::create(n1, 1, underlay_mtu)?;
    let k2 = KernelNode::create(n2, 2, underlay_mtu)?;
    k1.add_peer(2, &kernel_vtep_mac(2))?;
    k2.add_peer(1, &kernel_vtep_mac(1))?;
    Ok([k1.add_pod(lab, 2, true)?, k2.add_pod(lab, 2, true)?])
}

/// What a ping run saw.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PingResult {
    /// Echo requests sent.
    pub sent: u32,
    /// Replies received.
    pub received: u32,
    /// Average round trip, milliseconds (0 without replies).
    pub avg_ms: f64,
}

/// Ping `to` from namespace `from` `count` times, 200 ms apart, waiting
/// at most a second for each reply. Fails if ping is not installed or
/// could not run at all (an exit status other than ping's own 0, 1 for
/// no reply and 2 for errors such as an unreachable network).
pub fn ping_stats(from: &Netns, to: impl Into<IpAddr>, count: u32) -> Result<PingResult> {
    let to: IpAddr = to.into();
    let output = from
        .command("ping")?
        .args([
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            "-q",
            &to.to_string(),
        ])
        .output()
        .context("running ping")?;
    if !matches!(output.status.code(), Some(0..=2)) {
        bail!(
            "ping {to} in {} could not run ({}): {}",
            from.name(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let received = ping_received(&text);
    // "rtt min/avg/max/mdev = 0.045/0.061/0.083/0.013 ms"
    let avg_ms = text
        .lines()
        .find_map(|l| l.split_once(" = "))
        .and_then(|(_, v)| v.split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(PingResult {
        sent: count,
        received,
        avg_ms,
    })
}

/// How many replies a ping run reported in its summary: iputils' "5
/// received" or busybox's "5 packets received".
pub fn ping_received(output: &str) -> u32 {
    output
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" received"))
        .map(|n| n.trim_end_matches(" packets"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Ping `to` from `from` `count` times; how many replies came back.
pub fn ping(from: &Netns, to: impl Into<IpAddr>, count: u32) -> Result<u32> {
    Ok(ping_stats(from, to, count)?.received)
}

/// Ping `to` five times from `from`: at least four replies, or an error
/// that says `what` was being tried.
pub fn expect_pings(from: &Pod, to: Ipv4Addr, what: &str) -> Result<()> {
    let replies = ping(&from.ns, to, 5)?;
    if replies < 4 {
        bail!("{what}: {replies}/5 ping replies from {} to {to}", from.ip);
    }
    Ok(())
}

/// Datagrams the kernel in `ns` dropped because a UDP socket's receive
/// buffer was full (`UdpRcvbufErrors` and `Udp6RcvbufErrors`): loss at
/// the receiving application, not in the network.
pub fn udp_receive_buffer_drops(ns: &Netns) -> Result<u64> {
    ns.kernel_counters(&["UdpRcvbufErrors", "Udp6RcvbufErrors"])
}

/// Run `client` from pod `from` against an iperf3 server started in pod
/// `to`, print what it measured, and fail unless traffic flowed: TCP above
/// 0.05 Gbit/s, or UDP datagrams sent with under a tenth lost on the way.
/// UDP datagrams the receiving pod's kernel dropped at the iperf3 server's
/// full socket (the server starved of CPU on a shared machine) are
/// printed and not counted as lost on the way; the server must still have
/// received some.
pub fn expect_iperf(client: &IperfClient, from: &Pod, to: &Pod, what: &str) -> Result<IperfResult> {
    let _server = iperf_server(&to.ns, client.port)?;
    let socket_drops_before = udp_receive_buffer_drops(&to.ns)?;
    let result = client
        .run(&from.ns, to.ip)
        .with_context(|| format!("{what}: iperf3"))?;
    if client.udp.is_some() {
        let socket_drops = udp_receive_buffer_drops(&to.ns)? - socket_drops_before;
        let lost_on_the_way = result.lost_packets.saturating_sub(socket_drops);
        eprintln!(
            "{what}: UDP {:.2} Gbit/s, {} of {} datagrams lost, {socket_drops} of them at the \
             receiving socket",
            result.gbps(),
            result.lost_packets,
            result.packets
        );
        if result.packets == 0 || result.lost_packets >= result.packets {
            bail!(
                "{what}: UDP: the receiver got none of {} datagrams",
                result.packets
            );
        }
        if lost_on_the_way * 10 >= result.packets {
            bail!(
                "{what}: UDP lost {lost_on_the_way} of {} datagrams on the way (and {socket_drops} \
                 at the receiving socket)",
                result.packets
            );
        }
    } else {
        eprintln!(
            "{what}: TCP {:.2} Gbit/s, {} retransmits",
            result.gbps(),
            result.retransmits
        );
        if result.gbps() <= 0.05 {
            bail!("{what}: TCP carried only {:.3} Gbit/s", result.gbps());
        }
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::ping_received;

    #[test]
    fn ping_summaries_of_iputils_and_busybox() {
        let iputils = "--- 10.244.2.2 ping statistics ---\n\
                       5 packets transmitted, 4 received, 20% packet loss, time 803ms";
        let busybox = "--- 10.244.1.3 ping statistics ---\n\
                       3 packets transmitted, 3 packets received, 0% packet loss";
        assert_eq!(ping_received(iputils), 4);
        assert_eq!(ping_received(busybox), 3);
        assert_eq!(ping_received("ping: connect: Network is unreachable"), 0);
    }
}
