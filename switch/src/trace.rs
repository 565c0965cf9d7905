//! `podswitch trace`: what the data path would do with one packet. The
//! frame (described, or given as bytes) is run through the data path's own
//! decision, [`Forwarder::forward`], and for a peer its own encapsulation,
//! [`Forwarder::encapsulate`], on the current topology and FIB snapshots,
//! in a scratch buffer: nothing is sent and no counter moves. The Service
//! and NetworkPolicy stages run dry (they open, note and count nothing).
//! The stages reported are read off that one decision, not decided again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result, bail, ensure};
use podswitch_encap::DropReason;
use podswitch_encap::checksum::{fill_ipv4_header, sum};
use podswitch_encap::wire::ETHERNET_HEADER_LEN;

use crate::afxdp::XDP_PACKET_HEADROOM;
use crate::control::protocol::{TraceOuter, TraceProtocol, TraceReport, TraceSpec, TraceStage};
use crate::drops::DropCause;
use crate::fib::Ipv4Lpm;
use crate::forward::{Forwarder, ServiceStage, Verdict};
use crate::mac::MacAddr;
use crate::policy::PolicyStage;
use crate::topology::{PortId, PortRole, PortView, RouteTarget, Topology};
use podswitch_services::{FlowKey, Pass, flow};

/// Headroom before the traced frame, as a worker's buffers have.
const HEADROOM: usize = XDP_PACKET_HEADROOM as usize;
/// Room after the traced frame in its scratch buffer.
const TAILROOM: usize = 4096;
/// Longest frame a trace takes.
const MAX_FRAME: usize = 9216;
/// Bytes of payload a described packet carries.
const PAYLOAD: usize = 32;

/// The stages, in the order a frame meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Parse,
    AntiSpoofing,
    Service,
    FibLookup,
    Policy,
    Encapsulation,
    Output,
}

impl Stage {
    const ALL: [Stage; 7] = [
        Stage::Parse,
        Stage::AntiSpoofing,
        Stage::Service,
        Stage::FibLookup,
        Stage::Policy,
        Stage::Encapsulation,
        Stage::Output,
    ];

    fn name(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::AntiSpoofing => "anti_spoofing",
            Stage::Service => "service",
            Stage::FibLookup => "fib_lookup",
            Stage::Policy => "policy",
            Stage::Encapsulation => "encapsulation",
            Stage::Output => "output",
        }
    }

    /// The stage whose check `cause` is (a drop from the forwarding
    /// decision; the encapsulation's own are placed by the caller).
    fn of(cause: DropCause) -> Stage {
        match cause {
            DropCause::Spoofed => Stage::AntiSpoofing,
            DropCause::ServiceNoEndpoints
            | DropCause::ConntrackFull
            | DropCause::ConntrackClash => Stage::Service,
            DropCause::NoRoute | DropCause::PortGone | DropCause::TunnelHairpin => Stage::FibLookup,
            DropCause::PolicyDeniedIngress | DropCause::PolicyDeniedEgress => Stage::Policy,
            DropCause::PeerUnresolved => Stage::Encapsulation,
            DropCause::Wire(DropReason::Oversize)
            | DropCause::TxRingFull
            | DropCause::TxError
            | DropCause::NoFreeFrame => Stage::Output,
            _ => Stage::Parse,
        }
    }
}

/// Read a frame written in hex (spaces, colons and newlines allowed).
pub fn parse_hex(text: &str) -> Result<Vec<u8>> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b':')
        .collect();
    ensure!(
        digits.len().is_multiple_of(2),
        "an odd number of hex digits"
    );
    let frame = digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).context("not hex")?;
            u8::from_str_radix(pair, 16).with_context(|| format!("{pair:?} is not hex"))
        })
        .collect::<Result<Vec<u8>>>()?;
    ensure!(
        frame.len() <= MAX_FRAME,
        "a frame of {} bytes is longer than {MAX_FRAME}",
        frame.len()
    );
    Ok(frame)
}

