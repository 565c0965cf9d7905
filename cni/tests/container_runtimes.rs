//! Real container runtimes drive podswitch-cni: podman 4 through its CNI
//! network backend (libcni, with `portmap` and `bandwidth` chained after the
//! plugin) and containerd's `ctr run --cni` (go-cni) each start two busybox
//! containers on a lab node running podswitch. The tests prove that the
//! containers get distinct addresses, that the switch has a port for each
//! with the address and MAC the runtime reports, that they ping each other
//! through the switch, that a port podman publishes is reachable through
//! portmap from the node itself and from the other node, and that removing
//! the containers — podman's DEL, and ctr's DEL, which comes with an empty
//! `CNI_NETNS` — leaves no veth, no switch port and no address behind.
//!
//! Needs root, the workspace built (`cargo build --release --workspace`),
//! podman (with its CNI backend), containerd and ctr, runc, conmon,
//! busybox-static (/bin/busybox), containernetworking-plugins in
//! /usr/lib/cni, iptables, curl, tar, and util-linux's nsenter and unshare.
//! The image is built here from /bin/busybox; no registry is used.
//!
//! The system's own podman and containerd are never touched, and nothing is
//! written outside the test's temporary directory: every runtime command
//! runs in the node's network namespace *and* in one private mount
//! namespace held open for the whole test (see [`Testbed`]), in which
//! directories of the temporary directory are bound over /run, /var/lib
//! (libcni's result cache, podman's blob cache) and, for ctr, /etc/cni and
//! /opt (its fixed CNI directories). The runtimes are not run through
//! `ip netns exec`: that remounts /sys, which drops the cgroup hierarchy
//! mounted below it, and runc then fails with "no cgroup mount found in
//! mountinfo"; podman also needs one mount namespace across its commands
//! for the network namespaces it pins under /run/netns.

use std::cell::{Ref, RefCell};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podswitch_lab::Process;
use podswitch_lab::cluster::{SwitchNode, node_ip, ping_received, pod_gateway};
use podswitch_lab::cni::netns_path;
use podswitch_lab::tools;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

mod common;
use common::{
    Nodes, nodes, nothing_left, plugin, plugin_entry, pod_port_addresses, pod_port_kinds, serial,
};

/// The image both runtimes run, built from /bin/busybox.
const IMAGE: &str = "localhost/podswitch-busybox:latest";
/// Where the image's busybox comes from (a static build).
const BUSYBOX: &str = "/bin/busybox";
/// The busybox applets the image links.
const APPLETS: [&str; 14] = [
    "sh", "ping", "sleep", "ip", "ifconfig", "nc", "httpd", "cat", "hostname", "ls", "echo",
    "true", "wget", "ps",
];
/// What the web server in podman's container `b` serves.
const PAGE: &str = "served by busybox httpd in a podman container on podswitch\n";
/// The node port podman publishes `b`'s port 80 on.
const HOST_PORT: u16 = 8080;
/// Bound on any one runtime command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on waiting for a state to be reached.
const SETTLE: Duration = Duration::from_secs(30);
/// The containerd namespace of the ctr test.
const CTR_NAMESPACE: &str = "podswitch-test";
/// OCI media types of the hand-built image.
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// podman runs two containers on the podswitch network — a conflist of
/// podswitch-cni, portmap and bandwidth — that get distinct addresses, ping
/// each other and serve a published port; removing them leaves nothing.
#[test]
fn podman_runs_two_containers_that_ping() -> Result<()> {
    let _serial = serial();
    require(&[
        "podman", "runc", "conmon", "nsenter", "unshare", "sh", "mount", "sleep", "tar", "curl",
        "iptables", "ip",
    ])?;
    let bed = Testbed::new("rt-podman", &[("run", "/run"), ("var-lib", "/var/lib")])?;
    let node = bed.node();
    let conf = node.cni_network("1.0.0");
    let podman = podman_on_podnet(&bed, &conf)?;

    let publish = format!("{HOST_PORT}:80");
    podman.start("a", &[], &["sleep", "600"])?;
    podman.start(
        "b",
        &["--publish", &publish],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    )?;

    // The addresses podman reports are the ones the switch has ports for.
    let pods = podman.addresses(&["a", "b"])?;
    let (a, b) = check_pods(&node, &pods)?;
    podman.ping_each_other(a, b)?;

    // portmap: the node's own address, from the node (the OUTPUT chain)
    // and from node 2 (PREROUTING; the node forwards, as a node must).
    let url = format!("http://{}:{HOST_PORT}/index.html", node_ip(1));
    let logs = bed.logs();
    let page = wait_for("b's published port from node 1", SETTLE, || {
        fetch(node.ns.command("curl")?, &url, &logs)
    })?;
    ensure!(page == PAGE, "from node 1, {url} served {page:?}");
    node.ns.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    let page = wait_for("b's published port from node 2", SETTLE, || {
        fetch(bed.n2_command("curl")?, &url, &logs)
    })?;
    ensure!(page == PAGE, "from node 2, {url} served {page:?}");

    podman.run(&["rm", "--force", "--time", "0", "a", "b"])?;
    let left = podman.run(&["ps", "--all", "--quiet"])?;
    ensure!(left.trim().is_empty(), "containers left: {left}");
    all_gone(&node, &conf)?;
    let nat = node.ns.run("iptables", &["-t", "nat", "-S"])?;
    ensure!(
        !nat.contains("CNI-DN-"),
        "portmap's DNAT chain is left:\n{nat}"
    );
    Ok(())
}

