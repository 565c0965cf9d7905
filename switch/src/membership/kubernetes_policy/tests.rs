use podswitch_control::policy::Protocol;
use podswitch_control::policy::selector::Labels;
use serde_json::{Value, json};

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A running pod `ns/name` with `spec` and `status` merged over a plain
/// one (one container, no ports, phase Running, no address).
fn kube_pod(ns: &str, name: &str, spec: Value, status: Value) -> KubePod {
    let mut object = json!({
        "metadata": { "name": name, "namespace": ns, "labels": { "app": name } },
        "spec": { "containers": [{ "name": "main", "image": "x" }] },
        "status": { "phase": "Running" },
    });
    for (key, extra) in [("spec", spec), ("status", status)] {
        if let (Some(o), Value::Object(e)) = (object[key].as_object_mut(), extra) {
            o.extend(e);
        }
    }
    serde_json::from_value(object).unwrap()
}

fn kube_policy(ns: &str, name: &str, spec: Value) -> KubeNetworkPolicy {
    serde_json::from_value(json!({
        "metadata": { "name": name, "namespace": ns },
        "spec": spec,
    }))
    .unwrap()
}

/// The policy `spec` converts to, and what was skipped.
fn convert(spec: Value) -> (NetworkPolicy, Vec<String>) {
    let mut skipped = Vec::new();
    let policy = network_policy(&kube_policy("shop", "p", spec), &mut |why| {
        skipped.push(why)
    });
    (policy, skipped)
}

fn converted_pod(pod: &KubePod) -> (Option<Pod>, Vec<String>) {
    let mut skipped = Vec::new();
    let pod = super::pod(pod, |why| skipped.push(why));
    (pod, skipped)
}

fn named(name: &str, protocol: Protocol, port: u16) -> NamedPort {
    NamedPort {
        name: name.into(),
        protocol,
        port,
    }
}

#[test]
fn a_pod_has_its_ipv4_address_labels_and_named_ports() {
    let spec = json!({ "containers": [
        { "name": "web", "image": "x", "ports": [
            { "name": "http", "containerPort": 8080 },
            { "containerPort": 9000 },
            { "name": "dns", "protocol": "UDP", "containerPort": 53 },
            { "name": "odd", "protocol": "ICMP", "containerPort": 7 },
        ] },
        { "name": "sidecar", "image": "y", "ports": [
            { "name": "metrics", "protocol": "TCP", "containerPort": 9100 },
        ] },
    ] });
    // Dual-stack with IPv6 first: its IPv4 address.
    let status =
        json!({ "podIP": "fd00::5", "podIPs": [{ "ip": "fd00::5" }, { "ip": "10.244.1.5" }] });
    let (pod, skipped) = converted_pod(&kube_pod("shop", "web-0", spec, status));
    let pod = pod.unwrap();
    assert_eq!(
        (pod.namespace.as_str(), pod.name.as_str()),
        ("shop", "web-0")
    );
    assert_eq!(pod.ip, Ipv4Addr::new(10, 244, 1, 5));
    assert_eq!(pod.labels, labels(&[("app", "web-0")]));
    assert_eq!(
        pod.ports,
        [
            named("http", Protocol::Tcp, 8080),
            named("dns", Protocol::Udp, 53),
            named("metrics", Protocol::Tcp, 9100)
        ]
    );
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].contains("ICMP"), "{skipped:?}");
    // Only the older podIP field.
    let old = kube_pod("shop", "old", json!({}), json!({ "podIP": "10.244.1.6" }));
    assert_eq!(
        converted_pod(&old).0.unwrap().ip,
        Ipv4Addr::new(10, 244, 1, 6)
    );
}

#[test]
fn pods_without_an_address_on_the_host_network_or_ended_are_left_out() {
    let ip = json!({ "podIP": "10.244.1.5", "podIPs": [{ "ip": "10.244.1.5" }] });
    let pending = kube_pod("shop", "a", json!({}), json!({ "phase": "Pending" }));
    let host = kube_pod("shop", "b", json!({ "hostNetwork": true }), ip.clone());
    let mut done = ip.clone();
    done["phase"] = "Succeeded".into();
    let succeeded = kube_pod("shop", "c", json!({}), done.clone());
    done["phase"] = "Failed".into();
    let failed = kube_pod("shop", "d", json!({}), done);
    for pod in [&pending, &host, &succeeded, &failed] {
        assert_eq!(
            converted_pod(pod),
            (None, Vec::new()),
            "{:?}",
            pod.metadata.name
        );
    }
    // An IPv6-only pod is left out, and said so.
    let v6 = kube_pod(
        "shop",
        "e",
        json!({}),
        json!({ "podIPs": [{ "ip": "fd00::5" }] }),
    );
    let (pod, skipped) = converted_pod(&v6);
    assert!(pod.is_none());
    assert!(skipped[0].contains("no IPv4"), "{skipped:?}");
    // Still running (a pod being deleted included): kept.
    let running = kube_pod("shop", "f", json!({}), ip);
    assert!(converted_pod(&running).0.is_some());
}

