//! What each CNI command does. ADD leaves nothing half-made on failure;
//! DEL cleans what it can and succeeds; CHECK reports the first thing that
//! is off; STATUS asks the daemon; GC frees what belongs to attachments
//! the runtime no longer has.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use podswitch_control::DEFAULT_CONTROL_SOCKET;
use podswitch_control::protocol::{
    Info, POD_GATEWAY6, PortKind, PortSpec, PortStatus, pod_address6,
};
use podswitch_control::{Client, ClientError, Request};
use podswitch_netdev::netlink::Netlink;

use crate::ipam::{LocalIpam, Owner, delegate};
use crate::pod_link::{self, CreatedLink, PodInterface, host_ifname, is_host_ifname};
use crate::requests::Requests;
use crate::spec::{
    AddResult, Attachment, CniError, CniResult, Command, Dns, Environment, Interface, IpConfig,
    LATEST_VERSION, NetConf, PodInterfaceKind, Route, SUPPORTED_VERSIONS, VersionResult, code,
};

/// Where the built-in IPAM keeps allocations unless `dataDir` says.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/podswitch";

/// Carry out the command in `env` with the configuration `stdin`; what to
/// print on stdout, if anything.
pub fn run(env: &Environment, stdin: &[u8]) -> CniResult<Option<String>> {
    if env.command == Command::Version {
        return Ok(Some(version(stdin)));
    }
    let conf = NetConf::parse(stdin)?;
    let version = conf.cni_version.clone();
    let outcome = match env.command {
        Command::Add => add(env, &conf, stdin).map(|r| Some(to_json(&r.for_version(&version)))),
        Command::Del => del(env, &conf, stdin).map(|()| None),
        Command::Check => check(env, &conf, stdin).map(|()| None),
        Command::Status => status(&conf).map(|()| None),
        Command::Gc => gc(env, &conf, stdin).map(|()| None),
        Command::Version => unreachable!("answered above"),
    };
    outcome.map_err(|mut e| {
        e.cni_version = version;
        e
    })
}

fn to_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// VERSION: answered in the version the configuration asks for (if any
/// and supported), whatever else stdin holds — runtimes call it with
/// `CNI_PATH=dummy` and a bare `{"cniVersion": …}`.
fn version(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| v["cniVersion"].as_str().map(String::from))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()));
    to_json(&VersionResult {
        cni_version: asked.unwrap_or_else(|| LATEST_VERSION.to_string()),
        supported_versions: SUPPORTED_VERSIONS.to_vec(),
    })
}

fn socket(conf: &NetConf) -> PathBuf {
    conf.socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET))
}

/// Connect to the daemon; not running means "try again later".
fn connect(conf: &NetConf) -> CniResult<Client> {
    Client::connect(&socket(conf))
        .map_err(|e| client_error(e, "connecting to the podswitch daemon"))
}

fn client_error(e: ClientError, doing: &str) -> CniError {
    match e {
        ClientError::NotRunning { .. } => CniError::new(code::TRY_AGAIN_LATER, e.to_string()),
        ClientError::Refused(why) => CniError::new(
            code::SWITCH_FAILURE,
            format!("{doing}: the switch refused: {why}"),
        ),
        other => CniError::new(code::IO_FAILURE, format!("{doing}: {other}")),
    }
}

fn owner(env: &Environment) -> Owner {
    Owner {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    }
}

fn owner_tag(owner: &Owner) -> String {
    format!("{}/{}", owner.container_id, owner.ifname)
}

fn local_ipam(conf: &NetConf) -> CniResult<LocalIpam> {
    let dir = conf
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    LocalIpam::open(&dir, &conf.name)
}

fn ipam_type(conf: &NetConf) -> Option<&str> {
    conf.ipam.as_ref().and_then(|i| i["type"].as_str())
}

fn netlink() -> CniResult<Netlink> {
    Netlink::open().map_err(|e| CniError::new(code::IO_FAILURE, format!("{e:#}")))
}

