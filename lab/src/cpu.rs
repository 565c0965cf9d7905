//! CPU use, as the lab reports it beside throughput: a process's user and
//! system time (all its threads), and the machine's softirq and system
//! time, from /proc.

use std::time::Instant;

use anyhow::{Context, Result};

/// Clock ticks per second of /proc's counters (`CLK_TCK`).
fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// CPU seconds a process has used so far (user + system, all threads).
pub fn process_cpu_seconds(pid: u32) -> Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU seconds the calling thread has used so far (user + system).
pub fn thread_cpu_seconds() -> Result<f64> {
    stat_cpu_seconds("/proc/thread-self/stat")
}

/// The user and system time in a `stat` file of /proc, in seconds.
fn stat_cpu_seconds(path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after ')'.
    let utime: f64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0.0);
    Ok((utime + stime) / ticks_per_second())
}

/// The machine's kernel time so far: (system, softirq) seconds over all CPUs.
pub fn kernel_cpu_seconds() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    let fields: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // cpu user nice system idle iowait irq softirq ...
    let tick = ticks_per_second();
    Ok((
        fields.get(2).copied().unwrap_or(0.0) / tick,
        fields.get(6).copied().unwrap_or(0.0) / tick,
    ))
}

/// CPU use over an interval, in cores (1.0 = one CPU busy all the time).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuUse {
    /// The sampled processes, together.
    pub processes: f64,
    /// The kernel's system time, all CPUs.
    pub kernel_system: f64,
    /// The kernel's softirq time, all CPUs.
    pub kernel_softirq: f64,
}

/// A running measurement: started with [`CpuMeter::start`], read with
/// [`CpuMeter::stop`].
pub struct CpuMeter {
    pids: Vec<u32>,
    started: Instant,
    processes: f64,
    kernel: (f64, f64),
}

impl CpuMeter {
    /// Start measuring the CPU of `pids` and of the kernel.
    pub fn start(pids: &[u32]) -> Result<CpuMeter> {
        Ok(CpuMeter {
            pids: pids.to_vec(),
            started: Instant::now(),
            processes: sum_processes(pids)?,
            kernel: kernel_cpu_seconds()?,
        })
    }

    /// Average CPU use since the start.
    pub fn stop(&self) -> Result<CpuUse> {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let (system, softirq) = kernel_cpu_seconds()?;
        Ok(CpuUse {
            processes: (sum_processes(&self.pids)? - self.processes) / elapsed,
            kernel_system: (system - self.kernel.0) / elapsed,
            kernel_softirq: (softirq - self.kernel.1) / elapsed,
        })
    }
}

fn sum_processes(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&pid| process_cpu_seconds(pid)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_grows_with_work() {
        let me = std::process::id();
        let meter = CpuMeter::start(&[me]).unwrap();
        // Work until this thread has used 0.15 s of CPU, however long a
        // busy machine makes that take (a minute at most).
        let until = thread_cpu_seconds().unwrap() + 0.15;
        let started = Instant::now();
        let mut x = 0u64;
        while thread_cpu_seconds().unwrap() < until && started.elapsed().as_secs() < 60 {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        let used = meter.stop().unwrap();
        // This thread did the work: its own time shows it, and so does
        // the process's as the meter read it.
        assert!(thread_cpu_seconds().unwrap() >= until, "{used:?}");
        assert!(used.processes > 0.1, "{used:?}");
        assert!(kernel_cpu_seconds().unwrap().0 > 0.0);
    }
}
