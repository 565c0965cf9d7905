//! Network namespaces made with iproute2 and removed on drop.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

use crate::tools;

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces sharing one unique prefix, and a scratch directory
/// named after it; dropping the lab deletes every namespace it made,
/// newest first, then the directory.
pub struct Lab {
    prefix: String,
    namespaces: Vec<Netns>,
    keep_scratch: bool,
}

impl Lab {
    /// A lab whose namespaces are named `ps-<tag>-<pid>-<n>-<name>`; the
    /// `PODSWITCH_LAB_PREFIX` environment variable replaces `ps`, so that
    /// runs sharing a machine can tell their namespaces apart.
    pub fn new(tag: &str) -> Result<Lab> {
        crate::require_root()?;
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        Ok(Lab {
            prefix: format!("{}-{tag}-{}-{n}-", Lab::base(), std::process::id()),
            namespaces: Vec::new(),
            keep_scratch: false,
        })
    }

    /// What every lab's namespace names of this process start with: `ps`,
    /// or the `PODSWITCH_LAB_PREFIX` environment variable.
    pub fn base() -> String {
        std::env::var("PODSWITCH_LAB_PREFIX")
            .ok()
            .filter(|base| !base.is_empty())
            .unwrap_or_else(|| "ps".to_string())
    }

    /// A lab with a fixed prefix (`<prefix>-`), for a testbed that outlives
    /// the program that built it; fails if namespaces with it exist.
    pub fn named(prefix: &str) -> Result<Lab> {
        crate::require_root()?;
        let prefix = format!("{prefix}-");
        if list_namespaces()?.iter().any(|n| n.starts_with(&prefix)) {
            bail!("namespaces named {prefix}* already exist: take that testbed down first");
        }
        Ok(Lab {
            prefix,
            namespaces: Vec::new(),
            keep_scratch: false,
        })
    }

    /// Keep every namespace, and the scratch directory, after the lab is
    /// dropped; the prefix to find them by.
    pub fn keep(mut self) -> String {
        self.namespaces.clear();
        self.keep_scratch = true;
        std::mem::take(&mut self.prefix)
    }

    /// The prefix every namespace of this lab starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab's scratch directory, `<temp dir>/<prefix without its last
    /// dash>`, created if it is not there yet: the daemons' configs, logs
    /// and state and the other files a run writes. Removed with the lab
    /// unless [`Lab::keep_scratch`] was called or `PODSWITCH_KEEP_SCRATCH`
    /// is set (to read a failed test's daemon logs).
    pub fn scratch_dir(&self) -> Result<PathBuf> {
        let dir = self.scratch_path();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    fn scratch_path(&self) -> PathBuf {
        std::env::temp_dir().join(self.prefix.trim_end_matches('-'))
    }

    /// Keep the scratch directory when the lab is dropped: a failed run
    /// whose logs the user is pointed at.
    pub fn keep_scratch(&mut self) {
        self.keep_scratch = true;
    }

    /// Create the namespace `<prefix><name>` with its loopback up.
    pub fn netns(&mut self, name: &str) -> Result<Netns> {
        let ns = Netns::create(&format!("{}{name}", self.prefix))?;
        self.namespaces.push(ns.handle());
        Ok(ns)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        while let Some(ns) = self.namespaces.pop() {
            ns.delete();
        }
        if !self.keep_scratch && std::env::var_os("PODSWITCH_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(self.scratch_path());
        }
    }
}

/// The names of every network namespace.
pub fn list_namespaces() -> Result<Vec<String>> {
    let output = run_checked(tools::command("ip")?.args(["netns", "list"]))?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect())
}

/// Delete every namespace whose name starts with `prefix`; how many.
pub fn delete_namespaces(prefix: &str) -> Result<usize> {
    let doomed: Vec<String> = list_namespaces()?
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    for name in &doomed {
        run_checked(tools::command("ip")?.args(["netns", "del", name]))?;
    }
    Ok(doomed.len())
}