/// The address ADD gives the pod: from the built-in allocator or the
/// delegated IPAM plugin.
struct Addressing {
    address: Ipv4Net,
    gateway: Ipv4Addr,
    routes: Vec<(Ipv4Net, Ipv4Addr)>,
    /// A dual-stack pod's IPv6 address, on a node with a `pod_cidr6`.
    address6: Option<Ipv6Addr>,
    dns: Dns,
}

fn allocate(
    env: &Environment,
    conf: &NetConf,
    stdin: &[u8],
    info: &Info,
    wanted: Option<Ipv4Addr>,
) -> CniResult<Addressing> {
    let dns = conf.dns.clone().unwrap_or_default();
    let Some(plugin) = ipam_type(conf) else {
        let ip = local_ipam(conf)?.allocate(info.pod_cidr, info.gateway, &owner(env), wanted)?;
        return Ok(Addressing {
            address: Ipv4Net::new(ip, info.pod_cidr.prefix_len()).unwrap_or_default(),
            gateway: info.gateway,
            routes: Vec::new(),
            // One allocation for both families: the IPv4 offset, mirrored.
            address6: info
                .pod_cidr6
                .and_then(|cidr6| pod_address6(info.pod_cidr, cidr6, ip)),
            dns,
        });
    };
    // The IPAM plugin reads the request itself (CNI_ARGS and runtimeConfig
    // reach it as they reached this plugin); one that ignores it is caught
    // here rather than leaving the pod with another address.
    let result = delegate(env, plugin, "ADD", stdin)?.unwrap_or_else(|| AddResult {
        cni_version: conf.cni_version.clone(),
        interfaces: Vec::new(),
        ips: Vec::new(),
        routes: Vec::new(),
        dns: Dns::default(),
    });
    let chosen = match wanted {
        None => result.ipv4(),
        Some(wanted) => result.ipv4s().find(|&(ip, _, _)| ip == wanted),
    };
    let Some((ip, prefix, gateway)) = chosen else {
        let _ = delegate(env, plugin, "DEL", stdin);
        let gave: Vec<String> = result.ips.iter().map(|ip| ip.address.to_string()).collect();
        return Err(CniError::new(
            code::INVALID_CONFIG,
            match wanted {
                None => {
                    format!("IPAM plugin {plugin} gave no IPv4 address; podswitch routes IPv4 pods")
                }
                Some(wanted) => format!(
                    "IPAM plugin {plugin} gave {gave:?}, not the requested address {wanted}: \
                     it ignores requested addresses; use host-local, or podswitch's own IPAM \
                     (leave ipam out)"
                ),
            },
        ));
    };
    let routes = result
        .routes
        .iter()
        .filter_map(|r| match (r.dst, r.gw) {
            (IpNet::V4(dst), gw) if dst.prefix_len() > 0 => {
                let via = match gw {
                    Some(IpAddr::V4(g)) => g,
                    _ => gateway.unwrap_or(info.gateway),
                };
                Some((dst, via))
            }
            _ => None,
        })
        .collect();
    // The plugin's IPv6 address in this node's IPv6 pod CIDR, if both are
    // there (a host-local range of each family).
    let address6 = info.pod_cidr6.and_then(|cidr6| {
        result.ips.iter().find_map(|ip| match ip.address {
            IpNet::V6(net) if cidr6.contains(&net.addr()) => Some(net.addr()),
            _ => None,
        })
    });
    Ok(Addressing {
        address: Ipv4Net::new(ip, prefix).unwrap_or_default(),
        gateway: gateway.unwrap_or(info.gateway),
        routes,
        address6,
        dns: if dns.is_empty() { result.dns } else { dns },
    })
}

fn release(env: &Environment, conf: &NetConf, stdin: &[u8]) -> CniResult<()> {
    match ipam_type(conf) {
        None => local_ipam(conf)?.release(&owner(env)).map(drop),
        Some(plugin) => delegate(env, plugin, "DEL", stdin).map(drop),
    }
}

