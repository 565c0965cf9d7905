//! The daemon's configuration file (TOML), and its validation: a bad file
//! gets one clear error that names the key and says how to fix it.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use podswitch_encap::{Decapsulator, TunnelKind, Vni};
use serde::{Deserialize, Serialize};

use crate::mac::MacAddr;
use crate::membership::{EtcdSettings, KubernetesSettings, MembershipSource};
use crate::xdp::XdpModeChoice;

pub use podswitch_control::DEFAULT_CONTROL_SOCKET;
pub use podswitch_control::protocol::{Encap, PeerConfig, PollMode};

/// Where ports, peers and routes are persisted unless configured.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/podswitch";
/// Name of the host port (a TAP device) unless configured.
pub const DEFAULT_HOST_PORT: &str = "podsw0";
/// How long an adaptive worker keeps polling after the last packet, in
/// microseconds, unless configured: longer than a pod-to-pod round trip
/// across nodes, so a request's answer finds the worker still awake.
pub const DEFAULT_SPIN_US: u32 = 200;
/// The longest spin window `spin_us` takes: past it, busy polling is the
/// honest setting.
pub const MAX_SPIN_US: u32 = 100_000;
/// A worker's nice value while it is behind, unless the file says.
pub const DEFAULT_OVERLOAD_NICE: i32 = -10;
/// Default name of the tunnel port's TAP device.
pub const DEFAULT_TUNNEL_PORT: &str = "podswt0";

/// How TAP pods' super-frames reach peers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TunnelOffloadMode {
    /// Whole, through the tunnel port's TAP device, for the kernel to cut,
    /// where the kernel can (UDP tunnel GSO on TAP devices, Linux 6.17+);
    /// elsewhere as `udp-segment`.
    #[default]
    Auto,
    /// Cut by the switch, each super-frame's datagrams sent with one
    /// `UDP_SEGMENT` send through a UDP socket of the node's (Linux 4.18+).
    UdpSegment,
    /// Cut by the switch and sent frame by frame on the uplink (AF_XDP).
    Off,
}

/// Where peers' TCP tunnel packets are received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelReceiveMode {
    /// Through the node's kernel, merged by its GRO, into the tunnel port
    /// where it can: VXLAN over an IPv4 underlay, with the tunnel port
    /// open. Everything else through the uplink's AF_XDP socket.
    #[default]
    Auto,
    /// Every tunnel packet through the uplink's AF_XDP socket.
    Afxdp,
}

