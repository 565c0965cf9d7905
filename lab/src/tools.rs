//! The programs the lab, the tests and the benchmarks run, each with the
//! Debian package that installs it, and the one way to build a command for
//! one: a program that is not installed is an error naming it and its
//! package, never a run that silently reports nothing.
//!
//! Every package here is listed in `scripts/install-deps.sh` (a unit test
//! checks it, and that every program the sources spawn is in the table).

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Result, bail};

/// A program the code runs and the Debian package that installs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    /// The program's name, as looked up on `PATH`.
    pub program: &'static str,
    /// The Debian package to install for it.
    pub package: &'static str,
}

const fn tool(program: &'static str, package: &'static str) -> Tool {
    Tool { program, package }
}

/// Every external program the lab, tests, benchmarks and build run.
pub const TOOLS: &[Tool] = &[
    // namespaces, links, addresses, routes, qdiscs, sockets, counters
    tool("ip", "iproute2"),
    tool("bridge", "iproute2"),
    tool("tc", "iproute2"),
    tool("ss", "iproute2"),
    tool("nstat", "iproute2"),
    tool("sysctl", "procps"),
    tool("ethtool", "ethtool"),
    // traffic and captures
    tool("ping", "iputils-ping"),
    tool("iperf3", "iperf3"),
    tool("tshark", "tshark"),
    tool("tcpdump", "tcpdump"),
    tool("curl", "curl"),
    tool("etcd", "etcd-server"),
    // portmap's rules
    tool("iptables", "iptables"),
    tool("iptables-save", "iptables"),
    tool("iptables-restore", "iptables"),
    tool("ip6tables-restore", "iptables"),
    // the daemon's Service masquerade table, kube-proxy's nftables mode
    tool("nft", "nftables"),
    // container runtimes the CNI tests drive
    tool("podman", "podman"),
    tool("conmon", "conmon"),
    tool("runc", "runc"),
    tool("containerd", "containerd"),
    tool("ctr", "containerd"),
    tool("containerd-shim-runc-v2", "containerd"),
    // the lab benchmark's Open vSwitch contender
    tool("ovsdb-tool", "openvswitch-switch"),
    tool("ovsdb-server", "openvswitch-switch"),
    tool("ovs-vswitchd", "openvswitch-switch"),
    tool("ovs-vsctl", "openvswitch-switch"),
    tool("ovs-appctl", "openvswitch-switch"),
    // scripts inside the tests and the lab
    tool("python3", "python3"),
    tool("sh", "dash"),
    tool("cat", "coreutils"),
    tool("sleep", "coreutils"),
    tool("timeout", "coreutils"),
    tool("tar", "tar"),
    tool("mount", "mount"),
    tool("nsenter", "util-linux"),
    tool("unshare", "util-linux"),
    tool("setpriv", "util-linux"),
    tool("dpkg-query", "dpkg"),
    // switch/build.rs: the XDP programs
    tool("clang", "clang"),
    tool("gcc", "gcc"),
];

/// The Debian package that installs `program` (a name or a path whose
/// file name is in [`TOOLS`]).
pub fn package(program: &str) -> Option<&'static str> {
    let name = Path::new(program).file_name()?.to_str()?;
    TOOLS.iter().find(|t| t.program == name).map(|t| t.package)
}

/// Fail unless `program` can be run: a name in [`TOOLS`] found on `PATH`,
/// or a path to an existing file. The error names the program and its
/// package.
pub fn require(program: &str) -> Result<()> {
    require_all(&[program])
}

/// [`require`] for each of `programs`; the error names every one missing.
pub fn require_all(programs: &[&str]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<String> = programs
        .iter()
        .filter_map(|p| locate(p, &path).err())
        .collect();
    if !missing.is_empty() {
        bail!("{}", missing.join("; "));
    }
    Ok(())
}

/// A command running `program`, once [`require`] has found it.
pub fn command(program: &str) -> Result<Command> {
    require(program)?;
    Ok(Command::new(program))
}

