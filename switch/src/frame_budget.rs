//! How the buffer frames are shared out between the sockets that receive
//! into them.
//!
//! An AF_XDP socket receives only into frames it was given on its fill
//! ring, and frames on a fill ring stay there until a packet uses them: a
//! hundred idle pods hold their frames. So the pool is planned, not
//! first-come: every socket keeps a minimum on its fill ring (enough for a
//! burst while the worker is away), the uplink keeps its whole ring full,
//! and frames past a socket's minimum come from a growth pool shared by
//! the sockets that are busy. The minimums of `max_pods` pod sockets are
//! set aside up front, so a busy node never leaves a new pod with an empty
//! fill ring (it would lose the pod's first packets), and a pod past
//! `max_pods` is refused at `port add` with a message rather than starved.

use std::sync::atomic::{AtomicU32, Ordering};

/// The least a socket keeps on its fill ring, per chunk of its largest
/// packet: two batches, a burst the kernel may deliver before the worker
/// comes round again.
pub const FILL_MIN: u32 = 128;
/// Frames the uplink keeps on each of its sockets' fill rings: the ring's
/// size, since every node's traffic arrives there.
pub const UPLINK_FILL: u32 = 4096;
/// The most frames one pod socket keeps on its fill ring (its ring's size).
pub const FILL_MAX: u32 = 4096;
/// Frames set aside for everything that is not a fill ring: TX and
/// completion rings, frames between workers, worker caches.
pub const SLACK: u32 = 2048;
/// The growth pool a derived `frame_count` includes: two busy pods at
/// their largest fill ring.
pub const DEFAULT_GROWTH: u32 = 2 * FILL_MAX;
/// The Kubernetes default of pods per node (kubelet's `maxPods`).
pub const DEFAULT_MAX_PODS: u32 = 110;

/// The frames of a node and what each part may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramePlan {
    /// Frames in the buffer area.
    pub frame_count: u32,
    /// Frames each uplink socket keeps on its fill ring.
    pub uplink_fill: u32,
    /// The least a pod socket keeps on its fill ring.
    pub pod_fill_min: u32,
    /// The most a pod socket keeps on its fill ring.
    pub pod_fill_max: u32,
    /// Pod sockets whose minimum is set aside.
    pub max_pods: u32,
    /// Frames pod sockets may hold past their minimum, all together.
    pub growth: u32,
}

/// Why a plan cannot be made, with what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "frame_count {frame_count} is too small for max_pods = {max_pods}: the uplink keeps \
     {uplink} frames, each pod socket at least {per_pod}, and {SLACK} are kept for rings in \
     flight, {needed} in all; raise frame_count to at least {needed} (or leave it out to size \
     it from max_pods), or lower max_pods to {fits}"
)]
pub struct PlanError {
    frame_count: u32,
    max_pods: u32,
    uplink: u32,
    per_pod: u32,
    needed: u32,
    fits: u32,
}

impl FramePlan {
    /// Plan a node whose uplink has `uplink_sockets` sockets and whose
    /// largest pod packet spans `chunks` frames, for `max_pods` pod
    /// sockets: with `frame_count` given, check it holds every minimum;
    /// without, size it to them plus [`DEFAULT_GROWTH`].
    pub fn new(
        frame_count: Option<u32>,
        max_pods: u32,
        uplink_sockets: u32,
        chunks: u32,
    ) -> Result<FramePlan, PlanError> {
        let chunks = chunks.max(1);
        let uplink = UPLINK_FILL.saturating_mul(uplink_sockets.max(1));
        let per_pod = FILL_MIN.saturating_mul(chunks);
        let reserved = uplink
            .saturating_add(per_pod.saturating_mul(max_pods))
            .saturating_add(SLACK);
        let frame_count = frame_count.unwrap_or(reserved.saturating_add(DEFAULT_GROWTH));
        if frame_count < reserved {
            let fits = frame_count.saturating_sub(uplink + SLACK) / per_pod;
            return Err(PlanError {
                frame_count,
                max_pods,
                uplink,
                per_pod,
                needed: reserved,
                fits,
            });
        }
        Ok(FramePlan {
            frame_count,
            uplink_fill: UPLINK_FILL,
            pod_fill_min: per_pod,
            pod_fill_max: FILL_MAX.max(per_pod),
            max_pods,
            growth: frame_count - reserved,
        })
    }

    /// Bytes the buffer area takes with frames of `frame_size` bytes.
    pub fn bytes(&self, frame_size: u32) -> u64 {
        u64::from(self.frame_count) * u64::from(frame_size)
    }
}