/// `podman run --ip` and `--mac-address` (which podman passes as `IP=`
/// and `MAC=` in `CNI_ARGS`): the container has the address and MAC it
/// asked for, podman reports them, the switch's port has them (its
/// anti-spoofing passes the container's frames: the containers ping each
/// other), and a container asking for a taken address, or one outside the
/// node's pod CIDR, does not start and podman shows the plugin's reason.
#[test]
fn podman_run_with_ip_and_mac_address() -> Result<()> {
    let _serial = serial();
    require(&["podman", "runc", "conmon", "nsenter", "unshare", "tar"])?;
    let bed = Testbed::new("rt-static", &[("run", "/run"), ("var-lib", "/var/lib")])?;
    let node = bed.node();
    let conf = node.cni_network("1.0.0");
    let podman = podman_on_podnet(&bed, &conf)?;

    let (a_ip, a_mac) = ("10.244.1.50", "02:42:0a:f4:01:32");
    podman.start(
        "a",
        &["--ip", a_ip, "--mac-address", a_mac],
        &["sleep", "600"],
    )?;
    podman.start("b", &["--ip", "10.244.1.60"], &["sleep", "600"])?;
    let pods = podman.addresses(&["a", "b"])?;
    ensure!(
        pods[0] == (a_ip.parse()?, a_mac.to_string()) && pods[1].0 == Ipv4Addr::new(10, 244, 1, 60),
        "podman reports {pods:?}"
    );
    for (name, ip, mac) in [("a", a_ip, a_mac), ("b", "10.244.1.60", pods[1].1.as_str())] {
        let addresses = podman.run(&[
            "exec", name, "ip", "-4", "-o", "addr", "show", "dev", "eth0",
        ])?;
        ensure!(
            addresses.contains(&format!("{ip}/24")),
            "{name}'s eth0 lacks {ip}/24: {addresses}"
        );
        let seen = podman.run(&["exec", name, "cat", "/sys/class/net/eth0/address"])?;
        ensure!(seen.trim() == mac, "{name}'s eth0 is {seen:?}, not {mac}");
    }
    let (a, b) = check_pods(&node, &pods)?;
    podman.ping_each_other(a, b)?;

    for (name, ip, reason) in [
        ("c", a_ip, "10.244.1.50 is already taken"),
        (
            "d",
            "10.244.2.50",
            "10.244.2.50 (CNI_ARGS IP) is outside this node's pod CIDR",
        ),
    ] {
        let refused = podman.start(name, &["--ip", ip], &["sleep", "600"]);
        let err = match refused {
            Ok(_) => bail!("{name} started with {ip}"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(err.contains(reason), "{name} with {ip}: {err}");
    }
    let running = podman.run(&["ps", "--quiet", "--filter", "status=running"])?;
    ensure!(
        running.lines().count() == 2,
        "containers running: {running}"
    );
    check_pods(&node, &pods)?;

    podman.run(&["rm", "--all", "--force", "--time", "0"])?;
    all_gone(&node, &conf)
}

/// A port podman publishes (`-p`, through portmap) answers on 127.0.0.1
/// from the node, and still does after the daemon is restarted (SIGTERM,
/// then start): the host port portmap set `route_localnet` on is the same
/// device after the restart; the container is a TAP pod, whose port is
/// made and restored though the daemon cannot see podman's `/run/netns`.
#[test]
fn podman_published_port_on_localhost_survives_a_daemon_restart() -> Result<()> {
    let _serial = serial();
    require(&[
        "podman", "runc", "conmon", "nsenter", "unshare", "tar", "curl", "iptables",
    ])?;
    let bed = Testbed::new("rt-restart", &[("run", "/run"), ("var-lib", "/var/lib")])?;
    let mut conf = bed.node().cni_network("1.0.0");
    conf["podInterface"] = "tap".into();
    let podman = podman_on_podnet(&bed, &conf)?;
    let publish = format!("{HOST_PORT}:80");
    podman.start(
        "b",
        &["--publish", &publish],
        &["httpd", "-f", "-p", "80", "-h", "/www"],
    )?;
    let logs = bed.logs();
    let fetch_on_localhost = |when: &str| -> Result<()> {
        let url = format!("http://127.0.0.1:{HOST_PORT}/index.html");
        let node = bed.node();
        let page = wait_for(
            &format!("b's published port on 127.0.0.1 {when}"),
            SETTLE,
            || {
                let fetched = fetch(node.ns.command("curl")?, &url, &logs)?;
                let route_localnet = node
                    .ns
                    .run("sysctl", &["-n", "net.ipv4.conf.podsw0.route_localnet"])?;
                Ok(fetched.map_err(|e| {
                    format!(
                        "{e} (route_localnet on the host port: {})",
                        route_localnet.trim()
                    )
                }))
            },
        )?;
        ensure!(page == PAGE, "{when}, {url} served {page:?}");
        Ok(())
    };
    // A TAP pod: the daemon attaches to its device in the pod's
    // namespace, whose path is a mount in podman's private mount
    // namespace; it reaches it through the plugin's `/proc/<pid>/root`,
    // and after the restart through the container's processes.
    let one_tap_port = |when: &str| -> Result<()> {
        let kinds = pod_port_kinds(&bed.node())?;
        ensure!(
            kinds == ["tap"],
            "{when}, the pod ports are {kinds:?}, not one TAP"
        );
        Ok(())
    };
    one_tap_port("before the restart")?;
    fetch_on_localhost("before the restart")?;
    bed.restart_daemon()?;
    one_tap_port("after the restart")?;
    fetch_on_localhost("after the daemon was restarted")?;

    podman.run(&["rm", "--all", "--force", "--time", "0"])?;
    all_gone(&bed.node(), &conf)
}

/// `ctr run --cni` starts two containers that get distinct addresses and
/// ping each other; once their tasks are killed, ctr's DEL (with an empty
/// `CNI_NETNS`) leaves nothing.
#[test]
fn ctr_run_cni_two_containers_that_ping() -> Result<()> {
    let _serial = serial();
    require(&[
        "containerd",
        "ctr",
        "containerd-shim-runc-v2",
        "runc",
        "nsenter",
        "unshare",
        "sh",
        "mount",
        "sleep",
        "tar",
    ])?;
    let bed = Testbed::new(
        "rt-ctr",
        &[
            ("run", "/run"),
            ("var-lib", "/var/lib"),
            ("etc-cni", "/etc/cni"),
            ("opt", "/opt"),
        ],
    )?;
    let node = bed.node();
    let conf = node.cni_network("1.0.0");
    // ctr's fixed directories, as its mount namespace sees them: plugins in
    // /opt/cni/bin, and /etc/cni/net.d holding the one file ctr reads.
    plugin_dir(&bed.mnt("opt").join("cni/bin"), &["portmap"])?;
    let net_d = bed.mnt("etc-cni").join("net.d");
    fs::create_dir_all(&net_d)?;
    let network = json!({
        "cniVersion": "1.0.0",
        "name": "podnet",
        "plugins": [
            plugin_entry(&conf),
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    fs::write(
        net_d.join("10-podnet.conflist"),
        serde_json::to_string_pretty(&network)?,
    )?;

    let layer = busybox_layer(&bed.dir, &bed.logs())?;
    let archive = oci_archive(&bed.dir, &layer, &bed.logs())?;
    let mut ctd = Containerd::start(&bed)?;
    ctd.ctr(&[
        "images",
        "import",
        "--snapshotter",
        "native",
        &archive.to_string_lossy(),
    ])?;
    let images = ctd.ctr(&["images", "ls", "--quiet"])?;
    ensure!(
        images.lines().any(|i| i.trim() == IMAGE),
        "{IMAGE} was not imported: {images}"
    );

    for id in ["a", "b"] {
        ctd.run_foreground(id, &["sleep", "600"])?;
    }
    // ctr ADDs the network before it starts the task.
    wait_for("both tasks running", SETTLE, || {
        ctd.check_runs()?;
        let tasks = ctd.tasks()?;
        let running = |id: &str| tasks.iter().any(|(t, s)| t == id && s == "RUNNING");
        Ok(if running("a") && running("b") {
            Ok(())
        } else {
            Err(format!("tasks: {tasks:?}"))
        })
    })?;

    let mut pods = Vec::new();
    for id in ["a", "b"] {
        let addr = ctd.exec(id, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])?;
        let ip = addr
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse::<Ipv4Addr>().ok())
            .with_context(|| format!("no IPv4 address on {id}'s eth0: {addr}"))?;
        let mac = ctd.exec(id, &["cat", "/sys/class/net/eth0/address"])?;
        pods.push((ip, mac.trim().to_string()));
    }
    let (a, b) = check_pods(&node, &pods)?;

    for (from, to) in [("a", b), ("b", a)] {
        let out = ctd.exec(from, &["ping", "-c", "3", "-W", "2", &to.to_string()])?;
        let replies = ping_received(&out);
        ensure!(replies >= 2, "{from} → {to}: {replies}/3 replies:\n{out}");
    }

    // Killing a task ends its `ctr run`, which DELs the network (with an
    // empty CNI_NETNS) and removes the container (--rm).
    for id in ["a", "b"] {
        ctd.ctr(&["tasks", "kill", "--signal", "SIGKILL", id])?;
    }
    for id in ["a", "b"] {
        let log = ctd.wait_run(id)?;
        ensure!(
            !log.contains("level=error"),
            "ctr run {id} reported an error:\n{log}"
        );
    }
    let tasks = ctd.ctr(&["tasks", "ls", "--quiet"])?;
    ensure!(tasks.trim().is_empty(), "tasks left: {tasks}");
    let containers = ctd.ctr(&["containers", "ls", "--quiet"])?;
    ensure!(
        containers.trim().is_empty(),
        "containers left: {containers}"
    );
    all_gone(&node, &conf)?;
    Ok(())
}

/// Node 1 running podswitch (node 2 beside it, without a switch), the
/// test's temporary directory, and the process holding the runtimes' mount
/// namespace. Dropped after the runtime guards that borrow it: it stops the
/// holder, then the daemon and the lab, removes the containers' cgroup
/// parent and the directory.
struct Testbed {
    /// In a cell so that the daemon can be restarted while the runtimes
    /// borrow the testbed.
    nodes: RefCell<Option<Nodes>>,
    /// The test's temporary directory (the lab's, named after its prefix).
    dir: PathBuf,
    /// The cgroup the containers are put under (the lab's name).
    cgroup: String,
    holder: Option<Process>,
}

impl Testbed {
    /// Start lab `tag`, and a holder of a private mount namespace inside
    /// node 1's network namespace with `dir/mnt/<sub>` bound over each
    /// `(sub, target)` of `binds`.
    fn new(tag: &str, binds: &[(&str, &str)]) -> Result<Testbed> {
        let nodes = nodes(tag, 1)?;
        let name = nodes.lab.prefix().trim_end_matches('-').to_string();
        let mut bed = Testbed {
            dir: std::env::temp_dir().join(&name),
            cgroup: name,
            nodes: RefCell::new(Some(nodes)),
            holder: None,
        };
        let mut script = String::from("set -e\n");
        for (sub, target) in binds {
            ensure!(
                Path::new(target).is_dir(),
                "{target} does not exist: there is nothing to bind the test's directory over"
            );
            let source = bed.mnt(sub);
            fs::create_dir_all(&source)?;
            writeln!(script, "mount --bind '{}' '{target}'", source.display())?;
        }
        script.push_str("exec sleep infinity\n");
        let log = bed.dir.join("holder.log");
        let mut cmd = tools::command("nsenter")?;
        let node_netns = netns_path(&bed.node().ns);
        cmd.arg(format!("--net={}", node_netns.display()))
            .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", &script]);
        let holder =
            Process::spawn_logged(&mut cmd, "mount namespace holder", File::create(&log)?)?;
        let pid = holder.pid();
        bed.holder = Some(holder);
        // The holder becomes `sleep` once its mounts are in place.
        let holder = &mut bed.holder;
        wait_for("the mount namespace holder", SETTLE, || {
            if !holder.as_mut().is_some_and(Process::is_running) {
                bail!(
                    "the mount namespace holder exited: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            Ok(if comm.trim() == "sleep" {
                Ok(())
            } else {
                Err(format!("it is still {comm:?}"))
            })
        })?;
        Ok(bed)
    }

    /// Node 1, with the switch (not to be held across
    /// [`Testbed::restart_daemon`]).
    fn node(&self) -> Ref<'_, SwitchNode> {
        Ref::map(self.nodes.borrow(), |nodes| {
            &nodes.as_ref().expect("the testbed's nodes").switches[0]
        })
    }

    /// Stop node 1's daemon with SIGTERM and start it again, as a service
    /// manager restarts it.
    fn restart_daemon(&self) -> Result<()> {
        let mut nodes = self
            .nodes
            .try_borrow_mut()
            .context("node 1 is borrowed: drop it before restarting its daemon")?;
        let node = &mut nodes.as_mut().context("the testbed's nodes")?.switches[0];
        ensure!(node.stop(), "the daemon did not exit on SIGTERM");
        node.launch()
    }

    /// `program` run in node 2's network namespace.
    fn n2_command(&self, program: &str) -> Result<Command> {
        tools::require(program)?;
        let prefix = self
            .nodes
            .borrow()
            .as_ref()
            .map_or(String::new(), |n| n.lab.prefix().to_string());
        let mut cmd = tools::command("ip")?;
        cmd.args(["netns", "exec", &format!("{prefix}n2"), program]);
        Ok(cmd)
    }

    /// `dir/mnt/<sub>`, bound over a system directory in the mount namespace.
    fn mnt(&self, sub: &str) -> PathBuf {
        self.dir.join("mnt").join(sub)
    }

    /// Where commands' output goes.
    fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// `program` run in node 1's network namespace and the holder's mount
    /// namespace.
    fn command(&self, program: &str) -> Command {
        let pid = self.holder.as_ref().map_or(0, Process::pid);
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid.to_string(), "-m", "-n", "--", program]);
        cmd
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        drop(self.holder.take());
        drop(self.nodes.get_mut().take());
        remove_cgroup(&self.cgroup);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// podman confined to the test's directory — storage, state, locks,
/// events, network configuration, CNI plugins — and run in the testbed's
/// namespaces. Dropping it removes its containers (which DELs their
/// networks) and images, and kills the conmon and processes of any it
/// could not remove.
struct Podman<'a> {
    bed: &'a Testbed,
    home: PathBuf,
}

impl<'a> Podman<'a> {
    /// Configure podman with `network` (a conflist) as its only network.
    fn new(bed: &'a Testbed, network: &Value) -> Result<Podman<'a>> {
        let home = bed.dir.join("podman");
        for sub in ["root", "runroot", "tmp", "net.d"] {
            fs::create_dir_all(home.join(sub))?;
        }
        let bin = bed.dir.join("cni-bin");
        plugin_dir(&bin, &["portmap", "bandwidth"])?;
        let path = |sub: &str| format!("{:?}", home.join(sub).display().to_string());
        let ulimits = ulimits()
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let containers_conf = format!(
            "[containers]\n\
             default_ulimits = [{ulimits}]\n\
             log_driver = \"k8s-file\"\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [{bin:?}]\n\
             network_config_dir = {net_d}\n\
             default_network = \"podnet\"\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             runtime = \"runc\"\n\
             events_logger = \"file\"\n\
             events_logfile_path = {events}\n\
             tmp_dir = {tmp}\n\
             lock_type = \"file\"\n\
             static_dir = {static_dir}\n\
             volume_path = {volumes}\n\
             image_copy_tmp_dir = {tmp}\n",
            bin = bin.display().to_string(),
            net_d = path("net.d"),
            events = path("events.log"),
            tmp = path("tmp"),
            static_dir = path("root/libpod"),
            volumes = path("root/volumes"),
        );
        fs::write(home.join("containers.conf"), containers_conf)?;
        let storage_conf = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
            path("root"),
            path("runroot")
        );
        fs::write(home.join("storage.conf"), storage_conf)?;
        fs::write(
            home.join("net.d/podnet.conflist"),
            serde_json::to_string_pretty(network)?,
        )?;
        Ok(Podman { bed, home })
    }

    /// `podman args…` with every path of its own.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.bed.command("podman");
        cmd.env("CONTAINERS_CONF", self.home.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.home.join("storage.conf"))
            .env("TMPDIR", self.home.join("tmp"))
            .arg("--root")
            .arg(self.home.join("root"))
            .arg("--runroot")
            .arg(self.home.join("runroot"))
            .arg("--tmpdir")
            .arg(self.home.join("tmp"))
            .arg("--network-config-dir")
            .arg(self.home.join("net.d"))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file", "--runtime", "runc"])
            .args(args);
        cmd
    }

    /// Run `podman args…`; its stdout, or an error with its stderr.
    fn run(&self, args: &[&str]) -> Result<String> {
        run_checked(&mut self.command(args), &self.bed.logs())
    }

    /// `podman run --detach` container `name` of [`IMAGE`] on the podnet
    /// network, under the test's cgroup, with `options`, running `command`.
    fn start(&self, name: &str, options: &[&str], command: &[&str]) -> Result<String> {
        let parent = format!("/{}", self.bed.cgroup);
        let mut args = vec![
            "run",
            "--detach",
            "--network",
            "podnet",
            "--cgroup-parent",
            &parent,
            "--name",
            name,
        ];
        args.extend_from_slice(options);
        args.push(IMAGE);
        args.extend_from_slice(command);
        self.run(&args)
    }

    /// The address and MAC podman reports for each of `names` on podnet.
    fn addresses(&self, names: &[&str]) -> Result<Vec<(Ipv4Addr, String)>> {
        let mut args = vec!["inspect"];
        args.extend_from_slice(names);
        let inspect: Value =
            serde_json::from_str(&self.run(&args)?).context("podman inspect's JSON")?;
        inspect
            .as_array()
            .context("podman inspect did not answer a list")?
            .iter()
            .map(|c| {
                let net = &c["NetworkSettings"]["Networks"]["podnet"];
                let ip = net["IPAddress"].as_str().unwrap_or_default();
                let ip: Ipv4Addr = ip
                    .parse()
                    .with_context(|| format!("podman's address {ip:?} of {}", c["Name"]))?;
                Ok((
                    ip,
                    net["MacAddress"].as_str().unwrap_or_default().to_string(),
                ))
            })
            .collect()
    }

    /// Containers `a` and `b`, at `a_ip` and `b_ip`, ping each other.
    fn ping_each_other(&self, a_ip: Ipv4Addr, b_ip: Ipv4Addr) -> Result<()> {
        for (from, to) in [("a", b_ip), ("b", a_ip)] {
            let out = self.run(&["exec", from, "ping", "-c", "3", "-W", "2", &to.to_string()])?;
            let replies = ping_received(&out);
            ensure!(replies >= 2, "{from} → {to}: {replies}/3 replies:\n{out}");
        }
        Ok(())
    }
}

