//! The Kubernetes source of NetworkPolicy (issue 20): the cluster's
//! Namespaces (their labels), Pods and `networking.k8s.io/v1`
//! NetworkPolicies, converted to the [`Cluster`] the policy compiler
//! takes.
//!
//! Three watchers, cluster-wide, run as [`super::kubernetes_watch`] runs
//! them: once all are listed, every change is converted by [`cluster`], a
//! pure function, and the whole `Cluster`, when it differs from the last
//! (a pod's status heartbeat changes nothing in it), is handed to the
//! caller's callback. While the API server does not answer, nothing is
//! handed over (the caller keeps the last `Cluster`) and the log says so
//! once.
//!
//! The model is IPv4: pods are given by their IPv4 address, and an
//! `ipBlock` that is IPv6 is left out of its rule (logged once). Leaving
//! things out never widens a policy: a rule whose peers or ports were all
//! left out is dropped (it allowed nothing over IPv4; kept with no peers
//! or ports it would allow everyone or every port), and `policyTypes` is
//! always given, so that dropping a policy's last egress rule keeps its
//! pods isolated for egress.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::Result;
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::{Namespace as KubeNamespace, Pod as KubePod};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy as KubeNetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as KubeLabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::Store;
use podswitch_control::policy::selector::{LabelSelector, Operator, Requirement};
use podswitch_control::policy::{
    Cluster, Direction, IpBlock, NamedPort, Namespace, NetworkPolicy, Peer, Pod, PolicyPort, Port,
    Rule,
};

use super::KubernetesSettings;
use super::kubernetes_watch::{self, Handover, KubeWatch, port_number, protocol, watch_all};

/// A running NetworkPolicy source; dropping it stops its thread.
pub type PolicyWatch = KubeWatch;

/// Follow the Namespaces, Pods and NetworkPolicies of the cluster
/// `settings` reaches (its kubeconfig, else in-cluster, as the Node
/// source), handing the whole [`Cluster`] to `on_change` each time it
/// changes, the first time once all three are listed.
pub fn watch_policies(
    settings: &KubernetesSettings,
    on_change: impl FnMut(Cluster) + Send + 'static,
) -> Result<PolicyWatch> {
    let mut handover = Handover::new("policy", on_change);
    kubernetes_watch::spawn("policy", "policies", settings, |client, link| async move {
        let (namespaces, namespaces_events) = watch_all::<KubeNamespace>(&client, 0);
        let (pods, pods_events) = watch_all::<KubePod>(&client, 1);
        let (policies, policies_events) = watch_all::<KubeNetworkPolicy>(&client, 2);
        let events = futures_util::stream::select(
            namespaces_events,
            futures_util::stream::select(pods_events, policies_events),
        );
        // With a verb the watchers need anyway (list), on the kind that
        // is fewest.
        let probe: Api<KubeNetworkPolicy> = Api::all(client);
        let probe = || {
            let probe = probe.clone();
            async move { probe.list(&ListParams::default().limit(1)).await.is_ok() }
        };
        link.follow(events, 3, probe, || {
            hand_over(&namespaces, &pods, &policies, &mut handover);
        })
        .await;
    })
}

/// Convert the stores' objects and hand the `Cluster` over if it changed.
fn hand_over(
    namespaces: &Store<KubeNamespace>,
    pods: &Store<KubePod>,
    policies: &Store<KubeNetworkPolicy>,
    handover: &mut Handover<Cluster>,
) {
    let (namespaces, pods, policies) = (namespaces.state(), pods.state(), policies.state());
    let mut skipped = BTreeSet::new();
    let cluster = cluster(
        namespaces.iter().map(|n| &**n),
        pods.iter().map(|p| &**p),
        policies.iter().map(|p| &**p),
        |object, why| {
            skipped.insert((object, why));
        },
    );
    handover.offer(cluster, skipped, |cluster| {
        tracing::info!(
            namespaces = cluster.namespaces.len(),
            pods = cluster.pods.len(),
            policies = cluster.policies.len(),
            "policy: the cluster's policies, pods or namespaces changed"
        );
    });
}

