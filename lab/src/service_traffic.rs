//! Service traffic in the lab: an endpoint server that names itself and
//! the client address it sees, and a client that makes one request as a
//! client library does, over IPv4 or IPv6. Used by the kube-proxy Service
//! tests (`cni/tests/services.rs`, `cni/tests/dual_stack.rs`) and the
//! switch's own translation's (`switch/tests/services.rs`).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::Pod;
use crate::netns::Netns;
use crate::process::Process;

/// The endpoints' TCP port (answers "<endpoint> <client as seen>").
pub const TCP_PORT: u16 = 8080;
/// The endpoints' TCP echo port (round trips).
pub const ECHO_PORT: u16 = 8081;
/// The endpoints' UDP "DNS" port (answers as the TCP port does, padded
/// to the request's size: a large request gets a large answer).
pub const UDP_PORT: u16 = 5353;

/// Each endpoint pod runs this: TCP and UDP answers naming the endpoint
/// and the client address it sees, and a TCP echo; on the family of its
/// name (argument 1, an IPv4 or IPv6 address).
pub const SERVER: &str = r#"
import socket, sys, threading
me = sys.argv[1]
family, anywhere = (socket.AF_INET6, "::") if ":" in me else (socket.AF_INET, "0.0.0.0")
def listening(port):
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((anywhere, port))
    s.listen(64)
    return s
def answer():
    s = listening(8080)
    while True:
        c, a = s.accept()
        c.sendall(f"{me} {a[0]}\n".encode())
        c.close()
def echo_one(c):
    while True:
        d = c.recv(4096)
        if not d:
            break
        c.sendall(d)
    c.close()
def echo():
    s = listening(8081)
    while True:
        c, _ = s.accept()
        threading.Thread(target=echo_one, args=(c,), daemon=True).start()
def dns():
    u = socket.socket(family, socket.SOCK_DGRAM)
    u.bind((anywhere, 5353))
    while True:
        d, a = u.recvfrom(65535)
        u.sendto(f"{me} {a[0]}\n".encode().ljust(len(d)), a)
threading.Thread(target=dns, daemon=True).start()
threading.Thread(target=echo, daemon=True).start()
answer()
"#;

/// One request to a Service, as a client library makes it: a TCP
/// connection, or a connected UDP socket (which takes a reply only from
/// the address it asked, as a DNS resolver's does) sending a datagram of
/// argument 4's size (1 byte by default), 2 s at most; to an IPv4 or IPv6
/// `host`.
pub const CLIENT: &str = r#"
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
size = int(sys.argv[4]) if len(sys.argv) > 4 else 1
if proto == "tcp":
    s = socket.create_connection((host, port), timeout=2)
    print(s.makefile().readline().strip())
else:
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    s.connect((host, port))
    s.send(b"q" * size)
    answer = s.recv(65535)
    if len(answer) != size and size > 1:
        sys.exit(f"a {len(answer)}-byte answer to {size} bytes")
    print(answer.decode().strip())
"#;

/// Tries `tcp` or `udp` to `host:port` (a connection, or a datagram on a
/// connected socket and its answer) for `timeout` seconds (argument 4,
/// default 5), printing how it ended: `connected`, `answered`, `refused`
/// or `timeout`.
pub const TRY_SERVICE: &str = r#"
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 5
try:
    if proto == "tcp":
        socket.create_connection((host, port), timeout=timeout)
        print("connected")
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(b"q")
        s.recv(1)
        print("answered")
except ConnectionRefusedError:
    print("refused")
except socket.timeout:
    print("timeout")
"#;

/// Holds one TCP connection to `host:port` open across a signal: one echo
/// round trip, then (once the file `go` exists) another, printing how the
/// second ended.
pub const HELD_CONNECTION: &str = r#"
import os, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.sendall(b"x")
assert s.recv(1) == b"x"
deadline = time.time() + 30
while not os.path.exists(sys.argv[3]) and time.time() < deadline:
    time.sleep(0.05)
try:
    s.sendall(b"y")
    print("echoed" if s.recv(1) else "closed")
except ConnectionResetError:
    print("reset")
except socket.timeout:
    print("timeout")
"#;

/// Start the endpoint server in `ns`, answering as `me` (an IPv4 or IPv6
/// address: the family it listens on), once it listens.
pub fn serve_in(ns: &Netns, me: impl Into<IpAddr>) -> Result<Process> {
    let me = me.into().to_string();
    let server = Process::spawn(
        ns.command("timeout")?
            .args(["600", "python3", "-c", SERVER, &me]),
        &format!("Service endpoint in {}", ns.name()),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listening = ns.run("ss", &["-Hlntu"])?;
        let ready = [TCP_PORT, ECHO_PORT, UDP_PORT]
            .iter()
            .all(|p| listening.contains(&format!(":{p} ")));
        if ready {
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!(
                "the endpoint server in {} did not listen within 10 s",
                ns.name()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One request from `from` to the Service at `cluster_ip` (or any
/// address running [`serve_in`]), of `cluster_ip`'s family: the endpoint
/// that answered and the client address it saw (`A` is `Ipv4Addr` or
/// `Ipv6Addr`).
pub fn request<A: FromStr + Into<IpAddr>>(
    from: &Pod,
    proto: &str,
    cluster_ip: A,
    port: u16,
) -> Result<(A, A)> {
    request_sized(from, proto, cluster_ip, port, 1)
}

/// [`request`] over UDP with a datagram of `size` bytes, answered with as
/// many: larger than the pod's MTU, both go as IP fragments.
pub fn request_sized<A: FromStr + Into<IpAddr>>(
    from: &Pod,
    proto: &str,
    cluster_ip: A,
    port: u16,
    size: usize,
) -> Result<(A, A)> {
    let to = SocketAddr::new(cluster_ip.into(), port);
    let text = from
        .ns
        .run(
            "python3",
            &[
                "-c",
                CLIENT,
                proto,
                &to.ip().to_string(),
                &port.to_string(),
                &size.to_string(),
            ],
        )
        .with_context(|| format!("{proto} {} -> {to}, {size} bytes", from.ip))?;
    let mut words = text.split_whitespace().map(str::parse::<A>);
    match (words.next(), words.next()) {
        (Some(Ok(endpoint)), Some(Ok(seen))) => Ok((endpoint, seen)),
        _ => bail!("{proto} {} -> {to}: answer {text:?}", from.ip),
    }
}