/// podman configured with the podnet conflist for `conf` (podswitch-cni,
/// then portmap and bandwidth), the busybox image imported, and the
/// network checked to be listed.
fn podman_on_podnet<'a>(bed: &'a Testbed, conf: &Value) -> Result<Podman<'a>> {
    // libcni refuses 1.1.0 in a conflist; the plugin answers 1.0.0 too.
    let network = json!({
        "cniVersion": "1.0.0",
        "name": "podnet",
        "plugins": [
            plugin_entry(conf),
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
        ],
    });
    let podman = Podman::new(bed, &network)?;
    let layer = busybox_layer(&bed.dir, &bed.logs())?;
    podman.run(&["import", &layer.to_string_lossy(), IMAGE])?;
    // podman drops a network whose plugins fail its VERSION probe silently.
    let networks = podman.run(&["network", "ls", "--format", "{{.Name}}"])?;
    ensure!(
        networks.lines().any(|n| n.trim() == "podnet"),
        "podman does not list the podnet network: {networks}"
    );
    Ok(podman)
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.run(&["rmi", "--all", "--force"]);
        // conmon and the containers of any container podman could not remove.
        kill_leftovers(|proc| in_cgroup(proc, &self.bed.cgroup));
    }
}

/// A private containerd — root, state and sockets in the test's directory —
/// run in the testbed's namespaces, and the foreground `ctr run` of each
/// container. Dropping it kills the tasks still running so that their
/// `ctr run`s DEL the networks and exit, removes what is left, stops
/// containerd and kills any shim that outlived it.
struct Containerd<'a> {
    bed: &'a Testbed,
    home: PathBuf,
    daemon: Option<Process>,
    /// Container id, its `ctr run`.
    runs: Vec<(String, Child)>,
}

