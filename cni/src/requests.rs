//! What a runtime asks of one pod beyond the network configuration: a
//! fixed address and a fixed MAC (podman's `--ip` and `--mac-address`), as
//! the CNI conventions pass them — `IP=` and `MAC=` in `CNI_ARGS` (other
//! keys there are ignored, as `IgnoreUnknown` asks), and the `ips` and
//! `mac` capabilities in `runtimeConfig`, which a runtime fills in only
//! for a network whose configuration declares
//! `"capabilities": {"ips": true, "mac": true}`.
//!
//! A request is honoured or refused, never ignored: a value that is not an
//! address, an IPv6 address (the pod network is IPv4), two different
//! addresses or MACs, an address the node's pod CIDR cannot give, or a MAC
//! that is not a pod's is a CNI error naming the value and the fix.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use podswitch_control::MacAddr;

use crate::ipam::unusable;
use crate::spec::{CniError, CniResult, Environment, NetConf, code};

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A `CNI_ARGS` key (`IP` or `MAC`).
    CniArgs,
    /// A `runtimeConfig` capability (`ips` or `mac`).
    RuntimeConfig,
}

impl Source {
    /// The spec's code for a bad value from here: an environment variable
    /// or the network configuration.
    fn code(self) -> u32 {
        match self {
            Source::CniArgs => code::INVALID_ENVIRONMENT,
            Source::RuntimeConfig => code::INVALID_CONFIG,
        }
    }
}

/// A requested value and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requested<T> {
    /// The value.
    pub value: T,
    /// `CNI_ARGS` or `runtimeConfig`.
    pub source: Source,
    /// The key it came under, as the runtime wrote it.
    key: &'static str,
}

impl<T> Requested<T> {
    fn error(&self, msg: String) -> CniError {
        CniError::new(self.source.code(), msg)
    }
}

impl<T> fmt::Display for Requested<T> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.source {
            Source::CniArgs => write!(f, "CNI_ARGS {}", self.key),
            Source::RuntimeConfig => write!(f, "runtimeConfig {}", self.key),
        }
    }
}

/// The address and MAC asked for, if any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requests {
    /// The pod's IPv4 address.
    pub ip: Option<Requested<Ipv4Addr>>,
    /// The pod interface's MAC.
    pub mac: Option<Requested<MacAddr>>,
}

impl Requests {
    /// Read the requests of `env` and `conf`, refusing what cannot be
    /// honoured whatever the node.
    pub fn parse(env: &Environment, conf: &NetConf) -> CniResult<Requests> {
        let mut ips = Vec::new();
        if let Some(text) = env.args.get("IP").filter(|t| !t.is_empty()) {
            for item in text.split(',') {
                ips.push(address(item.trim(), Source::CniArgs, "IP")?);
            }
        }
        for item in &conf.runtime_config.ips {
            ips.push(address(item.trim(), Source::RuntimeConfig, "ips")?);
        }
        let mut macs = Vec::new();
        if let Some(text) = env.args.get("MAC").filter(|t| !t.is_empty()) {
            macs.push(mac(text, Source::CniArgs, "MAC")?);
        }
        if let Some(text) = conf.runtime_config.mac.as_deref().filter(|t| !t.is_empty()) {
            macs.push(mac(text, Source::RuntimeConfig, "mac")?);
        }
        Ok(Requests {
            ip: one(
                ips,
                "address",
                "a pod gets one IPv4 address on this network",
            )?,
            mac: one(macs, "MAC", "a pod interface has one MAC")?,
        })
    }

    /// Refuse what this node cannot give: an address outside its pod
    /// CIDR `pool` or reserved in it (network, broadcast, `gateway`), or
    /// the switch's own `router_mac`.
    pub fn check(&self, pool: Ipv4Net, gateway: Ipv4Addr, router_mac: MacAddr) -> CniResult<()> {
        if let Some(ip) = &self.ip
            && let Some(why) = unusable(pool, gateway, ip.value)
        {
            return Err(ip.error(format!(
                "the requested address {} ({ip}) is {why}: ask for a free address of {pool} \
                 other than {gateway} (the gateway), {} and {}, or ask for none to get a free one",
                ip.value,
                pool.network(),
                pool.broadcast()
            )));
        }
        if let Some(mac) = &self.mac
            && mac.value == router_mac
        {
            return Err(mac.error(format!(
                "the requested MAC {} ({mac}) is the switch's router MAC, which answers for \
                 the pods' gateway: ask for another unicast MAC, or for none",
                mac.value
            )));
        }
        Ok(())
    }
}