/// The frame `spec` describes, as it would arrive on `port` of a switch
/// whose router MAC is `router`: addressed to the router, from the port's
/// MAC and address unless the spec names others, IPv4 with a valid
/// header checksum, then a UDP header, a TCP SYN or an ICMP echo request,
/// and a few bytes of payload.
pub fn describe_frame(spec: &TraceSpec, port: &PortView, router: MacAddr) -> Result<Vec<u8>> {
    if let Some(hex) = &spec.hex {
        return parse_hex(hex);
    }
    let dst = spec
        .dst
        .context("a destination address (dst) is needed, or the frame in hex")?;
    let Some(src) = spec.src.or(port.ip) else {
        bail!("port {} has no address: give a source (src)", port.name);
    };
    let src_mac = spec.src_mac.unwrap_or(port.mac);
    let (sport, dport) = (spec.src_port.unwrap_or(40000), spec.dst_port.unwrap_or(80));
    let mut l4 = match spec.protocol {
        TraceProtocol::Udp => {
            let len = (8 + PAYLOAD) as u16;
            [
                sport.to_be_bytes(),
                dport.to_be_bytes(),
                len.to_be_bytes(),
                [0, 0],
            ]
            .concat()
        }
        TraceProtocol::Tcp => [
            &sport.to_be_bytes()[..],
            &dport.to_be_bytes(),
            &1u32.to_be_bytes(),
            &0u32.to_be_bytes(),
            &[0x50, 0x02],
            &64240u16.to_be_bytes(),
            &[0, 0, 0, 0],
        ]
        .concat(),
        TraceProtocol::Icmp => vec![8, 0, 0, 0, 0, 1, 0, 1],
    };
    l4.extend_from_slice(&[0x70; PAYLOAD]);
    if spec.protocol == TraceProtocol::Icmp {
        let checksum = !sum(&l4);
        l4[2..4].copy_from_slice(&checksum.to_be_bytes());
    }
    let protocol = match spec.protocol {
        TraceProtocol::Udp => 17,
        TraceProtocol::Tcp => 6,
        TraceProtocol::Icmp => 1,
    };
    let total = (20 + l4.len()) as u16;
    let mut ip = [
        &[0x45, 0][..],
        &total.to_be_bytes(),
        &[0, 0, 0x40, 0, spec.ttl.unwrap_or(64), protocol, 0, 0],
        &src.octets(),
        &dst.octets(),
    ]
    .concat();
    fill_ipv4_header(&mut ip);
    Ok([&router.0[..], &src_mac.0, &[0x08, 0x00], &ip, &l4].concat())
}

/// The stages a trace runs dry besides the route, where they run: the
/// Service stage and the NetworkPolicy stage
/// ([`crate::services::Services::stage`],
/// [`crate::policy::Policies::stage`]), each a [`Pass::DryRun`].
#[derive(Clone, Copy, Default)]
pub struct Stages<'a> {
    /// The Service stage, with `service_translation = "switch"`.
    pub services: Option<ServiceStage<'a>>,
    /// The NetworkPolicy stage, while a policy selects a local pod.
    pub policy: Option<PolicyStage<'a>>,
}

/// Trace the packet `spec` describes on `topology` and `fib`.
pub fn trace_spec(
    topology: &Topology,
    fib: &Ipv4Lpm<RouteTarget>,
    stages: Stages,
    spec: &TraceSpec,
) -> Result<TraceReport> {
    let (id, port) = (0..topology.ports.len())
        .filter_map(|i| {
            let id = PortId(u16::try_from(i).ok()?);
            Some((id, topology.port(id)?))
        })
        .find(|(_, p)| p.name == spec.in_port)
        .with_context(|| format!("no port {}", spec.in_port))?;
    let frame = describe_frame(spec, port, topology.router_mac)?;
    Ok(trace(topology, fib, stages, id, &frame))
}

