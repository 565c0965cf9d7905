//! The Kubernetes semantics, case by case after the truth tables of
//! Kubernetes' own network policy e2e tests (`test/e2e/network/netpol`):
//! namespaces x, y and z with pods a, b and c each, labelled `pod=<name>`,
//! serving ports 80 and 81 named `serve-80-tcp` and so on. Then a
//! property: the compiled rules agree with a direct reading of the API.

use std::net::Ipv4Addr;

use proptest::prelude::*;

use crate::model::{IpBlock, NAMESPACE_NAME_LABEL, NamedPort, Peer, PolicyPort, Port, Rule};
use crate::selector::{LabelSelector, Labels, Operator, Requirement};
use crate::{
    CompiledPolicies, Direction, Namespace, NetworkPolicy, Pod, Protocol, Verdict, compile,
};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;

fn ip(pod: &str) -> Ipv4Addr {
    let (namespace, name) = pod.split_once('/').unwrap();
    let n = NAMESPACES.iter().position(|n| *n == namespace).unwrap() as u8;
    let p = PODS.iter().position(|p| *p == name).unwrap() as u8;
    Ipv4Addr::new(10, 0, n, p + 1)
}

fn all_pods() -> impl Iterator<Item = String> {
    NAMESPACES
        .iter()
        .flat_map(|n| PODS.iter().map(move |p| format!("{n}/{p}")))
}

fn cluster() -> (Vec<Pod>, Vec<Namespace>) {
    let mut ports = Vec::new();
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
        for port in [80, 81] {
            let name = format!("serve-{port}-{}", protocol.name());
            ports.push(NamedPort {
                name,
                protocol,
                port,
            });
        }
    }
    let pods = all_pods()
        .map(|pod| {
            let (namespace, name) = pod.split_once('/').unwrap();
            Pod {
                namespace: namespace.into(),
                name: name.into(),
                labels: Labels::from([("pod".into(), name.into())]),
                ip: ip(&pod),
                ports: ports.clone(),
            }
        })
        .collect();
    let namespaces = NAMESPACES
        .iter()
        .map(|name| Namespace {
            name: name.to_string(),
            labels: Labels::new(),
        })
        .collect();
    (pods, namespaces)
}

fn compiled(policies: &[NetworkPolicy]) -> CompiledPolicies {
    let (pods, namespaces) = cluster();
    compile(policies, &pods, &namespaces)
}

/// Whether a connection from one pod to another passes: egress at the
/// client, ingress at the server.
fn reaches(compiled: &CompiledPolicies, from: &str, to: &str, protocol: u8, port: u16) -> bool {
    compiled
        .allows(Direction::Egress, ip(from), ip(to), protocol, port)
        .passes()
        && compiled
            .allows(Direction::Ingress, ip(to), ip(from), protocol, port)
            .passes()
}

