//! AF_XDP sockets: one per (interface, rx queue), all on one [`Umem`].

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::ring::{ConsumerRing, ProducerRing};
use super::sys::{check, get_xdp_option, set_xdp_option};
use super::umem::Umem;

/// Bind flags of the socket that registers the UMEM: need_wakeup, and
/// multi-buffer, which the kernel records on the UMEM so that every socket
/// sharing it inherits it.
const OWNER_FLAGS: u16 = libc::XDP_USE_NEED_WAKEUP | libc::XDP_USE_SG;

/// How long `bind` keeps retrying EBUSY: the kernel frees the previous
/// socket's buffer pool on a (device, queue) asynchronously, 5–20 ms after
/// it closes (e.g. right after a restart).
const BIND_BUSY_RETRY: Duration = Duration::from_secs(3);

/// A packet descriptor as the RX and TX rings carry it (`struct xdp_desc`):
/// the UMEM address of the first byte, the length, and option flags.
///
/// On TX `addr` may be anywhere in a chunk as long as `addr + len` stays in
/// the same chunk: outer headers written in front of received data are
/// sent by moving `addr` back.
///
/// A packet larger than a chunk (multi-buffer, `XDP_USE_SG`) is a run of
/// descriptors, one per chunk, every one but the last with
/// [`XDP_PKT_CONTD`] in `options`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    /// UMEM address of the packet's first byte.
    pub addr: u64,
    /// Packet length in bytes.
    pub len: u32,
    /// `XDP_PKT_CONTD` and friends; 0 for single-buffer packets.
    pub options: u32,
}

const _: () = assert!(size_of::<Desc>() == size_of::<libc::xdp_desc>());

/// `Desc::options` flag: more of this packet follows in the next
/// descriptor (multi-buffer).
pub const XDP_PKT_CONTD: u32 = libc::XDP_PKT_CONTD;

impl Desc {
    /// Whether the packet goes on in the next descriptor.
    pub fn continues(&self) -> bool {
        self.options & XDP_PKT_CONTD != 0
    }
}

/// Zero-copy or copy mode for a socket's (device, queue).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyMode {
    /// Zero-copy where the driver supports it, copy mode otherwise (the
    /// kernel tries zero-copy and falls back within one bind).
    #[default]
    Auto,
    /// Always copy mode (`XDP_COPY`).
    Copy,
    /// Zero-copy or fail (`XDP_ZEROCOPY`).
    ZeroCopy,
}

/// Ring sizes (each a power of two) and copy mode of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XskConfig {
    /// RX ring entries.
    pub rx_size: u32,
    /// TX ring entries.
    pub tx_size: u32,
    /// Fill ring entries.
    pub fill_size: u32,
    /// Completion ring entries; at least `tx_size`, or TX stalls waiting
    /// for completion slots.
    pub comp_size: u32,
    /// Copy or zero-copy. Only the UMEM's owner socket chooses: a shared
    /// socket runs in the owner's mode, and asking it for the other mode
    /// is an error.
    pub copy_mode: CopyMode,
}

impl Default for XskConfig {
    /// RX, fill and completion 4096 (room for a worker that was off the CPU
    /// for a while), TX 2048, copy mode chosen automatically.
    fn default() -> XskConfig {
        XskConfig {
            rx_size: 4096,
            tx_size: 2048,
            fill_size: 4096,
            comp_size: 4096,
            copy_mode: CopyMode::Auto,
        }
    }
}

impl XskConfig {
    fn validate(&self) -> io::Result<()> {
        for (ring, size) in [
            ("RX", self.rx_size),
            ("TX", self.tx_size),
            ("fill", self.fill_size),
            ("completion", self.comp_size),
        ] {
            if !size.is_power_of_two() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("AF_XDP {ring} ring size {size} is not a power of two"),
                ));
            }
        }
        Ok(())
    }
}

/// The kernel's per-socket counters (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct XskStatistics {
    /// Packets dropped for lack of a fill-ring frame or because they did not
    /// fit in a frame.
    pub rx_dropped: u64,
    /// Invalid descriptors on the fill ring.
    pub rx_invalid_descs: u64,
    /// Invalid descriptors on the TX ring (never completed).
    pub tx_invalid_descs: u64,
    /// Packets dropped because the RX ring was full.
    pub rx_ring_full: u64,
    /// Times the kernel found the fill ring empty.
    pub rx_fill_ring_empty_descs: u64,
    /// Times the kernel found the TX ring empty.
    pub tx_ring_empty_descs: u64,
}

