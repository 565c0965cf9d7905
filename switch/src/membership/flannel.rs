//! Flannel's records in etcd, as flanneld's vxlan backend reads and writes
//! them (flannel's `pkg/subnet`, `pkg/lease` and `pkg/backend/vxlan`):
//!
//! - `<prefix>/config`: the network, e.g.
//!   `{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472}}`;
//! - `<prefix>/subnets/10.244.1.0-24`, one per node, attached to an etcd
//!   lease: `{"PublicIP": "10.1.0.11", "PublicIPv6": null, "BackendType": "vxlan",
//!   "BackendData": {"VNI": 1, "VtepMAC": "0a:70:0a:01:00:0b"}}`.
//!
//! Pure: parsing, formatting and the checks; the etcd I/O is in
//! [`super::etcd`].

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::config::{Config, PeerConfig};
use crate::mac::MacAddr;

/// The UDP port flanneld's VXLAN device uses when the network config
/// names none (the Linux kernel's default, not IANA's 4789).
pub const FLANNEL_DEFAULT_VXLAN_PORT: u16 = 8472;

/// The network config at `<prefix>/config` (the fields podswitch uses).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkConfig {
    /// The cluster's pod network, which every node's subnet is cut from.
    pub network: Ipv4Net,
    /// Prefix length of a node's subnet (flannel: 24 by default).
    #[serde(default)]
    pub subnet_len: u8,
    /// The backend every node uses.
    #[serde(default)]
    pub backend: Backend,
    /// The lowest subnet handed out (flannel: the network's second).
    #[serde(default)]
    pub subnet_min: Option<Ipv4Addr>,
    /// The highest subnet handed out (flannel: the network's last).
    #[serde(default)]
    pub subnet_max: Option<Ipv4Addr>,
}

/// `Backend` of the network config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Backend {
    /// `vxlan` (the only type podswitch speaks); flannel's default is udp.
    #[serde(rename = "Type", alias = "type", default)]
    pub kind: String,
    /// VXLAN network identifier (flannel: 1 by default).
    #[serde(rename = "VNI", alias = "vni", default)]
    pub vni: Option<u32>,
    /// VXLAN UDP port (flannel: the kernel's 8472 by default).
    #[serde(rename = "Port", alias = "port", default)]
    pub port: Option<u16>,
}

impl NetworkConfig {
    /// Parse the value at `<prefix>/config`.
    pub fn parse(value: &[u8]) -> Result<NetworkConfig, String> {
        serde_json::from_slice(value)
            .map_err(|e| format!("the network config is not flannel's: {e}"))
    }

    /// A node's subnet length as flannel takes it: `SubnetLen`, or /24
    /// in a /22 or larger network, or a quarter of a smaller one.
    pub fn subnet_len(&self) -> u8 {
        match (self.subnet_len, self.network.prefix_len()) {
            (0, network) if network <= 22 => 24,
            (0, network) => network + 2,
            (len, _) => len,
        }
    }

    /// The lowest subnet from `SubnetMin` to `SubnetMax` (flannel's
    /// defaults: all but the network's first) that is not in `taken`.
    pub fn free_subnet(&self, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
        let len = self.subnet_len();
        if len > 30 || len < self.network.prefix_len() {
            return None;
        }
        let size = 1u32 << (32 - len);
        let first = u32::from(self.network.network());
        let last = u32::from(self.network.broadcast()) - (size - 1);
        let min = self
            .subnet_min
            .map_or(first.saturating_add(size), u32::from);
        let max = self.subnet_max.map_or(last, u32::from).min(last);
        (min.max(first)..=max)
            .step_by(size as usize)
            .filter_map(|ip| Ipv4Net::new(Ipv4Addr::from(ip), len).ok())
            .find(|net| net.trunc() == *net && !taken.contains(net))
    }

    /// Whether this node, configured as `config`, can join the network:
    /// the same backend, VNI and port, and its pod CIDR inside it.
    pub fn check(&self, config: &Config) -> Result<(), String> {
        if !self.backend.kind.eq_ignore_ascii_case("vxlan") {
            return Err(format!(
                "the network's backend is {:?}; podswitch joins only a vxlan network",
                self.backend.kind
            ));
        }
        if config.encap != crate::config::Encap::Vxlan {
            return Err("the network is vxlan; set encap = \"vxlan\"".into());
        }
        let vni = self.backend.vni.unwrap_or(1);
        if vni != config.vni {
            return Err(format!(
                "the network's VNI is {vni}, this node's {}: set vni = {vni}",
                config.vni
            ));
        }
        let port = match self.backend.port {
            Some(0) | None => FLANNEL_DEFAULT_VXLAN_PORT,
            Some(port) => port,
        };
        if port != config.tunnel_udp_port() {
            return Err(format!(
                "the network's VXLAN port is {port}, this node's {}: set udp_port = {port}",
                config.tunnel_udp_port()
            ));
        }
        if !self.network.contains(&config.pod_cidr) {
            return Err(format!(
                "pod_cidr {} is outside the network {}",
                config.pod_cidr, self.network
            ));
        }
        Ok(())
    }
}

