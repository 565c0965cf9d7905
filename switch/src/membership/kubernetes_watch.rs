//! What the sources that follow Kubernetes objects wholesale (the
//! Services, [`super::kubernetes_services`], and NetworkPolicy,
//! [`super::kubernetes_policy`]) share: kube-rs watchers of every object
//! of a kind, cluster-wide, feeding reflector stores on a current-thread
//! tokio runtime in a thread of their own, with the client the Node
//! source makes (the same `[kubernetes]` settings). Once every watcher has
//! listed, each change (a burst coalesced over [`QUIET`]) makes the source
//! derive its whole product from the stores, which is handed to the
//! caller's callback when it differs from the last one ([`Handover`]).
//! While the API server does not answer, nothing is handed over (the
//! caller keeps the last product) and the log says so once.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::{Stream, StreamExt};
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Resource, ResourceExt};
use podswitch_control::protocol::MembershipReport;
use podswitch_control::service::ServiceProtocol as Protocol;

use super::kubernetes::{CALL_TIMEOUT, RETRY, connect, runtime};
use super::{Follower, KubernetesSettings, Reachability};

/// How long after a change the stores are read, so that a burst of
/// changes (a rollout, a re-list) is handed over once.
pub const QUIET: Duration = Duration::from_millis(100);
/// How often a source looks at its stop flag while nothing happens.
const TICK: Duration = Duration::from_millis(200);

/// A running source of Kubernetes objects; dropping it stops its thread.
pub struct KubeWatch {
    follower: Option<Follower>,
    state: Arc<Mutex<MembershipReport>>,
}

impl KubeWatch {
    /// How the source is doing: since when the API server has not
    /// answered, and why, if it has not.
    pub fn report(&self) -> MembershipReport {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for KubeWatch {
    fn drop(&mut self) {
        if let Some(follower) = self.follower.take() {
            follower.stop();
        }
    }
}

/// Start the source `name` (its thread's name and its log lines' prefix),
/// which keeps `kept` (as the log says it) while the API server is away:
/// a client for `settings` is made (again, while that fails), then
/// `follow` is run with it until stopped; it is to start its watchers and
/// give them to [`Link::follow`].
pub(super) fn spawn<F, Fut>(
    name: &'static str,
    kept: &'static str,
    settings: &KubernetesSettings,
    follow: F,
) -> Result<KubeWatch>
where
    F: FnOnce(kube::Client, Link) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let reachability = Reachability::keeping("kubernetes", kept);
    let state = Arc::new(Mutex::new(reachability.state(None)));
    let settings = settings.clone();
    let shared = state.clone();
    let follower = Follower::spawn_named(name, move |stop| {
        let mut link = Link {
            name,
            stop,
            reachability,
            state: shared,
        };
        let runtime = match runtime() {
            Ok(runtime) => runtime,
            Err(e) => return link.failed(format!("{e:#}")),
        };
        runtime.block_on(async move {
            let stop = link.stop.clone();
            if let Some(client) = connect(&settings, &stop, |e| link.failed(e)).await {
                follow(client, link).await;
            }
        });
    })?;
    Ok(KubeWatch {
        follower: Some(follower),
        state,
    })
}

/// What a watcher event did to its store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// A listing is to start (the API server has not answered yet).
    Starting,
    /// Nothing the product depends on yet (a listing under way).
    Nothing,
    /// The watcher of this number has listed.
    Listed(usize),
    /// An object changed.
    Changed,
}

fn seen<K>(event: &Event<K>, watcher: usize) -> Seen {
    match event {
        Event::Init => Seen::Starting,
        Event::InitApply(_) => Seen::Nothing,
        Event::InitDone => Seen::Listed(watcher),
        Event::Apply(_) | Event::Delete(_) => Seen::Changed,
    }
}

/// The store of every `K` in the cluster, and the events of its watcher,
/// number `watcher` (from 0), as what each did. Objects are stored
/// without their annotations and managed fields, which no source reads
/// and which are often most of an object (`kubectl apply`'s copy of it,
/// one entry per writer): a cluster's pods are many.
pub(super) fn watch_all<K>(
    client: &kube::Client,
    watcher: usize,
) -> (
    Store<K>,
    impl Stream<Item = Result<Seen, watcher::Error>> + use<K>,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let events = watch(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|object: &mut K| {
            object.annotations_mut().clear();
            object.managed_fields_mut().clear();
        })
        .reflect(writer)
        .map(move |event| event.map(|e| seen(&e, watcher)));
    (store, events)
}

/// A source's thread's link to the API server and to its [`KubeWatch`].
pub(super) struct Link {
    name: &'static str,
    stop: Arc<AtomicBool>,
    reachability: Reachability,
    /// Shared with the [`KubeWatch`].
    state: Arc<Mutex<MembershipReport>>,
}

