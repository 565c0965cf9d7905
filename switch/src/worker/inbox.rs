//! A worker's inbox: packets other workers hand over for its ports, as
//! frames of the shared buffer area. A worker asleep in `poll()` is woken
//! by the handoff that finds it so (through its wake-up event), and only
//! then: a busy worker sees the inbox on its next pass.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam::queue::ArrayQueue;
use nix::sys::eventfd::EventFd;

use super::pipeline::Handoff;

/// One worker's inbox.
pub struct Inbox {
    handoffs: ArrayQueue<Handoff>,
    sleeping: AtomicBool,
    wake: Arc<EventFd>,
}

impl Inbox {
    /// An inbox holding up to `capacity` packets for the worker that
    /// `wake` wakes.
    pub fn new(capacity: usize, wake: Arc<EventFd>) -> Inbox {
        Inbox {
            handoffs: ArrayQueue::new(capacity),
            sleeping: AtomicBool::new(false),
            wake,
        }
    }

    /// Hand a packet over, waking the worker if it sleeps; the handoff
    /// back if the inbox is full.
    pub fn push(&self, handoff: Handoff) -> Result<(), Handoff> {
        self.handoffs.push(handoff)?;
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let _ = self.wake.write(1);
        }
        Ok(())
    }

    /// The next packet handed over, if any.
    pub fn pop(&self) -> Option<Handoff> {
        self.handoffs.pop()
    }

    /// The worker is about to sleep: whether it may (false when a packet
    /// arrived meanwhile, which no one will wake it for).
    pub fn may_sleep(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.handoffs.is_empty() {
            return true;
        }
        self.sleeping.store(false, Ordering::SeqCst);
        false
    }

    /// The worker is awake again.
    pub fn awake(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use arrayvec::ArrayVec;
    use nix::sys::eventfd::EfdFlags;

    use super::*;
    use crate::topology::PortId;

    fn handoff() -> Handoff {
        Handoff {
            port: PortId(3),
            frames: ArrayVec::new(),
        }
    }

    #[test]
    fn a_handoff_wakes_a_sleeping_worker_once_and_a_busy_one_never() {
        let wake = Arc::new(EventFd::from_flags(EfdFlags::EFD_NONBLOCK).unwrap());
        let inbox = Inbox::new(4, wake.clone());
        inbox.push(handoff()).unwrap();
        assert!(wake.read().is_err(), "a busy worker is not woken");
        assert!(!inbox.may_sleep(), "something is waiting: no sleep");
        assert!(inbox.pop().is_some());
        assert!(inbox.may_sleep());
        inbox.push(handoff()).unwrap();
        inbox.push(handoff()).unwrap();
        assert_eq!(wake.read().unwrap(), 1, "woken once");
        inbox.awake();
        for _ in 0..2 {
            inbox.push(handoff()).unwrap();
        }
        assert!(inbox.push(handoff()).is_err(), "full: handed back");
    }
}