/// The value of a subnet lease (flannel's `LeaseAttrs` for vxlan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetLease {
    /// The node's underlay address, its VTEP.
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    /// IPv6 underlay address (podswitch writes none).
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<String>,
    /// `vxlan`.
    #[serde(rename = "BackendType", default)]
    pub backend_type: String,
    /// VNI and VTEP MAC.
    #[serde(rename = "BackendData", default)]
    pub backend_data: Option<VxlanData>,
}

/// `BackendData` of a vxlan lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanData {
    /// The node's VNI.
    #[serde(rename = "VNI")]
    pub vni: u32,
    /// The MAC inner frames to the node are addressed to.
    #[serde(rename = "VtepMAC")]
    pub vtep_mac: MacAddr,
}

impl SubnetLease {
    /// The lease this node, configured as `config`, writes.
    pub fn of(config: &Config) -> Result<SubnetLease, String> {
        SubnetLease::new(config.node_ip, config.vni, config.router_mac())
    }

    /// The lease of a node with VTEP `node_ip` and `vtep_mac` on `vni`.
    pub fn new(node_ip: IpAddr, vni: u32, vtep_mac: MacAddr) -> Result<SubnetLease, String> {
        let IpAddr::V4(public_ip) = node_ip else {
            return Err("flannel's layout takes an IPv4 node_ip".into());
        };
        Ok(SubnetLease {
            public_ip,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(VxlanData { vni, vtep_mac }),
        })
    }

    /// The `PublicIP` of a lease value, if it is a lease.
    pub fn public_ip(value: &[u8]) -> Option<Ipv4Addr> {
        serde_json::from_slice::<SubnetLease>(value)
            .ok()
            .map(|l| l.public_ip)
    }

    /// The JSON flannel writes.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The peer a lease for `pod_cidr` describes, or why it is no peer of
    /// a node on VNI `vni`.
    pub fn peer(value: &[u8], pod_cidr: Ipv4Net, vni: u32) -> Result<PeerConfig, String> {
        let lease: SubnetLease = serde_json::from_slice(value)
            .map_err(|e| format!("not a flannel subnet lease: {e}"))?;
        if !lease.backend_type.eq_ignore_ascii_case("vxlan") {
            return Err(format!("backend {:?}, not vxlan", lease.backend_type));
        }
        let data = lease
            .backend_data
            .ok_or("a vxlan lease without BackendData")?;
        if data.vni != vni {
            return Err(format!("VNI {}, not this network's {vni}", data.vni));
        }
        Ok(PeerConfig {
            node_ip: lease.public_ip.into(),
            pod_cidr,
            // Flannel keeps a dual-stack node's IPv6 subnet on a second
            // vxlan device of its own; not read here (see docs/membership.md).
            pod_cidr6: None,
            vtep_mac: Some(data.vtep_mac),
        })
    }
}

/// The key of `pod_cidr`'s lease under `prefix`:
/// `<prefix>/subnets/10.244.1.0-24`.
pub fn subnet_key(prefix: &str, pod_cidr: Ipv4Net) -> String {
    format!(
        "{}{}-{}",
        subnets_prefix(prefix),
        pod_cidr.network(),
        pod_cidr.prefix_len()
    )
}

/// Where the subnet leases are: `<prefix>/subnets/`.
pub fn subnets_prefix(prefix: &str) -> String {
    format!("{}/subnets/", prefix.trim_end_matches('/'))
}

/// The key of the network config: `<prefix>/config`.
pub fn config_key(prefix: &str) -> String {
    format!("{}/config", prefix.trim_end_matches('/'))
}

