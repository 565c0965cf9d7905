//! A pod cannot reach the daemon's control channel: the daemon holds no
//! inet socket at all (its only control channel is a unix socket, a file),
//! a non-root process in a pod's network namespace is refused by the
//! socket's permissions, and a process with a private `/tmp` and `/run`
//! (a container's mount namespace) does not see the socket at all — even
//! as root. Needs root.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use anyhow::{Context, Result, ensure};
use podswitch_lab::Lab;
use podswitch_lab::cluster::{SwitchOptions, SwitchPair, ping};
use podswitch_lab::traffic::iperf_server;
use podswitch_lab::unprivileged::{Client, UnixAnswer};

/// The socket inodes process `pid` holds open, by fd.
fn socket_inodes(pid: u32) -> Result<BTreeMap<u32, u64>> {
    let mut sockets = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        let target = target.to_string_lossy();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            let fd = entry.file_name().to_string_lossy().parse()?;
            sockets.insert(fd, inode.parse()?);
        }
    }
    Ok(sockets)
}

/// The inodes of every TCP, UDP, UDP-Lite and raw socket, IPv4 and IPv6,
/// in the network namespace of process `pid` (its `/proc/<pid>/net`
/// tables; the inode is the 10th column of each).
fn inet_inodes(pid: u32) -> Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for table in [
        "tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6",
    ] {
        let path = format!("/proc/{pid}/net/{table}");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        for line in text.lines().skip(1) {
            let inode = line.split_whitespace().nth(9);
            inodes.extend(inode.and_then(|i| i.parse::<u64>().ok()));
        }
    }
    Ok(inodes)
}

