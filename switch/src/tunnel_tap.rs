//! The kernel-offload path toward peers: a TAP device on the node side
//! into which the switch writes each encapsulated frame — a pod's TCP
//! super-frame of up to 64 KB whole — with the 24-byte tunnel form of the
//! virtio-net header. The node's kernel routes the packet to the peer's
//! VTEP and cuts it into encapsulated segments of the underlay MTU (in
//! software, or the NIC in hardware with UDP tunnel TSO), computing every
//! inner and outer checksum on the way; the switch cuts nothing.
//!
//! - [`TunnelTap::open`]: the device with UDP tunnel GSO on. It needs Linux
//!   6.17 or later; an older kernel refuses the offloads and the call
//!   fails with [`TunnelTapError::Unavailable`], for the caller to keep
//!   cutting super-frames in user space.
//! - [`node_sysctls`]: what the node's kernel needs to forward the
//!   packets it is handed (their source is the node's own address).
//! - [`TunnelTap::send_encapsulated`]: encapsulate a frame in the buffer
//!   it was read into ([`OuterTemplate::encapsulate_offloaded`]) and write
//!   the header and the packet with one `writev`, the payload never copied
//!   in user space.
//!
//! The frames' outer destination MAC must be the device's own
//! ([`TunnelTap::mac`]): the template toward a peer on this path has it as
//! its next hop (and no VLAN tag: the kernel tags on the way out).

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;

use podswitch_encap::virtio_net::TUNNEL_HEADER_LEN;
use podswitch_encap::wire::IpVersion;
use podswitch_encap::{DropReason, Offload, OuterTemplate};

use crate::tap::{open_tun, set_offloads, set_vnet_header_len};

/// `TUN_F_USO4`: UDP segmentation of IPv4 datagrams (Linux 6.2+).
pub const TUN_F_USO4: libc::c_uint = 0x20;
/// `TUN_F_USO6`: UDP segmentation of IPv6 datagrams (Linux 6.2+).
pub const TUN_F_USO6: libc::c_uint = 0x40;
/// `TUN_F_UDP_TUNNEL_GSO`: segmentation of super-frames inside a UDP
/// tunnel (Linux 6.17+; not in the libc crate or this machine's headers).
pub const TUN_F_UDP_TUNNEL_GSO: libc::c_uint = 0x80;
/// `TUN_F_UDP_TUNNEL_GSO_CSUM`: the same with an outer UDP checksum
/// computed for every segment (Linux 6.17+).
pub const TUN_F_UDP_TUNNEL_GSO_CSUM: libc::c_uint = 0x100;

/// The offloads the tunnel TAP device is opened with (0x1e7): checksums,
/// TCP and UDP segmentation, and both inside a UDP tunnel with outer
/// checksums. The kernel takes the tunnel ones only beside a plain one.
pub const TUNNEL_OFFLOADS: libc::c_uint = libc::TUN_F_CSUM
    | libc::TUN_F_TSO4
    | libc::TUN_F_TSO6
    | TUN_F_USO4
    | TUN_F_USO6
    | TUN_F_UDP_TUNNEL_GSO
    | TUN_F_UDP_TUNNEL_GSO_CSUM;

/// Why a tunnel TAP device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TunnelTapError {
    /// The kernel refused the offloads: it has no UDP tunnel GSO on TAP
    /// devices (Linux before 6.17). The caller falls back to cutting
    /// super-frames in user space.
    #[error(
        "UDP tunnel GSO is unavailable on TAP device {name}: the kernel refused the offloads \
         {offloads:#x} ({source}); it needs Linux 6.17 or later — fall back to cutting \
         super-frames into segments in user space"
    )]
    Unavailable {
        /// The device.
        name: String,
        /// The offloads asked for.
        offloads: libc::c_uint,
        /// What the kernel answered.
        #[source]
        source: io::Error,
    },
    /// Any other failure: no `/dev/net/tun`, no permission, a bad name, a
    /// device of that name that is not a multi-queue TAP.
    #[error("TAP device {name}: {what}: {source}")]
    Io {
        /// The device.
        name: String,
        /// The step that failed.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl TunnelTapError {
    /// The error for the kernel's answer to `TUNSETOFFLOAD`: EINVAL, the
    /// answer to an offload bit the kernel does not know, means
    /// [`Unavailable`](Self::Unavailable).
    fn from_offload_refusal(name: &str, offloads: libc::c_uint, source: io::Error) -> Self {
        if source.raw_os_error() == Some(libc::EINVAL) {
            TunnelTapError::Unavailable {
                name: name.to_string(),
                offloads,
                source,
            }
        } else {
            TunnelTapError::Io {
                name: name.to_string(),
                what: "TUNSETOFFLOAD",
                source,
            }
        }
    }
}

