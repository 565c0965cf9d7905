//! The control socket: a Unix socket, mode 0600 in a 0700 directory, that
//! only root may use (checked with SO_PEERCRED). Each connection gets a
//! thread; requests are lines of JSON, answered in order. A `capture`
//! request turns the connection into a pcapng stream until it ends.

use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use crossbeam::channel::{Receiver, RecvTimeoutError};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use super::protocol::{CaptureSpec, MAX_REQUEST_LEN, Request, Response};
use crate::capture::{CaptureTap, CapturedFrame, PcapNgStream, SNAPLEN};

/// What answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Carry out one request from the process `caller` (its ID in this
    /// daemon's PID namespace, when it has one there).
    fn handle(&self, request: Request, caller: Option<u32>) -> Response;
    /// Start a capture: its tap and the frames it keeps, or why not.
    fn start_capture(
        &self,
        spec: &CaptureSpec,
    ) -> Result<(Arc<CaptureTap>, Receiver<CapturedFrame>)>;
    /// End a capture `start_capture` started.
    fn end_capture(&self, tap: &Arc<CaptureTap>);
}

/// How often a capture with nothing to send looks whether its client hung
/// up or its port went away.
const CAPTURE_CHECK: Duration = Duration::from_millis(200);

/// Clients served at once; more are told to retry.
const MAX_CLIENTS: usize = 64;
/// A client silent this long is disconnected.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The listening control socket; its file is removed on drop.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    /// Bind the socket at `path`. A live daemon already listening there is
    /// an error; a stale socket file (left by a killed daemon) is replaced.
    pub fn bind(path: &Path) -> Result<ControlServer> {
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                bail!(
                    "another podswitch daemon is listening on {}; stop it first",
                    path.display()
                );
            }
            fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(path)
            .with_context(|| format!("binding the control socket {}", path.display()))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} mode 0600", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(ControlServer {
            listener,
            path: path.into(),
        })
    }

    /// Serve requests with `handler` until `stop` is set; returns the
    /// accepting thread.
    pub fn serve(self, handler: Arc<dyn Handler>, stop: Arc<AtomicBool>) -> JoinHandle<()> {
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || self.accept_loop(handler, stop))
            .expect("spawning the control thread")
    }

    fn accept_loop(self, handler: Arc<dyn Handler>, stop: Arc<AtomicBool>) {
        let clients = Arc::new(AtomicUsize::new(0));
        while !stop.load(Ordering::Relaxed) {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                        clients.fetch_sub(1, Ordering::AcqRel);
                        let _ = refuse(stream, "the daemon is serving too many clients; retry");
                        continue;
                    }
                    let handler = handler.clone();
                    let clients = clients.clone();
                    let spawned = std::thread::Builder::new()
                        .name("control-client".into())
                        .spawn(move || {
                            if let Err(e) = serve_client(stream, &*handler) {
                                tracing::debug!("control client: {e:#}");
                            }
                            clients.fetch_sub(1, Ordering::AcqRel);
                        });
                    if spawned.is_err() {
                        tracing::warn!("cannot start a thread for a control client");
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.wait_for_client(),
                Err(e) => {
                    tracing::warn!("control socket accept: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

impl ControlServer {
    /// Sleep until a client connects, or a second passes (to look at the
    /// stop flag).
    fn wait_for_client(&self) {
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(1000u16));
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn refuse(mut stream: UnixStream, why: &str) -> std::io::Result<()> {
    let line = serde_json::to_string(&Response::failure(why)).unwrap_or_default();
    stream.write_all(line.as_bytes())?;
    stream.write_all(b"\n")
}

/// Answer one client's requests until it hangs up, goes quiet, or sends
/// something that is not a request line.
fn serve_client(stream: UnixStream, handler: &dyn Handler) -> Result<()> {
    stream.set_nonblocking(false)?;
    let credentials = getsockopt(&stream, PeerCredentials).context("SO_PEERCRED")?;
    if credentials.uid() != 0 {
        refuse(
            stream,
            "permission denied: the control socket is for root only",
        )?;
        bail!("refused uid {}", credentials.uid());
    }
    // 0 when the client is outside this daemon's PID namespace.
    let caller = u32::try_from(credentials.pid()).ok().filter(|&pid| pid > 0);
    stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream).take(MAX_REQUEST_LEN as u64 + 1);
    let mut line = Vec::new();
    loop {
        line.clear();
        reader.set_limit(MAX_REQUEST_LEN as u64 + 1);
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            let why = if n > MAX_REQUEST_LEN {
                format!("request longer than {MAX_REQUEST_LEN} bytes")
            } else {
                "request not terminated by a newline".to_string()
            };
            write_response(&mut writer, &Response::failure(why.clone()))?;
            bail!(why);
        }
        let response = match serde_json::from_slice::<Request>(&line) {
            Ok(Request::Capture(spec)) => match handler.start_capture(&spec) {
                Ok((tap, frames)) => {
                    let started = serde_json::json!({ "port": spec.port, "snaplen": SNAPLEN });
                    let streamed = write_response(&mut writer, &Response::success(started))
                        .map_err(anyhow::Error::from)
                        .and_then(|()| stream_capture(&mut writer, &spec, &tap, &frames));
                    handler.end_capture(&tap);
                    return streamed;
                }
                Err(e) => Response::failure(format!("{e:#}")),
            },
            Ok(request) => handler.handle(request, caller),
            Err(e) => Response::failure(format!("bad request: {e}")),
        };
        write_response(&mut writer, &response)?;
    }
}

/// Write a capture's frames to the client as pcapng until its count is
/// reached, the client hangs up or the port goes away.
fn stream_capture(
    client: &mut UnixStream,
    spec: &CaptureSpec,
    tap: &CaptureTap,
    frames: &Receiver<CapturedFrame>,
) -> Result<()> {
    let mut stream = PcapNgStream::new(client.try_clone()?, &spec.port)?;
    stream.flush()?;
    let mut written = 0u64;
    while spec.count.is_none_or(|count| written < count) {
        match frames.recv_timeout(CAPTURE_CHECK) {
            Ok(frame) => {
                stream.write(&frame)?;
                written += 1;
                if frames.is_empty() {
                    stream.flush()?;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                if tap.ended() || hung_up(client) {
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    stream.flush()?;
    Ok(())
}

/// Whether a capture's client has closed its end (it sends nothing after
/// its request, so anything readable is the end).
fn hung_up(client: &UnixStream) -> bool {
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(client.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
}

fn write_response(writer: &mut UnixStream, response: &Response) -> std::io::Result<()> {
    let mut text = serde_json::to_vec(response).unwrap_or_default();
    text.push(b'\n');
    writer.write_all(&text)
}
