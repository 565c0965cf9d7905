//! The tunnel port's fallback where TAP devices lack UDP tunnel GSO
//! (Linux before 6.17): a UDP socket of the node's with `UDP_SEGMENT`
//! (Linux 4.18+).
//!
//! The switch still cuts a TAP pod's TCP super-frame into segments (the
//! kernel cannot cut the inner frames without the tunnel offload), but
//! writes them, each behind its tunnel header, into one contiguous buffer
//! of equal-sized datagrams and hands the whole buffer to the kernel with
//! one `sendmsg`: the kernel makes one packet of 64 KB and cuts it into
//! datagrams (outer IP and UDP headers and checksums) in software, or a
//! NIC with UDP segmentation offload in hardware. That replaces 45
//! AF_XDP sends, one frame each, with one system call per super-frame.
//!
//! The outer UDP source port is a socket's: each worker has
//! [`SOURCE_PORTS`] sockets and sends a packet through the one the inner
//! flow's hash picks (the hash the encapsulation put in the outer source
//! port), so a flow keeps one port — no reordering — and a receiver's RSS
//! still spreads flows over its queues.

use std::io::{self, IoSlice};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg, setsockopt, sockopt};
use podswitch_encap::TunnelKind;
use podswitch_encap::segment::{TcpSegments, complete_checksum};
use podswitch_encap::virtio_net::{Checksum, GsoKind, TunnelOffload};

/// The most bytes one UDP datagram (before the kernel cuts it) may carry
/// over IPv4; over IPv6 the limit is a little higher, this one is kept.
const MAX_UDP_PAYLOAD: usize = 65_507;
/// The most segments Linux cuts one `UDP_SEGMENT` send into
/// (`UDP_MAX_SEGMENTS` before Linux 6.7; 128 since).
const MAX_UDP_SEGMENTS: usize = 64;
/// The send buffer the socket asks for: several 64 KB super-frames in
/// flight, so that a burst from a pod is queued, not refused.
const SEND_BUFFER: usize = 8 << 20;
/// Sockets (outer source ports) per worker.
pub const SOURCE_PORTS: usize = 16;
/// Length of the outer Ethernet header the encapsulation writes (and the
/// socket does not send).
const ETHERNET_LEN: usize = 14;
const UDP_HEADER_LEN: usize = 8;

/// Why a packet was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The packet's outer headers or its super-frame could not be read.
    #[error("malformed tunnel packet")]
    Malformed,
    /// The socket refused it (a full send buffer, no route).
    #[error("sending to the peer: {0}")]
    Io(#[from] io::Error),
}

/// One worker's UDP sockets for tunnel packets, non-blocking.
#[derive(Debug)]
pub struct TunnelSocket {
    sockets: Vec<UdpSocket>,
    tunnel: TunnelKind,
    /// Where a super-frame's datagrams are laid out before the send.
    scratch: Vec<u8>,
}

impl TunnelSocket {
    /// [`SOURCE_PORTS`] sockets on `node_ip` (any ports) for `tunnel`
    /// packets. Fails where the kernel has no `UDP_SEGMENT`.
    pub fn open(node_ip: IpAddr, tunnel: TunnelKind) -> io::Result<TunnelSocket> {
        let sockets = (0..SOURCE_PORTS)
            .map(|_| open_socket(node_ip))
            .collect::<io::Result<_>>()?;
        Ok(TunnelSocket {
            sockets,
            tunnel,
            scratch: Vec::with_capacity(2 * MAX_UDP_PAYLOAD),
        })
    }

    /// The ports the sockets send from (the outer UDP source ports).
    pub fn local_ports(&self) -> io::Result<Vec<u16>> {
        self.sockets
            .iter()
            .map(|socket| Ok(socket.local_addr()?.port()))
            .collect()
    }

