//! Addresses for pods: podswitch's own allocator over the node's pod CIDR
//! (asked of the daemon), or an IPAM plugin named in the configuration's
//! `ipam` section, called through `CNI_PATH` as the spec describes.
//!
//! The allocator keeps one file per allocated address in
//! `<dataDir>/<network name>/`, holding its owner (container id and
//! interface), in the manner of host-local: an allocation survives plugin
//! and daemon restarts, and an flock serialises concurrent ADDs and DELs.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

use crate::spec::{AddResult, CniError, CniResult, Environment, code};

/// The attachment an address belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
}

impl Owner {
    fn to_file(&self) -> String {
        format!("{}\n{}\n", self.container_id, self.ifname)
    }

    fn from_file(text: &str) -> Option<Owner> {
        let mut lines = text.lines();
        Some(Owner {
            container_id: lines.next()?.to_string(),
            ifname: lines.next()?.to_string(),
        })
    }
}

fn io_error(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::IO_FAILURE, format!("{what}: {e}"))
}

/// The built-in allocator for one network.
pub struct LocalIpam {
    dir: PathBuf,
}

/// The allocator's lock, held while an operation runs.
struct Locked {
    _lock: Flock<File>,
}

/// Name of the file remembering the last address handed out.
const LAST: &str = "last_reserved_ip";
const LOCK: &str = "lock";

impl LocalIpam {
    /// The allocator of network `network` under `data_dir`.
    pub fn open(data_dir: &Path, network: &str) -> CniResult<LocalIpam> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir)
            .map_err(|e| io_error(&format!("creating {}", dir.display()), e))?;
        Ok(LocalIpam { dir })
    }

    fn lock(&self) -> CniResult<Locked> {
        let path = self.dir.join(LOCK);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&format!("opening {}", path.display()), e))?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, e)| io_error(&format!("locking {}", path.display()), e))?;
        Ok(Locked { _lock: lock })
    }

    /// Every allocation: address and owner.
    pub fn allocations(&self) -> CniResult<Vec<(Ipv4Addr, Owner)>> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_error("listing allocations", e))?;
        let mut all = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|n| n.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            if let Some(owner) = Owner::from_file(&text) {
                all.push((ip, owner));
            }
        }
        all.sort();
        Ok(all)
    }

    /// The address `owner` holds, if any.
    pub fn lookup(&self, owner: &Owner) -> CniResult<Option<Ipv4Addr>> {
        Ok(self
            .allocations()?
            .into_iter()
            .find(|(_, o)| o == owner)
            .map(|(ip, _)| ip))
    }

    /// Give `owner` an address of `pool` other than its network, broadcast
    /// and `gateway` addresses, never one another owner holds; an owner that
    /// already has one gets it again. Addresses are handed out round-robin
    /// from the last one, so a freed address is not reused at once.
    pub fn allocate(&self, pool: Ipv4Net, gateway: Ipv4Addr, owner: &Owner) -> CniResult<Ipv4Addr> {
        let _locked = self.lock()?;
        if let Some(ip) = self.lookup(owner)? {
            return Ok(ip);
        }
        let first = u32::from(pool.network()) + 1;
        let last = u32::from(pool.broadcast()).saturating_sub(1);
        let previous = fs::read_to_string(self.dir.join(LAST))
            .ok()
            .and_then(|t| t.trim().parse::<Ipv4Addr>().ok())
            .map(u32::from)
            .filter(|&p| (first..=last).contains(&p))
            .unwrap_or(last);
        let count = last.saturating_sub(first) + 1;
        for step in 1..=count {
            let candidate = Ipv4Addr::from(first + (previous - first + step) % count);
            if candidate == gateway {
                continue;
            }
            let path = self.dir.join(candidate.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(owner.to_file().as_bytes())
                        .map_err(|e| io_error(&format!("writing {}", path.display()), e))?;
                    fs::write(self.dir.join(LAST), candidate.to_string())
                        .map_err(|e| io_error("remembering the last address", e))?;
                    return Ok(candidate);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error(&format!("creating {}", path.display()), e)),
            }
        }
        Err(CniError::new(
            code::POOL_EXHAUSTED,
            format!(
                "no free address left in pod CIDR {pool}: every one of its {} addresses is allocated; \
                 delete unused pods, or give the node a larger pod CIDR",
                count - 1
            ),
        ))
    }

    /// Free what `owner` holds; the address, if it held one.
    pub fn release(&self, owner: &Owner) -> CniResult<Option<Ipv4Addr>> {
        let _locked = self.lock()?;
        let Some(ip) = self.lookup(owner)? else {
            return Ok(None);
        };
        match fs::remove_file(self.dir.join(ip.to_string())) {
            Ok(()) => Ok(Some(ip)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error(&format!("releasing {ip}"), e)),
        }
    }
}

