//! Hostile and malformed frames, from a pod and from the underlay, while
//! good traffic flows: the switch drops each under its reason, keeps
//! forwarding the good traffic, loses no buffer frame and does not crash.
//! Needs root.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use podswitch_lab::cluster::{
    Pod, SwitchNode, SwitchOptions, SwitchPair, node_ip, ping_stats, router_mac,
};
use podswitch_lab::flood::{self, UDP_HEADERS, UdpFlow, internet_checksum};
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

/// A port's drop counters by reason.
fn drops(node: &SwitchNode, port: &str) -> Result<Value> {
    Ok(node.cli_json(&["stats"])?["ports"][port]["drops"].clone())
}

fn count(drops: &Value, reason: &str) -> u64 {
    drops[reason].as_u64().unwrap_or(0)
}

/// Send every case `COPIES` times through `link` and check that the
/// switch counted each under its reason on `port` (a `None` reason: the
/// frame may be dropped by the kernel or the XDP program before the
/// switch; only survival is checked).
fn inject(
    link: &mut RawLink,
    node: &SwitchNode,
    port: &str,
    cases: &[(&str, Vec<u8>, Option<&str>)],
) -> Result<()> {
    for (what, frame, reason) in cases {
        let before = drops(node, port)?;
        for _ in 0..COPIES {
            link.send(frame)
                .with_context(|| format!("sending {what}"))?;
        }
        // The worker counts within a batch; give it a moment to get there.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let Some(reason) = reason else {
            continue;
        };
        loop {
            let after = drops(node, port)?;
            let counted = count(&after, reason) - count(&before, reason);
            if counted >= COPIES {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "{what}: {counted} of {COPIES} counted as {reason} on {port}; drops before {before}, after {after}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
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
        let mut pod_a = RawLink::open(&self.a.ns, "eth0", Duration::from_millis(100))?;
        underlay.send(valid)?;
        let arrived = pod_a.collect(1, Duration::from_secs(5), |f| f.ends_with(b"inner"));
        ensure!(
            !arrived.is_empty(),
            "a valid tunnel packet was not delivered"
        );
        Ok(())
    }
}

/// Build a two-node lab running `encap`, have pod a ping pod c across the
/// overlay all along, and run `attack` meanwhile; then check that the good
/// traffic went through and that no buffer frame was lost.
fn under_attack(tag: &str, encap: &str, attack: impl Fn(&Target) -> Result<()>) -> Result<()> {
    let mut lab = Lab::new(tag)?;
    let dir = std::env::temp_dir().join(lab.prefix().trim_end_matches('-'));
    let binary = Path::new(env!("CARGO_BIN_EXE_podswitch"));
    let options = SwitchOptions {
        encap: encap.into(),
        ..SwitchOptions::default()
    };
    let SwitchPair { nodes, pods } = SwitchPair::build(&mut lab, binary, &dir, &options)?;
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
        let frames = &node.cli_json(&["stats"])?["frames"];
        ensure!(
            frames["violations"] == 0 && frames["total"] == 16384,
            "frames: {frames}"
        );
    }
    Ok(())
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
        let pod_cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
            ("Ethernet only", good_frame[..14].to_vec(), Some("bad_ipv4")),
            (
                "half an IPv4 header",
                good_frame[..24].to_vec(),
                Some("bad_ipv4"),
            ),
            (
                "IPv4 without its payload",
                good_frame[..34].to_vec(),
                Some("bad_ipv4"),
            ),
            ("a bad IPv4 checksum", bad_checksum, Some("bad_ipv4")),
            ("IHL 4", short_ihl, Some("bad_ipv4")),
            ("Total Length past the frame", long_total, Some("bad_ipv4")),
            ("IP version 6 in an IPv4 frame", not_v4, Some("bad_ipv4")),
            ("TTL 0", frame(0), Some("ttl_expired")),
            ("TTL 1", frame(1), Some("ttl_expired")),
            ("another pod's address", spoofed_ip, Some("spoofed")),
            ("another pod's MAC", spoofed_mac, Some("spoofed")),
            ("a broadcast", broadcast, Some("broadcast")),
            ("a multicast", multicast, Some("multicast")),
            (
                "a MAC that is not the router's",
                other_mac,
                Some("not_our_mac"),
            ),
            ("IPv6", ipv6, Some("not_ipv4")),
        ];
        let mut pod_link = RawLink::open(&bad.ns, "eth0", Duration::from_millis(100))?;
        inject(&mut pod_link, t.n1, &bad.host_ifname, &pod_cases)?;

        // From the underlay: tunnel packets to node 1's VTEP, from node 2's
        // uplink, each wrong in one way.
        let vxlan = |flags: u8, vni: u32, inner: &[u8]| -> Vec<u8> {
            let vni = vni.to_be_bytes();
            [&[flags, 0, 0, 0, vni[1], vni[2], vni[3], 0][..], inner].concat()
        };
        let tunnel = |src: Ipv4Addr, payload: &[u8]| t.tunnel(src, 4789, payload);
        let valid = tunnel(node_ip(2), &vxlan(0x08, VNI, &t.inner))?;
        let mut bad_outer_checksum = valid.clone();
        bad_outer_checksum[24] ^= 0xff;
        let mut bad_udp_length = valid.clone();
        bad_udp_length[38..40].copy_from_slice(&4000u16.to_be_bytes());
        let mut fragment = valid.clone();
        fragment[20] = 0x20; // More Fragments
        fix_ipv4_checksum(&mut fragment);
        let tunnel_cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
            (
                "VXLAN without the I flag",
                tunnel(node_ip(2), &vxlan(0x00, VNI, &t.inner))?,
                Some("vxlan_bad_flags"),
            ),
            (
                "an unknown VNI",
                tunnel(node_ip(2), &vxlan(0x08, VNI + 1, &t.inner))?,
                Some("unknown_vni"),
            ),
            (
                "a sender that is not a peer",
                tunnel(Ipv4Addr::new(10, 1, 0, 99), &vxlan(0x08, VNI, &t.inner))?,
                Some("unknown_peer"),
            ),
            (
                "a frame cut inside the VXLAN header",
                valid[..46].to_vec(),
                Some("truncated_ipv4"),
            ),
            (
                "a VXLAN header cut short, lengths consistent",
                tunnel(node_ip(2), &[0x08, 0, 0, 0])?,
                Some("truncated_tunnel"),
            ),
            (
                "no inner frame",
                tunnel(node_ip(2), &vxlan(0x08, VNI, &[]))?,
                Some("truncated_inner"),
            ),
            (
                "half an inner Ethernet header",
                tunnel(node_ip(2), &vxlan(0x08, VNI, &t.inner[..7]))?,
                Some("truncated_inner"),
            ),
            (
                "a bad outer IPv4 checksum",
                bad_outer_checksum,
                Some("bad_ipv4_checksum"),
            ),
            (
                "a UDP length past the packet",
                bad_udp_length,
                Some("bad_udp_length"),
            ),
            // The uplink program leaves fragments to the kernel, which
            // reassembles them (and drops these, which never complete).
            ("an outer fragment", fragment, None),
        ];
        let mut underlay = RawLink::open(&t.n2.ns, "ul0", Duration::from_millis(100))?;
        inject(&mut underlay, t.n1, "ul0", &tunnel_cases)?;
        t.delivers(&mut underlay, &valid)
    })
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
        let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
            (
                "Geneve version 1",
                tunnel(&geneve(0x40, 0, 0x6558, VNI, &[], &t.inner))?,
                Some("geneve_bad_version"),
            ),
            (
                "an IPv4 payload, not Ethernet",
                tunnel(&geneve(0, 0, 0x0800, VNI, &[], &t.inner))?,
                Some("geneve_bad_protocol"),
            ),
            (
                "an OAM packet",
                tunnel(&geneve(0, 0x80, 0x6558, VNI, &[], &t.inner))?,
                Some("geneve_oam"),
            ),
            (
                "an unknown VNI",
                tunnel(&geneve(0, 0, 0x6558, VNI + 1, &[], &t.inner))?,
                Some("unknown_vni"),
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
                Some("geneve_critical_option"),
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
                Some("geneve_bad_options"),
            ),
            (
                "options longer than the packet",
                tunnel(&geneve(63, 0, 0x6558, VNI, &[], &t.inner[..8]))?,
                Some("truncated_tunnel"),
            ),
            (
                "a sender that is not a peer",
                t.tunnel(
                    Ipv4Addr::new(10, 1, 0, 99),
                    6081,
                    &geneve(0, 0, 0x6558, VNI, &[], &t.inner),
                )?,
                Some("unknown_peer"),
            ),
        ];
        let mut underlay = RawLink::open(&t.n2.ns, "ul0", Duration::from_millis(100))?;
        inject(&mut underlay, t.n1, "ul0", &cases)?;
        t.delivers(&mut underlay, &valid)
    })
}
