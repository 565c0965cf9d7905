//! Held to the kernel's own VXLAN: frames the kernel encapsulates decap with
//! this library, and frames this library encapsulates are delivered by the
//! kernel — over IPv4 and IPv6 underlays, in network namespaces.
//!
//! Node A (10.1.0.11 / fd00:1::11) has no VXLAN device: the test speaks for
//! it with raw frames. Node B (10.1.0.12 / fd00:1::12) is a Flannel-style
//! kernel node with `vxlan0` (VNI 42, port 4789, address 10.244.2.0/32)
//! and a route to A's pod CIDR 10.244.1.0/24 through A's VTEP MAC.
//! Needs root.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use podswitch_encap::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpProtocol, Ipv4Packet,
    Ipv4Repr, UdpPacket, UdpRepr,
};
use podswitch_encap::{Decapsulator, OuterTemplate, TunnelKind, TunnelSpec, Vni};
use podswitch_lab::{KernelVxlan, Lab, Netns, RawLink, format_mac};
use smoltcp::phy::ChecksumCapabilities;

const VNI: u32 = 42;
const A_VTEP_MAC: [u8; 6] = [0x02, 0x70, 0x73, 0x00, 0x00, 0x0b];
const B_VTEP_MAC: &str = "02:70:73:00:00:0c";
const A_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
const B_VTEP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 0);
const PORT: u16 = 7777;

struct Testbed {
    _lab: Lab,
    a: Netns,
    b: Netns,
    a_ip: IpAddr,
    b_ip: IpAddr,
}

fn testbed(ipv6: bool) -> Result<Testbed> {
    let mut lab = Lab::new("encap")?;
    let a = lab.netns("a")?;
    let b = lab.netns("b")?;
    a.ip(&[
        "link",
        "add",
        "ul0",
        "type",
        "veth",
        "peer",
        "name",
        "ul0",
        "netns",
        b.name(),
    ])?;
    let (a_ip, b_ip, prefix): (IpAddr, IpAddr, u8) = if ipv6 {
        ("fd00:1::11".parse()?, "fd00:1::12".parse()?, 64)
    } else {
        ("10.1.0.11".parse()?, "10.1.0.12".parse()?, 24)
    };
    for (ns, ip) in [(&a, a_ip), (&b, b_ip)] {
        let cidr = format!("{ip}/{prefix}");
        let mut args = vec!["addr", "add", &cidr, "dev", "ul0"];
        if ipv6 {
            args.push("nodad");
        }
        ns.ip(&args)?;
        ns.ip(&["link", "set", "ul0", "up"])?;
    }
    // The kernel completes its checksums instead of leaving them partial
    // for the veth peer, as a physical NIC would.
    b.run("ethtool", &["-K", "ul0", "tx", "off"])?;
    let vxlan = KernelVxlan {
        name: "vxlan0".into(),
        vni: VNI,
        udp_port: 4789,
        local: b_ip,
        underlay: "ul0".into(),
        mac: B_VTEP_MAC.into(),
        address: format!("{B_VTEP_ADDR}/32"),
        mtu: if ipv6 { 1430 } else { 1450 },
    };
    vxlan.create(&b)?;
    let a_mac = format_mac(A_VTEP_MAC);
    vxlan.add_peer(&b, "10.244.1.0/24", "10.244.1.0", &a_mac, a_ip)?;
    Ok(Testbed {
        _lab: lab,
        a,
        b,
        a_ip,
        b_ip,
    })
}

fn decapsulator(local: IpAddr) -> Decapsulator {
    Decapsulator::new(TunnelKind::Vxlan, local, Vni::new(VNI).unwrap())
}

/// The kernel encapsulates datagrams B sends to a pod on A; the library
/// decapsulates what A's underlay receives.
fn kernel_to_library(ipv6: bool) -> Result<()> {
    let tb = testbed(ipv6)?;
    let mut capture = RawLink::open(&tb.a, "ul0", Duration::from_millis(100))?;
    let payloads: Vec<Vec<u8>> = (0..5)
        .map(|i| format!("kernel datagram {i}").into_bytes())
        .collect();
    let sent = payloads.clone();
    tb.b.enter(move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        for p in &sent {
            socket.send_to(p, SocketAddr::from((A_POD, PORT)))?;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    })?;

    let decap = decapsulator(tb.a_ip);
    let frames = capture.collect(payloads.len(), Duration::from_secs(5), |f| {
        decap.decapsulate(f).is_ok()
    });
    ensure!(
        frames.len() == payloads.len(),
        "captured {} of {} VXLAN frames from the kernel",
        frames.len(),
        payloads.len()
    );
    for (frame, payload) in frames.iter().zip(&payloads) {
        let d = decap.decapsulate(frame).unwrap();
        assert_eq!(d.sender, tb.b_ip);
        assert_eq!(d.vni.get(), VNI);
        let inner = EthernetFrame::new_checked(&frame[d.inner]).unwrap();
        assert_eq!(inner.dst_addr(), EthernetAddress(A_VTEP_MAC));
        assert_eq!(format_mac(inner.src_addr().0), B_VTEP_MAC);
        assert_eq!(inner.ethertype(), EthernetProtocol::Ipv4);
        let ip = Ipv4Packet::new_checked(inner.payload()).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (B_VTEP_ADDR, A_POD));
        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(udp.dst_port(), PORT);
        assert_eq!(udp.payload(), &payload[..]);
    }
    Ok(())
}