/// The growth pool: frames pod sockets may keep on their fill rings past
/// their minimum, handed out and given back as their budgets change.
#[derive(Debug)]
pub struct FillGrowth {
    limit: u32,
    in_use: AtomicU32,
}

impl FillGrowth {
    /// A pool of `limit` frames, none handed out.
    pub fn new(limit: u32) -> FillGrowth {
        FillGrowth {
            limit,
            in_use: AtomicU32::new(0),
        }
    }

    /// A socket holding `held` frames of the pool wants `wanted`: what it
    /// may hold now (all of `wanted`, or what is left).
    pub fn resize(&self, held: u32, wanted: u32) -> u32 {
        let mut granted = wanted;
        let _ = self
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_use| {
                let others = in_use.saturating_sub(held);
                granted = wanted.min(self.limit.saturating_sub(others));
                Some(others + granted)
            });
        granted
    }

    /// Frames handed out now.
    pub fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Acquire)
    }

    /// The pool's size.
    pub fn limit(&self) -> u32 {
        self.limit
    }
}

/// How many frames one socket keeps on its fill ring. A socket that keeps
/// receiving full batches, or whose burst found the ring empty, gets
/// more, from the growth pool (a burst must not find the ring empty while
/// frames sit free elsewhere); one that goes quiet gives them back.
#[derive(Debug, Clone, Copy)]
pub struct FillBudget {
    target: u32,
    min: u32,
    max: u32,
    /// Frames of the growth pool this socket holds: `target - min`.
    grown: u32,
    received: u64,
    /// Whether the kernel found the ring empty since the last decay.
    starved: bool,
}

impl FillBudget {
    /// A budget between `min` and `max` frames; it starts at `min`.
    pub fn new(min: u32, max: u32) -> FillBudget {
        let max = max.max(min);
        FillBudget {
            target: min,
            min,
            max,
            grown: 0,
            received: 0,
            starved: false,
        }
    }

    /// A budget with the same bounds, at its minimum (for another socket
    /// of the same port).
    pub fn fresh(&self) -> FillBudget {
        FillBudget::new(self.min, self.max)
    }

    /// How many frames to keep on the fill ring now.
    pub fn target(&self) -> u32 {
        self.target
    }

    /// The socket received `frames` frames in one batch of at most
    /// `batch`; a full batch grows the budget by half, as far as the
    /// growth pool allows.
    pub fn received(&mut self, frames: usize, batch: usize, growth: &FillGrowth) {
        self.received += frames as u64;
        if frames >= batch && self.target < self.max {
            let wanted = (self.target + self.target / 2).min(self.max) - self.min;
            self.set_grown(growth.resize(self.grown, wanted));
        }
    }

    /// The kernel found the fill ring empty `lost` times since the last
    /// look (`fill_ring_empty`: a packet dropped each time): grow by that
    /// many frames, and at least by half, as far as the growth pool
    /// allows, so the next burst of that size finds frames — a burst that
    /// arrives while the worker sleeps never shows as a full batch. The
    /// budget then does not shrink at the next [`FillBudget::decay`].
    pub fn starved(&mut self, lost: u64, growth: &FillGrowth) {
        if lost == 0 {
            return;
        }
        self.starved = true;
        let more = u32::try_from(lost).unwrap_or(u32::MAX).max(self.target / 2);
        let wanted = self.target.saturating_add(more).min(self.max) - self.min;
        if wanted > self.grown {
            self.set_grown(growth.resize(self.grown, wanted));
        }
    }

    /// Once a second: shrink toward the minimum if the socket received
    /// less than its target since the last look and its ring was never
    /// found empty, giving frames back to the growth pool.
    pub fn decay(&mut self, growth: &FillGrowth) {
        let starved = std::mem::take(&mut self.starved);
        if !starved && self.received < u64::from(self.target) && self.grown > 0 {
            let wanted = self.grown.saturating_sub(self.target / 8);
            self.set_grown(growth.resize(self.grown, wanted));
        }
        self.received = 0;
    }

    /// Give every grown frame back (the socket is going away).
    pub fn release(&mut self, growth: &FillGrowth) {
        self.set_grown(growth.resize(self.grown, 0));
    }

