//! The switch's own XDP programs, attached to its ports. They are C in
//! `switch/bpf/`, built by clang from `build.rs`, embedded in the binary
//! and loaded with aya; sockets are registered in their XSKMAP by rx
//! queue, and nothing else ever loads a program for us.
//!
//! - Pod ports (`bpf/pod.c`): every frame goes to the socket of its rx
//!   queue; a queue without a socket drops it.
//! - The uplink (`bpf/uplink.c`): only UDP to this node's VTEP address on
//!   the tunnel port goes to the socket ([`UplinkFilter`], changeable at run
//!   time); everything else passes to the kernel, so the node keeps its own
//!   traffic.
//!
//! aya attaches through a bpf_link, which the kernel removes when the
//! process exits, even by SIGKILL. A program attached through netlink (by
//! `ip link set … xdp…`, libxdp, or an older switch) survives its owner
//! and makes attaching fail; [`detach_stale`] removes it, and the attach
//! functions call it first.
//!
//! Interface names are those of the calling thread's network namespace.

use std::fmt;
use std::net::IpAddr;
use std::os::fd::RawFd;

use anyhow::{Context, Result, anyhow, bail};
use aya::Ebpf;
use aya::maps::{Array, MapData, PerCpuArray, XskMap};
use aya::programs::Xdp;
use aya::programs::xdp::XdpLinkId;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage, LinkXdp};
use serde::{Deserialize, Serialize};

use crate::netlink::Netlink;

static POD_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pod.o"));
static UPLINK_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/uplink.o"));

/// Entries of the programs' XSKMAPs (`max_entries` in `bpf/*.c`): rx
/// queue ids must be below it.
pub const XSKMAP_ENTRIES: u32 = 256;

/// `XDP_FLAGS_SKB_MODE` and `XDP_FLAGS_DRV_MODE` from `<linux/if_link.h>`.
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// Which XDP mode to attach in, as configured.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeChoice {
    /// Native where the driver has it, generic otherwise.
    #[default]
    Auto,
    /// Native (driver) mode or fail.
    Native,
    /// Generic (SKB) mode.
    Generic,
}

/// The XDP mode a program runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver, before an skb exists.
    Native,
    /// In the kernel's generic path, on skbs (any device).
    Generic,
}

impl XdpMode {
    fn aya(self) -> aya::programs::XdpMode {
        match self {
            XdpMode::Native => aya::programs::XdpMode::Driver,
            XdpMode::Generic => aya::programs::XdpMode::Skb,
        }
    }

    fn netlink_flag(self) -> u32 {
        match self {
            XdpMode::Native => XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => XDP_FLAGS_SKB_MODE,
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        })
    }
}

/// Which uplink packets go to the switch: UDP to `vtep` (IPv4 or IPv6)
/// with destination port `udp_port` — except, with `vxlan_tcp_to_kernel`,
/// VXLAN over IPv4 (without IP options) carrying TCP/IPv4, which passes
/// to the node's kernel for it to merge (GRO) and hand to the tunnel port
/// ([`KernelReceive`](crate::kernel_receive::KernelReceive)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UplinkFilter {
    /// This node's VTEP address.
    pub vtep: IpAddr,
    /// The tunnel's UDP port (4789 VXLAN, 6081 Geneve).
    pub udp_port: u16,
    /// Pass VXLAN packets carrying TCP to the kernel.
    pub vxlan_tcp_to_kernel: bool,
}

/// `FILTER_VXLAN_TCP_TO_KERNEL` in `bpf/uplink.c`.
const FILTER_VXLAN_TCP_TO_KERNEL: u16 = 1;

/// `struct uplink_filter` in `bpf/uplink.c`: the single entry of its
/// `filter` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FilterEntry {
    /// 4 or 6.
    family: u32,
    /// Network byte order.
    udp_port: u16,
    /// `FILTER_*`.
    flags: u16,
    /// IPv4 in the first four bytes.
    vtep: [u8; 16],
}

// SAFETY: `repr(C)` integers and bytes with no padding (4 + 2 + 2 + 16).
unsafe impl aya::Pod for FilterEntry {}

impl From<&UplinkFilter> for FilterEntry {
    fn from(filter: &UplinkFilter) -> FilterEntry {
        let mut vtep = [0; 16];
        let family = match filter.vtep {
            IpAddr::V4(v4) => {
                vtep[..4].copy_from_slice(&v4.octets());
                4
            }
            IpAddr::V6(v6) => {
                vtep = v6.octets();
                6
            }
        };
        FilterEntry {
            family,
            udp_port: filter.udp_port.to_be(),
            flags: if filter.vxlan_tcp_to_kernel {
                FILTER_VXLAN_TCP_TO_KERNEL
            } else {
                0
            },
            vtep,
        }
    }
}

