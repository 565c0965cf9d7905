//! Driving a CNI plugin exactly as a container runtime does: the `CNI_*`
//! environment, the network configuration on stdin, the plugin run in the
//! node's network namespace, the result or error JSON read from stdout.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use podswitch_control::client::Client;
use podswitch_control::protocol::{PortStatus, Request};

use crate::cluster::Pod;
use crate::netns::{Lab, Netns};

/// The path a runtime passes as `CNI_NETNS` for a lab namespace.
pub fn netns_path(ns: &Netns) -> PathBuf {
    PathBuf::from("/var/run/netns").join(ns.name())
}

/// What one invocation printed.
#[derive(Debug, Clone)]
pub struct CniOutput {
    /// Exit status zero.
    pub success: bool,
    /// Stdout as JSON (null when empty or not JSON).
    pub json: Value,
    /// Stdout as text.
    pub stdout: String,
    /// Stderr as text.
    pub stderr: String,
}

/// One invocation: the command and the `CNI_*` variables.
#[derive(Debug, Clone, Default)]
pub struct CniCall<'a> {
    /// `CNI_COMMAND`.
    pub command: &'a str,
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS` (empty when `None`).
    pub netns: Option<&'a Path>,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
    /// `CNI_ARGS` (`KEY=VALUE` pairs separated by `;`).
    pub args: &'a str,
}

/// A CNI plugin binary and the directories of the plugins it may call.
#[derive(Debug, Clone)]
pub struct CniPlugin {
    /// The plugin executable.
    pub binary: PathBuf,
    /// `CNI_PATH`.
    pub path: Vec<PathBuf>,
}

impl CniPlugin {
    /// The `podswitch-cni` binary built in `dir` (where the workspace's
    /// binaries are), with `dir` and Debian's plugins (`/usr/lib/cni`) on
    /// `CNI_PATH` for delegation and chaining; an error if it is not
    /// built, saying how to build it.
    pub fn built_in(dir: &Path) -> Result<CniPlugin> {
        let binary = dir.join("podswitch-cni");
        anyhow::ensure!(
            binary.exists(),
            "{} is not built: cargo build --release -p podswitch-cni",
            binary.display()
        );
        Ok(CniPlugin {
            path: vec![dir.into(), "/usr/lib/cni".into()],
            binary,
        })
    }

    /// Run `call` in the namespace `node` (the node's; a runtime runs
    /// plugins there) with `config` on stdin.
    pub fn run(&self, node: &Netns, call: &CniCall, config: &Value) -> Result<CniOutput> {
        self.run_binary(&self.binary, node, call, config.to_string().as_bytes())
    }

    /// [`Self::run`] with `stdin` as it is, JSON or not.
    pub fn run_stdin(&self, node: &Netns, call: &CniCall, stdin: &[u8]) -> Result<CniOutput> {
        self.run_binary(&self.binary, node, call, stdin)
    }

    /// [`Self::run`] for another plugin `binary` (one of a list).
    fn run_binary(
        &self,
        binary: &Path,
        node: &Netns,
        call: &CniCall,
        stdin: &[u8],
    ) -> Result<CniOutput> {
        let mut cmd = node.command(&binary.to_string_lossy())?;
        let cni_path = self
            .path
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        cmd.env("CNI_COMMAND", call.command)
            .env("CNI_CONTAINERID", call.container_id)
            .env(
                "CNI_NETNS",
                call.netns.map(Path::as_os_str).unwrap_or_default(),
            )
            .env("CNI_IFNAME", call.ifname)
            .env("CNI_ARGS", call.args)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("starting the CNI plugin")?;
        child.stdin.take().context("no stdin")?.write_all(stdin)?;
        let output = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        Ok(CniOutput {
            success: output.status.success(),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Run `call` and fail unless it succeeded; its JSON output.
    pub fn expect_ok(&self, node: &Netns, call: &CniCall, config: &Value) -> Result<Value> {
        let out = self.run(node, call, config)?;
        if !out.success {
            bail!(
                "CNI {} for {} failed: {}{}",
                call.command,
                call.container_id,
                out.stdout.trim(),
                out.stderr.trim()
            );
        }
        Ok(out.json)
    }

    /// Run `call` through every plugin of the network configuration list
    /// `list` as libcni does: each plugin's object gets the list's `name`
    /// and `cniVersion`, the `runtimeConfig` entries of the capabilities it
    /// declares, and the previous plugin's result as `prevResult`. ADD and
    /// CHECK go in order, DEL in reverse with `prev_result` (the ADD's
    /// result, as a runtime caches it). The last ADD result, or null.
    pub fn run_list(
        &self,
        node: &Netns,
        call: &CniCall,
        list: &Value,
        runtime_config: &Value,
        prev_result: Option<&Value>,
    ) -> Result<Value> {
        let mut plugins: Vec<&Value> = list["plugins"]
            .as_array()
            .context("the list has no plugins")?
            .iter()
            .collect();
        if call.command == "DEL" {
            plugins.reverse();
        }
        let mut result = prev_result.cloned();
        for plugin in plugins {
            let kind = plugin["type"].as_str().context("a plugin without a type")?;
            let binary = if kind == "podswitch-cni" {
                self.binary.clone()
            } else {
                self.find(kind)?
            };
            let mut config = plugin.clone();
            config["name"] = list["name"].clone();
            config["cniVersion"] = list["cniVersion"].clone();
            let wanted: serde_json::Map<String, Value> = plugin["capabilities"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(key, on)| {
                    on.as_bool() == Some(true) && !runtime_config[key.as_str()].is_null()
                })
                .map(|(key, _)| (key.clone(), runtime_config[key.as_str()].clone()))
                .collect();
            if !wanted.is_empty() {
                config["runtimeConfig"] = Value::Object(wanted);
            }
            if let Some(prev) = &result {
                config["prevResult"] = prev.clone();
            }
            let out = self.run_binary(&binary, node, call, config.to_string().as_bytes())?;
            if !out.success {
                bail!(
                    "{kind} {} failed: {}{}\nits config: {config}",
                    call.command,
                    out.stdout.trim(),
                    out.stderr.trim()
                );
            }
            if call.command == "ADD" {
                result = Some(out.json);
            }
        }
        Ok(result.unwrap_or(Value::Null))
    }

    /// The plugin `kind` in a `CNI_PATH` directory.
    fn find(&self, kind: &str) -> Result<PathBuf> {
        self.path
            .iter()
            .map(|dir| dir.join(kind))
            .find(|p| p.is_file())
            .with_context(|| format!("no plugin {kind} in {:?}", self.path))
    }

    /// ADD a pod namespace `name` (created in `lab`) to the network
    /// `config` on node `node`; the pod as the result describes it.
    pub fn add_pod(
        &self,
        lab: &mut Lab,
        node: &Netns,
        name: &str,
        config: &Value,
    ) -> Result<(Pod, Value)> {
        let ns = lab.netns(name)?;
        let path = netns_path(&ns);
        let call = CniCall {
            command: "ADD",
            container_id: name,
            netns: Some(&path),
            ifname: "eth0",
            args: "",
        };
        let result = self.expect_ok(node, &call, config)?;
        let mut pod = pod_from_result(ns, &result)?;
        if pod.port.is_empty() {
            pod.port = switch_port(config, pod.ip)?;
        }
        Ok((pod, result))
    }
}

/// The name of the switch's port for the pod at `ip`, asked of the daemon
/// the network `config` names (a TAP pod's port has no interface on the
/// node, so the result does not list it).
fn switch_port(config: &Value, ip: Ipv4Addr) -> Result<String> {
    let socket = config["socket"]
        .as_str()
        .context("the network has no socket")?;
    let ports: Vec<PortStatus> = Client::connect(Path::new(socket))?.call_as(&Request::Ports)?;
    ports
        .into_iter()
        .find(|port| port.ip == Some(ip))
        .map(|port| port.name)
        .with_context(|| format!("the switch has no port for {ip}"))
}

/// The pod a CNI ADD result describes: its address, its MAC and its host
/// end (none for a TAP pod: its `port` is then empty).
pub fn pod_from_result(ns: Netns, result: &Value) -> Result<Pod> {
    let address = result["ips"][0]["address"]
        .as_str()
        .context("the result has no address")?;
    let ip: Ipv4Addr = address
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("address {address}"))?;
    let interfaces = result["interfaces"].as_array().context("no interfaces")?;
    let pod_end = interfaces
        .iter()
        .find(|i| i["sandbox"].as_str().is_some_and(|s| !s.is_empty()))
        .context("no pod interface in the result")?;
    // A veth pod has a host end; a TAP pod has none.
    let host_end = interfaces
        .iter()
        .find(|i| i["sandbox"].as_str().is_none_or(str::is_empty));
    Ok(Pod {
        ns,
        ip,
        mac: pod_end["mac"].as_str().unwrap_or_default().to_string(),
        port: host_end
            .and_then(|i| i["name"].as_str())
            .unwrap_or_default()
            .to_string(),
    })
}

/// A podswitch-cni network configuration for a node whose daemon listens
/// on `socket`, keeping its address allocations in `data_dir`.
pub fn podswitch_network(cni_version: &str, socket: &Path, data_dir: &Path) -> Value {
    json!({
        "cniVersion": cni_version,
        "name": "podnet",
        "type": "podswitch-cni",
        "socket": socket,
        "dataDir": data_dir,
    })
}