/// Run the IPAM plugin `plugin` for `command` with the network
/// configuration `stdin`, as the spec says: found in `CNI_PATH`, same
/// environment, the result (ADD) or an error passed on as the plugin gave it.
pub fn delegate(
    env: &Environment,
    plugin: &str,
    command: &str,
    stdin: &[u8],
) -> CniResult<Option<AddResult>> {
    let executable = env
        .path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "IPAM plugin {plugin:?} not found in CNI_PATH ({}); install it or fix ipam.type",
                    env.path.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(":")
                ),
            )
        })?;
    let mut child = Command::new(&executable)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io_error(&format!("running {}", executable.display()), e))?;
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin)
            .map_err(|e| io_error("writing to the IPAM plugin", e))?;
    }
    let mut output = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut output)
            .map_err(|e| io_error("reading the IPAM plugin", e))?;
    }
    let status = child
        .wait()
        .map_err(|e| io_error("waiting for the IPAM plugin", e))?;
    if !status.success() {
        let error: Value = serde_json::from_str(&output).unwrap_or_default();
        let plugin_code = error["code"]
            .as_u64()
            .unwrap_or(u64::from(code::IO_FAILURE)) as u32;
        let msg = error["msg"].as_str().unwrap_or(output.trim());
        return Err(
            CniError::new(plugin_code, format!("IPAM plugin {plugin}: {msg}"))
                .with_details(error["details"].as_str().unwrap_or_default()),
        );
    }
    if command != "ADD" {
        return Ok(None);
    }
    serde_json::from_str(&output).map(Some).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("IPAM plugin {plugin} returned a result this plugin cannot read: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(id: &str) -> Owner {
        Owner {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("podswitch-ipam-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn allocates_distinct_addresses_round_robin_and_releases() {
        let dir = scratch("rr");
        let ipam = LocalIpam::open(&dir, "podnet").unwrap();
        let pool: Ipv4Net = "10.244.1.0/29".parse().unwrap();
        let gateway = Ipv4Addr::new(10, 244, 1, 1);
        let a = ipam.allocate(pool, gateway, &owner("a")).unwrap();
        let b = ipam.allocate(pool, gateway, &owner("b")).unwrap();
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3))
        );
        assert_eq!(
            ipam.allocate(pool, gateway, &owner("a")).unwrap(),
            a,
            "same owner, same address"
        );
        assert_eq!(ipam.release(&owner("a")).unwrap(), Some(a));
        assert_eq!(
            ipam.release(&owner("a")).unwrap(),
            None,
            "release is idempotent"
        );
        // Round robin: the freed .2 is not handed out next.
        assert_eq!(
            ipam.allocate(pool, gateway, &owner("c")).unwrap(),
            Ipv4Addr::new(10, 244, 1, 4)
        );
        for id in ["d", "e", "f"] {
            ipam.allocate(pool, gateway, &owner(id)).unwrap();
        }
        // .2 .3 .4 .5 .6 taken (.7 is broadcast): full.
        let err = ipam.allocate(pool, gateway, &owner("g")).unwrap_err();
        assert_eq!(err.code, code::POOL_EXHAUSTED);
        assert!(err.msg.contains("10.244.1.0/29"), "{}", err.msg);
        assert_eq!(ipam.allocations().unwrap().len(), 5);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_allocations_never_share_an_address() {
        let dir = scratch("concurrent");
        let pool: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let ipam = LocalIpam::open(&dir, "podnet").unwrap();
                    (0..10)
                        .map(|i| {
                            ipam.allocate(
                                pool,
                                Ipv4Addr::new(10, 244, 1, 1),
                                &owner(&format!("c{t}-{i}")),
                            )
                            .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 160);
        fs::remove_dir_all(dir).unwrap();
    }
}
