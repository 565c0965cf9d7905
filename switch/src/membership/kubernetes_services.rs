//! The Kubernetes Service source: the cluster's Service and EndpointSlice
//! objects, resolved to the [`Service`] list the switch translates
//! (issue 18).
//!
//! Two watchers (Services and `discovery.k8s.io/v1` EndpointSlices,
//! cluster-wide), run as [`super::kubernetes_watch`] runs them: once both
//! are listed, every change is resolved by [`resolve`], a pure function,
//! and the complete list, when it differs from the last, is handed to the
//! caller's callback. While the API server does not answer, nothing is
//! handed over (the caller keeps the last list) and the log says so once.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;

use anyhow::Result;
use k8s_openapi::api::core::v1::Service as KubeService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::Store;
use podswitch_control::service::{
    Endpoint, Service, ServicePort, ServiceProtocol, TrafficPolicy, is_external_address,
};

use super::KubernetesSettings;
use super::kubernetes_watch::{self, Handover, KubeWatch, port_number, protocol, watch_all};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// `sessionAffinityConfig.clientIP.timeoutSeconds` when left out (3 h,
/// the API's default).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// A running Service source; dropping it stops its thread.
pub type ServicesWatch = KubeWatch;

/// Follow the Services and EndpointSlices of the cluster `settings`
/// reaches (its kubeconfig, else in-cluster, as the Node source), handing
/// the complete list to `on_change` each time it changes, the first time
/// once both are listed.
pub fn watch_services(
    settings: &KubernetesSettings,
    on_change: impl FnMut(Vec<Service>) + Send + 'static,
) -> Result<ServicesWatch> {
    let mut handover = Handover::new("services", on_change);
    kubernetes_watch::spawn(
        "services",
        "Services",
        settings,
        |client, link| async move {
            let (services, services_events) = watch_all::<KubeService>(&client, 0);
            let (slices, slices_events) = watch_all::<EndpointSlice>(&client, 1);
            let events = futures_util::stream::select(services_events, slices_events);
            let probe: Api<KubeService> = Api::namespaced(client, "default");
            let probe = || {
                let probe = probe.clone();
                async move { probe.get_opt("kubernetes").await.is_ok() }
            };
            link.follow(events, 2, probe, || {
                hand_over(&services, &slices, &mut handover);
            })
            .await;
        },
    )
}

/// Resolve the stores' objects and hand the list over if it changed.
fn hand_over(
    services: &Store<KubeService>,
    slices: &Store<EndpointSlice>,
    handover: &mut Handover<Vec<Service>>,
) {
    let (services, slices) = (services.state(), slices.state());
    let mut skipped = BTreeSet::new();
    let list = resolve(
        services.iter().map(|s| &**s),
        slices.iter().map(|s| &**s),
        |name, why| {
            skipped.insert((name.to_string(), why));
        },
    );
    handover.offer(list, skipped, |list| {
        let endpoints: usize = list
            .iter()
            .flat_map(|s| &s.ports)
            .map(|p| p.endpoints.len())
            .sum();
        tracing::info!(
            services = list.len(),
            endpoints,
            "services: the Services changed"
        );
    });
}

