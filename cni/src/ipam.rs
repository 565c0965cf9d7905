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

/// Why `ip` cannot be a pod's address in `pool`, whose gateway is
/// `gateway`, if it cannot.
pub fn unusable(pool: Ipv4Net, gateway: Ipv4Addr, ip: Ipv4Addr) -> Option<&'static str> {
    if !pool.contains(&ip) {
        Some("outside this node's pod CIDR")
    } else if ip == gateway {
        Some("the pod CIDR's gateway")
    } else if ip == pool.network() {
        Some("the pod CIDR's network address")
    } else if ip == pool.broadcast() {
        Some("the pod CIDR's broadcast address")
    } else {
        None
    }
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
    /// and `gateway` addresses, never one another owner holds: `wanted` if
    /// it asks for one, else the next free one. An owner that already has
    /// an address gets it again (and must not ask for another). Free
    /// addresses are handed out round-robin from the last one, so a freed
    /// address is not reused at once; a wanted one leaves the round alone.
    pub fn allocate(
        &self,
        pool: Ipv4Net,
        gateway: Ipv4Addr,
        owner: &Owner,
        wanted: Option<Ipv4Addr>,
    ) -> CniResult<Ipv4Addr> {
        let _locked = self.lock()?;
        match (self.lookup(owner)?, wanted) {
            (Some(held), Some(wanted)) if held != wanted => Err(CniError::new(
                code::ADDRESS_IN_USE,
                format!(
                    "container {} ({}) already holds {held} and asks for {wanted}: delete it \
                     (CNI DEL) before adding it again with another address",
                    owner.container_id, owner.ifname
                ),
            )),
            (Some(held), _) => Ok(held),
            (None, Some(wanted)) => self.take_wanted(pool, gateway, owner, wanted),
            (None, None) => self.take_next(pool, gateway, owner),
        }
    }

    /// Record `owner` as the holder of `ip`; false if someone holds it.
    fn take(&self, ip: Ipv4Addr, owner: &Owner) -> CniResult<bool> {
        let path = self.dir.join(ip.to_string());
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                file.write_all(owner.to_file().as_bytes())
                    .map_err(|e| io_error(&format!("writing {}", path.display()), e))?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_error(&format!("creating {}", path.display()), e)),
        }
    }

    /// Give `owner` the address it asks for, if it is usable and free.
    fn take_wanted(
        &self,
        pool: Ipv4Net,
        gateway: Ipv4Addr,
        owner: &Owner,
        wanted: Ipv4Addr,
    ) -> CniResult<Ipv4Addr> {
        if let Some(why) = unusable(pool, gateway, wanted) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!(
                    "the requested address {wanted} is {why}: ask for a free address of {pool}"
                ),
            ));
        }
        if self.take(wanted, owner)? {
            return Ok(wanted);
        }
        let holder = fs::read_to_string(self.dir.join(wanted.to_string()))
            .ok()
            .and_then(|text| Owner::from_file(&text))
            .map_or_else(
                || "another attachment".to_string(),
                |o| format!("container {} ({})", o.container_id, o.ifname),
            );
        Err(CniError::new(
            code::ADDRESS_IN_USE,
            format!(
                "the requested address {wanted} is already taken by {holder}: ask for a free \
                 address of {pool}, or for none to get one"
            ),
        ))
    }

    /// Give `owner` the next free address after the last one handed out.
    fn take_next(&self, pool: Ipv4Net, gateway: Ipv4Addr, owner: &Owner) -> CniResult<Ipv4Addr> {
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
            if candidate != gateway && self.take(candidate, owner)? {
                fs::write(self.dir.join(LAST), candidate.to_string())
                    .map_err(|e| io_error("remembering the last address", e))?;
                return Ok(candidate);
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
        let a = ipam.allocate(pool, gateway, &owner("a"), None).unwrap();
        let b = ipam.allocate(pool, gateway, &owner("b"), None).unwrap();
        assert_eq!(
            (a, b),
            (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 1, 3))
        );
        assert_eq!(
            ipam.allocate(pool, gateway, &owner("a"), None).unwrap(),
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
            ipam.allocate(pool, gateway, &owner("c"), None).unwrap(),
            Ipv4Addr::new(10, 244, 1, 4)
        );
        for id in ["d", "e", "f"] {
            ipam.allocate(pool, gateway, &owner(id), None).unwrap();
        }
        // .2 .3 .4 .5 .6 taken (.7 is broadcast): full.
        let err = ipam.allocate(pool, gateway, &owner("g"), None).unwrap_err();
        assert_eq!(err.code, code::POOL_EXHAUSTED);
        assert!(err.msg.contains("10.244.1.0/29"), "{}", err.msg);
        assert_eq!(ipam.allocations().unwrap().len(), 5);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn wanted_addresses_are_given_once_and_leave_the_round_alone() {
        let dir = scratch("wanted");
        let ipam = LocalIpam::open(&dir, "podnet").unwrap();
        let pool: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let gateway = Ipv4Addr::new(10, 244, 1, 1);
        let fifty = Ipv4Addr::new(10, 244, 1, 50);
        assert_eq!(
            ipam.allocate(pool, gateway, &owner("a"), Some(fifty))
                .unwrap(),
            fifty
        );
        assert_eq!(
            ipam.allocate(pool, gateway, &owner("a"), Some(fifty))
                .unwrap(),
            fifty,
            "asked again by its holder"
        );
        let taken = ipam
            .allocate(pool, gateway, &owner("b"), Some(fifty))
            .unwrap_err();
        assert_eq!(taken.code, code::ADDRESS_IN_USE);
        assert!(
            taken.msg.contains("10.244.1.50") && taken.msg.contains("container a (eth0)"),
            "{}",
            taken.msg
        );
        let other = ipam
            .allocate(
                pool,
                gateway,
                &owner("a"),
                Some(Ipv4Addr::new(10, 244, 1, 51)),
            )
            .unwrap_err();
        assert_eq!(other.code, code::ADDRESS_IN_USE);
        assert!(
            other.msg.contains("already holds 10.244.1.50"),
            "{}",
            other.msg
        );
        for bad in [
            gateway,
            pool.network(),
            pool.broadcast(),
            Ipv4Addr::new(10, 244, 2, 5),
        ] {
            let err = ipam
                .allocate(pool, gateway, &owner("b"), Some(bad))
                .unwrap_err();
            assert_eq!(err.code, code::INVALID_CONFIG, "{bad}");
            assert!(err.msg.contains(&bad.to_string()), "{}", err.msg);
        }
        // The round robin starts where it was: at the first address.
        assert_eq!(
            ipam.allocate(pool, gateway, &owner("b"), None).unwrap(),
            Ipv4Addr::new(10, 244, 1, 2)
        );
        assert_eq!(ipam.allocations().unwrap().len(), 2);
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
                                None,
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
