//! The CNI protocol (containernetworking/cni SPEC.md, versions 0.4.0,
//! 1.0.0 and 1.1.0) as this plugin speaks it: the environment, the network
//! configuration on stdin, the result and error JSON on stdout.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Spec versions this plugin answers in.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];
/// The newest of them.
pub const LATEST_VERSION: &str = "1.1.0";

/// The spec's well-known error codes this plugin returns.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin is not available (STATUS).
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific: the address pool is exhausted.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// Plugin-specific: the switch refused or failed an operation.
    pub const SWITCH_FAILURE: u32 = 101;
    /// Plugin-specific: the address asked for belongs to another pod.
    pub const ADDRESS_IN_USE: u32 = 102;
}

/// A CNI error: what the runtime reads on stdout when the plugin fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{msg}")]
pub struct CniError {
    /// The version the error is written in.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// A well-known or plugin-specific code.
    pub code: u32,
    /// What went wrong and what to fix.
    pub msg: String,
    /// More detail, when there is any.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with `code` and `msg`.
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            cni_version: LATEST_VERSION.to_string(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// The same error with `details`.
    pub fn with_details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }
}

/// Shorthand for results of CNI operations.
pub type CniResult<T> = Result<T, CniError>;

/// The operation the runtime asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach it.
    Del,
    /// Check its attachment.
    Check,
    /// Report supported versions.
    Version,
    /// Report readiness (1.1.0).
    Status,
    /// Release what belongs to attachments that no longer exist (1.1.0).
    Gc,
}

/// The `CNI_*` environment of an invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS`; may be empty on DEL.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: String,
    /// `CNI_ARGS`, as key=value pairs.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`, split.
    pub path: Vec<PathBuf>,
}

fn env_error(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_ENVIRONMENT, msg)
}

impl Environment {
    /// Read and check the environment through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> CniResult<Environment> {
        let command = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => {
                return Err(env_error(format!(
                    "CNI_COMMAND {other:?} is not a CNI command; use ADD, DEL, CHECK, VERSION, STATUS or GC"
                )));
            }
            None => return Err(env_error("CNI_COMMAND is not set")),
        };
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = var("CNI_CONTAINERID").unwrap_or_default();
        let ifname = var("CNI_IFNAME").unwrap_or_default();
        let netns = var("CNI_NETNS")
            .filter(|n| !n.is_empty())
            .map(PathBuf::from);
        if needs_container {
            check_container_id(&container_id)?;
            check_ifname(&ifname)?;
            if netns.is_none() && command != Command::Del {
                return Err(env_error(
                    "CNI_NETNS is not set: give the path of the container's network namespace",
                ));
            }
        }
        let args = var("CNI_ARGS")
            .unwrap_or_default()
            .split(';')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) => Ok((k.to_string(), v.to_string())),
                None => Err(env_error(format!(
                    "CNI_ARGS item {pair:?} is not KEY=VALUE"
                ))),
            })
            .collect::<CniResult<_>>()?;
        let path = var("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(Environment {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }
}

fn check_container_id(id: &str) -> CniResult<()> {
    let mut chars = id.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if valid {
        Ok(())
    } else {
        Err(env_error(format!(
            "CNI_CONTAINERID {id:?} is not a container id: it must start with a letter or digit, \
             followed by letters, digits, '_', '.' or '-'"
        )))
    }
}

fn check_ifname(name: &str) -> CniResult<()> {
    let valid = !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if valid {
        Ok(())
    } else {
        Err(env_error(format!(
            "CNI_IFNAME {name:?} is not an interface name: 1 to 15 characters, no '/', ':' or spaces"
        )))
    }
}

/// DNS settings passed through to the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// An attachment the runtime still uses (GC).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct Attachment {
    /// Its container.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface.
    pub ifname: String,
}