/// Where `program` is, searching the directories of `path` (a `PATH`
/// value); the error says what is missing and how to install it.
fn locate(program: &str, path: &OsStr) -> std::result::Result<PathBuf, String> {
    let install = |what: &str| match package(program) {
        Some(package) => format!(
            "{what} is not installed (Debian package {package}): run scripts/install-deps.sh"
        ),
        None => format!("{what} does not exist"),
    };
    if program.contains('/') {
        let file = PathBuf::from(program);
        return if file.is_file() {
            Ok(file)
        } else {
            Err(install(program))
        };
    }
    if package(program).is_none() {
        return Err(format!(
            "{program} is not in lab/src/tools.rs: add it there with its Debian package, \
             and the package to scripts/install-deps.sh"
        ));
    }
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|file| is_executable(file))
        .ok_or_else(|| install(program))
}

fn is_executable(file: &Path) -> bool {
    file.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The workspace's root (this crate is one level below it).
    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("lab/ has a parent")
            .to_path_buf()
    }

    /// Every `.rs` file under `dir`, build output and hidden folders aside.
    fn sources(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if path.is_dir() {
                if !name.starts_with('.') && !name.starts_with("target") {
                    sources(&path, files);
                }
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }

    /// The program names `text` spawns, in the shapes the code uses: a
    /// string literal as the first argument of `Command::new`, of a
    /// function or method whose name ends in `command`, of `.run` or of
    /// `require`; or a list of them as that of `require` or `require_all`.
    fn spawned(text: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let literal = |s: &str| -> Option<(String, usize)> {
            let rest = s.strip_prefix('"')?;
            let end = rest.find('"')?;
            Some((rest[..end].to_string(), end + 2))
        };
        for needle in [
            "Command::new(",
            "command(",
            ".run(",
            "require(",
            "require_all(",
        ] {
            for (at, _) in text.match_indices(needle) {
                let mut rest = text[at + needle.len()..].trim_start();
                let list = needle.starts_with("require") && rest.starts_with("&[");
                if list {
                    rest = rest[2..].trim_start();
                }
                while let Some((word, len)) = literal(rest) {
                    if !word.is_empty()
                        && word
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_.+-".contains(c))
                    {
                        found.insert(word);
                    }
                    if !list {
                        break;
                    }
                    rest = rest[len..].trim_start();
                    rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
                }
            }
        }
        found
    }

    /// The packages `scripts/install-deps.sh` installs: the words of its
    /// `PACKAGES=( … )`, comments aside.
    fn install_deps_packages() -> BTreeSet<String> {
        let script = std::fs::read_to_string(root().join("scripts/install-deps.sh")).unwrap();
        let start = script
            .find("PACKAGES=(")
            .expect("install-deps.sh has PACKAGES=(");
        let body = &script[start + "PACKAGES=(".len()..];
        let body = &body[..body.find("\n)").expect("PACKAGES ends with a line `)`")];
        body.lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .flat_map(str::split_whitespace)
            .map(String::from)
            .collect()
    }

    #[test]
    fn every_spawned_program_is_in_the_table_and_its_package_installed() {
        let mut files = Vec::new();
        sources(&root(), &mut files);
        assert!(
            files.iter().any(|f| f.ends_with("lab/src/cluster.rs")),
            "the scan found the workspace's sources"
        );
        let mut unlisted = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            for program in spawned(&text) {
                if package(&program).is_none() {
                    unlisted.push(format!("{program} ({})", file.display()));
                }
            }
        }
        assert!(
            unlisted.is_empty(),
            "spawned but not in lab/src/tools.rs: {unlisted:?}"
        );
        let installed = install_deps_packages();
        let not_installed: BTreeSet<&str> = TOOLS
            .iter()
            .map(|t| t.package)
            .filter(|p| !installed.contains(*p))
            .collect();
        assert!(
            not_installed.is_empty(),
            "packages of lab/src/tools.rs that scripts/install-deps.sh does not install: \
             {not_installed:?}"
        );
    }

    #[test]
    fn the_scan_sees_each_shape_of_spawn() {
        let text = r#"
            Command::new("gcc").arg("x"); ns.command("iperf3"); a.run(
                "ping", &["-c", "1"]); podman.run(&["exec", "a", "ping"]);
            require(&["podman", "runc",
                "curl"]); tools::require_all(&["mount"]); plugin.run(&ns, &c);
        "#;
        let found: Vec<String> = spawned(text).into_iter().collect();
        assert_eq!(
            found,
            ["curl", "gcc", "iperf3", "mount", "ping", "podman", "runc"]
        );
    }

    #[test]
    fn a_missing_program_is_an_error_naming_it_and_its_package() {
        let empty = std::env::temp_dir().join(format!("podswitch-tools-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert_eq!(
            locate("ping", empty.as_os_str()).unwrap_err(),
            "ping is not installed (Debian package iputils-ping): run scripts/install-deps.sh"
        );
        // A file that is not executable is not the program.
        let fake = empty.join("ping");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        assert!(locate("ping", empty.as_os_str()).is_err());
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(locate("ping", empty.as_os_str()), Ok(fake.clone()));
        let absent = "/nonexistent/usr/bin/iperf3";
        assert_eq!(
            locate(absent, empty.as_os_str()).unwrap_err(),
            format!(
                "{absent} is not installed (Debian package iperf3): run scripts/install-deps.sh"
            )
        );
        assert!(
            locate("frobnicate", empty.as_os_str())
                .unwrap_err()
                .starts_with("frobnicate is not in lab/src/tools.rs")
        );
        std::fs::remove_dir_all(&empty).unwrap();
    }

    /// The package that owns `file`, as dpkg knows it.
    fn owner(file: &Path) -> Option<String> {
        let out = command("dpkg-query")
            .ok()?
            .arg("-S")
            .arg(file)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| !l.starts_with("diversion"))?;
        let (packages, _) = line.split_once(':')?;
        Some(packages.split(',').next()?.trim().to_string())
    }

    /// The packages `package` depends on (or pre-depends on) directly.
    fn dependencies(package: &str) -> Vec<String> {
        let Ok(mut cmd) = command("dpkg-query") else {
            return Vec::new();
        };
        let out = cmd
            .args(["-W", "-f=${Pre-Depends}, ${Depends}", package])
            .output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        text.unwrap_or_default()
            .split([',', '|'])
            .filter_map(|d| d.split_whitespace().next())
            .map(|d| d.split(':').next().unwrap_or(d).to_string())
            .collect()
    }

    /// `package` and what it depends on, `levels` deep (`python3` →
    /// `python3.11` → `python3.11-minimal`, which owns the interpreter).
    fn with_dependencies(package: &str, levels: usize) -> Vec<String> {
        let mut all = vec![package.to_string()];
        let mut level = all.clone();
        for _ in 0..levels {
            let mut next = Vec::new();
            for dependency in level.iter().flat_map(|p| dependencies(p)) {
                if !all.contains(&dependency) {
                    all.push(dependency.clone());
                    next.push(dependency);
                }
            }
            level = next;
        }
        all
    }

    /// On a Debian machine, each installed program belongs to its table
    /// package, or to a package that one depends on, directly or through
    /// another (`python3` on `python3.11-minimal` through `python3.11`,
    /// `gcc` on `gcc-12`).
    #[test]
    fn installed_programs_come_from_their_table_packages() {
        if require("dpkg-query").is_err() {
            eprintln!("no dpkg here: nothing to check");
            return;
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut wrong = Vec::new();
        for t in TOOLS {
            let Ok(found) = locate(t.program, &path) else {
                continue;
            };
            // With /usr merged, dpkg may know the file under /bin or /sbin.
            let mut candidates = vec![found.canonicalize().unwrap_or(found.clone()), found];
            candidates.extend(
                ["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(|d| Path::new(d).join(t.program)),
            );
            let Some(owner) = candidates.iter().find_map(|f| owner(f)) else {
                continue; // not from a Debian package (e.g. pyenv's python3)
            };
            if owner != t.package && !with_dependencies(t.package, 2).contains(&owner) {
                wrong.push(format!("{} is in {owner}, not {}", t.program, t.package));
            }
        }
        assert!(wrong.is_empty(), "{wrong:?}");
    }
}
