//! Held to Wireshark's dissectors: packets this library encapsulates (Geneve
//! with options, VXLAN; IPv4 and IPv6 outer) are written to a pcap file and
//! read back by `tshark`, field by field, with checksum validation on. The
//! kernel has no Geneve here, so tshark is the independent judge for it.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use podswitch_encap::geneve::GeneveOptionRepr;
use podswitch_encap::wire::EthernetAddress;
use podswitch_encap::{OuterTemplate, TunnelKind, TunnelSpec, Vni};

const FIELDS: &[&str] = &[
    "eth.dst",
    "eth.src",
    "ip.src",
    "ip.dst",
    "ip.ttl",
    "ip.flags.df",
    "ip.checksum.status",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.flow",
    "udp.srcport",
    "udp.dstport",
    "udp.length",
    "udp.checksum",
    "udp.checksum.status",
    "vxlan.flags",
    "vxlan.vni",
    "geneve.version",
    "geneve.flags.oam",
    "geneve.flags.critical",
    "geneve.proto_type",
    "geneve.vni",
    "geneve.option.class",
    "geneve.option.type",
    "geneve.option.type.critical",
    "geneve.option.length",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.checksum.status",
    "_ws.malformed",
    "_ws.expert.severity",
    "_ws.expert.message",
];

const OPTION_DATA: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

fn options() -> [GeneveOptionRepr<'static>; 2] {
    [
        GeneveOptionRepr {
            class: 0x0102,
            option_type: 0x80 | 0x05, // critical
            data: &OPTION_DATA,
        },
        GeneveOptionRepr {
            class: 0xffff,
            option_type: 0x01,
            data: &[],
        },
    ]
}

/// An Ethernet + IPv4 + TCP frame from 10.244.1.5:40000 to 10.244.2.7:5201
/// with 100 payload bytes and valid checksums.
fn inner_frame() -> Vec<u8> {
    use podswitch_encap::wire::*;
    use smoltcp::phy::ChecksumCapabilities;
    let src = Ipv4Addr::new(10, 244, 1, 5);
    let dst = Ipv4Addr::new(10, 244, 2, 7);
    let payload = [0x5au8; 100];
    let tcp = TcpRepr {
        src_port: 40000,
        dst_port: 5201,
        control: TcpControl::Psh,
        seq_number: TcpSeqNumber(1000),
        ack_number: Some(TcpSeqNumber(2000)),
        window_len: 512,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: &payload,
    };
    let ip = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 63,
    };
    let mut frame = vec![0u8; 14 + 20 + tcp.buffer_len()];
    EthernetRepr {
        src_addr: EthernetAddress([0x0a, 0x58, 0, 0, 0, 5]),
        dst_addr: EthernetAddress([0x0a, 0x58, 0, 0, 0, 7]),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..]), &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(&mut frame[34..]),
        &src.into(),
        &dst.into(),
        &caps,
    );
    frame
}

fn encapsulate(kind: TunnelKind, ipv6: bool, with_options: bool) -> Vec<u8> {
    let (local_ip, remote_ip) = if ipv6 {
        (
            IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x11)),
            IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x12)),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::new(10, 1, 0, 11)),
            IpAddr::V4(Ipv4Addr::new(10, 1, 0, 12)),
        )
    };
    let opts = options();
    let template = OuterTemplate::new(&TunnelSpec {
        kind,
        vni: Vni::new(0x12_3456).unwrap(),
        udp_port: kind.default_udp_port(),
        local_mac: EthernetAddress([0x02, 0x70, 0x73, 0, 0, 0x11]),
        next_hop_mac: EthernetAddress([0x02, 0x70, 0x73, 0, 0, 0x12]),
        vlan: None,
        local_ip,
        remote_ip,
        ttl: 64,
        geneve_options: if with_options { &opts } else { &[] },
        underlay_mtu: 1500,
    })
    .unwrap();
    let mut buf = vec![0u8; 512];
    buf.extend_from_slice(&inner_frame());
    let end = buf.len();
    let packet = template.encapsulate(&mut buf, 512..end).unwrap();
    buf[packet].to_vec()
}

/// Run tshark over `packets`; one map of field → value per packet.
fn dissect(name: &str, packets: &[Vec<u8>]) -> Result<Vec<HashMap<String, String>>> {
    let dir = std::env::temp_dir().join(format!("podswitch-tshark-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("encap.pcap");
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ..Default::default()
    };
    let mut writer = PcapWriter::with_header(File::create(&path)?, header)?;
    for (i, p) in packets.iter().enumerate() {
        writer.write_packet(&PcapPacket::new(
            Duration::from_millis(i as u64),
            p.len() as u32,
            p,
        ))?;
    }
    drop(writer);

    let mut cmd = podswitch_lab::tools::command("tshark")?;
    cmd.args(["-n", "-r"])
        .arg(&path)
        .args([
            "-o",
            "ip.check_checksum:TRUE",
            "-o",
            "udp.check_checksum:TRUE",
        ])
        .args(["-o", "tcp.check_checksum:TRUE"])
        .args([
            "-T",
            "fields",
            "-E",
            "separator=\t",
            "-E",
            "aggregator=,",
            "-E",
            "occurrence=a",
        ]);
    for field in FIELDS {
        cmd.args(["-e", field]);
    }
    let output = cmd.output().context("running tshark")?;
    std::fs::remove_dir_all(&dir)?;
    ensure!(
        output.status.success(),
        "tshark failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout)?;
    Ok(text
        .lines()
        .map(|line| {
            FIELDS
                .iter()
                .zip(line.split('\t'))
                .filter(|(_, v)| !v.is_empty())
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect()
        })
        .collect())
}

fn field<'a>(packet: &'a HashMap<String, String>, name: &str) -> &'a str {
    packet.get(name).map(String::as_str).unwrap_or("")
}