    fn set_grown(&mut self, grown: u32) {
        self.grown = grown;
        self.target = self.min + grown;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_frame_count_holds_every_minimum_and_the_growth_pool() {
        let plan = FramePlan::new(None, DEFAULT_MAX_PODS, 1, 1).unwrap();
        assert_eq!(
            plan.frame_count,
            UPLINK_FILL + 110 * FILL_MIN + SLACK + DEFAULT_GROWTH
        );
        assert_eq!(plan.growth, DEFAULT_GROWTH);
        assert_eq!(plan.pod_fill_min, FILL_MIN);
        // 250 pods with two uplink queues and jumbo (3-chunk) packets.
        let big = FramePlan::new(None, 250, 2, 3).unwrap();
        assert_eq!(
            big.frame_count,
            2 * UPLINK_FILL + 250 * 3 * FILL_MIN + SLACK + DEFAULT_GROWTH
        );
        assert_eq!(big.pod_fill_min, 3 * FILL_MIN);
    }

    #[test]
    fn a_frame_count_too_small_for_max_pods_is_refused_with_the_fix() {
        let err = FramePlan::new(Some(16384), 110, 1, 1).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("raise frame_count to at least 20224"),
            "{text}"
        );
        assert!(text.contains("lower max_pods to 80"), "{text}");
        let fits = FramePlan::new(Some(16384), 80, 1, 1).unwrap();
        assert_eq!(fits.growth, 16384 - (4096 + 80 * 128 + 2048));
    }

    #[test]
    fn growth_is_shared_and_never_overdrawn() {
        let growth = FillGrowth::new(1000);
        assert_eq!(growth.resize(0, 600), 600);
        assert_eq!(growth.resize(0, 600), 400, "only what is left");
        assert_eq!(growth.in_use(), 1000);
        assert_eq!(growth.resize(600, 100), 100, "shrinking gives frames back");
        assert_eq!(growth.in_use(), 500);
        assert_eq!(growth.resize(400, 900), 900);
        assert_eq!(growth.in_use(), 1000);
    }

    #[test]
    fn budgets_grow_on_full_batches_within_the_pool_and_decay_when_quiet() {
        let growth = FillGrowth::new(100);
        let mut budget = FillBudget::new(128, 4096);
        budget.received(10, 64, &growth);
        assert_eq!(budget.target(), 128, "a partial batch does not grow it");
        budget.received(64, 64, &growth);
        assert_eq!(budget.target(), 192, "half as much again");
        budget.received(64, 64, &growth);
        assert_eq!(budget.target(), 228, "capped by the growth pool");
        assert_eq!(growth.in_use(), 100);
        let mut other = FillBudget::new(128, 4096);
        other.received(64, 64, &growth);
        assert_eq!(
            other.target(),
            128,
            "the pool is empty: stays at its minimum"
        );
        budget.decay(&growth);
        assert!(budget.target() < 228);
        assert!(growth.in_use() < 100);
        for _ in 0..50 {
            budget.decay(&growth);
        }
        assert_eq!(budget.target(), 128);
        assert_eq!(growth.in_use(), 0);
        other.received(64, 64, &growth);
        assert_eq!(other.target(), 192);
        other.release(&growth);
        assert_eq!((other.target(), growth.in_use()), (128, 0));
    }

    #[test]
    fn a_burst_that_found_the_ring_empty_grows_it_by_what_was_lost() {
        let growth = FillGrowth::new(10_000);
        let mut budget = FillBudget::new(128, 4096);
        // A burst of 600 while the worker slept: 128 landed, 472 lost,
        // and the worker never saw a full batch.
        budget.received(60, 64, &growth);
        budget.starved(472, &growth);
        assert_eq!(budget.target(), 600, "room for the whole burst next time");
        budget.starved(0, &growth);
        assert_eq!(budget.target(), 600, "nothing lost, nothing changes");
        budget.decay(&growth);
        assert_eq!(budget.target(), 600, "not shrunk the second it starved");
        budget.decay(&growth);
        assert!(budget.target() < 600, "quiet afterwards: shrinks again");
        // A few losses still grow it by half; never past the maximum or
        // the pool.
        let before = budget.target();
        budget.starved(1, &growth);
        assert_eq!(budget.target(), before + before / 2);
        budget.starved(1_000_000, &growth);
        assert_eq!(budget.target(), 4096);
        let small = FillGrowth::new(100);
        let mut other = FillBudget::new(128, 4096);
        other.starved(10_000, &small);
        assert_eq!(other.target(), 228, "only what the pool has");
        let mut fixed = FillBudget::new(UPLINK_FILL, UPLINK_FILL);
        fixed.starved(5, &FillGrowth::new(0));
        assert_eq!(fixed.target(), UPLINK_FILL);
    }

    #[test]
    fn a_fixed_budget_never_touches_the_pool() {
        let growth = FillGrowth::new(0);
        let mut uplink = FillBudget::new(UPLINK_FILL, UPLINK_FILL);
        uplink.received(64, 64, &growth);
        uplink.decay(&growth);
        assert_eq!(uplink.target(), UPLINK_FILL);
    }
}
