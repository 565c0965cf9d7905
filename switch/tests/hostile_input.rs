//! Hostile and malformed frames, from a pod and from the underlay, while
//! good traffic flows: the switch drops each under its reason, keeps
//! forwarding the good traffic, loses no buffer frame and does not crash.
//! Jumbo frames too, which the kernel drops before the switch where an
//! interface's MTU is smaller, and the switch counts (`oversize`) where it
//! is not — past a buffer frame too, since they reach it as multi-buffer
//! packets. And frames at the edges of IP (TTL 1, IPv4 options), which
//! must end as they end in a kernel pod network. Needs root.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use podswitch_lab::cluster::{
    Pod, SwitchNode, SwitchOptions, SwitchPair, node_ip, ping_received, ping_stats, pod_gateway,
    pod_ip6, router_mac,
};
use podswitch_lab::flood::{self, UDP_HEADERS, UdpFlow, internet_checksum, with_ipv4_options};
use podswitch_lab::{Lab, RawLink, parse_mac};
use serde_json::Value;

/// One lab at a time on a 2-core machine.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many copies of each bad frame are sent.
const COPIES: u64 = 50;
/// Pings of the good traffic, one every 0.2 s.
const PINGS: u32 = 60;
/// The lab's VNI (see `SwitchNode::start`).
const VNI: u32 = 1;

/// A UDP-in-IPv4 frame from port 40000 to `port`, as the lab's flood
/// generator builds it, with `ttl` and `payload`.
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let flow = UdpFlow {
        src_mac,
        dst_mac,
        src: SocketAddrV4::new(src, 40000),
        dst: SocketAddrV4::new(dst, port),
    };
    let mut frame = flood::udp_frame(&flow, UDP_HEADERS + payload.len())
        .expect("test frames are far below the jumbo limit");
    frame[UDP_HEADERS..].copy_from_slice(payload);
    frame[22] = ttl;
    fix_ipv4_checksum(&mut frame);
    frame
}

/// Recompute the IPv4 header checksum of `frame` (Ethernet at 0).
fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    frame[24..26].fill(0);
    let sum = internet_checksum(&frame[14..14 + ihl]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
}

/// IPv4 options the kernel refuses (`ip_options_compile`), each with
/// what is wrong.
const BAD_OPTIONS: [(&str, &[u8]); 3] = [
    ("an option of length 0", &[130, 0, 0, 0]),
    ("an option running past the header", &[1, 7, 11, 4]),
    ("IHL 15 and 40 bytes of garbage options", &[0x6a; 40]),
];

/// IPv4 options the kernel takes: No Operation, Router Alert, a Record
/// Route with a free slot, a Timestamp with two free slots, End of
/// Option List.
const GOOD_OPTIONS: [u8; 24] = [
    1, 148, 4, 0, 0, 7, 7, 4, 0, 0, 0, 0, 68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

/// Where the receiving node counts a dropped frame, on the port it
/// arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Under this drop reason of the switch.
    Reason(&'static str),
    /// As larger than the pod MTU: by the switch (`oversize`), or, for
    /// frames past a buffer frame, by the kernel at the port's AF_XDP
    /// socket (`kernel.rx_dropped`) once a burst of them has used up the
    /// frames on the port's fill ring (each takes several, and a port's
    /// fill ring is sized for packets of its MTU).
    Oversize,
    /// By the kernel, at the port's interface before any XDP program
    /// (`interface_rx_dropped`).
    Interface,
    /// Anywhere or nowhere: the frame may be dropped before the switch
    /// sees it; only survival is checked.
    Unchecked,
}

impl Counted {
    /// This counter's value on `port` of `stats` (a `podswitch stats`
    /// answer).
    fn value(self, stats: &Value, port: &str) -> u64 {
        let port = &stats["ports"][port];
        match self {
            Counted::Reason(reason) => port["drops"][reason].as_u64(),
            Counted::Oversize => Some(
                port["drops"]["oversize"].as_u64().unwrap_or(0)
                    + port["kernel"]["rx_dropped"].as_u64().unwrap_or(0),
            ),
            Counted::Interface => port["interface_rx_dropped"].as_u64(),
            Counted::Unchecked => Some(0),
        }
        .unwrap_or(0)
    }
}

/// Whether `error` is the kernel's ENOBUFS: a veth that dropped the frame
/// says so to the sender.
fn dropped_on_send(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::raw_os_error)
        == Some(nix::errno::Errno::ENOBUFS as i32)
}

