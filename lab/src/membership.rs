//! What the membership tests ask of podswitch nodes that follow a
//! datastore: their peers and routes as the CLI shows them, and waiting
//! (with a generous bound, never a timed assertion) until they change.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::{Pod, SwitchNode, SwitchOptions, expect_pings, fabric, node_ip, ping};
use crate::netns::{Lab, Netns};

/// Generous bound for anything a membership test waits for.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The MTU of the lab's pods (a 1500-byte underlay less VXLAN's 50).
pub const POD_MTU: u32 = 1450;

/// Nodes 1 to 4 on one fabric, whose namespace hosts the datastore;
/// podswitch nodes started on demand, each with one pod.
pub struct MembershipLab {
    /// The podswitch nodes started so far.
    pub nodes: Vec<SwitchNode>,
    namespaces: Vec<Netns>,
    /// The fabric's namespace (the bridge, with [`crate::cluster::FABRIC_IP`]).
    pub fabric: Netns,
    /// The test's directory: configurations, logs, state.
    pub dir: PathBuf,
    /// The lab (namespaces are deleted when it is dropped).
    pub lab: Lab,
}

impl MembershipLab {
    /// Lab `tag`: four node namespaces on a fabric, and an empty directory.
    pub fn new(tag: &str) -> Result<MembershipLab> {
        let mut lab = Lab::new(tag)?;
        let dir = lab.scratch_dir()?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let namespaces = (1..=4)
            .map(|i| lab.netns(&format!("n{i}")))
            .collect::<Result<Vec<_>>>()?;
        let attached: Vec<_> = namespaces.iter().zip(1..).collect();
        let fabric = fabric(&mut lab, &attached, 1500)?;
        Ok(MembershipLab {
            nodes: Vec::new(),
            namespaces,
            fabric,
            dir,
            lab,
        })
    }

    /// Node `i`'s namespace.
    pub fn namespace(&self, i: u8) -> Netns {
        self.namespaces[usize::from(i - 1)].clone()
    }

    /// Start `binary` (podswitch) on node `i` with `membership` (TOML
    /// added to its configuration), with one pod (10.244.i.2).
    pub fn start(&mut self, i: u8, binary: &Path, membership: String) -> Result<Pod> {
        let options = SwitchOptions {
            membership: Some(membership),
            ..SwitchOptions::default()
        };
        let node = SwitchNode::start(self.namespace(i), i, binary, &self.dir, &options, &[])?;
        let pod = node.add_veth_pod(&mut self.lab, 2, POD_MTU)?;
        self.nodes.push(node);
        Ok(pod)
    }

    /// Rewrite started node `i`'s configuration without its `pod_cidr`
    /// (left to the datastore at its next launch).
    pub fn leave_pod_cidr_out(&mut self, i: u8) -> Result<()> {
        let config = self.node(i).config_path();
        let text = std::fs::read_to_string(&config)?;
        let without: String = text
            .lines()
            .filter(|l| !l.starts_with("pod_cidr"))
            .map(|l| format!("{l}\n"))
            .collect();
        if without == text {
            bail!("node {i}'s configuration names no pod_cidr");
        }
        std::fs::write(&config, without)?;
        Ok(())
    }

    /// Started node `i` (panics if it was not: a mistake of the test's).
    pub fn node(&mut self, i: u8) -> &mut SwitchNode {
        self.nodes
            .iter_mut()
            .find(|n| n.index == i)
            .expect("a started node")
    }
}

/// The node IPs in a node's `podswitch peers`, and their VTEP MACs.
pub fn peers(node: &SwitchNode) -> Result<Vec<(String, String)>> {
    let peers = node.cli_json(&["peers"])?;
    Ok(peers
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["node_ip"].as_str().unwrap_or("").to_string(),
                p["vtep_mac"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

/// Whether `node` has lab node `i` as a peer.
pub fn has_peer(node: &SwitchNode, i: u8) -> Result<bool> {
    Ok(peers(node)?
        .iter()
        .any(|(ip, _)| *ip == node_ip(i).to_string()))
}

/// Whether `node` routes lab node `i`'s pod CIDR.
pub fn has_route(node: &SwitchNode, i: u8) -> Result<bool> {
    let routes = node.cli_json(&["routes"])?;
    let cidr = format!("10.244.{i}.0/24");
    Ok(routes
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["prefix"].as_str() == Some(&cidr)))
}

/// What a source handed its callback, for tests: each value the callback
/// sends on [`Handed::channel`]'s sender, counted, the last one kept.
pub struct Handed<T> {
    rx: Receiver<T>,
    /// How many were handed over so far.
    pub count: usize,
    /// The last one.
    pub last: Option<T>,
}

impl<T: std::fmt::Debug> Handed<T> {
    /// An empty one, and the sender the source's callback sends on.
    pub fn channel() -> (Sender<T>, Handed<T>) {
        let (tx, rx) = channel();
        let handed = Handed {
            rx,
            count: 0,
            last: None,
        };
        (tx, handed)
    }

    /// Take what was handed over meanwhile.
    pub fn take(&mut self) {
        while let Ok(value) = self.rx.try_recv() {
            self.count += 1;
            self.last = Some(value);
        }
    }

    /// Wait (at most [`PATIENCE`]) until the last one handed over
    /// satisfies `done`; the error shows the last one.
    pub fn wait(&mut self, what: &str, done: impl Fn(&T) -> bool) -> Result<&T> {
        let waited = wait_for(what, || {
            self.take();
            Ok(self.last.as_ref().is_some_and(&done))
        });
        if let Err(e) = waited {
            return Err(e.context(format!("the last one handed over: {:#?}", self.last)));
        }
        self.last.as_ref().context("nothing handed over")
    }
}

/// Wait (at most [`PATIENCE`]) until `done` holds.
pub fn wait_for(what: &str, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if done()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("waited {} s for {what}", PATIENCE.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Wait until every node of `nodes` whose index is in `watchers` has
/// node `i` as a peer with a route to its pods (`present`), or neither.
pub fn wait_membership(nodes: &[SwitchNode], watchers: &[u8], i: u8, present: bool) -> Result<()> {
    for w in watchers {
        let node = nodes
            .iter()
            .find(|n| n.index == *w)
            .context("no such node")?;
        let what = format!(
            "node {w} to {} node {i}",
            if present { "see" } else { "drop" }
        );
        wait_for(&what, || {
            Ok(has_peer(node, i)? == present && has_route(node, i)? == present)
        })
        .with_context(|| node.log())?;
    }
    Ok(())
}

/// Wait for `to` to answer `from` once (a new peer's underlay neighbour
/// may still be resolving), then expect it to answer steadily.
pub fn reach(from: &Pod, to: Ipv4Addr, what: &str) -> Result<()> {
    wait_for(&format!("a first reply: {what}"), || {
        Ok(ping(&from.ns, to, 1)? > 0)
    })?;
    expect_pings(from, to, what)
}