/// Who translates pods' connections to Service ClusterIPs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceTranslation {
    /// kube-proxy, in the node's stack (through the host port and
    /// `service_masquerade`).
    #[default]
    KubeProxy,
    /// The switch, before the route lookup, for the Services it knows
    /// (docs/services.md); other ClusterIPs still go to kube-proxy.
    Switch,
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's underlay address, the local VTEP.
    pub node_ip: IpAddr,
    /// The underlay interface carrying tunnel traffic.
    pub uplink: String,
    /// This node's pod CIDR; its first address is the pods' gateway.
    pub pod_cidr: Ipv4Net,
    /// This node's IPv6 pod CIDR, for dual-stack pods: each pod's IPv6
    /// address mirrors its IPv4 one ([`pod_address6`](podswitch_control::protocol::pod_address6)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
    /// The overlay's network identifier.
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// VXLAN or Geneve.
    #[serde(default)]
    pub encap: Encap,
    /// Tunnel UDP port; the encapsulation's IANA port when left out.
    #[serde(default)]
    pub udp_port: Option<u16>,
    /// Underlay IP MTU; the uplink's MTU when left out.
    #[serde(default)]
    pub underlay_mtu: Option<u16>,
    /// Remote nodes.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Where peers come from besides `peers`: `static` (this file and
    /// `podswitch peer add` only), `etcd` (Flannel's layout, `[etcd]`) or
    /// `kubernetes` (Node objects, `[kubernetes]`).
    #[serde(default)]
    pub membership: MembershipSource,
    /// The etcd source's settings.
    #[serde(default)]
    pub etcd: EtcdSettings,
    /// The Kubernetes source's settings.
    #[serde(default)]
    pub kubernetes: KubernetesSettings,
    /// CPU cores for the polling workers, one worker per core.
    #[serde(default = "default_cores")]
    pub cores: Vec<usize>,
    /// adaptive (default) or busy.
    #[serde(default)]
    pub poll_mode: PollMode,
    /// Adaptive mode: microseconds a worker keeps polling after the last
    /// packet before it sleeps in `poll()`.
    #[serde(default = "default_spin_us")]
    pub spin_us: u32,
    /// Adaptive mode: a sleeping worker lets go of its core, so a packet
    /// wakes it on the CPU that sent it rather than on an idle core; it
    /// takes its core again after 1 ms awake. False: it sleeps on its
    /// core (for cores set aside for the switch).
    #[serde(default = "default_sleep_on_any_cpu")]
    pub sleep_on_any_cpu: bool,
    /// The nice value a worker takes while it is behind (a receive batch
    /// came full), back to its own at its first idle pass; 0: never
    /// changes it.
    #[serde(default = "default_overload_nice")]
    pub overload_nice: i32,
    /// XDP attach mode: auto (native where the driver has it), native or generic.
    #[serde(default)]
    pub xdp_mode: XdpModeChoice,
    /// The Unix socket the CLI and the CNI plugin talk to.
    #[serde(default = "default_control_socket")]
    pub control_socket: PathBuf,
    /// Where ports, peers and routes are persisted across restarts.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Name of the TAP device joining the node's own stack to the pods.
    #[serde(default = "default_host_port")]
    pub host_port: String,
    /// Whether TAP pods' super-frames go to peers whole through the
    /// tunnel port, for the node's kernel (or NIC) to cut: `auto` (the
    /// default: where the kernel has UDP tunnel GSO on TAP devices, Linux
    /// 6.17+) or `off` (the switch cuts them and sends the segments on the
    /// uplink).
    #[serde(default)]
    pub tunnel_offload: TunnelOffloadMode,
    /// Where peers' TCP tunnel packets are received: `auto` (the default:
    /// VXLAN over IPv4 passes to the node's kernel, whose GRO merges each
    /// flow's packets into super-packets of up to 64 KB, and reaches the
    /// switch through the tunnel port) or `afxdp` (every tunnel packet
    /// through the uplink's socket, one frame at a time).
    #[serde(default)]
    pub tunnel_receive: TunnelReceiveMode,
    /// Name of the tunnel port's TAP device.
    #[serde(default = "default_tunnel_port")]
    pub tunnel_port: String,
    /// Prefixes routed to the host port besides the gateway address, e.g.
    /// `["0.0.0.0/0"]` so pods reach the node and, through its routing and
    /// NAT, the world.
    #[serde(default = "default_host_routes")]
    pub host_routes: Vec<Ipv4Net>,
    /// This node's router MAC (pod gateway and VTEP); derived from
    /// `node_ip` when left out.
    #[serde(default)]
    pub router_mac: Option<MacAddr>,
    /// Pod ports the node takes (kubelet's `maxPods`): each AF_XDP pod
    /// socket keeps frames set aside for its fill ring, and a pod past
    /// this is refused rather than starved.
    #[serde(default = "default_max_pods")]
    pub max_pods: u32,
    /// Buffer frames (4 KiB each) shared by every port; sized from
    /// `max_pods` when left out (see `frame_budget`).
    #[serde(default)]
    pub frame_count: Option<u32>,
    /// Check every frame's movement between rings and lists, and count any
    /// impossible one (tests turn this on; costs a little per frame).
    #[serde(default)]
    pub check_frames: bool,
    /// Where to serve Prometheus metrics (`GET /metrics`), e.g.
    /// `"10.1.0.11:9469"`; off when left out.
    #[serde(default)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Masquerade connections the node's stack DNATs from the host port
    /// back out of it (pods to kube-proxy's Services), in the daemon's
    /// nftables table `ip podswitch` (see docs/services.md); on by
    /// default.
    #[serde(default = "default_masquerade")]
    pub service_masquerade: bool,
    /// Masquerade pods' connections that leave the node by an interface
    /// other than the host port (to the world) to that interface's
    /// address, in the same table, as Flannel's `--ip-masq` does; on by
    /// default. Pod-to-pod traffic is never masqueraded.
    #[serde(default = "default_masquerade")]
    pub egress_masquerade: bool,
    /// Who translates connections to Service ClusterIPs: `kube-proxy`
    /// (the default) or `switch`.
    #[serde(default)]
    pub service_translation: ServiceTranslation,
    /// A JSON list of Services for the switch to translate (docs/services.md),
    /// read at start and whenever it changes; with
    /// `service_translation = "switch"` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services_file: Option<PathBuf>,
    /// A JSON object of namespaces, pods and NetworkPolicies for the
    /// switch to enforce (docs/policy.md), read at start and whenever it
    /// changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_file: Option<PathBuf>,
}