/// Send every case `COPIES` times through `link` and check that `node`
/// counted each where the case says, on `port`.
fn inject(
    link: &mut RawLink,
    node: &SwitchNode,
    port: &str,
    cases: &[(&str, Vec<u8>, Counted)],
) -> Result<()> {
    for (what, frame, counted) in cases {
        let counted = *counted;
        let before = node.cli_json(&["stats"])?;
        for _ in 0..COPIES {
            match link.send(frame) {
                Ok(()) => {}
                // Dropped by the kernel at the receiving interface, which
                // is what this case expects.
                Err(e) if counted == Counted::Interface && dropped_on_send(&e) => {}
                Err(e) => return Err(e.context(format!("sending {what}"))),
            }
        }
        if counted == Counted::Unchecked {
            continue;
        }
        // The worker counts within a batch; give it a moment to get there.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let after = node.cli_json(&["stats"])?;
            let n = counted.value(&after, port) - counted.value(&before, port);
            if n >= COPIES {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{what}: {n} of {COPIES} counted as {counted:?} on {port}; before {}, after {}",
                before["ports"][port],
                after["ports"][port]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// A VXLAN header with `flags` and `vni`, then `inner`.
fn vxlan(flags: u8, vni: u32, inner: &[u8]) -> Vec<u8> {
    let vni = vni.to_be_bytes();
    [&[flags, 0, 0, 0, vni[1], vni[2], vni[3], 0][..], inner].concat()
}

fn mac_of(pod: &Pod) -> Result<[u8; 6]> {
    parse_mac(&pod.mac)
}

/// Node 1 of a two-node lab under attack, and what the attacks need.
struct Target<'a> {
    n1: &'a SwitchNode,
    n2: &'a SwitchNode,
    /// The pod on node 1 that the tunnel packets are for.
    a: &'a Pod,
    /// The hostile pod on node 1.
    bad: &'a Pod,
    /// The pod on node 2 that `a` pings all along.
    c: &'a Pod,
    /// Node 1's router MAC.
    router: [u8; 6],
    /// A UDP frame from `c` to `a`, as node 2 would tunnel it.
    inner: Vec<u8>,
}

impl Target<'_> {
    /// A tunnel packet on the underlay from `src` to node 1's VTEP.
    fn tunnel(&self, src: Ipv4Addr, port: u16, payload: &[u8]) -> Result<Vec<u8>> {
        Ok(udp_frame(
            self.n1.ns.mac("ul0")?,
            self.n2.ns.mac("ul0")?,
            src,
            node_ip(1),
            64,
            port,
            payload,
        ))
    }

    /// Send `valid` from the underlay and see it reach pod `a`.
    fn delivers(&self, underlay: &mut RawLink, valid: &[u8]) -> Result<()> {
        arrives(underlay, valid, self.a, b"inner").map(drop)
    }
}

/// Send `frame` through `link` and see it reach pod `to`, which knows it
/// by its ending, `tail`; the frame as it arrived.
fn arrives(link: &mut RawLink, frame: &[u8], to: &Pod, tail: &[u8]) -> Result<Vec<u8>> {
    let mut pod = RawLink::open(&to.ns, "eth0", Duration::from_millis(100))?;
    link.send(frame)?;
    let arrived = pod.collect(1, Duration::from_secs(5), |f| f.ends_with(tail));
    arrived
        .into_iter()
        .next()
        .with_context(|| format!("a valid frame did not reach {}", to.ip))
}

/// Build a two-node lab running `encap`, have pod a ping pod c across the
/// overlay all along, and run `attack` meanwhile; then check that the good
/// traffic went through and that no buffer frame was lost.
fn under_attack(tag: &str, encap: &str, attack: impl Fn(&Target) -> Result<()>) -> Result<()> {
    let options = SwitchOptions {
        encap: encap.into(),
        ..SwitchOptions::default()
    };
    under_attack_with(tag, &options, attack)
}

/// [`under_attack`] with nodes started with `options`.
fn under_attack_with(
    tag: &str,
    options: &SwitchOptions,
    attack: impl Fn(&Target) -> Result<()>,
) -> Result<()> {
    let mut lab = Lab::new(tag)?;
    let dir = lab.scratch_dir()?;
    let binary = Path::new(env!("CARGO_BIN_EXE_podswitch"));
    let SwitchPair { nodes, pods } = SwitchPair::build(&mut lab, binary, &dir, options)?;
    let [[a, bad], [c, _]] = &pods;
    let [n1, n2] = &nodes;
    let router = parse_mac(
        n1.cli_json(&["info"])?["router_mac"]
            .as_str()
            .context("router_mac")?,
    )?;
    let inner = udp_frame(
        router,
        parse_mac(&router_mac(2))?,
        c.ip,
        a.ip,
        64,
        9,
        b"inner",
    );
    let target = Target {
        n1,
        n2,
        a,
        bad,
        c,
        router,
        inner,
    };
    let good = std::thread::scope(|scope| -> Result<_> {
        let pinger = scope.spawn(|| ping_stats(&a.ns, c.ip, PINGS));
        std::thread::sleep(Duration::from_millis(500));
        let attacked = attack(&target);
        let good = pinger
            .join()
            .map_err(|_| anyhow::anyhow!("the pinger panicked"))?;
        attacked?;
        good
    })?;
    ensure!(
        good.received * 10 >= PINGS * 9,
        "good traffic suffered: {} of {PINGS} pings answered",
        good.received
    );
    eprintln!(
        "node 1 after the attack: {}",
        n1.cli_json(&["stats"])?["ports"]
    );
    for node in &nodes {
        node.check_frames()?;
    }
    Ok(())
}

/// An Ethernet + IPv6 frame from `src_mac` to `dst_mac` carrying
/// `payload` as `next_header`, with `hop_limit`.
fn ipv6_frame(
    (dst_mac, src_mac): ([u8; 6], [u8; 6]),
    (src, dst): (Ipv6Addr, Ipv6Addr),
    hop_limit: u8,
    next_header: u8,
    payload: &[u8],
) -> Vec<u8> {
    let len = u16::try_from(payload.len()).expect("test payloads are small");
    let mut frame = [&dst_mac[..], &src_mac, &0x86ddu16.to_be_bytes()].concat();
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&[next_header, hop_limit]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&dst.octets());
    frame.extend_from_slice(payload);
    frame
}

/// An ICMPv6 message of `message_type` with `body`, its checksum over
/// the pseudo-header of `src` and `dst`.
fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, message_type: u8, body: &[u8]) -> Vec<u8> {
    let mut message = [&[message_type, 0, 0, 0][..], body].concat();
    let len = u32::try_from(message.len()).expect("small");
    let pseudo = [
        &src.octets()[..],
        &dst.octets(),
        &len.to_be_bytes(),
        &[0, 0, 0, 58],
        &message,
    ]
    .concat();
    let sum = internet_checksum(&pseudo);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    message
}

