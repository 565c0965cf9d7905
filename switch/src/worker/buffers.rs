//! Buffers for packets larger than a buffer frame: a TCP super-frame from
//! an offloaded TAP port (up to 64 KB), a multi-buffer packet gathered from
//! its frames, or a frame read from a TAP device of a jumbo pod. Each
//! worker has a few, made on first use; a [`Buffer`] is the only handle to
//! one, so like a [`Frame`](crate::frames::Frame) it moves and is never
//! copied. A port reads into one only when one is free, so a worker whose
//! buffers all wait to be sent stops reading (backpressure).

use std::ops::Range;

use crate::tap::MAX_SUPER_FRAME;

/// Bytes in front of a packet in its buffer, for outer headers: as much
/// as a buffer frame has.
pub const HEADROOM: usize = crate::afxdp::XDP_PACKET_HEADROOM as usize;
/// Bytes a buffer holds after its headroom: the largest super-frame with
/// its virtio-net header (the tunnel form's, the longer one) and an
/// 802.1Q tag.
pub const ROOM: usize = podswitch_encap::virtio_net::TUNNEL_HEADER_LEN + MAX_SUPER_FRAME + 4;
/// Buffers one worker may have: enough for a batch of super-frames queued
/// for TAP ports while more are read.
pub const MAX_BUFFERS: usize = 32;

/// A buffer held by whoever holds this value, and where its packet lies.
#[derive(Debug, PartialEq, Eq)]
pub struct Buffer {
    index: usize,
    range: Range<usize>,
}

impl Buffer {
    /// Where the packet lies in the buffer.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// Say where the packet lies now.
    pub fn set_range(&mut self, range: Range<usize>) {
        self.range = range;
    }

    /// The packet's length.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// Whether the buffer holds no packet.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

/// One worker's buffers.
#[derive(Default)]
pub struct Buffers {
    memory: Vec<Box<[u8]>>,
    free: Vec<usize>,
}

impl Buffers {
    /// A free buffer, its packet empty at the headroom; `None` when all
    /// [`MAX_BUFFERS`] are in use.
    pub fn alloc(&mut self) -> Option<Buffer> {
        let index = match self.free.pop() {
            Some(index) => index,
            None if self.memory.len() < MAX_BUFFERS => {
                self.memory
                    .push(vec![0; HEADROOM + ROOM].into_boxed_slice());
                self.memory.len() - 1
            }
            None => return None,
        };
        Some(Buffer {
            index,
            range: HEADROOM..HEADROOM,
        })
    }

    /// Give a buffer back.
    pub fn free(&mut self, buffer: Buffer) {
        self.free.push(buffer.index);
    }

    /// The whole buffer (headroom included), mutably.
    pub fn memory_mut(&mut self, buffer: &mut Buffer) -> &mut [u8] {
        &mut self.memory[buffer.index]
    }

    /// Take `buffer`'s memory out, to read from it while writing into
    /// other buffers; [`Buffers::give_back`] puts it back.
    pub fn lend(&mut self, buffer: &mut Buffer) -> Box<[u8]> {
        std::mem::take(&mut self.memory[buffer.index])
    }

    /// Put back the memory [`Buffers::lend`] took out of `buffer`.
    pub fn give_back(&mut self, buffer: &mut Buffer, memory: Box<[u8]>) {
        self.memory[buffer.index] = memory;
    }

    /// The packet in `buffer`.
    pub fn bytes(&self, buffer: &Buffer) -> &[u8] {
        &self.memory[buffer.index][buffer.range.clone()]
    }

    /// Buffers in use.
    pub fn in_use(&self) -> usize {
        self.memory.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_made_on_demand_up_to_the_limit_and_reused() {
        let mut buffers = Buffers::default();
        let held: Vec<Buffer> = (0..MAX_BUFFERS).map(|_| buffers.alloc().unwrap()).collect();
        assert_eq!(buffers.alloc(), None, "all in use: the reader waits");
        assert_eq!(buffers.in_use(), MAX_BUFFERS);
        let mut indices: Vec<usize> = held.iter().map(|b| b.index).collect();
        indices.dedup();
        assert_eq!(indices.len(), MAX_BUFFERS);
        for buffer in held {
            buffers.free(buffer);
        }
        let mut again = buffers.alloc().unwrap();
        assert_eq!(again.range(), HEADROOM..HEADROOM);
        buffers.memory_mut(&mut again)[HEADROOM..HEADROOM + 2].copy_from_slice(b"hi");
        again.set_range(HEADROOM..HEADROOM + 2);
        assert_eq!(buffers.bytes(&again), b"hi");
        assert_eq!(buffers.memory.len(), MAX_BUFFERS, "no new memory");
    }
}