/// The protocol of each of `pid`'s sockets (fd → name), as the kernel
/// names it in the socket's `system.sockprotoname` attribute: `TCP`,
/// `UDPv6`, `UNIX-STREAM`, `NETLINK`, `XDP`, …
fn socket_protocols(pid: u32, fds: impl Iterator<Item = u32>) -> Result<BTreeMap<u32, String>> {
    let script = "import os, sys\n\
                  for p in sys.argv[1:]:\n\
                  \x20   try:\n\
                  \x20       print(os.getxattr(p, 'system.sockprotoname').rstrip(b'\\0').decode())\n\
                  \x20   except OSError:\n\
                  \x20       print('-')";
    let fds: Vec<u32> = fds.collect();
    let output = podswitch_lab::tools::command("python3")?
        .arg("-c")
        .arg(script)
        .args(fds.iter().map(|fd| format!("/proc/{pid}/fd/{fd}")))
        .output()
        .context("running python3")?;
    ensure!(
        output.status.success(),
        "reading sockprotoname: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let names = String::from_utf8_lossy(&output.stdout);
    Ok(fds
        .into_iter()
        .zip(names.lines().map(String::from))
        .filter(|(_, name)| name != "-") // closed meanwhile
        .collect())
}

#[test]
fn pods_cannot_reach_the_control_socket() -> Result<()> {
    let mut lab = Lab::new("h6-iso")?;
    let dir = lab.scratch_dir()?;
    let binary = Path::new(env!("CARGO_BIN_EXE_podswitch"));
    let SwitchPair { nodes, pods } =
        SwitchPair::build(&mut lab, binary, &dir, &SwitchOptions::default())?;
    let [n1, _] = &nodes;
    let [[a, _], [c, _]] = &pods;
    // Traffic first, so the daemon has done its run-time work (next hops
    // resolved, frames forwarded) before its sockets are looked at.
    ensure!(ping(&a.ns, c.ip, 3)? >= 2, "pods do not talk");

    // (a) No inet socket: none of the daemon's socket inodes is in its
    // network namespace's TCP, UDP or raw tables, and the kernel names
    // every one of them unix, netlink or AF_XDP.
    let pid = n1.pid().context("no daemon")?;
    let sockets = socket_inodes(pid)?;
    let inet = inet_inodes(pid)?;
    let held: Vec<_> = sockets.values().filter(|i| inet.contains(i)).collect();
    ensure!(
        held.is_empty(),
        "the daemon holds inet sockets {held:?} (fd → inode {sockets:?})"
    );
    let protocols = socket_protocols(pid, sockets.keys().copied())?;
    let mut census: BTreeMap<&str, usize> = BTreeMap::new();
    for name in protocols.values() {
        *census.entry(name.as_str()).or_default() += 1;
    }
    eprintln!("the daemon's sockets, by protocol: {census:?}");
    ensure!(
        protocols
            .values()
            .all(|p| p.starts_with("UNIX") || p == "NETLINK" || p == "XDP"),
        "the daemon holds sockets other than unix, netlink and AF_XDP: {protocols:?}"
    );
    ensure!(
        census.keys().any(|p| p.starts_with("UNIX")),
        "the control socket is not among the daemon's sockets: {protocols:?}"
    );
    // The same checks see an inet socket where there is one: an iperf3
    // server in the node's namespace.
    let server = iperf_server(&n1.ns, 5299)?;
    let server_sockets = socket_inodes(server.pid())?;
    let server_inet = inet_inodes(server.pid())?;
    ensure!(
        server_sockets.values().any(|i| server_inet.contains(i)),
        "the check missed iperf3's listening socket: {server_sockets:?}"
    );
    let server_protocols = socket_protocols(server.pid(), server_sockets.keys().copied())?;
    ensure!(
        server_protocols.values().any(|p| p.starts_with("TCP")),
        "iperf3's sockets: {server_protocols:?}"
    );
    drop(server);

    let info = r#"{"op":"info"}"#;
    // Root in the node's namespaces gets its answer (the client works).
    let root = Client::default().unix_request(&n1.socket, info)?;
    ensure!(
        matches!(&root, UnixAnswer::Answered(a) if a.contains("pod_cidr")),
        "root on the node: {root:?}"
    );

    // (b) A non-root process in a pod's network namespace cannot connect:
    // the socket is 0600 and its directory 0700, root's.
    let in_pod = Client {
        netns: Some(&a.ns),
        nobody: true,
        ..Client::default()
    };
    let answer = in_pod.unix_request(&n1.socket, info)?;
    ensure!(
        answer == UnixAnswer::Refused("EACCES".into()),
        "nobody in a pod: {answer:?}"
    );
    // One that gets past the file's mode (CAP_DAC_OVERRIDE) is refused by
    // its uid (SO_PEERCRED).
    let past_mode = Client {
        caps: &["dac_override"],
        ..in_pod
    };
    let answer = past_mode.unix_request(&n1.socket, info)?;
    ensure!(
        matches!(&answer, UnixAnswer::Answered(a) if a.contains("permission denied") && !a.contains("pod_cidr")),
        "nobody with CAP_DAC_OVERRIDE in a pod: {answer:?}"
    );

    // (c) A network namespace alone does not hide a socket file: root in
    // the pod's network namespace, sharing the node's files, connects. A
    // container also has a mount namespace of its own with a private /tmp
    // and /run (where the lab's and the default socket live): there the
    // socket is not found, even by root.
    let root_in_pod = Client {
        netns: Some(&a.ns),
        ..Client::default()
    };
    let answer = root_in_pod.unix_request(&n1.socket, info)?;
    ensure!(
        matches!(&answer, UnixAnswer::Answered(a) if a.contains("pod_cidr")),
        "root in a pod's network namespace, the node's files: {answer:?}"
    );
    let temp = std::env::temp_dir();
    ensure!(
        n1.socket.starts_with(&temp),
        "the lab's socket {} is not under {}",
        n1.socket.display(),
        temp.display()
    );
    let container = Client {
        private_dir: Some(&temp),
        ..root_in_pod
    };
    let answer = container.unix_request(&n1.socket, info)?;
    ensure!(
        answer == UnixAnswer::Refused("ENOENT".into()),
        "root in a pod with a private {}: {answer:?}",
        temp.display()
    );
    // The daemon served on throughout.
    ensure!(
        ping(&a.ns, c.ip, 3)? >= 2,
        "pods stopped talking after the attempts"
    );
    n1.cli(&["info"]).map(drop)
}
