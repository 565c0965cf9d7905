//! Adaptive polling's spin window (`spin_us`) through the real path: two
//! podswitch nodes, a pod on each, request/response round trips across
//! them, read through the workers' counters in `podswitch stats`. With a
//! window longer than the gaps between requests the workers stay awake
//! through the exchange; with no window they sleep after every packet
//! and every request wakes them; either way every request is answered,
//! and once the traffic stops the workers sleep (no passes between two
//! looks at their counters). Busy workers, whose idle passes yield the
//! CPU, answer every request and never sleep. A sleeping adaptive worker
//! lets go of its core (`sleep_on_any_cpu`), unless told not to. Bounded
//! by counts; no timed assertions. Needs root.

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use podswitch_lab::Lab;
use podswitch_lab::cluster::{SwitchNode, SwitchOptions, SwitchPair};
use podswitch_lab::ping_pong::{EchoServer, PingPong};

/// Round trips per exchange.
const ROUND_TRIPS: u64 = 300;
/// UDP port of the echo server.
const ECHO_PORT: u16 = 7007;
/// A window far longer than the gaps between this test's requests.
const LONG_WINDOW_US: u32 = 100_000;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_podswitch"))
}

/// A worker's counters: (passes, sleeps).
fn worker_counters(node: &SwitchNode) -> Result<(u64, u64)> {
    let stats = node.cli_json(&["stats"])?;
    let worker = &stats["workers"][0];
    let get = |key: &str| {
        worker[key]
            .as_u64()
            .with_context(|| format!("no {key} in the worker's counters: {worker}"))
    };
    Ok((get("busy_polls")? + get("idle_polls")?, get("sleeps")?))
}

/// What one exchange of round trips did.
struct Exchange {
    answered: u64,
    lost: u64,
    /// Sleeps of node 1's and node 2's workers during it.
    sleeps: [u64; 2],
}

/// Two nodes whose daemons run with `options`; `ROUND_TRIPS` round trips
/// from node 1's pod to node 2's, 100 µs apart. Adaptive workers must be
/// asleep once the traffic stops.
fn exchange(tag: &str, options: SwitchOptions) -> Result<Exchange> {
    let mut lab = Lab::new(tag)?;
    let dir = lab.scratch_dir()?;
    let SwitchPair { nodes, pods } = SwitchPair::build(&mut lab, binary(), &dir, &options)?;
    let (client, server) = (&pods[0][0], &pods[1][0]);
    let echo = EchoServer::start(&server.ns, ECHO_PORT, 1)?;
    let ping_pong = PingPong {
        count: ROUND_TRIPS,
        limit: Duration::from_secs(60),
        pause: Duration::from_micros(100),
        timeout: Duration::from_secs(1),
    };
    let target = SocketAddrV4::new(server.ip, ECHO_PORT);
    // One round trip first: neighbours resolved, the path warm.
    PingPong {
        count: 1,
        ..ping_pong
    }
    .run(&client.ns, target)?;
    let before = [worker_counters(&nodes[0])?, worker_counters(&nodes[1])?];
    let trips = ping_pong.run(&client.ns, target)?;
    let after = [worker_counters(&nodes[0])?, worker_counters(&nodes[1])?];
    echo.stop()?;
    for node in &nodes {
        if options.poll_mode == "adaptive" {
            wait_until_asleep(node)?;
        }
        node.check_frames()?;
    }
    Ok(Exchange {
        answered: trips.rtts_ns.len() as u64,
        lost: trips.lost,
        sleeps: [after[0].1 - before[0].1, after[1].1 - before[1].1],
    })
}

/// Adaptive polling with a window of `spin_us`.
fn spin(spin_us: u32) -> SwitchOptions {
    SwitchOptions {
        spin_us: Some(spin_us),
        ..SwitchOptions::default()
    }
}

/// Look at `node`'s worker until two looks in a row see no pass between
/// them: it is asleep, not spinning. Fails if it never is.
fn wait_until_asleep(node: &SwitchNode) -> Result<()> {
    let mut last = worker_counters(node)?;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        let now = worker_counters(node)?;
        if now.0 == last.0 {
            ensure!(now.1 > 0, "node {}: the worker never slept", node.index);
            return Ok(());
        }
        last = now;
    }
    bail!(
        "node {}: the worker kept polling with no traffic ({} passes)",
        node.index,
        last.0
    )
}