/// Entries sitting in each ring of a socket, from its producer and
/// consumer indices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RingLevels {
    /// Fill ring. An upper bound: the kernel publishes how far it has read
    /// the fill ring when it flushes (per packet in generic mode, per NAPI
    /// poll in native mode), so frames it already took can still count.
    pub fill: u32,
    /// RX ring.
    pub rx: u32,
    /// TX ring.
    pub tx: u32,
    /// Completion ring.
    pub completion: u32,
}

/// Which way a frame went to the kernel: through the fill ring, to be
/// received into, or through the TX ring.
#[derive(Clone, Copy)]
enum Direction {
    Rx,
    Tx,
}

/// One bit per UMEM frame: set while the frame is the kernel's on behalf of
/// this socket (handed over on fill or TX, not yet back through RX or
/// completion), with counts per direction. It is exact where ring indices
/// are not: the kernel publishes its fill-ring progress only when it
/// flushes, and keeps a frame it could not deliver (RX ring full) in a
/// private free list that no ring shows (measured: 10 frames into an RX
/// ring of 8 leave one frame in no ring).
struct HeldFrames {
    bits: Vec<u64>,
    count: [u32; 2],
    frame_shift: u32,
}

impl HeldFrames {
    fn new(umem: &Umem) -> HeldFrames {
        HeldFrames {
            bits: vec![0; umem.frame_count().div_ceil(64) as usize],
            count: [0; 2],
            frame_shift: umem.frame_shift(),
        }
    }

    fn word_and_bit(&self, addr: u64) -> (usize, u64) {
        let index = (addr >> self.frame_shift) as usize;
        (index / 64, 1 << (index % 64))
    }

    /// The frame holding `addr` goes to the kernel.
    fn hand_over(&mut self, addr: u64, direction: Direction) {
        let (word, bit) = self.word_and_bit(addr);
        debug_assert_eq!(
            self.bits[word] & bit,
            0,
            "frame at {addr:#x} handed to the kernel twice"
        );
        self.bits[word] |= bit;
        self.count[direction as usize] += 1;
    }

    /// The frame holding `addr` comes back from the kernel.
    fn take_back(&mut self, addr: u64, direction: Direction) {
        let (word, bit) = self.word_and_bit(addr);
        debug_assert_ne!(
            self.bits[word] & bit,
            0,
            "kernel returned frame at {addr:#x} it did not hold"
        );
        self.bits[word] &= !bit;
        self.count[direction as usize] -= 1;
    }

    fn held(&self, direction: Direction) -> u32 {
        self.count[direction as usize]
    }

    /// Append the chunk address of every held frame to `out`; none are
    /// held afterwards.
    fn drain(&mut self, out: &mut Vec<u64>) {
        for (word_index, word) in self.bits.iter_mut().enumerate() {
            while *word != 0 {
                let bit = word.trailing_zeros() as u64;
                out.push((word_index as u64 * 64 + bit) << self.frame_shift);
                *word &= *word - 1;
            }
        }
        self.count = [0; 2];
    }

    fn chunk_base(&self, addr: u64) -> u64 {
        addr >> self.frame_shift << self.frame_shift
    }
}

/// How a new socket joins a bound socket's UMEM: a duplicate of that
/// socket's descriptor (the kernel finds the socket through it) and which
/// UMEM it is on. The socket must stay bound: one whose device is gone
/// makes binds through it fail with EBADF.
pub struct UmemShare {
    fd: OwnedFd,
    umem_base: usize,
}