impl Link {
    fn failed(&mut self, error: String) {
        self.reachability.lost(&error);
        self.publish(Some(error));
    }

    fn answered(&mut self) {
        if self.reachability.unreachable() {
            self.reachability.regained("API server");
            self.publish(None);
        }
    }

    fn publish(&self, error: Option<String>) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = self.reachability.state(error);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Follow `events`, those of the watchers numbered 0 to `watchers -
    /// 1` merged, until stopped: once all have listed, call `hand_over`
    /// [`QUIET`] after each change. While the API server is away, `probe`
    /// (true: it answered) is tried every second, since the watches,
    /// resumed, may have nothing to say.
    pub(super) async fn follow<P, PF>(
        mut self,
        events: impl Stream<Item = Result<Seen, watcher::Error>>,
        watchers: usize,
        mut probe: P,
        mut hand_over: impl FnMut(),
    ) where
        P: FnMut() -> PF,
        PF: Future<Output = bool>,
    {
        let mut events = std::pin::pin!(events);
        let mut listed = vec![false; watchers];
        let mut due: Option<Instant> = None;
        let mut next_probe = Instant::now();
        while !self.stopped() {
            if self.reachability.unreachable() && Instant::now() >= next_probe {
                next_probe = Instant::now() + RETRY;
                if let Ok(true) = tokio::time::timeout(CALL_TIMEOUT, probe()).await {
                    self.answered();
                }
            }
            let wait = due.map_or(TICK, |d| d.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait.min(TICK), events.next()).await {
                Err(_) => {}
                // The watchers' streams do not end.
                Ok(None) => return,
                Ok(Some(Ok(seen))) => {
                    if seen != Seen::Starting {
                        self.answered();
                    }
                    if let Seen::Listed(watcher) = seen
                        && let Some(listed) = listed.get_mut(watcher)
                    {
                        *listed = true;
                    }
                    if matches!(seen, Seen::Listed(_) | Seen::Changed) {
                        due.get_or_insert_with(|| Instant::now() + QUIET);
                    }
                }
                Ok(Some(Err(watcher::Error::WatchError(status)))) if status.code == 410 => {
                    tracing::info!(
                        "{}: the API server no longer has our resourceVersion: listing again",
                        self.name
                    );
                }
                Ok(Some(Err(e))) => self.failed(format!("{e:#}")),
            }
            if listed.iter().all(|l| *l) && due.is_some_and(|d| Instant::now() >= d) {
                due = None;
                hand_over();
            }
        }
    }
}

/// What a source hands its caller: the product last handed over, and
/// the objects last logged as (partly) skipped.
pub(super) struct Handover<T> {
    name: &'static str,
    on_change: Box<dyn FnMut(T) + Send>,
    last: Option<T>,
    /// (object, why), as last logged.
    logged: BTreeSet<(String, String)>,
}

impl<T: Clone + PartialEq> Handover<T> {
    /// For the source `name` (its log lines' prefix), handing over to
    /// `on_change`.
    pub(super) fn new(name: &'static str, on_change: impl FnMut(T) + Send + 'static) -> Self {
        Handover {
            name,
            on_change: Box::new(on_change),
            last: None,
            logged: BTreeSet::new(),
        }
    }

    /// Log what `skipped` (object, why) holds that was not logged the
    /// last time, then hand `product` over, first told to `announce`, if
    /// it differs from the last one.
    pub(super) fn offer(
        &mut self,
        product: T,
        skipped: BTreeSet<(String, String)>,
        announce: impl FnOnce(&T),
    ) {
        for (object, why) in skipped.difference(&self.logged) {
            tracing::warn!(%object, "{}: skipped: {why}", self.name);
        }
        self.logged = skipped;
        if self.last.as_ref() == Some(&product) {
            return;
        }
        announce(&product);
        self.last = Some(product.clone());
        (self.on_change)(product);
    }
}

/// A protocol as the API writes it (`None`: the default, TCP).
pub(super) fn protocol(protocol: Option<&str>) -> Option<Protocol> {
    match protocol.unwrap_or("TCP") {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// A port number, if `port` is one (1 to 65535).
pub(super) fn port_number(port: Option<i32>) -> Option<u16> {
    port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_changed_product_is_handed_over() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut handover = Handover::new("test", move |n: u32| tx.send(n).unwrap());
        let mut announced = 0;
        let skipped = || BTreeSet::from([("x".to_string(), "why".to_string())]);
        for n in [1, 1, 2, 2, 1] {
            handover.offer(n, skipped(), |_| announced += 1);
        }
        // A heartbeat (the same product again) is not handed over.
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [1, 2, 1]);
        assert_eq!(announced, 3);
        assert_eq!(handover.logged, skipped());
    }
}