/// Run `frame`, arriving on `in_port`, through the data path's decision
/// on `topology` and `fib`, with the dry `stages`.
pub fn trace(
    topology: &Topology,
    fib: &Ipv4Lpm<RouteTarget>,
    stages: Stages,
    in_port: PortId,
    frame: &[u8],
) -> TraceReport {
    debug_assert!(stages.services.is_none_or(|s| s.pass == Pass::DryRun));
    let Stages { services, policy } = stages;
    let forwarder = Forwarder {
        topology,
        fib,
        services,
        policy,
    };
    // Headroom before, as the workers' buffers have, and a frame's worth
    // of room after.
    let mut buf = vec![0u8; HEADROOM + frame.len() + TAILROOM];
    let whole = HEADROOM..HEADROOM + frame.len();
    buf[whole.clone()].copy_from_slice(frame);
    let verdict = forwarder.forward(in_port, &mut buf, whole.clone());
    let role = topology.port(in_port).map(|p| p.role);
    let port_name = |id: PortId| topology.port(id).map_or("?".into(), |p| p.name.clone());
    let mut report = Report::new(frame);
    report.set(Stage::Parse, parse_outcome(frame));
    report.set(
        Stage::AntiSpoofing,
        match role {
            Some(PortRole::Pod) => "passed: the port's own MAC and address".into(),
            _ => "not checked: not a pod's port".into(),
        },
    );
    // The packet the verdict sends (decapsulated, for one from a peer) or
    // the frame dropped, and the same bytes as they came in (the data
    // path rewrites in place).
    let out = match &verdict {
        Verdict::Transmit { frame, .. } | Verdict::ToPeer { frame, .. } => frame.clone(),
        _ => whole,
    };
    let came_in = out
        .start
        .checked_sub(HEADROOM)
        .and_then(|start| frame.get(start..start + out.len()));
    report.set(
        Stage::Service,
        match (&services, came_in) {
            (Some(stage), Some(came_in)) => service_outcome(stage, came_in, &buf[out]),
            (Some(_), None) => "untranslated".into(),
            (None, _) => "not run: service_translation is \"kube-proxy\"".into(),
        },
    );
    report.set(
        Stage::Policy,
        match policy {
            Some(_) => "passed: the rules allow it, or it belongs to a tracked connection",
            None => "passed: no NetworkPolicy selects a pod of this node",
        }
        .into(),
    );
    match verdict {
        Verdict::Drop(cause) => {
            if Stage::of(cause) > Stage::FibLookup {
                report.set(Stage::FibLookup, "routed".into());
            }
            report.drop(Stage::of(cause), cause)
        }
        Verdict::Answer { cause, port, .. } => {
            if Stage::of(cause) > Stage::FibLookup {
                report.set(Stage::FibLookup, "routed".into());
            }
            report.drop(Stage::of(cause), cause);
            let name = port_name(port);
            report.set(
                Stage::Output,
                format!("{name}: answered with an ICMP port unreachable"),
            );
            report.0.output_port = Some(name);
        }
        Verdict::Transmit { port, .. } => {
            let name = port_name(port);
            let target = match topology.port(port).map(|p| p.role) {
                Some(PortRole::Host) => format!("the host port {name}"),
                _ if port == in_port => format!("back to {name} (an ARP reply)"),
                _ => format!("pod port {name}"),
            };
            report.set(Stage::FibLookup, format!("to {target}"));
            report.set(Stage::Encapsulation, "none: delivered on this node".into());
            report.set(Stage::Output, name.clone());
            report.0.verdict = "deliver".into();
            report.0.output_port = Some(name);
        }
        Verdict::ToPeer { peer, frame } => {
            let node_ip = topology.peer(peer).map(|p| p.node_ip);
            let peer_name = node_ip.map_or("?".into(), |ip| ip.to_string());
            report.set(Stage::FibLookup, format!("to peer {peer_name}"));
            report.0.peer = node_ip;
            match forwarder.encapsulate(peer, &mut buf, frame) {
                Ok(packet) => {
                    let outer = outer_header(&buf[packet]);
                    report.set(
                        Stage::Encapsulation,
                        outer.as_ref().map_or("encapsulated".into(), |o| {
                            format!(
                                "{} → {} UDP {} → {} VNI {}, {} → {}",
                                o.src_ip,
                                o.dst_ip,
                                o.src_port,
                                o.dst_port,
                                o.vni,
                                o.src_mac,
                                o.dst_mac
                            )
                        }),
                    );
                    let uplink = port_name(topology.uplink);
                    report.set(Stage::Output, format!("{uplink} (the tunnel)"));
                    report.0.verdict = "tunnel".into();
                    report.0.output_port = Some(uplink);
                    report.0.outer = outer;
                }
                Err(cause) => report.drop(Stage::Encapsulation, cause),
            }
        }
    }
    report.0
}

