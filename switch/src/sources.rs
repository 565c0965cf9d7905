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

/// The file source of a stage (the `services_file`, the `policy_file`):
/// read at start, reread by the maintenance thread when it changed.
#[derive(Debug, Default)]
pub struct FileSource(Mutex<Option<WatchedFile>>);

impl FileSource {
    /// Read `path` with `read` and hand what it holds to `set` now, then
    /// watch it; an error if it does not read or `set` refuses it.
    pub fn watch<T>(
        &self,
        path: &Path,
        read: impl Fn(&Path) -> Result<T>,
        set: impl Fn(T) -> Result<(), String>,
    ) -> Result<()> {
        let file = WatchedFile::new(path);
        set(read(path)?).map_err(anyhow::Error::msg)?;
        *lock(&self.0) = Some(file);
        Ok(())
    }

    /// If the file changed since it was last read, read it and hand it to
    /// `set`; a file that does not read, or that `set` refuses, is logged
    /// and the `what` (e.g. "Services") before it kept.
    pub fn reread<T>(
        &self,
        what: &str,
        read: impl Fn(&Path) -> Result<T>,
        set: impl Fn(T) -> Result<(), String>,
    ) {
        let mut file = lock(&self.0);
        let Some(file) = file.as_mut() else {
            return;
        };
        if !file.changed() {
            return;
        }
        let path = file.path();
        match read(path).and_then(|read| {
            set(read).map_err(|problem| anyhow::anyhow!("{}: {problem}", path.display()))
        }) {
            Ok(()) => tracing::info!("read the {what} of {}", path.display()),
            Err(e) => tracing::warn!("{e:#}; keeping its earlier {what}"),
        }
    }
}

/// A source file, reread when its modification time or length changed.
#[derive(Debug)]
struct WatchedFile {
    path: PathBuf,
    /// Modification time and length at the last read.
    seen: Option<(SystemTime, u64)>,
}

impl WatchedFile {
    /// Watch `path`, as read now.
    fn new(path: &Path) -> WatchedFile {
        WatchedFile {
            path: path.to_path_buf(),
            seen: stamp(path),
        }
    }

    /// The file.
    fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it changed since it was last read; it counts as read now.
    fn changed(&mut self) -> bool {
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
