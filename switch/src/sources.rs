//! Where the Services and the NetworkPolicies come from: the sources'
//! names, and the file source, read as JSON and reread when it changes.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

/// The source `podswitch services set` / `podswitch policy set` feeds.
pub const CONTROL_SOURCE: &str = "control";
/// The source the `services_file` / `policy_file` feeds.
pub const FILE_SOURCE: &str = "file";
/// The source the Kubernetes API feeds (with `membership = "kubernetes"`).
pub const KUBERNETES_SOURCE: &str = "kubernetes";

/// Read `path` as JSON of `T`; an error names the file and says it is
/// not `what` (e.g. "a JSON list of Services (see docs/services.md)").
pub fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not {what}", path.display()))
}

/// A source file, reread when its modification time or length changed.
#[derive(Debug)]
pub struct WatchedFile {
    path: PathBuf,
    /// Modification time and length at the last read.
    seen: Option<(SystemTime, u64)>,
}

impl WatchedFile {
    /// Watch `path`, as read now.
    pub fn new(path: &Path) -> WatchedFile {
        WatchedFile {
            path: path.to_path_buf(),
            seen: stamp(path),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it changed since it was last read; it counts as read now.
    pub fn changed(&mut self) -> bool {
        let now = stamp(&self.path);
        let changed = now != self.seen;
        self.seen = now;
        changed
    }
}

/// A file's modification time and length, if it can be read.
fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

/// Lock `mutex`; one a thread panicked holding still holds whole values
/// (each change is one assignment or insert).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
