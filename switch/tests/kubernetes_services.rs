//! The Kubernetes Service source through the unmodified kube-rs watchers
//! the daemon uses (`podswitch::membership::kubernetes_services`), against
//! the stand-in API server (`podswitch_lab::kube_api`) on the loopback
//! address: no real API server can be installed on these machines. The
//! test plays the cluster (creates, changes and deletes Services and
//! EndpointSlices as the API server and the EndpointSlice controller do)
//! and checks every list the source hands over: a Service with two slices
//! and a named targetPort, an endpoint becoming not ready, a slice
//! deleted, a forced `410 Gone` re-list that loses nothing, an API server
//! outage that keeps the last list, a Service deleted. Needs no root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use podswitch::membership::KubernetesSettings;
use podswitch::membership::kubernetes_services::{ServicesWatch, watch_services};
use podswitch_control::service::{Endpoint, Service};
use podswitch_lab::kube_api::{KubeApi, endpoint_slice_object, service_object};
use podswitch_lab::membership::{Handed, wait_for};

/// Service `name`'s endpoints of its first port as (address, port,
/// ready); `None` if there is no such Service.
fn endpoints(list: &[Service], name: &str) -> Option<Vec<(Ipv4Addr, u16, bool)>> {
    let service = list.iter().find(|s| s.name == name)?;
    let port = service.ports.first()?;
    Some(
        port.endpoints
            .iter()
            .map(|e: &Endpoint| (e.address, e.port, e.ready))
            .collect(),
    )
}

fn ip(i: u8, j: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i, j)
}

/// The "http" slice `name` of Service default/web: port 8080 (what the
/// named targetPort "web" resolves to on these pods).
fn web_slice(name: &str, endpoints: &[(Ipv4Addr, &str, bool)]) -> serde_json::Value {
    endpoint_slice_object("default", name, "web", &[("http", "TCP", 8080)], endpoints)
}

/// Start the source on the cluster `api` serves, its kubeconfig in `dir`.
fn start(api: &KubeApi, dir: &Path) -> Result<(ServicesWatch, Handed<Vec<Service>>)> {
    let settings = KubernetesSettings {
        kubeconfig: Some(api.kubeconfig_in(dir)?),
        ..KubernetesSettings::default()
    };
    let (tx, handed) = Handed::channel();
    let watch = watch_services(&settings, move |handed_over| {
        let _ = tx.send(handed_over);
    })?;
    Ok((watch, handed))
}

