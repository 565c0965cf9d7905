//! AF_XDP ports and the switch's XDP programs on real veths, in network
//! namespaces (needs root):
//!
//! - forwarding: two pod veths in a middle namespace, one shared UMEM, a
//!   socket on every active queue, frames moved RX → TX as descriptors
//!   (a→b frames sent from inside the headroom), ping and iperf3 TCP in
//!   native and generic mode, and every frame accounted for at the end;
//!   the same with MTU 9000 veths, whose frames span several chunks
//!   (multi-buffer runs passed on as they are), with DF pings as large;
//! - the uplink program: tunnel UDP to the VTEP reaches the socket while
//!   ARP/ND, ping, TCP and other UDP to the node still work, IPv4 then IPv6
//!   with the filter changed at run time;
//! - stale programs (left by `ip … xdp… obj`, or by a SIGKILLed process
//!   with a bound socket) are replaced; Auto falls back to generic mode
//!   where native XDP refuses the device;
//! - reclaim: the frames in every ring of a socket whose device is deleted
//!   all come back.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use podswitch::afxdp::{CopyMode, Desc, Umem, UmemConfig, XskConfig, XskSocket, active_rx_queues};
use podswitch::xdp::{UplinkFilter, XdpMode, XdpModeChoice, XdpProgram, detach_stale};
use podswitch_lab::{Lab, Netns, Process, RawLink, format_mac};

/// The pod program as built by build.rs, for `ip link set … xdp… obj`.
const POD_OBJECT_PATH: &str = concat!(env!("OUT_DIR"), "/pod.o");
/// Frames per RX batch in the test forwarder.
const BATCH: usize = 64;
/// How far a→b frames are moved back into the headroom before TX.
const HEADROOM_SHIFT: u64 = 64;
/// The test forwarder stops by itself after this, whatever happens.
const FORWARDER_LIMIT: Duration = Duration::from_secs(60);
/// Environment variable that turns the ignored holder test into the
/// process the stale test SIGKILLs.
const HOLDER_ENV: &str = "PODSWITCH_XDP_HOLDER_IF";
const HOLDER_READY: &str = "xdp-holder-ready";

/// One lab at a time: the forwarding runs need both CPUs.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The ifindex of `ifname` in `ns` (`ip netns exec` mounts that
/// namespace's /sys).
fn ifindex(ns: &Netns, ifname: &str) -> Result<u32> {
    let text = ns.run("cat", &[&format!("/sys/class/net/{ifname}/ifindex")])?;
    Ok(text.trim().parse()?)
}

/// `ping -c 5` from `ns` to `dst`, with no loss.
fn ping(ns: &Netns, dst: &str) -> Result<()> {
    let out = ns.run("ping", &["-c", "5", "-i", "0.2", "-W", "2", dst])?;
    ensure!(
        out.contains(" 0% packet loss"),
        "ping {dst} from {}: {out}",
        ns.name()
    );
    Ok(())
}

/// The chunk address of the frame holding `addr`.
fn chunk_of(umem: &Umem, addr: u64) -> u64 {
    umem.chunk_addr(umem.chunk_index(addr))
}

/// Every chunk address of `umem`, in order.
fn all_chunks(umem: &Umem) -> Vec<u64> {
    (0..umem.frame_count())
        .map(|i| umem.chunk_addr(i))
        .collect()
}

/// Put `frames` back into one sorted list and check it is every frame of
/// the UMEM exactly once.
fn assert_every_frame_once(umem: &Umem, mut frames: Vec<u64>) {
    frames.sort_unstable();
    let distinct: BTreeSet<u64> = frames.iter().copied().collect();
    assert_eq!(distinct.len(), frames.len(), "a frame came back twice");
    assert_eq!(frames, all_chunks(umem), "frames lost");
}

/// What the test forwarder hands back when it stops.
struct Forwarded {
    sockets: Vec<XskSocket>,
    free: Vec<u64>,
    frames: u64,
    misplaced_rx: u64,
}