/// A neighbour solicitation from `src` (hop limit `hop_limit`) for
/// `target`, giving `lladdr` as the sender's MAC, to the solicited-node
/// group.
fn solicitation(
    src_mac: [u8; 6],
    src: Ipv6Addr,
    target: Ipv6Addr,
    lladdr: [u8; 6],
    hop_limit: u8,
) -> Vec<u8> {
    let t = target.segments();
    let group = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | (t[6] & 0xff), t[7]);
    let group_mac = [
        0x33,
        0x33,
        0xff,
        (t[6] & 0xff) as u8,
        (t[7] >> 8) as u8,
        t[7] as u8,
    ];
    let body = [&[0u8; 4][..], &target.octets(), &[1, 1], &lladdr].concat();
    let message = icmpv6(src, group, 135, &body);
    ipv6_frame((group_mac, src_mac), (src, group), hop_limit, 58, &message)
}

/// IPv6 from a dual-stack pod, each frame wrong in one way, while the
/// good (IPv4) traffic flows; then IPv6 itself still works. (A packet to
/// an address no pod or peer has is not among them: on a dual-stack node
/// it goes to the node, as IPv4 does — `cni/tests/dual_stack.rs`.)
#[test]
fn hostile_ipv6_pod_frames() -> Result<()> {
    let _serial = serial();
    let options = SwitchOptions {
        dual_stack: true,
        ..SwitchOptions::default()
    };
    under_attack_with("sw-hostile6", &options, |t| {
        let (bad, c) = (t.bad, t.c);
        let node_of = |pod: &Pod| pod.ip.octets();
        let ip6 = |pod: &Pod| pod_ip6(node_of(pod)[2], node_of(pod)[3]);
        let (bad6, a6, c6) = (ip6(bad), ip6(t.a), ip6(c));
        let src = mac_of(bad)?;
        let echo = |from: Ipv6Addr, to: Ipv6Addr| icmpv6(from, to, 128, b"\0\x07\0\x01hostile");
        let frame = |from: Ipv6Addr, to: Ipv6Addr, hop_limit: u8| {
            ipv6_frame((t.router, src), (from, to), hop_limit, 58, &echo(from, to))
        };
        let good = frame(bad6, c6, 64);
        let mut long_payload = good.clone();
        long_payload[18..20].copy_from_slice(&1400u16.to_be_bytes());
        let mut version_4 = good.clone();
        version_4[14] = 0x40;
        let link_local: Ipv6Addr = "fe80::858:aff:fef4:104".parse()?;
        let solicit = |from: Ipv6Addr, target: Ipv6Addr, lladdr: [u8; 6], hop_limit: u8| {
            solicitation(src, from, target, lladdr, hop_limit)
        };
        let gateway: Ipv6Addr = "fe80::1".parse()?;
        let mut bad_ns_checksum = solicit(link_local, gateway, src, 255);
        let last = bad_ns_checksum.len() - 1;
        bad_ns_checksum[last] ^= 0xff;
        let mld_group = [0x33, 0x33, 0, 0, 0, 0x16];
        let mld: Ipv6Addr = "ff02::16".parse()?;
        let cases: Vec<(&str, Vec<u8>, Counted)> = vec![
            (
                "half an IPv6 header",
                good[..34].to_vec(),
                Counted::Reason("bad_ipv6"),
            ),
            (
                "a payload length past the frame",
                long_payload,
                Counted::Reason("bad_ipv6"),
            ),
            (
                "IP version 4 in an IPv6 frame",
                version_4,
                Counted::Reason("bad_ipv6"),
            ),
            (
                "hop limit 0",
                frame(bad6, c6, 0),
                Counted::Reason("ttl_expired"),
            ),
            (
                "hop limit 1",
                frame(bad6, c6, 1),
                Counted::Reason("ttl_expired"),
            ),
            (
                "another pod's IPv6 address",
                frame(a6, c6, 64),
                Counted::Reason("spoofed"),
            ),
            (
                "a link-local source, routed",
                frame(link_local, c6, 64),
                Counted::Reason("spoofed"),
            ),
            (
                "a solicitation with hop limit 254",
                solicit(link_local, gateway, src, 254),
                Counted::Reason("bad_neighbor_solicit"),
            ),
            (
                "a solicitation with a bad checksum",
                bad_ns_checksum,
                Counted::Reason("bad_neighbor_solicit"),
            ),
            (
                "a solicitation cut short",
                solicit(link_local, gateway, src, 255)[..60].to_vec(),
                Counted::Reason("bad_neighbor_solicit"),
            ),
            (
                "duplicate address detection",
                solicit(Ipv6Addr::UNSPECIFIED, bad6, src, 255),
                Counted::Reason("neighbor_unanswered"),
            ),
            (
                "a solicitation for an address nobody routes",
                solicit(link_local, "2001:db8::1".parse()?, src, 255),
                Counted::Reason("neighbor_unanswered"),
            ),
            (
                "a solicitation giving another pod's MAC",
                solicit(link_local, gateway, mac_of(t.a)?, 255),
                Counted::Reason("spoofed"),
            ),
            (
                "an MLD report",
                ipv6_frame(
                    (mld_group, src),
                    (link_local, mld),
                    1,
                    58,
                    &icmpv6(link_local, mld, 143, &[0; 4]),
                ),
                Counted::Reason("multicast"),
            ),
        ];
        let mut pod_link = RawLink::open(&bad.ns, "eth0", Duration::from_millis(100))?;
        inject(&mut pod_link, t.n1, &bad.port, &cases)?;
        // The hostile pod's own IPv6 still goes where it should.
        let replies = ping_stats(&bad.ns, c6, 5)?.received;
        ensure!(
            replies >= 4,
            "{replies}/5 IPv6 pings answered after the attack"
        );
        Ok(())
    })
}