/// An Ethernet + IPv4 + UDP frame from A's pod to B's VTEP address, every
/// checksum filled in.
fn inner_frame(payload: &[u8], src_port: u16) -> Vec<u8> {
    let udp = UdpRepr {
        src_port,
        dst_port: PORT,
    };
    let ip = Ipv4Repr {
        src_addr: A_POD,
        dst_addr: B_VTEP_ADDR,
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let mut frame = vec![0u8; 14 + ip.buffer_len() + ip.payload_len];
    EthernetRepr {
        src_addr: EthernetAddress(A_VTEP_MAC),
        dst_addr: B_VTEP_MAC.parse().unwrap(),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    let caps = ChecksumCapabilities::default();
    ip.emit(&mut Ipv4Packet::new_unchecked(&mut frame[14..]), &caps);
    udp.emit(
        &mut UdpPacket::new_unchecked(&mut frame[34..]),
        &A_POD.into(),
        &B_VTEP_ADDR.into(),
        payload.len(),
        |buf| buf.copy_from_slice(payload),
        &caps,
    );
    frame
}

/// The library encapsulates frames on A; B's kernel must deliver their
/// payloads to a socket. Over IPv6 the kernel verifies the outer UDP
/// checksum, so a corrupted one is sent first and must not arrive.
fn library_to_kernel(ipv6: bool) -> Result<()> {
    let tb = testbed(ipv6)?;
    let socket = tb.b.enter(|| {
        let s = UdpSocket::bind(SocketAddr::from((B_VTEP_ADDR, PORT)))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        Ok(s)
    })?;
    let template = OuterTemplate::new(&TunnelSpec {
        kind: TunnelKind::Vxlan,
        vni: Vni::new(VNI).unwrap(),
        udp_port: 4789,
        local_mac: EthernetAddress(tb.a.mac("ul0")?),
        next_hop_mac: EthernetAddress(tb.b.mac("ul0")?),
        vlan: None,
        local_ip: tb.a_ip,
        remote_ip: tb.b_ip,
        ttl: 64,
        geneve_options: &[],
        underlay_mtu: 1500,
    })?;
    let mut link = RawLink::open(&tb.a, "ul0", Duration::from_millis(100))?;
    let encapsulate = |payload: &[u8], src_port: u16| {
        let frame = inner_frame(payload, src_port);
        let mut buf = vec![0u8; 128];
        buf.extend_from_slice(&frame);
        let end = buf.len();
        let packet = template.encapsulate(&mut buf, 128..end).unwrap();
        buf[packet].to_vec()
    };

    if ipv6 {
        let mut corrupt = encapsulate(b"must be dropped", 40000);
        corrupt[14 + 40 + 6] ^= 0x55; // outer UDP checksum
        link.send(&corrupt)?;
        let mut buf = [0u8; 2048];
        ensure!(
            socket.recv_from(&mut buf).is_err(),
            "the kernel accepted a VXLAN packet with a corrupted IPv6 UDP checksum"
        );
    }

    for i in 0..3u16 {
        let payload = format!("library datagram {i}");
        link.send(&encapsulate(payload.as_bytes(), 40000 + i))?;
        let mut buf = [0u8; 2048];
        let (n, from) = socket
            .recv_from(&mut buf)
            .with_context(|| format!("B's kernel did not deliver datagram {i}"))?;
        assert_eq!(&buf[..n], payload.as_bytes());
        assert_eq!(from, SocketAddr::from((A_POD, 40000 + i)));
    }
    Ok(())
}

#[test]
fn kernel_vxlan_over_ipv4_decapsulates() -> Result<()> {
    kernel_to_library(false)
}

#[test]
fn kernel_vxlan_over_ipv6_decapsulates() -> Result<()> {
    kernel_to_library(true)
}

#[test]
fn kernel_delivers_library_vxlan_over_ipv4() -> Result<()> {
    library_to_kernel(false)
}

#[test]
fn kernel_delivers_library_vxlan_over_ipv6() -> Result<()> {
    library_to_kernel(true)
}