/// A minimal switch: `sockets` are the queues of port 0 then those of port
/// 1 (`queues` each); a frame received on queue q of one port leaves on
/// queue q of the other, as the same descriptor. Frames from port 0 are
/// first moved `HEADROOM_SHIFT` bytes back into the headroom, as
/// encapsulation would, so TX sees in-chunk addresses that are not where
/// RX put the data.
fn forward(
    umem: &Umem,
    mut sockets: Vec<XskSocket>,
    queues: usize,
    stop: &AtomicBool,
) -> Forwarded {
    let mut free = all_chunks(umem);
    let fill_target = umem.frame_count() / (2 * sockets.len() as u32);
    let rx_offset = u64::from(umem.rx_data_offset());
    let (mut frames, mut misplaced_rx, mut idle) = (0, 0, 0u32);
    let mut batch: Vec<Desc> = Vec::with_capacity(BATCH);
    let deadline = Instant::now() + FORWARDER_LIMIT;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut work = 0;
        for socket in &mut sockets {
            work += socket.complete(&mut free, BATCH * 4);
        }
        for from in 0..sockets.len() {
            batch.clear();
            if sockets[from].recv(&mut batch, BATCH) == 0 {
                continue;
            }
            work += batch.len();
            frames += batch.len() as u64;
            for desc in &mut batch {
                let offset = desc.addr - chunk_of(umem, desc.addr);
                if offset != rx_offset {
                    misplaced_rx += 1;
                }
                if from < queues {
                    let (start, len) = (offset as usize, desc.len as usize);
                    // SAFETY: the frame just came off an RX ring: it is on
                    // no ring and this is the only reference to it.
                    let chunk = unsafe { umem.chunk_mut(desc.addr) };
                    chunk.copy_within(start..start + len, start - HEADROOM_SHIFT as usize);
                    desc.addr -= HEADROOM_SHIFT;
                }
            }
            let to = (from + queues) % sockets.len();
            let sent = sockets[to].send(&batch);
            free.extend(batch[sent..].iter().map(|desc| chunk_of(umem, desc.addr)));
        }
        for socket in &mut sockets {
            if socket.ring_levels().tx > 0 && socket.tx_needs_wakeup() {
                socket.kick_tx().expect("TX kick");
            }
            let wanted = fill_target
                .saturating_sub(socket.frames_held_for_rx())
                .min(socket.fill_free_slots());
            let start = free.len().saturating_sub(wanted as usize);
            let filled = socket.fill(&free[start..]);
            free.drain(start..start + filled);
            if socket.fill_needs_wakeup() {
                socket.kick_rx();
            }
        }
        if work > 0 {
            idle = 0;
        } else {
            idle += 1;
            if idle > 100 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
    Forwarded {
        sockets,
        free,
        frames,
        misplaced_rx,
    }
}

/// Sets the flag when dropped, so the forwarder stops even if traffic fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Ping both ways over IPv4, once over IPv6, with the largest packets the
/// MTU `mtu` lets through whole (DF set) both ways when it is over 1500,
/// then 2 s of iperf3 TCP a→b; the received rate in Mbit/s.
fn pod_traffic(a: &Netns, b: &Netns, mtu: u32) -> Result<f64> {
    ping(a, "10.77.0.2")?;
    ping(b, "10.77.0.1")?;
    ping(a, "fd77::2")?;
    if mtu > 1500 {
        let payload = (mtu - 28).to_string();
        for (from, to) in [(a, "10.77.0.2"), (b, "10.77.0.1")] {
            let out = from.run(
                "ping",
                &[
                    "-c", "5", "-i", "0.2", "-W", "2", "-M", "do", "-s", &payload, to,
                ],
            )?;
            ensure!(
                out.contains(" 0% packet loss"),
                "ping -s {payload} {to}: {out}"
            );
        }
    }
    let _server = Process::spawn(
        b.command("iperf3")?.args(["-s", "-1", "-p", "5201"]),
        "iperf3 server",
    )?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.run("ss", &["-Hltn", "sport = :5201"])?.trim().is_empty() {
        ensure!(
            Instant::now() < deadline,
            "iperf3 server did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = a.run(
        "timeout",
        &[
            "20",
            "iperf3",
            "-c",
            "10.77.0.2",
            "-p",
            "5201",
            "-t",
            "2",
            "-J",
        ],
    )?;
    let report: serde_json::Value = serde_json::from_str(&report).context("iperf3 JSON")?;
    let bits = report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 report has no received rate")?;
    Ok(bits / 1e6)
}

/// Forward between two pods whose veths have MTU `mtu`: over a chunk, as
/// multi-buffer packets (runs of descriptors) passed on as they are.
fn forwarding(choice: XdpModeChoice, expected: XdpMode, mtu: u32) -> Result<()> {
    let _serial = serial();
    let mut lab = Lab::new("xdp-fwd")?;
    let a = lab.netns("a")?;
    let b = lab.netns("b")?;
    let sw = lab.netns("sw")?;
    for (pod_ns, pod, port, v4, v6) in [
        (&a, "a0", "sa", "10.77.0.1/24", "fd77::1/64"),
        (&b, "b0", "sb", "10.77.0.2/24", "fd77::2/64"),
    ] {
        sw.add_veth(port, pod_ns, pod)?;
        pod_ns.ip(&["addr", "add", v4, "dev", pod])?;
        pod_ns.ip(&["addr", "add", v6, "dev", pod, "nodad"])?;
        // TCP through an AF_XDP port needs full checksums and no
        // super-frames from the pod.
        pod_ns.run(
            "ethtool",
            &["-K", pod, "tx", "off", "tso", "off", "gso", "off"],
        )?;
    }
    // A veth starts with one active queue; raise both ends to two.
    ensure!(
        sw.enter(|| Ok(active_rx_queues("sa")?))? == 1,
        "a new veth has one active rx queue"
    );
    for (ns, ifname) in [(&a, "a0"), (&sw, "sa"), (&b, "b0"), (&sw, "sb")] {
        ns.run("ethtool", &["-L", ifname, "rx", "2", "tx", "2"])?;
        ns.ip(&["link", "set", ifname, "mtu", &mtu.to_string(), "up"])?;
    }
    let ports = [("sa", ifindex(&sw, "sa")?), ("sb", ifindex(&sw, "sb")?)];

    let (a, b) = (&a, &b);
    sw.enter(move || {
        let umem = Umem::new(&UmemConfig {
            frame_count: 16384,
            ..UmemConfig::default()
        })?;
        let queues = active_rx_queues("sa")? as usize;
        ensure!(
            queues == 2 && active_rx_queues("sb")? == 2,
            "ethtool -L raised the queues"
        );
        let mut programs = Vec::new();
        let mut sockets: Vec<XskSocket> = Vec::new();
        for (ifname, ifindex) in ports {
            let mut program = XdpProgram::attach_pod(ifname, choice)?;
            ensure!(
                program.mode() == expected,
                "{ifname} runs {} XDP",
                program.mode()
            );
            for queue in 0..queues as u32 {
                let share = sockets.first().map(XskSocket::umem_share).transpose()?;
                let socket =
                    XskSocket::bind(&umem, ifindex, queue, &XskConfig::default(), share.as_ref())?;
                ensure!(!socket.is_zero_copy(), "veth has no zero-copy AF_XDP");
                program.register_socket(queue, socket.as_raw_fd())?;
                sockets.push(socket);
            }
            programs.push(program);
        }

        let stop = AtomicBool::new(false);
        let (traffic, forwarded) = std::thread::scope(|scope| {
            let forwarder = scope.spawn(|| forward(&umem, sockets, queues, &stop));
            let traffic = {
                let _stop = StopOnDrop(&stop);
                pod_traffic(a, b, mtu)
            };
            (traffic, forwarder.join().expect("forwarder panicked"))
        });
        let stats: Vec<_> = forwarded
            .sockets
            .iter()
            .map(|s| s.statistics().map(|st| (s.ifindex(), s.queue(), st)))
            .collect::<Result<_, _>>()?;
        eprintln!(
            "{expected} mode: {} frames forwarded, iperf3 {:.0} Mbit/s; kernel counters {stats:?}",
            forwarded.frames,
            traffic.as_ref().unwrap_or(&0.0)
        );
        let mbits = traffic?;
        ensure!(
            mbits > 50.0,
            "iperf3 TCP through the switch only reached {mbits:.1} Mbit/s"
        );
        ensure!(
            forwarded.frames > 10_000,
            "only {} frames forwarded",
            forwarded.frames
        );
        ensure!(
            forwarded.misplaced_rx == 0,
            "received data not at rx_data_offset"
        );

        // Frame accounting: every frame is free or held by a socket…
        let held: u32 = forwarded.sockets.iter().map(XskSocket::frames_held).sum();
        ensure!(
            forwarded.free.len() as u32 + held == umem.frame_count(),
            "{} free + {held} held != {} frames",
            forwarded.free.len(),
            umem.frame_count()
        );
        // …and once the programs are gone, reclaiming the sockets brings
        // every frame back exactly once.
        drop(programs);
        let mut free = forwarded.free;
        for socket in forwarded.sockets {
            socket.reclaim(&mut free);
        }
        assert_every_frame_once(&umem, free);
        Ok(())
    })
}

#[test]
fn forwards_descriptors_between_veths_in_native_mode() -> Result<()> {
    forwarding(XdpModeChoice::Native, XdpMode::Native, 1500)
}

#[test]
fn forwards_multi_buffer_jumbo_frames_in_native_mode() -> Result<()> {
    forwarding(XdpModeChoice::Native, XdpMode::Native, 9000)
}

#[test]
fn forwards_multi_buffer_jumbo_frames_in_generic_mode() -> Result<()> {
    forwarding(XdpModeChoice::Generic, XdpMode::Generic, 9000)
}

#[test]
fn forwards_descriptors_between_veths_in_generic_mode() -> Result<()> {
    forwarding(XdpModeChoice::Generic, XdpMode::Generic, 1500)
}

const NODE_V4: &str = "10.78.0.1";
const NODE_V6: &str = "fd78::1";
const TUNNEL_PORT: u16 = 4789;

/// Frames the uplink socket receives within `limit` (refilling as it
/// goes), as (destination address, UDP destination port).
fn tunnel_frames(
    umem: &Umem,
    socket: &mut XskSocket,
    want: usize,
    limit: Duration,
) -> Vec<(IpAddr, u16)> {
    let mut seen = Vec::new();
    let mut batch = Vec::new();
    let deadline = Instant::now() + limit;
    while seen.len() < want && Instant::now() < deadline {
        batch.clear();
        if socket.recv(&mut batch, BATCH) == 0 {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        for desc in &batch {
            let start = (desc.addr - chunk_of(umem, desc.addr)) as usize;
            // SAFETY: the frame just came off the RX ring: it is on no
            // ring and this is the only reference to it.
            let frame = &unsafe { umem.chunk_mut(desc.addr) }[start..start + desc.len as usize];
            seen.push(udp_destination(frame).unwrap_or((IpAddr::from([0, 0, 0, 0]), 0)));
        }
        let frames: Vec<u64> = batch.iter().map(|desc| chunk_of(umem, desc.addr)).collect();
        assert_eq!(socket.fill(&frames), frames.len());
    }
    seen
}

/// The destination address and UDP port of an untagged Ethernet frame.
fn udp_destination(frame: &[u8]) -> Option<(IpAddr, u16)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let (addr, udp): (IpAddr, usize) = match ethertype {
        0x0800 if *frame.get(23)? == 17 => {
            let ihl = usize::from(frame[14] & 0xf) * 4;
            (
                <[u8; 4]>::try_from(frame.get(30..34)?).ok()?.into(),
                14 + ihl,
            )
        }
        0x86dd if *frame.get(20)? == 17 => {
            (<[u8; 16]>::try_from(frame.get(38..54)?).ok()?.into(), 54)
        }
        _ => return None,
    };
    Some((
        addr,
        u16::from_be_bytes([*frame.get(udp + 2)?, *frame.get(udp + 3)?]),
    ))
}

/// Accept one connection on `listener` (within 5 s) and echo what it sends.
fn echo_once(listener: &TcpListener) -> Result<()> {
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).context("accepting the TCP connection"),
        }
    };
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0; 5];
    stream.read_exact(&mut buf)?;
    stream.write_all(&buf)?;
    Ok(())
}