    /// Send one encapsulated packet as the pipeline made it for the tunnel
    /// port (outer Ethernet, IP, UDP and tunnel headers, then the inner
    /// frame; `header` says how to finish it): a super-frame cut into
    /// segments sent with `UDP_SEGMENT`, any other packet as one datagram,
    /// its partial inner checksum completed first. Returns how many
    /// datagrams went out.
    pub fn send(&mut self, header: &TunnelOffload, packet: &mut [u8]) -> Result<usize, SendError> {
        let outer = Outer::parse(packet, self.tunnel).ok_or(SendError::Malformed)?;
        match header.offload.gso {
            Some(gso) if gso.kind == GsoKind::TcpV4 => {
                self.send_segments(&outer, &packet[..], gso.size)
            }
            Some(_) => Err(SendError::Malformed),
            None => {
                if let Checksum::Partial { start, offset } = header.offload.checksum {
                    let start = usize::from(start);
                    // A partial checksum before the inner frame is the
                    // outer UDP one's, which the socket computes.
                    if start >= outer.inner {
                        complete_checksum(packet, start, usize::from(offset))
                            .map_err(|_| SendError::Malformed)?;
                    }
                }
                self.socket_for(&outer)
                    .send_to(&packet[outer.payload..], outer.peer)?;
                Ok(1)
            }
        }
    }

    /// The socket a packet's flow sends through: picked by the flow hash
    /// the encapsulation wrote as the outer source port.
    fn socket_for(&self, outer: &Outer) -> &UdpSocket {
        &self.sockets[usize::from(outer.source_port) % self.sockets.len()]
    }

    /// Cut the super-frame after the tunnel header into segments of `mss`
    /// payload bytes, each behind a copy of the tunnel header, and send
    /// them in as few `UDP_SEGMENT` sends as the kernel's limits allow.
    fn send_segments(
        &mut self,
        outer: &Outer,
        packet: &[u8],
        mss: u16,
    ) -> Result<usize, SendError> {
        let tunnel_header = &packet[outer.payload..outer.inner];
        let segments =
            TcpSegments::new(&packet[outer.inner..], mss).map_err(|_| SendError::Malformed)?;
        let datagram_len = tunnel_header.len() + segments.max_segment_len();
        let per_send = (MAX_UDP_PAYLOAD / datagram_len).clamp(1, MAX_UDP_SEGMENTS);
        let mut sent = 0;
        while sent < segments.count() {
            let batch = sent..(sent + per_send).min(segments.count());
            self.scratch.clear();
            for i in batch.clone() {
                let start = self.scratch.len();
                let len = tunnel_header.len() + segments.segment_len(i);
                self.scratch.resize(start + len, 0);
                self.scratch[start..start + tunnel_header.len()].copy_from_slice(tunnel_header);
                segments
                    .write(i, &mut self.scratch[start + tunnel_header.len()..])
                    .ok_or(SendError::Malformed)?;
            }
            self.send_datagrams(
                self.socket_for(outer),
                outer.peer,
                datagram_len,
                batch.len(),
            )?;
            sent = batch.end;
        }
        Ok(sent)
    }

    /// Send the scratch buffer to `peer` as datagrams of `datagram_len`
    /// bytes (the last one shorter); a lone datagram without the option.
    fn send_datagrams(
        &self,
        socket: &UdpSocket,
        peer: SocketAddr,
        datagram_len: usize,
        count: usize,
    ) -> Result<(), SendError> {
        let to = SockaddrStorage::from(peer);
        let payload = [IoSlice::new(&self.scratch)];
        let segment_size = u16::try_from(datagram_len).map_err(|_| SendError::Malformed)?;
        let segmented = [ControlMessage::UdpGsoSegments(&segment_size)];
        let control: &[ControlMessage] = if count > 1 { &segmented } else { &[] };
        sendmsg(
            socket.as_raw_fd(),
            &payload,
            control,
            MsgFlags::empty(),
            Some(&to),
        )
        .map_err(io::Error::from)?;
        Ok(())
    }
}

/// One non-blocking UDP socket on `node_ip`, any port, that never
/// fragments, with `UDP_SEGMENT` checked and a large send buffer.
fn open_socket(node_ip: IpAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(node_ip, 0))?;
    socket.set_nonblocking(true)?;
    forbid_fragmentation(&socket, node_ip.is_ipv6())?;
    // Where the kernel has no UDP_SEGMENT this is refused: the caller
    // falls back to cutting on the uplink.
    setsockopt(&socket, sockopt::UdpGsoSegment, &1400).map_err(io::Error::from)?;
    setsockopt(&socket, sockopt::UdpGsoSegment, &0).map_err(io::Error::from)?;
    // As root the send buffer may pass `wmem_max`; without that right the
    // kernel's default stays, and a full buffer is a counted drop.
    if setsockopt(&socket, sockopt::SndBufForce, &SEND_BUFFER).is_err() {
        let _ = setsockopt(&socket, sockopt::SndBuf, &SEND_BUFFER);
    }
    Ok(socket)
}