impl AsRawFd for UmemShare {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An AF_XDP socket bound to one (interface, rx queue), with its own fill,
/// completion, RX and TX rings on the shared UMEM. `Send`: one thread uses
/// it at a time.
///
/// It keeps count of the frames it has handed to the kernel
/// ([`XskSocket::frames_held`]) so that [`XskSocket::reclaim`] returns
/// every one of them when the port goes away.
pub struct XskSocket {
    fd: OwnedFd,
    ifindex: u32,
    queue: u32,
    zero_copy: bool,
    umem_base: usize,
    rx: ConsumerRing<Desc>,
    tx: ProducerRing<Desc>,
    fill: ProducerRing<u64>,
    completion: ConsumerRing<u64>,
    held: HeldFrames,
}

impl XskSocket {
    /// Bind a socket to (`ifindex`, `queue`).
    ///
    /// With `shared_with` None the UMEM is registered on this socket (it
    /// becomes the UMEM's owner, and `cfg.copy_mode` picks the mode:
    /// `Auto` lets the kernel try zero-copy and fall back to copy).
    /// With `Some(share)` (from [`XskSocket::umem_share`] of any socket
    /// bound on the same UMEM) it binds with `XDP_SHARED_UMEM` alone — the kernel refuses any other
    /// flag there — and inherits copy mode, need_wakeup and multi-buffer
    /// from it. need_wakeup and multi-buffer (`XDP_USE_SG`: a packet
    /// larger than a chunk arrives and leaves as a run of descriptors, see
    /// [`Desc`]) are always on. EBUSY is retried for up to 3 s (the
    /// previous socket on this queue may still be going away).
    ///
    /// Errors: `InvalidInput` for ring sizes that are not powers of two, a
    /// `shared_with` socket on another UMEM, or a shared socket whose
    /// inherited mode contradicts `cfg.copy_mode`; `Unsupported` for
    /// zero-copy on a driver without it; otherwise the kernel's error, with
    /// context (EINVAL on bind usually means the queue is not active).
    pub fn bind(
        umem: &Umem,
        ifindex: u32,
        queue: u32,
        cfg: &XskConfig,
        shared_with: Option<&UmemShare>,
    ) -> io::Result<XskSocket> {
        cfg.validate()?;
        let umem_base = umem.base() as usize;
        if shared_with.is_some_and(|owner| owner.umem_base != umem_base) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "shared_with socket is bound to a different UMEM",
            ));
        }
        let context = |what: &str, err: io::Error| {
            io::Error::new(
                err.kind(),
                format!("AF_XDP socket for ifindex {ifindex} queue {queue}: {what}: {err}"),
            )
        };
        // SAFETY: socket(2) with constant arguments.
        let raw =
            check(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })
                .map_err(|e| context("socket(AF_XDP)", e))?;
        // SAFETY: `raw` is a descriptor we just created and nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if shared_with.is_none() {
            register_umem(fd.as_fd(), umem).map_err(|e| {
                context(
                    "registering the UMEM (ENOBUFS: over the memlock limit without CAP_IPC_LOCK)",
                    e,
                )
            })?;
        }
        let Rings {
            rx,
            tx,
            fill,
            completion,
        } = Rings::map(fd.as_fd(), cfg).map_err(|e| context("setting up rings", e))?;

        let flags = match (shared_with, cfg.copy_mode) {
            (Some(_), _) => libc::XDP_SHARED_UMEM,
            (None, CopyMode::Auto) => OWNER_FLAGS,
            (None, CopyMode::Copy) => OWNER_FLAGS | libc::XDP_COPY,
            (None, CopyMode::ZeroCopy) => OWNER_FLAGS | libc::XDP_ZEROCOPY,
        };
        let address = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: shared_with.map_or(0, |owner| owner.as_raw_fd() as u32),
        };
        bind_retrying_busy(fd.as_fd(), &address).map_err(|e| context("bind", e))?;

        let options: libc::xdp_options =
            get_xdp_option(fd.as_fd(), libc::XDP_OPTIONS).map_err(|e| context("XDP_OPTIONS", e))?;
        let zero_copy = options.flags & libc::XDP_OPTIONS_ZEROCOPY != 0;
        if matches!(
            (cfg.copy_mode, zero_copy),
            (CopyMode::Copy, true) | (CopyMode::ZeroCopy, false)
        ) {
            let running = if zero_copy { "zero-copy" } else { "copy mode" };
            let asked = format!(
                "asked for {:?} but the shared UMEM runs {running}",
                cfg.copy_mode
            );
            return Err(context(
                "copy mode",
                io::Error::new(io::ErrorKind::InvalidInput, asked),
            ));
        }
        Ok(XskSocket {
            fd,
            ifindex,
            queue,
            zero_copy,
            umem_base,
            rx,
            tx,
            fill,
            completion,
            held: HeldFrames::new(umem),
        })
    }

    /// A handle other sockets bind through to share this socket's UMEM,
    /// usable where this socket is not (it lives in a worker thread).
    pub fn umem_share(&self) -> io::Result<UmemShare> {
        Ok(UmemShare {
            fd: self.fd.try_clone()?,
            umem_base: self.umem_base,
        })
    }

    /// The interface the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The rx queue the socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Whether the socket runs zero-copy (as the kernel reports it).
    pub fn is_zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// The kernel's counters for this socket.
    pub fn statistics(&self) -> io::Result<XskStatistics> {
        let stats: libc::xdp_statistics = get_xdp_option(self.fd.as_fd(), libc::XDP_STATISTICS)?;
        Ok(XskStatistics {
            rx_dropped: stats.rx_dropped,
            rx_invalid_descs: stats.rx_invalid_descs,
            tx_invalid_descs: stats.tx_invalid_descs,
            rx_ring_full: stats.rx_ring_full,
            rx_fill_ring_empty_descs: stats.rx_fill_ring_empty_descs,
            tx_ring_empty_descs: stats.tx_ring_empty_descs,
        })
    }

    /// Take up to `max` received descriptors off the RX ring, appending
    /// them to `out` (data starts at `Umem::rx_data_offset` into each
    /// chunk); how many. A packet is never cut: past `max`, the rest of a
    /// multi-buffer packet is taken too (the kernel publishes a packet's
    /// descriptors together). The frames are the caller's from here on.
    pub fn recv(&mut self, out: &mut Vec<Desc>, max: usize) -> usize {
        let held = &mut self.held;
        let mut last_continues = false;
        let mut taken = self.rx.consume(max, |desc| {
            held.take_back(desc.addr, Direction::Rx);
            last_continues = desc.continues();
            out.push(desc);
        });
        while last_continues {
            let more = self.rx.consume(1, |desc| {
                held.take_back(desc.addr, Direction::Rx);
                last_continues = desc.continues();
                out.push(desc);
            });
            if more == 0 {
                break;
            }
            taken += more;
        }
        taken
    }

    /// Put as many whole packets of `descs` on the TX ring as fit and
    /// publish them; how many descriptors (a prefix of `descs`, ending
    /// with a packet's last descriptor: a multi-buffer packet goes on
    /// whole or not at all). The frames are the kernel's until they come
    /// back through [`XskSocket::complete`], one completion per
    /// descriptor. In copy mode nothing leaves until [`XskSocket::kick_tx`].
    ///
    /// Each descriptor must stay within one chunk (`addr` anywhere in it,
    /// `len > 0`); the kernel drops one that does not, counts it in
    /// `tx_invalid_descs` and never completes it (it stays held until
    /// `reclaim`).
    ///
    /// # Panics
    /// If an address lies outside the UMEM.
    pub fn send(&mut self, descs: &[Desc]) -> usize {
        let room = (self.tx.free(descs.len() as u32) as usize).min(descs.len());
        let whole = descs[..room]
            .iter()
            .rposition(|desc| !desc.continues())
            .map_or(0, |last| last + 1);
        let sent = self.tx.produce(&descs[..whole]);
        for desc in &descs[..sent] {
            debug_assert!(
                desc.len > 0
                    && self.held.chunk_base(desc.addr)
                        == self.held.chunk_base(desc.addr + u64::from(desc.len) - 1),
                "TX descriptor {desc:?} crosses a chunk boundary"
            );
            self.held.hand_over(desc.addr, Direction::Tx);
        }
        sent
    }

    /// Ask the kernel to transmit (`sendto` with `MSG_DONTWAIT`). Copy mode
    /// transmits only inside this call (at most 32 frames each time), so
    /// kick after every batch you send; zero-copy drivers need it only when
    /// [`XskSocket::tx_needs_wakeup`]. Transient refusals (EAGAIN, EBUSY,
    /// ENOBUFS, ENETDOWN) are not errors; ENXIO means the device is gone.
    pub fn kick_tx(&self) -> io::Result<()> {
        // SAFETY: sendto(2) with no buffer and no address.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                ptr::null(),
                0,
            )
        };
        if sent >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN) => Ok(()),
            _ => Err(err),
        }
    }

    /// The kernel wants a [`XskSocket::kick_tx`] before it sends more
    /// (always, in copy mode).
    pub fn tx_needs_wakeup(&self) -> bool {
        self.tx.needs_wakeup()
    }

    /// The kernel wants a [`XskSocket::kick_rx`] before it takes more
    /// frames from the fill ring (zero-copy drivers that ran dry).
    pub fn fill_needs_wakeup(&self) -> bool {
        self.fill.needs_wakeup()
    }

    /// Wake the kernel's RX side (`recvfrom` with `MSG_DONTWAIT`); errors
    /// are meaningless here and ignored.
    pub fn kick_rx(&self) {
        // SAFETY: recvfrom(2) with no buffer and no address.
        unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        };
    }

    /// Give free frames (any address inside each chunk) to the kernel for
    /// receiving; how many it took (a prefix of `addrs`).
    ///
    /// # Panics
    /// If an address lies outside the UMEM.
    pub fn fill(&mut self, addrs: &[u64]) -> usize {
        let filled = self.fill.produce(addrs);
        for &addr in &addrs[..filled] {
            self.held.hand_over(addr, Direction::Rx);
        }
        filled
    }

    /// Free slots on the fill ring now.
    pub fn fill_free_slots(&mut self) -> u32 {
        self.fill.free(u32::MAX)
    }

    /// Free slots on the TX ring now: [`XskSocket::send`] takes this many
    /// descriptors.
    pub fn tx_free_slots(&mut self) -> u32 {
        self.tx.free(u32::MAX)
    }

    /// Take up to `max` completed transmissions, appending their frames'
    /// chunk addresses (whatever in-chunk address was sent) to `out`; how
    /// many. The frames are the caller's again.
    pub fn complete(&mut self, out: &mut Vec<u64>, max: usize) -> usize {
        let held = &mut self.held;
        self.completion.consume(max, |addr| {
            held.take_back(addr, Direction::Tx);
            out.push(held.chunk_base(addr));
        })
    }

    /// Entries currently sitting in each ring, from the producer and
    /// consumer indices. For exact frame accounting use
    /// [`XskSocket::frames_held`].
    pub fn ring_levels(&self) -> RingLevels {
        RingLevels {
            fill: self.fill.level(),
            rx: self.rx.level(),
            tx: self.tx.level(),
            completion: self.completion.level(),
        }
    }

    /// Frames this socket has handed to the kernel (fill, TX) and not yet
    /// got back (RX, completion): exact, wherever the kernel keeps them.
    /// With the caller's own count, this always adds up to the UMEM.
    pub fn frames_held(&self) -> u32 {
        self.held.held(Direction::Rx) + self.held.held(Direction::Tx)
    }

    /// Of [`XskSocket::frames_held`], those given through the fill ring and
    /// not yet received: the kernel's stock for receiving on this queue.
    /// Budget refills with this rather than with the fill ring's level,
    /// which lags the kernel and misses frames it keeps for itself.
    pub fn frames_held_for_rx(&self) -> u32 {
        self.held.held(Direction::Rx)
    }

    /// Of [`XskSocket::frames_held`], those given through the TX ring and
    /// not yet completed.
    pub fn frames_held_for_tx(&self) -> u32 {
        self.held.held(Direction::Tx)
    }

    /// Close the socket and append the chunk address of every frame it
    /// still held — on its fill, RX, TX or completion ring, or inside the
    /// kernel — to `out`, so the caller can put them back on its free list.
    /// Call it when the port goes away (device gone, or XSKMAP entry removed
    /// and traffic quiesced): nothing is lost, nothing returned twice.
    ///
    /// (Takes `self`: afterwards the rings must not be read again, or the
    /// same frames would come back twice.)
    pub fn reclaim(mut self, out: &mut Vec<u64>) {
        self.held.drain(out);
    }
}