/// A report being filled in, stage by stage.
struct Report(TraceReport);

impl Report {
    fn new(frame: &[u8]) -> Report {
        Report(TraceReport {
            stages: Stage::ALL
                .iter()
                .map(|s| TraceStage {
                    stage: s.name().into(),
                    outcome: String::new(),
                })
                .collect(),
            verdict: String::new(),
            drop_reason: None,
            output_port: None,
            peer: None,
            outer: None,
            frame: frame.iter().map(|b| format!("{b:02x}")).collect(),
        })
    }

    fn set(&mut self, stage: Stage, outcome: String) {
        self.0.stages[stage as usize].outcome = outcome;
    }

    /// Dropped at `stage`: the stages after it are not reached.
    fn drop(&mut self, stage: Stage, cause: DropCause) {
        self.set(stage, format!("drop: {cause}"));
        for later in Stage::ALL.into_iter().filter(|s| *s > stage) {
            self.set(later, "not reached".into());
        }
        self.0.verdict = "drop".into();
        self.0.drop_reason = Some(cause.as_str().into());
    }
}

/// What the Service stage did to the packet whose frame came in as
/// `frame` and left as `after`: its tuple's rewrite, and
/// whether the connection is one the switch has or a new one, which the
/// Service table gave the endpoint it would give a real packet with the
/// same tuple (a hash of the tuple or the client's affinity picks it, so
/// another source port may get another of the usable endpoints).
fn service_outcome(stage: &ServiceStage, frame: &[u8], after: &[u8]) -> String {
    let (Some(before_ip), Some(after_ip)) = (
        frame.get(ETHERNET_HEADER_LEN..),
        after.get(ETHERNET_HEADER_LEN..),
    ) else {
        return "untranslated".into();
    };
    let (Some(before), Some(now)) = (Tuple::of(before_ip), Tuple::of(after_ip)) else {
        return "untranslated: not TCP, UDP or SCTP, nor an ICMP error about them".into();
    };
    if before == now {
        return "untranslated: not a Service's packet or one of its connections".into();
    }
    let how = match before {
        Tuple::Error { .. } => "an ICMP error about a connection the switch has".to_string(),
        Tuple::Packet(key) if stage.translator.conns.peek(&key, stage.now_ms).is_some() => {
            "a connection the switch has".into()
        }
        Tuple::Packet(key) => {
            let usable = stage
                .table
                .usable(key.dst, key.protocol, key.dport)
                .map_or(0, <[_]>::len);
            format!(
                "a new connection: the endpoint this tuple gets, of {usable} usable \
                 (another source port may get another)"
            )
        }
    };
    format!("{before} becomes {now}, {how}")
}

/// What the Service stage reads of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tuple {
    /// A TCP, UDP or SCTP packet.
    Packet(FlowKey),
    /// An ICMP error about one.
    Error {
        /// The error's source and destination.
        addresses: (Ipv4Addr, Ipv4Addr),
        /// The quoted packet's tuple.
        quoted: FlowKey,
    },
}

