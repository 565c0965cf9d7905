//! Where the worker thread may run. It polls from its own core; asleep
//! (adaptive mode, `sleep_on_any_cpu`) it lets go of it, so the packet
//! that wakes it can wake it on the CPU that sent the packet, which is
//! already running, rather than on its own idle core: on a host where an
//! idle CPU is slow to wake (a virtual machine's halted vCPU: 100–300 µs
//! here, against 20 µs for a thread woken on the running CPU) a round
//! trip through two sleeping switches then costs half as much. Once it has
//! stayed awake for [`REPIN_AFTER`] (traffic, not a lone request) it takes
//! its core again.

use std::time::{Duration, Instant};

use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
use nix::unistd::Pid;

/// How long a woken worker runs unpinned before it takes its core again.
pub(super) const REPIN_AFTER: Duration = Duration::from_millis(1);

/// The worker thread's CPU affinity.
pub(super) struct Affinity {
    /// Its own core.
    core: CpuSet,
    /// The CPUs it may sleep on: the daemon's, as it started; `None`: it
    /// stays on its core.
    asleep: Option<CpuSet>,
    /// Whether it is off its core.
    unpinned: bool,
    /// When it last woke.
    awake_since: Instant,
}

impl Affinity {
    /// Pin the calling thread to `core`; `sleep_on_any_cpu`: let it sleep
    /// on any of the CPUs the thread may use now.
    pub(super) fn pin(core: usize, sleep_on_any_cpu: bool) -> Affinity {
        let asleep = sleep_on_any_cpu
            .then(|| sched_getaffinity(Pid::from_raw(0)).ok())
            .flatten();
        let mut own = CpuSet::new();
        if let Err(error) = own.set(core) {
            tracing::warn!(core, %error, "worker: no such core; not pinned");
        }
        let affinity = Affinity {
            core: own,
            asleep,
            unpinned: false,
            awake_since: Instant::now(),
        };
        if let Err(error) = sched_setaffinity(Pid::from_raw(0), &affinity.core) {
            tracing::warn!(core, %error, "worker: could not pin itself to its core");
        }
        affinity
    }

    /// Before a sleep: let the thread be woken on any of its CPUs.
    pub(super) fn before_sleep(&mut self) {
        let Some(anywhere) = &self.asleep else {
            return;
        };
        if self.unpinned {
            return;
        }
        match sched_setaffinity(Pid::from_raw(0), anywhere) {
            Ok(()) => self.unpinned = true,
            Err(error) => {
                tracing::warn!(%error, "worker: cannot sleep unpinned; staying on its core");
                self.asleep = None;
            }
        }
    }

    /// After a sleep.
    pub(super) fn woken(&mut self) {
        self.awake_since = Instant::now();
    }

    /// After a pass that worked: back on its core once it has been awake
    /// for [`REPIN_AFTER`].
    pub(super) fn after_work(&mut self) {
        if !self.unpinned || self.awake_since.elapsed() < REPIN_AFTER {
            return;
        }
        self.unpinned = false;
        if let Err(error) = sched_setaffinity(Pid::from_raw(0), &self.core) {
            tracing::warn!(%error, "worker: cannot take its core again; staying unpinned");
            self.asleep = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask() -> CpuSet {
        sched_getaffinity(Pid::from_raw(0)).expect("sched_getaffinity")
    }

    /// Run `check` on a thread of its own: the test changes the thread's
    /// affinity.
    fn on_a_thread(check: impl FnOnce(CpuSet) + Send + 'static) {
        std::thread::spawn(move || check(mask()))
            .join()
            .expect("the check passed");
    }

    /// The CPUs in `set`, up to the machine's.
    fn cpus(set: &CpuSet) -> Vec<usize> {
        (0..CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect()
    }

    #[test]
    fn sleeps_anywhere_and_takes_its_core_again_once_busy() {
        on_a_thread(|start| {
            let core = cpus(&start)[0];
            let mut affinity = Affinity::pin(core, true);
            assert_eq!(cpus(&mask()), [core], "pinned while it polls");
            affinity.before_sleep();
            assert_eq!(cpus(&mask()), cpus(&start), "asleep on any of its CPUs");
            affinity.woken();
            affinity.after_work();
            assert_eq!(
                cpus(&mask()),
                cpus(&start),
                "a worker just woken stays where it woke"
            );
            std::thread::sleep(REPIN_AFTER);
            affinity.after_work();
            assert_eq!(cpus(&mask()), [core], "back on its core once busy");
        });
    }

    #[test]
    fn stays_on_its_core_when_told_to() {
        on_a_thread(|start| {
            let core = cpus(&start)[0];
            let mut affinity = Affinity::pin(core, false);
            affinity.before_sleep();
            assert_eq!(cpus(&mask()), [core]);
        });
    }
}
