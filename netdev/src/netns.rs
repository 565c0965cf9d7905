//! Work inside another network namespace: a short-lived thread enters it
//! (setns), runs the closure and ends, so the caller's threads never move;
//! sockets and devices opened there stay there when handed back.

use std::os::fd::{AsFd, OwnedFd};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

/// Run `f` on a thread inside the network namespace `netns` (an open
/// namespace file, e.g. `/var/run/netns/NAME` or `/proc/PID/ns/net`).
pub fn in_netns<R: Send>(netns: &OwnedFd, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
                    .context("entering the network namespace")?;
                f()
            })
            .join()
            .unwrap_or_else(|_| bail!("a thread in another network namespace panicked"))
    })
}
