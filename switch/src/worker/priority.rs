//! The worker thread's scheduling priority while it is behind its
//! senders (`overload_nice`): what the kernel path gets from forwarding
//! in softirq, a userspace switch gets from the scheduler.

/// How much a pass found to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Load {
    /// Nothing.
    Idle,
    /// Some packets.
    Worked,
    /// A whole receive batch on a port: the worker is behind its senders.
    Behind,
}

/// The worker thread's scheduling priority. While it is behind (a
/// receive batch came full) it takes `overload_nice`, so that on a CPU
/// shared with pods it goes ahead of a sender that floods it, as the
/// kernel's forwarding in softirq does, and the sender slows down instead
/// of losing packets at a full ring; at its first idle pass it is back at
/// the nice it started with, so a spinning worker never holds the CPU
/// over a pod.
pub(super) struct Priority {
    /// The nice value while behind; no change when not below `base`.
    overload_nice: i32,
    /// The thread's nice value when it started.
    base: i32,
    raised: bool,
}

impl Priority {
    pub(super) fn new(overload_nice: i32) -> Priority {
        Priority {
            overload_nice,
            base: nice().unwrap_or(0),
            raised: false,
        }
    }

    /// Raise the priority when a pass was behind, lower it when idle;
    /// whether it was raised just now.
    pub(super) fn follow(&mut self, load: Load) -> bool {
        let raise = match load {
            Load::Behind => true,
            Load::Idle => false,
            Load::Worked => return false,
        };
        if raise == self.raised || self.overload_nice >= self.base {
            return false;
        }
        let nice = if raise { self.overload_nice } else { self.base };
        if let Err(error) = set_nice(nice) {
            tracing::warn!(%error, nice, "worker: cannot change its priority; keeping it");
            self.overload_nice = self.base;
            return false;
        }
        self.raised = raise;
        raise
    }
}

/// The calling thread's nice value.
fn nice() -> nix::Result<i32> {
    nix::errno::Errno::clear();
    // SAFETY: getpriority reads the calling thread's (who = its thread
    // ID) scheduling priority; no memory is passed.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
    match nix::errno::Errno::last_raw() {
        0 => Ok(nice),
        _ => Err(nix::errno::Errno::last()),
    }
}

/// Set the calling thread's nice value (Linux keeps one per thread).
fn set_nice(nice: i32) -> nix::Result<()> {
    // SAFETY: setpriority changes the calling thread's (who = its thread
    // ID) scheduling priority; no memory is passed.
    let result =
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    nix::errno::Errno::result(result).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_behind_is_raised_and_an_idle_one_back_at_its_nice() {
        // In a thread of its own: nice values are per thread on Linux.
        std::thread::spawn(|| {
            let base = nice().unwrap();
            let mut priority = Priority::new(base - 5);
            let raised = priority.follow(Load::Behind);
            if priority.overload_nice == priority.base {
                assert!(!raised);
                // Not allowed to raise priorities here (no CAP_SYS_NICE):
                // it gave up and left the thread as it was.
                assert_eq!(nice().unwrap(), base);
                return;
            }
            assert!(raised);
            assert_eq!(nice().unwrap(), base - 5);
            // Still behind or working through a backlog: no change.
            assert!(!priority.follow(Load::Worked));
            assert!(!priority.follow(Load::Behind));
            assert_eq!(nice().unwrap(), base - 5);
            assert!(!priority.follow(Load::Idle));
            assert_eq!(nice().unwrap(), base);
            // Off: never changed.
            let mut off = Priority::new(base);
            assert!(!off.follow(Load::Behind));
            assert_eq!(nice().unwrap(), base);
        })
        .join()
        .unwrap();
    }
}