/// Checks the truth table of every pair of distinct pods (loopback is
/// left out, as the e2e tests leave it out).
fn expect(
    policies: &[NetworkPolicy],
    protocol: u8,
    port: u16,
    allowed: impl Fn(&str, &str) -> bool,
) {
    let compiled = compiled(policies);
    let mut wrong = Vec::new();
    for from in all_pods() {
        for to in all_pods().filter(|to| *to != from) {
            let reached = reaches(&compiled, &from, &to, protocol, port);
            if reached != allowed(&from, &to) {
                wrong.push(format!("{from} -> {to}: {reached}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "protocol {protocol} port {port}: {wrong:#?}"
    );
}

fn policy(namespace: &str, selector: LabelSelector) -> NetworkPolicy {
    NetworkPolicy {
        namespace: namespace.into(),
        name: "test".into(),
        pod_selector: selector,
        policy_types: Vec::new(),
        ingress: Vec::new(),
        egress: Vec::new(),
    }
}

fn pod_a() -> LabelSelector {
    LabelSelector::labels([("pod", "a")])
}

fn ingress(mut policy: NetworkPolicy, rules: Vec<Rule>) -> NetworkPolicy {
    policy.ingress = rules;
    policy
}

fn egress(mut policy: NetworkPolicy, rules: Vec<Rule>) -> NetworkPolicy {
    policy.egress = rules;
    policy.policy_types = vec![Direction::Egress];
    policy
}

fn rule(peers: Vec<Peer>, ports: Vec<PolicyPort>) -> Rule {
    Rule { peers, ports }
}

fn peer(pods: Option<LabelSelector>, namespaces: Option<LabelSelector>) -> Peer {
    Peer {
        pod_selector: pods,
        namespace_selector: namespaces,
        ip_block: None,
    }
}

fn block(cidr: &str, except: &[&str]) -> Peer {
    Peer {
        ip_block: Some(IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        }),
        ..Peer::default()
    }
}

fn namespace(name: &str) -> LabelSelector {
    LabelSelector::labels([(NAMESPACE_NAME_LABEL, name)])
}

/// A selector with one requirement.
fn port(protocol: Protocol, port: u16) -> PolicyPort {
    PolicyPort::new(protocol, Some(Port::Number(port)))
}

fn named(name: &str) -> PolicyPort {
    PolicyPort::new(Protocol::Tcp, Some(Port::Name(name.into())))
}

fn in_x(pod: &str) -> bool {
    pod.starts_with("x/")
}

#[test]
fn default_deny_ingress() {
    let deny = policy("x", LabelSelector::default());
    expect(&[deny], TCP, 80, |_, to| !in_x(to));
}

#[test]
fn default_deny_all() {
    let mut deny = policy("x", LabelSelector::default());
    deny.policy_types = vec![Direction::Ingress, Direction::Egress];
    expect(&[deny], TCP, 80, |from, to| !in_x(from) && !in_x(to));
}

#[test]
fn default_deny_egress() {
    let deny = egress(policy("x", LabelSelector::default()), Vec::new());
    expect(&[deny], TCP, 80, |from, _| !in_x(from));
}

#[test]
fn allow_from_pods_in_the_same_namespace() {
    let from_b = peer(Some(LabelSelector::labels([("pod", "b")])), None);
    let allow = ingress(policy("x", pod_a()), vec![rule(vec![from_b], Vec::new())]);
    expect(&[allow], TCP, 80, |from, to| to != "x/a" || from == "x/b");
}

#[test]
fn allow_ingress_for_a_target_beside_default_deny() {
    let deny = policy("x", LabelSelector::default());
    let everyone = peer(
        Some(LabelSelector::default()),
        Some(LabelSelector::default()),
    );
    let allow = ingress(policy("x", pod_a()), vec![rule(vec![everyone], Vec::new())]);
    expect(&[deny, allow], TCP, 80, |_, to| !in_x(to) || to == "x/a");
}

#[test]
fn allow_from_every_namespace() {
    let every = peer(None, Some(LabelSelector::default()));
    let allow = ingress(policy("x", pod_a()), vec![rule(vec![every], Vec::new())]);
    expect(&[allow], TCP, 80, |_, _| true);
}

#[test]
fn allow_from_a_namespace() {
    let from_y = peer(None, Some(namespace("y")));
    let allow = ingress(policy("x", pod_a()), vec![rule(vec![from_y], Vec::new())]);
    expect(&[allow], TCP, 80, |from, to| {
        to != "x/a" || from.starts_with("y/")
    });
}

#[test]
fn match_expressions_on_pods_and_namespaces() {
    let from_b = peer(
        Some(LabelSelector::expression("pod", Operator::In, &["b"])),
        None,
    );
    let allow = ingress(policy("x", pod_a()), vec![rule(vec![from_b], Vec::new())]);
    expect(&[allow], TCP, 80, |from, to| to != "x/a" || from == "x/b");
    let not_x = LabelSelector::expression(NAMESPACE_NAME_LABEL, Operator::NotIn, &["x"]);
    let allow = ingress(
        policy("x", pod_a()),
        vec![rule(vec![peer(None, Some(not_x))], Vec::new())],
    );
    expect(&[allow], TCP, 80, |from, to| to != "x/a" || !in_x(from));
    let with_label = LabelSelector::expression("pod", Operator::Exists, &[]);
    let labelled = ingress(
        policy("x", pod_a()),
        vec![rule(vec![peer(Some(with_label), None)], Vec::new())],
    );
    expect(&[labelled], TCP, 80, |from, to| to != "x/a" || in_x(from));
    let without = LabelSelector::expression("pod", Operator::DoesNotExist, &[]);
    let unlabelled = ingress(
        policy("x", pod_a()),
        vec![rule(vec![peer(Some(without), None)], Vec::new())],
    );
    expect(&[unlabelled], TCP, 80, |_, to| to != "x/a");
}

#[test]
fn pod_and_namespace_selectors_in_one_peer_are_anded_in_two_ored() {
    let not_x = || {
        Some(LabelSelector::expression(
            NAMESPACE_NAME_LABEL,
            Operator::NotIn,
            &["x"],
        ))
    };
    let b = || Some(LabelSelector::labels([("pod", "b")]));
    let and = ingress(
        policy("x", pod_a()),
        vec![rule(vec![peer(b(), not_x())], Vec::new())],
    );
    expect(&[and], TCP, 80, |from, to| {
        to != "x/a" || (!in_x(from) && from.ends_with("/b"))
    });
    let or = ingress(
        policy("x", pod_a()),
        vec![rule(vec![peer(None, not_x()), peer(b(), None)], Vec::new())],
    );
    expect(&[or], TCP, 80, |from, to| {
        to != "x/a" || !in_x(from) || from == "x/b"
    });
}

#[test]
fn ports_and_stacked_policies() {
    let from_y = || peer(None, Some(namespace("y")));
    let on_81 = ingress(
        policy("x", pod_a()),
        vec![rule(vec![from_y()], vec![port(Protocol::Tcp, 81)])],
    );
    let only_y = |from: &str, to: &str| to != "x/a" || from.starts_with("y/");
    expect(std::slice::from_ref(&on_81), TCP, 81, only_y);
    expect(std::slice::from_ref(&on_81), TCP, 80, |_, to| to != "x/a");
    let mut on_80 = ingress(
        policy("x", pod_a()),
        vec![rule(vec![from_y()], vec![port(Protocol::Tcp, 80)])],
    );
    on_80.name = "other".into();
    expect(&[on_81.clone(), on_80.clone()], TCP, 80, only_y);
    expect(&[on_81, on_80], TCP, 81, only_y);
}

#[test]
fn an_empty_rule_allows_everything_even_icmp() {
    let allow = ingress(policy("x", LabelSelector::default()), vec![Rule::default()]);
    expect(std::slice::from_ref(&allow), TCP, 80, |_, _| true);
    expect(std::slice::from_ref(&allow), ICMP, 0, |_, _| true);
    let tcp_only = ingress(
        policy("x", LabelSelector::default()),
        vec![rule(Vec::new(), vec![PolicyPort::new(Protocol::Tcp, None)])],
    );
    expect(std::slice::from_ref(&tcp_only), TCP, 12345, |_, _| true);
    expect(&[tcp_only], ICMP, 0, |_, to| !in_x(to));
}

#[test]
fn named_ports_resolve_at_the_destination_pod() {
    let allow = ingress(
        policy("x", LabelSelector::default()),
        vec![rule(Vec::new(), vec![named("serve-81-tcp")])],
    );
    expect(std::slice::from_ref(&allow), TCP, 81, |_, _| true);
    expect(std::slice::from_ref(&allow), TCP, 80, |_, to| !in_x(to));
    // The name is TCP's: UDP port 81 is not allowed by it.
    expect(std::slice::from_ref(&allow), UDP, 81, |_, to| !in_x(to));
    // A pod without the name is not reachable on it.
    let (mut pods, namespaces) = cluster();
    pods[1].ports.retain(|port| port.name != "serve-81-tcp");
    let compiled = compile(&[allow], &pods, &namespaces);
    let verdict = compiled.allows(Direction::Ingress, ip("x/b"), ip("y/a"), TCP, 81);
    assert_eq!(verdict, Verdict::Denied);
    let verdict = compiled.allows(Direction::Ingress, ip("x/a"), ip("y/a"), TCP, 81);
    assert_eq!(verdict, Verdict::Allowed);
}

#[test]
fn named_ports_from_a_namespace() {
    let from_y = peer(None, Some(namespace("y")));
    let allow = ingress(
        policy("x", pod_a()),
        vec![rule(vec![from_y], vec![named("serve-80-tcp")])],
    );
    expect(std::slice::from_ref(&allow), TCP, 80, |from, to| {
        to != "x/a" || from.starts_with("y/")
    });
    expect(&[allow], TCP, 81, |_, to| to != "x/a");
}

#[test]
fn egress_named_ports_resolve_at_the_remote_pod() {
    let allow = egress(
        policy("x", LabelSelector::default()),
        vec![rule(Vec::new(), vec![named("serve-80-tcp")])],
    );
    expect(std::slice::from_ref(&allow), TCP, 80, |_, _| true);
    expect(std::slice::from_ref(&allow), TCP, 81, |from, _| !in_x(from));
    // An address that is no pod's has no named ports.
    let compiled = compiled(&[allow]);
    let outside = Ipv4Addr::new(192, 0, 2, 1);
    let verdict = compiled.allows(Direction::Egress, ip("x/a"), outside, TCP, 80);
    assert_eq!(verdict, Verdict::Denied);
    // The remote pod's own port: one with the name elsewhere is followed.
    let (mut pods, namespaces) = cluster();
    pods[4].ports[0].port = 8080; // y/b serves "serve-80-tcp" on 8080
    let allow = egress(
        policy("x", LabelSelector::default()),
        vec![rule(Vec::new(), vec![named("serve-80-tcp")])],
    );
    let compiled = compile(&[allow], &pods, &namespaces);
    let to_yb = |port| compiled.allows(Direction::Egress, ip("x/a"), ip("y/b"), TCP, port);
    assert_eq!(
        (to_yb(80), to_yb(8080)),
        (Verdict::Denied, Verdict::Allowed)
    );
}

#[test]
fn ip_blocks_with_excepts() {
    let to_yb = egress(
        policy("x", pod_a()),
        vec![rule(vec![block("10.0.1.2/32", &[])], Vec::new())],
    );
    expect(&[to_yb], TCP, 80, |from, to| from != "x/a" || to == "y/b");
    let around_xb = || {
        egress(
            policy("x", pod_a()),
            vec![rule(
                vec![block("10.0.0.0/16", &["10.0.0.2/32"])],
                Vec::new(),
            )],
        )
    };
    expect(&[around_xb()], TCP, 80, |from, to| {
        from != "x/a" || to != "x/b"
    });
    // A second policy allowing the excepted address: policies are ORed.
    let mut xb = egress(
        policy("x", pod_a()),
        vec![rule(vec![block("10.0.0.2/32", &[])], Vec::new())],
    );
    xb.name = "xb".into();
    expect(&[around_xb(), xb], TCP, 80, |_, _| true);
    // Ingress from a block with an except inside an except's cousin.
    let allow = ingress(
        policy("x", pod_a()),
        vec![rule(
            vec![block("10.0.0.0/8", &["10.0.1.0/24", "10.0.2.3/32"])],
            Vec::new(),
        )],
    );
    expect(&[allow], TCP, 80, |from, to| {
        to != "x/a" || in_x(from) || (from.starts_with("z/") && from != "z/c")
    });
}

#[test]
fn port_ranges_with_end_port() {
    let mut range = port(Protocol::Tcp, 80);
    range.end_port = Some(81);
    let allow = ingress(
        policy("x", pod_a()),
        vec![rule(Vec::new(), vec![range.clone()])],
    );
    let compiled = compiled(&[allow]);
    let verdict = |port| compiled.allows(Direction::Ingress, ip("x/a"), ip("y/a"), TCP, port);
    assert_eq!(
        [79, 80, 81, 82].map(verdict),
        [
            Verdict::Denied,
            Verdict::Allowed,
            Verdict::Allowed,
            Verdict::Denied
        ]
    );
    range.end_port = Some(79);
    let backwards = ingress(policy("x", pod_a()), vec![rule(Vec::new(), vec![range])]);
    expect(&[backwards], TCP, 80, |_, to| to != "x/a");
}

#[test]
fn protocols_are_told_apart() {
    // SCTP is not TCP.
    let deny = policy("x", LabelSelector::default());
    let sctp = ingress(
        policy("x", pod_a()),
        vec![rule(Vec::new(), vec![port(Protocol::Sctp, 81)])],
    );
    expect(&[deny, sctp.clone()], TCP, 81, |_, to| !in_x(to));
    expect(std::slice::from_ref(&sctp), SCTP, 81, |_, _| true);
    expect(&[sctp], TCP, 81, |_, to| to != "x/a");
    // UDP is not TCP.
    let udp = ingress(
        policy("x", pod_a()),
        vec![rule(Vec::new(), vec![port(Protocol::Udp, 81)])],
    );
    expect(std::slice::from_ref(&udp), TCP, 81, |_, to| to != "x/a");
    expect(&[udp], UDP, 81, |_, _| true);
}

#[test]
fn a_policy_selects_pods_in_its_namespace_only() {
    let deny = policy("y", pod_a());
    expect(&[deny], TCP, 80, |_, to| to != "y/a");
}

#[test]
fn ingress_and_egress_are_governed_apart() {
    let mut allow_egress = egress(policy("x", pod_a()), vec![Rule::default()]);
    allow_egress.policy_types.clear(); // defaulted: Ingress too, with no rules
    expect(std::slice::from_ref(&allow_egress), TCP, 80, |_, to| {
        to != "x/a"
    });
    // Egress only: ingress rules are ignored, ingress unrestricted.
    let mut egress_only = egress(policy("x", pod_a()), Vec::new());
    egress_only.ingress = vec![Rule::default()];
    let compiled = compiled(&[egress_only]);
    let verdict = compiled.allows(Direction::Ingress, ip("x/a"), ip("y/a"), TCP, 80);
    assert_eq!(verdict, Verdict::Unrestricted);
    let verdict = compiled.allows(Direction::Egress, ip("x/a"), ip("y/a"), TCP, 80);
    assert_eq!(verdict, Verdict::Denied);
}

#[test]
fn an_unknown_pod_is_unrestricted() {
    let compiled = compiled(&[policy("x", LabelSelector::default())]);
    let stranger = Ipv4Addr::new(10, 9, 9, 9);
    let verdict = compiled.allows(Direction::Ingress, stranger, ip("x/a"), TCP, 80);
    assert_eq!(verdict, Verdict::Unrestricted);
}

#[test]
fn an_unlisted_namespace_still_has_its_name_label() {
    let from_y = peer(None, Some(namespace("y")));
    let allow = ingress(policy("x", pod_a()), vec![rule(vec![from_y], Vec::new())]);
    let (pods, mut namespaces) = cluster();
    namespaces.retain(|n| n.name == "x");
    let compiled = compile(&[allow], &pods, &namespaces);
    let verdict = compiled.allows(Direction::Ingress, ip("x/a"), ip("y/c"), TCP, 80);
    assert_eq!(verdict, Verdict::Allowed);
}

#[test]
fn the_json_form_reads() {
    let text = r#"{"namespace": "x", "name": "web",
      "pod_selector": {"match_labels": {"pod": "a"}},
      "ingress": [{"peers": [{"namespace_selector": {"match_expressions":
                      [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["y"]}]}},
                             {"ip_block": {"cidr": "10.0.2.0/24", "except": ["10.0.2.3/32"]}}],
                   "ports": [{"port": "serve-80-tcp"}, {"protocol": "udp", "port": 53, "end_port": 54}]}]}"#;
    let policy: NetworkPolicy = serde_json::from_str(text).unwrap();
    let compiled = compiled(std::slice::from_ref(&policy));
    let to_xa = |from, protocol, port| {
        compiled.allows(Direction::Ingress, ip("x/a"), ip(from), protocol, port)
    };
    assert_eq!(to_xa("y/b", TCP, 80), Verdict::Allowed);
    assert_eq!(to_xa("z/b", UDP, 54), Verdict::Allowed);
    assert_eq!(to_xa("z/c", UDP, 54), Verdict::Denied);
    assert_eq!(to_xa("x/b", TCP, 80), Verdict::Denied);
    let again: NetworkPolicy =
        serde_json::from_str(&serde_json::to_string(&policy).unwrap()).unwrap();
    assert_eq!(again, policy);
    let rules = compiled.pod(ip("x/a")).unwrap();
    let crate::compile::DirectionPolicy::Restricted(rules) = &rules.ingress else {
        panic!("x/a is selected for ingress");
    };
    assert_eq!(rules.policies(), ["x/web"]);
}

/// The API read directly: the verdict on one packet, from the objects.
fn reference(
    (policies, pods, namespaces): &World,
    direction: Direction,
    local: &Pod,
    remote: Ipv4Addr,
    protocol: u8,
    port: u16,
) -> Verdict {
    let selecting: Vec<_> = policies
        .iter()
        .filter(|p| p.namespace == local.namespace)
        .filter(|p| p.applies_to(direction) && p.pod_selector.matches(&local.labels))
        .collect();
    if selecting.is_empty() {
        return Verdict::Unrestricted;
    }
    let remote_pod = pods.iter().find(|pod| pod.ip == remote);
    let destination = match direction {
        Direction::Ingress => Some(local),
        Direction::Egress => remote_pod,
    };
    let namespace_of = |name: &str| {
        let listed = namespaces.iter().find(|n| n.name == name).cloned();
        listed.unwrap_or(Namespace {
            name: name.into(),
            labels: Labels::new(),
        })
    };
    let peer_matches = |policy: &NetworkPolicy, peer: &Peer| {
        let by_selectors = (peer.pod_selector.is_some() || peer.namespace_selector.is_some())
            && remote_pod.is_some_and(|pod| {
                let namespace_ok = match &peer.namespace_selector {
                    None => pod.namespace == policy.namespace,
                    Some(selector) => namespace_of(&pod.namespace).selected_by(selector),
                };
                namespace_ok
                    && peer
                        .pod_selector
                        .as_ref()
                        .is_none_or(|s| s.matches(&pod.labels))
            });
        by_selectors || peer.ip_block.as_ref().is_some_and(|b| b.contains(remote))
    };
    let port_matches = |policy_port: &PolicyPort| {
        Protocol::from_ip_protocol(protocol) == Some(policy_port.protocol)
            && match &policy_port.port {
                None => true,
                Some(Port::Number(first)) => {
                    (*first..=policy_port.end_port.unwrap_or(*first)).contains(&port)
                }
                Some(Port::Name(name)) => destination.is_some_and(|pod| {
                    pod.ports.iter().any(|p| {
                        p.name == *name && p.protocol == policy_port.protocol && p.port == port
                    })
                }),
            }
    };
    let allowed = selecting.iter().any(|policy| {
        policy.rules(direction).iter().any(|rule| {
            (rule.peers.is_empty() || rule.peers.iter().any(|peer| peer_matches(policy, peer)))
                && (rule.ports.is_empty() || rule.ports.iter().any(port_matches))
        })
    });
    if allowed {
        Verdict::Allowed
    } else {
        Verdict::Denied
    }
}

fn small_labels() -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(
        prop_oneof![Just("app".to_string()), Just("tier".to_string())],
        prop_oneof![Just("a".to_string()), Just("b".to_string())],
        0..=2,
    )
}

fn small_selector() -> impl Strategy<Value = LabelSelector> {
    let operator = prop_oneof![
        Just(Operator::In),
        Just(Operator::NotIn),
        Just(Operator::Exists),
        Just(Operator::DoesNotExist)
    ];
    let requirement = (
        prop_oneof![Just("app"), Just("tier"), Just(NAMESPACE_NAME_LABEL)],
        operator,
        proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("n0")], 0..=2),
    )
        .prop_map(|(key, operator, values)| Requirement {
            key: key.into(),
            operator,
            values: values.into_iter().map(String::from).collect(),
        });
    (
        small_labels(),
        proptest::collection::vec(requirement, 0..=1),
    )
        .prop_map(|(match_labels, match_expressions)| LabelSelector {
            match_labels,
            match_expressions,
        })
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp)
    ]
}