/// The Services `services` and `slices` describe, sorted by name:
/// ClusterIP, NodePort and LoadBalancer Services with an IPv4 cluster IP,
/// each port with the endpoints of the IPv4 EndpointSlices labelled with
/// the Service's name whose port has the Service port's name and
/// protocol. Headless and ExternalName Services are left out silently;
/// `skipped` is told why anything else is left out.
pub fn resolve<'a>(
    services: impl IntoIterator<Item = &'a KubeService>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    mut skipped: impl FnMut(&str, String),
) -> Vec<Service> {
    // The IPv4 slices by Service (namespace, name), in name order.
    let mut by_service: BTreeMap<(&str, &str), BTreeMap<&str, &EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        let meta = &slice.metadata;
        let service = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(service), true) = (service, slice.address_type == "IPv4") {
            let namespace = meta.namespace.as_deref().unwrap_or_default();
            let name = meta.name.as_deref().unwrap_or_default();
            by_service
                .entry((namespace, service))
                .or_default()
                .insert(name, slice);
        }
    }
    let mut resolved: Vec<Service> = services
        .into_iter()
        .filter_map(|service| {
            let meta = &service.metadata;
            let namespace = meta.namespace.as_deref().unwrap_or_default();
            let name = meta.name.as_deref().unwrap_or_default();
            let full = format!("{namespace}/{name}");
            let slices = by_service.get(&(namespace, name));
            let slices = slices.into_iter().flat_map(BTreeMap::values).copied();
            match resolve_service(service, slices, |why| skipped(&full, why)) {
                Ok(Some(mut service)) => {
                    service.name = full;
                    Some(service)
                }
                Ok(None) => None,
                Err(why) => {
                    skipped(&full, why);
                    None
                }
            }
        })
        .collect();
    resolved.sort_by(|a, b| a.name.cmp(&b.name));
    // Kubernetes lets two Services list one external address: the first
    // in name order keeps it, as the switch's table would refuse both.
    let mut claimed: HashSet<(Ipv4Addr, ServiceProtocol, u16)> = resolved
        .iter()
        .flat_map(|s| s.ports.iter().map(|p| (s.cluster_ip, p.protocol, p.port)))
        .collect();
    for service in &mut resolved {
        service.external_ips.retain(|&address| {
            let keys: Vec<_> = service
                .ports
                .iter()
                .map(|port| (address, port.protocol, port.port))
                .collect();
            let free = keys.iter().all(|key| !claimed.contains(key));
            if free {
                claimed.extend(keys);
            } else {
                skipped(
                    &service.name,
                    format!("external IP {address}: another Service has it on the same port"),
                );
            }
            free
        });
    }
    resolved
}

