//! The few ethtool calls podswitch makes, through the `SIOCETHTOOL` ioctl
//! (the legacy commands: libc has no binding for them, and they are one
//! call each): which driver an interface has, and reading and turning
//! its offloads on or off.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `ETHTOOL_GDRVINFO`: the driver's name and version.
const ETHTOOL_GDRVINFO: u32 = 0x03;
/// `ETHTOOL_STXCSUM`: TX checksum offload on or off.
const ETHTOOL_STXCSUM: u32 = 0x17;
/// `ETHTOOL_STSO`: TCP segmentation offload on or off.
const ETHTOOL_STSO: u32 = 0x1f;
/// `ETHTOOL_SGSO`: generic segmentation offload on or off.
const ETHTOOL_SGSO: u32 = 0x24;
/// `ETHTOOL_SGRO`: generic receive offload on or off.
const ETHTOOL_SGRO: u32 = 0x2c;
/// The `ETHTOOL_G*` command of each `ETHTOOL_S*` one is one less.
const GET_OF_SET: u32 = 1;

/// `struct ethtool_value` of `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ethtool_drvinfo` of `<linux/ethtool.h>`.
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// An offload feature that can be read and turned on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offload {
    /// TX checksum offload.
    TxChecksum,
    /// TCP segmentation offload.
    Tso,
    /// Generic segmentation offload.
    Gso,
    /// Generic receive offload.
    Gro,
}

impl Offload {
    fn command(self) -> u32 {
        match self {
            Offload::TxChecksum => ETHTOOL_STXCSUM,
            Offload::Tso => ETHTOOL_STSO,
            Offload::Gso => ETHTOOL_SGSO,
            Offload::Gro => ETHTOOL_SGRO,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Offload::TxChecksum => "TX checksum offload",
            Offload::Tso => "TSO",
            Offload::Gso => "GSO",
            Offload::Gro => "GRO",
        }
    }
}

/// Send one ethtool command about `ifname`, with `data` as its argument
/// (the command's struct, its first field the command).
fn ethtool<T: ?Sized>(ifname: &str, data: &mut T) -> io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just created and nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(ifname.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (data as *mut T).cast();
    // SAFETY: SIOCETHTOOL reads the ifreq and the command struct its data
    // pointer points at (and may write that struct), which lives across
    // the call and is of the command's layout.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The name of `ifname`'s driver ("veth", "tun", "mlx5_core", …).
pub fn driver(ifname: &str) -> io::Result<String> {
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        version: [0; 32],
        fw_version: [0; 32],
        bus_info: [0; 32],
        erom_version: [0; 32],
        reserved2: [0; 12],
        n_priv_flags: 0,
        n_stats: 0,
        testinfo_len: 0,
        eedump_len: 0,
        regdump_len: 0,
    };
    ethtool(ifname, &mut info)?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Turn `offloads` off on `ifname`, in order; the first failure names the
/// offload and the interface.
pub fn turn_off(ifname: &str, offloads: &[Offload]) -> io::Result<()> {
    offloads.iter().try_for_each(|&o| set(ifname, o, false))
}

/// Turn `offload` on or off on `ifname`; a failure names the offload and
/// the interface.
pub fn set(ifname: &str, offload: Offload, on: bool) -> io::Result<()> {
    let mut value = EthtoolValue {
        cmd: offload.command(),
        data: on.into(),
    };
    ethtool(ifname, &mut value).map_err(|e| {
        let state = if on { "on" } else { "off" };
        io::Error::new(
            e.kind(),
            format!("turning {} {state} on {ifname}: {e}", offload.name()),
        )
    })
}

/// `ETHTOOL_GSTRINGS`, `ETHTOOL_GSSET_INFO` and `ETHTOOL_SFEATURES` of
/// `<linux/ethtool.h>`, the features' string set and a string's length.
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

/// `struct ethtool_sset_info` asking for one string set's length.
#[repr(C)]
struct EthtoolSsetInfo {
    cmd: u32,
    reserved: u32,
    sset_mask: u64,
    len: u32,
}

/// The names of `ifname`'s features by bit, as `ethtool -k` shows them
/// (`tx-tcp-segmentation`, …); the bits differ between kernels, the names
/// do not.
fn feature_names(ifname: &str) -> io::Result<Vec<String>> {
    let mut info = EthtoolSsetInfo {
        cmd: ETHTOOL_GSSET_INFO,
        reserved: 0,
        sset_mask: 1 << ETH_SS_FEATURES,
        len: 0,
    };
    ethtool(ifname, &mut info)?;
    let count = info.len as usize;
    // `struct ethtool_gstrings`: command, set and count, then the strings.
    let mut strings = vec![0u32; 3 + (count * ETH_GSTRING_LEN).div_ceil(4)];
    strings[..3].copy_from_slice(&[ETHTOOL_GSTRINGS, ETH_SS_FEATURES, info.len]);
    ethtool(ifname, strings.as_mut_slice())?;
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .take(count)
        .map(|name| {
            let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
            String::from_utf8_lossy(&name[..end]).into_owned()
        })
        .collect())
}

/// Turn off, in one request, every feature of `ifname` whose name `off`
/// picks; the names turned off.
pub fn turn_off_features(ifname: &str, off: impl Fn(&str) -> bool) -> io::Result<Vec<String>> {
    let names = feature_names(ifname)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {ifname}'s features: {e}")))?;
    let blocks = names.len().div_ceil(32);
    // `struct ethtool_sfeatures`: command and block count, then per block
    // the bits to change and their new values (all zero: off).
    let mut request = vec![0u32; 2 + 2 * blocks];
    request[..2].copy_from_slice(&[ETHTOOL_SFEATURES, blocks as u32]);
    let mut turned_off = Vec::new();
    for (bit, name) in names.iter().enumerate().filter(|(_, name)| off(name)) {
        request[2 + 2 * (bit / 32)] |= 1 << (bit % 32);
        turned_off.push(name.clone());
    }
    ethtool(ifname, request.as_mut_slice()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("turning {turned_off:?} off on {ifname}: {e}"),
        )
    })?;
    Ok(turned_off)
}

/// Whether `offload` is on on `ifname`.
pub fn is_on(ifname: &str, offload: Offload) -> io::Result<bool> {
    let mut value = EthtoolValue {
        cmd: offload.command() - GET_OF_SET,
        data: 0,
    };
    ethtool(ifname, &mut value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("reading {} on {ifname}: {e}", offload.name()),
        )
    })?;
    Ok(value.data != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lo_is_asked_and_a_missing_interface_is_an_error() {
        // Every namespace has lo. It has no driver to name: the kernel
        // answers EOPNOTSUPP (6.18), or a name where lo gains one; any
        // other answer means the request itself is wrong. Real drivers
        // (veth, tun) are named in the lab tests that wire uplinks.
        match driver("lo") {
            Ok(_) => {}
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "{e}"),
        }
        let missing = driver("no-such-if0").unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(libc::ENODEV));
        let refused = turn_off("no-such-if0", &[Offload::TxChecksum]).unwrap_err();
        assert!(
            refused.to_string().contains("TX checksum offload"),
            "{refused}"
        );
    }
}
