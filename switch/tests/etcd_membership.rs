//! Membership through a real etcd (Debian's etcd-server, in the lab's
//! fabric namespace) in Flannel's layout: podswitch nodes join, leave
//! (cleanly or killed) and rejoin without anyone touching the others'
//! configuration while a flow between two others runs; a kernel VXLAN node
//! configured as flanneld would from the same records exchanges traffic
//! with podswitch pods and changes its VTEP MAC; an etcd outage keeps the
//! peers and is reported, and its end resumes the watch. Needs root.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use nix::sys::signal::Signal;
use podswitch_lab::cluster::{FABRIC_IP, KernelNode, Pod, expect_iperf, kernel_vtep_mac, node_ip};
use podswitch_lab::etcd::EtcdServer;
use podswitch_lab::membership::{MembershipLab, has_peer, peers, reach, wait_for, wait_membership};
use podswitch_lab::traffic::{IPERF_PORT, IperfClient, iperf_server};

const PREFIX: &str = "/coreos.com/network";
/// flanneld's network config, its VXLAN port left to flannel's default.
const NETWORK: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#;

/// Lab tests push real traffic: one at a time on a 2-core machine.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_podswitch"))
}

/// Nodes 1 to 3 (podswitch, started on demand) and 4 (a kernel node)
/// on one fabric, etcd on the fabric bridge with flannel's network config.
struct EtcdLab {
    base: MembershipLab,
    etcd: EtcdServer,
}

impl EtcdLab {
    fn new(tag: &str) -> Result<EtcdLab> {
        let base = MembershipLab::new(tag)?;
        let etcd = EtcdServer::start(&base.fabric, FABRIC_IP, &base.dir.join("etcd"))?;
        etcd.put(&format!("{PREFIX}/config"), NETWORK, None)?;
        Ok(EtcdLab { base, etcd })
    }

    /// Start podswitch node `i` following etcd, with one pod (10.244.i.2).
    fn start(&mut self, i: u8) -> Result<Pod> {
        let membership = format!(
            "membership = \"etcd\"\nudp_port = 8472\n[etcd]\nendpoints = [\"{}\"]\nlease_ttl_s = 5",
            self.etcd.endpoint()
        );
        self.base.start(i, binary(), membership)
    }
}

impl std::ops::Deref for EtcdLab {
    type Target = MembershipLab;
    fn deref(&self) -> &MembershipLab {
        &self.base
    }
}

impl std::ops::DerefMut for EtcdLab {
    fn deref_mut(&mut self) -> &mut MembershipLab {
        &mut self.base
    }
}

#[test]
fn nodes_join_leave_and_rejoin_through_etcd_while_a_flow_between_others_runs() -> Result<()> {
    let _serial = serial();
    let mut tb = EtcdLab::new("etcd-churn")?;
    let p1 = tb.start(1)?;
    let p2 = tb.start(2)?;
    wait_membership(&tb.nodes, &[1], 2, true)?;
    wait_membership(&tb.nodes, &[2], 1, true)?;
    reach(&p1, p2.ip, "node 1 to node 2, both from etcd")?;

    // A flow from node 1 to node 2 for the whole churn of node 3.
    let _server = iperf_server(&p2.ns, IPERF_PORT)?;
    let client = IperfClient {
        seconds: 45,
        tcp_rate: Some(200_000_000),
        ..IperfClient::default()
    };
    let flow_ns = p1.ns.clone();
    let flow = std::thread::spawn(move || client.run_with_intervals(&flow_ns, p2.ip, 1.0, false));

    // Node 3 joins: reachable from both without touching their config.
    let p3 = tb.start(3)?;
    wait_membership(&tb.nodes, &[1, 2], 3, true)?;
    reach(&p1, p3.ip, "node 1 to the new node 3")?;
    reach(&p3, p2.ip, "the new node 3 to node 2")?;

    // A clean stop revokes its lease: the others drop it and its routes.
    ensure!(tb.node(3).stop(), "node 3 did not stop");
    wait_membership(&tb.nodes, &[1, 2], 3, false)?;
    ensure!(
        tb.etcd.list(&format!("{PREFIX}/subnets/"))?.len() == 2,
        "node 3's lease is still in etcd"
    );

    // It rejoins.
    tb.node(3).launch()?;
    wait_membership(&tb.nodes, &[1, 2], 3, true)?;
    reach(&p3, p1.ip, "node 3 back, to node 1")?;

    // Killed: its lease expires after its TTL and the others drop it.
    let killed = tb.node(3).daemon().context("node 3 runs")?;
    ensure!(killed.signal_and_wait(Signal::SIGKILL, Duration::from_secs(10)));
    wait_membership(&tb.nodes, &[1, 2], 3, false)?;

    // Back again after the kill.
    tb.node(3).launch()?;
    wait_membership(&tb.nodes, &[1, 2], 3, true)?;
    reach(&p2, p3.ip, "node 2 to node 3 after its restart")?;

    let run = flow.join().expect("the iperf3 thread")?;
    eprintln!(
        "flow node 1 -> node 2 during the churn: {:.2} Gbit/s, {} intervals, silence {:?}",
        run.result.gbps(),
        run.intervals.len(),
        run.longest_silence()
    );
    ensure!(run.result.bits_per_second > 0.0, "the flow carried nothing");
    ensure!(
        run.longest_silence().is_none(),
        "the flow between nodes 1 and 2 stalled while node 3 came and went: {:?}",
        run.longest_silence()
    );

    // Node 3 leaves its pod CIDR to etcd. Killed and restarted at once,
    // it finds its own live lease (by its PublicIP) and keeps its subnet;
    // stopped cleanly and started again, it takes the lowest free one,
    // which is the same.
    tb.leave_pod_cidr_out(3)?;
    let killed = tb.node(3).daemon().context("node 3 runs")?;
    ensure!(killed.signal_and_wait(Signal::SIGKILL, Duration::from_secs(10)));
    for restart in ["after a kill", "after a clean stop"] {
        tb.node(3).launch()?;
        let info = tb.node(3).cli_json(&["info"])?;
        ensure!(
            info["pod_cidr"] == "10.244.3.0/24",
            "{restart}: etcd gave node 3 {}",
            info["pod_cidr"]
        );
        wait_membership(&tb.nodes, &[1, 2], 3, true)?;
        reach(
            &p3,
            p1.ip,
            &format!("node 3 with its pod CIDR from etcd, {restart}"),
        )?;
        ensure!(tb.node(3).stop(), "node 3 did not stop");
        wait_membership(&tb.nodes, &[1, 2], 3, false)?;
    }
    for node in tb.nodes.iter().filter(|n| n.index != 3) {
        node.check_frames()?;
    }
    Ok(())
}

