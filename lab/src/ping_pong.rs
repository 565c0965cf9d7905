//! Round-trip latency between two pods: a UDP echo server in one pod and
//! a client in another that sends one small request at a time, waits for
//! its answer and times it. A request whose answer does not come within
//! the timeout is counted lost; a late answer to an earlier request is
//! ignored.

use std::net::{SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::host::pin_current_thread;
use crate::netns::Netns;

/// Bytes of each request and answer (UDP payload).
pub const REQUEST_BYTES: usize = 32;

/// A UDP echo server on a thread of its own, pinned to a CPU; stopped and
/// joined when dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<u64>>>,
}

impl EchoServer {
    /// Answer every datagram to UDP `port` in `ns` with itself, from a
    /// thread pinned to `cpu`.
    pub fn start(ns: &Netns, port: u16, cpu: usize) -> Result<EchoServer> {
        let socket = ns.enter(move || {
            let socket = UdpSocket::bind(("0.0.0.0", port))
                .with_context(|| format!("binding UDP port {port}"))?;
            socket.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(socket)
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("echo".into())
            .spawn(move || echo(&socket, cpu, &flag))
            .context("starting the echo thread")?;
        Ok(EchoServer {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop the server; how many answers it sent.
    pub fn stop(mut self) -> Result<u64> {
        self.finish()
    }

    fn finish(&mut self) -> Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| bail!("the echo thread panicked")),
            None => Ok(0),
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// The echo loop: answer until `stop`; how many answers were sent.
fn echo(socket: &UdpSocket, cpu: usize, stop: &AtomicBool) -> Result<u64> {
    pin_current_thread(cpu)?;
    let mut buffer = [0u8; 2048];
    let mut answered = 0;
    while !stop.load(Ordering::Relaxed) {
        match socket.recv_from(&mut buffer) {
            Ok((n, from)) => {
                socket.send_to(&buffer[..n], from)?;
                answered += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("echo server"),
        }
    }
    Ok(answered)
}

/// How a client runs.
#[derive(Debug, Clone, Copy)]
pub struct PingPong {
    /// Requests to send at most.
    pub count: u64,
    /// Stop sending after this long, whatever the count.
    pub limit: Duration,
    /// Pause between an answer and the next request, so an idle switch
    /// has time to fall asleep, as between a service's requests.
    pub pause: Duration,
    /// A request unanswered for this long is lost.
    pub timeout: Duration,
}

/// What a client measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundTrips {
    /// Each answered request's round trip, nanoseconds, in order.
    pub rtts_ns: Vec<u64>,
    /// Requests never answered within the timeout.
    pub lost: u64,
}

impl PingPong {
    /// Send requests from `ns` to `server` on the calling thread, one at
    /// a time, until the count or the time limit.
    pub fn run(&self, ns: &Netns, server: SocketAddrV4) -> Result<RoundTrips> {
        let socket = ns.enter(move || {
            let socket = UdpSocket::bind(("0.0.0.0", 0)).context("binding a UDP socket")?;
            socket
                .connect(server)
                .with_context(|| format!("connecting to {server}"))?;
            Ok(socket)
        })?;
        let mut result = RoundTrips::default();
        let mut request = [0u8; REQUEST_BYTES];
        let mut answer = [0u8; 2048];
        let started = Instant::now();
        for seq in 0..self.count {
            if started.elapsed() >= self.limit {
                break;
            }
            request[..8].copy_from_slice(&seq.to_be_bytes());
            let sent = Instant::now();
            socket.send(&request).context("sending a request")?;
            let deadline = sent + self.timeout;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    result.lost += 1;
                    break;
                }
                socket.set_read_timeout(Some(left))?;
                match socket.recv(&mut answer) {
                    Ok(n) if n >= 8 && answer[..8] == request[..8] => {
                        result.rtts_ns.push(sent.elapsed().as_nanos() as u64);
                        break;
                    }
                    // An answer to an earlier, timed-out request.
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    // ICMP unreachable (the server not up yet): count as lost.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(e).context("receiving an answer"),
                }
            }
            if !self.pause.is_zero() {
                std::thread::sleep(self.pause);
            }
        }
        Ok(result)
    }
}