/// The [`Cluster`] the objects describe, each list sorted by namespace and
/// name: every namespace; the pods with an IPv4 address that are not on
/// the host's network and have not ended; every policy. `skipped` is told
/// what is left out (and of what object: `Pod ns/name`, `NetworkPolicy
/// ns/name`) and why, but for pods without an address yet, host-network
/// pods and ended pods, which are left out silently.
pub fn cluster<'a>(
    namespaces: impl IntoIterator<Item = &'a KubeNamespace>,
    pods: impl IntoIterator<Item = &'a KubePod>,
    policies: impl IntoIterator<Item = &'a KubeNetworkPolicy>,
    mut skipped: impl FnMut(String, String),
) -> Cluster {
    let mut namespaces: Vec<Namespace> = namespaces.into_iter().map(namespace).collect();
    namespaces.sort_by(|a, b| a.name.cmp(&b.name));
    let mut pods: Vec<Pod> = pods
        .into_iter()
        .filter_map(|p| {
            let object = format!("Pod {}", full_name(&p.metadata));
            pod(p, |why| skipped(object.clone(), why))
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    // Two pods at one address: one is going away and its deletion has not
    // reached the watch yet. Policy tells pods apart by address: keep the
    // first, until the other is gone.
    let mut addresses = std::collections::HashMap::new();
    pods.retain(|pod| match addresses.entry(pod.ip) {
        std::collections::hash_map::Entry::Vacant(free) => {
            free.insert(pod.full_name());
            true
        }
        std::collections::hash_map::Entry::Occupied(taken) => {
            skipped(
                format!("Pod {}", pod.full_name()),
                format!("its address {} is also pod {}'s", pod.ip, taken.get()),
            );
            false
        }
    });
    let mut policies: Vec<NetworkPolicy> = policies
        .into_iter()
        .map(|p| {
            let object = format!("NetworkPolicy {}", full_name(&p.metadata));
            network_policy(p, &mut |why| skipped(object.clone(), why))
        })
        .collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Cluster {
        namespaces,
        pods,
        policies,
    }
}

fn full_name(meta: &kube::api::ObjectMeta) -> String {
    let namespace = meta.namespace.as_deref().unwrap_or_default();
    format!("{namespace}/{}", meta.name.as_deref().unwrap_or_default())
}

/// A namespace: its name and labels.
fn namespace(namespace: &KubeNamespace) -> Namespace {
    Namespace {
        name: namespace.metadata.name.clone().unwrap_or_default(),
        labels: namespace.metadata.labels.clone().unwrap_or_default(),
    }
}

/// A pod, with its first IPv4 address (`status.podIPs`, else
/// `status.podIP`) and its containers' named ports; `None` for one
/// without an IPv4 address, on the host's network, or ended (phase
/// `Succeeded` or `Failed`: its address may be another pod's already).
/// `skipped` is told why a named port, or an IPv6-only pod, is left out.
fn pod(pod: &KubePod, mut skipped: impl FnMut(String)) -> Option<Pod> {
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if spec.host_network == Some(true)
        || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
    {
        return None;
    }
    let addresses: Vec<&str> = match (&status.pod_ips, &status.pod_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.iter().map(|ip| ip.ip.as_str()).collect(),
        (_, ip) => ip.iter().map(String::as_str).collect(),
    };
    let Some(ip) = addresses.iter().find_map(|a| a.parse::<Ipv4Addr>().ok()) else {
        if !addresses.is_empty() {
            skipped(format!("no IPv4 address (podIPs {addresses:?})"));
        }
        return None;
    };
    let mut ports = Vec::new();
    for port in spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
    {
        let Some(name) = port.name.clone().filter(|n| !n.is_empty()) else {
            continue;
        };
        let Some(protocol) = protocol(port.protocol.as_deref()) else {
            skipped(format!(
                "port {name:?}: protocol {:?} is not TCP, UDP or SCTP",
                port.protocol
            ));
            continue;
        };
        let Some(number) = port_number(Some(port.container_port)) else {
            let number = port.container_port;
            skipped(format!("port {name:?}: {number} is no port number"));
            continue;
        };
        ports.push(NamedPort {
            name,
            protocol,
            port: number,
        });
    }
    Some(Pod {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        ip,
        ports,
    })
}

/// A NetworkPolicy. Its `policy_types` are always given (the API server's
/// default when it has none: `Ingress`, and `Egress` if it has egress
/// rules), so that a rule dropped here changes no pod's isolation.
/// `skipped` is told what is left out and why.
fn network_policy(policy: &KubeNetworkPolicy, skipped: &mut dyn FnMut(String)) -> NetworkPolicy {
    let spec = policy.spec.clone().unwrap_or_default();
    let ingress = spec.ingress.unwrap_or_default();
    let egress = spec.egress.unwrap_or_default();
    let mut policy_types = Vec::new();
    for kind in spec.policy_types.unwrap_or_default() {
        match kind.as_str() {
            "Ingress" => policy_types.push(Direction::Ingress),
            "Egress" => policy_types.push(Direction::Egress),
            other => skipped(format!(
                "policyTypes: {other:?} is neither Ingress nor Egress"
            )),
        }
    }
    if policy_types.is_empty() {
        policy_types.push(Direction::Ingress);
        if !egress.is_empty() {
            policy_types.push(Direction::Egress);
        }
    }
    let ingress = ingress
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let mut skipped = |why| skipped(format!("ingress rule {}: {why}", i + 1));
            rule(r.from.as_deref(), r.ports.as_deref(), &mut skipped)
        })
        .collect();
    let egress = egress
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let mut skipped = |why| skipped(format!("egress rule {}: {why}", i + 1));
            rule(r.to.as_deref(), r.ports.as_deref(), &mut skipped)
        })
        .collect();
    NetworkPolicy {
        namespace: policy.metadata.namespace.clone().unwrap_or_default(),
        name: policy.metadata.name.clone().unwrap_or_default(),
        pod_selector: selector(&spec.pod_selector.unwrap_or_default(), skipped),
        policy_types,
        ingress,
        egress,
    }
}