/// Packet counts of the uplink program, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UplinkCounters {
    /// Tunnel packets handed to a socket.
    pub redirected: u64,
    /// Packets passed to the kernel because they are not ours.
    pub passed: u64,
    /// Tunnel packets passed to the kernel because no socket was registered
    /// for their rx queue.
    pub redirect_failed: u64,
    /// Tunnel packets carrying TCP passed to the kernel, for the tunnel
    /// port (`vxlan_tcp_to_kernel`).
    pub to_kernel: u64,
}

/// Indices of the uplink's `counters` map (`enum counter` in `bpf/uplink.c`).
#[derive(Clone, Copy)]
enum Counter {
    Redirected = 0,
    Passed = 1,
    RedirectFailed = 2,
    ToKernel = 3,
}

/// The uplink program's configuration and counter maps.
struct UplinkMaps {
    filter: Array<MapData, FilterEntry>,
    counters: PerCpuArray<MapData, u64>,
}

/// One of our XDP programs attached to one interface; dropping it detaches
/// the program.
pub struct XdpProgram {
    loaded: Loaded,
    /// The link the program is attached through (`None` only if a
    /// reinstall failed half way, which leaves the interface without it).
    link: Option<XdpLinkId>,
    object: &'static [u8],
    program: &'static str,
    filter: Option<UplinkFilter>,
    ifname: String,
    mode: XdpMode,
}

/// The programs of one object by the mode they run in. The uplink's
/// generic-mode program is built without multi-buffer support: for such a
/// program the kernel linearizes an skb it cannot run on as it is, where
/// for a multi-buffer one it copies the skb into a new one that has lost
/// its link-layer length (Linux 6.18 `skb_pp_cow_data`), and tc's `mirred`
/// would send what the program passes into the tunnel port without its
/// Ethernet header (decisions, "The uplink in generic mode").
#[derive(Clone, Copy)]
struct Programs {
    native: &'static str,
    generic: &'static str,
}

impl Programs {
    fn for_mode(self, mode: XdpMode) -> &'static str {
        match mode {
            XdpMode::Native => self.native,
            XdpMode::Generic => self.generic,
        }
    }
}

/// A loaded, verified instance of one of our programs and its maps.
struct Loaded {
    /// The program and its link: dropping it detaches.
    ebpf: Ebpf,
    sockets: XskMap<MapData>,
    uplink: Option<UplinkMaps>,
}

impl Loaded {
    /// Load and verify `program` from `object`; an uplink program starts
    /// with `filter`.
    fn load(object: &[u8], program: &str, filter: Option<&UplinkFilter>) -> Result<Loaded> {
        let mut ebpf =
            Ebpf::load(object).with_context(|| format!("loading XDP object {program}"))?;
        let sockets = XskMap::try_from(take_map(&mut ebpf, "xsks")?)?;
        let uplink = match filter {
            Some(filter) => {
                let mut maps = UplinkMaps {
                    filter: Array::try_from(take_map(&mut ebpf, "filter")?)?,
                    counters: PerCpuArray::try_from(take_map(&mut ebpf, "counters")?)?,
                };
                maps.filter.set(0, FilterEntry::from(filter), 0)?;
                Some(maps)
            }
            None => None,
        };
        let mut loaded = Loaded {
            ebpf,
            sockets,
            uplink,
        };
        loaded
            .xdp(program)?
            .load()
            .with_context(|| format!("verifying XDP program {program}"))?;
        Ok(loaded)
    }

    fn xdp(&mut self, program: &str) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(program)
            .with_context(|| format!("XDP object has no program {program}"))?
            .try_into()?)
    }
}

impl XdpProgram {
    /// Attach the pod-port program to `ifname` (see [`XdpProgram::mode`] for
    /// the mode chosen), replacing a stale netlink-attached program.
    pub fn attach_pod(ifname: &str, choice: XdpModeChoice) -> Result<XdpProgram> {
        let programs = Programs {
            native: "pod_port",
            generic: "pod_port",
        };
        XdpProgram::attach(POD_OBJECT, programs, ifname, choice, None)
    }

    /// Attach the uplink program to `ifname`, redirecting what `filter`
    /// selects, replacing a stale netlink-attached program.
    pub fn attach_uplink(
        ifname: &str,
        choice: XdpModeChoice,
        filter: &UplinkFilter,
    ) -> Result<XdpProgram> {
        let programs = Programs {
            native: "uplink",
            generic: "uplink_skb",
        };
        XdpProgram::attach(UPLINK_OBJECT, programs, ifname, choice, Some(filter))
    }

