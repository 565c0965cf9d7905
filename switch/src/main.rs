//! `podswitch`: the daemon (`podswitch daemon --config FILE`) and the CLI
//! that talks to it over the control socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ipnet::{Ipv4Net, Ipv6Net};
use podswitch::config::{Config, DEFAULT_CONTROL_SOCKET, PeerConfig};
use podswitch::control::protocol::{
    CaptureSpec, Info, MAX_REQUEST_LEN, MembershipReport, PeerStatus, PolicyStatus, PollMode,
    PortKind, PortSpec, PortStatus, RouteEntry, ServicePortStatus, StatsReport, TraceProtocol,
    TraceReport, TraceSpec,
};
use podswitch::control::{Client, Request};
use podswitch::mac::MacAddr;
use serde::de::DeserializeOwned;

/// A userspace pod network switch: AF_XDP and TAP ports, VXLAN/Geneve overlay.
#[derive(Parser)]
#[command(name = "podswitch", version)]
struct Cli {
    /// The daemon's control socket.
    #[arg(long, global = true, env = "PODSWITCH_SOCKET", default_value = DEFAULT_CONTROL_SOCKET)]
    socket: PathBuf,
    /// Print the daemon's answer as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the switch on this node.
    Daemon {
        /// The configuration file (TOML; see docs/operations.md).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and print it with defaults filled in.
    CheckConfig {
        /// The configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The node's network: pod CIDR, gateway, pod MTU, router MAC.
    Info,
    /// Ports with their modes and counters.
    Ports,
    /// Add or remove a pod port.
    Port {
        #[command(subcommand)]
        action: PortAction,
    },
    /// Peers with their underlay next hops.
    Peers,
    /// Add or remove a peer node.
    Peer {
        #[command(subcommand)]
        action: PeerAction,
    },
    /// The forwarding table.
    Routes,
    /// Add or remove a route to the host port.
    Route {
        #[command(subcommand)]
        action: RouteAction,
    },
    /// The switch's Service table with endpoints and connections, or
    /// `services set FILE` to give it Services (service_translation =
    /// "switch").
    Services {
        #[command(subcommand)]
        action: Option<ServicesAction>,
    },
    /// The NetworkPolicies in force: this node's pods with the policies
    /// selecting them, and what each policy denied; or `policy set FILE`
    /// to give the switch namespaces, pods and policies.
    Policy {
        #[command(subcommand)]
        action: Option<PolicyAction>,
    },
    /// Counters: ports, drops by reason, workers, frames.
    Stats,
    /// What the switch would do with a packet arriving on a port, stage by
    /// stage (nothing is sent).
    Trace {
        /// The port it arrives on (as `ports` lists it).
        in_port: String,
        /// IPv4 source (default: the port's address).
        #[arg(long)]
        src: Option<Ipv4Addr>,
        /// IPv4 destination.
        #[arg(long, required_unless_present = "hex")]
        dst: Option<Ipv4Addr>,
        /// Transport protocol.
        #[arg(long, value_enum, default_value = "udp")]
        proto: ProtoArg,
        /// UDP or TCP source port (default 40000).
        #[arg(long)]
        sport: Option<u16>,
        /// UDP or TCP destination port (default 80).
        #[arg(long)]
        dport: Option<u16>,
        /// Ethernet source (default: the port's MAC).
        #[arg(long)]
        src_mac: Option<MacAddr>,
        /// IPv4 TTL (default 64).
        #[arg(long)]
        ttl: Option<u8>,
        /// The whole frame in hex, Ethernet header on (the options above
        /// are then ignored).
        #[arg(long)]
        hex: Option<String>,
    },
    /// Stream a port's received and sent frames as pcapng (readable by
    /// tcpdump, tshark and Wireshark), each marked inbound or outbound.
    Capture {
        /// The port (as `ports` lists it).
        interface: String,
        /// Write to this file instead of standard output.
        #[arg(short = 'w', long = "write")]
        file: Option<PathBuf>,
        /// Stop after this many frames.
        #[arg(short = 'c', long)]
        count: Option<u64>,
        /// Only frames to or from this IPv4 address (outer or, for tunnel
        /// packets, inner headers).
        #[arg(long)]
        host: Option<Ipv4Addr>,
        /// Only frames to or from this TCP or UDP port (likewise).
        #[arg(long)]
        port: Option<u16>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtoArg {
    Udp,
    Tcp,
    Icmp,
}

#[derive(Subcommand)]
enum PortAction {
    /// Attach an interface (a pod veth's host end) or create a TAP port.
    Add {
        /// Interface name in this namespace.
        name: String,
        /// The pod's IPv4 address.
        #[arg(long)]
        ip: Ipv4Addr,
        /// The pod's IPv6 address, on a node with a `pod_cidr6`.
        #[arg(long)]
        ip6: Option<Ipv6Addr>,
        /// The pod's MAC.
        #[arg(long)]
        mac: MacAddr,
        /// afxdp (an existing interface), packet (an existing veth end
        /// whose pod side keeps its offloads, read through a packet
        /// socket) or tap (a TAP device with offloads: the pod's, given
        /// --netns and --ifname, or one the daemon creates).
        #[arg(long, value_enum, default_value = "afxdp")]
        kind: KindArg,
        /// Who owns the port (e.g. a container id).
        #[arg(long)]
        owner: Option<String>,
        /// For --kind tap: the pod's network namespace file holding the
        /// TAP device.
        #[arg(long, requires = "ifname")]
        netns: Option<std::path::PathBuf>,
        /// For --kind tap with --netns: the TAP device's name there.
        #[arg(long, requires = "netns")]
        ifname: Option<String>,
    },
    /// Detach a pod port.
    Del {
        /// Interface name.
        name: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum KindArg {
    Afxdp,
    Tap,
    Packet,
}

#[derive(Subcommand)]
enum PeerAction {
    /// Route a remote node's pod CIDR through the tunnel.
    Add {
        /// The peer's underlay address.
        node_ip: IpAddr,
        /// The peer's pod CIDR.
        pod_cidr: Ipv4Net,
        /// The peer's IPv6 pod CIDR, on a dual-stack cluster.
        #[arg(long)]
        pod_cidr6: Option<Ipv6Net>,
        /// The MAC inner frames are addressed to (kernel VXLAN peers only).
        #[arg(long)]
        vtep_mac: Option<MacAddr>,
    },
    /// Forget a peer.
    Del {
        /// The peer's underlay address.
        node_ip: IpAddr,
    },
}

#[derive(Subcommand)]
enum ServicesAction {
    /// Replace the Services given through the control socket with a JSON
    /// list of Services (the format of docs/services.md).
    Set {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Replace the namespaces, pods and policies given through the
    /// control socket with a JSON object of them (the format of
    /// docs/policy.md).
    Set {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum RouteAction {
    /// Send a prefix to the node's own stack.
    Add {
        /// The prefix.
        prefix: Ipv4Net,
    },
    /// Remove a host route.
    Del {
        /// The prefix.
        prefix: Ipv4Net,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podswitch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let request = match cli.command {
        Command::Daemon { config } => {
            let config = Config::load_assigning(&config, podswitch::membership::assign_pod_cidr)?;
            return podswitch::daemon::run(config);
        }
        Command::CheckConfig { config } => {
            let config = Config::load(&config)?;
            print!("{}", toml::to_string_pretty(&config)?);
            return Ok(());
        }
        Command::Info => Request::Info,
        Command::Ports => Request::Ports,
        Command::Peers => Request::Peers,
        Command::Routes => Request::Routes,
        Command::Stats => Request::Stats,
        Command::Services { action: None } => Request::Services,
        Command::Services {
            action: Some(ServicesAction::Set { file }),
        } => sized(
            Request::ServicesSet {
                services: podswitch::services::read_services(&file)?,
            },
            &file,
            "services_file",
        )?,
        Command::Policy { action: None } => Request::Policy,
        Command::Policy {
            action: Some(PolicyAction::Set { file }),
        } => sized(
            Request::PolicySet {
                cluster: podswitch::policy::read_cluster(&file)?,
            },
            &file,
            "policy_file",
        )?,
        Command::Capture {
            interface,
            file,
            count,
            host,
            port,
        } => {
            let spec = CaptureSpec {
                port: interface,
                count,
                host,
                l4_port: port,
            };
            return capture(&cli.socket, spec, file.as_deref());
        }
        Command::Trace {
            in_port,
            src,
            dst,
            proto,
            sport,
            dport,
            src_mac,
            ttl,
            hex,
        } => Request::Trace(TraceSpec {
            in_port,
            src,
            dst,
            protocol: match proto {
                ProtoArg::Udp => TraceProtocol::Udp,
                ProtoArg::Tcp => TraceProtocol::Tcp,
                ProtoArg::Icmp => TraceProtocol::Icmp,
            },
            src_port: sport,
            dst_port: dport,
            src_mac,
            ttl,
            hex,
        }),
        Command::Port {
            action:
                PortAction::Add {
                    name,
                    ip,
                    ip6,
                    mac,
                    kind,
                    owner,
                    netns,
                    ifname,
                },
        } => Request::PortAdd(PortSpec {
            name,
            ip,
            ip6,
            mac,
            kind: match kind {
                KindArg::Afxdp => PortKind::Afxdp,
                KindArg::Tap => PortKind::Tap,
                KindArg::Packet => PortKind::Packet,
            },
            owner,
            netns,
            ifname,
        }),
        Command::Port {
            action: PortAction::Del { name },
        } => Request::PortDel { name },
        Command::Peer {
            action:
                PeerAction::Add {
                    node_ip,
                    pod_cidr,
                    pod_cidr6,
                    vtep_mac,
                },
        } => Request::PeerAdd(PeerConfig {
            node_ip,
            pod_cidr,
            pod_cidr6,
            vtep_mac,
        }),
        Command::Peer {
            action: PeerAction::Del { node_ip },
        } => Request::PeerDel { node_ip },
        Command::Route {
            action: RouteAction::Add { prefix },
        } => Request::RouteAdd { prefix },
        Command::Route {
            action: RouteAction::Del { prefix },
        } => Request::RouteDel { prefix },
    };
    let mut client = Client::connect(&cli.socket)?;
    let answer = client.call(&request)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    match request {
        Request::Info => print_info(&decode(answer)?),
        Request::Ports => print_ports(&decode::<Vec<PortStatus>>(answer)?),
        Request::PortAdd(_) => print_ports(&[decode::<PortStatus>(answer)?]),
        Request::Peers => {
            let info: Info = decode(client.call(&Request::Info)?)?;
            println!("membership {}", membership(&info.membership));
            print_peers(&decode::<Vec<PeerStatus>>(answer)?);
        }
        Request::Routes => print_routes(&decode::<Vec<RouteEntry>>(answer)?),
        Request::Stats => print_stats(&decode(answer)?),
        Request::Services => print_services(&decode::<Vec<ServicePortStatus>>(answer)?),
        Request::Policy => print_policy(&decode(answer)?),
        Request::Trace(_) => print_trace(&decode(answer)?),
        _ => println!("ok"),
    }
    Ok(())
}

/// Run a capture: the daemon's pcapng stream copied to `file` or standard
/// output until it ends.
fn capture(socket: &Path, spec: CaptureSpec, file: Option<&Path>) -> Result<()> {
    let name = spec.port.clone();
    let mut client = Client::connect(socket)?;
    client.call(&Request::Capture(spec))?;
    let mut stream = client.into_stream()?;
    let copied = match file {
        Some(path) => {
            let mut out = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            std::io::copy(&mut stream, &mut out)
        }
        None => std::io::copy(&mut stream, &mut std::io::stdout().lock()),
    };
    copied.with_context(|| format!("capturing on {name}"))?;
    Ok(())
}

/// `request`, made of `file` (read and checked first, so that a mistake
/// is reported with the file's name), if a control request can carry it;
/// else the file belongs in the config key `config_key`.
fn sized(request: Request, file: &Path, config_key: &str) -> Result<Request> {
    let len = serde_json::to_string(&request)?.len();
    if len >= MAX_REQUEST_LEN {
        anyhow::bail!(
            "{}: {len} bytes, more than a control request takes ({} KiB): \
             give the daemon the file as {config_key} instead",
            file.display(),
            MAX_REQUEST_LEN / 1024
        );
    }
    Ok(request)
}

fn print_policy(status: &PolicyStatus) {
    for source in &status.sources {
        println!(
            "source {}: {} namespaces, {} pods, {} policies",
            source.source, source.namespaces, source.pods, source.policies
        );
    }
    println!("tracked connections {}", status.connections);
    println!();
    let names = |list: &[String]| {
        if list.is_empty() {
            "(unrestricted)".to_string()
        } else {
            list.join(",")
        }
    };
    println!("{:<32} {:<15} {:<30} egress", "pod", "address", "ingress");
    for pod in &status.pods {
        println!(
            "{:<32} {:<15} {:<30} {}",
            pod.pod,
            pod.address.to_string(),
            names(&pod.ingress),
            names(&pod.egress)
        );
    }
    println!();
    println!("{:<40} {:<11} {:>10}", "policy", "source", "denied");
    for policy in &status.policies {
        println!(
            "{:<40} {:<11} {:>10}",
            policy.policy, policy.source, policy.denied
        );
    }
}

fn print_services(ports: &[ServicePortStatus]) {
    println!(
        "{:<28} {:<15} {:<18} {:<21} {:>11}  source",
        "service", "cluster ip", "port", "endpoint", "connections"
    );
    for p in ports {
        let port = match p.node_port {
            Some(node_port) => format!("{}/{} ({node_port})", p.protocol.name(), p.port),
            None => format!("{}/{}", p.protocol.name(), p.port),
        };
        let endpoints: Vec<(String, String)> = if p.endpoints.is_empty() {
            vec![("(none)".into(), "-".into())]
        } else {
            p.endpoints
                .iter()
                .map(|e| {
                    (
                        format!("{}:{}", e.address, e.port),
                        e.connections.to_string(),
                    )
                })
                .collect()
        };
        // The ClusterIP, then the external addresses under it.
        let addresses: Vec<String> = std::iter::once(&p.cluster_ip)
            .chain(&p.external_ips)
            .map(ToString::to_string)
            .collect();
        for i in 0..endpoints.len().max(addresses.len()) {
            let (endpoint, connections) = endpoints
                .get(i)
                .map_or(("", ""), |(e, c)| (e.as_str(), c.as_str()));
            let ip = addresses.get(i).map_or("", String::as_str);
            let (service, port, source) = if i == 0 {
                (p.service.as_str(), port.as_str(), p.source.as_str())
            } else {
                ("", "", "")
            };
            println!(
                "{service:<28} {ip:<15} {port:<18} {endpoint:<21} {connections:>11}  {source}"
            );
        }
    }
}

fn decode<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).context("unexpected answer from the daemon")
}

fn print_info(info: &Info) {
    println!("node ip      {}", info.node_ip);
    println!("pod cidr     {}", info.pod_cidr);
    if let Some(cidr6) = info.pod_cidr6 {
        println!("pod cidr6    {cidr6} (gateway fe80::1)");
    }
    println!("gateway      {}", info.gateway);
    println!("pod mtu      {}", info.pod_mtu);
    println!("router mac   {}", info.router_mac);
    println!(
        "encap        {:?} vni {} udp port {}",
        info.encap, info.vni, info.udp_port
    );
    println!("uplink       {}", info.uplink);
    println!("host port    {}", info.host_port.as_deref().unwrap_or("-"));
    match info.poll_mode {
        PollMode::Adaptive => println!(
            "poll mode    {} (polls {} µs after the last packet, then sleeps)",
            info.poll_mode, info.spin_us
        ),
        PollMode::Busy => println!("poll mode    {}", info.poll_mode),
    }
    println!(
        "frames       {} ({} MiB), planned for {} pod sockets",
        info.frame_count,
        (u64::from(info.frame_count) * 4096) >> 20,
        info.max_pods
    );
    println!("membership   {}", membership(&info.membership));
    println!("version      {}", info.version);
}

fn print_ports(ports: &[PortStatus]) {
    println!(
        "{:<4} {:<15} {:<6} {:<6} {:<8} {:<9} {:<2} {:<15} {:<17} {:>10} {:>10} {:>8}  ipv6",
        "id", "name", "role", "kind", "xdp", "copy", "q", "ip", "mac", "rx", "tx", "drops"
    );
    for p in ports {
        let drops: u64 = p.counters.drops.values().sum();
        println!(
            "{:<4} {:<15} {:<6} {:<6} {:<8} {:<9} {:<2} {:<15} {:<17} {:>10} {:>10} {:>8}  {}",
            p.id,
            p.name,
            format!("{:?}", p.role).to_lowercase(),
            format!("{:?}", p.kind).to_lowercase(),
            p.xdp_mode.as_deref().unwrap_or("-"),
            p.copy_mode.as_deref().unwrap_or("-"),
            p.queues,
            p.ip.map_or("-".into(), |ip| ip.to_string()),
            p.mac.to_string(),
            p.counters.rx_packets,
            p.counters.tx_packets,
            drops,
            p.ip6.map_or("-".into(), |ip6| ip6.to_string())
        );
    }
}

/// The membership source and its state: `etcd (unreachable for 12 s,
/// since unix time 1764943200: …)`.
fn membership(membership: &MembershipReport) -> String {
    let source = if membership.source.is_empty() {
        "static"
    } else {
        &membership.source
    };
    let state = match (membership.unreachable_since, &membership.error) {
        (Some(since), error) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(since, |d| d.as_secs());
            format!(
                " (unreachable for {} s, since unix time {since}: {})",
                now.saturating_sub(since),
                error.as_deref().unwrap_or("no answer")
            )
        }
        (None, Some(error)) => format!(" ({error})"),
        (None, None) => String::new(),
    };
    format!("{source}{state}")
}

fn print_peers(peers: &[PeerStatus]) {
    println!(
        "{:<24} {:<18} {:<17} {:<24} {:<17}  pod cidr6",
        "node ip", "pod cidr", "vtep mac", "next hop", "next hop mac"
    );
    for p in peers {
        println!(
            "{:<24} {:<18} {:<17} {:<24} {:<17}  {}",
            p.node_ip.to_string(),
            p.pod_cidr.to_string(),
            p.vtep_mac.to_string(),
            p.next_hop.map_or("-".into(), |h| h.to_string()),
            p.next_hop_mac
                .map_or("unresolved".into(), |m| m.to_string()),
            p.pod_cidr6.map_or("-".into(), |c| c.to_string())
        );
    }
}

fn print_routes(routes: &[RouteEntry]) {
    for r in routes {
        println!("{:<24} {}", r.prefix.to_string(), r.target);
    }
}

fn print_trace(trace: &TraceReport) {
    for stage in &trace.stages {
        println!("{:<14} {}", stage.stage, stage.outcome);
    }
    let verdict = match (&trace.drop_reason, &trace.peer, &trace.output_port) {
        (Some(reason), _, _) => format!("drop: {reason}"),
        (None, Some(peer), Some(port)) => format!("to peer {peer} via tunnel ({port})"),
        (None, None, Some(port)) => format!("deliver on {port}"),
        _ => trace.verdict.clone(),
    };
    println!("verdict        {verdict}");
}

fn print_stats(stats: &StatsReport) {
    println!(
        "{:<15} {:>12} {:>14} {:>12} {:>14}",
        "port", "rx packets", "rx bytes", "tx packets", "tx bytes"
    );
    for (name, c) in &stats.ports {
        println!(
            "{:<15} {:>12} {:>14} {:>12} {:>14}",
            name, c.rx_packets, c.rx_bytes, c.tx_packets, c.tx_bytes
        );
    }
    println!();
    println!("drops by reason:");
    let mut any = false;
    for (name, c) in &stats.ports {
        let k = &c.kernel;
        let kernel = [
            ("kernel: rx_dropped", k.rx_dropped),
            ("kernel: rx_ring_full", k.rx_ring_full),
            ("kernel: fill_ring_empty", k.fill_ring_empty),
            ("kernel: invalid_descs", k.invalid_descs),
            ("interface: rx_dropped", c.interface_rx_dropped),
            ("tap queue: dropped", c.tap_queue_dropped),
        ];
        let all = c
            .drops
            .iter()
            .map(|(reason, n)| (reason.as_str(), *n))
            .chain(kernel.into_iter().filter(|(_, n)| *n > 0));
        for (reason, n) in all {
            println!("  {name:<15} {reason:<24} {n:>10}");
            any = true;
        }
    }
    if !any {
        println!("  none");
    }
    let offloaded: Vec<_> = stats
        .ports
        .iter()
        .filter(|(_, c)| c.offload != Default::default())
        .collect();
    if !offloaded.is_empty() {
        println!();
        println!(
            "{:<15} {:>16} {:>14} {:>17} {:>16}",
            "super-frames",
            "received & cut",
            "segments made",
            "super-frames sent",
            "frames coalesced"
        );
        for (name, c) in offloaded {
            let o = &c.offload;
            println!(
                "{name:<15} {:>16} {:>14} {:>17} {:>16}",
                o.super_frames_cut, o.segments_made, o.super_frames_sent, o.frames_coalesced
            );
        }
    }
    if let Some(services) = &stats.services {
        println!();
        println!(
            "services: {} connections translated, {} active",
            services.connections_translated, services.connections_active
        );
    }
    println!();
    for (i, w) in stats.workers.iter().enumerate() {
        println!(
            "worker {i}: {} busy polls, {} idle polls, {} sleeps, {} times behind (priority raised); batches by size [1,2-3,4-7,8-15,16-31,32-63,64]: {:?}",
            w.busy_polls, w.idle_polls, w.sleeps, w.raised, w.batches
        );
    }
    let f = &stats.frames;
    println!(
        "frames: {} total = {} free + {} fill + {} rx + {} in flight + {} tx + {} completion + {} queued; {} accounting violations{}",
        f.total,
        f.free,
        f.fill,
        f.rx,
        f.in_flight,
        f.tx,
        f.completion,
        f.queued,
        f.violations,
        if f.checked { "" } else { " (check_frames off)" }
    );
    println!(
        "uplink XDP: {} tunnel packets to the switch, {} TCP tunnel packets to the kernel \
         for the tunnel port, {} other packets to the kernel",
        stats.uplink_redirected, stats.uplink_to_kernel, stats.uplink_passed
    );
}