/// The fields every encapsulated packet shares: outer UDP source port in
/// the flow-hash range, inner frame intact with a valid TCP checksum, no
/// malformed-packet or expert warnings.
fn check_common(p: &HashMap<String, String>, dst_port: &str) {
    let src_port: u16 = field(p, "udp.srcport").parse().unwrap();
    assert!(src_port >= 49152, "{p:?}");
    assert_eq!(field(p, "udp.dstport"), dst_port, "{p:?}");
    assert_eq!(field(p, "eth.dst"), "02:70:73:00:00:12,0a:58:00:00:00:07");
    assert_eq!(field(p, "eth.src"), "02:70:73:00:00:11,0a:58:00:00:00:05");
    assert_eq!(field(p, "tcp.srcport"), "40000");
    assert_eq!(field(p, "tcp.dstport"), "5201");
    assert_eq!(
        field(p, "tcp.checksum.status"),
        "1",
        "inner TCP checksum: {p:?}"
    );
    assert_eq!(field(p, "_ws.malformed"), "", "{p:?}");
    // Chat and note level expert items (TCP analysis remarks) are fine;
    // warnings and errors (bad checksums, bad lengths) are not.
    const PI_WARN: u32 = 0x0060_0000;
    for severity in field(p, "_ws.expert.severity")
        .split(',')
        .filter(|s| !s.is_empty())
    {
        assert!(
            severity.parse::<u32>().unwrap() < PI_WARN,
            "expert warning: {p:?}"
        );
    }
}

#[test]
fn tshark_reads_geneve_field_by_field() -> Result<()> {
    let packets = [
        encapsulate(TunnelKind::Geneve, false, true),
        encapsulate(TunnelKind::Geneve, true, true),
        encapsulate(TunnelKind::Geneve, false, false),
    ];
    let dissected = dissect("geneve", &packets)?;
    assert_eq!(dissected.len(), 3);

    for (i, p) in dissected.iter().enumerate() {
        check_common(p, "6081");
        assert_eq!(field(p, "geneve.version"), "0");
        assert_eq!(field(p, "geneve.flags.oam"), "0");
        assert_eq!(field(p, "geneve.proto_type"), "0x6558");
        assert_eq!(field(p, "geneve.vni"), "0x123456");
        if i < 2 {
            assert_eq!(field(p, "geneve.flags.critical"), "1");
            assert_eq!(field(p, "geneve.option.class"), "0x0102,0xffff");
            assert_eq!(field(p, "geneve.option.type"), "0x85,0x01");
            assert_eq!(field(p, "geneve.option.type.critical"), "1,0");
            // The options area (16 bytes), then each option with its header.
            assert_eq!(field(p, "geneve.option.length"), "16,12,4");
        } else {
            assert_eq!(field(p, "geneve.flags.critical"), "0");
            assert_eq!(field(p, "geneve.option.class"), "");
        }
    }

    // Outer IPv4: valid header checksum, DF, TTL 64, no UDP checksum.
    let v4 = &dissected[0];
    assert_eq!(field(v4, "ip.src"), "10.1.0.11,10.244.1.5");
    assert_eq!(field(v4, "ip.dst"), "10.1.0.12,10.244.2.7");
    assert_eq!(field(v4, "ip.ttl"), "64,63");
    assert_eq!(field(v4, "ip.flags.df"), "1,1");
    assert_eq!(field(v4, "ip.checksum.status"), "1,1");
    assert_eq!(field(v4, "udp.checksum"), "0x0000");
    let udp_len: usize = field(v4, "udp.length").parse()?;
    assert_eq!(udp_len, packets[0].len() - 14 - 20);

    // Outer IPv6: a real UDP checksum that verifies; flow label from the hash.
    let v6 = &dissected[1];
    assert_eq!(field(v6, "ipv6.src"), "fd00:1::11");
    assert_eq!(field(v6, "ipv6.dst"), "fd00:1::12");
    assert_eq!(
        field(v6, "udp.checksum.status"),
        "1",
        "IPv6 UDP checksum: {v6:?}"
    );
    assert_ne!(field(v6, "ipv6.flow"), "0x00000");
    Ok(())
}

#[test]
fn tshark_reads_vxlan() -> Result<()> {
    let packets = [
        encapsulate(TunnelKind::Vxlan, false, false),
        encapsulate(TunnelKind::Vxlan, true, false),
    ];
    let dissected = dissect("vxlan", &packets)?;
    assert_eq!(dissected.len(), 2);
    for p in &dissected {
        check_common(p, "4789");
        assert_eq!(field(p, "vxlan.flags"), "0x0800");
        assert_eq!(field(p, "vxlan.vni"), "1193046");
    }
    assert_eq!(field(&dissected[0], "ip.checksum.status"), "1,1");
    assert_eq!(field(&dissected[1], "udp.checksum.status"), "1");
    Ok(())
}