impl AsRawFd for XskSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Register `umem` on the socket `fd` (`XDP_UMEM_REG`, aligned chunks).
fn register_umem(fd: BorrowedFd<'_>, umem: &Umem) -> io::Result<()> {
    let registration = libc::xdp_umem_reg {
        addr: umem.base() as u64,
        len: umem.len() as u64,
        chunk_size: umem.frame_size(),
        headroom: umem.headroom(),
        flags: 0,
        tx_metadata_len: 0,
    };
    set_xdp_option(fd, libc::XDP_UMEM_REG, &registration)
}

/// A socket's four rings, as set up by [`Rings::map`].
struct Rings {
    rx: ConsumerRing<Desc>,
    tx: ProducerRing<Desc>,
    fill: ProducerRing<u64>,
    completion: ConsumerRing<u64>,
}

impl Rings {
    /// Size and map the socket's four rings. Every socket has its own fill
    /// and completion ring: the kernel requires them for a shared UMEM on
    /// another device or queue.
    fn map(fd: BorrowedFd<'_>, cfg: &XskConfig) -> io::Result<Rings> {
        for (option, size) in [
            (libc::XDP_UMEM_FILL_RING, cfg.fill_size),
            (libc::XDP_UMEM_COMPLETION_RING, cfg.comp_size),
            (libc::XDP_RX_RING, cfg.rx_size),
            (libc::XDP_TX_RING, cfg.tx_size),
        ] {
            set_xdp_option(fd, option, &size)?;
        }
        let offsets: libc::xdp_mmap_offsets = get_xdp_option(fd, libc::XDP_MMAP_OFFSETS)?;
        Ok(Rings {
            rx: ConsumerRing::map(fd, &offsets.rx, cfg.rx_size, libc::XDP_PGOFF_RX_RING as u64)?,
            tx: ProducerRing::map(fd, &offsets.tx, cfg.tx_size, libc::XDP_PGOFF_TX_RING as u64)?,
            fill: ProducerRing::map(
                fd,
                &offsets.fr,
                cfg.fill_size,
                libc::XDP_UMEM_PGOFF_FILL_RING,
            )?,
            completion: ConsumerRing::map(
                fd,
                &offsets.cr,
                cfg.comp_size,
                libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            )?,
        })
    }
}