/// From a pod: every header boundary, bad fields, spoofing, floods. From
/// the underlay: VXLAN packets each wrong in one way.
#[test]
fn hostile_pod_frames_and_vxlan_packets() -> Result<()> {
    let _serial = serial();
    under_attack("sw-hostile", "vxlan", |t| {
        let (a, bad, c) = (t.a, t.bad, t.c);
        let src = mac_of(bad)?;
        let frame = |ttl| udp_frame(t.router, src, bad.ip, c.ip, ttl, 9, b"hostile pod payload");
        let good_frame = frame(64);
        let mut bad_checksum = good_frame.clone();
        bad_checksum[24] ^= 0xff;
        let mut short_ihl = good_frame.clone();
        short_ihl[14] = 0x44;
        let mut long_total = good_frame.clone();
        long_total[16..18].copy_from_slice(&1400u16.to_be_bytes());
        fix_ipv4_checksum(&mut long_total);
        let mut not_v4 = good_frame.clone();
        not_v4[14] = 0x65;
        let mut spoofed_ip = good_frame.clone();
        spoofed_ip[26..30].copy_from_slice(&a.ip.octets());
        fix_ipv4_checksum(&mut spoofed_ip);
        let mut spoofed_mac = good_frame.clone();
        spoofed_mac[6..12].copy_from_slice(&mac_of(a)?);
        let mut broadcast = good_frame.clone();
        broadcast[..6].fill(0xff);
        let mut multicast = good_frame.clone();
        multicast[..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]);
        let mut other_mac = good_frame.clone();
        other_mac[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
        let mut ipv6 = good_frame.clone();
        ipv6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        let pod_cases: Vec<(&str, Vec<u8>, Counted)> = vec![
            (
                "Ethernet only",
                good_frame[..14].to_vec(),
                Counted::Reason("bad_ipv4"),
            ),
            (
                "half an IPv4 header",
                good_frame[..24].to_vec(),
                Counted::Reason("bad_ipv4"),
            ),
            (
                "IPv4 without its payload",
                good_frame[..34].to_vec(),
                Counted::Reason("bad_ipv4"),
            ),
            (
                "a bad IPv4 checksum",
                bad_checksum,
                Counted::Reason("bad_ipv4"),
            ),
            ("IHL 4", short_ihl, Counted::Reason("bad_ipv4")),
            (
                "Total Length past the frame",
                long_total,
                Counted::Reason("bad_ipv4"),
            ),
            (
                "IP version 6 in an IPv4 frame",
                not_v4,
                Counted::Reason("bad_ipv4"),
            ),
            ("TTL 0", frame(0), Counted::Reason("ttl_expired")),
            ("TTL 1", frame(1), Counted::Reason("ttl_expired")),
            (
                "another pod's address",
                spoofed_ip,
                Counted::Reason("spoofed"),
            ),
            ("another pod's MAC", spoofed_mac, Counted::Reason("spoofed")),
            ("a broadcast", broadcast, Counted::Reason("broadcast")),
            ("a multicast", multicast, Counted::Reason("multicast")),
            (
                "a MAC that is not the router's",
                other_mac,
                Counted::Reason("not_our_mac"),
            ),
            ("IPv6", ipv6, Counted::Reason("not_ipv4")),
        ];
        let option_cases: Vec<(&str, Vec<u8>, Counted)> = BAD_OPTIONS
            .iter()
            .map(|&(what, options)| {
                (
                    what,
                    with_ipv4_options(&good_frame, options),
                    Counted::Reason("bad_ipv4_options"),
                )
            })
            .collect();
        let mut pod_link = RawLink::open(&bad.ns, "eth0", Duration::from_millis(100))?;
        inject(&mut pod_link, t.n1, &bad.port, &pod_cases)?;
        inject(&mut pod_link, t.n1, &bad.port, &option_cases)?;
        options_end_as_the_kernel_ends_them(t, &mut pod_link)?;

        // From the underlay: tunnel packets to node 1's VTEP, from node 2's
        // uplink, each wrong in one way.
        let tunnel = |src: Ipv4Addr, payload: &[u8]| t.tunnel(src, 4789, payload);
        let valid = tunnel(node_ip(2), &vxlan(0x08, VNI, &t.inner))?;
        let mut bad_outer_checksum = valid.clone();
        bad_outer_checksum[24] ^= 0xff;
        let mut bad_udp_length = valid.clone();
        bad_udp_length[38..40].copy_from_slice(&4000u16.to_be_bytes());
        let mut fragment = valid.clone();
        fragment[20] = 0x20; // More Fragments
        fix_ipv4_checksum(&mut fragment);
        let mut other_host = valid.clone();
        other_host[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
        let tunnel_cases: Vec<(&str, Vec<u8>, Counted)> = vec![
            (
                "VXLAN without the I flag",
                tunnel(node_ip(2), &vxlan(0x00, VNI, &t.inner))?,
                Counted::Reason("vxlan_bad_flags"),
            ),
            (
                "an unknown VNI",
                tunnel(node_ip(2), &vxlan(0x08, VNI + 1, &t.inner))?,
                Counted::Reason("unknown_vni"),
            ),
            (
                "a sender that is not a peer",
                tunnel(Ipv4Addr::new(10, 1, 0, 99), &vxlan(0x08, VNI, &t.inner))?,
                Counted::Reason("unknown_peer"),
            ),
            (
                "a frame cut inside the VXLAN header",
                valid[..46].to_vec(),
                Counted::Reason("truncated_ipv4"),
            ),
            (
                "a VXLAN header cut short, lengths consistent",
                tunnel(node_ip(2), &[0x08, 0, 0, 0])?,
                Counted::Reason("truncated_tunnel"),
            ),
            (
                "no inner frame",
                tunnel(node_ip(2), &vxlan(0x08, VNI, &[]))?,
                Counted::Reason("truncated_inner"),
            ),
            (
                "half an inner Ethernet header",
                tunnel(node_ip(2), &vxlan(0x08, VNI, &t.inner[..7]))?,
                Counted::Reason("truncated_inner"),
            ),
            (
                "a bad outer IPv4 checksum",
                bad_outer_checksum,
                Counted::Reason("bad_ipv4_checksum"),
            ),
            (
                "a UDP length past the packet",
                bad_udp_length,
                Counted::Reason("bad_udp_length"),
            ),
            // The uplink program leaves fragments to the kernel, which
            // reassembles them (and drops these, which never complete).
            ("an outer fragment", fragment, Counted::Unchecked),
            (
                "another host's MAC (a flooding underlay)",
                other_host,
                Counted::Reason("not_our_uplink_mac"),
            ),
            (
                "bad outer IPv4 options",
                with_ipv4_options(&valid, BAD_OPTIONS[1].1),
                Counted::Reason("bad_ipv4_options"),
            ),
        ];
        let inner_option_cases: Vec<(&str, Vec<u8>, Counted)> = BAD_OPTIONS
            .iter()
            .map(|&(what, options)| {
                let inner = with_ipv4_options(&t.inner, options);
                let packet = tunnel(node_ip(2), &vxlan(0x08, VNI, &inner))?;
                Ok((what, packet, Counted::Reason("bad_ipv4_options")))
            })
            .collect::<Result<_>>()?;
        let mut underlay = RawLink::open(&t.n2.ns, "ul0", Duration::from_millis(100))?;
        inject(&mut underlay, t.n1, "ul0", &tunnel_cases)?;
        inject(&mut underlay, t.n1, "ul0", &inner_option_cases)?;
        t.delivers(&mut underlay, &valid)?;
        // Broadcast and multicast outer destinations are taken, as the
        // kernel takes them; so are good outer options.
        for group in [[0xff; 6], [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01]] {
            let mut to_group = valid.clone();
            to_group[..6].copy_from_slice(&group);
            t.delivers(&mut underlay, &to_group)?;
        }
        t.delivers(&mut underlay, &with_ipv4_options(&valid, &GOOD_OPTIONS))?;

        // VXLAN carrying TCP goes through node 1's kernel (GRO) into its
        // tunnel port (`tunnel_receive = "auto"`): the same wrongs end the
        // same way, counted on the tunnel port — and so does a wrong outer
        // UDP checksum, which GRO does not vouch for.
        let mut inner_tcp = t.inner.clone();
        inner_tcp[23] = 6;
        fix_ipv4_checksum(&mut inner_tcp);
        let valid_tcp = tunnel(node_ip(2), &vxlan(0x08, VNI, &inner_tcp))?;
        let with = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut packet = valid_tcp.clone();
            edit(&mut packet);
            packet
        };
        let tcp_cases: Vec<(&str, Vec<u8>, Counted)> = vec![
            (
                "TCP in VXLAN without the I flag",
                tunnel(node_ip(2), &vxlan(0x00, VNI, &inner_tcp))?,
                Counted::Reason("vxlan_bad_flags"),
            ),
            (
                "TCP in an unknown VNI",
                tunnel(node_ip(2), &vxlan(0x08, VNI + 1, &inner_tcp))?,
                Counted::Reason("unknown_vni"),
            ),
            (
                "TCP from a sender that is not a peer",
                tunnel(Ipv4Addr::new(10, 1, 0, 99), &vxlan(0x08, VNI, &inner_tcp))?,
                Counted::Reason("unknown_peer"),
            ),
            (
                "TCP with a bad outer IPv4 checksum",
                with(&|p| p[24] ^= 0xff),
                Counted::Reason("bad_ipv4_checksum"),
            ),
            (
                "TCP to another host's MAC",
                with(&|p| p[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99])),
                Counted::Reason("not_our_uplink_mac"),
            ),
            (
                "TCP with a wrong outer UDP checksum",
                with(&|p| {
                    let wrong = match u16::from_be_bytes([p[40], p[41]]) {
                        0 => 0x1234,
                        sum => sum ^ 0x00ff,
                    };
                    p[40..42].copy_from_slice(&wrong.to_be_bytes());
                }),
                Counted::Reason("bad_udp_checksum"),
            ),
        ];
        inject(&mut underlay, t.n1, "podswt0", &tcp_cases)?;
        t.delivers(&mut underlay, &valid_tcp)
    })
}