fn add(env: &Environment, conf: &NetConf, stdin: &[u8]) -> CniResult<AddResult> {
    let requests = Requests::parse(env, conf)?;
    let netns_path = env.netns.clone().unwrap_or_default();
    let netns = pod_link::open_netns(&netns_path)
        .map_err(|e| CniError::new(code::INVALID_ENVIRONMENT, format!("{e:#}")))?;
    let mut client = connect(conf)?;
    let info: Info = client
        .call_as(&Request::Info)
        .map_err(|e| client_error(e, "asking the switch for the node's pod network"))?;
    let mtu = conf.mtu.unwrap_or(info.pod_mtu);
    if mtu > info.pod_mtu {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "mtu {mtu} is larger than the switch's pod MTU {} (the underlay MTU less the \
                 tunnel overhead): lower it, or leave it out",
                info.pod_mtu
            ),
        ));
    }
    requests.check(info.pod_cidr, info.gateway, info.router_mac)?;
    let addressing = allocate(env, conf, stdin, &info, requests.ip.map(|ip| ip.value))?;
    let undo_address = || {
        let _ = release(env, conf, stdin);
    };

    let host = host_ifname(&env.container_id, &env.ifname);
    let netlink = netlink().inspect_err(|_| undo_address())?;
    let pod_interface = conf.pod_interface.unwrap_or(match info.packet_ports {
        true => PodInterfaceKind::VethOffload,
        false => PodInterfaceKind::Veth,
    });
    let offloaded = pod_interface != PodInterfaceKind::Veth;
    let pod = PodInterface {
        ifname: &env.ifname,
        host: &host,
        mtu,
        address: addressing.address,
        gateway: addressing.gateway,
        routes: &addressing.routes,
        address6: addressing.address6,
        mac: requests.mac.map(|mac| mac.value),
        offloaded,
        gso_max_size: (offloaded && info.pod_gso_max_size > 0).then_some(info.pod_gso_max_size),
    };
    // A TAP device is found again by its namespace and name; a veth by
    // its host end.
    let (attached, kind, tap_at) = match pod_interface {
        PodInterfaceKind::Veth => (
            pod_link::create(&netlink, &netns, &pod),
            PortKind::Afxdp,
            None,
        ),
        PodInterfaceKind::VethOffload => (
            pod_link::create(&netlink, &netns, &pod),
            PortKind::Packet,
            None,
        ),
        PodInterfaceKind::Tap => (
            pod_link::create_tap(&netns, &pod).map(|pod_mac| CreatedLink {
                pod_mac,
                host_mac: None,
            }),
            PortKind::Tap,
            Some((netns_path.clone(), env.ifname.clone())),
        ),
    };
    let created = attached.map_err(|e| {
        undo_address();
        CniError::new(
            code::IO_FAILURE,
            format!("setting up the pod's interface: {e:#}"),
        )
    })?;
    let undo_link = || match &tap_at {
        None => drop(netlink.delete_link(&host)),
        Some((netns_path, ifname)) => drop(pod_link::delete_tap(netns_path, ifname)),
    };
    let (port_netns, port_ifname) = tap_at.clone().unzip();
    let spec = PortSpec {
        name: host.clone(),
        ip: addressing.address.addr(),
        ip6: addressing.address6,
        mac: created.pod_mac,
        kind,
        owner: Some(owner_tag(&owner(env))),
        netns: port_netns,
        ifname: port_ifname,
    };
    if let Err(e) = client.call(&Request::PortAdd(spec)) {
        undo_link();
        undo_address();
        return Err(client_error(
            e,
            &format!("adding port {host} to the switch"),
        ));
    }

    let gateway = IpAddr::V4(addressing.gateway);
    let mut routes = vec![Route {
        dst: "0.0.0.0/0".parse().expect("a valid prefix"),
        gw: Some(gateway),
    }];
    routes.extend(addressing.routes.iter().map(|&(dst, gw)| Route {
        dst: dst.into(),
        gw: Some(gw.into()),
    }));
    if addressing.address6.is_some() {
        routes.push(Route {
            dst: "::/0".parse().expect("a valid prefix"),
            gw: Some(POD_GATEWAY6.into()),
        });
    }
    let pod_interface = Interface {
        name: env.ifname.clone(),
        mac: created.pod_mac.to_string(),
        mtu: Some(mtu),
        sandbox: netns_path.display().to_string(),
    };
    // A veth's host end is listed first, as other plugins do; a TAP
    // device has no host end.
    let interfaces = match created.host_mac {
        Some(host_mac) => vec![
            Interface {
                name: host,
                mac: host_mac.to_string(),
                mtu: Some(mtu),
                sandbox: String::new(),
            },
            pod_interface,
        ],
        None => vec![pod_interface],
    };
    let pod_index = interfaces.len() - 1;
    Ok(AddResult {
        cni_version: conf.cni_version.clone(),
        interfaces,
        ips: std::iter::once(IpConfig {
            version: None,
            address: addressing.address.into(),
            gateway: Some(gateway),
            interface: Some(pod_index),
        })
        .chain(addressing.address6.map(|address6| IpConfig {
            version: None,
            address: Ipv6Net::from(address6).into(),
            gateway: Some(POD_GATEWAY6.into()),
            interface: Some(pod_index),
        }))
        .collect(),
        routes,
        dns: addressing.dns,
    })
}