/// Addresses in 10.0.0.0/28: pods hold .1 to .6, the rest are no pod's.
fn small_net() -> impl Strategy<Value = ipnet::Ipv4Net> {
    (0u8..16, 28u8..=32).prop_map(|(host, len)| {
        ipnet::Ipv4Net::new(Ipv4Addr::new(10, 0, 0, host), len)
            .unwrap()
            .trunc()
    })
}

fn peer_strategy() -> impl Strategy<Value = Peer> {
    let block = (small_net(), proptest::collection::vec(small_net(), 0..=2))
        .prop_map(|(cidr, except)| IpBlock { cidr, except });
    (
        proptest::option::of(small_selector()),
        proptest::option::of(small_selector()),
        proptest::option::weighted(0.3, block),
    )
        .prop_map(|(pod_selector, namespace_selector, ip_block)| Peer {
            pod_selector,
            namespace_selector,
            ip_block,
        })
}

fn port_strategy() -> impl Strategy<Value = PolicyPort> {
    let port = prop_oneof![
        Just(None),
        (1u16..5).prop_map(|n| Some(Port::Number(n))),
        prop_oneof![Just("p1"), Just("p2")].prop_map(|n| Some(Port::Name(n.into()))),
    ];
    (protocol(), port, proptest::option::weighted(0.3, 0u16..6)).prop_map(
        |(protocol, port, end_port)| PolicyPort {
            protocol,
            port,
            end_port,
        },
    )
}