#[test]
fn a_flanneld_configured_kernel_node_and_an_etcd_outage() -> Result<()> {
    let _serial = serial();
    let mut tb = EtcdLab::new("etcd-flannel")?;
    let p1 = tb.start(1)?;
    let p2 = tb.start(2)?;

    // Node 4 as flanneld would set it up: its lease written in flannel's
    // format, its device, neighbours and FDB from the records in etcd.
    let kernel = KernelNode::create_as_flanneld(tb.namespace(4), 4, 1500, 8472)?;
    let p4 = kernel.add_pod(&mut tb.lab, 2, true)?;
    let key = format!("{PREFIX}/subnets/10.244.4.0-24");
    let record = |mac: &str| {
        format!(
            r#"{{"PublicIP":"{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#,
            node_ip(4)
        )
    };
    let lease = tb.etcd.grant(600)?;
    tb.etcd
        .put(&key, &record(&kernel_vtep_mac(4)), Some(lease))?;
    wait_membership(&tb.nodes, &[1, 2], 4, true)?;
    wait_membership(&tb.nodes, &[1], 2, true)?;
    kernel.add_flannel_peers(&tb.etcd.list(&format!("{PREFIX}/subnets/"))?)?;
    reach(&p4, p1.ip, "flannel node 4 to podswitch node 1")?;
    reach(&p2, p4.ip, "podswitch node 2 to flannel node 4")?;
    expect_iperf(
        &IperfClient::default(),
        &p4,
        &p1,
        "flannel node 4 to node 1",
    )?;

    // Node 4 changes its VTEP MAC (a new flannel.1): followed. The
    // kernel flushes the device's neighbours with its address, and
    // flanneld, starting over, writes them again from the leases.
    let new_mac = "02:6b:76:00:01:04";
    kernel
        .ns
        .ip(&["link", "set", &kernel.vxlan.name, "address", new_mac])?;
    kernel.add_flannel_peers(&tb.etcd.list(&format!("{PREFIX}/subnets/"))?)?;
    tb.etcd.put(&key, &record(new_mac), Some(lease))?;
    for i in [1, 2] {
        let node = tb.nodes.iter().find(|n| n.index == i).context("node")?;
        wait_for("the new VTEP MAC", || {
            Ok(peers(node)?.contains(&(node_ip(4).to_string(), new_mac.to_string())))
        })?;
    }
    reach(&p1, p4.ip, "node 1 to node 4's new VTEP MAC")?;

    // etcd stops: the peers stay, traffic flows, and `peers` says so.
    ensure!(tb.etcd.stop(), "etcd did not stop");
    let node1 = &tb.nodes[0];
    wait_for("node 1 to report etcd unreachable", || {
        Ok(node1.cli(&["peers"])?.contains("unreachable"))
    })?;
    eprintln!("during the outage:\n{}", node1.cli(&["peers"])?);
    let info = node1.cli_json(&["info"])?;
    ensure!(info["membership"]["source"] == "etcd", "{info}");
    ensure!(info["membership"]["unreachable_since"].is_u64(), "{info}");
    ensure!(
        has_peer(node1, 2)? && has_peer(node1, 4)?,
        "peers lost in the outage"
    );
    reach(&p1, p2.ip, "node 1 to node 2 while etcd is down")?;
    reach(&p1, p4.ip, "node 1 to node 4 while etcd is down")?;

    // etcd is back: the nodes resume (re-list and watch): revoking node
    // 4's lease now removes it everywhere.
    tb.etcd.launch()?;
    for node in &tb.nodes {
        wait_for("etcd reachable again", || {
            Ok(!node.cli(&["peers"])?.contains("unreachable"))
        })?;
    }
    tb.etcd.revoke(lease)?;
    wait_membership(&tb.nodes, &[1, 2], 4, false)?;
    reach(&p2, p1.ip, "node 2 to node 1 after the outage")?;
    Ok(())
}
