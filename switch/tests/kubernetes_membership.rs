//! Membership from the Kubernetes API, through the unmodified kube-rs
//! client the daemon uses. No Kubernetes API server can be installed on
//! these machines, so the API is a stand-in (`podswitch_lab::kube_api`)
//! in the lab's fabric namespace that serves Node objects as real
//! clusters return them: list and watch over HTTP with resourceVersions,
//! bookmarks, `410 Gone` and the client's re-list, and merge patches of
//! a Node. The test plays the cluster: it creates Node objects (as
//! kubelets register them), changes and deletes them. podswitch nodes
//! join, leave and follow an address change without anyone touching the
//! others' configuration; a kernel VXLAN node configured as flanneld would
//! from the Nodes' annotations exchanges traffic with podswitch pods; an
//! API server outage keeps the peers and is reported, and a forced 410
//! makes the nodes list again, losing nothing. Needs root.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use anyhow::{Context, Result, ensure};
use podswitch_lab::cluster::{
    FABRIC_IP, KernelNode, Pod, SwitchNode, expect_iperf, kernel_vtep_mac, node_ip,
};
use podswitch_lab::kube_api::{
    KubeApi, endpoint_slice_object, namespace_object, network_policy_object, node_object,
    pod_object, service_object,
};
use podswitch_lab::membership::{
    MembershipLab, has_peer, has_route, peers, reach, wait_for, wait_membership,
};
use podswitch_lab::service_traffic::{TCP_PORT, TRY_SERVICE, request, serve_in};
use podswitch_lab::traffic::IperfClient;
use serde_json::{Value, json};

const BACKEND_TYPE: &str = "flannel.alpha.coreos.com/backend-type";
const BACKEND_DATA: &str = "flannel.alpha.coreos.com/backend-data";
const PUBLIC_IP: &str = "flannel.alpha.coreos.com/public-ip";
const KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";

/// Lab tests push real traffic: one at a time on a 2-core machine.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_podswitch"))
}

fn name(i: u8) -> String {
    format!("node-{i}")
}

/// Node `i`'s Node object as its kubelet registers it: pod CIDR
/// 10.244.i.0/24, InternalIP its underlay address, no annotations.
fn registered(i: u8) -> Value {
    node_object(&name(i), Some(&format!("10.244.{i}.0/24")), node_ip(i), &[])
}

/// Nodes 1 to 3 (podswitch, started on demand) and 4 (a kernel node) on
/// one fabric, the stand-in API server on the fabric bridge.
struct KubeLab {
    base: MembershipLab,
    api: KubeApi,
    kubeconfig: PathBuf,
}

impl KubeLab {
    fn new(tag: &str) -> Result<KubeLab> {
        let base = MembershipLab::new(tag)?;
        let api = KubeApi::start(&base.fabric, FABRIC_IP)?;
        let kubeconfig = base.dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        Ok(KubeLab {
            base,
            api,
            kubeconfig,
        })
    }

    /// Register node `i`'s Node and start podswitch on it following the
    /// API, with one pod (10.244.i.2).
    fn start(&mut self, i: u8) -> Result<Pod> {
        self.start_with(i, "")
    }

    /// The same with `settings` (top-level keys) in its configuration.
    fn start_with(&mut self, i: u8, settings: &str) -> Result<Pod> {
        self.api.put_node(registered(i))?;
        let membership = format!(
            "{settings}membership = \"kubernetes\"\nudp_port = 8472\n[kubernetes]\n\
             kubeconfig = \"{}\"\nnode_name = \"{}\"",
            self.kubeconfig.display(),
            name(i)
        );
        self.base.start(i, binary(), membership)
    }

    /// Node `i`'s annotation `key`, as the API server holds it.
    fn annotation(&self, i: u8, key: &str) -> Option<String> {
        self.api.node(&name(i))?["metadata"]["annotations"][key]
            .as_str()
            .map(String::from)
    }