/// From the remote: `tunnel` datagrams to the node's tunnel port at
/// `vtep`, 3 to port 4790, a TCP echo on port 5000 and a ping; then check
/// that ARP or neighbour discovery resolved `vtep` to `node_mac`.
fn remote_traffic(remote: &Netns, vtep: IpAddr, node_mac: &str, tunnel: usize) -> Result<()> {
    remote.enter(move || {
        let any: SocketAddr = if vtep.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()?;
        let udp = UdpSocket::bind(any)?;
        for i in 0..tunnel {
            udp.send_to(format!("tunnel {i}").as_bytes(), (vtep, TUNNEL_PORT))?;
        }
        for i in 0..3 {
            udp.send_to(format!("kernel {i}").as_bytes(), (vtep, 4790))?;
        }
        let mut tcp = TcpStream::connect_timeout(&(vtep, 5000).into(), Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        tcp.write_all(b"hello")?;
        let mut echoed = [0; 5];
        tcp.read_exact(&mut echoed)?;
        ensure!(
            &echoed == b"hello",
            "TCP echo through the uplink came back wrong"
        );
        Ok(())
    })?;
    ping(remote, &vtep.to_string())?;
    let neighbour = remote.ip(&["neigh", "show", &vtep.to_string(), "dev", "r0"])?;
    ensure!(
        neighbour.contains(node_mac),
        "{vtep} not resolved to {node_mac}: {neighbour}"
    );
    Ok(())
}

/// Datagrams waiting on `socket` (they were sent before the TCP echo and
/// the ping, so they have arrived): read until 100 ms pass without one.
fn kernel_datagrams(socket: &UdpSocket) -> Result<usize> {
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut buf = [0; 64];
    let mut count = 0;
    while count < 1000 && socket.recv(&mut buf).is_ok() {
        count += 1;
    }
    Ok(count)
}

#[test]
fn uplink_takes_only_tunnel_traffic_to_the_vtep_in_native_mode() -> Result<()> {
    uplink(XdpModeChoice::Auto, XdpMode::Native)
}

#[test]
fn uplink_takes_only_tunnel_traffic_to_the_vtep_in_generic_mode() -> Result<()> {
    uplink(XdpModeChoice::Generic, XdpMode::Generic)
}

fn uplink(choice: XdpModeChoice, expected: XdpMode) -> Result<()> {
    let _serial = serial();
    let mut lab = Lab::new("xdp-up")?;
    let node = lab.netns("node")?;
    let remote = lab.netns("remote")?;
    node.add_veth("u0", &remote, "r0")?;
    for (ns, ifname, v4, v6) in [
        (&node, "u0", "10.78.0.1/24", "fd78::1/64"),
        (&remote, "r0", "10.78.0.2/24", "fd78::2/64"),
    ] {
        ns.ip(&["addr", "add", v4, "dev", ifname])?;
        ns.ip(&["addr", "add", v6, "dev", ifname, "nodad"])?;
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    let u0 = ifindex(&node, "u0")?;
    let node_mac = format_mac(node.mac("u0")?);
    let v4: IpAddr = NODE_V4.parse()?;
    let v6: IpAddr = NODE_V6.parse()?;

    let remote = &remote;
    node.enter(move || {
        let umem = Umem::new(&UmemConfig {
            frame_count: 512,
            ..UmemConfig::default()
        })?;
        let filter = UplinkFilter {
            vtep: v4,
            udp_port: TUNNEL_PORT,
            vxlan_tcp_to_kernel: false,
        };
        let mut program = XdpProgram::attach_uplink("u0", choice, &filter)?;
        ensure!(program.mode() == expected, "u0 runs {} XDP", program.mode());
        ensure!(active_rx_queues("u0")? == 1);
        let mut socket = XskSocket::bind(&umem, u0, 0, &XskConfig::default(), None)?;
        program.register_socket(0, socket.as_raw_fd())?;
        let frames: Vec<u64> = (0..256).map(|i| umem.chunk_addr(i)).collect();
        ensure!(socket.fill(&frames) == frames.len());
        // The node's own sockets: the tunnel port (must see nothing while
        // it is redirected), another UDP port, and TCP echo servers.
        let tunnel_kernel = UdpSocket::bind(("0.0.0.0", TUNNEL_PORT))?;
        let other_udp = UdpSocket::bind("0.0.0.0:4790")?;
        let other_udp6 = UdpSocket::bind((v6, 4790))?;
        let tcp4 = TcpListener::bind((v4, 5000))?;
        let tcp6 = TcpListener::bind((v6, 5000))?;

        // IPv4 VTEP.
        std::thread::scope(|scope| {
            let echo = scope.spawn(|| echo_once(&tcp4));
            remote_traffic(remote, v4, &node_mac, 10)?;
            echo.join().expect("echo thread panicked")
        })?;
        let seen = tunnel_frames(&umem, &mut socket, 10, Duration::from_secs(3));
        ensure!(
            seen == vec![(v4, TUNNEL_PORT); 10],
            "the socket got {seen:?}"
        );
        ensure!(
            kernel_datagrams(&tunnel_kernel)? == 0,
            "tunnel traffic leaked to the kernel"
        );
        ensure!(
            kernel_datagrams(&other_udp)? == 3,
            "UDP to another port must reach the node"
        );
        let counters = program.uplink_counters()?;
        eprintln!("IPv4 VTEP, {expected} mode: {counters:?}");
        ensure!(counters.redirected == 10 && counters.redirect_failed == 0 && counters.passed > 0);

        // Switch the VTEP to IPv6 at run time: IPv4 tunnel traffic now goes
        // to the kernel.
        program.set_uplink_filter(&UplinkFilter { vtep: v6, ..filter })?;
        std::thread::scope(|scope| {
            let echo = scope.spawn(|| echo_once(&tcp6));
            remote_traffic(remote, v6, &node_mac, 10)?;
            echo.join().expect("echo thread panicked")
        })?;
        remote.enter(|| {
            let udp = UdpSocket::bind("0.0.0.0:0")?;
            for _ in 0..4 {
                udp.send_to(b"now the kernel's", (v4, TUNNEL_PORT))?;
            }
            Ok(())
        })?;
        let seen = tunnel_frames(&umem, &mut socket, 10, Duration::from_secs(3));
        ensure!(
            seen == vec![(v6, TUNNEL_PORT); 10],
            "the socket got {seen:?}"
        );
        ensure!(
            kernel_datagrams(&tunnel_kernel)? == 4,
            "IPv4 tunnel traffic must pass once the VTEP is IPv6"
        );
        ensure!(
            kernel_datagrams(&other_udp6)? == 3,
            "UDP over IPv6 to another port must reach the node"
        );
        let counters = program.uplink_counters()?;
        eprintln!("then IPv6 VTEP, {expected} mode: {counters:?}");
        ensure!(counters.redirected == 20 && counters.redirect_failed == 0);

        // Back to IPv4, VXLAN's TCP to the kernel (`tunnel_receive`): a
        // VXLAN datagram carrying TCP/IPv4 passes, one carrying UDP is
        // redirected.
        program.set_uplink_filter(&UplinkFilter {
            vxlan_tcp_to_kernel: true,
            ..filter
        })?;
        let vxlan_carrying = |protocol: u8| {
            let mut datagram = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
            datagram.extend_from_slice(&[0x02; 12]);
            datagram.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, protocol]);
            datagram.resize(8 + 14 + 40, 0);
            datagram
        };
        remote.enter(|| {
            let udp = UdpSocket::bind("0.0.0.0:0")?;
            for protocol in [6, 6, 6, 17, 17] {
                udp.send_to(&vxlan_carrying(protocol), (v4, TUNNEL_PORT))?;
            }
            Ok(())
        })?;
        let seen = tunnel_frames(&umem, &mut socket, 2, Duration::from_secs(3));
        ensure!(
            seen == vec![(v4, TUNNEL_PORT); 2],
            "the socket got {seen:?}"
        );
        ensure!(
            kernel_datagrams(&tunnel_kernel)? == 3,
            "VXLAN's TCP must pass to the kernel"
        );
        let counters = program.uplink_counters()?;
        eprintln!("then VXLAN's TCP to the kernel, {expected} mode: {counters:?}");
        ensure!(counters.redirected == 22 && counters.to_kernel == 3);
        Ok(())
    })
}