/// The network configuration on stdin: the keys this plugin reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The spec version of the configuration and of the answer.
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// The plugin: `podswitch-cni`.
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The daemon's control socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// Where the built-in IPAM keeps its allocations.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The pod interface's MTU; the daemon's pod MTU when left out.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// How the pod is attached ([`PodInterfaceKind`]); when left out, an
    /// offloaded veth if the daemon can attach one (its `info` says so),
    /// else a veth polled through AF_XDP.
    #[serde(default)]
    pub pod_interface: Option<PodInterfaceKind>,
    /// An IPAM plugin to delegate to instead of the built-in one.
    #[serde(default)]
    pub ipam: Option<Value>,
    /// DNS settings for the result.
    #[serde(default)]
    pub dns: Option<Dns>,
    /// What the runtime filled in for the capabilities the configuration
    /// declares (the ones this plugin reads: `ips` and `mac`).
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// The previous plugin's result (chaining, DEL, CHECK).
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments still in use (the spec's key, and the one
    /// libcni also sends).
    #[serde(
        default,
        rename = "cni.dev/valid-attachments",
        alias = "cni.dev/attachments"
    )]
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// The `runtimeConfig` entries this plugin reads (the CNI conventions'
/// `ips` and `mac` capabilities); others (`portMappings`, `bandwidth`, …)
/// are for other plugins of a list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RuntimeConfig {
    /// Addresses asked for, as `address/prefix` strings.
    #[serde(default)]
    pub ips: Vec<String>,
    /// The MAC asked for.
    #[serde(default)]
    pub mac: Option<String>,
}

/// The kind of interface a pod gets (`podInterface`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodInterfaceKind {
    /// A TAP device in the pod, opened by the switch with a virtio-net
    /// header: the pod's kernel hands over 64 KB TCP segments and
    /// takes them back, checksums offloaded: 2.8× a veth pod's TCP
    /// across nodes (docs/decisions.md).
    Tap,
    /// A veth pair whose host end the switch polls through AF_XDP; the
    /// pod's offloads are off (one frame at a time). The default where
    /// the daemon cannot attach offloaded veths (Linux before 6.6).
    Veth,
    /// A veth pair whose host end the switch reads and writes through a
    /// packet socket with a virtio-net header: the pod keeps TCP
    /// segmentation and checksum offload, and its TCP crosses the switch
    /// in 64 KB super-frames as a TAP pod's does, while the pod keeps a
    /// host end like any veth pod's (docs/cni.md). The default.
    #[serde(rename = "veth-offload")]
    VethOffload,
}

/// Keys [`NetConf`] reads.
const KNOWN_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "socket",
    "dataDir",
    "mtu",
    "podInterface",
    "ipam",
    "dns",
    "runtimeConfig",
    "prevResult",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];

/// Keys a runtime or the spec may add that this plugin accepts and ignores.
/// (`cniVersions`, 1.1.0, lists versions for the runtime to choose from;
/// the one chosen arrives as `cniVersion`.)
const TOLERATED_KEYS: &[&str] = &[
    "args",
    "capabilities",
    "disableCheck",
    "disableGC",
    "cniVersions",
];

impl NetConf {
    /// Parse stdin, refusing what is not a configuration for this plugin.
    pub fn parse(stdin: &[u8]) -> CniResult<NetConf> {
        let decoding = |e: &dyn std::fmt::Display| {
            CniError::new(
                code::DECODING_FAILURE,
                format!("the network configuration on stdin is not valid: {e}"),
            )
        };
        let value: Value = serde_json::from_slice(stdin).map_err(|e| decoding(&e))?;
        let Some(object) = value.as_object() else {
            return Err(decoding(&"it is not a JSON object"));
        };
        let unknown = object.iter().find(|(k, _)| {
            !KNOWN_KEYS.contains(&k.as_str())
                && !TOLERATED_KEYS.contains(&k.as_str())
                && !k.starts_with("cni.dev/")
        });
        let conf: NetConf = serde_path_to_error::deserialize(&value).map_err(|e| {
            let path = e.path().to_string();
            decoding(&format!("{path}: {}", e.into_inner()))
        })?;
        conf.check()?;
        if let Some((key, value)) = unknown {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!(
                    "unsupported field {key:?} = {value} in the network config (podswitch-cni reads socket, dataDir, mtu, podInterface, ipam, dns)"
                ),
            ));
        }
        Ok(conf)
    }

    fn check(&self) -> CniResult<()> {
        let version = self.cni_version.as_str();
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {version:?} is not supported; use one of {}",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let invalid = |msg: String| Err(CniError::new(code::INVALID_CONFIG, msg));
        if self.plugin_type != "podswitch-cni" {
            return invalid(format!(
                "network config type is {:?}; this plugin is \"podswitch-cni\"",
                self.plugin_type
            ));
        }
        if self.name.is_empty() || self.name.contains(['/', '\0']) {
            return invalid(format!(
                "network name {:?} is not usable: give it a name without '/'",
                self.name
            ));
        }
        if let Some(mtu) = self.mtu
            && !(576..=9000).contains(&mtu)
        {
            return invalid(format!(
                "mtu {mtu} is out of range: use 576 to 9000, or leave it out for the switch's pod MTU"
            ));
        }
        if let Some(ipam) = &self.ipam
            && ipam
                .get("type")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            return invalid(
                "ipam needs a \"type\" naming an IPAM plugin (e.g. \"host-local\"); leave ipam out for podswitch's own".to_string(),
            );
        }
        Ok(())
    }
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// 1.1.0: its MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The network namespace, for the container's interface.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// 0.4.0 only: "4" or "6".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The address with its prefix.
    pub address: IpNet,
    /// The gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index of the interface in `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// What ADD returns (and chained plugins and DEL/CHECK receive back as