/// Remove the switch port `host` if the daemon is up (a daemon that is down
/// has no port to remove).
fn remove_port(conf: &NetConf, host: &str) -> CniResult<()> {
    let mut client = match Client::connect(&socket(conf)) {
        Ok(client) => client,
        Err(ClientError::NotRunning { .. }) => return Ok(()),
        Err(e) => return Err(client_error(e, "connecting to the podswitch daemon")),
    };
    match client.call(&Request::PortDel { name: host.into() }) {
        Ok(_) => Ok(()),
        Err(ClientError::Refused(why)) if why.contains("no port named") => Ok(()),
        Err(e) => Err(client_error(
            e,
            &format!("removing port {host} from the switch"),
        )),
    }
}

fn del(env: &Environment, conf: &NetConf, stdin: &[u8]) -> CniResult<()> {
    let host = host_ifname(&env.container_id, &env.ifname);
    let port = remove_port(conf, &host);
    // Deleting a veth's host end deletes the pod end with it; a TAP device
    // is deleted in the pod's namespace; a pod whose namespace is already
    // gone took its interface with it.
    let link = match conf.pod_interface {
        None | Some(PodInterfaceKind::Veth | PodInterfaceKind::VethOffload) => {
            netlink().and_then(|n| {
                n.delete_link(&host)
                    .map_err(|e| CniError::new(code::IO_FAILURE, format!("{e:#}")))
            })
        }
        Some(PodInterfaceKind::Tap) => {
            let netns = env.netns.clone().unwrap_or_default();
            pod_link::delete_tap(&netns, &env.ifname)
                .map(|()| true)
                .map_err(|e| CniError::new(code::IO_FAILURE, format!("{e:#}")))
        }
    };
    // The address is released whatever else failed.
    release(env, conf, stdin)?;
    port?;
    link.map(drop)
}

