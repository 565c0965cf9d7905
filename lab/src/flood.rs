//! UDP packet generators fast enough to saturate a pod path: one
//! hand-built Ethernet + IPv4 + UDP frame sent over and over through an
//! AF_PACKET socket, 64 frames per `sendmmsg` call, past the qdisc
//! (`PACKET_QDISC_BYPASS`) — the way netsniff-ng's trafgen sends, without
//! its configuration language — and, as an application floods, a UDP
//! socket sending a fixed number of datagrams 64 per `sendmmsg` call,
//! through the qdisc, blocking when the path pushes back. iperf3's UDP
//! sender stalls near 100 k packets per second here; these send several
//! times that from one CPU.

use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use serde::Serialize;

use crate::host::on_cpu;
use crate::netns::Netns;
use crate::udp_sink::{LinkCounters, UdpSink};

/// Bytes of Ethernet, IPv4 and UDP headers in front of the payload.
pub const UDP_HEADERS: usize = 14 + 20 + 8;

/// Frames handed to the kernel per `sendmmsg` call.
const BATCH: usize = 64;

/// One UDP flow between two pods, as raw frames carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFlow {
    /// The sending interface's MAC.
    pub src_mac: [u8; 6],
    /// The next hop's MAC (the pod's gateway, or the peer on a flat
    /// network).
    pub dst_mac: [u8; 6],
    /// Source address and port.
    pub src: SocketAddrV4,
    /// Destination address and port.
    pub dst: SocketAddrV4,
}

/// A frame of `len` bytes (Ethernet header to the end of the UDP payload,
/// no FCS) carrying `flow`: TTL 64, DF set, a valid IPv4 header checksum,
/// no UDP checksum (zero, as IPv4 allows), a zero payload.
pub fn udp_frame(flow: &UdpFlow, len: usize) -> Result<Vec<u8>> {
    ensure!(
        (UDP_HEADERS..=9000).contains(&len),
        "a UDP frame of {len} bytes: it must be {UDP_HEADERS} to 9000"
    );
    let mut frame = vec![0u8; len];
    frame[0..6].copy_from_slice(&flow.dst_mac);
    frame[6..12].copy_from_slice(&flow.src_mac);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (len - 14) as u16;
    let ip = &mut frame[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&flow.src.ip().octets());
    ip[16..20].copy_from_slice(&flow.dst.ip().octets());
    let checksum = internet_checksum(ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    let udp = &mut frame[34..42];
    udp[0..2].copy_from_slice(&flow.src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&flow.dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    Ok(frame)
}

/// `frame` (Ethernet, then an IPv4 header at 14 without options, at least
/// 34 bytes) with `options` (a multiple of 4 bytes, at most 40) after its
/// IPv4 header: IHL, Total Length and header checksum made whole again. A
/// UDP or TCP checksum stays valid: its pseudo-header does not change.
pub fn with_ipv4_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    let mut out = [&frame[..34], options, &frame[34..]].concat();
    out[14] = 0x40 | (5 + options.len() / 4) as u8;
    let total = u16::from_be_bytes([out[16], out[17]]) + options.len() as u16;
    out[16..18].copy_from_slice(&total.to_be_bytes());
    out[24..26].fill(0);
    let checksum = internet_checksum(&out[14..34 + options.len()]);
    out[24..26].copy_from_slice(&checksum.to_be_bytes());
    out
}

/// The Internet checksum (RFC 1071) of `bytes`: of an IPv4 header whose
/// checksum field is zero, it is that field's value.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What a flood sent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FloodResult {
    /// Frames the kernel accepted.
    pub sent: u64,
    /// Frames the sending interface refused (its queue or its peer's ring
    /// was full): offered, never carried.
    pub refused: u64,
    /// How long the flood ran.
    pub elapsed: Duration,
}

impl FloodResult {
    /// Frames offered (sent and refused).
    pub fn offered(&self) -> u64 {
        self.sent + self.refused
    }
}

/// An AF_PACKET socket bound to one interface of a namespace, sending one
/// frame over and over.
pub struct Flood {
    socket: OwnedFd,
    frame: Vec<u8>,
}

impl Flood {
    /// Open a sending socket on `ifname` in `ns` for `frame`.
    pub fn open(ns: &Netns, ifname: &str, frame: Vec<u8>) -> Result<Flood> {
        let ifname = ifname.to_string();
        let socket = ns.enter(move || {
            // Protocol 0: the socket receives nothing, it only sends.
            let socket = socket(
                AddressFamily::Packet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                None,
            )
            .context("opening an AF_PACKET socket")?;
            let ifindex = nix::net::if_::if_nametoindex(ifname.as_str())
                .with_context(|| format!("no interface {ifname}"))?;
            let bypass: libc::c_int = 1;
            // SAFETY: setsockopt(2) on a socket we own, reading a c_int
            // that lives across the call, with its size.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_QDISC_BYPASS,
                    (&bypass as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
            }
            // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
            let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_ifindex = ifindex as i32;
            // SAFETY: bind(2) on a socket we own with a sockaddr_ll that
            // lives across the call, and its size.
            let rc = unsafe {
                libc::bind(
                    socket.as_raw_fd(),
                    (&address as *const libc::sockaddr_ll).cast(),
                    size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("binding to {ifname}"));
            }
            Ok(socket)
        })?;
        Ok(Flood { socket, frame })
    }