#[test]
fn services_and_endpoint_slices_are_followed_through_the_api() -> Result<()> {
    // The source's log, shown if the test fails.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut api = KubeApi::start_local()?;
    // A TCP Service with a named targetPort and two slices (nodes 1 and
    // 2), and a UDP "DNS" Service whose slices are not there yet.
    api.put(service_object(
        "default",
        "web",
        "10.96.0.80",
        &[("http", "TCP", 80, "web")],
    ))?;
    api.put(web_slice("web-a", &[(ip(1, 5), "node-1", true)]))?;
    api.put(web_slice("web-b", &[(ip(2, 7), "node-2", true)]))?;
    api.put(service_object(
        "kube-system",
        "kube-dns",
        "10.96.0.10",
        &[("dns", "UDP", 53, "53")],
    ))?;
    let dir = std::env::temp_dir().join(format!("podswitch-k8s-services-{}", std::process::id()));
    let (watch, mut handed) = start(&api, &dir)?;

    // The first list is complete: both watchers listed before it.
    handed.wait("the first list", |_| true)?;
    ensure!(handed.count == 1, "{} lists at first", handed.count);
    let list = handed.last.clone().context("no list")?;
    ensure!(list.len() == 2, "{list:#?}");
    let (web, dns) = (&list[0], &list[1]);
    ensure!(dns.name == "kube-system/kube-dns" && web.name == "default/web");
    ensure!(web.cluster_ip == Ipv4Addr::new(10, 96, 0, 80));
    ensure!(web.ports[0].port == 80 && web.ports[0].name == "http");
    ensure!(
        endpoints(&list, "default/web")
            == Some(vec![(ip(1, 5), 8080, true), (ip(2, 7), 8080, true)]),
        "{list:#?}"
    );
    ensure!(web.ports[0].endpoints[0].node.as_deref() == Some("node-1"));
    ensure!(dns.ports[0].port == 53 && dns.ports[0].endpoints.is_empty());

    // The DNS Service's slice arrives.
    api.put(endpoint_slice_object(
        "kube-system",
        "kube-dns-a",
        "kube-dns",
        &[("dns", "UDP", 53)],
        &[(ip(1, 3), "node-1", true)],
    ))?;
    handed.wait("kube-dns's endpoint", |l| {
        endpoints(l, "kube-system/kube-dns") == Some(vec![(ip(1, 3), 53, true)])
    })?;

    // An endpoint becomes not ready.
    api.put(web_slice("web-b", &[(ip(2, 7), "node-2", false)]))?;
    handed.wait("node 2's endpoint not ready", |l| {
        endpoints(l, "default/web") == Some(vec![(ip(1, 5), 8080, true), (ip(2, 7), 8080, false)])
    })?;

    // A slice is deleted.
    ensure!(api.delete("EndpointSlice", Some("default"), "web-a"));
    handed.wait("web-a's endpoint gone", |l| {
        endpoints(l, "default/web") == Some(vec![(ip(2, 7), 8080, false)])
    })?;

    // A forced 410: the API server forgets its history, a slice is added
    // meanwhile; both watchers list again and nothing is lost.
    let lists = api.lists();
    api.expire();
    api.put(web_slice("web-c", &[(ip(3, 9), "node-3", true)]))?;
    wait_for("both watchers to list again after the 410", || {
        Ok(api.lists() >= lists + 2)
    })?;
    let list = handed.wait("web-c's endpoint after the re-list", |l| {
        endpoints(l, "default/web") == Some(vec![(ip(2, 7), 8080, false), (ip(3, 9), 8080, true)])
    })?;
    ensure!(
        endpoints(list, "kube-system/kube-dns") == Some(vec![(ip(1, 3), 53, true)]),
        "kube-dns lost in the re-list: {list:#?}"
    );

    // The API server goes away: the source says so, and hands nothing
    // over (the last list stands); a Service deleted meanwhile is
    // followed once it is back.
    api.stop();
    wait_for("the source to report the API server unreachable", || {
        Ok(watch.report().unreachable_since.is_some())
    })?;
    let report = watch.report();
    ensure!(report.source == "kubernetes", "{report:?}");
    ensure!(report.error.is_some(), "{report:?}");
    ensure!(api.delete("Service", Some("kube-system"), "kube-dns"));
    handed.take();
    let before = handed.count;
    let kept = handed.last.clone();
    api.launch()?;
    wait_for("the source to hear from the API server again", || {
        Ok(watch.report().unreachable_since.is_none())
    })?;
    handed.wait("kube-dns gone after the outage", |l| {
        endpoints(l, "kube-system/kube-dns").is_none()
    })?;
    ensure!(
        kept.as_deref()
            .is_some_and(|l| endpoints(l, "kube-system/kube-dns").is_some()),
        "the list before the API server came back: {kept:#?}"
    );
    ensure!(handed.count > before);

    // The Service is deleted (its slice stays, as until the garbage
    // collector removes it): the list is empty.
    ensure!(api.delete("Service", Some("default"), "web"));
    handed.wait("web gone", Vec::is_empty)?;

    // The calls made are those the DaemonSet's RBAC grants for Services
    // and EndpointSlices (deploy/kubernetes/podswitch.yaml): list and
    // watch, and get (the probe while the API server is away, made
    // against a server that is up only if the watches did not hear from
    // it first).
    let requests = api.requests();
    let made = BTreeSet::from([
        ("endpointslices", "list"),
        ("endpointslices", "watch"),
        ("services", "list"),
        ("services", "watch"),
    ]);
    let mut granted = made.clone();
    granted.insert(("services", "get"));
    ensure!(
        requests.is_superset(&made) && requests.is_subset(&granted),
        "{requests:?}"
    );
    drop(watch);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