fn check(env: &Environment, conf: &NetConf, stdin: &[u8]) -> CniResult<()> {
    let prev = conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs the ADD result as prevResult in the network config",
        )
    })?;
    let prev: AddResult = serde_json::from_value(prev).map_err(|e| {
        CniError::new(
            code::DECODING_FAILURE,
            format!("prevResult is not a CNI result: {e}"),
        )
    })?;
    let failed = |what: String| Err(CniError::new(code::INVALID_CONFIG, what));
    let interface = prev
        .interfaces
        .iter()
        .find(|i| i.name == env.ifname && !i.sandbox.is_empty())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("prevResult lists no interface {} in a sandbox", env.ifname),
            )
        })?;
    let Some((ip, prefix, gateway)) = prev.ipv4() else {
        return failed("prevResult has no IPv4 address".into());
    };
    let netns_path = env.netns.clone().unwrap_or_default();
    let netns = pod_link::open_netns(&netns_path)
        .map_err(|e| CniError::new(code::INVALID_ENVIRONMENT, format!("{e:#}")))?;
    let seen = pod_link::observe(&netns, &env.ifname)
        .map_err(|e| CniError::new(code::UNKNOWN_CONTAINER, format!("{e:#}")))?;
    if seen.mac.to_string() != interface.mac {
        return failed(format!(
            "{} has MAC {}, prevResult says {}",
            env.ifname, seen.mac, interface.mac
        ));
    }
    if let Some(mtu) = interface.mtu
        && seen.mtu != mtu
    {
        return failed(format!(
            "{} has MTU {}, prevResult says {mtu}",
            env.ifname, seen.mtu
        ));
    }
    let expected = IpNet::new(ip.into(), prefix).unwrap_or_default();
    let ipv6 = prev
        .ips
        .iter()
        .map(|ip| ip.address)
        .filter(|a| a.addr().is_ipv6());
    for expected in std::iter::once(expected).chain(ipv6) {
        if !seen.addresses.contains(&expected) {
            return failed(format!("{} lacks its address {expected}", env.ifname));
        }
    }
    if let Some(gateway) = gateway
        && !seen
            .routes
            .iter()
            .any(|&(dst, gw)| dst.prefix_len() == 0 && gw == Some(gateway))
    {
        return failed(format!("{} has no default route via {gateway}", env.ifname));
    }
    let host = host_ifname(&env.container_id, &env.ifname);
    let ports: Vec<PortStatus> = connect(conf)?
        .call_as(&Request::Ports)
        .map_err(|e| client_error(e, "listing the switch's ports"))?;
    match ports.iter().find(|p| p.name == host) {
        None => return failed(format!("the switch has no port {host} for this pod")),
        Some(p) if p.ip != Some(ip) || p.mac != seen.mac => {
            return failed(format!(
                "switch port {host} has {:?}/{}, the pod {ip}/{}",
                p.ip, p.mac, seen.mac
            ));
        }
        Some(_) => {}
    }
    match ipam_type(conf) {
        None => {
            let held = local_ipam(conf)?.lookup(&owner(env))?;
            if held != Some(ip) {
                return failed(format!(
                    "the IPAM reservation of {ip} is missing (holds {held:?})"
                ));
            }
        }
        Some(plugin) => {
            delegate(env, plugin, "CHECK", stdin)?;
        }
    }
    Ok(())
}

fn status(conf: &NetConf) -> CniResult<()> {
    let path = socket(conf);
    Client::connect(&path)
        .and_then(|mut c| c.call(&Request::Info))
        .map(drop)
        .map_err(|e| {
            CniError::new(code::NOT_AVAILABLE, format!("podswitch is not ready: {e}"))
                .with_details(path.display().to_string())
        })
}

fn gc(env: &Environment, conf: &NetConf, stdin: &[u8]) -> CniResult<()> {
    let valid: BTreeSet<Owner> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(
            |Attachment {
                 container_id,
                 ifname,
             }| Owner {
                container_id: container_id.clone(),
                ifname: ifname.clone(),
            },
        )
        .collect();
    let valid_tags: BTreeSet<String> = valid.iter().map(owner_tag).collect();
    let valid_hosts: BTreeSet<String> = valid
        .iter()
        .map(|o| host_ifname(&o.container_id, &o.ifname))
        .collect();
    // Ports of this plugin's attachments that are no longer valid.
    if let Ok(mut client) = Client::connect(&socket(conf)) {
        let ports: Vec<PortStatus> = client
            .call_as(&Request::Ports)
            .map_err(|e| client_error(e, "listing the switch's ports"))?;
        for port in ports {
            let stale = port.owner.as_ref().is_some_and(|o| !valid_tags.contains(o))
                && is_host_ifname(&port.name)
                && !valid_hosts.contains(&port.name);
            if stale {
                remove_port(conf, &port.name)?;
                let _ = netlink()?.delete_link(&port.name);
            }
        }
    }
    match ipam_type(conf) {
        None => {
            let ipam = local_ipam(conf)?;
            for (_, owner) in ipam.allocations()? {
                if !valid.contains(&owner) {
                    ipam.release(&owner)?;
                }
            }
            Ok(())
        }
        Some(plugin) => match delegate(env, plugin, "GC", stdin) {
            // An IPAM plugin older than CNI 1.1 has no GC: nothing to do.
            Err(e) if e.code == code::INCOMPATIBLE_VERSION => Ok(()),
            other => other.map(drop),
        },
    }
}