    /// Send the frame as fast as the kernel takes it, until `duration`
    /// has passed or `max_frames` were offered, whichever comes first.
    pub fn run(&self, duration: Duration, max_frames: u64) -> Result<FloodResult> {
        let mut batch = Batch::new(&self.frame);
        let started = Instant::now();
        let mut result = FloodResult::default();
        while result.offered() < max_frames {
            // The clock is read once per batch: a batch takes tens of µs.
            if started.elapsed() >= duration {
                break;
            }
            let want = BATCH.min((max_frames - result.offered()) as usize);
            match batch.send(&self.socket, want) {
                Ok(sent) => {
                    result.sent += sent as u64;
                    // A short count means the next frame was refused.
                    if sent < want {
                        result.refused += 1;
                    }
                }
                Err(error) => match error.raw_os_error() {
                    Some(libc::ENOBUFS | libc::EAGAIN) => result.refused += 1,
                    Some(libc::EINTR) => {}
                    _ => bail!("sending frames: {error}"),
                },
            }
        }
        result.elapsed = started.elapsed();
        Ok(result)
    }
}

/// What a [`UdpSocketFlood`] sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SocketFloodResult {
    /// Datagrams the kernel took from the socket.
    pub sent: u64,
    /// Sends the kernel refused with `ENOBUFS` (a device queue dropped the
    /// datagram and said so; retried).
    pub refused: u64,
}

/// A connected UDP socket in a namespace, sending one datagram over and
/// over like an application that sends as fast as it may: blocking, so a
/// path that pushes back (a full queue, a full send buffer) slows it down.
pub struct UdpSocketFlood {
    socket: std::net::UdpSocket,
    payload: Vec<u8>,
}

impl UdpSocketFlood {
    /// A socket in `ns` from `from` to `to`, sending `payload_len`-byte
    /// datagrams.
    pub fn open(
        ns: &Netns,
        from: SocketAddrV4,
        to: SocketAddrV4,
        payload_len: usize,
    ) -> Result<UdpSocketFlood> {
        let socket = ns.enter(move || {
            let socket =
                std::net::UdpSocket::bind(from).with_context(|| format!("binding {from}"))?;
            socket
                .connect(to)
                .with_context(|| format!("connecting to {to}"))?;
            Ok(socket)
        })?;
        Ok(UdpSocketFlood {
            socket,
            payload: vec![0; payload_len],
        })
    }

    /// Send `count` datagrams, 64 per `sendmmsg` call, as fast as the
    /// kernel takes them (a refused batch is retried from where it
    /// stopped).
    pub fn run(&self, count: u64) -> Result<SocketFloodResult> {
        let mut batch = Batch::new(&self.payload);
        let mut result = SocketFloodResult::default();
        while result.sent < count {
            let want = BATCH.min((count - result.sent) as usize);
            match batch.send(&self.socket, want) {
                Ok(sent) => result.sent += sent as u64,
                Err(error) => match error.raw_os_error() {
                    Some(libc::ENOBUFS) => result.refused += 1,
                    Some(libc::EINTR | libc::EAGAIN) => {}
                    _ => bail!("sending datagrams: {error}"),
                },
            }
        }
        Ok(result)
    }
}

/// One end of a [`socket_flood`]: a pod's namespace, its interface and the
/// socket address it sends from or receives on.
#[derive(Clone, Copy)]
pub struct FloodEnd<'a> {
    /// The pod's namespace.
    pub ns: &'a Netns,
    /// Its interface (where the receiving end's frames are counted).
    pub ifname: &'a str,
    /// Its address and port.
    pub address: SocketAddrV4,
    /// The CPU its thread runs on.
    pub cpu: usize,
}

/// What a [`socket_flood`] did: sent by the application, seen by the
/// receiving pod's interface, read by its application. Serialized flat:
/// `sent`, `refused`, `delivered`, `app`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SocketFloodOutcome {
    /// What the sender handed the kernel.
    #[serde(flatten)]
    pub sent: SocketFloodResult,
    /// Frames the receiving pod's interface received.
    pub delivered: u64,
    /// Datagrams its socket handed the application.
    pub app: u64,
}

impl SocketFloodOutcome {
    /// Sent and never delivered to the receiving pod.
    pub fn lost(&self) -> u64 {
        self.sent.sent.saturating_sub(self.delivered)
    }

    /// [`SocketFloodOutcome::lost`] as a percentage of what was sent.
    pub fn lost_pct(&self) -> f64 {
        100.0 * self.lost() as f64 / self.sent.sent.max(1) as f64
    }
}