/// From the hostile pod: good options reach a pod on its node and one on
/// the other node unchanged (each routed hop taking one from the TTL);
/// bad options for its gateway are the node's kernel's to refuse, which
/// answers with ICMP Parameter Problem, as in a kernel pod network.
fn options_end_as_the_kernel_ends_them(t: &Target, pod_link: &mut RawLink) -> Result<()> {
    let bad = t.bad;
    let src = mac_of(bad)?;
    for (to, hops) in [(t.a, 1), (t.c, 2)] {
        let tail = b"good options";
        let frame = udp_frame(t.router, src, bad.ip, to.ip, 64, 9, tail);
        let arrived = arrives(
            pod_link,
            &with_ipv4_options(&frame, &GOOD_OPTIONS),
            to,
            tail,
        )?;
        ensure!(
            arrived[14] == 0x4b && arrived[34..58] == GOOD_OPTIONS && arrived[22] == 64 - hops,
            "options or TTL changed on the way to {}: {:02x?}",
            to.ip,
            &arrived[14..58]
        );
    }
    let gateway = pod_gateway(1);
    let frame = udp_frame(t.router, src, bad.ip, gateway, 64, 9, b"bad options");
    pod_link.send(&with_ipv4_options(&frame, BAD_OPTIONS[0].1))?;
    // ICMP (protocol 1) type 12 from the gateway.
    let answer = pod_link.collect(1, Duration::from_secs(5), |f| {
        let icmp = 14 + usize::from(f.get(14).map_or(0, |v| v & 0x0f)) * 4;
        f.len() > icmp && f[23] == 1 && f[26..30] == gateway.octets() && f[icmp] == 12
    });
    ensure!(
        !answer.is_empty(),
        "bad options for the gateway: no ICMP Parameter Problem from the node"
    );
    Ok(())
}