/// One requested IPv4 address, `a.b.c.d` or `a.b.c.d/prefix` (the prefix
/// is the pod CIDR's whatever is written).
fn address(text: &str, source: Source, key: &'static str) -> CniResult<Requested<Ipv4Addr>> {
    let requested = Requested {
        value: Ipv4Addr::UNSPECIFIED,
        source,
        key,
    };
    let bare = text.split_once('/').map_or(text, |(address, _)| address);
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(value)) if text == bare || text.parse::<Ipv4Net>().is_ok() => {
            Ok(Requested { value, ..requested })
        }
        Ok(IpAddr::V6(_)) => Err(requested.error(format!(
            "{requested} asks for {text}, an IPv6 address; the podswitch pod network is IPv4: \
             ask for an IPv4 address of the node's pod CIDR"
        ))),
        _ => Err(requested.error(format!(
            "{requested} {text:?} is not an IPv4 address: write it like 10.244.1.50{}",
            if source == Source::RuntimeConfig {
                "/24"
            } else {
                ""
            }
        ))),
    }
}

/// One requested MAC: a unicast address other than all zeros.
fn mac(text: &str, source: Source, key: &'static str) -> CniResult<Requested<MacAddr>> {
    let requested = Requested {
        value: MacAddr::default(),
        source,
        key,
    };
    let value = text
        .trim()
        .to_ascii_lowercase()
        .parse::<MacAddr>()
        .map_err(|_| {
            requested.error(format!(
            "{requested} {text:?} is not a MAC address: write six hex bytes like 02:42:0a:f4:01:32"
        ))
        })?;
    let requested = Requested { value, ..requested };
    let why = if value.is_multicast() {
        "a multicast (or broadcast) address: the first byte must be even"
    } else if value == MacAddr::default() {
        "all zeros"
    } else {
        return Ok(requested);
    };
    Err(requested.error(format!(
        "the requested MAC {value} ({requested}) is {why}; a pod's MAC must be unicast: \
         ask for one like 02:42:0a:f4:01:32 (locally administered), or for none"
    )))
}

