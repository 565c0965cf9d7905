//! An Open vSwitch node: Debian's `openvswitch-switch` userspace datapath
//! (`datapath_type=netdev`) in a node namespace, with its own database,
//! run and log directory, so several run side by side and none touches
//! the machine's own OVS. Ports are AF_XDP (`type=afxdp`), the overlay is
//! OVS's userspace VXLAN, and forwarding is the `NORMAL` action (MAC
//! learning): pods are on one flat layer-2 network across nodes.
//!
//! Two bridges, as OVS's userspace tunnelling needs: `br-phy` holds the
//! underlay port and carries the node's underlay address on its internal
//! port (where OVS routes and resolves tunnel next hops); `br-int` holds
//! the pods' ports and one VXLAN port per peer.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::{Pod, UPLINK, VNI, node_ip};
use crate::flat_pods::flat_pod;
use crate::netns::{Lab, Netns, run_checked};
use crate::process::Process;
use crate::tools;

/// The OVS database schema Debian installs.
const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
/// The programs a node runs; all come with `openvswitch-switch`.
const PROGRAMS: [&str; 5] = [
    "ovsdb-tool",
    "ovsdb-server",
    "ovs-vswitchd",
    "ovs-vsctl",
    "ovs-appctl",
];

/// Fail, saying what to install, unless Open vSwitch is installed.
pub fn ovs_installed() -> Result<()> {
    tools::require_all(&PROGRAMS)?;
    if !Path::new(SCHEMA).is_file() {
        bail!("{SCHEMA} not found: install Debian's openvswitch-switch");
    }
    Ok(())
}

/// `ovsdb-server` and `ovs-vswitchd` running in a node namespace.
pub struct OvsNode {
    /// The node's namespace.
    pub ns: Netns,
    /// The node's index.
    pub index: u8,
    dir: PathBuf,
    // Stopped in this order when dropped: the switch, then its database.
    vswitchd: Process,
    _ovsdb: Process,
}

impl OvsNode {
    /// Start node `index`'s OVS in `ns` (whose underlay [`UPLINK`] is
    /// connected and addressed), keeping its files in `dir`, its
    /// polling (PMD) thread pinned to CPU `pmd_cpu`; build `br-phy` with
    /// the uplink as an AF_XDP port and the node address moved onto the
    /// bridge, and an empty `br-int`.
    pub fn start(ns: Netns, index: u8, dir: &Path, pmd_cpu: usize) -> Result<OvsNode> {
        ovs_installed()?;
        let dir = dir.join(format!("ovs{index}"));
        std::fs::create_dir_all(&dir)?;
        let db = dir.join("conf.db");
        let _ = std::fs::remove_file(&db);
        run_checked(
            tools::command("ovsdb-tool")?
                .arg("create")
                .arg(&db)
                .arg(SCHEMA),
        )
        .context("creating the OVS database")?;
        let mut ovsdb = Process::spawn_logged(
            ovs_command(&ns, "ovsdb-server", &dir)?
                .arg(&db)
                .arg(format!("--remote=punix:{}", dir.join("db.sock").display()))
                .arg(format!("--unixctl={}", dir.join("ovsdb.ctl").display())),
            &format!("ovsdb-server of node {index}"),
            std::fs::File::create(dir.join("ovsdb.log"))?,
        )?;
        wait_for(&dir.join("db.sock"), &mut ovsdb, &dir.join("ovsdb.log"))?;
        let mask = format!("0x{:x}", 1u64 << (pmd_cpu % 64));
        vsctl_at(&dir, &["--no-wait", "init"])?;
        vsctl_at(
            &dir,
            &[
                "--no-wait",
                "set",
                "Open_vSwitch",
                ".",
                &format!("other_config:pmd-cpu-mask={mask}"),
            ],
        )?;
        let mut vswitchd = Process::spawn_logged(
            ovs_command(&ns, "ovs-vswitchd", &dir)?
                .arg(format!("unix:{}", dir.join("db.sock").display()))
                .arg(format!("--unixctl={}", dir.join("vswitchd.ctl").display())),
            &format!("ovs-vswitchd of node {index}"),
            std::fs::File::create(dir.join("vswitchd.log"))?,
        )?;
        wait_for(
            &dir.join("vswitchd.ctl"),
            &mut vswitchd,
            &dir.join("vswitchd.log"),
        )?;
        let node = OvsNode {
            ns,
            index,
            dir,
            vswitchd,
            _ovsdb: ovsdb,
        };
        let cidr = format!("{}/24", node_ip(index));
        node.vsctl(&[
            "add-br",
            "br-phy",
            "--",
            "set",
            "bridge",
            "br-phy",
            "datapath_type=netdev",
        ])?;
        node.add_afxdp_port("br-phy", UPLINK)?;
        node.ns.ip(&["addr", "del", &cidr, "dev", UPLINK])?;
        node.ns.ip(&["addr", "add", &cidr, "dev", "br-phy"])?;
        node.ns.ip(&["link", "set", "br-phy", "up"])?;
        node.vsctl(&[
            "add-br",
            "br-int",
            "--",
            "set",
            "bridge",
            "br-int",
            "datapath_type=netdev",
        ])?;
        Ok(node)
    }