/// Never fragment what the socket sends (DF on every IPv4 datagram, as the
/// encapsulation's own outer header has it): the segments are cut to the
/// underlay MTU, and a datagram past a smaller path MTU is refused, not
/// fragmented for the peer to reassemble.
fn forbid_fragmentation(socket: &UdpSocket, ipv6: bool) -> io::Result<()> {
    let (level, name, value) = if ipv6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DO,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        )
    };
    // SAFETY: setsockopt reads a c_int of the length given from a pointer
    // valid for the call, on a descriptor the socket keeps open.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where a tunnel packet goes and where its parts start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outer {
    /// The peer's address and tunnel port: the outer destination.
    peer: SocketAddr,
    /// The outer source port the encapsulation wrote: the inner flow's
    /// hash.
    source_port: u16,
    /// Where the UDP payload (the tunnel header) starts.
    payload: usize,
    /// Where the inner frame starts.
    inner: usize,
}

impl Outer {
    /// Read the outer headers the encapsulation wrote: Ethernet, IPv4
    /// (with options) or IPv6 (no extension headers), UDP, the tunnel's.
    fn parse(packet: &[u8], tunnel: TunnelKind) -> Option<Outer> {
        let ip = packet.get(ETHERNET_LEN..)?;
        let (address, ip_len): (IpAddr, usize) = match ip.first()? >> 4 {
            4 => {
                let octets: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
                (Ipv4Addr::from(octets).into(), usize::from(ip[0] & 0x0f) * 4)
            }
            6 => {
                let octets: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
                (Ipv6Addr::from(octets).into(), 40)
            }
            _ => return None,
        };
        let udp = ETHERNET_LEN + ip_len;
        let source_port = u16::from_be_bytes(packet.get(udp..udp + 2)?.try_into().ok()?);
        let port = u16::from_be_bytes(packet.get(udp + 2..udp + 4)?.try_into().ok()?);
        let payload = udp + UDP_HEADER_LEN;
        let inner = payload + tunnel.header_len(packet.get(payload..)?)?;
        (inner <= packet.len()).then_some(Outer {
            peer: SocketAddr::new(address, port),
            source_port,
            payload,
            inner,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use etherparse::PacketBuilder;
    use podswitch_encap::checksum::{combine, ipv4_pseudo_header, sum};
    use podswitch_encap::virtio_net::{Gso, Offload};
    use podswitch_encap::{OuterTemplate, TunnelSpec, Vni};
    use smoltcp::wire::EthernetAddress;

    use super::*;

    /// A receiving "peer" on loopback and a tunnel socket sending to it.
    fn peer_and_socket() -> (UdpSocket, TunnelSocket) {
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let socket = TunnelSocket::open(Ipv4Addr::LOCALHOST.into(), TunnelKind::Vxlan).unwrap();
        (peer, socket)
    }

    /// `frame` encapsulated for `peer` as the pipeline queues it for the
    /// tunnel port.
    fn encapsulated(frame: &[u8], offload: &Offload, peer: &UdpSocket) -> (Vec<u8>, TunnelOffload) {
        let template = OuterTemplate::new(&TunnelSpec {
            kind: TunnelKind::Vxlan,
            vni: Vni::new(7).unwrap(),
            udp_port: peer.local_addr().unwrap().port(),
            local_mac: EthernetAddress([2, 0, 0, 0, 0, 1]),
            next_hop_mac: EthernetAddress([2, 0, 0, 0, 0, 2]),
            vlan: None,
            local_ip: Ipv4Addr::LOCALHOST.into(),
            remote_ip: Ipv4Addr::LOCALHOST.into(),
            ttl: 64,
            geneve_options: &[],
            underlay_mtu: 1500,
        })
        .unwrap();
        let mut buf = vec![0u8; 256 + frame.len()];
        buf[256..].copy_from_slice(frame);
        let (range, header) = template
            .encapsulate_offloaded(&mut buf, 256..256 + frame.len(), offload)
            .unwrap();
        (buf[range].to_vec(), header)
    }

    fn tcp_frame(payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 4])
            .ipv4([10, 244, 1, 2], [10, 244, 2, 2], 64)
            .tcp(40000, 5201, 1000, 500)
            .ack(1)
            .write(&mut bytes, payload)
            .unwrap();
        bytes
    }

    /// Whether the TCP/IPv4 frame's TCP checksum is right.
    fn tcp_checksum_ok(frame: &[u8]) -> bool {
        let ip = &frame[14..];
        let tcp = &ip[20..];
        let pseudo = ipv4_pseudo_header(
            ip[12..16].try_into().unwrap(),
            ip[16..20].try_into().unwrap(),
            6,
            tcp.len() as u16,
        );
        combine(&[pseudo, sum(tcp)]) == 0xffff
    }

    #[test]
    fn a_super_frame_leaves_as_datagrams_of_one_segment_each() {
        let (peer, mut socket) = peer_and_socket();
        let payload: Vec<u8> = (0..3000).map(|i| i as u8).collect();
        let offload = Offload {
            checksum: Checksum::Complete,
            gso: Some(Gso {
                kind: GsoKind::TcpV4,
                ecn: false,
                size: 1000,
                hdr_len: 54,
            }),
        };
        let (mut packet, header) = encapsulated(&tcp_frame(&payload), &offload, &peer);
        assert_eq!(socket.send(&header, &mut packet).unwrap(), 3);
        let mut received = Vec::new();
        let mut buf = [0u8; 2048];
        let mut ports = std::collections::BTreeSet::new();
        for i in 0..3 {
            let (n, from) = peer.recv_from(&mut buf).unwrap();
            assert!(socket.local_ports().unwrap().contains(&from.port()));
            ports.insert(from.port());
            let datagram = &buf[..n];
            // The VXLAN header (VNI 7), then one segment of 1000 bytes.
            assert_eq!(&datagram[..8], &[0x08, 0, 0, 0, 0, 0, 7, 0]);
            let frame = &datagram[8..];
            assert_eq!(frame.len(), 54 + 1000, "segment {i}");
            assert!(tcp_checksum_ok(frame), "segment {i}");
            let seq = u32::from_be_bytes(frame[38..42].try_into().unwrap());
            assert_eq!(seq, 1000 + 1000 * i);
            received.extend_from_slice(&frame[54..]);
        }
        assert_eq!(received, payload);
        // One flow, one source port: its datagrams are never reordered
        // across sockets.
        assert_eq!(ports.len(), 1);
    }

    #[test]
    fn a_plain_frame_gets_its_partial_checksum_completed() {
        let (peer, mut socket) = peer_and_socket();
        let mut frame = tcp_frame(b"hello");
        // As a pod's TAP hands it over: the field holds the pseudo-header sum.
        let pseudo = ipv4_pseudo_header([10, 244, 1, 2], [10, 244, 2, 2], 6, 25);
        frame[50..52].copy_from_slice(&pseudo.to_be_bytes());
        let offload = Offload {
            checksum: Checksum::Partial {
                start: 34,
                offset: 16,
            },
            gso: None,
        };
        let (mut packet, header) = encapsulated(&frame, &offload, &peer);
        assert_eq!(socket.send(&header, &mut packet).unwrap(), 1);
        let mut buf = [0u8; 2048];
        let n = peer.recv(&mut buf).unwrap();
        assert_eq!(n, 8 + frame.len());
        assert!(tcp_checksum_ok(&buf[8..n]));
    }

    #[test]
    fn a_packet_without_readable_outer_headers_is_refused() {
        let (_peer, mut socket) = peer_and_socket();
        let header = TunnelOffload {
            offload: Offload::NONE,
            tunnel: None,
        };
        for mut packet in [vec![], vec![0u8; 20], vec![0x55; 100]] {
            assert!(matches!(
                socket.send(&header, &mut packet),
                Err(SendError::Malformed)
            ));
        }
    }
}