/// The VNI when the file names none.
pub(crate) fn default_vni() -> u32 {
    1
}
fn default_spin_us() -> u32 {
    DEFAULT_SPIN_US
}
fn default_sleep_on_any_cpu() -> bool {
    true
}
fn default_overload_nice() -> i32 {
    DEFAULT_OVERLOAD_NICE
}
fn default_cores() -> Vec<usize> {
    vec![0]
}
fn default_control_socket() -> PathBuf {
    DEFAULT_CONTROL_SOCKET.into()
}
fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_host_port() -> String {
    DEFAULT_HOST_PORT.into()
}
fn default_host_routes() -> Vec<Ipv4Net> {
    vec![Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is a valid prefix")]
}
fn default_tunnel_port() -> String {
    DEFAULT_TUNNEL_PORT.into()
}
fn default_masquerade() -> bool {
    true
}
fn default_max_pods() -> u32 {
    crate::frame_budget::DEFAULT_MAX_PODS
}

/// A configuration problem: the key at fault and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message, which names the key and the line.
        message: String,
    },
    /// A value is well-formed but unusable.
    #[error("config key `{key}`: {problem}; {fix}")]
    Invalid {
        /// The key at fault.
        key: String,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
}

fn invalid(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })
}

/// Longest interface name Linux accepts.
const IFNAME_MAX: usize = 15;