impl<'a> Containerd<'a> {
    /// Start containerd and wait until it answers.
    fn start(bed: &'a Testbed) -> Result<Containerd<'a>> {
        let home = bed.dir.join("containerd");
        fs::create_dir_all(&home)?;
        let path = |sub: &str| format!("{:?}", home.join(sub).display().to_string());
        let config = format!(
            "version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \
             \"io.containerd.internal.v1.opt\", \"io.containerd.snapshotter.v1.aufs\", \
             \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \
             \"io.containerd.snapshotter.v1.devmapper\"]\n\
             [grpc]\n  address = {grpc}\n\
             [ttrpc]\n  address = {ttrpc}\n",
            root = path("root"),
            state = path("state"),
            grpc = path("containerd.sock"),
            ttrpc = path("containerd.sock.ttrpc"),
        );
        let config_path = home.join("config.toml");
        fs::write(&config_path, config)?;
        let log = home.join("containerd.log");
        let mut cmd = bed.command("containerd");
        cmd.arg("--config").arg(&config_path);
        let daemon = Process::spawn_logged(&mut cmd, "containerd", File::create(&log)?)?;
        let mut ctd = Containerd {
            bed,
            home,
            daemon: Some(daemon),
            runs: Vec::new(),
        };
        wait_for("containerd to answer", SETTLE, || {
            if !ctd.daemon.as_mut().is_some_and(Process::is_running) {
                bail!(
                    "containerd exited:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            let ran = run_bounded(&mut ctd.command(&["version"]), &bed.logs(), SETTLE)?;
            Ok(if ran.status.success() {
                Ok(())
            } else {
                Err(ran.stderr)
            })
        })?;
        Ok(ctd)
    }

    /// `ctr args…` against this containerd and namespace.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = self.bed.command("ctr");
        cmd.arg("--address")
            .arg(self.home.join("containerd.sock"))
            .args(["--namespace", CTR_NAMESPACE])
            .args(args);
        cmd
    }

    /// Run `ctr args…`; its stdout, or an error with its stderr.
    fn ctr(&self, args: &[&str]) -> Result<String> {
        run_checked(&mut self.command(args), &self.bed.logs())
    }

    /// Run `command` in container `id` (`ctr tasks exec`); its stdout.
    fn exec(&self, id: &str, command: &[&str]) -> Result<String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let exec_id = format!("exec-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let mut args = vec!["tasks", "exec", "--exec-id", &exec_id, id];
        args.extend_from_slice(command);
        self.ctr(&args)
    }

    /// Start container `id` running `args` under a foreground
    /// `ctr run --rm --cni`: ctr ADDs the network before it starts the task
    /// and, once the task has exited, DELs it (with an empty `CNI_NETNS`)
    /// and removes the container.
    fn run_foreground(&mut self, id: &str, args: &[&str]) -> Result<()> {
        let log = File::create(self.home.join(format!("run-{id}.log")))?;
        let cgroup = format!("/{}/{id}", self.bed.cgroup);
        let child = self
            .command(&[
                "run",
                "--rm",
                "--cni",
                "--snapshotter",
                "native",
                "--cgroup",
                &cgroup,
                IMAGE,
                id,
            ])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting ctr run {id}"))?;
        self.runs.push((id.to_string(), child));
        Ok(())
    }

    /// The output of `ctr run id` so far.
    fn run_log(&self, id: &str) -> String {
        fs::read_to_string(self.home.join(format!("run-{id}.log"))).unwrap_or_default()
    }

    /// Fail if a `ctr run` has ended.
    fn check_runs(&mut self) -> Result<()> {
        for i in 0..self.runs.len() {
            if let Some(status) = self.runs[i].1.try_wait()? {
                let id = &self.runs[i].0;
                bail!("ctr run {id} ended ({status}):\n{}", self.run_log(id));
            }
        }
        Ok(())
    }

    /// Wait for `ctr run id` to end; its output.
    fn wait_run(&mut self, id: &str) -> Result<String> {
        let (_, child) = self
            .runs
            .iter_mut()
            .find(|(run, _)| run == id)
            .with_context(|| format!("no ctr run {id}"))?;
        if wait_exit(child, SETTLE)?.is_none() {
            bail!(
                "ctr run {id} still runs {SETTLE:?} after its task was killed:\n{}",
                self.run_log(id)
            );
        }
        Ok(self.run_log(id))
    }

    /// The tasks: id and status.
    fn tasks(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .ctr(&["tasks", "ls"])?
            .lines()
            .skip(1)
            .filter_map(|l| {
                let fields: Vec<&str> = l.split_whitespace().collect();
                Some((fields.first()?.to_string(), fields.get(2)?.to_string()))
            })
            .collect())
    }
}

impl Drop for Containerd<'_> {
    fn drop(&mut self) {
        let mut live = Vec::new();
        for (id, child) in &mut self.runs {
            if matches!(child.try_wait(), Ok(None)) {
                live.push(id.clone());
            }
        }
        for id in &live {
            let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
        }
        for (_, child) in &mut self.runs {
            if !matches!(wait_exit(child, SETTLE), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Ok(tasks) = self.ctr(&["tasks", "ls", "--quiet"]) {
            for id in tasks.split_whitespace() {
                let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
                let _ = self.ctr(&["tasks", "delete", "--force", id]);
            }
        }
        if let Ok(containers) = self.ctr(&["containers", "ls", "--quiet"]) {
            for id in containers.split_whitespace() {
                let _ = self.ctr(&["containers", "delete", id]);
            }
        }
        drop(self.daemon.take());
        // The containers and shims of tasks that could not be deleted.
        let socket = self.home.join("containerd.sock");
        kill_leftovers(|proc| in_cgroup(proc, &self.bed.cgroup) || has_arg(proc, &socket));
    }
}

/// What one look at a state found: `Ok(Ok(value))` once it is reached,
/// `Ok(Err(why not))` to look again, `Err` to give up at once.
type Look<T> = Result<std::result::Result<T, String>>;

/// Look at a state every 100 ms until it is reached; fail, saying why it
/// was not, if `timeout` passes first.
fn wait_for<T>(what: &str, timeout: Duration, mut look: impl FnMut() -> Look<T>) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        match look().with_context(|| format!("waiting for {what}"))? {
            Ok(value) => return Ok(value),
            Err(why) if Instant::now() >= deadline => {
                bail!("{what}: not within {timeout:?}: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A finished command.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Run `cmd` with stdin closed and its output going to files in `logs` (a
/// daemon it starts cannot hold a pipe of ours open), killing it if it has
/// not finished within `timeout`.
fn run_bounded(cmd: &mut Command, logs: &Path, timeout: Duration) -> Result<Ran> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    fs::create_dir_all(logs)?;
    let (out, err) = (logs.join(format!("{n}.out")), logs.join(format!("{n}.err")));
    let described = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out)?)
        .stderr(File::create(&err)?)
        .spawn()
        .with_context(|| format!("starting {described}"))?;
    let status = wait_exit(&mut child, timeout)?;
    let read = |path: &Path| fs::read_to_string(path).unwrap_or_default();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "{described} did not finish within {timeout:?}: {}",
            read(&err).trim()
        );
    };
    Ok(Ran {
        status,
        stdout: read(&out),
        stderr: read(&err),
    })
}