/// The XDP attachment `ip` reports on `ifname`, if any.
fn attached_program(ns: &Netns, ifname: &str) -> Result<Option<String>> {
    let out = ns.ip(&["link", "show", "dev", ifname])?;
    Ok(out
        .split_whitespace()
        .find(|word| word.starts_with("xdp"))
        .map(str::to_string))
}

#[test]
fn stale_programs_are_replaced() -> Result<()> {
    let _serial = serial();
    let mut lab = Lab::new("xdp-stale")?;
    let ns = lab.netns("n")?;
    ns.add_veth("s0", &ns, "s1")?;
    ns.ip(&["link", "set", "s0", "up"])?;
    ns.ip(&["link", "set", "s1", "up"])?;
    let s0 = ifindex(&ns, "s0")?;

    // Left by `ip` (netlink) in generic mode; we attach in native mode,
    // which the kernel refuses while a generic program is there.
    ns.ip(&[
        "link",
        "set",
        "dev",
        "s0",
        "xdpgeneric",
        "obj",
        POD_OBJECT_PATH,
        "sec",
        "xdp.frags",
    ])?;
    ensure!(attached_program(&ns, "s0")?.as_deref() == Some("xdpgeneric"));
    let ns_ref = &ns;
    ns.enter(move || {
        let program = XdpProgram::attach_pod("s0", XdpModeChoice::Native)?;
        ensure!(program.mode() == XdpMode::Native);
        // Our bpf_link cannot be taken over: not by ip, not by detach_stale.
        ensure!(
            ns_ref
                .ip(&[
                    "link",
                    "set",
                    "dev",
                    "s0",
                    "xdpdrv",
                    "obj",
                    POD_OBJECT_PATH,
                    "sec",
                    "xdp.frags"
                ])
                .is_err()
        );
        let live = detach_stale("s0").expect_err("a live bpf_link is not stale");
        ensure!(live.to_string().contains("live bpf_link"), "{live:#}");
        drop(program);
        ensure!(!detach_stale("s0")?, "nothing left after drop");
        Ok(())
    })?;
    ensure!(attached_program(&ns, "s0")?.is_none());

    // Left in native mode; replaced by the uplink program in generic mode.
    ns.ip(&[
        "link",
        "set",
        "dev",
        "s1",
        "xdpdrv",
        "obj",
        POD_OBJECT_PATH,
        "sec",
        "xdp.frags",
    ])?;
    ns.enter(|| {
        let filter = UplinkFilter {
            vtep: "10.79.0.1".parse()?,
            udp_port: TUNNEL_PORT,
            vxlan_tcp_to_kernel: false,
        };
        let program = XdpProgram::attach_uplink("s1", XdpModeChoice::Generic, &filter)?;
        ensure!(program.mode() == XdpMode::Generic);
        Ok(())
    })?;
    ensure!(attached_program(&ns, "s1")?.is_none());

    // Left by a process killed with SIGKILL while it held a program (through
    // a bpf_link) and a bound socket: the link dies with it, and binding the
    // same queue again right away works (EBUSY is retried).
    let exe = std::env::current_exe()?;
    let mut holder = ns
        .command(exe.to_str().context("test binary path")?)?
        .args([
            "--exact",
            "xdp_holder_for_stale_test",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, "s0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let ready = BufReader::new(holder.stdout.take().context("holder stdout")?)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains(HOLDER_READY));
    let _ = holder.kill(); // SIGKILL; it may already have failed and exited
    holder.wait()?;
    ensure!(ready, "the holder process did not get ready");
    ns.enter(|| {
        ensure!(
            !detach_stale("s0")?,
            "a SIGKILLed process's bpf_link must be gone"
        );
        let mut program = XdpProgram::attach_pod("s0", XdpModeChoice::Auto)?;
        let umem = Umem::new(&UmemConfig {
            frame_count: 64,
            ..UmemConfig::default()
        })?;
        let started = Instant::now();
        let socket = XskSocket::bind(&umem, s0, 0, &XskConfig::default(), None)?;
        eprintln!(
            "rebound s0 queue 0 after SIGKILL in {:?}",
            started.elapsed()
        );
        program.register_socket(0, socket.as_raw_fd())?;
        // Closing and binding the same queue at once meets EBUSY while the
        // kernel frees the old socket's pool; bind waits it out.
        drop(socket);
        let started = Instant::now();
        let socket = XskSocket::bind(&umem, s0, 0, &XskConfig::default(), None)?;
        eprintln!(
            "rebound s0 queue 0 right after close in {:?}",
            started.elapsed()
        );
        program.register_socket(0, socket.as_raw_fd())?;
        Ok(())
    })
}

/// Not a test by itself: the process `stale_programs_are_replaced` starts
/// and SIGKILLs. It attaches the pod program and binds a socket on the
/// interface named by `PODSWITCH_XDP_HOLDER_IF`, says it is ready, and
/// waits to be killed.
#[test]
#[ignore = "helper process of stale_programs_are_replaced"]
fn xdp_holder_for_stale_test() -> Result<()> {
    let Ok(ifname) = std::env::var(HOLDER_ENV) else {
        return Ok(());
    };
    let ifindex: u32 = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))?
        .trim()
        .parse()?;
    let mut program = XdpProgram::attach_pod(&ifname, XdpModeChoice::Native)?;
    let umem = Umem::new(&UmemConfig {
        frame_count: 64,
        ..UmemConfig::default()
    })?;
    let socket = XskSocket::bind(&umem, ifindex, 0, &XskConfig::default(), None)?;
    program.register_socket(0, socket.as_raw_fd())?;
    println!("{HOLDER_READY}");
    std::io::stdout().flush()?;
    std::thread::sleep(Duration::from_secs(30));
    bail!("the holder was not killed")
}

