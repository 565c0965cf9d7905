//! Thin, checked wrappers over the socket-option syscalls AF_XDP needs.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsRawFd, BorrowedFd};

/// A libc return value as a `Result`: negative means `errno` is set.
pub(super) fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `setsockopt(fd, SOL_XDP, option, value)`.
pub(super) fn set_xdp_option<T>(
    fd: BorrowedFd<'_>,
    option: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live `T` and the length passed is its size; the
    // kernel only reads that many bytes.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            option,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// A kernel struct made only of integers, so every bit pattern is a valid
/// value.
///
/// # Safety
/// Implement it only for such structs.
pub(super) unsafe trait PlainData: Copy {}

// SAFETY: kernel UAPI structs of `__u32`/`__u64` fields only.
unsafe impl PlainData for libc::xdp_mmap_offsets {}
// SAFETY: as above.
unsafe impl PlainData for libc::xdp_statistics {}
// SAFETY: as above.
unsafe impl PlainData for libc::xdp_options {}

/// `getsockopt(fd, SOL_XDP, option)`. Fails unless the kernel filled the
/// whole `T`, so an older, shorter layout is never mistaken for this one.
pub(super) fn get_xdp_option<T: PlainData>(
    fd: BorrowedFd<'_>,
    option: libc::c_int,
) -> io::Result<T> {
    let mut value = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `value`, which is
    // `size_of::<T>()` bytes long, and updates `len`.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            option,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    if len as usize != size_of::<T>() {
        return Err(io::Error::other(format!(
            "SOL_XDP option {option}: kernel returned {len} bytes, expected {} (kernel too old?)",
            size_of::<T>()
        )));
    }
    // SAFETY: `T: PlainData`, so any bytes (zeroes or what the kernel
    // wrote) are a valid `T`.
    Ok(unsafe { value.assume_init() })
}
