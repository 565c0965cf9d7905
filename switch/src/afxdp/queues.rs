//! How many rx queues of an interface are active: an XDP program redirects
//! by rx queue, so the port layer binds a socket on each of them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::sys::check;

/// `ETHTOOL_GCHANNELS` from `<linux/ethtool.h>`.
const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// `struct ethtool_channels` from `<linux/ethtool.h>` (libc lacks it).
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// The number of active rx queues of `ifname` in the calling thread's
/// network namespace: combined plus rx-only channels from
/// `ETHTOOL_GCHANNELS` (what `ethtool -l` shows as "Current"), or, for a
/// driver without channel reporting, the `rx-*` entries under
/// `/sys/class/net/<ifname>/queues`.
///
/// A veth is created with room for one queue per CPU but one active queue,
/// until `ethtool -L` raises it. The sysfs fallback reads the `/sys` that
/// is mounted, which after a bare `setns` still shows the original
/// namespace.
pub fn active_rx_queues(ifname: &str) -> io::Result<u32> {
    match ethtool_rx_channels(ifname) {
        Ok(count) if count > 0 => Ok(count),
        Ok(_) => sysfs_rx_queues(ifname),
        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => sysfs_rx_queues(ifname),
        Err(err) => Err(io::Error::new(
            err.kind(),
            format!("ETHTOOL_GCHANNELS on {ifname}: {err}"),
        )),
    }
}

fn ethtool_rx_channels(ifname: &str) -> io::Result<u32> {
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {ifname:?}"),
        ));
    }
    // SAFETY: socket(2) with constant arguments.
    let raw =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `raw` is a descriptor we just created and nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };

    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..EthtoolChannels::default()
    };
    let mut ifr_name = [0 as libc::c_char; libc::IFNAMSIZ];
    for (dst, &src) in ifr_name.iter_mut().zip(name) {
        *dst = src as libc::c_char;
    }
    let mut request = libc::ifreq {
        ifr_name,
        ifr_ifru: libc::__c_anonymous_ifr_ifru {
            ifru_data: (&mut channels as *mut EthtoolChannels).cast(),
        },
    };
    // SAFETY: SIOCETHTOOL reads the NUL-terminated name and the command in
    // `channels`, and writes at most one `ethtool_channels` through
    // `ifru_data`, which points at `channels` for the whole call.
    check(unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL as _, &mut request) })?;
    Ok(channels.combined_count + channels.rx_count)
}

fn sysfs_rx_queues(ifname: &str) -> io::Result<u32> {
    let dir = format!("/sys/class/net/{ifname}/queues");
    let mut count = 0;
    for entry in
        std::fs::read_dir(&dir).map_err(|e| io::Error::new(e.kind(), format!("{dir}: {e}")))?
    {
        if entry?.file_name().to_string_lossy().starts_with("rx-") {
            count += 1;
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_one_rx_queue() {
        // lo has no channel reporting: this goes through sysfs.
        assert_eq!(active_rx_queues("lo").unwrap(), 1);
    }

    #[test]
    fn unknown_interface_is_an_error() {
        assert!(active_rx_queues("no-such-if0").is_err());
        assert!(active_rx_queues("").is_err());
    }
}