#[test]
fn a_namespace_has_its_name_and_labels() {
    let ns: KubeNamespace = serde_json::from_value(json!({
        "metadata": { "name": "shop", "labels": { "team": "front",
                      "kubernetes.io/metadata.name": "shop" } },
    }))
    .unwrap();
    let ns = namespace(&ns);
    assert_eq!(ns.name, "shop");
    assert_eq!(
        ns.labels,
        labels(&[("team", "front"), ("kubernetes.io/metadata.name", "shop")])
    );
}

#[test]
fn a_policy_has_its_selectors_peers_and_ports() {
    let (policy, skipped) = convert(json!({
        "podSelector": { "matchLabels": { "app": "web" },
                         "matchExpressions": [{ "key": "tier", "operator": "NotIn",
                                                "values": ["db"] }] },
        "policyTypes": ["Ingress", "Egress"],
        "ingress": [{
            "from": [
                { "namespaceSelector": { "matchLabels": { "team": "front" } },
                  "podSelector": { "matchLabels": { "role": "frontend" } } },
                { "podSelector": {} },
                { "ipBlock": { "cidr": "192.168.0.0/16", "except": ["192.168.7.0/24"] } },
            ],
            "ports": [
                { "port": "http" },
                { "protocol": "UDP", "port": 5000, "endPort": 5010 },
                { "protocol": "SCTP" },
            ],
        }],
        "egress": [{ "ports": [{ "protocol": "UDP", "port": 53 }] }, {}],
    }));
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(
        (policy.namespace.as_str(), policy.name.as_str()),
        ("shop", "p")
    );
    let mut pod_selector = LabelSelector::expression("tier", Operator::NotIn, &["db"]);
    pod_selector.match_labels = labels(&[("app", "web")]);
    assert_eq!(policy.pod_selector, pod_selector);
    assert_eq!(policy.policy_types, [Direction::Ingress, Direction::Egress]);
    let ingress = &policy.ingress[..];
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        ingress[0].peers,
        [
            Peer {
                pod_selector: Some(LabelSelector::labels([("role", "frontend")])),
                namespace_selector: Some(LabelSelector::labels([("team", "front")])),
                ip_block: None,
            },
            // An empty pod selector (every pod of the namespace) is not an
            // absent one.
            Peer {
                pod_selector: Some(LabelSelector::default()),
                ..Peer::default()
            },
            Peer {
                ip_block: Some(IpBlock {
                    cidr: "192.168.0.0/16".parse().unwrap(),
                    except: vec!["192.168.7.0/24".parse().unwrap()],
                }),
                ..Peer::default()
            },
        ]
    );
    assert_eq!(
        ingress[0].ports,
        [
            PolicyPort::new(Protocol::Tcp, Some(Port::Name("http".into()))),
            PolicyPort {
                protocol: Protocol::Udp,
                port: Some(Port::Number(5000)),
                end_port: Some(5010),
            },
            PolicyPort::new(Protocol::Sctp, None),
        ]
    );
    // An egress rule to everyone on UDP 53, and one allowing everything.
    assert_eq!(
        policy.egress,
        [
            Rule {
                peers: Vec::new(),
                ports: vec![PolicyPort::new(Protocol::Udp, Some(Port::Number(53)))],
            },
            Rule::default(),
        ]
    );
}

#[test]
fn policy_types_are_always_given_as_the_api_server_defaults_them() {
    // No spec at all: every pod of the namespace, isolated for ingress.
    let (policy, _) = convert(Value::Null);
    assert_eq!(policy.pod_selector, LabelSelector::default());
    assert_eq!(policy.policy_types, [Direction::Ingress]);
    assert!(policy.ingress.is_empty() && policy.egress.is_empty());
    // Egress rules, no policyTypes: both.
    let (policy, _) = convert(json!({ "podSelector": {}, "egress": [{}] }));
    assert_eq!(policy.policy_types, [Direction::Ingress, Direction::Egress]);
    let (policy, _) = convert(json!({ "podSelector": {}, "policyTypes": ["Egress"] }));
    assert_eq!(policy.policy_types, [Direction::Egress]);
}

#[test]
fn an_ipv6_only_peer_list_allows_nothing_not_everyone() {
    let v6 = json!({ "ipBlock": { "cidr": "fd00::/8" } });
    let v4 = json!({ "ipBlock": { "cidr": "10.0.0.0/8" } });
    // Beside an IPv4 peer, the IPv6 one is left out and said so.
    let (policy, skipped) = convert(json!({
        "podSelector": {}, "ingress": [{ "from": [v6.clone(), v4] }],
    }));
    assert_eq!(policy.ingress.len(), 1);
    assert_eq!(policy.ingress[0].peers.len(), 1);
    assert_eq!(
        policy.ingress[0].peers[0].ip_block.as_ref().map(|b| b.cidr),
        Some("10.0.0.0/8".parse().unwrap())
    );
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(
        skipped[0].starts_with("ingress rule 1: peer 1: ipBlock fd00::/8 is IPv6"),
        "{skipped:?}"
    );
    // Alone, the rule goes: with no peers it would allow everyone. Its
    // policy still isolates the pods it selects (no rule allows them
    // anything), in the direction it did, also without policyTypes.
    let (policy, skipped) = convert(json!({
        "podSelector": {}, "egress": [{ "to": [v6.clone()] }, { "to": [v6] }],
    }));
    assert!(policy.egress.is_empty(), "{:?}", policy.egress);
    assert_eq!(policy.policy_types, [Direction::Ingress, Direction::Egress]);
    assert!(policy.applies_to(Direction::Egress));
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert!(skipped[1].contains("every peer left out"), "{skipped:?}");
}