    /// Run `ovs-vsctl` against this node's database; its stdout.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        vsctl_at(&self.dir, args)
    }

    /// Add a VXLAN port to peer node `peer` on `br-int`.
    pub fn add_peer(&self, peer: u8) -> Result<()> {
        let port = format!("vx{peer}");
        self.vsctl(&[
            "add-port",
            "br-int",
            &port,
            "--",
            "set",
            "interface",
            &port,
            "type=vxlan",
            &format!("options:remote_ip={}", node_ip(peer)),
            &format!("options:key={VNI}"),
        ])
        .map(drop)
    }

    /// Create pod number `host` on this node (on the flat network) and add
    /// its veth to `br-int` as an AF_XDP port.
    pub fn add_pod(&self, lab: &mut Lab, host: u8, mtu: u32) -> Result<Pod> {
        let ifname = format!("vo{}x{host}", self.index);
        let pod = flat_pod(lab, &self.ns, self.index, host, &ifname, mtu)?;
        self.add_afxdp_port("br-int", &ifname)?;
        Ok(pod)
    }

    /// Add `ifname` to `bridge` as an AF_XDP port in native XDP mode; fails
    /// with OVS's own error if the port did not come up.
    fn add_afxdp_port(&self, bridge: &str, ifname: &str) -> Result<()> {
        self.vsctl(&[
            "add-port",
            bridge,
            ifname,
            "--",
            "set",
            "interface",
            ifname,
            "type=afxdp",
            "options:xdp-mode=native",
        ])?;
        let error = self.vsctl(&["get", "interface", ifname, "error"])?;
        let error = error.trim().trim_matches('"');
        if !error.is_empty() && error != "[]" {
            bail!("OVS could not open {ifname} as an AF_XDP port: {error}");
        }
        Ok(())
    }

    /// The PID of `ovs-vswitchd` (whose threads do the switching).
    pub fn pid(&self) -> u32 {
        self.vswitchd.pid()
    }

    /// The last lines of `ovs-vswitchd`'s log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("vswitchd.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// A command running `program` in `ns` with OVS's run, log and database
/// directories set to `dir` (its management sockets go there too).
fn ovs_command(ns: &Netns, program: &str, dir: &Path) -> Result<Command> {
    let mut cmd = ns.command(program)?;
    for var in ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"] {
        cmd.env(var, dir);
    }
    Ok(cmd)
}

/// Run `ovs-vsctl` against the database whose socket is in `dir`.
fn vsctl_at(dir: &Path, args: &[&str]) -> Result<String> {
    let output = run_checked(
        tools::command("ovs-vsctl")?
            .arg("--timeout=20")
            .arg(format!("--db=unix:{}", dir.join("db.sock").display()))
            .args(args),
    )?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Wait up to 10 s for `process` to open `socket`; on failure, say why
/// with the end of its `log`.
fn wait_for(socket: &Path, process: &mut Process, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        let why = if !process.is_running() {
            "exited at startup"
        } else if Instant::now() > deadline {
            "did not start within 10 s"
        } else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let log = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        bail!(
            "{} {why}: {}",
            socket.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    Ok(())
}
