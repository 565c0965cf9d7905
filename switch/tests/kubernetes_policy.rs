//! The Kubernetes source of NetworkPolicy through the unmodified kube-rs
//! watchers the daemon is to use
//! (`podswitch::membership::kubernetes_policy`), against the stand-in API
//! server (`podswitch_lab::kube_api`) on the loopback address: no real API
//! server can be installed on these machines. The test plays the cluster
//! (creates, changes and deletes Namespaces, Pods and NetworkPolicies as
//! the API server and the kubelets do) and checks every `Cluster` the
//! source hands over: a labelled namespace, pods with named ports, a
//! policy with ingress and egress rules; then a pod relabelled, a pending
//! pod given its address, a pod deleted, a policy deleted, a forced `410
//! Gone` re-list that loses nothing, an API server outage that keeps the
//! last `Cluster`. Needs no root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use podswitch::membership::KubernetesSettings;
use podswitch::membership::kubernetes_policy::{PolicyWatch, watch_policies};
use podswitch_control::policy::selector::LabelSelector;
use podswitch_control::policy::{
    Cluster, Direction, NAMESPACE_NAME_LABEL, NamedPort, Peer, PolicyPort, Port, Protocol, Rule,
};
use podswitch_lab::kube_api::{KubeApi, namespace_object, network_policy_object, pod_object};
use podswitch_lab::membership::{Handed, wait_for};
use serde_json::json;

/// The pods of `cluster` as `namespace/name`.
fn pods(cluster: &Cluster) -> Vec<String> {
    cluster
        .pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

/// The policies of `cluster` as `namespace/name`.
fn policies(cluster: &Cluster) -> Vec<String> {
    cluster
        .policies
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, i)
}

/// Policy shop/web: pods `app=web` take `http` from the namespaces of
/// team front, and talk to the `app=pg` pods of namespace db on 5432.
fn web_policy() -> serde_json::Value {
    network_policy_object(
        "shop",
        "web",
        json!({
            "podSelector": { "matchLabels": { "app": "web" } },
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [{ "namespaceSelector": { "matchLabels": { "team": "front" } } }],
                "ports": [{ "protocol": "TCP", "port": "http" }],
            }],
            "egress": [{
                "to": [{
                    "namespaceSelector": { "matchLabels": { NAMESPACE_NAME_LABEL: "db" } },
                    "podSelector": { "matchLabels": { "app": "pg" } },
                }],
                "ports": [{ "protocol": "TCP", "port": 5432 }],
            }],
        }),
    )
}

/// Start the source on the cluster `api` serves, its kubeconfig in `dir`.
fn start(api: &KubeApi, dir: &Path) -> Result<(PolicyWatch, Handed<Cluster>)> {
    let settings = KubernetesSettings {
        kubeconfig: Some(api.kubeconfig_in(dir)?),
        ..KubernetesSettings::default()
    };
    let (tx, handed) = Handed::channel();
    let watch = watch_policies(&settings, move |handed_over| {
        let _ = tx.send(handed_over);
    })?;
    Ok((watch, handed))
}

