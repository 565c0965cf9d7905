//! The machine a lab runs on: which CPU a thread runs on, how busy the
//! machine is, and what it is (CPU model, kernel), as benchmark reports
//! state beside their figures.

use anyhow::{Context, Result};
use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// The number of CPUs this process may use.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pin the calling thread to CPU `cpu` (modulo the CPUs there are).
/// Processes it starts from now on inherit the pinning.
pub fn pin_current_thread(cpu: usize) -> Result<()> {
    let cpu = cpu % cpu_count();
    let mut set = CpuSet::new();
    set.set(cpu).context("CPU number out of range")?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {cpu}"))
}

/// Run `f` on a new thread pinned to CPU `cpu`, and wait for it; what
/// `f` starts (processes, threads) stays on that CPU.
pub fn on_cpu<R: Send>(cpu: usize, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                pin_current_thread(cpu)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| anyhow::bail!("thread pinned to CPU {cpu} panicked"))
    })
}

/// The CPU model, from /proc/cpuinfo.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// System CPU seconds process `pid` has used so far, all its threads: the
/// part of [`crate::cpu::process_cpu_seconds`] spent in the kernel on its
/// behalf, which the machine's system time (`/proc/stat`) counts too.
pub fn process_system_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_stime(&stat)
        .map(|ticks| ticks as f64 / clock_ticks_per_second())
        .with_context(|| format!("no stime in /proc/{pid}/stat"))
}

/// `stime` (field 15) of a /proc/<pid>/stat line, in clock ticks.
fn parse_stime(stat: &str) -> Option<u64> {
    // The command name, in parentheses, may hold spaces: count from the
    // last ')'; stime is the 13th field after it.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(12)?.parse().ok()
}

/// Clock ticks per second of /proc's counters (`CLK_TCK`).
fn clock_ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// CPU time of the whole machine so far, from /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CpuTicks {
    /// Ticks spent on anything but idle and iowait, all CPUs.
    busy: u64,
    /// All ticks, all CPUs.
    total: u64,
    /// The CPUs counted.
    cpus: u64,
}

fn cpu_ticks() -> Result<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_cpu_ticks(&stat).context("no cpu line in /proc/stat")
}

/// Parse /proc/stat: the `cpu` line's ticks and the number of `cpuN` lines.
fn parse_cpu_ticks(stat: &str) -> Option<CpuTicks> {
    let mut fields = stat.lines().next()?.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is
    // already inside user and nice).
    let values: Vec<u64> = fields.take(8).map(|f| f.parse().unwrap_or(0)).collect();
    let total: u64 = values.iter().sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    let cpus = stat
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count() as u64;
    Some(CpuTicks {
        busy: total - idle,
        total,
        cpus: cpus.max(1),
    })
}

/// How busy the whole machine is over an interval: started with
/// [`MachineMeter::start`], read with [`MachineMeter::stop`].
pub struct MachineMeter {
    start: CpuTicks,
}

impl MachineMeter {
    /// Start measuring.
    pub fn start() -> Result<MachineMeter> {
        Ok(MachineMeter {
            start: cpu_ticks()?,
        })
    }

    /// CPUs busy on average since the start (2.0 = two CPUs busy all the
    /// time): every process and the kernel, the lab's own traffic
    /// generators included.
    pub fn stop(&self) -> Result<f64> {
        let now = cpu_ticks()?;
        let total = now.total.saturating_sub(self.start.total).max(1) as f64;
        let busy = now.busy.saturating_sub(self.start.busy) as f64;
        Ok(busy / total * now.cpus as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cpu_line() {
        let stat = "cpu  100 5 50 1000 20 3 7 2 0 0\ncpu0 50 2 25 500 10 1 3 1 0 0\n\
                    cpu1 50 3 25 500 10 2 4 1 0 0\nintr 12345\n";
        let ticks = parse_cpu_ticks(stat).unwrap();
        assert_eq!((ticks.busy, ticks.total, ticks.cpus), (167, 1187, 2));
        assert_eq!(parse_cpu_ticks("cpu0 1 2 3 4"), None);
        assert_eq!(parse_cpu_ticks(""), None);
    }

    #[test]
    fn parses_stime() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 9 0 0 20 0 3 0 100";
        assert_eq!(parse_stime(stat), Some(9));
        assert_eq!(parse_stime("42 (x) S 1"), None);
        assert!(process_system_seconds(std::process::id()).unwrap() >= 0.0);
    }

    #[test]
    fn describes_the_machine() {
        assert!(cpu_count() >= 1);
        assert!(!kernel_release().is_empty());
        assert!(!cpu_model().is_empty());
        let meter = MachineMeter::start().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let busy = meter.stop().unwrap();
        assert!((0.0..=cpu_count() as f64 + 0.5).contains(&busy), "{busy}");
    }

    #[test]
    fn pinned_threads_stay_put() {
        let cpu = on_cpu(0, || Ok(nix::sched::sched_getcpu()?)).unwrap();
        assert_eq!(cpu, 0);
    }
}