impl Config {
    /// Read and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_file(path)?;
        Config::parse_file(path, &text)
    }

    /// [`Config::parse`], naming `path` in a parse error.
    fn parse_file(path: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::parse(text).map_err(|err| match err {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.into(),
                message,
            },
            other => other,
        })
    }

    /// Read and validate a configuration file whose `pod_cidr` may be
    /// left to `assign` (etcd's), which is given the file's text when it
    /// has none and answers the pod CIDR to use, or `None` to leave it
    /// missing (an error).
    pub fn load_assigning(
        path: &Path,
        assign: impl FnOnce(&str) -> anyhow::Result<Option<Ipv4Net>>,
    ) -> anyhow::Result<Config> {
        let text = read_file(path)?;
        let assigned = match toml::from_str::<toml::Table>(&text) {
            Ok(table) if !table.contains_key("pod_cidr") => assign(&text)?,
            _ => None,
        };
        let text = match assigned {
            Some(cidr) => format!("pod_cidr = \"{cidr}\"\n{text}"),
            None => text,
        };
        Ok(Config::parse_file(path, &text)?)
    }

    /// Parse and validate configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|err| ConfigError::Parse {
            path: PathBuf::new(),
            message: err.to_string().trim_end().to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Check what the types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_ifname("uplink", &self.uplink)?;
        check_ifname("host_port", &self.host_port)?;
        check_ifname("tunnel_port", &self.tunnel_port)?;
        if self.tunnel_offload == TunnelOffloadMode::Auto && self.tunnel_port == self.host_port {
            return Err(invalid(
                "tunnel_port",
                format!("{} is also the host port", self.tunnel_port),
                "give the tunnel port a name of its own (the default is podswt0)",
            ));
        }
        if self.services_file.is_some() && self.service_translation != ServiceTranslation::Switch {
            return Err(invalid(
                "services_file",
                "is set but the switch does not translate Services",
                "set service_translation = \"switch\", or remove services_file",
            ));
        }
        if Vni::new(self.vni).is_none() {
            return Err(invalid(
                "vni",
                format!("{} does not fit in 24 bits", self.vni),
                "use a VNI from 0 to 16777215",
            ));
        }
        if self.membership == MembershipSource::Etcd
            && let Some((key, problem, fix)) = self.etcd.problem()
        {
            return Err(invalid(key, problem, fix));
        }
        if self.udp_port == Some(0) {
            return Err(invalid(
                "udp_port",
                "0 is not a port",
                "leave it out for the IANA port (4789 VXLAN, 6081 Geneve)",
            ));
        }
        if self.pod_cidr.prefix_len() > 30 {
            return Err(invalid(
                "pod_cidr",
                format!("{} leaves no room for pods", self.pod_cidr),
                "use a prefix of /30 or shorter, e.g. 10.244.1.0/24",
            ));
        }
        check_network_address("pod_cidr", self.pod_cidr.into())?;
        if let Some(cidr6) = self.pod_cidr6 {
            check_network_address("pod_cidr6", cidr6.into())?;
            if 128 - cidr6.prefix_len() < 32 - self.pod_cidr.prefix_len() {
                return Err(invalid(
                    "pod_cidr6",
                    format!(
                        "{cidr6} has fewer addresses than pod_cidr {}",
                        self.pod_cidr
                    ),
                    "give it at least as many host bits as pod_cidr, e.g. a /64",
                ));
            }
        }
        if let Some(mtu) = self.underlay_mtu
            && !(576..=9216).contains(&mtu)
        {
            return Err(invalid(
                "underlay_mtu",
                format!("{mtu} is out of range"),
                "use the underlay's IP MTU, 576 to 9216 (1500 on most networks)",
            ));
        }
        if self.spin_us > MAX_SPIN_US {
            return Err(invalid(
                "spin_us",
                format!("{} µs is longer than {MAX_SPIN_US} µs", self.spin_us),
                format!(
                    "use 0 to {MAX_SPIN_US} (the default is {DEFAULT_SPIN_US}), or poll_mode = \"busy\" \
                     for a worker that never sleeps"
                ),
            ));
        }
        if !(-20..=0).contains(&self.overload_nice) {
            return Err(invalid(
                "overload_nice",
                format!(
                    "{} is not a nice value a worker can go up to",
                    self.overload_nice
                ),
                format!(
                    "use -20 (the highest priority) to 0 (never change it); the default is \
                     {DEFAULT_OVERLOAD_NICE}"
                ),
            ));
        }
        if self.cores.is_empty() {
            return Err(invalid(
                "cores",
                "no cores listed",
                "list at least one CPU core, e.g. cores = [1]",
            ));
        }
        let twice = self.cores.iter().enumerate().find_map(|(i, core)| {
            let first = self.cores.iter().position(|c| c == core)?;
            (first < i).then_some((first, i, core))
        });
        if let Some((first, second, core)) = twice {
            return Err(invalid(
                "cores",
                format!("core {core} is listed twice (entries {first} and {second})"),
                "list each core once: two polling workers on one core spin against each other \
                 and each waits out the other's time slice",
            ));
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(&core) = self.cores.iter().find(|&&c| c >= cpus) {
            return Err(invalid(
                "cores",
                format!("core {core} does not exist (this machine has {cpus})"),
                format!("use cores from 0 to {}", cpus - 1),
            ));
        }
        if let Some(frames) = self.frame_count
            && !(1024..=1 << 20).contains(&frames)
        {
            return Err(invalid(
                "frame_count",
                format!("{frames} is out of range"),
                "use 1024 to 1048576 frames (4 KiB each), or leave it out to size it from max_pods",
            ));
        }
        if !(1..=4096).contains(&self.max_pods) {
            return Err(invalid(
                "max_pods",
                format!("{} is out of range", self.max_pods),
                "use 1 to 4096 (110 is the Kubernetes default)",
            ));
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let key = format!("peers[{i}]");
            if peer.node_ip.is_ipv4() != self.node_ip.is_ipv4() {
                return Err(invalid(
                    &format!("{key}.node_ip"),
                    format!(
                        "{} is not the same IP family as node_ip {}",
                        peer.node_ip, self.node_ip
                    ),
                    "give every node an underlay address of one family",
                ));
            }
            if peer.node_ip == self.node_ip {
                return Err(invalid(
                    &format!("{key}.node_ip"),
                    format!("{} is this node's own address", peer.node_ip),
                    "list only the other nodes as peers",
                ));
            }
            check_network_address(&format!("{key}.pod_cidr"), peer.pod_cidr.into())?;
            if peer.pod_cidr.contains(&self.pod_cidr) || self.pod_cidr.contains(&peer.pod_cidr) {
                return Err(invalid(
                    &format!("{key}.pod_cidr"),
                    format!(
                        "{} overlaps this node's pod_cidr {}",
                        peer.pod_cidr, self.pod_cidr
                    ),
                    "give every node its own pod CIDR",
                ));
            }
            if let Some(cidr6) = peer.pod_cidr6 {
                check_network_address(&format!("{key}.pod_cidr6"), cidr6.into())?;
                if let Some(own) = self.pod_cidr6
                    && (own.contains(&cidr6) || cidr6.contains(&own))
                {
                    return Err(invalid(
                        &format!("{key}.pod_cidr6"),
                        format!("{cidr6} overlaps this node's pod_cidr6 {own}"),
                        "give every node its own IPv6 pod CIDR",
                    ));
                }
            }
        }
        Ok(())
    }

    /// How long an adaptive worker keeps polling after its last packet.
    pub fn spin(&self) -> Duration {
        Duration::from_micros(self.spin_us.into())
    }

    /// The tunnel's UDP port.
    pub fn tunnel_udp_port(&self) -> u16 {
        self.udp_port
            .unwrap_or_else(|| TunnelKind::from(self.encap).default_udp_port())
    }

    /// The checks for tunnel packets arriving on the uplink, whose MAC is
    /// `uplink_mac`: this node's VTEP, tunnel, port and VNI; checksums
    /// left unfinished are taken from a `veth_uplink`, which hands them
    /// across so.
    pub fn decapsulator(&self, uplink_mac: MacAddr, veth_uplink: bool) -> Decapsulator {
        Decapsulator {
            udp_port: self.tunnel_udp_port(),
            local_mac: Some(uplink_mac.into()),
            unfinished_checksums: veth_uplink,
            ..Decapsulator::new(self.encap.into(), self.node_ip, self.vni())
        }
    }

    /// The validated VNI.
    pub fn vni(&self) -> Vni {
        Vni::new(self.vni).unwrap_or_default()
    }

    /// The pods' gateway: the first address of the pod CIDR.
    pub fn gateway(&self) -> Ipv4Addr {
        pod_gateway(self.pod_cidr)
    }

    /// The node's own IPv4 addresses as its pods see them: the gateway
    /// (the host port's) and the node IP.
    pub fn node_addresses(&self) -> Vec<Ipv4Addr> {
        let mut addresses = vec![self.gateway()];
        if let IpAddr::V4(node_ip) = self.node_ip {
            addresses.push(node_ip);
        }
        addresses
    }

    /// The router MAC: configured, or derived from the node IP.
    pub fn router_mac(&self) -> MacAddr {
        self.router_mac
            .unwrap_or_else(|| MacAddr::derived_from(self.node_ip))
    }
}