/// From the underlay: Geneve packets each wrong in one way, options
/// among them.
#[test]
fn hostile_geneve_packets() -> Result<()> {
    let _serial = serial();
    under_attack("sw-hostile6", "geneve", |t| {
        // Version and option length, O and C flags, protocol, VNI, then
        // the options and the inner frame.
        let geneve =
            |first: u8, flags: u8, protocol: u16, vni: u32, options: &[u8], inner: &[u8]| {
                let vni = vni.to_be_bytes();
                let p = protocol.to_be_bytes();
                [
                    &[first, flags, p[0], p[1], vni[1], vni[2], vni[3], 0][..],
                    options,
                    inner,
                ]
                .concat()
            };
        let words = |options: &[u8]| (options.len() / 4) as u8;
        // Class 0xfff0 (experimental), critical type 0x81, 4 bytes of data.
        let critical = [0xff, 0xf0, 0x81, 0x01, 1, 2, 3, 4];
        // A non-critical option whose length runs past the options.
        let overlong = [0xff, 0xf0, 0x01, 0x05, 1, 2, 3, 4];
        let tunnel = |payload: &[u8]| t.tunnel(node_ip(2), 6081, payload);
        let valid = tunnel(&geneve(0, 0, 0x6558, VNI, &[], &t.inner))?;
        let cases: Vec<(&str, Vec<u8>, Counted)> = vec![
            (
                "Geneve version 1",
                tunnel(&geneve(0x40, 0, 0x6558, VNI, &[], &t.inner))?,
                Counted::Reason("geneve_bad_version"),
            ),
            (
                "an IPv4 payload, not Ethernet",
                tunnel(&geneve(0, 0, 0x0800, VNI, &[], &t.inner))?,
                Counted::Reason("geneve_bad_protocol"),
            ),
            (
                "an OAM packet",
                tunnel(&geneve(0, 0x80, 0x6558, VNI, &[], &t.inner))?,
                Counted::Reason("geneve_oam"),
            ),
            (
                "an unknown VNI",
                tunnel(&geneve(0, 0, 0x6558, VNI + 1, &[], &t.inner))?,
                Counted::Reason("unknown_vni"),
            ),
            (
                "a critical option it does not know",
                tunnel(&geneve(
                    words(&critical),
                    0x40,
                    0x6558,
                    VNI,
                    &critical,
                    &t.inner,
                ))?,
                Counted::Reason("geneve_critical_option"),
            ),
            (
                "an option longer than the options",
                tunnel(&geneve(
                    words(&overlong),
                    0,
                    0x6558,
                    VNI,
                    &overlong,
                    &t.inner,
                ))?,
                Counted::Reason("geneve_bad_options"),
            ),
            (
                "options longer than the packet",
                tunnel(&geneve(63, 0, 0x6558, VNI, &[], &t.inner[..8]))?,
                Counted::Reason("truncated_tunnel"),
            ),
            (
                "a sender that is not a peer",
                t.tunnel(
                    Ipv4Addr::new(10, 1, 0, 99),
                    6081,
                    &geneve(0, 0, 0x6558, VNI, &[], &t.inner),
                )?,
                Counted::Reason("unknown_peer"),
            ),
        ];
        let mut underlay = RawLink::open(&t.n2.ns, "ul0", Duration::from_millis(100))?;
        inject(&mut underlay, t.n1, "ul0", &cases)?;
        t.delivers(&mut underlay, &valid)
    })
}

