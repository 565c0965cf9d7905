//! Encapsulate an arbitrary frame for an arbitrary tunnel, then decapsulate:
//! the frame comes back untouched, or encap refused it for a stated reason.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use podswitch_encap::geneve::GeneveOptionRepr;
use podswitch_encap::wire::EthernetAddress;
use podswitch_encap::{Decapsulator, DropReason, OuterTemplate, TunnelKind, TunnelSpec, Vni};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    geneve: bool,
    ipv6: bool,
    vni: u32,
    local: u128,
    remote: u128,
    vlan: Option<u16>,
    udp_port: u16,
    ttl: u8,
    mtu: u16,
    headroom: u16,
    options: Vec<(u16, u8, u8)>,
    frame: &'a [u8],
}

fuzz_target!(|input: Input| {
    let kind = if input.geneve { TunnelKind::Geneve } else { TunnelKind::Vxlan };
    let (local, remote) = if input.ipv6 {
        (IpAddr::V6(Ipv6Addr::from(input.local)), IpAddr::V6(Ipv6Addr::from(input.remote)))
    } else {
        (
            IpAddr::V4(Ipv4Addr::from(input.local as u32)),
            IpAddr::V4(Ipv4Addr::from(input.remote as u32)),
        )
    };
    let data = [0xabu8; 124];
    let options: Vec<GeneveOptionRepr> = input
        .options
        .iter()
        .map(|&(class, option_type, words)| GeneveOptionRepr {
            class,
            option_type,
            data: &data[..usize::from(words % 32) * 4],
        })
        .collect();
    let Some(vni) = Vni::new(input.vni & Vni::MAX) else { return };
    let Ok(template) = OuterTemplate::new(&TunnelSpec {
        kind,
        vni,
        udp_port: input.udp_port,
        local_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
        next_hop_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
        vlan: input.vlan,
        local_ip: local,
        remote_ip: remote,
        ttl: input.ttl,
        geneve_options: &options,
        underlay_mtu: input.mtu,
    }) else {
        return;
    };
    let headroom = usize::from(input.headroom % 512);
    let mut buf = vec![0u8; headroom];
    buf.extend_from_slice(input.frame);
    let end = buf.len();
    let packet = match template.encapsulate(&mut buf, headroom..end) {
        Ok(packet) => packet,
        Err(DropReason::NoHeadroom) => {
            assert!(headroom < template.header_len());
            return;
        }
        Err(DropReason::Oversize) => {
            assert!(input.frame.len() > template.max_frame_len());
            return;
        }
        Err(other) => panic!("unexpected encap refusal {other}"),
    };
    assert_eq!(&buf[headroom..], input.frame);
    let mut decap = Decapsulator::new(kind, remote, vni);
    decap.udp_port = input.udp_port;
    decap.known_critical_options = options.iter().map(|o| (o.class, o.option_type)).collect();
    match decap.decapsulate(&buf[packet.clone()]) {
        Ok(d) => assert_eq!(&buf[packet.start..][d.inner], input.frame),
        Err(DropReason::TruncatedInner) => assert!(input.frame.len() < 14),
        Err(other) => panic!("decap refused our own packet: {other}"),
    }
});