/// The gateway of a pod CIDR: its first host address.
pub fn pod_gateway(pod_cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pod_cidr.network()) + 1)
}

/// A CIDR under `key` must be written as its network address.
fn check_network_address(key: &str, cidr: IpNet) -> Result<(), ConfigError> {
    if cidr.trunc() != cidr {
        return Err(invalid(
            key,
            format!("{cidr} has host bits set"),
            format!("write the network address: {}", cidr.trunc()),
        ));
    }
    Ok(())
}

fn check_ifname(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > IFNAME_MAX || name.contains(['/', ' ', '\0']) {
        return Err(invalid(
            key,
            format!("{name:?} is not an interface name"),
            "use 1 to 15 characters without '/' or spaces",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
node_ip = "10.1.0.11"
uplink = "eth0"
pod_cidr = "10.244.1.0/24"
"#;

    fn error(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.vni, 1);
        assert_eq!(c.encap, Encap::Vxlan);
        assert_eq!(c.tunnel_udp_port(), 4789);
        assert_eq!(c.poll_mode, PollMode::Adaptive);
        assert_eq!(c.spin_us, DEFAULT_SPIN_US);
        assert_eq!(c.spin(), Duration::from_micros(DEFAULT_SPIN_US.into()));
        assert_eq!(c.cores, vec![0]);
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!(c.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(c.host_routes, vec!["0.0.0.0/0".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(c.router_mac().to_string(), "0a:70:0a:01:00:0b");
        assert!(c.service_masquerade);
        assert!(c.egress_masquerade);
        assert_eq!(c.service_translation, ServiceTranslation::KubeProxy);
        assert_eq!(c.metrics_address, None);
    }

    #[test]
    fn services_file_needs_the_switchs_translation() {
        let e = error(&format!(
            "{MINIMAL}services_file = \"/etc/podswitch/services.json\"\n"
        ));
        assert!(
            e.contains("services_file") && e.contains("service_translation"),
            "{e}"
        );
        let c = Config::parse(&format!(
            "{MINIMAL}service_translation = \"switch\"\nservices_file = \"/etc/s.json\"\n"
        ))
        .unwrap();
        assert_eq!(c.services_file, Some(PathBuf::from("/etc/s.json")));
        let c = Config::parse(&format!("{MINIMAL}policy_file = \"/etc/p.json\"\n")).unwrap();
        assert_eq!(c.policy_file, Some(PathBuf::from("/etc/p.json")));
        let e = error(&format!("{MINIMAL}service_translation = \"iptables\"\n"));
        assert!(e.contains("service_translation"), "{e}");
    }

    #[test]
    fn metrics_address_is_an_address_and_port() {
        let c = Config::parse(&format!("{MINIMAL}metrics_address = \"10.1.0.11:9469\"\n")).unwrap();
        assert_eq!(c.metrics_address, Some("10.1.0.11:9469".parse().unwrap()));
        let e = error(&format!("{MINIMAL}metrics_address = \"10.1.0.11\"\n"));
        assert!(e.contains("metrics_address"), "{e}");
    }

    #[test]
    fn full_config() {
        let text = format!(
            "{MINIMAL}{}",
            r#"
vni = 42
encap = "geneve"
udp_port = 6082
cores = [0]
poll_mode = "busy"
spin_us = 50
xdp_mode = "generic"
control_socket = "/tmp/ps.sock"
host_routes = []
service_masquerade = false
egress_masquerade = false
service_translation = "switch"
[[peers]]
node_ip = "10.1.0.12"
pod_cidr = "10.244.2.0/24"
[[peers]]
node_ip = "10.1.0.13"
pod_cidr = "10.244.3.0/24"
vtep_mac = "02:00:00:00:00:13"
"#
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.encap, Encap::Geneve);
        assert_eq!(c.tunnel_udp_port(), 6082);
        assert_eq!(c.peers.len(), 2);
        assert_eq!(
            c.peers[1].vtep_mac.unwrap().to_string(),
            "02:00:00:00:00:13"
        );
        assert_eq!(c.xdp_mode, XdpModeChoice::Generic);
        assert_eq!(c.spin(), Duration::from_micros(50));
        assert!(!c.service_masquerade);
        assert!(!c.egress_masquerade);
        assert_eq!(c.service_translation, ServiceTranslation::Switch);
    }

    #[test]
    fn overload_nice_from_off_to_the_highest_priority() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.overload_nice, DEFAULT_OVERLOAD_NICE);
        for nice in [-20, -1, 0] {
            let c = Config::parse(&format!("{MINIMAL}overload_nice = {nice}\n")).unwrap();
            assert_eq!(c.overload_nice, nice);
        }
        for nice in [-21, 1, 19] {
            let e = error(&format!("{MINIMAL}overload_nice = {nice}\n"));
            assert!(
                e.contains("`overload_nice`") && e.contains("use -20") && e.contains("0 (never"),
                "{e}"
            );
        }
    }

    #[test]
    fn workers_sleep_on_any_cpu_unless_told_not_to() {
        assert!(Config::parse(MINIMAL).unwrap().sleep_on_any_cpu);
        let c = Config::parse(&format!("{MINIMAL}sleep_on_any_cpu = false\n")).unwrap();
        assert!(!c.sleep_on_any_cpu);
        let e = error(&format!("{MINIMAL}sleep_on_any_cpu = \"yes\"\n"));
        assert!(e.contains("sleep_on_any_cpu"), "{e}");
    }

    #[test]
    fn spin_windows_from_none_to_the_limit() {
        for spin_us in [0, 1, MAX_SPIN_US] {
            let c = Config::parse(&format!("{MINIMAL}spin_us = {spin_us}\n")).unwrap();
            assert_eq!(c.spin_us, spin_us);
        }
        let e = error(&format!("{MINIMAL}spin_us = {}\n", MAX_SPIN_US + 1));
        assert!(
            e.contains("`spin_us`") && e.contains("use 0 to 100000") && e.contains("busy"),
            "{e}"
        );
        let e = error(&format!("{MINIMAL}spin_us = -5\n"));
        assert!(e.contains("spin_us"), "{e}");
        let e = error(&format!("{MINIMAL}spin_us = \"200us\"\n"));
        assert!(e.contains("spin_us"), "{e}");
    }

    #[test]
    fn membership_is_static_unless_etcd_is_chosen_with_its_settings() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.membership, MembershipSource::Static);
        let c = Config::parse(&format!("{MINIMAL}membership = \"etcd\"\n")).unwrap();
        assert_eq!(c.etcd.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(c.etcd.prefix, "/coreos.com/network");
        assert_eq!(c.etcd.lease_ttl_s, 60);
        let c = Config::parse(&format!(
            "{MINIMAL}membership = \"etcd\"\n[etcd]\nendpoints = [\"http://10.1.0.2:2379\"]\n\
             prefix = \"/x\"\nlease_ttl_s = 10\n"
        ))
        .unwrap();
        assert_eq!((c.etcd.prefix.as_str(), c.etcd.lease_ttl_s), ("/x", 10));
        for (bad, key) in [
            ("endpoints = []", "etcd.endpoints"),
            ("endpoints = [\"https://a:2379\"]", "etcd.endpoints"),
            ("prefix = \"x\"", "etcd.prefix"),
            ("lease_ttl_s = 1", "etcd.lease_ttl_s"),
        ] {
            let e = error(&format!("{MINIMAL}membership = \"etcd\"\n[etcd]\n{bad}\n"));
            assert!(e.contains(key), "{bad}: {e}");
        }
        let c = Config::parse(&format!("{MINIMAL}membership = \"kubernetes\"\n")).unwrap();
        assert_eq!(c.kubernetes, KubernetesSettings::default());
        let c = Config::parse(&format!(
            "{MINIMAL}membership = \"kubernetes\"\n[kubernetes]\nkubeconfig = \"/k\"\n\
             node_name = \"n1\"\naddress = \"internal-ip\"\n"
        ))
        .unwrap();
        assert_eq!(c.kubernetes.node_name(), "n1");
        assert_eq!(
            c.kubernetes.address,
            crate::membership::NodeAddress::InternalIp
        );
        let e = error(&format!("{MINIMAL}membership = \"consul\"\n"));
        assert!(e.contains("membership"), "{e}");
        let e = error(&format!("{MINIMAL}[kubernetes]\naddress = \"dns\"\n"));
        assert!(e.contains("address"), "{e}");
    }

    #[test]
    fn a_pod_cidr_left_out_is_asked_for_and_one_written_is_kept() {
        let dir = std::env::temp_dir().join(format!("podswitch-assign-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("node.toml");
        let without = MINIMAL.replace("pod_cidr = \"10.244.1.0/24\"\n", "");
        std::fs::write(&path, format!("{without}membership = \"etcd\"\n")).unwrap();
        let assigned = Config::load_assigning(&path, |text| {
            assert!(text.contains("membership"));
            Ok(Some("10.244.7.0/24".parse()?))
        })
        .unwrap();
        assert_eq!(assigned.pod_cidr.to_string(), "10.244.7.0/24");
        let e = Config::load_assigning(&path, |_| Ok(None)).unwrap_err();
        assert!(e.to_string().contains("pod_cidr"), "{e}");
        std::fs::write(&path, MINIMAL).unwrap();
        let kept = Config::load_assigning(&path, |_| panic!("not asked")).unwrap();
        assert_eq!(kept.pod_cidr.to_string(), "10.244.1.0/24");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_key_and_the_fix() {
        let e = error("node_ip = \"10.1.0.11\"\nuplink = \"eth0\"\n");
        assert!(e.contains("pod_cidr"), "{e}");

        let e = error(&MINIMAL.replace("10.244.1.0/24", "10.244.1.0/33"));
        assert!(e.contains("pod_cidr"), "{e}");

        let e = error(&format!("{MINIMAL}vni = 16777216\n"));
        assert!(e.contains("`vni`") && e.contains("0 to 16777215"), "{e}");

        let e = error(&format!("{MINIMAL}encap = \"gre\"\n"));
        assert!(e.contains("encap") && e.contains("vxlan"), "{e}");

        let e = error(&format!("{MINIMAL}colour = \"blue\"\n"));
        assert!(e.contains("colour"), "{e}");

        let e = error(&MINIMAL.replace("10.244.1.0/24", "10.244.1.7/24"));
        assert!(
            e.contains("host bits") && e.contains("10.244.1.0/24"),
            "{e}"
        );

        let e = error(&MINIMAL.replace("eth0", "an-interface-name-too-long"));
        assert!(e.contains("`uplink`"), "{e}");

        let e = error(&format!("{MINIMAL}cores = [0, 0]\n"));
        assert!(
            e.contains("`cores`") && e.contains("core 0 is listed twice") && e.contains("once"),
            "{e}"
        );

        let e = error(&format!("{MINIMAL}cores = [4096]\n"));
        assert!(e.contains("`cores`") && e.contains("does not exist"), "{e}");

        let e = error(&format!(
            "{MINIMAL}[[peers]]\nnode_ip = \"10.1.0.12\"\npod_cidr = \"10.244.0.0/16\"\n"
        ));
        assert!(
            e.contains("peers[0].pod_cidr") && e.contains("overlaps"),
            "{e}"
        );

        let e = error(&format!(
            "{MINIMAL}[[peers]]\nnode_ip = \"fd00::12\"\npod_cidr = \"10.244.2.0/24\"\n"
        ));
        assert!(
            e.contains("peers[0].node_ip") && e.contains("family"),
            "{e}"
        );

        let e = error(&format!("{MINIMAL}underlay_mtu = 100\n"));
        assert!(e.contains("underlay_mtu"), "{e}");
    }

    #[test]
    fn ipv6_pod_cidrs_are_checked() {
        let dual = format!("{MINIMAL}pod_cidr6 = \"fd00:10:244:1::/64\"\n");
        let c = Config::parse(&dual).unwrap();
        assert_eq!(c.pod_cidr6, Some("fd00:10:244:1::/64".parse().unwrap()));

        let e = error(&dual.replace("1::/64", "1::5/64"));
        assert!(e.contains("`pod_cidr6`") && e.contains("host bits"), "{e}");
        // Fewer host bits than the IPv4 pod CIDR: not every pod mirrors.
        let e = error(&dual.replace("1::/64", "1::/124"));
        assert!(e.contains("`pod_cidr6`") && e.contains("host bits"), "{e}");

        let peer = |cidr6: &str| {
            format!(
                "{dual}[[peers]]\nnode_ip = \"10.1.0.12\"\npod_cidr = \"10.244.2.0/24\"\n\
                 pod_cidr6 = \"{cidr6}\"\n"
            )
        };
        assert!(Config::parse(&peer("fd00:10:244:2::/64")).is_ok());
        let e = error(&peer("fd00:10:244::/48"));
        assert!(
            e.contains("peers[0].pod_cidr6") && e.contains("overlaps"),
            "{e}"
        );
    }

    #[test]
    fn load_names_the_file() {
        let e = Config::load(Path::new("/nonexistent/podswitch.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/podswitch.toml"));
    }
}
