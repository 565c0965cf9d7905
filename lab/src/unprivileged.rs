//! Clients placed where a pod's processes would be — a pod's network
//! namespace, an unprivileged user, a mount namespace of their own — to
//! show what they can and cannot reach on the node.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::tools;

/// The uid and gid of `nobody`.
pub const NOBODY: u32 = 65534;

/// Who runs a client, and where. The default: root, in the caller's
/// namespaces.
#[derive(Debug, Clone, Copy, Default)]
pub struct Client<'a> {
    /// Inside this network namespace (a pod's) rather than the caller's.
    pub netns: Option<&'a Netns>,
    /// As nobody (uid and gid [`NOBODY`], no supplementary groups) rather
    /// than root.
    pub nobody: bool,
    /// Capabilities nobody keeps (inheritable and ambient), e.g.
    /// `"dac_override"`.
    pub caps: &'a [&'a str],
    /// In a mount namespace of its own with an empty tmpfs over this
    /// directory, as a container has its own `/run` and `/tmp`.
    pub private_dir: Option<&'a Path>,
}

/// What a client got from a unix stream socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixAnswer {
    /// It connected, sent its line and got this line back.
    Answered(String),
    /// `connect` failed with this errno (`EACCES`, `ENOENT`, …).
    Refused(String),
}

/// The client: connect to argv[1], send argv[2] and a newline, print the
/// answer line (what arrived before the server closed) — or the errno
/// name when `connect` fails.
const UNIX_CLIENT: &str = "\
import errno, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print('refused', errno.errorcode.get(e.errno, str(e.errno)))
    sys.exit(0)
try:
    s.sendall(sys.argv[2].encode() + b'\\n')
except OSError:
    pass  # a server that refuses at once may have closed: read its answer
data = b''
try:
    while not data.endswith(b'\\n'):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError:
    pass
print('answered', data.decode().strip())
";

/// The system's python3: one in root's home (pyenv's shims in
/// `/root/.pyenv`, say) is out of nobody's reach.
fn python() -> &'static str {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("python3")
}

impl Client<'_> {
    /// A command running `program` as this client; fails, naming its
    /// package, if it or a program wrapped around it is not installed.
    pub fn command(&self, program: &str) -> Result<Command> {
        tools::require(program)?;
        let mut words: Vec<String> = Vec::new();
        if let Some(dir) = self.private_dir {
            tools::require_all(&["unshare", "sh", "mount"])?;
            words.extend(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-ec",
                    "mount -t tmpfs podswitch-lab-private \"$1\"; shift; exec \"$@\"",
                    "sh",
                ]
                .map(String::from),
            );
            words.push(dir.to_string_lossy().into_owned());
        }
        if self.nobody {
            tools::require("setpriv")?;
            words.extend([
                "setpriv".to_string(),
                format!("--reuid={NOBODY}"),
                format!("--regid={NOBODY}"),
                "--clear-groups".to_string(),
            ]);
            if !self.caps.is_empty() {
                let caps: Vec<String> = self.caps.iter().map(|c| format!("+{c}")).collect();
                let caps = caps.join(",");
                words.push(format!("--inh-caps={caps}"));
                words.push(format!("--ambient-caps={caps}"));
            }
        }
        words.push(program.to_string());
        let mut cmd = match self.netns {
            Some(ns) => ns.command(&words[0])?,
            None => tools::command(&words[0])?,
        };
        cmd.args(&words[1..]);
        Ok(cmd)
    }

    /// Connect to the unix stream socket at `socket`, send `request` (one
    /// line) and read one line back.
    pub fn unix_request(&self, socket: &Path, request: &str) -> Result<UnixAnswer> {
        let output = self
            .command(python())?
            .arg("-c")
            .arg(UNIX_CLIENT)
            .arg(socket)
            .arg(request)
            .output()
            .context("running the unix socket client")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let line = stdout.trim();
        let answer = match line.split_once(' ').unwrap_or((line, "")) {
            ("answered", answer) => UnixAnswer::Answered(answer.to_string()),
            ("refused", errno) => UnixAnswer::Refused(errno.to_string()),
            _ => bail!(
                "the unix socket client failed ({}): {stdout} {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        };
        Ok(answer)
    }
}