#[test]
fn a_spin_window_keeps_workers_awake_between_requests_and_asleep_when_idle() -> Result<()> {
    let long = exchange("spin-long", spin(LONG_WINDOW_US))?;
    println!(
        "spin_us = {LONG_WINDOW_US}: {} answered, {} lost, workers slept {:?} times",
        long.answered, long.lost, long.sleeps
    );
    let none = exchange("spin-none", spin(0))?;
    println!(
        "spin_us = 0: {} answered, {} lost, workers slept {:?} times",
        none.answered, none.lost, none.sleeps
    );
    for (what, run) in [("a long window", &long), ("no window", &none)] {
        ensure!(
            run.lost == 0 && run.answered == ROUND_TRIPS,
            "with {what}: {} of {ROUND_TRIPS} round trips answered, {} lost",
            run.answered,
            run.lost
        );
    }
    // A gap of 100 ms between packets is needed for a sleep: a few may
    // come from the machine pausing the client, not one per request.
    for (node, &sleeps) in long.sleeps.iter().enumerate() {
        ensure!(
            sleeps <= ROUND_TRIPS / 10,
            "node {}'s worker slept {sleeps} times in {ROUND_TRIPS} round trips with a \
             {LONG_WINDOW_US} µs window",
            node + 1
        );
    }
    // Without a window a worker sleeps after each packet it handles.
    for (node, &sleeps) in none.sleeps.iter().enumerate() {
        ensure!(
            sleeps >= ROUND_TRIPS / 2,
            "node {}'s worker slept only {sleeps} times in {ROUND_TRIPS} round trips \
             without a window",
            node + 1
        );
    }
    Ok(())
}

#[test]
fn busy_workers_answer_every_request_and_never_sleep() -> Result<()> {
    let options = SwitchOptions {
        poll_mode: "busy".into(),
        ..SwitchOptions::default()
    };
    let busy = exchange("busy", options)?;
    ensure!(
        busy.lost == 0 && busy.answered == ROUND_TRIPS,
        "busy: {} of {ROUND_TRIPS} round trips answered, {} lost",
        busy.answered,
        busy.lost
    );
    ensure!(
        busy.sleeps == [0, 0],
        "busy workers slept {:?} times",
        busy.sleeps
    );
    Ok(())
}

/// The CPUs a thread may run on (`Cpus_allowed_list`), given its /proc
/// directory `task`.
fn allowed_cpus(task: &Path) -> Result<String> {
    let status = std::fs::read_to_string(task.join("status"))
        .with_context(|| format!("reading {}", task.display()))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|cpus| cpus.trim().to_string())
        .with_context(|| format!("no Cpus_allowed_list in {}", task.display()))
}

/// Adaptive workers asleep: on any of the daemon's CPUs by default, on
/// their own core (`cores`) with `sleep_on_any_cpu = false`. (That they
/// take their core again once busy is the worker's unit test.)
#[test]
fn a_sleeping_worker_lets_go_of_its_core_unless_told_not_to() -> Result<()> {
    for (tag, sleep_on_any_cpu) in [("sleep-any", None), ("sleep-own", Some(false))] {
        let mut lab = Lab::new(tag)?;
        let dir = lab.scratch_dir()?;
        let options = SwitchOptions {
            sleep_on_any_cpu,
            ..SwitchOptions::default()
        };
        let SwitchPair { nodes, pods } = SwitchPair::build(&mut lab, binary(), &dir, &options)?;
        let (client, server) = (&pods[0][0], &pods[1][0]);
        let echo = EchoServer::start(&server.ns, ECHO_PORT, 1)?;
        let trips = PingPong {
            count: 10,
            limit: Duration::from_secs(30),
            pause: Duration::from_millis(1),
            timeout: Duration::from_secs(1),
        }
        .run(&client.ns, SocketAddrV4::new(server.ip, ECHO_PORT))?;
        echo.stop()?;
        ensure!(
            trips.lost == 0,
            "{tag}: {} of 10 round trips lost",
            trips.lost
        );
        for node in &nodes {
            wait_until_asleep(node)?;
            let pid = node.pid().context("the daemon is not running")?;
            let daemon = allowed_cpus(Path::new(&format!("/proc/{pid}")))?;
            let worker = allowed_cpus(&node.worker_task(0)?)?;
            let core = options.worker_cores(node.index)[0];
            println!(
                "{tag}: node {}: daemon on CPUs {daemon}, worker asleep on {worker}",
                node.index
            );
            if sleep_on_any_cpu == Some(false) {
                ensure!(
                    worker == core.to_string(),
                    "{tag}: node {}'s worker sleeps on CPUs {worker}, not its core {core}",
                    node.index
                );
            } else {
                ensure!(
                    worker == daemon,
                    "{tag}: node {}'s worker sleeps on CPUs {worker}, not the daemon's {daemon}",
                    node.index
                );
            }
        }
    }
    Ok(())
}