/// A named network namespace. Handles are cheap clones of the name; the
/// [`Lab`] that made it deletes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    fn create(name: &str) -> Result<Netns> {
        run_checked(tools::command("ip")?.args(["netns", "add", name]))
            .with_context(|| format!("creating network namespace {name}"))?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn handle(&self) -> Netns {
        self.clone()
    }

    fn delete(&self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }

    /// The namespace's name, as `ip netns` lists it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside the namespace; fails, naming
    /// its Debian package, if `program` is not installed (see [`tools`]).
    pub fn command(&self, program: &str) -> Result<Command> {
        tools::require(program)?;
        let mut cmd = tools::command("ip")?;
        cmd.args(["netns", "exec", &self.name, program]);
        Ok(cmd)
    }

    /// Run `program args…` inside the namespace; its stdout, or an error
    /// with its stderr when it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let output = run_checked(self.command(program)?.args(args))
            .with_context(|| format!("in {}: {program} {}", self.name, args.join(" ")))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The sum of the kernel's counters `names` in the namespace (`nstat`
    /// names, e.g. `UdpRcvbufErrors`); an error if it printed none of them.
    pub fn kernel_counters(&self, names: &[&str]) -> Result<u64> {
        let mut args = vec!["-asz"];
        args.extend_from_slice(names);
        let text = self.run("nstat", &args)?;
        let values: Vec<u64> = text
            .lines()
            .filter_map(|l| {
                let mut fields = l.split_whitespace();
                let name = fields.next()?;
                names.contains(&name).then(|| fields.next()?.parse().ok())?
            })
            .collect();
        anyhow::ensure!(
            !values.is_empty(),
            "in {}: nstat printed none of {}",
            self.name,
            names.join(", ")
        );
        Ok(values.iter().sum())
    }

    /// Run `ip args…` against the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        let output = run_checked(tools::command("ip")?.args(&full))
            .with_context(|| format!("ip {}", full.join(" ")))?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Create a veth pair: `name` in this namespace, `peer` in `peer_ns`.
    pub fn add_veth(&self, name: &str, peer_ns: &Netns, peer: &str) -> Result<()> {
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            peer_ns.name(),
        ])
        .map(drop)
    }

    /// Run a shell script inside the namespace.
    pub fn sh(&self, script: &str) -> Result<String> {
        self.run("sh", &["-ec", script])
    }

    /// The MAC address of `ifname` in this namespace.
    pub fn mac(&self, ifname: &str) -> Result<[u8; 6]> {
        let text = self.run("cat", &[&format!("/sys/class/net/{ifname}/address")])?;
        parse_mac(text.trim()).with_context(|| format!("MAC of {ifname} in {}", self.name))
    }

    /// Run `f` on a thread that has entered this namespace, so sockets it
    /// opens belong here (they stay here when handed back).
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
        let path = format!("/var/run/netns/{}", self.name);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        let path = &path;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    setns(&file, CloneFlags::CLONE_NEWNET)
                        .with_context(|| format!("entering network namespace {path}"))?;
                    f()
                })
                .join()
                .unwrap_or_else(|_| bail!("thread inside {path} panicked"))
        })
    }
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next().context("MAC has fewer than 6 bytes")?;
        *byte = u8::from_str_radix(part, 16).with_context(|| format!("bad MAC byte {part:?}"))?;
    }
    if parts.next().is_some() {
        bail!("MAC {text:?} has more than 6 bytes");
    }
    Ok(mac)
}

/// Format a MAC as iproute2 writes it: `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Run a command to completion; an error carrying its stderr if it fails.
pub fn run_checked(cmd: &mut Command) -> Result<Output> {
    let output = cmd
        .output()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    if !output.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("02:00:0a:ff:00:01").unwrap(),
            [2, 0, 10, 255, 0, 1]
        );
        assert!(parse_mac("02:00:0a").is_err());
        assert!(parse_mac("02:00:0a:ff:00:01:02").is_err());
        assert!(parse_mac("zz:00:0a:ff:00:01").is_err());
        assert_eq!(format_mac([2, 0, 10, 255, 0, 1]), "02:00:0a:ff:00:01");
    }
}