/// Five pings from `from` to `to` with TTL `ttl`, 0.2 s apart, each
/// waiting a second at most; what ping printed.
fn ping_ttl(from: &podswitch_lab::Netns, to: Ipv4Addr, ttl: u8) -> Result<String> {
    let output = from
        .command("ping")?
        .args(["-c", "5", "-i", "0.2", "-W", "1", "-t", &ttl.to_string()])
        .arg(to.to_string())
        .output()
        .context("running ping")?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// TTL 1 where the node's kernel is the hop, as in a kernel pod network:
/// a pod's pings to its gateway and its node are answered, and one the
/// node forwards is expired by the node's kernel, which says so from the
/// gateway (the first hop a traceroute from a Flannel pod shows); the
/// node's own pings reach its pod with TTL 1 and a pod on the other node
/// (one routed hop, there) with TTL 2. Pings from a pod to a pod on the
/// other node with TTL 1 are expired by the switch (the `TTL 1` case of
/// `hostile_pod_frames_and_vxlan_packets`).
#[test]
fn ttl_one_where_the_node_is_the_hop() -> Result<()> {
    let _serial = serial();
    under_attack("h-ttl", "vxlan", |t| {
        let (n1, a, c) = (t.n1, t.a, t.c);
        // Pods reach the world through their node, which forwards.
        n1.ns.run("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        let gateway = pod_gateway(1);
        for (from, to, ttl, what) in [
            (&a.ns, gateway, 1, "a pod to its gateway"),
            (&a.ns, node_ip(1), 1, "a pod to its node"),
            (&n1.ns, a.ip, 1, "a node to its pod"),
            (&n1.ns, c.ip, 2, "a node to a pod on the other node"),
        ] {
            let out = ping_ttl(from, to, ttl)?;
            ensure!(
                ping_received(&out) >= 4,
                "{what} ({to}), TTL {ttl}: fewer than 4 of 5 answered\n{out}"
            );
        }
        let out = ping_ttl(&a.ns, node_ip(2), 1)?;
        let expired = out
            .lines()
            .filter(|l| l.starts_with(&format!("From {gateway} ")))
            .filter(|l| l.contains("Time to live exceeded"))
            .count();
        ensure!(
            expired >= 4,
            "a pod to the other node's address, TTL 1: {expired} of 5 expired by the gateway\n{out}"
        );
        Ok(())
    })
}

/// The most packet bytes a buffer frame takes in: the daemon's 4 KiB
/// frame less the kernel's 256-byte XDP headroom. A larger frame arrives
/// as a multi-buffer packet (several buffer frames).
const BUFFER_ROOM: usize = 4096 - 256;

/// The frames of the jumbo attacks: 9000 bytes.
const JUMBO_LEN: usize = 9000;

/// `ifname`'s MTU in `ns`, and the largest the kernel lets it take (a
/// veth whose peer runs a native XDP program without multi-buffer support
/// would be held to 3506; the switch's programs have it).
fn mtus(ns: &podswitch_lab::Netns, ifname: &str) -> Result<(usize, usize)> {
    let link: Value = serde_json::from_str(&ns.ip(&["-d", "-j", "link", "show", ifname])?)?;
    let mtu = link[0]["mtu"].as_u64().context("no mtu")?;
    let max = link[0]["max_mtu"].as_u64().context("no max_mtu")?;
    Ok((mtu as usize, max as usize))
}

fn set_mtu(ns: &podswitch_lab::Netns, ifname: &str, mtu: usize) -> Result<()> {
    ns.ip(&["link", "set", ifname, "mtu", &mtu.to_string()])
        .map(drop)
}

/// Raise `ifname`'s MTU for a frame of `len` bytes, or the largest the
/// interface can send. The frame's length and the MTU to restore.
fn raise_mtu(ns: &podswitch_lab::Netns, ifname: &str, len: usize) -> Result<(usize, usize)> {
    let (mtu, max) = mtus(ns, ifname)?;
    let len = (max + 14).min(len);
    set_mtu(ns, ifname, len - 14)?;
    Ok((len, mtu))
}

/// Jumbo frames while pod a pings pod c: from the hostile pod (its MTU
/// raised), to a pod on the other node, and from node 2's uplink (its MTU
/// raised), tunnel packets as large. The kernel drops them at the
/// receiving interface (`interface_rx_dropped`), whose MTU is smaller;
/// where the receiving interface takes them too (a pod veth or an uplink
/// with a larger MTU), they reach the switch as multi-buffer packets and
/// it drops them as larger than the pod MTU (`oversize`). Afterwards a
/// valid tunnel packet is still delivered.
fn jumbo_frames(t: &Target) -> Result<()> {
    let (bad, n1) = (t.bad, t.n1);
    // From the pod, which may change its own MTU.
    let (len, pod_mtu) = raise_mtu(&bad.ns, "eth0", JUMBO_LEN)?;
    let payload = vec![0x6a; len - UDP_HEADERS];
    let big = udp_frame(t.router, mac_of(bad)?, bad.ip, t.c.ip, 64, 9, &payload);
    let mut pod_link = RawLink::open(&bad.ns, "eth0", Duration::from_millis(100))?;
    let what = format!("a {len}-byte frame from a pod");
    inject(
        &mut pod_link,
        n1,
        &bad.port,
        &[(&what, big.clone(), Counted::Interface)],
    )?;
    // The node end of its veth raised too (on the node: a misconfigured
    // MTU): the frame reaches the switch's port (past a buffer frame, as a
    // multi-buffer packet), which drops it as larger than the pod MTU.
    set_mtu(&n1.ns, &bad.port, len - 14)?;
    let what = format!("a {len}-byte frame from a pod, the node end's MTU raised");
    inject(
        &mut pod_link,
        n1,
        &bad.port,
        &[(&what, big, Counted::Oversize)],
    )?;
    set_mtu(&n1.ns, &bad.port, pod_mtu)?;
    set_mtu(&bad.ns, "eth0", pod_mtu)?;

    // From the underlay: a VXLAN packet from node 2 for pod a, as large.
    let (len, underlay_mtu) = raise_mtu(&t.n2.ns, "ul0", JUMBO_LEN)?;
    let payload = vec![0x6a; len - 50 - UDP_HEADERS];
    let inner = udp_frame(
        t.router,
        parse_mac(&router_mac(2))?,
        t.c.ip,
        t.a.ip,
        64,
        9,
        &payload,
    );
    let big = t.tunnel(node_ip(2), 4789, &vxlan(0x08, VNI, &inner))?;
    let mut underlay = RawLink::open(&t.n2.ns, "ul0", Duration::from_millis(100))?;
    let what = format!("a {len}-byte tunnel packet");
    inject(
        &mut underlay,
        n1,
        "ul0",
        &[(&what, big.clone(), Counted::Interface)],
    )?;
    // A jumbo underlay: node 1's uplink takes the packet too, as a
    // multi-buffer packet; the switch decapsulates it and drops the inner
    // frame as larger than the pod MTU (within a buffer frame as well: see
    // `jumbo_frames_within_a_buffer_frame_are_counted`).
    set_mtu(&n1.ns, "ul0", len - 14)?;
    let what = format!("a {len}-byte tunnel packet, node 1's uplink MTU raised");
    inject(&mut underlay, n1, "ul0", &[(&what, big, Counted::Oversize)])?;
    set_mtu(&n1.ns, "ul0", underlay_mtu)?;
    set_mtu(&t.n2.ns, "ul0", underlay_mtu)?;
    let valid = t.tunnel(node_ip(2), 4789, &vxlan(0x08, VNI, &t.inner))?;
    t.delivers(&mut underlay, &valid)
}

/// Jumbo frames with native XDP on the veths (the lab's `auto`): the
/// switch's programs handle multi-buffer packets, so the senders' MTU is
/// free: 9000-byte frames.
#[test]
fn jumbo_frames_native_xdp() -> Result<()> {
    let _serial = serial();
    under_attack("h6-jumbo", "vxlan", jumbo_frames)
}

/// Jumbo frames with generic XDP, which leaves the senders' MTU free:
/// 9000-byte frames.
#[test]
fn jumbo_frames_generic_xdp() -> Result<()> {
    let _serial = serial();
    let options = SwitchOptions {
        xdp_mode: "generic".into(),
        ..SwitchOptions::default()
    };
    under_attack_with("h6-jumbo-generic", &options, jumbo_frames)
}

/// Frames larger than the pod MTU that fit a buffer frame and reach the
/// switch through an interface whose MTU lets them in — a tunnel packet on
/// an uplink with a larger MTU than the overlay's (`underlay_mtu` set
/// below the NIC's, or the MTU raised after start), a frame from a pod
/// whose veth's node end has a larger MTU — routed to a pod on the same
/// node: node 1 drops and counts them as `oversize` (the kernel would drop
/// them at the pod's veth, where `podswitch stats` does not look).
#[test]
fn jumbo_frames_within_a_buffer_frame_are_counted() -> Result<()> {
    let _serial = serial();
    under_attack("h6-jumbo-local", "vxlan", |t| {
        let (n1, a, bad) = (t.n1, t.a, t.bad);
        // Every drop node 1 shows on the ports involved.
        let visible = |stats: &Value| -> u64 {
            [&*a.port, &*bad.port, "ul0"]
                .iter()
                .map(|port| {
                    let p = &stats["ports"][port];
                    let sum = |v: &Value| {
                        v.as_object()
                            .map_or(0, |o| o.values().filter_map(Value::as_u64).sum::<u64>())
                    };
                    sum(&p["drops"])
                        + p["kernel"]["rx_dropped"].as_u64().unwrap_or(0)
                        + p["interface_rx_dropped"].as_u64().unwrap_or(0)
                        + p["interface_tx_dropped"].as_u64().unwrap_or(0)
                })
                .sum()
        };
        let mut uncounted = Vec::new();
        let mut send = |link: &mut RawLink, frame: &[u8], what: &str| -> Result<()> {
            let before = n1.cli_json(&["stats"])?;
            for _ in 0..COPIES {
                link.send(frame)?;
            }
            std::thread::sleep(Duration::from_secs(1));
            let after = n1.cli_json(&["stats"])?;
            let counted = visible(&after) - visible(&before);
            if counted < COPIES {
                uncounted.push(format!(
                    "{COPIES} {what}: {counted} counted on node 1; ul0 {}, {} {}, {} {}",
                    after["ports"]["ul0"],
                    a.port,
                    after["ports"][&a.port],
                    bad.port,
                    after["ports"][&bad.port]
                ));
            }
            Ok(())
        };

        // A tunnel packet for pod a, node 1's uplink MTU raised.
        let (len, underlay_mtu) = raise_mtu(&t.n2.ns, "ul0", BUFFER_ROOM)?;
        ensure!(
            len <= BUFFER_ROOM,
            "a {len}-byte packet does not fit a buffer frame"
        );
        set_mtu(&n1.ns, "ul0", len - 14)?;
        let payload = vec![0x6a; len - 50 - UDP_HEADERS];
        let inner = udp_frame(
            t.router,
            parse_mac(&router_mac(2))?,
            t.c.ip,
            a.ip,
            64,
            9,
            &payload,
        );
        let big = t.tunnel(node_ip(2), 4789, &vxlan(0x08, VNI, &inner))?;
        let mut underlay = RawLink::open(&t.n2.ns, "ul0", Duration::from_millis(100))?;
        send(
            &mut underlay,
            &big,
            &format!("{len}-byte tunnel packets for pod a"),
        )?;
        set_mtu(&n1.ns, "ul0", underlay_mtu)?;
        set_mtu(&t.n2.ns, "ul0", underlay_mtu)?;

        // A frame from the other pod on node 1 for pod a, both ends of its
        // veth raised.
        let (len, pod_mtu) = raise_mtu(&bad.ns, "eth0", BUFFER_ROOM)?;
        set_mtu(&n1.ns, &bad.port, len - 14)?;
        let payload = vec![0x6a; len - UDP_HEADERS];
        let big = udp_frame(t.router, mac_of(bad)?, bad.ip, a.ip, 64, 9, &payload);
        let mut pod_link = RawLink::open(&bad.ns, "eth0", Duration::from_millis(100))?;
        send(
            &mut pod_link,
            &big,
            &format!("{len}-byte frames from a pod for a pod on its node"),
        )?;
        set_mtu(&n1.ns, &bad.port, pod_mtu)?;
        set_mtu(&bad.ns, "eth0", pod_mtu)?;
        ensure!(uncounted.is_empty(), "{}", uncounted.join("\n"));
        Ok(())
    })
}