/// `prevResult`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResult {
    /// The version it is written in.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Interfaces made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses given.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes added.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS settings.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

impl AddResult {
    /// The result written for `version`: 0.4.0 carries an IP version on
    /// each address and no interface MTU; 1.0.0 neither; 1.1.0 the MTU.
    pub fn for_version(mut self, version: &str) -> AddResult {
        self.cni_version = version.to_string();
        for ip in &mut self.ips {
            ip.version = (version == "0.4.0").then(|| {
                if ip.address.addr().is_ipv4() {
                    "4"
                } else {
                    "6"
                }
                .to_string()
            });
        }
        if version != "1.1.0" {
            for interface in &mut self.interfaces {
                interface.mtu = None;
            }
        }
        self
    }

    /// The first IPv4 address, its prefix length and its gateway.
    pub fn ipv4(&self) -> Option<(Ipv4Addr, u8, Option<Ipv4Addr>)> {
        self.ipv4s().next()
    }

    /// Every IPv4 address, with its prefix length and gateway.
    pub fn ipv4s(&self) -> impl Iterator<Item = (Ipv4Addr, u8, Option<Ipv4Addr>)> + '_ {
        self.ips
            .iter()
            .filter_map(|ip| match (ip.address, ip.gateway) {
                (IpNet::V4(net), gateway) => Some((
                    net.addr(),
                    net.prefix_len(),
                    gateway.and_then(|g| match g {
                        IpAddr::V4(v4) => Some(v4),
                        IpAddr::V6(_) => None,
                    }),
                )),
                _ => None,
            })
    }
}

