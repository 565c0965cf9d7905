//! The buffer area (UMEM) every AF_XDP socket of the switch shares.

use std::io;
use std::ptr::{self, NonNull};

/// Bytes the kernel leaves in front of received data (`XDP_PACKET_HEADROOM`),
/// after the UMEM's own headroom. They are ours to write, e.g. outer headers.
pub const XDP_PACKET_HEADROOM: u32 = 256;

/// The smallest chunk the kernel accepts (`XDP_UMEM_MIN_CHUNK_SIZE`).
const MIN_FRAME_SIZE: u32 = 2048;

/// The shape of a [`Umem`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UmemConfig {
    /// Number of frames (chunks).
    pub frame_count: u32,
    /// Bytes per frame: a power of two from 2048 to the page size. A
    /// 2048-byte frame holds at most 2048 − 256 − `headroom` bytes of
    /// packet (1792 with no headroom): use 4096 for a 1500-byte MTU with
    /// room to spare, or anything above 1792.
    pub frame_size: u32,
    /// Extra bytes the kernel leaves in front of received data on top of
    /// its 256 (`xdp_umem_reg.headroom`).
    pub headroom: u32,
}

impl Default for UmemConfig {
    /// 16384 frames of 4096 bytes (64 MiB; needs CAP_IPC_LOCK above the
    /// memlock limit), no extra headroom.
    fn default() -> UmemConfig {
        UmemConfig {
            frame_count: 16384,
            frame_size: 4096,
            headroom: 0,
        }
    }
}

/// An anonymous, pre-faulted memory area cut into equal frames. The first
/// socket bound with it registers it with the kernel (`XDP_UMEM_REG`);
/// frame addresses are byte offsets from its start.
///
/// `Send + Sync`: worker threads share it, and by protocol each frame is
/// owned by one of them (or by the kernel) at a time.
pub struct Umem {
    base: NonNull<u8>,
    frame_count: u32,
    frame_size: u32,
    frame_shift: u32,
    headroom: u32,
}

// SAFETY: the area is plain memory; `Umem` itself never reads or writes
// it, and access through `chunk_mut` is governed by its safety contract.
unsafe impl Send for Umem {}
// SAFETY: as above.
unsafe impl Sync for Umem {}

impl Umem {
    /// Map an area for `cfg`: `frame_count × frame_size` bytes.
    pub fn new(cfg: &UmemConfig) -> io::Result<Umem> {
        let invalid = |what: String| Err(io::Error::new(io::ErrorKind::InvalidInput, what));
        let page_size = page_size();
        if !cfg.frame_size.is_power_of_two()
            || cfg.frame_size < MIN_FRAME_SIZE
            || cfg.frame_size as usize > page_size
        {
            return invalid(format!(
                "UMEM frame size {} must be a power of two from {MIN_FRAME_SIZE} to the page size {page_size}",
                cfg.frame_size
            ));
        }
        if cfg.headroom + XDP_PACKET_HEADROOM >= cfg.frame_size {
            return invalid(format!(
                "UMEM headroom {} leaves no room for data in a {}-byte frame",
                cfg.headroom, cfg.frame_size
            ));
        }
        if cfg.frame_count == 0 {
            return invalid("UMEM needs at least one frame".to_string());
        }
        let len = cfg.frame_count as usize * cfg.frame_size as usize;
        // SAFETY: a fresh private anonymous mapping; nothing aliases it.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base =
            NonNull::new(base.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Umem {
            base,
            frame_count: cfg.frame_count,
            frame_size: cfg.frame_size,
            frame_shift: cfg.frame_size.trailing_zeros(),
            headroom: cfg.headroom,
        })
    }

    /// Number of frames.
    pub fn frame_count(&self) -> u32 {
        self.frame_count
    }

    /// Bytes per frame.
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    /// The UMEM's own headroom (`UmemConfig::headroom`).
    pub(super) fn headroom(&self) -> u32 {
        self.headroom
    }

    /// Offset from a chunk's start to where the kernel writes received
    /// packet data: `headroom + XDP_PACKET_HEADROOM` (256 with no headroom).
    /// Everything before it in the chunk is free for outer headers.
    pub fn rx_data_offset(&self) -> u32 {
        self.headroom + XDP_PACKET_HEADROOM
    }