    fn attach(
        object: &'static [u8],
        programs: Programs,
        ifname: &str,
        choice: XdpModeChoice,
        filter: Option<&UplinkFilter>,
    ) -> Result<XdpProgram> {
        if detach_stale(ifname)? {
            tracing::warn!(
                ifname,
                "removed a stale XDP program left attached through netlink"
            );
        }
        let attach_in = |mode: XdpMode| -> Result<(Loaded, &'static str, XdpLinkId)> {
            let program = programs.for_mode(mode);
            let mut loaded = Loaded::load(object, program, filter)?;
            let link = loaded
                .xdp(program)?
                .attach(ifname, mode.aya())
                .with_context(|| {
                    format!("attaching XDP program {program} to {ifname} in {mode} mode")
                })?;
            Ok((loaded, program, link))
        };
        let ((loaded, program, link), mode) = match choice {
            XdpModeChoice::Native => (attach_in(XdpMode::Native)?, XdpMode::Native),
            XdpModeChoice::Generic => (attach_in(XdpMode::Generic)?, XdpMode::Generic),
            XdpModeChoice::Auto => match attach_in(XdpMode::Native) {
                Ok(attached) => (attached, XdpMode::Native),
                Err(native_err) => {
                    tracing::info!(
                        ifname,
                        "native XDP unavailable ({native_err:#}); using generic mode"
                    );
                    (attach_in(XdpMode::Generic)?, XdpMode::Generic)
                }
            },
        };
        tracing::debug!(ifname, program, %mode, "XDP program attached");
        Ok(XdpProgram {
            loaded,
            link: Some(link),
            object,
            program,
            filter: filter.copied(),
            ifname: ifname.to_string(),
            mode,
        })
    }

    /// Swap in a fresh instance of the program, with `sockets` (queue,
    /// socket) in its map, atomically through the same link. The kernel
    /// points each of a veth's RX queues at the XDP program only when a
    /// program is installed, so after the veth gains queues (`ethtool -L`)
    /// the new ones bypass XDP — and the switch — until this is done.
    pub fn reinstall(&mut self, sockets: &[(u32, RawFd)]) -> Result<()> {
        let mut fresh = Loaded::load(self.object, self.program, self.filter.as_ref())?;
        for &(queue, fd) in sockets {
            self.check_queue(queue)?;
            fresh.sockets.set(queue, fd, 0).with_context(|| {
                format!(
                    "registering the AF_XDP socket of {} queue {queue}",
                    self.ifname
                )
            })?;
        }
        let id = self
            .link
            .take()
            .with_context(|| format!("the XDP program on {} lost its link", self.ifname))?;
        let link = self
            .loaded
            .xdp(self.program)?
            .take_link(id)
            .context("taking the XDP link over")?;
        self.link = Some(
            fresh
                .xdp(self.program)?
                .attach_to_link(link)
                .with_context(|| format!("replacing the XDP program on {}", self.ifname))?,
        );
        self.loaded = fresh;
        Ok(())
    }

    /// The mode the program runs in.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    /// Send frames arriving on rx queue `queue` to the AF_XDP socket `fd`,
    /// which must be bound to this interface and queue (the kernel drops
    /// frames redirected to a socket of another queue).
    pub fn register_socket(&mut self, queue: u32, fd: RawFd) -> Result<()> {
        self.check_queue(queue)?;
        self.loaded.sockets.set(queue, fd, 0).with_context(|| {
            format!(
                "registering the AF_XDP socket of {} queue {queue}",
                self.ifname
            )
        })
    }

    /// Stop sending frames of rx queue `queue` to a socket: pod frames on it
    /// are dropped, uplink frames pass to the kernel.
    pub fn unregister_socket(&mut self, queue: u32) -> Result<()> {
        self.check_queue(queue)?;
        self.loaded.sockets.unset(queue).with_context(|| {
            format!(
                "unregistering the AF_XDP socket of {} queue {queue}",
                self.ifname
            )
        })
    }

    /// Change what the uplink program redirects, at run time.
    pub fn set_uplink_filter(&mut self, filter: &UplinkFilter) -> Result<()> {
        let ifname = &self.ifname;
        let maps = self.loaded.uplink.as_mut().with_context(|| {
            format!("{ifname} runs the pod program, which has no uplink filter")
        })?;
        maps.filter
            .set(0, FilterEntry::from(filter), 0)
            .with_context(|| format!("setting the uplink filter on {ifname}"))?;
        self.filter = Some(*filter);
        Ok(())
    }

    /// The uplink program's packet counters, summed over CPUs.
    pub fn uplink_counters(&self) -> Result<UplinkCounters> {
        let maps = self.loaded.uplink.as_ref().with_context(|| {
            format!(
                "{} runs the pod program, which has no counters",
                self.ifname
            )
        })?;
        let total = |counter: Counter| -> Result<u64> {
            Ok(maps.counters.get(&(counter as u32), 0)?.iter().sum())
        };
        Ok(UplinkCounters {
            redirected: total(Counter::Redirected)?,
            passed: total(Counter::Passed)?,
            redirect_failed: total(Counter::RedirectFailed)?,
            to_kernel: total(Counter::ToKernel)?,
        })
    }