fn rule_strategy() -> impl Strategy<Value = Rule> {
    (
        proptest::collection::vec(peer_strategy(), 0..=2),
        proptest::collection::vec(port_strategy(), 0..=2),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

/// Policies, pods and namespaces.
type World = (Vec<NetworkPolicy>, Vec<Pod>, Vec<Namespace>);

fn world() -> impl Strategy<Value = World> {
    let named_port = (prop_oneof![Just("p1"), Just("p2")], protocol(), 1u16..5).prop_map(
        |(name, protocol, port)| NamedPort {
            name: name.into(),
            protocol,
            port,
        },
    );
    let pod = (
        0usize..3,
        small_labels(),
        proptest::collection::vec(named_port, 0..=2),
    );
    let pods = proptest::collection::vec(pod, 1..=6).prop_map(|pods| {
        pods.into_iter()
            .enumerate()
            .map(|(i, (namespace, labels, mut ports))| {
                // A pod's port names are unique (the API server sees to it).
                ports.sort_by(|a, b| a.name.cmp(&b.name));
                ports.dedup_by(|a, b| a.name == b.name);
                (i, namespace, labels, ports)
            })
            .map(|(i, namespace, labels, ports)| Pod {
                namespace: format!("n{namespace}"),
                name: format!("p{i}"),
                labels,
                ip: Ipv4Addr::new(10, 0, 0, i as u8 + 1),
                ports,
            })
            .collect::<Vec<_>>()
    });
    // Namespaces n0 and n1 are listed with labels; n2 is not.
    let namespaces = (small_labels(), small_labels()).prop_map(|(l0, l1)| {
        vec![
            Namespace {
                name: "n0".into(),
                labels: l0,
            },
            Namespace {
                name: "n1".into(),
                labels: l1,
            },
        ]
    });
    let types = prop_oneof![
        Just(vec![]),
        Just(vec![Direction::Ingress]),
        Just(vec![Direction::Egress]),
        Just(vec![Direction::Ingress, Direction::Egress]),
    ];
    let policy = (
        0usize..3,
        small_selector(),
        types,
        proptest::collection::vec(rule_strategy(), 0..=2),
        proptest::collection::vec(rule_strategy(), 0..=2),
    )
        .prop_map(
            |(namespace, pod_selector, policy_types, ingress, egress)| NetworkPolicy {
                namespace: format!("n{namespace}"),
                name: "p".into(),
                pod_selector,
                policy_types,
                ingress,
                egress,
            },
        );
    (proptest::collection::vec(policy, 0..=3), pods, namespaces)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn compiled_rules_agree_with_the_api(world in world()) {
        let (policies, pods, namespaces) = &world;
        let compiled = compile(policies, pods, namespaces);
        for local in pods {
            for host in 0..16 {
                let remote = Ipv4Addr::new(10, 0, 0, host);
                for protocol in [TCP, UDP, SCTP, ICMP] {
                    for port in 0..7 {
                        for direction in [Direction::Ingress, Direction::Egress] {
                            let want =
                                reference(&world, direction, local, remote, protocol, port);
                            let got = compiled.allows(direction, local.ip, remote, protocol, port);
                            prop_assert_eq!(
                                got, want,
                                "{:?} {} {} {} {}", direction, local.name, remote, protocol, port
                            );
                        }
                    }
                }
            }
        }
    }
}