impl Tuple {
    fn of(ipv4: &[u8]) -> Option<Tuple> {
        match flow::parse(ipv4) {
            Some(parsed) => Some(Tuple::Packet(parsed.key)),
            None => flow::parse_error(ipv4).map(|error| Tuple::Error {
                addresses: (error.src, error.dst),
                quoted: error.quoted,
            }),
        }
    }
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = |f: &mut std::fmt::Formatter<'_>, k: &FlowKey| {
            write!(f, "{}:{} → {}:{}", k.src, k.sport, k.dst, k.dport)
        };
        match self {
            Tuple::Packet(k) => key(f, k),
            Tuple::Error { addresses, quoted } => {
                write!(f, "ICMP error {} → {} about ", addresses.0, addresses.1)?;
                key(f, quoted)
            }
        }
    }
}

/// What the frame's headers say, for the parse stage (the data path's
/// checks on them are its verdict).
fn parse_outcome(frame: &[u8]) -> String {
    let Some(eth) = frame.get(..14) else {
        return format!("{} bytes: shorter than an Ethernet header", frame.len());
    };
    let mac = |b: &[u8]| MacAddr(b.try_into().unwrap_or_default());
    let (dst, src) = (mac(&eth[..6]), mac(&eth[6..12]));
    let ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let ip = match (ethertype, frame.get(14..34)) {
        (0x0800, Some(h)) => {
            let addr = |o: usize| Ipv4Addr::new(h[o], h[o + 1], h[o + 2], h[o + 3]);
            let protocol = match h[9] {
                1 => "ICMP".to_string(),
                6 => "TCP".into(),
                17 => "UDP".into(),
                p => format!("protocol {p}"),
            };
            format!(", IPv4 {} → {} {protocol} TTL {}", addr(12), addr(16), h[8])
        }
        (0x0806, _) => ", ARP".into(),
        _ => format!(", EtherType {ethertype:#06x}"),
    };
    format!("{} bytes, {src} → {dst}{ip}", frame.len())
}