/// The subnet a lease key names (`…/subnets/10.244.1.0-24`), if it is
/// one (flannel's dual-stack keys, `…-24&fd00::-64`, give their IPv4 part).
pub fn parse_subnet_key(key: &str) -> Option<Ipv4Net> {
    let name = key.rsplit('/').next()?;
    let v4 = name.split('&').next()?;
    let (ip, len) = v4.split_once('-')?;
    let net = Ipv4Net::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    (net.trunc() == net).then_some(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::parse(&format!(
            "node_ip = \"10.1.0.11\"\nuplink = \"ul0\"\npod_cidr = \"10.244.1.0/24\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn keys_are_flannels() {
        let cidr: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let key = subnet_key("/coreos.com/network", cidr);
        assert_eq!(key, "/coreos.com/network/subnets/10.244.1.0-24");
        assert_eq!(subnet_key("/coreos.com/network/", cidr), key);
        assert_eq!(parse_subnet_key(&key), Some(cidr));
        assert_eq!(
            parse_subnet_key("/coreos.com/network/subnets/10.244.3.0-24&fd00:10:244:3::-64"),
            Some("10.244.3.0/24".parse().unwrap())
        );
        for bad in [
            "/x/subnets/10.244.1.1-24",
            "/x/subnets/junk",
            "/x/subnets/1.2.3.4-40",
            "",
        ] {
            assert_eq!(parse_subnet_key(bad), None, "{bad}");
        }
        assert_eq!(
            config_key("/coreos.com/network"),
            "/coreos.com/network/config"
        );
    }

    #[test]
    fn this_nodes_lease_is_what_flanneld_writes() {
        let lease = SubnetLease::of(&config("")).unwrap();
        assert_eq!(
            lease.to_json(),
            r#"{"PublicIP":"10.1.0.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:70:0a:01:00:0b"}}"#
        );
    }

    #[test]
    fn a_flanneld_lease_is_a_peer() {
        let value = br#"{"PublicIP":"10.1.0.14","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:6b:76:00:00:04"}}"#;
        let cidr = "10.244.4.0/24".parse().unwrap();
        let peer = SubnetLease::peer(value, cidr, 1).unwrap();
        assert_eq!(peer.node_ip.to_string(), "10.1.0.14");
        assert_eq!(peer.pod_cidr, cidr);
        assert_eq!(peer.vtep_mac.unwrap().to_string(), "02:6b:76:00:00:04");
        let wrong_vni = SubnetLease::peer(value, cidr, 2).unwrap_err();
        assert!(wrong_vni.contains("VNI 1"), "{wrong_vni}");
        let host_gw = br#"{"PublicIP":"10.1.0.14","BackendType":"host-gw"}"#;
        assert!(
            SubnetLease::peer(host_gw, cidr, 1)
                .unwrap_err()
                .contains("host-gw")
        );
        for junk in [&b"{"[..], b"null", b"{\"PublicIP\":\"x\"}", b"\xff"] {
            assert!(SubnetLease::peer(junk, cidr, 1).is_err());
        }
    }

    #[test]
    fn free_subnets_are_handed_out_as_flannel_does() {
        let net = |json: &str| NetworkConfig::parse(json.as_bytes()).unwrap();
        let cidr = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let default = net(r#"{"Network":"10.244.0.0/16"}"#);
        assert_eq!(default.subnet_len(), 24);
        // The network's first subnet is never handed out.
        assert_eq!(default.free_subnet(&[]), Some(cidr("10.244.1.0/24")));
        let taken = [
            cidr("10.244.1.0/24"),
            cidr("10.244.2.0/24"),
            cidr("10.244.4.0/24"),
        ];
        assert_eq!(default.free_subnet(&taken), Some(cidr("10.244.3.0/24")));
        let small = net(r#"{"Network":"10.9.0.0/26"}"#);
        assert_eq!(small.subnet_len(), 28);
        let all = [
            cidr("10.9.0.16/28"),
            cidr("10.9.0.32/28"),
            cidr("10.9.0.48/28"),
        ];
        assert_eq!(small.free_subnet(&all[..2]), Some(cidr("10.9.0.48/28")));
        assert_eq!(small.free_subnet(&all), None);
        let bounded = net(
            r#"{"Network":"10.244.0.0/16","SubnetLen":25,"SubnetMin":"10.244.8.0","SubnetMax":"10.244.8.128"}"#,
        );
        assert_eq!(
            bounded.free_subnet(&[cidr("10.244.8.0/25")]),
            Some(cidr("10.244.8.128/25"))
        );
        assert_eq!(
            bounded.free_subnet(&[cidr("10.244.8.0/25"), cidr("10.244.8.128/25")]),
            None
        );
        let nonsense = net(r#"{"Network":"10.244.0.0/16","SubnetLen":8}"#);
        assert_eq!(nonsense.free_subnet(&[]), None);
    }

    #[test]
    fn the_network_config_must_match_this_node() {
        let net = |json: &str| NetworkConfig::parse(json.as_bytes()).unwrap();
        let flannel_default =
            net(r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#);
        let e = flannel_default.check(&config("")).unwrap_err();
        assert!(e.contains("set udp_port = 8472"), "{e}");
        flannel_default.check(&config("udp_port = 8472")).unwrap();
        let other_vni =
            net(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":7,"Port":4789}}"#);
        assert!(
            other_vni
                .check(&config(""))
                .unwrap_err()
                .contains("set vni = 7")
        );
        let outside = net(r#"{"Network":"10.245.0.0/16","Backend":{"Type":"vxlan","Port":4789}}"#);
        assert!(outside.check(&config("")).unwrap_err().contains("outside"));
        let udp = net(r#"{"Network":"10.244.0.0/16"}"#);
        assert!(udp.check(&config("")).unwrap_err().contains("vxlan"));
        assert!(NetworkConfig::parse(b"{\"Network\":\"nonsense\"}").is_err());
    }
}