/// [`run_bounded`], failing unless the command succeeded; its stdout.
fn run_checked(cmd: &mut Command, logs: &Path) -> Result<String> {
    let described = format!("{cmd:?}");
    let ran = run_bounded(cmd, logs, COMMAND_TIMEOUT)?;
    ensure!(
        ran.status.success(),
        "{described} failed ({}): {}{}",
        ran.status,
        ran.stderr.trim(),
        ran.stdout.trim()
    );
    Ok(ran.stdout)
}

/// Wait up to `timeout` for `child` to exit: its status, or `None` if it
/// still runs.
fn wait_exit(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Fail, naming each with its Debian package, unless every one of
/// `programs` is installed, and unless busybox and Debian's CNI plugins
/// are there.
fn require(programs: &[&str]) -> Result<()> {
    tools::require_all(programs)?;
    for (file, package) in [
        (BUSYBOX, "busybox-static"),
        ("/usr/lib/cni/portmap", "containernetworking-plugins"),
        ("/usr/lib/cni/bandwidth", "containernetworking-plugins"),
    ] {
        ensure!(
            Path::new(file).is_file(),
            "{file} is missing (Debian package {package}): run scripts/install-deps.sh"
        );
    }
    Ok(())
}

/// Make `dir` a CNI plugin directory: podswitch-cni as built, and
/// `chained` from /usr/lib/cni.
fn plugin_dir(dir: &Path, chained: &[&str]) -> Result<()> {
    fs::create_dir_all(dir)?;
    symlink(plugin().binary, dir.join("podswitch-cni"))?;
    for name in chained {
        symlink(Path::new("/usr/lib/cni").join(name), dir.join(name))?;
    }
    Ok(())
}

/// podman's `default_ulimits`. Unless told, podman raises a rootful
/// container's open-file and process limits to 1048576, and runc fails
/// with EPERM where that is above the hard limits it runs with and root
/// lacks CAP_SYS_RESOURCE (as here); these stay well below them.
fn ulimits() -> Vec<String> {
    let limits = fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard = |name: &str| -> Option<u64> {
        let line = limits.lines().find(|l| l.starts_with(name))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(fields.len().checked_sub(2)?)?.parse().ok()
    };
    let files = hard("Max open files").map_or(1024, |h| h.min(1024));
    let mut ulimits = vec![format!("nofile={files}:{files}")];
    let processes = hard("Max processes").map_or(4096, |h| h.min(4096));
    ulimits.push(format!("nproc={processes}:{processes}"));
    ulimits
}

/// A busybox root filesystem under `dir`, with a page for httpd, packed
/// with tar: the image's one layer.
fn busybox_layer(dir: &Path, logs: &Path) -> Result<PathBuf> {
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "dev", "etc", "proc", "sys", "tmp", "www"] {
        fs::create_dir_all(rootfs.join(sub))?;
    }
    fs::copy(BUSYBOX, rootfs.join("bin/busybox"))?;
    for applet in APPLETS {
        symlink("busybox", rootfs.join("bin").join(applet))?;
    }
    fs::write(rootfs.join("www/index.html"), PAGE)?;
    let layer = dir.join("rootfs.tar");
    run_checked(
        tools::command("tar")?
            .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&layer)
            .arg("."),
        logs,
    )?;
    Ok(layer)
}

