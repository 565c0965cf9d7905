//! The objects NetworkPolicy is about, as the sources hand them over: pods,
//! namespaces and policies (`networking.k8s.io/v1`), with the API's fields
//! in snake case. The crate `podswitch-policy` compiles them; the switch
//! enforces them.

pub mod selector;

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use self::selector::{LabelSelector, Labels};

/// The protocols a policy port names: the Services' ones.
pub use crate::service::ServiceProtocol as Protocol;

/// The label the API server puts on every namespace, with its name as
/// the value.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Everything policy is decided on, as one source gives it: the
/// namespaces (their labels), the pods (labels, address, named ports) and
/// the policies. The form of `podswitch policy set` and the `policy_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Namespaces with labels; one not listed has only its name label.
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    /// Every pod policy may name, on any node.
    #[serde(default)]
    pub pods: Vec<Pod>,
    /// The NetworkPolicies.
    #[serde(default)]
    pub policies: Vec<NetworkPolicy>,
}

/// A pod, as far as policy is concerned. Host-network pods are not
/// given: policy does not select them, and their address is the node's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    #[serde(default)]
    pub labels: Labels,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its containers' named ports (unnamed ones play no part); the API
    /// server keeps their names unique in a pod.
    #[serde(default)]
    pub ports: Vec<NamedPort>,
}

/// A named container port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    /// The name, which a policy port may give instead of a number.
    pub name: String,
    /// Its protocol (TCP when not given, as in the API).
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    /// The port number.
    pub port: u16,
}

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// Its name.
    pub name: String,
    /// Its labels; [`NAMESPACE_NAME_LABEL`] is implied.
    #[serde(default)]
    pub labels: Labels,
}

/// A direction of traffic, seen from the pod a policy selects; also a
/// policy type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Traffic to the pod.
    Ingress,
    /// Traffic from the pod.
    Egress,
}

/// A NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// Its namespace: it selects pods there only.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The pods it applies to, in its namespace (empty: all of them).
    #[serde(default)]
    pub pod_selector: LabelSelector,
    /// `policyTypes`; when empty, Kubernetes' default: `Ingress`, and
    /// `Egress` too if there are egress rules. See [`Self::applies_to`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy_types: Vec<Direction>,
    /// Rules allowing traffic to the selected pods (`from`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Rules allowing traffic from the selected pods (`to`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
}

/// One rule: traffic with any of the peers on any of the ports is allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// `from` (ingress) or `to` (egress); empty: every peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    /// The ports; empty: every port and every protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// A peer of a rule. With selectors only: `pod_selector` alone selects
/// pods in the policy's namespace, `namespace_selector` alone every pod
/// in the matching namespaces, both the matching pods in the matching
/// namespaces. `ip_block` selects addresses. The API server refuses a
/// peer with none, or with `ip_block` beside a selector; here a peer
/// with none selects nothing, and one with both selects the union.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Pods by their labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces by their labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,
}

/// A block of addresses: `cidr` without the `except` blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpBlock {
    /// The block (host bits are ignored).
    pub cidr: Ipv4Net,
    /// Blocks inside it left out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<Ipv4Net>,
}

/// A port (or range) of a rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyPort {
    /// The protocol (TCP when not given, as in the API).
    #[serde(default = "tcp")]
    pub protocol: Protocol,
    /// The port, by number or by a destination pod's port name; `None`:
    /// every port of the protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
    /// With a numbered port, the last of the range `port..=end_port`
    /// (ignored with a named port, which the API server refuses; a range
    /// ending before it starts holds nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

/// A port by number or by name (`IntOrString`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Port {
    /// A port number.
    Number(u16),
    /// A container port's name, resolved at the destination pod.
    Name(String),
}

fn tcp() -> Protocol {
    Protocol::Tcp
}