    /// The address of frame `index`'s chunk (`index < frame_count`).
    pub fn chunk_addr(&self, index: u32) -> u64 {
        debug_assert!(index < self.frame_count, "frame {index} out of range");
        u64::from(index) << self.frame_shift
    }

    /// The index of the chunk holding `addr`.
    pub fn chunk_index(&self, addr: u64) -> u32 {
        debug_assert!(
            addr < self.len() as u64,
            "address {addr:#x} outside the UMEM"
        );
        (addr >> self.frame_shift) as u32
    }

    /// The whole chunk that holds `addr`, mutably.
    ///
    /// # Panics
    /// If `addr` lies outside the UMEM.
    ///
    /// # Safety
    /// The caller owns that frame: it is on no kernel ring (fill, RX, TX,
    /// completion) and no other reference to it exists.
    #[allow(clippy::mut_from_ref)] // frames are handed out by ownership protocol, see Safety
    pub unsafe fn chunk_mut(&self, addr: u64) -> &mut [u8] {
        let start = self.chunk_start(addr);
        // SAFETY: the chunk lies inside the mapping (`chunk_start` checks),
        // and the caller guarantees exclusive ownership of it.
        unsafe {
            std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), self.frame_size as usize)
        }
    }

    /// The whole chunk that holds `addr`, shared.
    ///
    /// # Panics
    /// If `addr` lies outside the UMEM.
    ///
    /// # Safety
    /// The caller owns that frame, or shares it with readers only: it is
    /// on no kernel ring and no mutable reference to it exists.
    pub unsafe fn chunk(&self, addr: u64) -> &[u8] {
        let start = self.chunk_start(addr);
        // SAFETY: the chunk lies inside the mapping (`chunk_start` checks),
        // and the caller guarantees no one writes it meanwhile.
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(start), self.frame_size as usize)
        }
    }

    /// The offset of the chunk holding `addr`.
    ///
    /// # Panics
    /// If `addr` lies outside the UMEM.
    fn chunk_start(&self, addr: u64) -> usize {
        assert!(
            addr < self.len() as u64,
            "address {addr:#x} outside the UMEM"
        );
        (addr >> self.frame_shift << self.frame_shift) as usize
    }

    /// Total bytes.
    pub(super) fn len(&self) -> usize {
        self.frame_count as usize * self.frame_size as usize
    }

    /// The area's start, as `xdp_umem_reg.addr` wants it.
    pub(super) fn base(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// log2 of the frame size: `addr >> frame_shift` is a chunk index.
    pub(super) fn frame_shift(&self) -> u32 {
        self.frame_shift
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly our mapping. Sockets still registered with
        // it keep the pages pinned in the kernel, so the kernel never writes
        // to memory that user space could reuse.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len()) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_frame_sizes_the_kernel_refuses() {
        for frame_size in [1024, 3000, 1 << 20] {
            let cfg = UmemConfig {
                frame_count: 4,
                frame_size,
                headroom: 0,
            };
            let err = Umem::new(&cfg).err().expect("refused");
            assert_eq!(
                err.kind(),
                io::ErrorKind::InvalidInput,
                "{frame_size}: {err}"
            );
        }
        let no_room = UmemConfig {
            frame_count: 4,
            frame_size: 2048,
            headroom: 1792,
        };
        assert!(Umem::new(&no_room).is_err());
        let empty = UmemConfig {
            frame_count: 0,
            ..UmemConfig::default()
        };
        assert!(Umem::new(&empty).is_err());
    }

    #[test]
    fn chunk_arithmetic() {
        let umem = Umem::new(&UmemConfig {
            frame_count: 8,
            frame_size: 2048,
            headroom: 64,
        })
        .unwrap();
        assert_eq!(umem.rx_data_offset(), 320);
        assert_eq!(umem.chunk_addr(3), 3 * 2048);
        assert_eq!(umem.chunk_index(3 * 2048 + 320), 3);
        assert_eq!(umem.chunk_index(3 * 2048 + 2047), 3);
        // SAFETY: no socket uses this UMEM, so the test owns every frame.
        let chunk = unsafe { umem.chunk_mut(3 * 2048 + 320) };
        assert_eq!(chunk.len(), 2048);
        chunk[0] = 7;
        // SAFETY: as above; the previous borrow is no longer used.
        assert_eq!(unsafe { umem.chunk_mut(3 * 2048) }[0], 7);
    }
}