/// An OCI image archive of [`IMAGE`] whose one layer is `layer`, built by
/// hand (an OCI layout, tarred), for `ctr images import`.
fn oci_archive(dir: &Path, layer: &Path, logs: &Path) -> Result<PathBuf> {
    let layout = dir.join("oci");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let add = |bytes: &[u8]| -> Result<Value> {
        let hex = format!("{:x}", Sha256::digest(bytes));
        fs::write(blobs.join(&hex), bytes)?;
        Ok(json!({"digest": format!("sha256:{hex}"), "size": bytes.len()}))
    };
    let mut layer_desc = add(&fs::read(layer)?)?;
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    });
    let mut config_desc = add(&serde_json::to_vec(&config)?)?;
    config_desc["mediaType"] = OCI_CONFIG.into();
    layer_desc["mediaType"] = OCI_LAYER.into();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_desc,
        "layers": [layer_desc],
    });
    let mut manifest_desc = add(&serde_json::to_vec(&manifest)?)?;
    manifest_desc["mediaType"] = OCI_MANIFEST.into();
    manifest_desc["annotations"] = json!({"org.opencontainers.image.ref.name": IMAGE});
    let index = json!({"schemaVersion": 2, "manifests": [manifest_desc]});
    fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    let archive = dir.join("busybox-oci.tar");
    run_checked(
        tools::command("tar")?
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .args(["oci-layout", "index.json", "blobs"]),
        logs,
    )?;
    Ok(archive)
}