#[test]
fn an_ip_block_with_a_bad_except_is_left_out_whole() {
    for except in ["fd00::/16", "10.1.0.0"] {
        let (policy, skipped) = convert(json!({
            "podSelector": {},
            "ingress": [{ "from": [
                { "ipBlock": { "cidr": "10.0.0.0/8", "except": [except] } },
                { "podSelector": {} },
            ] }],
        }));
        assert_eq!(
            policy.ingress[0].peers,
            [Peer {
                pod_selector: Some(LabelSelector::default()),
                ..Peer::default()
            }]
        );
        assert!(skipped[0].contains(except), "{skipped:?}");
    }
}

#[test]
fn a_rule_whose_every_port_is_unknown_allows_nothing_not_every_port() {
    let (policy, skipped) = convert(json!({
        "podSelector": {},
        "ingress": [
            { "ports": [{ "protocol": "ICMP" }, { "port": 80 }] },
            { "ports": [{ "protocol": "ICMP" }, { "port": 70000 }] },
        ],
    }));
    assert_eq!(
        policy.ingress,
        [Rule {
            peers: Vec::new(),
            ports: vec![PolicyPort::new(Protocol::Tcp, Some(Port::Number(80)))],
        }]
    );
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert!(skipped[0].contains("ICMP"), "{skipped:?}");
    assert!(skipped[2].contains("70000"), "{skipped:?}");
    assert!(
        skipped[3].starts_with("ingress rule 2: every port left out"),
        "{skipped:?}"
    );
    // A bad endPort fails its port, not just the range.
    let (policy, _) = convert(json!({
        "podSelector": {},
        "ingress": [{ "ports": [{ "port": 80, "endPort": 0 }] }],
    }));
    assert!(policy.ingress.is_empty());
}

#[test]
fn an_unknown_selector_operator_matches_nothing() {
    let (policy, skipped) = convert(json!({
        "podSelector": {},
        "ingress": [{ "from": [{ "podSelector": { "matchExpressions": [
            { "key": "app", "operator": "Like", "values": ["web"] }] } }] }],
    }));
    let selector = policy.ingress[0].peers[0].pod_selector.as_ref().unwrap();
    assert_eq!(
        *selector,
        LabelSelector::expression("app", Operator::In, &[])
    );
    assert!(!selector.matches(&labels(&[("app", "web")])));
    assert!(skipped[0].contains("\"Like\""), "{skipped:?}");
}

#[test]
fn the_cluster_is_sorted_and_says_what_it_left_out() {
    let ip = |i: u8| json!({ "podIPs": [{ "ip": format!("10.244.0.{i}") }] });
    let pods = [
        kube_pod("shop", "b", json!({}), ip(2)),
        kube_pod("dev", "z", json!({}), ip(3)),
        kube_pod("shop", "a", json!({}), ip(1)),
        // Its address is a's too (a deletion not seen yet): left out.
        kube_pod("shop", "c", json!({}), ip(1)),
        kube_pod(
            "shop",
            "v6",
            json!({}),
            json!({ "podIPs": [{ "ip": "fd00::1" }] }),
        ),
    ];
    let namespaces: Vec<KubeNamespace> = ["shop", "dev"]
        .iter()
        .map(|n| serde_json::from_value(json!({ "metadata": { "name": n } })).unwrap())
        .collect();
    let policies = [
        kube_policy("shop", "b", json!({ "podSelector": {} })),
        kube_policy(
            "dev",
            "a",
            json!({ "podSelector": {}, "ingress": [{ "ports": [{ "protocol": "ICMP" }] }] }),
        ),
    ];
    let mut skipped = Vec::new();
    let cluster = cluster(&namespaces, &pods, &policies, |object, why| {
        skipped.push(format!("{object}: {why}"))
    });
    let names: Vec<&str> = cluster.namespaces.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["dev", "shop"]);
    let pods: Vec<(&str, &str)> = cluster
        .pods
        .iter()
        .map(|p| (p.namespace.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(pods, [("dev", "z"), ("shop", "a"), ("shop", "b")]);
    let policies: Vec<(&str, &str)> = cluster
        .policies
        .iter()
        .map(|p| (p.namespace.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(policies, [("dev", "a"), ("shop", "b")]);
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert!(
        skipped[0].starts_with("Pod shop/v6: no IPv4"),
        "{skipped:?}"
    );
    assert_eq!(
        skipped[1],
        "Pod shop/c: its address 10.244.0.1 is also pod shop/a's"
    );
    assert!(
        skipped[2].starts_with("NetworkPolicy dev/a: ingress rule 1: port 1"),
        "{skipped:?}"
    );
}