#[test]
fn auto_falls_back_to_generic_where_native_is_refused() -> Result<()> {
    let _serial = serial();
    let mut lab = Lab::new("xdp-auto")?;
    let ns = lab.netns("n")?;
    // A bridge device has no native XDP. (A veth refuses it only to a
    // program without multi-buffer support, above a peer MTU of 3506.)
    ns.ip(&["link", "add", "m0", "type", "bridge"])?;
    ns.ip(&["link", "set", "m0", "up"])?;
    ns.enter(|| {
        ensure!(XdpProgram::attach_pod("m0", XdpModeChoice::Native).is_err());
        let program = XdpProgram::attach_pod("m0", XdpModeChoice::Auto)?;
        ensure!(program.mode() == XdpMode::Generic, "{:?}", program.mode());
        Ok(())
    })
}

#[test]
fn reclaim_returns_every_frame_of_a_deleted_device() -> Result<()> {
    let _serial = serial();
    let mut lab = Lab::new("xdp-reclaim")?;
    let ns = lab.netns("n")?;
    ns.add_veth("x0", &ns, "x1")?;
    ns.add_veth("y0", &ns, "y1")?;
    for ifname in ["x0", "x1", "y0", "y1"] {
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    let (x0, y0) = (ifindex(&ns, "x0")?, ifindex(&ns, "y0")?);
    let mut injector = RawLink::open(&ns, "x1", Duration::from_millis(100))?;
    let frame: Vec<u8> = [[0xff; 6], [0x02, 0, 0, 0, 0, 1]]
        .concat()
        .into_iter()
        .chain([0x88, 0xb5])
        .chain([0; 46])
        .collect();

    let ns_ref = &ns;
    ns.enter(move || {
        let umem = Umem::new(&UmemConfig {
            frame_count: 256,
            ..UmemConfig::default()
        })?;
        let zero_copy = XskConfig {
            copy_mode: CopyMode::ZeroCopy,
            ..XskConfig::default()
        };
        let refused = XskSocket::bind(&umem, y0, 0, &zero_copy, None)
            .err()
            .context("veth zero-copy")?;
        ensure!(
            refused.kind() == std::io::ErrorKind::Unsupported,
            "{refused}"
        );
        let owner_socket = XskSocket::bind(&umem, y0, 0, &XskConfig::default(), None)?;
        let owner = owner_socket.umem_share()?;
        ensure!(
            XskSocket::bind(&umem, x0, 1, &XskConfig::default(), Some(&owner)).is_err(),
            "x0 has one queue"
        );
        // An RX ring of 8, so that 2 of the 10 frames sent find it full.
        let small_rx = XskConfig {
            rx_size: 8,
            ..XskConfig::default()
        };
        let mut socket = XskSocket::bind(&umem, x0, 0, &small_rx, Some(&owner))?;
        let mut program = XdpProgram::attach_pod("x0", XdpModeChoice::Generic)?;
        program.register_socket(0, socket.as_raw_fd())?;

        let mut free = all_chunks(&umem);
        let fill: Vec<u64> = free.drain(..64).collect();
        ensure!(socket.fill(&fill) == 64);
        // 10 frames for an RX ring of 8.
        for _ in 0..10 {
            injector.send(&frame)?;
        }
        // 8 frames sent and completed, 8 left on the TX ring (copy mode
        // sends only when kicked).
        let offset = u64::from(umem.rx_data_offset());
        let tx: Vec<Desc> = free
            .drain(..16)
            .map(|chunk| {
                // SAFETY: the frame came off our free list: it is on no
                // ring and this is the only reference to it.
                let chunk_bytes = unsafe { umem.chunk_mut(chunk) };
                chunk_bytes[offset as usize..][..frame.len()].copy_from_slice(&frame);
                Desc {
                    addr: chunk + offset,
                    len: frame.len() as u32,
                    options: 0,
                }
            })
            .collect();
        ensure!(socket.send(&tx[..8]) == 8);
        socket.kick_tx()?;
        let deadline = Instant::now() + Duration::from_secs(3);
        while (socket.statistics()?.rx_ring_full < 2 || socket.ring_levels().completion < 8)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        ensure!(socket.send(&tx[8..]) == 8);
        let levels = socket.ring_levels();
        let in_rings = levels.fill + levels.rx + levels.tx + levels.completion;
        eprintln!(
            "before deleting x0: {levels:?} = {in_rings} in rings, {} frames held, {:?}",
            socket.frames_held(),
            socket.statistics()?
        );
        ensure!(
            levels.rx == 8 && levels.completion == 8 && levels.tx == 8,
            "{levels:?}"
        );
        // The rings do not show every frame: the kernel keeps one it could
        // not deliver (RX ring full) for itself. The socket's count does.
        ensure!(in_rings <= 64 + 16 && socket.frames_held() == 64 + 16);

        ns_ref.ip(&["link", "del", "x0"])?;
        drop(program);
        socket.reclaim(&mut free);
        ensure!(owner_socket.frames_held() == 0);
        assert_every_frame_once(&umem, free);
        Ok(())
    })
}