/// The two containers, as the runtime reports them (address, MAC), have
/// distinct addresses in node 1's pod network, and are exactly the pod
/// ports of the switch; their addresses.
fn check_pods(node: &SwitchNode, pods: &[(Ipv4Addr, String)]) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let [(a, _), (b, _)] = pods else {
        bail!("expected two containers, the runtime reports {pods:?}");
    };
    ensure!(a != b, "both containers have {a}");
    let gateway = pod_gateway(1);
    for (ip, mac) in pods {
        let [g0, g1, g2, _] = gateway.octets();
        let [o0, o1, o2, host] = ip.octets();
        ensure!(
            [o0, o1, o2] == [g0, g1, g2] && host > 1 && host < 255,
            "{ip} is not a pod address of node 1"
        );
        ensure!(!mac.is_empty(), "the runtime reports no MAC for {ip}");
    }
    let reported: BTreeSet<(String, String)> = pods
        .iter()
        .map(|(ip, mac)| (ip.to_string(), mac.to_lowercase()))
        .collect();
    let ports = pod_port_addresses(node)?;
    ensure!(
        ports == reported,
        "the switch's pod ports {ports:?} are not the containers {reported:?}"
    );
    Ok((*a, *b))
}

/// Fetch `url` with curl as `cmd` runs it: the body, or why not.
fn fetch(mut cmd: Command, url: &str, logs: &Path) -> Look<String> {
    cmd.args(["--silent", "--show-error", "--max-time", "5", url]);
    let ran = run_bounded(&mut cmd, logs, Duration::from_secs(15))?;
    Ok(if ran.status.success() {
        Ok(ran.stdout)
    } else {
        Err(ran.stderr)
    })
}