/// bind(2), retrying EBUSY for up to [`BIND_BUSY_RETRY`].
fn bind_retrying_busy(fd: BorrowedFd<'_>, address: &libc::sockaddr_xdp) -> io::Result<()> {
    let deadline = Instant::now() + BIND_BUSY_RETRY;
    loop {
        // SAFETY: `address` is a live sockaddr_xdp and the length is its size.
        let bound = check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (address as *const libc::sockaddr_xdp).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        });
        match bound {
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result.map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::afxdp::UmemConfig;

    #[test]
    fn held_frames_follow_every_hand_over_and_return() {
        let umem = Umem::new(&UmemConfig {
            frame_count: 130,
            frame_size: 2048,
            headroom: 0,
        })
        .unwrap();
        let mut held = HeldFrames::new(&umem);
        // Any address inside a chunk stands for that chunk.
        held.hand_over(umem.chunk_addr(0), Direction::Rx);
        held.hand_over(umem.chunk_addr(64) + 256, Direction::Rx);
        held.hand_over(umem.chunk_addr(129) + 100, Direction::Tx);
        held.hand_over(umem.chunk_addr(5), Direction::Tx);
        assert_eq!((held.held(Direction::Rx), held.held(Direction::Tx)), (2, 2));
        held.take_back(umem.chunk_addr(64) + 300, Direction::Rx);
        held.take_back(umem.chunk_addr(5) + 40, Direction::Tx);
        assert_eq!((held.held(Direction::Rx), held.held(Direction::Tx)), (1, 1));
        let mut out = Vec::new();
        held.drain(&mut out);
        assert_eq!(out, vec![umem.chunk_addr(0), umem.chunk_addr(129)]);
        assert_eq!((held.held(Direction::Rx), held.held(Direction::Tx)), (0, 0));
        held.drain(&mut out);
        assert_eq!(out.len(), 2, "nothing is returned twice");
    }

    #[test]
    fn only_power_of_two_rings() {
        let odd = XskConfig {
            fill_size: 3000,
            ..XskConfig::default()
        };
        assert_eq!(
            odd.validate().unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(XskConfig::default().validate().is_ok());
    }

    #[test]
    fn sockets_move_between_threads_and_the_umem_is_shared() {
        fn send<T: Send>() {}
        fn sync<T: Sync>() {}
        send::<XskSocket>();
        send::<Umem>();
        sync::<Umem>();
    }
}