/// Why an encapsulated frame was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The encapsulation refused the frame: count it and drop it.
    #[error("dropped: {0}")]
    Dropped(DropReason),
    /// The device refused the write (it is gone, or the kernel refused the
    /// header).
    #[error("writing to the tunnel TAP device: {0}")]
    Io(#[from] io::Error),
}

/// One queue of the node-side TAP device with UDP tunnel GSO on,
/// non-blocking; the device goes when its last queue closes.
#[derive(Debug)]
pub struct TunnelTap {
    file: File,
    name: String,
}

impl TunnelTap {
    /// Create the multi-queue TAP device `name` in the current network
    /// namespace with a 24-byte virtio-net header and [`TUNNEL_OFFLOADS`],
    /// or attach one more queue to it (one per sending thread). The caller
    /// brings it up and applies [`node_sysctls`].
    pub fn open(name: &str) -> Result<TunnelTap, TunnelTapError> {
        TunnelTap::open_with_offloads(name, TUNNEL_OFFLOADS)
    }

    /// As [`open`](Self::open), with the offloads `offloads` (`TUN_F_*`)
    /// instead: the kernel refuses the tunnel ones without a plain one.
    pub fn open_with_offloads(
        name: &str,
        offloads: libc::c_uint,
    ) -> Result<TunnelTap, TunnelTapError> {
        let io_error = |what| {
            let name = name.to_string();
            move |source| TunnelTapError::Io { name, what, source }
        };
        let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;
        let file = open_tun(name, flags).map_err(io_error("TUNSETIFF"))?;
        set_vnet_header_len(&file, TUNNEL_HEADER_LEN).map_err(io_error("TUNSETVNETHDRSZ"))?;
        set_offloads(&file, offloads)
            .map_err(|e| TunnelTapError::from_offload_refusal(name, offloads, e))?;
        Ok(TunnelTap {
            file,
            name: name.to_string(),
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's MAC: the outer destination MAC of every frame written
    /// into it, or the kernel does not take the packet as its own to route.
    pub fn mac(&self) -> io::Result<[u8; 6]> {
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: SIOCGIFHWADDR on a tun descriptor writes the device's
        // address into an ifreq, which `request` is.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), libc::SIOCGIFHWADDR, &mut request) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
        let address = unsafe { request.ifr_ifru.ifru_hwaddr };
        Ok(std::array::from_fn(|i| address.sa_data[i] as u8))
    }

    /// Read one packet the node's kernel sent out of the device (a
    /// tunnel packet from a peer, whole or merged by GRO), with its
    /// tunnel-form header first; `None` when there is none.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match (&self.file).read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Send one encapsulated packet: `header` (the tunnel form, see
    /// [`TunnelOffload::to_bytes`](podswitch_encap::virtio_net::TunnelOffload::to_bytes))
    /// and `packet` with one `writev`.
    pub fn send(&self, header: &[u8; TUNNEL_HEADER_LEN], packet: &[u8]) -> io::Result<()> {
        let parts = [IoSlice::new(header), IoSlice::new(packet)];
        (&self.file).write_vectored(&parts).map(drop)
    }

    /// Encapsulate the frame at `buf[frame]`, which the pod's TAP device
    /// described with `offload`, in place with `template` (see
    /// [`OuterTemplate::encapsulate_offloaded`]; the headroom before the
    /// frame is the call's to write) and send it. Returns the packet's
    /// length.
    pub fn send_encapsulated(
        &self,
        template: &OuterTemplate,
        buf: &mut [u8],
        frame: Range<usize>,
        offload: &Offload,
    ) -> Result<usize, SendError> {
        let (packet, header) = template
            .encapsulate_offloaded(buf, frame, offload)
            .map_err(SendError::Dropped)?;
        self.send(&header.to_bytes(), &buf[packet.clone()])?;
        Ok(packet.len())
    }
}

impl AsFd for TunnelTap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for TunnelTap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// One kernel setting: a file under `/proc/sys` and what to write in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sysctl {
    /// The file, e.g. `/proc/sys/net/ipv4/ip_forward`.
    pub path: PathBuf,
    /// The value.
    pub value: &'static str,
}

/// The settings under which the node's kernel forwards what the switch
/// writes into the tunnel TAP device `ifname` toward an underlay of
/// `underlay` addresses:
///
/// - IPv4 forwarding on (`ip_forward`, and the device's `forwarding`): the
///   packets are the kernel's to route, not to deliver;
/// - the device's `accept_local`: their source is the node's own address;
/// - `rp_filter` off on the device and on `all` (the kernel takes the
///   stricter of the two): the way back to that address is not through
///   the device;
/// - for an IPv4 underlay, IPv6 off on the device (no router solicitations
///   or duplicate address probes to read); for an IPv6 one, IPv6
///   forwarding on.
pub fn node_sysctls(ifname: &str, underlay: IpVersion) -> Vec<Sysctl> {
    let setting = |path: String, value| Sysctl {
        path: PathBuf::from("/proc/sys/net").join(path),
        value,
    };
    let device = |family: &str, key: &str| format!("{family}/conf/{ifname}/{key}");
    let mut settings = vec![
        setting("ipv4/ip_forward".into(), "1"),
        setting(device("ipv4", "forwarding"), "1"),
        setting(device("ipv4", "accept_local"), "1"),
        setting(device("ipv4", "rp_filter"), "0"),
        setting("ipv4/conf/all/rp_filter".into(), "0"),
    ];
    settings.push(match underlay {
        IpVersion::Ipv4 => setting(device("ipv6", "disable_ipv6"), "1"),
        IpVersion::Ipv6 => setting("ipv6/conf/all/forwarding".into(), "1"),
    });
    settings
}

/// Write [`node_sysctls`] in the calling thread's network namespace (the
/// node's); the first failure, with the file it was.
pub fn apply_node_sysctls(ifname: &str, underlay: IpVersion) -> io::Result<()> {
    for sysctl in node_sysctls(ifname, underlay) {
        std::fs::write(&sysctl.path, sysctl.value).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("writing {} to {}: {e}", sysctl.value, sysctl.path.display()),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offloads_are_the_ones_linux_names() {
        assert_eq!(TUNNEL_OFFLOADS, 0x1e7);
    }

    #[test]
    fn einval_from_the_kernel_means_no_tunnel_gso() {
        let refused = TunnelTapError::from_offload_refusal(
            "ps-tnl0",
            TUNNEL_OFFLOADS,
            io::Error::from_raw_os_error(libc::EINVAL),
        );
        assert!(matches!(refused, TunnelTapError::Unavailable { .. }));
        let message = refused.to_string();
        assert!(
            message.contains("UDP tunnel GSO is unavailable"),
            "{message}"
        );
        assert!(
            message.contains("0x1e7") && message.contains("Linux 6.17"),
            "{message}"
        );
        let other = TunnelTapError::from_offload_refusal(
            "ps-tnl0",
            TUNNEL_OFFLOADS,
            io::Error::from_raw_os_error(libc::EBADFD),
        );
        assert!(matches!(
            other,
            TunnelTapError::Io {
                what: "TUNSETOFFLOAD",
                ..
            }
        ));
    }

    #[test]
    fn sysctls_for_each_underlay() {
        let paths = |underlay| -> Vec<(String, &str)> {
            node_sysctls("tnl0", underlay)
                .into_iter()
                .map(|s| (s.path.display().to_string(), s.value))
                .collect()
        };
        let v4 = paths(IpVersion::Ipv4);
        assert_eq!(
            v4,
            [
                ("/proc/sys/net/ipv4/ip_forward".to_string(), "1"),
                ("/proc/sys/net/ipv4/conf/tnl0/forwarding".into(), "1"),
                ("/proc/sys/net/ipv4/conf/tnl0/accept_local".into(), "1"),
                ("/proc/sys/net/ipv4/conf/tnl0/rp_filter".into(), "0"),
                ("/proc/sys/net/ipv4/conf/all/rp_filter".into(), "0"),
                ("/proc/sys/net/ipv6/conf/tnl0/disable_ipv6".into(), "1"),
            ]
        );
        let v6 = paths(IpVersion::Ipv6);
        assert_eq!(v6[..5], v4[..5]);
        assert_eq!(
            v6[5],
            ("/proc/sys/net/ipv6/conf/all/forwarding".to_string(), "1")
        );
    }
}