/// Wait until nothing of any attachment is left on `node` (the kernel
/// removes a dead container's namespace, and so its veth, in the
/// background) and every frame of its switch is accounted for.
fn all_gone(node: &SwitchNode, conf: &Value) -> Result<()> {
    wait_for("nothing left on node 1", SETTLE, || {
        Ok(nothing_left(node, conf)
            .and_then(|()| node.check_frames())
            .map_err(|e| format!("{e:#}")))
    })
}

/// Remove cgroup `name`, with its children, from every hierarchy under
/// /sys/fs/cgroup. Only empty cgroups can be removed: this never touches a
/// process.
fn remove_cgroup(name: &str) {
    let root = Path::new("/sys/fs/cgroup");
    let mut candidates = vec![root.join(name)];
    if let Ok(entries) = fs::read_dir(root) {
        candidates.extend(entries.flatten().map(|e| e.path().join(name)));
    }
    for cgroup in candidates.iter().filter(|c| c.is_dir()) {
        remove_dirs(cgroup);
    }
}

/// `rmdir` every directory under `dir`, deepest first, then `dir`.
fn remove_dirs(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_dirs(&entry.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}

/// SIGKILL every process that `is_ours` picks out by its /proc directory:
/// a container, or a runtime's monitor, that outlived its runtime.
fn kill_leftovers(is_ours: impl Fn(&Path) -> bool) {
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid > 1 && pid != std::process::id() as i32 && is_ours(&entry.path()) {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            eprintln!("killing {} ({pid}), left behind", comm.trim());
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Whether the process at `proc` (its /proc directory) is in cgroup `name`
/// or below it, in any hierarchy.
fn in_cgroup(proc: &Path, name: &str) -> bool {
    fs::read_to_string(proc.join("cgroup")).is_ok_and(|text| {
        text.lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|path| path.split('/').any(|c| c == name))
    })
}

/// Whether the command line of the process at `proc` has the argument
/// `arg`.
fn has_arg(proc: &Path, arg: &Path) -> bool {
    let arg = arg.as_os_str().as_encoded_bytes();
    fs::read(proc.join("cmdline")).is_ok_and(|line| line.split(|&b| b == 0).any(|a| a == arg))
}
