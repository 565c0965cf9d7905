//! Property tests: decapsulating what was encapsulated gives back the frame,
//! untouched, for random frames, tunnels, address families, VLAN tags and
//! Geneve options.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use podswitch_encap::geneve::{self, GeneveOptionRepr};
use podswitch_encap::wire::EthernetAddress;
use podswitch_encap::{Decapsulator, DropReason, OuterTemplate, TunnelKind, TunnelSpec, Vni};
use proptest::prelude::*;

const HEADROOM: usize = 400;

#[derive(Debug, Clone)]
struct OptionSpec {
    class: u16,
    option_type: u8,
    data: Vec<u8>,
}

fn option_strategy() -> impl Strategy<Value = OptionSpec> {
    (any::<u16>(), any::<u8>(), 0usize..=8).prop_flat_map(|(class, option_type, words)| {
        proptest::collection::vec(any::<u8>(), words * 4).prop_map(move |data| OptionSpec {
            class,
            option_type,
            data,
        })
    })
}

fn address_pair() -> impl Strategy<Value = (IpAddr, IpAddr)> {
    prop_oneof![
        (any::<u32>(), any::<u32>())
            .prop_map(|(a, b)| (IpAddr::V4(Ipv4Addr::from(a)), IpAddr::V4(Ipv4Addr::from(b)))),
        (any::<u128>(), any::<u128>())
            .prop_map(|(a, b)| (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b)))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decap_inverts_encap(
        frame in proptest::collection::vec(any::<u8>(), 14..1400),
        geneve_tunnel in any::<bool>(),
        vni in 0u32..=Vni::MAX,
        (local, remote) in address_pair(),
        vlan in proptest::option::of(0u16..4095),
        udp_port in 1u16..,
        ttl in 1u8..,
        options in proptest::collection::vec(option_strategy(), 0..6),
        hash in any::<u32>(),
    ) {
        let kind = if geneve_tunnel { TunnelKind::Geneve } else { TunnelKind::Vxlan };
        let option_reprs: Vec<GeneveOptionRepr> = options
            .iter()
            .map(|o| GeneveOptionRepr { class: o.class, option_type: o.option_type, data: &o.data })
            .collect();
        let options_len: usize = option_reprs.iter().map(GeneveOptionRepr::buffer_len).sum();
        prop_assume!(options_len <= geneve::MAX_OPTIONS_LEN);
        let vni = Vni::new(vni).unwrap();
        let template = OuterTemplate::new(&TunnelSpec {
            kind,
            vni,
            udp_port,
            local_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            next_hop_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            vlan,
            local_ip: local,
            remote_ip: remote,
            ttl,
            geneve_options: if geneve_tunnel { &option_reprs } else { &[] },
            underlay_mtu: 1500,
        })
        .unwrap();

        let mut buf = vec![0u8; HEADROOM];
        buf.extend_from_slice(&frame);
        let end = buf.len();
        let encapsulated = template.encapsulate_with_hash(&mut buf, HEADROOM..end, hash);
        if frame.len() > template.max_frame_len() {
            prop_assert_eq!(encapsulated, Err(DropReason::Oversize));
            return Ok(());
        }
        let packet = encapsulated.unwrap();
        prop_assert_eq!(packet.len(), template.header_len() + frame.len());
        prop_assert_eq!(&buf[HEADROOM..], &frame[..], "encap must not touch the frame");

        let mut decap = Decapsulator::new(kind, remote, vni);
        decap.udp_port = udp_port;
        decap.known_critical_options =
            option_reprs.iter().map(|o| (o.class, o.option_type)).collect();
        let d = decap.decapsulate(&buf[packet.clone()]).unwrap();
        prop_assert_eq!(&buf[packet.start..][d.inner.clone()], &frame[..]);
        prop_assert_eq!(d.vni, vni);
        prop_assert_eq!(d.sender, local);
        prop_assert!(d.source_port >= 49152);
        if geneve_tunnel {
            let area = &buf[packet.start..][d.options.clone()];
            let parsed: Vec<_> = geneve::OptionIter::new(area)
                .map(|o| GeneveOptionRepr::parse(&o.unwrap()).unwrap())
                .collect();
            prop_assert_eq!(parsed, option_reprs.clone());
        }
    }

    #[test]
    fn decap_never_panics_on_garbage(packet in proptest::collection::vec(any::<u8>(), 0..300)) {
        for kind in [TunnelKind::Vxlan, TunnelKind::Geneve] {
            let decap = Decapsulator::new(kind, IpAddr::V4(Ipv4Addr::new(10, 1, 0, 12)), Vni::new(1).unwrap());
            if let Ok(d) = decap.decapsulate(&packet) {
                prop_assert!(d.inner.end <= packet.len());
            }
        }
    }
}