    /// Node `i`'s pod CIDR with its lease as flanneld reads it from the
    /// Node's annotations: an etcd-style (key, value) record for
    /// [`KernelNode::add_flannel_peers`].
    fn flannel_record(&self, i: u8) -> Result<(String, String)> {
        let ip = self.annotation(i, PUBLIC_IP).context("no public-ip")?;
        let data = self
            .annotation(i, BACKEND_DATA)
            .context("no backend-data")?;
        Ok((
            format!("/coreos.com/network/subnets/10.244.{i}.0-24"),
            format!(r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{data}}}"#),
        ))
    }
}

impl std::ops::Deref for KubeLab {
    type Target = MembershipLab;
    fn deref(&self) -> &MembershipLab {
        &self.base
    }
}

impl std::ops::DerefMut for KubeLab {
    fn deref_mut(&mut self) -> &mut MembershipLab {
        &mut self.base
    }
}

/// Node 4's Node as flanneld leaves it: Flannel's vxlan annotations with
/// its VTEP at `public_ip` and `vtep_mac`.
fn flannel_node(public_ip: Ipv4Addr, vtep_mac: &str) -> Value {
    let data = format!(r#"{{"VNI":1,"VtepMAC":"{vtep_mac}"}}"#);
    let ip = public_ip.to_string();
    node_object(
        &name(4),
        Some("10.244.4.0/24"),
        node_ip(4),
        &[
            (BACKEND_TYPE, "vxlan"),
            (BACKEND_DATA, &data),
            (PUBLIC_IP, &ip),
            (KUBE_SUBNET_MANAGER, "true"),
        ],
    )
}

#[test]
fn nodes_join_leave_and_rejoin_through_node_objects() -> Result<()> {
    let _serial = serial();
    let mut tb = KubeLab::new("k8s-churn")?;
    let p1 = tb.start(1)?;
    let p2 = tb.start(2)?;
    wait_membership(&tb.nodes, &[1], 2, true)?;
    wait_membership(&tb.nodes, &[2], 1, true)?;
    reach(&p1, p2.ip, "node 1 to node 2, both from their Nodes")?;

    // Each node published Flannel's annotations and podswitch's on its
    // own Node, with a merge patch.
    for i in [1, 2] {
        ensure!(tb.annotation(i, BACKEND_TYPE).as_deref() == Some("vxlan"));
        ensure!(tb.annotation(i, KUBE_SUBNET_MANAGER).as_deref() == Some("true"));
        ensure!(tb.annotation(i, PUBLIC_IP) == Some(node_ip(i).to_string()));
        ensure!(tb.annotation(i, "podswitch.io/encapsulation").as_deref() == Some("vxlan"));
        ensure!(tb.annotation(i, "podswitch.io/udp-port").as_deref() == Some("8472"));
    }
    let types = tb.api.patch_types();
    ensure!(
        !types.is_empty() && types.iter().all(|t| t == "application/merge-patch+json"),
        "{types:?}"
    );

    // Node 3 joins: reachable from both without touching their config.
    let p3 = tb.start(3)?;
    wait_membership(&tb.nodes, &[1, 2], 3, true)?;
    reach(&p1, p3.ip, "node 1 to the new node 3")?;
    reach(&p3, p2.ip, "the new node 3 to node 2")?;

    // Its Node deleted: the others drop it and its routes.
    ensure!(tb.api.delete_node(&name(3)));
    wait_membership(&tb.nodes, &[1, 2], 3, false)?;
    reach(&p1, p2.ip, "node 1 to node 2 after node 3 left")?;

    // Registered again (no annotations): its daemon publishes them again
    // and the others take it back.
    tb.api.put_node(registered(3))?;
    wait_membership(&tb.nodes, &[1, 2], 3, true)?;
    reach(&p2, p3.ip, "node 2 to node 3, registered again")?;

    // Its Node loses its pod CIDR: withdrawn too.
    let mut no_cidr = tb.api.node(&name(3)).context("node 3's Node")?;
    no_cidr["spec"] = serde_json::json!({});
    tb.api.put_node(no_cidr)?;
    wait_membership(&tb.nodes, &[1, 2], 3, false)?;

    // Node 1 restarts while node 3's Node is gone: it resumes from a
    // fresh list, not from the peers it had saved.
    ensure!(tb.api.delete_node(&name(3)));
    ensure!(tb.node(1).stop(), "node 1 did not stop");
    tb.api.put_node(registered(3))?;
    wait_membership(&tb.nodes, &[2], 3, true)?;
    ensure!(tb.api.delete_node(&name(3)));
    tb.node(1).launch()?;
    wait_membership(&tb.nodes, &[1], 2, true)?;
    wait_membership(&tb.nodes, &[1, 2], 3, false)?;
    reach(&p1, p2.ip, "node 1 to node 2 after node 1's restart")?;

    // Node 1 leaves its pod CIDR to its Node's spec.podCIDR.
    tb.leave_pod_cidr_out(1)?;
    ensure!(tb.node(1).stop(), "node 1 did not stop");
    tb.node(1).launch()?;
    let info = tb.node(1).cli_json(&["info"])?;
    ensure!(
        info["pod_cidr"] == "10.244.1.0/24",
        "node 1's pod CIDR from its Node: {}",
        info["pod_cidr"]
    );
    reach(
        &p2,
        p1.ip,
        "node 2 to node 1 with its pod CIDR from its Node",
    )?;
    // The API calls the daemons made are those the DaemonSet's RBAC
    // grants (deploy/kubernetes/podswitch.yaml), and all of them.
    let verbs = tb.api.verbs();
    ensure!(
        verbs == BTreeSet::from(["get", "list", "patch", "watch"]),
        "{verbs:?}"
    );
    for node in &tb.nodes {
        node.check_frames()?;
    }
    Ok(())
}

#[test]
fn a_flannel_node_an_address_change_an_outage_and_a_relist() -> Result<()> {
    let _serial = serial();
    let mut tb = KubeLab::new("k8s-flannel")?;
    let p1 = tb.start(1)?;
    let p2 = tb.start(2)?;
    wait_membership(&tb.nodes, &[1], 2, true)?;

    // Node 4 as flanneld would set it up from the Nodes: its own Node's
    // annotations written (by the test, as flanneld writes them), its
    // device, neighbours and FDB from the podswitch nodes' annotations.
    let mut kernel = KernelNode::create_as_flanneld(tb.namespace(4), 4, 1500, 8472)?;
    let p4 = kernel.add_pod(&mut tb.lab, 2, true)?;
    tb.api
        .put_node(flannel_node(node_ip(4), &kernel_vtep_mac(4)))?;
    wait_membership(&tb.nodes, &[1, 2], 4, true)?;
    let records = vec![tb.flannel_record(1)?, tb.flannel_record(2)?];
    kernel.add_flannel_peers(&records)?;
    reach(&p4, p1.ip, "flannel node 4 to podswitch node 1")?;
    reach(&p2, p4.ip, "podswitch node 2 to flannel node 4")?;
    expect_iperf(
        &IperfClient::default(),
        &p4,
        &p1,
        "flannel node 4 to node 1",
    )?;

    // Node 4's address changes: a new underlay address, from which
    // flanneld, restarted, sets up its device again and which it writes
    // as its public-ip. Followed.
    let moved = Ipv4Addr::new(10, 1, 0, 24);
    kernel
        .ns
        .ip(&["addr", "add", &format!("{moved}/24"), "dev", "ul0"])?;
    kernel.ns.ip(&["link", "del", &kernel.vxlan.name])?;
    kernel.vxlan.local = moved.into();
    kernel.vxlan.create(&kernel.ns)?;
    kernel.add_flannel_peers(&records)?;
    tb.api.put_node(flannel_node(moved, &kernel_vtep_mac(4)))?;
    for i in [1, 2] {
        let node = tb.nodes.iter().find(|n| n.index == i).context("node")?;
        wait_for("node 4's new address", || {
            Ok(peers(node)?.iter().any(|(ip, _)| *ip == moved.to_string()))
        })?;
    }
    reach(&p1, p4.ip, "node 1 to node 4 at its new address")?;

    // The API server stops: the peers stay, traffic flows, `peers` says so.
    tb.api.stop();
    let node1 = &tb.nodes[0];
    wait_for("node 1 to report the API server unreachable", || {
        Ok(node1.cli(&["peers"])?.contains("unreachable"))
    })?;
    eprintln!("during the outage:\n{}", node1.cli(&["peers"])?);
    let info = node1.cli_json(&["info"])?;
    ensure!(info["membership"]["source"] == "kubernetes", "{info}");
    ensure!(info["membership"]["unreachable_since"].is_u64(), "{info}");
    ensure!(
        has_peer(node1, 2)? && peers(node1)?.iter().any(|(ip, _)| *ip == moved.to_string()),
        "peers lost in the outage"
    );
    reach(&p1, p2.ip, "node 1 to node 2 while the API server is down")?;
    reach(&p1, p4.ip, "node 1 to node 4 while the API server is down")?;

    // Back: the nodes resume; deleting node 4's Node now removes it.
    tb.api.launch()?;
    for node in &tb.nodes {
        wait_for("the API server reachable again", || {
            Ok(!node.cli(&["peers"])?.contains("unreachable"))
        })?;
    }
    ensure!(tb.api.delete_node(&name(4)));
    // Node 4, at its new address, as a peer with a route to its pods.
    let has_node4 = |node: &SwitchNode| -> Result<bool> {
        Ok(peers(node)?.iter().any(|(ip, _)| *ip == moved.to_string()) && has_route(node, 4)?)
    };
    for node in &tb.nodes {
        wait_for("node 4 dropped after the outage", || {
            Ok(
                !peers(node)?.iter().any(|(ip, _)| *ip == moved.to_string())
                    && !has_route(node, 4)?,
            )
        })?;
    }

    // A forced 410: the API server forgets its history; the nodes list
    // again and lose nothing; a change made meanwhile is followed.
    let lists = tb.api.lists();
    tb.api.expire();
    tb.api.put_node(flannel_node(moved, &kernel_vtep_mac(4)))?;
    wait_for("the nodes to list again after the 410", || {
        Ok(tb.api.lists() >= lists + 2)
    })?;
    for node in &tb.nodes {
        wait_for("node 4 back after the re-list", || has_node4(node))?;
    }
    wait_membership(&tb.nodes, &[1], 2, true)?;
    wait_membership(&tb.nodes, &[2], 1, true)?;
    reach(&p4, p2.ip, "node 4 to node 2 after the re-list")?;
    reach(&p1, p2.ip, "node 1 to node 2 after the re-list")?;
    Ok(())
}

/// The switch's own Service translation fed by the API: a Service and its
/// EndpointSlice put in the API server reach node 1's switch (source
/// `kubernetes`), a pod on node 1 reaches the endpoint on node 2 through
/// the ClusterIP and is seen there by its own address, and an endpoint
/// turned not ready in its slice is taken out of the switch's table.
#[test]
fn services_from_the_api_are_translated_by_the_switch() -> Result<()> {
    let _serial = serial();
    let mut tb = KubeLab::new("k8s-svc")?;
    let translate = "service_translation = \"switch\"\n";
    let p1 = tb.start_with(1, translate)?;
    let p2 = tb.start_with(2, translate)?;
    wait_membership(&tb.nodes, &[1], 2, true)?;
    wait_membership(&tb.nodes, &[2], 1, true)?;
    let _endpoint = serve_in(&p2.ns, p2.ip)?;
    let cluster_ip = Ipv4Addr::new(10, 96, 0, 10);
    tb.api.put(service_object(
        "default",
        "web",
        &cluster_ip.to_string(),
        &[("http", "TCP", 80, "http")],
    ))?;
    let slice = |ready| {
        endpoint_slice_object(
            "default",
            "web-x1",
            "web",
            &[("http", "TCP", TCP_PORT)],
            &[(p2.ip, "node-2", ready)],
        )
    };
    tb.api.put(slice(true))?;
    wait_for("node 1's switch to take the Service from the API", || {
        Ok(tb
            .node(1)
            .cli(&["services"])?
            .contains(&format!("{}:{TCP_PORT}", p2.ip)))
    })?;
    let listed = tb.node(1).cli(&["services"])?;
    ensure!(
        listed.contains("default/web") && listed.contains("kubernetes"),
        "{listed}"
    );
    let (endpoint, seen) = request(&p1, "tcp", cluster_ip, 80)?;
    ensure!(
        (endpoint, seen) == (p2.ip, p1.ip),
        "answered by {endpoint} seeing the client as {seen}"
    );

    tb.api.put(slice(false))?;
    wait_for(
        "node 1's switch to drop the endpoint no longer ready",
        || {
            Ok(!tb
                .node(1)
                .cli(&["services"])?
                .contains(&format!("{}:{TCP_PORT}", p2.ip)))
        },
    )?;
    ensure!(
        request(&p1, "tcp", cluster_ip, 80).is_err(),
        "the Service answered with its only endpoint not ready"
    );
    Ok(())
}

/// NetworkPolicy from the API (issue 20 item 3): namespaces, pods and
/// policies put in the stand-in reach both nodes' switches through the
/// daemon's watch, and are enforced: a policy that selects the web pod
/// and admits another app denies the client across nodes; changed to
/// admit the client, it lets it in.
#[test]
fn network_policies_from_the_api_are_enforced_by_the_switch() -> Result<()> {
    let _serial = serial();
    let mut tb = KubeLab::new("k8s-pol")?;
    let client = tb.start_with(1, "")?;
    let web = tb.start_with(2, "")?;
    wait_membership(&tb.nodes, &[1], 2, true)?;
    wait_membership(&tb.nodes, &[2], 1, true)?;
    let _server = serve_in(&web.ns, web.ip)?;
    tb.api.put(namespace_object("shop", &[]))?;
    tb.api.put(pod_object(
        "shop",
        "client",
        &[("app", "client")],
        Some(client.ip),
        &[],
    ))?;
    tb.api.put(pod_object(
        "shop",
        "web",
        &[("app", "web")],
        Some(web.ip),
        &[("http", "TCP", TCP_PORT)],
    ))?;
    let admitting = |app: &str| {
        network_policy_object(
            "shop",
            "web",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": app}}}],
                                "ports": [{"port": "http"}]}]}),
        )
    };
    tb.api.put(admitting("other"))?;
    wait_for("node 2's switch to take the policy from the API", || {
        let status: Value = serde_json::from_str(&tb.node(2).cli(&["--json", "policy"])?)?;
        Ok(status["pods"]
            .as_array()
            .is_some_and(|pods| pods.iter().any(|p| p["ingress"][0] == "shop/web")))
    })?;
    let attempt = || -> Result<String> {
        let args = ["-c", TRY_SERVICE, "tcp", &web.ip.to_string(), "8080", "2"];
        Ok(client.ns.run("python3", &args)?.trim().to_string())
    };
    let denied = attempt()?;
    ensure!(denied == "timeout", "admitting only app=other: {denied}");
    let shown = tb.node(2).cli(&["policy"])?;
    ensure!(
        shown.contains("source kubernetes") && shown.contains("shop/web"),
        "{shown}"
    );
    tb.api.put(admitting("client"))?;
    wait_for("node 2 to admit the client", || {
        Ok(attempt()? == "connected")
    })
}