/// One Service with its `slices` (name left empty): `Ok(None)` for one
/// left out by design (headless, ExternalName), `Err` with why it cannot
/// be translated; `skipped` is told why a port is left out.
fn resolve_service<'a>(
    service: &KubeService,
    slices: impl Iterator<Item = &'a EndpointSlice> + Clone,
    mut skipped: impl FnMut(String),
) -> Result<Option<Service>, String> {
    let spec = service.spec.clone().unwrap_or_default();
    let kind = spec.type_.as_deref().unwrap_or("ClusterIP");
    let node_ports = match kind {
        "ClusterIP" => false,
        "NodePort" | "LoadBalancer" => true,
        "ExternalName" => return Ok(None),
        other => return Err(format!("its type {other:?} is unknown")),
    };
    let ips = match (spec.cluster_ips, spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips,
        (_, ip) => ip.into_iter().collect(),
    };
    if ips.iter().any(|ip| ip == "None") {
        return Ok(None);
    }
    let cluster_ip = ips
        .iter()
        .find_map(|ip| ip.parse::<Ipv4Addr>().ok())
        .ok_or_else(|| format!("no IPv4 cluster IP (clusterIPs {ips:?})"))?;
    // Its external addresses: `externalIPs`, and a load balancer's that
    // hands the packets on with their address (`ipMode: VIP`, the
    // default; with `Proxy` the traffic must reach the balancer). IPv6
    // ones are left to kube-proxy, as IPv6 Services are.
    let balancer = service
        .status
        .as_ref()
        .and_then(|status| status.load_balancer.as_ref()?.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter(|_| kind == "LoadBalancer")
        .filter(|ingress| ingress.ip_mode.as_deref().is_none_or(|mode| mode == "VIP"))
        .filter_map(|ingress| ingress.ip.as_deref());
    let mut external_ips = Vec::new();
    for text in spec
        .external_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .chain(balancer)
    {
        match text.parse::<Ipv4Addr>() {
            Ok(ip) if !is_external_address(ip) => {
                skipped(format!("external IP {ip}: not a unicast address"));
            }
            Ok(ip) if ip == cluster_ip || external_ips.contains(&ip) => {}
            Ok(ip) => external_ips.push(ip),
            Err(_) if text.parse::<std::net::Ipv6Addr>().is_ok() => {}
            Err(_) => skipped(format!("external IP {text:?}: not an address")),
        }
    }
    let affinity_seconds = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .and_then(|c| c.client_ip?.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    let mut ports = Vec::new();
    for port in spec.ports.unwrap_or_default() {
        let name = port.name.unwrap_or_default();
        let Some(protocol) = protocol(port.protocol.as_deref()) else {
            skipped(format!(
                "port {name:?}: protocol {:?} is not TCP, UDP or SCTP",
                port.protocol
            ));
            continue;
        };
        let Some(number) = port_number(Some(port.port)) else {
            skipped(format!("port {name:?}: {} is no port number", port.port));
            continue;
        };
        let endpoints = endpoints(slices.clone(), &name, protocol);
        ports.push(ServicePort {
            name,
            protocol,
            port: number,
            node_port: port_number(port.node_port).filter(|_| node_ports),
            endpoints,
        });
    }
    Ok(Some(Service {
        name: String::new(),
        cluster_ip,
        external_ips,
        ports,
        affinity_seconds,
        internal_traffic_policy: traffic_policy(spec.internal_traffic_policy.as_deref()),
        external_traffic_policy: traffic_policy(spec.external_traffic_policy.as_deref()),
    }))
}

/// The endpoints `slices` give the Service port named `name` of
/// `protocol`: those of every slice port of that name and protocol (the
/// resolved targetPort), by address and port, each once (the one in the
/// best condition when slices disagree).
fn endpoints<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
    name: &str,
    protocol: ServiceProtocol,
) -> Vec<Endpoint> {
    let mut found: BTreeMap<(Ipv4Addr, u16), Endpoint> = BTreeMap::new();
    for slice in slices {
        let target = slice.ports.iter().flatten().find_map(|p| {
            let same = p.name.as_deref().unwrap_or_default() == name
                && self::protocol(p.protocol.as_deref()) == Some(protocol);
            same.then(|| port_number(p.port)).flatten()
        });
        let Some(port) = target else {
            continue;
        };
        for endpoint in &slice.endpoints {
            // Every address of an endpoint is the same pod's: the first.
            let Some(address) = endpoint.addresses.first().and_then(|a| a.parse().ok()) else {
                continue;
            };
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            let ready = conditions.ready.unwrap_or(true);
            let candidate = Endpoint {
                address,
                port,
                node: endpoint.node_name.clone(),
                ready,
                // The API: "If nil, consumers should defer to the ready
                // condition" (kube-proxy takes nil as true).
                serving: conditions.serving.unwrap_or(ready),
                terminating: conditions.terminating.unwrap_or(false),
            };
            let rank = |e: &Endpoint| (e.ready, e.serving, !e.terminating);
            match found.get(&(address, port)) {
                Some(kept) if rank(kept) >= rank(&candidate) => {}
                _ => {
                    found.insert((address, port), candidate);
                }
            }
        }
    }
    found.into_values().collect()
}

fn traffic_policy(policy: Option<&str>) -> TrafficPolicy {
    match policy {
        Some("Local") => TrafficPolicy::Local,
        _ => TrafficPolicy::Cluster,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn service(name: &str, spec: Value) -> KubeService {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": "default", "resourceVersion": "1" },
            "spec": spec,
        }))
        .unwrap()
    }

    /// A ClusterIP Service at 10.96.0.`i` with `ports` as (name,
    /// protocol, port, targetPort).
    fn cluster_ip(name: &str, i: u8, ports: Value) -> KubeService {
        let ip = format!("10.96.0.{i}");
        service(
            name,
            json!({ "type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip], "ports": ports }),
        )
    }

    fn slice(name: &str, service: &str, body: Value) -> EndpointSlice {
        let mut object = json!({
            "metadata": { "name": name, "namespace": "default",
                          "labels": { SERVICE_NAME_LABEL: service } },
            "addressType": "IPv4",
        });
        if let (Some(o), Value::Object(b)) = (object.as_object_mut(), body) {
            o.extend(b);
        }
        serde_json::from_value(object).unwrap()
    }

    fn endpoint(address: &str, node: &str, conditions: Value) -> Value {
        json!({ "addresses": [address], "nodeName": node, "conditions": conditions })
    }

    fn ep(address: &str, port: u16, node: &str) -> Endpoint {
        Endpoint {
            address: address.parse().unwrap(),
            port,
            node: Some(node.into()),
            ready: true,
            serving: true,
            terminating: false,
        }
    }

    fn resolved(services: &[KubeService], slices: &[EndpointSlice]) -> Vec<Service> {
        resolve(services, slices, |name, why| {
            panic!("{name} skipped: {why}")
        })
    }

    #[test]
    fn slices_are_merged_by_service_name_label_and_port_name() {
        let web = cluster_ip(
            "web",
            1,
            json!([
                { "name": "http", "protocol": "TCP", "port": 80, "targetPort": "web" },
                { "name": "metrics", "port": 9090, "targetPort": 9100 },
            ]),
        );
        // Two slices; the named targetPort "web" resolves to 8080 in one
        // and 8081 in the other; one endpoint is in both.
        let a = slice(
            "web-a",
            "web",
            json!({
                "ports": [{ "name": "http", "protocol": "TCP", "port": 8080 },
                          { "name": "metrics", "protocol": "TCP", "port": 9100 }],
                "endpoints": [endpoint("10.244.1.5", "n1", json!({})),
                              endpoint("10.244.2.7", "n2", json!({ "ready": true }))],
            }),
        );
        let http_only = |name: &str, port: u16, endpoints: Value| {
            let ports = json!([{ "name": "http", "protocol": "TCP", "port": port }]);
            slice(
                name,
                "web",
                json!({ "ports": ports, "endpoints": endpoints }),
            )
        };
        let b = http_only(
            "web-b",
            8081,
            json!([endpoint("10.244.3.9", "n3", json!({}))]),
        );
        let twin = http_only(
            "web-c",
            8080,
            json!([endpoint("10.244.1.5", "n1", json!({}))]),
        );
        // Another Service's slice, an IPv6 and an FQDN slice of this
        // one, and a slice with no Service: none of them count.
        let other = slice(
            "api-a",
            "api",
            json!({ "ports": [{ "name": "http", "port": 8080 }],
                    "endpoints": [endpoint("10.244.9.9", "n9", json!({}))] }),
        );
        let mut v6 = other.clone();
        v6.metadata.labels = Some([(SERVICE_NAME_LABEL.into(), "web".into())].into());
        v6.address_type = "IPv6".into();
        v6.endpoints[0].addresses = vec!["fd00::9".into()];
        let mut fqdn = v6.clone();
        fqdn.address_type = "FQDN".into();
        fqdn.endpoints[0].addresses = vec!["example.com".into()];
        let mut unlabelled = other.clone();
        unlabelled.metadata.labels = None;
        let list = resolved(&[web], &[a, b, twin, other, v6, fqdn, unlabelled]);
        assert_eq!(list.len(), 1);
        let web = &list[0];
        assert_eq!(web.name, "default/web");
        assert_eq!(web.cluster_ip, Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(web.affinity_seconds, None);
        assert_eq!(web.ports.len(), 2);
        let http = &web.ports[0];
        assert_eq!((http.name.as_str(), http.port), ("http", 80));
        assert_eq!(http.protocol, ServiceProtocol::Tcp);
        assert_eq!(http.node_port, None);
        assert_eq!(
            http.endpoints,
            [
                ep("10.244.1.5", 8080, "n1"),
                ep("10.244.2.7", 8080, "n2"),
                ep("10.244.3.9", 8081, "n3")
            ]
        );
        // The unnamed-protocol port is TCP; only slice a has its port.
        let metrics = &web.ports[1];
        assert_eq!(metrics.protocol, ServiceProtocol::Tcp);
        assert_eq!(
            metrics.endpoints,
            [ep("10.244.1.5", 9100, "n1"), ep("10.244.2.7", 9100, "n2")]
        );
    }

    #[test]
    fn conditions_default_as_the_api_says() {
        let dns = cluster_ip(
            "dns",
            10,
            json!([{ "name": "dns", "protocol": "UDP", "port": 53, "targetPort": 53 }]),
        );
        let conditions = [
            json!({}),
            json!({ "ready": false }),
            json!({ "ready": false, "serving": true, "terminating": true }),
            json!({ "ready": true, "serving": false }),
        ];
        let endpoints: Vec<Value> = conditions
            .iter()
            .enumerate()
            .map(|(i, c)| endpoint(&format!("10.244.1.{}", i + 1), "n1", c.clone()))
            .collect();
        let mut no_conditions = endpoint("10.244.1.9", "n1", json!({}));
        no_conditions.as_object_mut().unwrap().remove("conditions");
        let mut no_node = endpoint("10.244.1.10", "n1", json!({}));
        no_node.as_object_mut().unwrap().remove("nodeName");
        let all: Vec<Value> = endpoints
            .into_iter()
            .chain([no_conditions, no_node])
            .collect();
        let s = slice(
            "dns-a",
            "dns",
            json!({ "ports": [{ "name": "dns", "protocol": "UDP", "port": 53 }], "endpoints": all }),
        );
        let list = resolved(&[dns], &[s]);
        let got: Vec<(bool, bool, bool, Option<&str>)> = list[0].ports[0]
            .endpoints
            .iter()
            .map(|e| (e.ready, e.serving, e.terminating, e.node.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (true, true, false, Some("n1")),
                (false, false, false, Some("n1")),
                (false, true, true, Some("n1")),
                (true, false, false, Some("n1")),
                (true, true, false, Some("n1")),
                (true, true, false, None),
            ]
        );
    }

    #[test]
    fn external_ips_and_balancer_addresses_are_read_and_conflicts_left_out() {
        let balancer = |name: &str, i: u8, external: Value, ingress: Value| {
            let ip = format!("10.96.0.{i}");
            let mut object = service(
                name,
                json!({ "type": "LoadBalancer", "clusterIP": ip, "clusterIPs": [ip],
                        "externalIPs": external,
                        "ports": [{ "port": 80, "targetPort": 8080, "nodePort": 30080 + u16::from(i) }] }),
            );
            object.status =
                serde_json::from_value(json!({ "loadBalancer": { "ingress": ingress } })).unwrap();
            object
        };
        let first = balancer(
            "a-web",
            1,
            json!(["192.0.2.10", "2001:db8::10", "192.0.2.10"]),
            json!([{ "ip": "198.51.100.7" }, { "ip": "198.51.100.8", "ipMode": "Proxy" },
                   { "hostname": "lb.example" }, { "ip": "198.51.100.9", "ipMode": "VIP" }]),
        );
        // The same external address on the same port: the first Service
        // in name order keeps it.
        let second = balancer("b-web", 2, json!(["192.0.2.10", "192.0.2.11"]), json!([]));
        let mut why = Vec::new();
        let list = resolve(&[second, first], [], |name, reason| {
            why.push(format!("{name}: {reason}"))
        });
        let ip = |text: &str| text.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            list[0].external_ips,
            [ip("192.0.2.10"), ip("198.51.100.7"), ip("198.51.100.9")]
        );
        assert_eq!(list[1].external_ips, [ip("192.0.2.11")]);
        assert_eq!(
            why,
            ["default/b-web: external IP 192.0.2.10: another Service has it on the same port"]
        );
        podswitch_services::check(&list).unwrap();
        // A ClusterIP Service's status is not a balancer's; a loopback
        // external address is refused by name.
        let mut plain = cluster_ip("plain", 3, json!([{ "port": 80 }]));
        plain.spec.as_mut().unwrap().external_ips = Some(vec!["127.0.0.1".into(), "x".into()]);
        plain.status = serde_json::from_value(
            json!({ "loadBalancer": { "ingress": [{ "ip": "198.51.100.7" }] } }),
        )
        .unwrap();
        let mut why = Vec::new();
        let list = resolve(&[plain], [], |_, reason| why.push(reason));
        assert!(list[0].external_ips.is_empty());
        assert_eq!(
            why,
            [
                "external IP 127.0.0.1: not a unicast address",
                "external IP \"x\": not an address"
            ]
        );
    }

    #[test]
    fn a_duplicate_endpoint_keeps_its_best_conditions() {
        let web = cluster_ip("web", 1, json!([{ "port": 80, "targetPort": 8080 }]));
        let slice_with = |name: &str, conditions: Value| {
            slice(
                name,
                "web",
                json!({ "ports": [{ "name": "", "protocol": "TCP", "port": 8080 }],
                        "endpoints": [endpoint("10.244.1.5", "n1", conditions)] }),
            )
        };
        // Whichever slice comes first (they are taken in name order).
        for (stale, fresh) in [("web-a", "web-b"), ("web-b", "web-a")] {
            let slices = [
                slice_with(stale, json!({ "ready": false })),
                slice_with(fresh, json!({ "ready": true })),
            ];
            let list = resolved(std::slice::from_ref(&web), &slices);
            assert_eq!(list[0].ports[0].endpoints, [ep("10.244.1.5", 8080, "n1")]);
        }
    }

    #[test]
    fn slice_ports_match_by_name_and_protocol() {
        let dns = cluster_ip(
            "dns",
            10,
            json!([
                { "name": "dns", "protocol": "UDP", "port": 53, "targetPort": 53 },
                { "name": "dns-tcp", "protocol": "TCP", "port": 53, "targetPort": 53 },
            ]),
        );
        // A slice whose "dns" port is TCP (not the Service's UDP), and
        // whose "dns-tcp" port has no number: neither port gets endpoints.
        let s = slice(
            "dns-a",
            "dns",
            json!({ "ports": [{ "name": "dns", "protocol": "TCP", "port": 53 },
                              { "name": "dns-tcp", "protocol": "TCP" }],
                    "endpoints": [endpoint("10.244.1.5", "n1", json!({}))] }),
        );
        let list = resolved(&[dns], &[s]);
        assert_eq!(list[0].ports.len(), 2);
        assert!(list[0].ports.iter().all(|p| p.endpoints.is_empty()));
    }

    #[test]
    fn a_service_without_slices_yet_has_ports_without_endpoints() {
        let web = cluster_ip("web", 1, json!([{ "port": 80, "targetPort": 8080 }]));
        let list = resolved(&[web], &[]);
        assert_eq!(list[0].ports.len(), 1);
        assert_eq!(list[0].ports[0].name, "");
        assert!(list[0].ports[0].endpoints.is_empty());
    }

    #[test]
    fn affinity_policies_and_node_ports() {
        let spec = json!({
            "type": "NodePort", "clusterIP": "10.96.0.3", "clusterIPs": ["10.96.0.3"],
            "ports": [{ "port": 80, "nodePort": 30080, "targetPort": 8080 }],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": { "clientIP": { "timeoutSeconds": 60 } },
            "internalTrafficPolicy": "Local", "externalTrafficPolicy": "Local",
        });
        let list = resolved(&[service("np", spec.clone())], &[]);
        let np = &list[0];
        assert_eq!(np.affinity_seconds, Some(60));
        assert_eq!(np.internal_traffic_policy, TrafficPolicy::Local);
        assert_eq!(np.external_traffic_policy, TrafficPolicy::Local);
        assert_eq!(np.ports[0].node_port, Some(30080));
        // ClientIP without a timeout: the API's default.
        let mut default = spec.clone();
        default["sessionAffinityConfig"] = Value::Null;
        let list = resolved(&[service("np", default)], &[]);
        assert_eq!(list[0].affinity_seconds, Some(DEFAULT_AFFINITY_SECONDS));
        // A LoadBalancer has its node ports; a ClusterIP Service none
        // (whatever a stale field says), and no affinity unless ClientIP.
        let mut lb = spec.clone();
        lb["type"] = "LoadBalancer".into();
        lb["sessionAffinity"] = "None".into();
        let list = resolved(&[service("lb", lb)], &[]);
        assert_eq!(list[0].ports[0].node_port, Some(30080));
        assert_eq!(list[0].affinity_seconds, None);
        let mut plain = spec;
        plain["type"] = "ClusterIP".into();
        plain["internalTrafficPolicy"] = Value::Null;
        let list = resolved(&[service("plain", plain)], &[]);
        assert_eq!(list[0].ports[0].node_port, None);
        assert_eq!(list[0].internal_traffic_policy, TrafficPolicy::Cluster);
    }

    #[test]
    fn headless_external_name_and_ipv6_services_are_left_out() {
        let headless = service(
            "headless",
            json!({ "clusterIP": "None", "clusterIPs": ["None"], "ports": [{ "port": 80 }] }),
        );
        let external = service(
            "ext",
            json!({ "type": "ExternalName", "externalName": "example.com" }),
        );
        let dual = service(
            "dual",
            json!({ "clusterIP": "fd00::10", "clusterIPs": ["fd00::10", "10.96.0.20"],
                    "ports": [{ "port": 80 }] }),
        );
        let v6 = service(
            "v6",
            json!({ "clusterIP": "fd00::11", "clusterIPs": ["fd00::11"], "ports": [{ "port": 80 }] }),
        );
        let odd_port = cluster_ip(
            "odd",
            30,
            json!([{ "name": "a", "protocol": "ICMP", "port": 1 },
                   { "name": "b", "port": 70000 },
                   { "name": "c", "port": 80 }]),
        );
        let mut skipped = Vec::new();
        let list = resolve(
            &[headless, external, dual, v6, odd_port],
            &[],
            |name, why| skipped.push(format!("{name}: {why}")),
        );
        let names: Vec<&str> = list.iter().map(|s| s.name.as_str()).collect();
        // Dual-stack with IPv6 first: its IPv4 cluster IP.
        assert_eq!(names, ["default/dual", "default/odd"]);
        assert_eq!(list[0].cluster_ip, Ipv4Addr::new(10, 96, 0, 20));
        let ports: Vec<&str> = list[1].ports.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(ports, ["c"]);
        assert_eq!(skipped.len(), 3, "{skipped:?}");
        assert!(skipped[0].starts_with("default/v6: no IPv4"), "{skipped:?}");
        assert!(skipped[1].contains("ICMP"), "{skipped:?}");
        assert!(skipped[2].contains("70000"), "{skipped:?}");
    }
}