/// What VERSION returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionResult {
    /// The version of this answer.
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    /// Every version the plugin supports.
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"podnet","type":"podswitch-cni"}"#;

    #[test]
    fn environment() {
        let env = Environment::from_vars(vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME=web;IgnoreUnknown=1"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ]))
        .unwrap();
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.args["K8S_POD_NAME"], "web");
        assert_eq!(env.path.len(), 2);
        // DEL may come without a netns (ctr does that).
        let env = Environment::from_vars(vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ]))
        .unwrap();
        assert_eq!(env.netns, None);
        // VERSION needs nothing else.
        assert!(
            Environment::from_vars(vars(&[("CNI_COMMAND", "VERSION"), ("CNI_PATH", "dummy")]))
                .is_ok()
        );
    }

    #[test]
    fn environment_errors_say_what_to_fix() {
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[], "CNI_COMMAND is not set"),
            (&[("CNI_COMMAND", "ATTACH")], "ATTACH"),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "-x"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/n"),
                ],
                "CNI_CONTAINERID",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "x"),
                    ("CNI_IFNAME", "a/b"),
                    ("CNI_NETNS", "/n"),
                ],
                "CNI_IFNAME",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "x"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_NETNS",
            ),
            (
                &[
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_CONTAINERID", "x"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_NETNS", "/n"),
                    ("CNI_ARGS", "novalue"),
                ],
                "KEY=VALUE",
            ),
        ];
        for (pairs, needle) in cases {
            let err = Environment::from_vars(vars(pairs)).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENVIRONMENT);
            assert!(err.msg.contains(needle), "{}", err.msg);
        }
    }

    #[test]
    fn config_parsing_and_refusals() {
        let conf = NetConf::parse(CONF.as_bytes()).unwrap();
        assert_eq!(conf.name, "podnet");
        let chained = r#"{"cniVersion":"1.1.0","name":"n","type":"podswitch-cni","args":{},"runtimeConfig":{"portMappings":[]},
            "prevResult":{"cniVersion":"1.1.0","ips":[]},"cni.dev/valid-attachments":[{"containerID":"c","ifname":"eth0"}]}"#;
        let conf = NetConf::parse(chained.as_bytes()).unwrap();
        assert_eq!(conf.valid_attachments.unwrap().len(), 1);
        for (value, kind) in [
            ("veth", PodInterfaceKind::Veth),
            ("veth-offload", PodInterfaceKind::VethOffload),
            ("tap", PodInterfaceKind::Tap),
        ] {
            let text = format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"podswitch-cni","podInterface":"{value}"}}"#
            );
            assert_eq!(
                NetConf::parse(text.as_bytes()).unwrap().pod_interface,
                Some(kind)
            );
        }
        assert_eq!(conf.pod_interface, None, "left to the daemon's kernel");

        let cases = [
            ("not json", code::DECODING_FAILURE, "not valid"),
            (
                r#"{"name":"n","type":"podswitch-cni"}"#,
                code::DECODING_FAILURE,
                "cniVersion",
            ),
            (
                r#"{"cniVersion":"0.3.1","name":"n","type":"podswitch-cni"}"#,
                code::INCOMPATIBLE_VERSION,
                "0.4.0, 1.0.0, 1.1.0",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"bridge"}"#,
                code::INVALID_CONFIG,
                "podswitch-cni",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"podswitch-cni","mtu":70000}"#,
                code::INVALID_CONFIG,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"podswitch-cni","mtu":"big"}"#,
                code::DECODING_FAILURE,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"podswitch-cni","ipam":{}}"#,
                code::INVALID_CONFIG,
                "ipam",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"podswitch-cni","podInterface":"vhost"}"#,
                code::DECODING_FAILURE,
                "veth-offload",
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"n","type":"podswitch-cni","colour":"red"}"#,
                code::UNSUPPORTED_FIELD,
                "colour",
            ),
        ];
        for (text, expected, needle) in cases {
            let err = NetConf::parse(text.as_bytes()).unwrap_err();
            assert_eq!(err.code, expected, "{text}: {}", err.msg);
            assert!(err.msg.contains(needle), "{text}: {}", err.msg);
        }
    }

    #[test]
    fn results_per_version() {
        let result = AddResult {
            cni_version: String::new(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "0a:58:0a:f4:01:05".into(),
                mtu: Some(1450),
                sandbox: "/var/run/netns/x".into(),
            }],
            ips: vec![IpConfig {
                version: None,
                address: "10.244.1.5/24".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
            }],
            dns: Dns::default(),
        };
        let v04 = serde_json::to_value(result.clone().for_version("0.4.0")).unwrap();
        assert_eq!(v04["ips"][0]["version"], "4");
        assert!(v04["interfaces"][0].get("mtu").is_none());
        let v11 = serde_json::to_value(result.clone().for_version("1.1.0")).unwrap();
        assert!(v11["ips"][0].get("version").is_none());
        assert_eq!(v11["interfaces"][0]["mtu"], 1450);
        assert!(v11.get("dns").is_none());
        assert_eq!(result.ipv4().unwrap().0, Ipv4Addr::new(10, 244, 1, 5));
        let back: AddResult = serde_json::from_value(v04).unwrap();
        assert_eq!(back.ips[0].address.prefix_len(), 24);
    }

    #[test]
    fn errors_serialize_as_the_spec_says() {
        let e = CniError::new(code::TRY_AGAIN_LATER, "daemon down").with_details("connect: ENOENT");
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["code"], 11);
        assert_eq!(json["msg"], "daemon down");
        assert_eq!(json["details"], "connect: ENOENT");
        assert_eq!(json["cniVersion"], LATEST_VERSION);
    }
}