/// The outer Ethernet, IP and UDP headers and the VNI of a tunnel packet
/// (VXLAN and Geneve both carry the VNI in bytes 4–6 of their header).
fn outer_header(packet: &[u8]) -> Option<TraceOuter> {
    let mac = |b: &[u8]| Some(MacAddr(b.try_into().ok()?));
    let (dst_mac, src_mac) = (mac(packet.get(..6)?)?, mac(packet.get(6..12)?)?);
    let mut at = 12;
    let mut ethertype = u16::from_be_bytes(packet.get(at..at + 2)?.try_into().ok()?);
    if ethertype == 0x8100 {
        at += 4;
        ethertype = u16::from_be_bytes(packet.get(at..at + 2)?.try_into().ok()?);
    }
    let ip = at + 2;
    let (src_ip, dst_ip, udp) = match ethertype {
        0x0800 => {
            let h = packet.get(ip..ip + 20)?;
            let a = |o: usize| IpAddr::V4(Ipv4Addr::new(h[o], h[o + 1], h[o + 2], h[o + 3]));
            (a(12), a(16), ip + usize::from(h[0] & 0x0f) * 4)
        }
        0x86dd => {
            let h = packet.get(ip..ip + 40)?;
            let a = |o: usize| {
                let bytes: [u8; 16] = h[o..o + 16].try_into().unwrap_or_default();
                IpAddr::V6(Ipv6Addr::from(bytes))
            };
            (a(8), a(24), ip + 40)
        }
        _ => return None,
    };
    let u = packet.get(udp..udp + 16)?;
    Some(TraceOuter {
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
        src_port: u16::from_be_bytes([u[0], u[1]]),
        dst_port: u16::from_be_bytes([u[2], u[3]]),
        vni: u32::from_be_bytes([0, u[12], u[13], u[14]]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::tests::{
        NODE, PEER_NODE, POD_A, POD_A_MAC, POD_A_PORT, POD_B, REMOTE_POD, VIP, fib, topology,
        underlay_mac, web,
    };
    use podswitch_encap::checksum::ipv4_header_ok;
    use podswitch_services::{Timeouts, Translator};

    fn spec(dst: Ipv4Addr) -> TraceSpec {
        TraceSpec {
            in_port: "veth-a".into(),
            dst: Some(dst),
            ..TraceSpec::default()
        }
    }

    fn outcome(report: &TraceReport, stage: Stage) -> &str {
        &report.stages[stage as usize].outcome
    }

    #[test]
    fn to_a_remote_pod_through_the_tunnel_with_the_outer_header() {
        let report = trace_spec(&topology(), &fib(), Stages::default(), &spec(REMOTE_POD)).unwrap();
        assert_eq!(report.verdict, "tunnel");
        assert_eq!(report.peer, Some(IpAddr::V4(PEER_NODE)));
        assert_eq!(report.output_port.as_deref(), Some("ul0"));
        let outer = report.outer.unwrap();
        assert_eq!(outer.src_ip, IpAddr::V4(NODE));
        assert_eq!(outer.dst_ip, IpAddr::V4(PEER_NODE));
        assert_eq!((outer.dst_port, outer.vni), (4789, 1));
        assert_eq!(outer.src_mac, underlay_mac(NODE).into());
        assert_eq!(outer.dst_mac, underlay_mac(PEER_NODE).into());
    }

    #[test]
    fn a_service_packet_is_traced_to_its_endpoint_and_nothing_is_opened() {
        let (topology, fib) = (topology(), fib());
        let translator = Translator::new(16, Timeouts::default());
        let tcp = TraceSpec {
            protocol: TraceProtocol::Tcp,
            ..spec(VIP)
        };
        let table = web(&[REMOTE_POD]);
        let stages = Stages {
            services: Some(ServiceStage {
                table: &table,
                translator: &translator,
                now_ms: 0,
                pass: Pass::DryRun,
            }),
            policy: None,
        };
        let report = trace_spec(&topology, &fib, stages, &tcp).unwrap();
        assert_eq!(report.verdict, "tunnel", "{report:?}");
        assert_eq!(report.peer, Some(IpAddr::V4(PEER_NODE)));
        assert_eq!(
            outcome(&report, Stage::Service),
            "10.244.1.5:40000 → 10.96.0.10:80 becomes 10.244.1.5:40000 → 10.244.2.7:8080, \
             a new connection: the endpoint this tuple gets, of 1 usable \
             (another source port may get another)"
        );
        assert!(translator.conns.is_empty());
        assert_eq!(translator.translated(), 0);
        // Not a Service's packet.
        let other = trace_spec(&topology, &fib, stages, &spec(REMOTE_POD)).unwrap();
        assert!(outcome(&other, Stage::Service).starts_with("untranslated"));
        // No endpoint: refused at the Service stage.
        let empty = web(&[]);
        let stages = Stages {
            services: Some(ServiceStage {
                table: &empty,
                ..stages.services.unwrap()
            }),
            policy: None,
        };
        let refused = trace_spec(&topology, &fib, stages, &tcp).unwrap();
        assert_eq!(refused.drop_reason.as_deref(), Some("service_no_endpoints"));
        assert_eq!(
            outcome(&refused, Stage::Service),
            "drop: service_no_endpoints"
        );
        assert_eq!(outcome(&refused, Stage::FibLookup), "not reached");
        // Without the switch's translation.
        let plain = trace_spec(&topology, &fib, Stages::default(), &tcp).unwrap();
        assert!(outcome(&plain, Stage::Service).starts_with("not run"));
    }

    #[test]
    fn local_delivery_spoofing_and_no_route() {
        let (topology, mut fib) = (topology(), fib());
        let local = trace_spec(&topology, &fib, Stages::default(), &spec(POD_B)).unwrap();
        assert_eq!(
            (local.verdict.as_str(), local.output_port.as_deref()),
            ("deliver", Some("veth-b"))
        );
        let spoofed = TraceSpec {
            src: Some(POD_B),
            ..spec(REMOTE_POD)
        };
        let report = trace_spec(&topology, &fib, Stages::default(), &spoofed).unwrap();
        assert_eq!(report.drop_reason.as_deref(), Some("spoofed"));
        assert_eq!(outcome(&report, Stage::AntiSpoofing), "drop: spoofed");
        for later in [
            Stage::FibLookup,
            Stage::Policy,
            Stage::Encapsulation,
            Stage::Output,
        ] {
            assert_eq!(outcome(&report, later), "not reached");
        }
        fib.remove("0.0.0.0/0".parse().unwrap());
        let report = trace_spec(
            &topology,
            &fib,
            Stages::default(),
            &spec(Ipv4Addr::new(192, 0, 2, 1)),
        )
        .unwrap();
        assert_eq!(report.drop_reason.as_deref(), Some("no_route"));
        assert_eq!(outcome(&report, Stage::FibLookup), "drop: no_route");
        assert!(
            trace_spec(
                &topology,
                &fib,
                Stages::default(),
                &TraceSpec {
                    in_port: "nope".into(),
                    ..spec(POD_B)
                }
            )
            .is_err()
        );
    }

    #[test]
    fn described_frames_are_well_formed() {
        let topology = topology();
        let port = topology.port(POD_A_PORT).unwrap();
        for protocol in [TraceProtocol::Udp, TraceProtocol::Tcp, TraceProtocol::Icmp] {
            let frame = describe_frame(
                &TraceSpec {
                    protocol,
                    ..spec(REMOTE_POD)
                },
                port,
                topology.router_mac,
            )
            .unwrap();
            assert_eq!(&frame[..6], &topology.router_mac.0);
            assert_eq!(&frame[6..12], &POD_A_MAC.0);
            assert!(ipv4_header_ok(&frame[14..34]));
            assert_eq!(&frame[26..30], &POD_A.octets());
            assert_eq!(
                usize::from(u16::from_be_bytes([frame[16], frame[17]])),
                frame.len() - 14
            );
            if protocol == TraceProtocol::Icmp {
                assert_eq!(sum(&frame[34..]), 0xffff);
            }
            let again = TraceSpec {
                hex: Some(frame.iter().map(|b| format!("{b:02X} ")).collect()),
                ..TraceSpec::default()
            };
            assert_eq!(
                describe_frame(&again, port, topology.router_mac).unwrap(),
                frame
            );
        }
        assert!(describe_frame(&TraceSpec::default(), port, topology.router_mac).is_err());
    }

    #[test]
    fn arp_is_answered_and_no_frame_panics() {
        let (topology, fib) = (topology(), fib());
        let local = describe_frame(
            &spec(POD_B),
            topology.port(POD_A_PORT).unwrap(),
            topology.router_mac,
        )
        .unwrap();
        // An ARP request from pod A for its gateway.
        let arp = [
            &[0xff; 6][..],
            &POD_A_MAC.0,
            &[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1],
            &POD_A_MAC.0,
            &POD_A.octets(),
            &[0; 6],
            &[10, 244, 1, 1],
        ]
        .concat();
        let report = trace(&topology, &fib, Stages::default(), POD_A_PORT, &arp);
        assert_eq!(report.verdict, "deliver", "{report:?}");
        assert_eq!(report.output_port.as_deref(), Some("veth-a"));
        // Every cut of a pod frame and an ARP request, on every port (the
        // uplink decapsulates) and one that does not exist: a verdict,
        // never a panic.
        for frame in [&local[..], &arp[..]] {
            for len in 0..=frame.len() {
                for port in 0..5 {
                    let report = trace(
                        &topology,
                        &fib,
                        Stages::default(),
                        PortId(port),
                        &frame[..len],
                    );
                    assert!(!report.verdict.is_empty());
                }
            }
        }
    }

    #[test]
    fn hex_is_checked() {
        assert_eq!(parse_hex("0a:FF 00\n").unwrap(), vec![0x0a, 0xff, 0]);
        assert!(parse_hex("abc").is_err());
        assert!(parse_hex("zz").is_err());
        assert!(parse_hex("é1").is_err());
        assert!(parse_hex(&"00".repeat(MAX_FRAME + 1)).is_err());
        assert!(parse_hex("").unwrap().is_empty());
    }
}