#[test]
fn namespaces_pods_and_policies_are_followed_through_the_api() -> Result<()> {
    // The source's log, shown if the test fails.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let mut api = KubeApi::start_local()?;
    api.put(namespace_object("shop", &[("team", "front")]))?;
    api.put(namespace_object("db", &[]))?;
    api.put(pod_object(
        "shop",
        "web-0",
        &[("app", "web")],
        Some(ip(5)),
        &[("http", "TCP", 8080), ("", "TCP", 9000)],
    ))?;
    // Pending: no address yet.
    api.put(pod_object("shop", "web-1", &[("app", "web")], None, &[]))?;
    api.put(pod_object(
        "db",
        "pg-0",
        &[("app", "pg")],
        Some(ip(9)),
        &[("pg", "TCP", 5432)],
    ))?;
    api.put(web_policy())?;
    let dir = std::env::temp_dir().join(format!("podswitch-k8s-policy-{}", std::process::id()));
    let (watch, mut handed) = start(&api, &dir)?;

    // The first Cluster is complete: the three watchers listed before it.
    handed.wait("the first Cluster", |_| true)?;
    ensure!(handed.count == 1, "{} Clusters at first", handed.count);
    let cluster = handed.last.clone().context("no Cluster")?;
    let names: Vec<&str> = cluster.namespaces.iter().map(|n| n.name.as_str()).collect();
    ensure!(names == ["db", "shop"], "{cluster:#?}");
    let shop = &cluster.namespaces[1];
    ensure!(shop.labels.get("team").map(String::as_str) == Some("front"));
    ensure!(pods(&cluster) == ["db/pg-0", "shop/web-0"], "{cluster:#?}");
    let web = &cluster.pods[1];
    ensure!(web.ip == ip(5) && web.labels.get("app").map(String::as_str) == Some("web"));
    let http = NamedPort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 8080,
    };
    ensure!(web.ports == [http], "{web:#?}");
    ensure!(policies(&cluster) == ["shop/web"], "{cluster:#?}");
    let policy = &cluster.policies[0];
    ensure!(policy.pod_selector == LabelSelector::labels([("app", "web")]));
    ensure!(policy.policy_types == [Direction::Ingress, Direction::Egress]);
    ensure!(
        policy.ingress
            == [Rule {
                peers: vec![Peer {
                    namespace_selector: Some(LabelSelector::labels([("team", "front")])),
                    ..Peer::default()
                }],
                ports: vec![PolicyPort::new(
                    Protocol::Tcp,
                    Some(Port::Name("http".into()))
                )],
            }],
        "{policy:#?}"
    );
    ensure!(
        policy.egress
            == [Rule {
                peers: vec![Peer {
                    pod_selector: Some(LabelSelector::labels([("app", "pg")])),
                    namespace_selector: Some(LabelSelector::labels([(NAMESPACE_NAME_LABEL, "db")])),
                    ip_block: None,
                }],
                ports: vec![PolicyPort::new(Protocol::Tcp, Some(Port::Number(5432)))],
            }],
        "{policy:#?}"
    );

    // A pod is relabelled.
    api.put(pod_object(
        "shop",
        "web-0",
        &[("app", "web"), ("canary", "yes")],
        Some(ip(5)),
        &[("http", "TCP", 8080)],
    ))?;
    handed.wait("web-0's new label", |c| {
        c.pods
            .iter()
            .any(|p| p.name == "web-0" && p.labels.contains_key("canary"))
    })?;

    // The pending pod gets its address.
    api.put(pod_object(
        "shop",
        "web-1",
        &[("app", "web")],
        Some(ip(6)),
        &[],
    ))?;
    handed.wait("web-1 with its address", |c| {
        c.pods.iter().any(|p| p.name == "web-1" && p.ip == ip(6))
    })?;

    // A pod is deleted.
    ensure!(api.delete("Pod", Some("db"), "pg-0"));
    handed.wait("pg-0 gone", |c| pods(c) == ["shop/web-0", "shop/web-1"])?;

    // A namespace is relabelled.
    api.put(namespace_object("db", &[("team", "data")]))?;
    handed.wait("db's new label", |c| {
        c.namespaces
            .iter()
            .any(|n| n.name == "db" && n.labels.contains_key("team"))
    })?;

    // A forced 410: the API server forgets its history, a policy is added
    // meanwhile; the three watchers list again and nothing is lost.
    let lists = api.lists();
    api.expire();
    api.put(network_policy_object(
        "db",
        "deny-all",
        json!({ "podSelector": {}, "policyTypes": ["Ingress"] }),
    ))?;
    wait_for("the three watchers to list again after the 410", || {
        Ok(api.lists() >= lists + 3)
    })?;
    let cluster = handed.wait("db/deny-all after the re-list", |c| {
        policies(c) == ["db/deny-all", "shop/web"]
    })?;
    ensure!(
        pods(cluster) == ["shop/web-0", "shop/web-1"] && cluster.namespaces.len() == 2,
        "lost in the re-list: {cluster:#?}"
    );

    // The API server goes away: the source says so, and hands nothing
    // over (the last Cluster stands); a policy deleted meanwhile is
    // followed once it is back.
    api.stop();
    wait_for("the source to report the API server unreachable", || {
        Ok(watch.report().unreachable_since.is_some())
    })?;
    let report = watch.report();
    ensure!(report.source == "kubernetes", "{report:?}");
    ensure!(report.error.is_some(), "{report:?}");
    ensure!(api.delete("NetworkPolicy", Some("shop"), "web"));
    handed.take();
    let before = handed.count;
    let kept = handed.last.clone();
    api.launch()?;
    wait_for("the source to hear from the API server again", || {
        Ok(watch.report().unreachable_since.is_none())
    })?;
    handed.wait("shop/web gone after the outage", |c| {
        policies(c) == ["db/deny-all"]
    })?;
    ensure!(
        kept.as_ref()
            .is_some_and(|c| policies(c) == ["db/deny-all", "shop/web"]),
        "the Cluster before the API server came back: {kept:#?}"
    );
    ensure!(handed.count > before);

    // The calls made are those the DaemonSet's RBAC grants for them
    // (deploy/kubernetes/podswitch.yaml): list and watch.
    let requests = api.requests();
    let granted = BTreeSet::from([
        ("namespaces", "list"),
        ("namespaces", "watch"),
        ("networkpolicies", "list"),
        ("networkpolicies", "watch"),
        ("pods", "list"),
        ("pods", "watch"),
    ]);
    ensure!(requests == granted, "{requests:?}");
    drop(watch);
    std::fs::remove_dir_all(dir)?;
    Ok(())
}