impl Cluster {
    /// Check a source's set before it replaces the last one: a message
    /// saying what to fix for the first problem found. Names must be
    /// given and unique, and two pods cannot share an address (policy
    /// tells pods apart by it).
    pub fn check(&self) -> Result<(), String> {
        let mut namespaces = std::collections::BTreeSet::new();
        for namespace in &self.namespaces {
            if namespace.name.is_empty() {
                return Err("a namespace has no name: give each one its name".into());
            }
            if !namespaces.insert(namespace.name.as_str()) {
                return Err(format!(
                    "namespace {} is listed twice: list each namespace once",
                    namespace.name
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        let mut addresses = std::collections::BTreeMap::new();
        for pod in &self.pods {
            check_name("pod", &pod.namespace, &pod.name, &mut names)?;
            if let Some(other) = addresses.insert(pod.ip, pod) {
                return Err(format!(
                    "pods {} and {} both have the address {}: a pod's address is its own",
                    other.full_name(),
                    pod.full_name(),
                    pod.ip
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for policy in &self.policies {
            check_name("policy", &policy.namespace, &policy.name, &mut names)?;
        }
        Ok(())
    }
}

/// Check a namespaced object's name (`kind` "pod" or "policy"): given,
/// and not one `seen` already.
fn check_name<'a>(
    kind: &str,
    namespace: &'a str,
    name: &'a str,
    seen: &mut std::collections::BTreeSet<(&'a str, &'a str)>,
) -> Result<(), String> {
    if namespace.is_empty() || name.is_empty() {
        return Err(format!(
            "{kind} {namespace}/{name} needs its namespace and its name"
        ));
    }
    if !seen.insert((namespace, name)) {
        return Err(format!(
            "{kind} {namespace}/{name} is listed twice: list each {kind} once"
        ));
    }
    Ok(())
}

impl Pod {
    /// `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl NetworkPolicy {
    /// `namespace/name`, as counters and `podswitch policy` name it.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the policy governs the direction for the pods it selects,
    /// with `policyTypes` defaulted as the API server does.
    pub fn applies_to(&self, direction: Direction) -> bool {
        if self.policy_types.is_empty() {
            direction == Direction::Ingress || !self.egress.is_empty()
        } else {
            self.policy_types.contains(&direction)
        }
    }

    /// The rules of a direction.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

impl PolicyPort {
    /// A port (or all ports, `None`) of a protocol.
    pub fn new(protocol: Protocol, port: Option<Port>) -> PolicyPort {
        PolicyPort {
            protocol,
            port,
            end_port: None,
        }
    }
}

impl IpBlock {
    /// Whether the block holds an address.
    pub fn contains(&self, address: Ipv4Addr) -> bool {
        self.cidr.trunc().contains(&address) && !self.except.iter().any(|e| e.contains(&address))
    }
}

impl Namespace {
    /// Whether a namespace selector selects this namespace, its name label
    /// included.
    pub fn selected_by(&self, selector: &LabelSelector) -> bool {
        let mut labels = self.labels.clone();
        labels.insert(NAMESPACE_NAME_LABEL.into(), self.name.clone());
        selector.matches(&labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_types_default_as_kubernetes_does() {
        let mut policy: NetworkPolicy =
            serde_json::from_str(r#"{"namespace": "x", "name": "deny"}"#).unwrap();
        assert!(policy.applies_to(Direction::Ingress));
        assert!(!policy.applies_to(Direction::Egress));
        policy.egress.push(Rule::default());
        assert!(policy.applies_to(Direction::Ingress));
        assert!(policy.applies_to(Direction::Egress));
        policy.policy_types = vec![Direction::Egress];
        assert!(!policy.applies_to(Direction::Ingress));
        assert!(policy.applies_to(Direction::Egress));
    }

    #[test]
    fn ports_read_as_numbers_or_names_with_tcp_by_default() {
        let ports: Vec<PolicyPort> = serde_json::from_str(
            r#"[{"port": 80, "end_port": 90}, {"protocol": "udp", "port": "dns"}, {"protocol": "sctp"}]"#,
        )
        .unwrap();
        assert_eq!(ports[0].protocol, Protocol::Tcp);
        assert_eq!(ports[0].port, Some(Port::Number(80)));
        assert_eq!(ports[0].end_port, Some(90));
        assert_eq!(ports[1].port, Some(Port::Name("dns".into())));
        assert_eq!(ports[2], PolicyPort::new(Protocol::Sctp, None));
    }

    #[test]
    fn an_ip_block_leaves_its_excepts_out() {
        let block = IpBlock {
            cidr: "10.0.0.7/8".parse().unwrap(),
            except: vec!["10.1.0.0/16".parse().unwrap()],
        };
        assert!(block.contains(Ipv4Addr::new(10, 2, 3, 4)));
        assert!(!block.contains(Ipv4Addr::new(10, 1, 3, 4)));
        assert!(!block.contains(Ipv4Addr::new(11, 0, 0, 1)));
    }

    #[test]
    fn a_namespace_carries_its_name_label() {
        let namespace = Namespace {
            name: "prod".into(),
            labels: Labels::new(),
        };
        assert!(namespace.selected_by(&LabelSelector::labels([(NAMESPACE_NAME_LABEL, "prod")])));
        assert!(!namespace.selected_by(&LabelSelector::labels([(NAMESPACE_NAME_LABEL, "dev")])));
    }

    #[test]
    fn a_cluster_reads_from_json_and_its_check_names_what_to_fix() {
        let cluster: Cluster = serde_json::from_str(
            r#"{"namespaces": [{"name": "shop", "labels": {"team": "a"}}],
                "pods": [{"namespace": "shop", "name": "web-0", "labels": {"app": "web"},
                          "ip": "10.244.1.5", "ports": [{"name": "http", "port": 8080}]},
                         {"namespace": "shop", "name": "web-1", "ip": "10.244.1.6"}],
                "policies": [{"namespace": "shop", "name": "deny"}]}"#,
        )
        .unwrap();
        assert_eq!(cluster.check(), Ok(()));
        let mut twins = cluster.clone();
        twins.pods[1].ip = twins.pods[0].ip;
        let e = twins.check().unwrap_err();
        assert!(e.contains("shop/web-0") && e.contains("10.244.1.5"), "{e}");
        let mut again = cluster.clone();
        again.policies.push(again.policies[0].clone());
        assert!(again.check().unwrap_err().contains("shop/deny"));
        let unknown = serde_json::from_str::<Cluster>(r#"{"policy": []}"#).unwrap_err();
        assert!(unknown.to_string().contains("policy"), "{unknown}");
    }
}