    fn check_queue(&self, queue: u32) -> Result<()> {
        if queue >= XSKMAP_ENTRIES {
            bail!(
                "{} rx queue {queue}: the XDP program serves queues below {XSKMAP_ENTRIES}",
                self.ifname
            );
        }
        Ok(())
    }
}

impl fmt::Debug for XdpProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdpProgram")
            .field("ifname", &self.ifname)
            .field("mode", &self.mode)
            .field("uplink", &self.loaded.uplink.is_some())
            .finish_non_exhaustive()
    }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<aya::maps::Map> {
    ebpf.take_map(name)
        .with_context(|| format!("XDP object has no map {name}"))
}

/// Detach whatever netlink-attached XDP program sits on `ifname` in the
/// calling thread's network namespace (a leftover of a killed process, or
/// of `ip link set … xdp…`), in every mode it is attached in; true if one
/// was removed. Fails if the program is held by a live bpf_link (another
/// running switch: netlink cannot remove those) or is offloaded to
/// hardware.
pub fn detach_stale(ifname: &str) -> Result<bool> {
    let netlink = Netlink::open()?;
    let mut query = LinkMessage::default();
    query
        .attributes
        .push(LinkAttribute::IfName(ifname.to_string()));
    let replies = netlink
        .request(RouteNetlinkMessage::GetLink(query))
        .with_context(|| format!("looking up interface {ifname}"))?;
    let link = replies
        .into_iter()
        .find_map(|reply| match reply {
            RouteNetlinkMessage::NewLink(link) => Some(link),
            _ => None,
        })
        .with_context(|| format!("no link message for {ifname}"))?;
    let mut modes = Vec::new();
    for attribute in &link.attributes {
        let LinkAttribute::Xdp(xdp) = attribute else {
            continue;
        };
        for item in xdp {
            match item {
                LinkXdp::DrvProgId(_) => modes.push(XdpMode::Native),
                LinkXdp::SkbProgId(_) => modes.push(XdpMode::Generic),
                LinkXdp::HwProgId(id) => {
                    bail!("{ifname}: XDP program {id} is offloaded to hardware; not touching it")
                }
                _ => {}
            }
        }
    }
    for &mode in &modes {
        let mut detach = LinkMessage::default();
        detach.header.index = link.header.index;
        detach.attributes.push(LinkAttribute::Xdp(vec![
            LinkXdp::Fd(-1),
            LinkXdp::Flags(mode.netlink_flag()),
        ]));
        netlink
            .request(RouteNetlinkMessage::SetLink(detach))
            .map_err(|err| match err.raw_os_error() {
                Some(libc::EBUSY) => anyhow!(
                    "{ifname}: the {mode} XDP program is held by a live bpf_link (is another podswitch running?)"
                ),
                _ => anyhow!(err).context(format!("detaching the {mode} XDP program from {ifname}")),
            })?;
    }
    Ok(!modes.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_entry_layout_matches_the_c_struct() {
        let v4 = FilterEntry::from(&UplinkFilter {
            vtep: "10.78.0.1".parse().unwrap(),
            udp_port: 4789,
            vxlan_tcp_to_kernel: true,
        });
        assert_eq!(std::mem::size_of::<FilterEntry>(), 24);
        assert_eq!(v4.family, 4);
        assert_eq!(v4.udp_port.to_ne_bytes(), [0x12, 0xb5]);
        assert_eq!(v4.vtep[..4], [10, 78, 0, 1]);
        assert!(v4.vtep[4..].iter().all(|&b| b == 0));
        assert_eq!(v4.flags, 1);

        let v6 = FilterEntry::from(&UplinkFilter {
            vtep: "fd78::1".parse().unwrap(),
            udp_port: 6081,
            vxlan_tcp_to_kernel: false,
        });
        assert_eq!(v6.family, 6);
        assert_eq!(v6.udp_port.to_ne_bytes(), [0x17, 0xc1]);
        assert_eq!(v6.vtep[0..2], [0xfd, 0x78]);
        assert_eq!(v6.vtep[15], 1);
        assert_eq!(v6.flags, 0);
    }

    #[test]
    fn programs_can_move_between_threads() {
        fn assert_send<T: Send>() {}
        assert_send::<XdpProgram>();
    }

    #[test]
    fn modes_print_and_parse_lowercase() {
        assert_eq!(XdpMode::Native.to_string(), "native");
        assert_eq!(XdpMode::Generic.to_string(), "generic");
        let choice: XdpModeChoice = serde_json::from_str("\"generic\"").unwrap();
        assert_eq!(choice, XdpModeChoice::Generic);
        assert_eq!(XdpModeChoice::default(), XdpModeChoice::Auto);
    }
}