impl std::fmt::Display for SocketFloodOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sent ({} refused and sent again), {} delivered to the pod, {} to its \
             application, {} lost ({:.1} %)",
            self.sent.sent,
            self.sent.refused,
            self.delivered,
            self.app,
            self.lost(),
            self.lost_pct()
        )
    }
}

/// An application's UDP flood: `count` datagrams of `payload` bytes from
/// `from` to `to` through a blocking socket ([`UdpSocketFlood`]), counted
/// at the receiving pod's interface and by a sink on its port. Bounded by
/// the count (a blocking UDP send waits only for its queue to drain) and
/// the sink's 120 s.
pub fn socket_flood(
    from: FloodEnd<'_>,
    to: FloodEnd<'_>,
    payload: usize,
    count: u64,
) -> Result<SocketFloodOutcome> {
    let sink = UdpSink::bind(to.ns, to.address.port())?;
    let sender = UdpSocketFlood::open(from.ns, from.address, to.address, payload)?;
    let before = LinkCounters::read(to.ns, to.ifname)?;
    let stop = AtomicBool::new(false);
    let (sent, received) = std::thread::scope(|scope| {
        let receiver = scope.spawn(|| on_cpu(to.cpu, || sink.run(&stop, Duration::from_secs(120))));
        let sent = on_cpu(from.cpu, || sender.run(count));
        stop.store(true, Ordering::Relaxed);
        let received = receiver
            .join()
            .unwrap_or_else(|_| bail!("the sink thread panicked"));
        Ok::<_, anyhow::Error>((sent?, received?))
    })?;
    let after = LinkCounters::read(to.ns, to.ifname)?;
    Ok(SocketFloodOutcome {
        sent,
        delivered: after.rx_packets.saturating_sub(before.rx_packets),
        app: received.packets,
    })
}

/// The same bytes [`BATCH`] times over, as `sendmmsg` takes them.
struct Batch<'a> {
    /// Where every header points; boxed, so its address stays put.
    _iov: Box<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    _bytes: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> Batch<'a> {
    fn new(bytes: &'a [u8]) -> Batch<'a> {
        let mut iov = Box::new(libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        });
        // SAFETY: mmsghdr is plain old data; all zeroes is valid.
        let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
        header.msg_hdr.msg_iov = &mut *iov;
        header.msg_hdr.msg_iovlen = 1;
        Batch {
            _iov: iov,
            headers: vec![header; BATCH],
            _bytes: std::marker::PhantomData,
        }
    }

    /// Send the bytes `want` (at most [`BATCH`]) times on `socket` in one
    /// `sendmmsg` call: how many the kernel took, or its error.
    fn send(&mut self, socket: &impl AsRawFd, want: usize) -> std::io::Result<usize> {
        let want = want.min(BATCH);
        // SAFETY: sendmmsg(2) on an open socket; every header points at
        // the boxed iovec, which points at the borrowed bytes, all alive
        // across the call and only read by the kernel; `want` ≤
        // headers.len().
        let rc = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                want as libc::c_uint,
                0,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(rc as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn flow() -> UdpFlow {
        UdpFlow {
            src_mac: [0x0a, 0x58, 10, 244, 1, 2],
            dst_mac: [0x0a, 0x70, 10, 1, 0, 11],
            src: SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, 2), 40000),
            dst: SocketAddrV4::new(Ipv4Addr::new(10, 244, 2, 2), 9000),
        }
    }

    #[test]
    fn builds_a_valid_frame() {
        let frame = udp_frame(&flow(), 60).unwrap();
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[0..6], &[0x0a, 0x70, 10, 1, 0, 11]);
        assert_eq!(&frame[6..12], &[0x0a, 0x58, 10, 244, 1, 2]);
        assert_eq!(&frame[12..14], &[0x08, 0x00]);
        // IPv4: total length 46, UDP, addresses, and a checksum that sums
        // the header to 0xffff.
        assert_eq!(u16::from_be_bytes([frame[16], frame[17]]), 46);
        assert_eq!(frame[23], 17);
        assert_eq!(&frame[26..30], &[10, 244, 1, 2]);
        assert_eq!(&frame[30..34], &[10, 244, 2, 2]);
        assert_eq!(internet_checksum(&frame[14..34]), 0);
        // UDP: ports and length 26 (8 + 18 bytes of payload).
        assert_eq!(u16::from_be_bytes([frame[34], frame[35]]), 40000);
        assert_eq!(u16::from_be_bytes([frame[36], frame[37]]), 9000);
        assert_eq!(u16::from_be_bytes([frame[38], frame[39]]), 26);
    }

    #[test]
    fn checksum_matches_a_known_header() {
        // The example header of RFC 1071's worked examples (Wikipedia's
        // "IPv4 header checksum"): checksum 0xb861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&header), 0xb861);
    }

    #[test]
    fn refuses_impossible_sizes() {
        assert!(udp_frame(&flow(), 41).is_err());
        assert!(udp_frame(&flow(), 9001).is_err());
        assert_eq!(udp_frame(&flow(), 42).unwrap().len(), 42);
    }
}
