//! The receiving end of a packet-rate test: a UDP socket in a pod that
//! drains its queue 64 datagrams per `recvmmsg` call and counts them, and
//! the pod interface's own counters, so a loss can be told apart: never
//! delivered to the pod, or delivered but overflowing the socket.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::socket::{setsockopt, sockopt};

use crate::netns::Netns;

/// Datagrams taken per `recvmmsg` call.
const BATCH: usize = 64;
/// Bytes read of each datagram (the rest is truncated away).
const SLOT: usize = 2048;
/// The socket's receive buffer: deep enough that the sink, not the
/// buffer, is what a burst meets.
const RECEIVE_BUFFER: usize = 8 << 20;
/// After `stop`, the sink keeps reading until this long passes without a
/// datagram: frames still in flight are counted too.
const DRAIN_QUIET: Duration = Duration::from_millis(200);

/// What a sink counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkResult {
    /// Datagrams received.
    pub packets: u64,
    /// Their payload bytes (up to the slot size each).
    pub bytes: u64,
}

/// A bound UDP socket in a namespace.
pub struct UdpSink {
    socket: UdpSocket,
}

impl UdpSink {
    /// Bind UDP `port` on every address of `ns`.
    pub fn bind(ns: &Netns, port: u16) -> Result<UdpSink> {
        let socket = ns.enter(move || {
            let socket = UdpSocket::bind(("0.0.0.0", port))
                .with_context(|| format!("binding UDP port {port}"))?;
            // Root may exceed net.core.rmem_max.
            setsockopt(&socket, sockopt::RcvBufForce, &RECEIVE_BUFFER).context("SO_RCVBUFFORCE")?;
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(socket)
        })?;
        Ok(UdpSink { socket })
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    /// Count datagrams until `stop` is set and the queue has been quiet
    /// for a moment, or `limit` passes.
    pub fn run(&self, stop: &AtomicBool, limit: Duration) -> Result<SinkResult> {
        let mut buffers = vec![[0u8; SLOT]; BATCH];
        let mut iovs: Vec<libc::iovec> = buffers
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: SLOT,
            })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .map(|iov| {
                // SAFETY: mmsghdr is plain old data; all zeroes is valid.
                let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
                header.msg_hdr.msg_iov = iov;
                header.msg_hdr.msg_iovlen = 1;
                header
            })
            .collect();
        let started = Instant::now();
        let mut last_packet = Instant::now();
        let mut result = SinkResult::default();
        while started.elapsed() < limit {
            if stop.load(Ordering::Relaxed) && last_packet.elapsed() >= DRAIN_QUIET {
                break;
            }
            // SAFETY: recvmmsg(2) on a socket we own; each header points
            // at its own iovec and buffer, all alive and unaliased across
            // the call; BATCH = headers.len(); no timeout pointer (the
            // socket's read timeout bounds the wait).
            let rc = unsafe {
                libc::recvmmsg(
                    self.socket.as_raw_fd(),
                    headers.as_mut_ptr(),
                    BATCH as libc::c_uint,
                    libc::MSG_WAITFORONE,
                    std::ptr::null_mut(),
                )
            };
            if rc > 0 {
                let n = rc as usize;
                result.packets += n as u64;
                result.bytes += headers[..n]
                    .iter()
                    .map(|h| u64::from(h.msg_len))
                    .sum::<u64>();
                last_packet = Instant::now();
                continue;
            }
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => {}
                _ => bail!("receiving datagrams: {error}"),
            }
        }
        Ok(result)
    }
}

/// The received-packet and drop counters of `ifname` in `ns`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Frames the interface received.
    pub rx_packets: u64,
    /// Frames the interface dropped on receipt.
    pub rx_dropped: u64,
    /// Frames the interface dropped on transmit.
    pub tx_dropped: u64,
}

impl LinkCounters {
    /// Read them from `ip -s -j link show`.
    pub fn read(ns: &Netns, ifname: &str) -> Result<LinkCounters> {
        let text = ns.ip(&["-s", "-j", "link", "show", ifname])?;
        parse_link_counters(&text).with_context(|| format!("counters of {ifname}"))
    }
}

/// The counters in `ip -s -j link show` output.
fn parse_link_counters(text: &str) -> Result<LinkCounters> {
    let json: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
    let stats = &json[0]["stats64"];
    let get = |dir: &str, field: &str| stats[dir][field].as_u64().unwrap_or(0);
    if stats.is_null() {
        bail!("no stats64 in {text}");
    }
    Ok(LinkCounters {
        rx_packets: get("rx", "packets"),
        rx_dropped: get("rx", "dropped"),
        tx_dropped: get("tx", "dropped"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_link_counters() {
        let text = r#"[{"ifindex":2,"ifname":"eth0","stats64":{"rx":{"bytes":100,"packets":7,"errors":0,"dropped":2},"tx":{"bytes":50,"packets":3,"errors":0,"dropped":1}}}]"#;
        assert_eq!(
            parse_link_counters(text).unwrap(),
            LinkCounters {
                rx_packets: 7,
                rx_dropped: 2,
                tx_dropped: 1
            }
        );
        assert!(parse_link_counters("[{}]").is_err());
        assert!(parse_link_counters("nope").is_err());
    }
}
