//! Work inside another network namespace: a short-lived thread enters it
//! (setns), runs the closure and ends, so the caller's threads never move;
//! sockets and devices opened there stay there when handed back.
//!
//! A pod's namespace is reached through the path its runtime gave the
//! CNI plugin. That path is a mount in the runtime's mount namespace,
//! which the daemon may not share (podman and others with a private
//! `/run`), so [`Namespace`] opens it as the runtime sees it — through
//! `/proc/<pid>/root` of the plugin calling the daemon — and finds it
//! again after a restart by its identity, through any process inside it.

use std::fs::{self, File};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};
use serde::{Deserialize, Serialize};

/// What names a network namespace while it exists, whatever path reaches
/// it: its nsfs device and inode (what `ip netns identify` compares).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceId {
    /// The nsfs device.
    pub device: u64,
    /// The namespace's inode.
    pub inode: u64,
}

/// A network namespace held open, with its identity.
#[derive(Debug)]
pub struct Namespace {
    file: OwnedFd,
    id: NamespaceId,
}

impl Namespace {
    /// Open the namespace file at `path` as the process `caller` sees it
    /// (its mounts, through `/proc/<caller>/root`), or as this process
    /// sees it when there is no caller or `path` is not there for it.
    pub fn open_as_seen_by(path: &Path, caller: Option<u32>) -> Result<Namespace> {
        let through_caller = caller
            .map(|pid| Path::new("/proc").join(pid.to_string()).join("root"))
            .map(|root| root.join(path.strip_prefix("/").unwrap_or(path)))
            .filter(|p| p.exists());
        let opened = through_caller.as_deref().unwrap_or(path);
        Namespace::open(opened).with_context(|| format!("opening {}", path.display()))
    }

    /// Open the namespace `id` again: at `path` if that is still it, or
    /// else through a process inside it (`/proc/<pid>/ns/net`), for a
    /// runtime whose mounts this process cannot see. `None` when no
    /// path reaches it: the namespace is gone.
    pub fn find(path: &Path, id: NamespaceId) -> Result<Option<Namespace>> {
        if let Ok(namespace) = Namespace::open(path)
            && namespace.id == id
        {
            return Ok(Some(namespace));
        }
        let processes = fs::read_dir("/proc").context("listing /proc")?;
        let inside = processes
            .flatten()
            .filter(|entry| {
                entry
                    .file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .map(|entry| entry.path().join("ns/net"))
            .find(|ns| identity(ns).is_ok_and(|found| found == id));
        inside.map(|ns| Namespace::open(&ns)).transpose()
    }

    /// Open the namespace file at `path`.
    fn open(path: &Path) -> Result<Namespace> {
        let file = File::open(path)?;
        let id = file_identity(&file.metadata()?);
        Ok(Namespace {
            file: file.into(),
            id,
        })
    }

    /// Its identity, to find it again with [`Namespace::find`].
    pub fn id(&self) -> NamespaceId {
        self.id
    }

    /// Run `f` on a thread inside it (see [`in_netns`]).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        in_netns(&self.file, f)
    }
}

/// The identity of the namespace file at `path`.
fn identity(path: &Path) -> std::io::Result<NamespaceId> {
    Ok(file_identity(&fs::metadata(path)?))
}

fn file_identity(metadata: &fs::Metadata) -> NamespaceId {
    NamespaceId {
        device: metadata.dev(),
        inode: metadata.ino(),
    }
}

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