/// The one value of `requests` (the same value asked for twice counts
/// once), or an error when they differ.
fn one<T: PartialEq + fmt::Display>(
    requests: Vec<Requested<T>>,
    what: &str,
    why: &str,
) -> CniResult<Option<Requested<T>>> {
    let mut requests = requests.into_iter();
    let Some(first) = requests.next() else {
        return Ok(None);
    };
    match requests.find(|other| other.value != first.value) {
        None => Ok(Some(first)),
        Some(other) => Err(other.error(format!(
            "{first} asks for {what} {} and {other} for {}: {why}; ask for one",
            first.value, other.value
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Command, NetConf};

    fn env(args: &str) -> Environment {
        Environment::from_vars(|name| match name {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_CONTAINERID" => Some("c1".into()),
            "CNI_NETNS" => Some("/var/run/netns/x".into()),
            "CNI_IFNAME" => Some("eth0".into()),
            "CNI_ARGS" => Some(args.into()),
            _ => None,
        })
        .unwrap()
    }

    fn conf(runtime_config: &str) -> NetConf {
        NetConf::parse(
            format!(
                r#"{{"cniVersion":"1.0.0","name":"podnet","type":"podswitch-cni","runtimeConfig":{runtime_config}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    fn parse(args: &str, runtime_config: &str) -> CniResult<Requests> {
        Requests::parse(&env(args), &conf(runtime_config))
    }

    #[test]
    fn both_conventions_are_read() {
        assert_eq!(env("").command, Command::Add);
        let none = parse("IgnoreUnknown=1;K8S_POD_NAME=web", "{}").unwrap();
        assert_eq!(none, Requests::default());
        let args = parse("IgnoreUnknown=1;IP=10.244.1.50;MAC=02:42:0A:F4:01:32", "{}").unwrap();
        let ip = args.ip.unwrap();
        assert_eq!(ip.value, Ipv4Addr::new(10, 244, 1, 50));
        assert_eq!(ip.source, Source::CniArgs);
        assert_eq!(ip.to_string(), "CNI_ARGS IP");
        assert_eq!(
            args.mac.unwrap().value,
            "02:42:0a:f4:01:32".parse::<MacAddr>().unwrap()
        );
        let capabilities = parse(
            "",
            r#"{"ips":["10.244.1.60/24"],"mac":"02:00:00:00:00:01","portMappings":[]}"#,
        )
        .unwrap();
        assert_eq!(
            capabilities.ip.unwrap().value,
            Ipv4Addr::new(10, 244, 1, 60)
        );
        assert_eq!(capabilities.mac.unwrap().to_string(), "runtimeConfig mac");
        // The same address through both is one request.
        let both = parse("IP=10.244.1.60", r#"{"ips":["10.244.1.60/24"]}"#).unwrap();
        assert_eq!(both.ip.unwrap().value, Ipv4Addr::new(10, 244, 1, 60));
        // Empty values ask for nothing.
        assert_eq!(parse("IP=;MAC=", r#"{"mac":""}"#).unwrap(), none);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_with_the_value_and_the_fix() {
        let cases = [
            (
                "IP=10.244.1.300",
                "{}",
                code::INVALID_ENVIRONMENT,
                "10.244.1.300",
            ),
            (
                "IP=web",
                "{}",
                code::INVALID_ENVIRONMENT,
                "not an IPv4 address",
            ),
            (
                "",
                r#"{"ips":["10.244.1.5/99"]}"#,
                code::INVALID_CONFIG,
                "10.244.1.5/99",
            ),
            (
                "",
                r#"{"ips":["fd00::5/64"]}"#,
                code::INVALID_CONFIG,
                "IPv6",
            ),
            (
                "IP=10.244.1.5,10.244.1.6",
                "{}",
                code::INVALID_ENVIRONMENT,
                "one IPv4 address",
            ),
            (
                "IP=10.244.1.5",
                r#"{"ips":["10.244.1.6/24"]}"#,
                code::INVALID_CONFIG,
                "10.244.1.6",
            ),
            (
                "MAC=02:42:0a",
                "{}",
                code::INVALID_ENVIRONMENT,
                "not a MAC address",
            ),
            (
                "MAC=01:00:5e:00:00:01",
                "{}",
                code::INVALID_ENVIRONMENT,
                "multicast",
            ),
            (
                "",
                r#"{"mac":"ff:ff:ff:ff:ff:ff"}"#,
                code::INVALID_CONFIG,
                "ff:ff:ff:ff:ff:ff",
            ),
            (
                "MAC=00:00:00:00:00:00",
                "{}",
                code::INVALID_ENVIRONMENT,
                "all zeros",
            ),
            (
                "MAC=02:00:00:00:00:01",
                r#"{"mac":"02:00:00:00:00:02"}"#,
                code::INVALID_CONFIG,
                "one MAC",
            ),
        ];
        for (args, runtime_config, expected, needle) in cases {
            let err = parse(args, runtime_config).unwrap_err();
            assert_eq!(err.code, expected, "{args} {runtime_config}: {}", err.msg);
            assert!(
                err.msg.contains(needle),
                "{args} {runtime_config}: {}",
                err.msg
            );
        }
    }

    #[test]
    fn the_node_refuses_addresses_it_cannot_give_and_its_router_mac() {
        let pool: Ipv4Net = "10.244.1.0/24".parse().unwrap();
        let gateway = Ipv4Addr::new(10, 244, 1, 1);
        let router: MacAddr = "0a:70:0a:01:00:0b".parse().unwrap();
        let check = |args: &str| parse(args, "{}").unwrap().check(pool, gateway, router);
        assert!(check("IP=10.244.1.50;MAC=02:42:0a:f4:01:32").is_ok());
        for (args, needle) in [
            ("IP=10.244.2.50", "outside"),
            ("IP=10.244.1.1", "gateway"),
            ("IP=10.244.1.0", "network address"),
            ("IP=10.244.1.255", "broadcast address"),
            ("MAC=0a:70:0a:01:00:0b", "router MAC"),
        ] {
            let err = check(args).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENVIRONMENT, "{args}");
            assert!(err.msg.contains(needle), "{args}: {}", err.msg);
            let value = args.split_once('=').unwrap().1;
            assert!(err.msg.contains(value), "{args}: {}", err.msg);
        }
    }
}