/// A rule from its peers (`from` or `to`) and ports, those that cannot be
/// converted left out; `None` if all of its peers, or all of its ports,
/// were left out: what remained would allow every peer or every port,
/// where the rule allows nothing (over IPv4).
fn rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    skipped: &mut dyn FnMut(String),
) -> Option<Rule> {
    let (peers, ports) = (peers.unwrap_or_default(), ports.unwrap_or_default());
    let mut rule = Rule::default();
    for (i, given) in peers.iter().enumerate() {
        match peer(given, skipped) {
            Ok(peer) => rule.peers.push(peer),
            Err(why) => skipped(format!("peer {}: {why}: left out", i + 1)),
        }
    }
    for (i, port) in ports.iter().enumerate() {
        match policy_port(port) {
            Ok(port) => rule.ports.push(port),
            Err(why) => skipped(format!("port {}: {why}: left out", i + 1)),
        }
    }
    if rule.peers.is_empty() && !peers.is_empty() {
        skipped("every peer left out: the rule allows nothing".into());
        return None;
    }
    if rule.ports.is_empty() && !ports.is_empty() {
        skipped("every port left out: the rule allows nothing".into());
        return None;
    }
    Some(rule)
}

/// A peer, or why it is left out.
fn peer(peer: &NetworkPolicyPeer, skipped: &mut dyn FnMut(String)) -> Result<Peer, String> {
    Ok(Peer {
        pod_selector: peer.pod_selector.as_ref().map(|s| selector(s, skipped)),
        namespace_selector: peer
            .namespace_selector
            .as_ref()
            .map(|s| selector(s, skipped)),
        ip_block: peer.ip_block.as_ref().map(ip_block).transpose()?,
    })
}

/// An IPv4 ipBlock, or why it is not one. An `except` that is not an IPv4
/// block fails the whole block: without it the block would hold more.
fn ip_block(block: &IPBlock) -> Result<IpBlock, String> {
    let cidr = match block.cidr.parse::<IpNet>() {
        Ok(IpNet::V4(cidr)) => cidr,
        Ok(IpNet::V6(_)) => {
            return Err(format!(
                "ipBlock {} is IPv6 (the policy model is IPv4)",
                block.cidr
            ));
        }
        Err(_) => return Err(format!("ipBlock {:?} is no CIDR", block.cidr)),
    };
    let except = block
        .except
        .iter()
        .flatten()
        .map(|e| {
            e.parse::<Ipv4Net>()
                .map_err(|_| format!("ipBlock {cidr}: except {e:?} is no IPv4 CIDR"))
        })
        .collect::<Result<_, _>>()?;
    Ok(IpBlock { cidr, except })
}

/// A port of a rule, or why it cannot be one.
fn policy_port(port: &NetworkPolicyPort) -> Result<PolicyPort, String> {
    let protocol = protocol(port.protocol.as_deref()).ok_or_else(|| {
        format!(
            "protocol {:?} is not TCP, UDP or SCTP",
            port.protocol.as_deref().unwrap_or_default()
        )
    })?;
    let number = |n: i32| port_number(Some(n)).ok_or_else(|| format!("{n} is no port number"));
    let port_of = match &port.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(Port::Number(number(*n)?)),
        Some(IntOrString::String(name)) => Some(Port::Name(name.clone())),
    };
    Ok(PolicyPort {
        protocol,
        port: port_of,
        end_port: port.end_port.map(number).transpose()?,
    })
}

/// A label selector. An operator the model does not know (the API server
/// refuses them) becomes a requirement that matches nothing (`In` with no
/// values), told to `skipped`.
fn selector(selector: &KubeLabelSelector, skipped: &mut dyn FnMut(String)) -> LabelSelector {
    let match_expressions = selector
        .match_expressions
        .iter()
        .flatten()
        .map(|r| {
            let operator = match r.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    skipped(format!(
                        "selector on {:?}: operator {other:?} is unknown: it matches nothing",
                        r.key
                    ));
                    return Requirement {
                        key: r.key.clone(),
                        operator: Operator::In,
                        values: Vec::new(),
                    };
                }
            };
            Requirement {
                key: r.key.clone(),
                operator,
                values: r.values.clone().unwrap_or_default(),
            }
        })
        .collect();
    LabelSelector {
        match_labels: selector.match_labels.clone().unwrap_or_default(),
        match_expressions,
    }
}

#[cfg(test)]
mod tests;
