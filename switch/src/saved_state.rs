//! What the daemon keeps across restarts: the pod ports, peers and host
//! routes added over the control socket, in `<state_dir>/state.json`.
//!
//! The configuration file stays the baseline — its peers and host routes
//! are added at every start and are not saved — so removing one from the
//! file removes it. The file is replaced atomically (written beside it,
//! then renamed) after every change, so a daemon killed at any moment
//! finds either the old state or the new one.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::config::PeerConfig;
use crate::control::protocol::PortSpec;
use crate::netns::NamespaceId;

/// The file's format version; a file of another version is set aside.
const VERSION: u32 = 1;

/// The state a restarted daemon restores.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedState {
    /// Format version.
    pub version: u32,
    /// Pod ports, as they were added.
    pub ports: Vec<PortSpec>,
    /// Each pod TAP port's namespace, by port name: how a restarted
    /// daemon finds a namespace whose path is a mount it cannot see.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, NamespaceId>,
    /// Peers added at run time (not those of the configuration file).
    pub peers: Vec<PeerConfig>,
    /// Host routes added at run time.
    pub host_routes: Vec<Ipv4Net>,
}

/// The state file in `state_dir`.
pub fn state_file(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}

impl SavedState {
    /// An empty state of the current version.
    pub fn new() -> SavedState {
        SavedState {
            version: VERSION,
            ..SavedState::default()
        }
    }

    /// Read `path`; `None` if there is none. A file that cannot be read
    /// as state (corrupt, or of another version) is renamed to
    /// `<path>.unreadable` so it can be looked at, and `None` returned: the
    /// daemon starts with the configuration alone rather than not at all.
    pub fn load(path: &Path) -> Result<Option<SavedState>> {
        let text = match fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        match serde_json::from_slice::<SavedState>(&text) {
            Ok(state) if state.version == VERSION => Ok(Some(state)),
            outcome => {
                let reason = match outcome {
                    Ok(state) => format!("version {} is not {VERSION}", state.version),
                    Err(e) => e.to_string(),
                };
                let aside = path.with_extension("json.unreadable");
                fs::rename(path, &aside)
                    .with_context(|| format!("setting {} aside", path.display()))?;
                tracing::error!(
                    file = %path.display(),
                    moved_to = %aside.display(),
                    "the saved state is unreadable ({reason}); starting from the configuration alone"
                );
                Ok(None)
            }
        }
    }

    /// Write the state to `path` atomically (mode 0600, its directory
    /// made 0700 if missing).
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let partial = path.with_extension("json.partial");
        let text = serde_json::to_vec_pretty(self)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("writing {}", partial.display()))?;
        file.write_all(&text)?;
        file.sync_all()?;
        fs::rename(&partial, path).with_context(|| format!("replacing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::PortKind;
    use crate::mac::MacAddr;

    fn sample() -> SavedState {
        SavedState {
            ports: vec![PortSpec {
                ip6: None,
                name: "ps0123456789ab".into(),
                ip: "10.244.1.2".parse().unwrap(),
                mac: MacAddr([0x02, 0, 0, 0, 0, 1]),
                kind: PortKind::Afxdp,
                owner: Some("c1".into()),
                netns: None,
                ifname: None,
            }],
            peers: vec![PeerConfig {
                pod_cidr6: None,
                node_ip: "10.1.0.12".parse().unwrap(),
                pod_cidr: "10.244.2.0/24".parse().unwrap(),
                vtep_mac: None,
            }],
            host_routes: vec!["192.168.0.0/16".parse().unwrap()],
            ..SavedState::new()
        }
    }

    /// An empty scratch directory for test `name`.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("podswitch-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn saves_and_loads_what_it_saved() {
        let dir = scratch("saved-state");
        let path = state_file(&dir.join("state"));
        assert_eq!(SavedState::load(&path).unwrap(), None);
        sample().save(&path).unwrap();
        assert_eq!(SavedState::load(&path).unwrap(), Some(sample()));
        SavedState::new().save(&path).unwrap();
        assert_eq!(SavedState::load(&path).unwrap(), Some(SavedState::new()));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unreadable_state_is_set_aside_not_fatal() {
        let dir = scratch("unreadable-state");
        fs::create_dir_all(&dir).unwrap();
        let path = state_file(&dir);
        for text in [
            "{not json",
            r#"{"version": 99, "ports": [], "peers": [], "host_routes": []}"#,
        ] {
            fs::write(&path, text).unwrap();
            assert_eq!(SavedState::load(&path).unwrap(), None);
            assert!(!path.exists());
            assert_eq!(
                fs::read_to_string(path.with_extension("json.unreadable")).unwrap(),
                text
            );
        }
        fs::remove_dir_all(dir).unwrap();
    }
}
