//! The etcd membership source: etcd's v3 API through its JSON gateway
//! (`POST /v3/...` over HTTP, keys and values base64), Flannel's layout
//! ([`super::flannel`]).
//!
//! A session: check `<prefix>/config` against this node; claim this
//! node's subnet key with a lease (a transaction: taken only if absent, or
//! already this node's); list the subnets; watch them from the listed
//! revision, renewing the lease every third of its TTL. Any failure ends
//! the session: the peers stay as they were, the source is reported
//! unreachable from then on, and the next session re-lists and watches
//! again. A clean stop revokes the lease, so the other nodes drop this
//! one at once; a killed daemon's lease expires after its TTL.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use crossbeam::channel::{RecvTimeoutError, Sender, unbounded};
use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::{Value, json};

use super::flannel::{
    NetworkConfig, SubnetLease, config_key, parse_subnet_key, subnet_key, subnets_prefix,
};
use super::{Applied, EtcdSettings, Follower, MembershipSource, Plane, Reachability};
use crate::config::{Config, PeerConfig};
use crate::mac::MacAddr;

/// How long one call to etcd may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between sessions while etcd does not answer.
const RETRY: Duration = Duration::from_secs(1);

/// Start following etcd for the node configured as `config`; `owned`
/// are the peers restored from the saved state that etcd, not the file,
/// put there (removed at the first listing if etcd no longer has them).
/// Stopping the follower revokes this node's lease, so the other nodes
/// drop it now.
pub fn start(config: &Config, plane: Arc<dyn Plane>, owned: Vec<PeerConfig>) -> Result<Follower> {
    let lease = SubnetLease::of(config).map_err(|e| anyhow!(e))?.to_json();
    let config = config.clone();
    Follower::spawn(move |stop| {
        Source {
            settings: config.etcd.clone(),
            config,
            lease,
            plane,
            applied: Applied::owning(owned),
            stop,
            reachability: Reachability::new("etcd"),
        }
        .run();
    })
}

/// The pod CIDR etcd gives the node whose configuration file is `text`
/// and leaves `pod_cidr` out, as flanneld takes one: the subnet a lease
/// with this node's `PublicIP` holds, or else the lowest free subnet of
/// the network, claimed in a transaction (a subnet another node took
/// meanwhile is passed over). `None` unless `membership = "etcd"`.
pub fn assign_pod_cidr(text: &str) -> Result<Option<Ipv4Net>> {
    /// What of the file this needs (the rest is checked later).
    #[derive(Deserialize)]
    struct Node {
        node_ip: IpAddr,
        #[serde(default)]
        membership: MembershipSource,
        #[serde(default = "crate::config::default_vni")]
        vni: u32,
        #[serde(default)]
        router_mac: Option<MacAddr>,
        #[serde(default)]
        etcd: EtcdSettings,
    }
    let node: Node = toml::from_str(text).context("reading the configuration")?;
    if node.membership != MembershipSource::Etcd || node.etcd.problem().is_some() {
        return Ok(None);
    }
    let mac = node
        .router_mac
        .unwrap_or_else(|| MacAddr::derived_from(node.node_ip));
    let lease = SubnetLease::new(node.node_ip, node.vni, mac).map_err(|e| anyhow!(e))?;
    let value = lease.to_json();
    let mut errors = Vec::new();
    for endpoint in &node.etcd.endpoints {
        let etcd = Etcd::new(endpoint);
        match assign_from(&etcd, &node.etcd, &value, lease.public_ip) {
            Ok(cidr) => {
                tracing::info!(pod_cidr = %cidr, "membership: etcd assigned this node's pod CIDR");
                return Ok(Some(cidr));
            }
            Err(e) => errors.push(format!("{endpoint}: {e:#}")),
        }
    }
    bail!(
        "pod_cidr is left to etcd, which gave none: {}",
        errors.join("; ")
    )
}

fn assign_from(
    etcd: &Etcd,
    settings: &EtcdSettings,
    value: &str,
    public_ip: Ipv4Addr,
) -> Result<Ipv4Net> {
    let key = config_key(&settings.prefix);
    let network = etcd
        .get(&key)?
        .with_context(|| format!("no network config at {key}"))?;
    let network = NetworkConfig::parse(&network).map_err(|e| anyhow!("{key}: {e}"))?;
    let subnets = subnets_prefix(&settings.prefix);
    // A few rounds: each loses a subnet only to a node that took it first.
    for _ in 0..16 {
        let (records, _) = etcd.list(&subnets)?;
        let leases: Vec<(Ipv4Net, &Vec<u8>)> = records
            .iter()
            .filter_map(|(k, v)| Some((parse_subnet_key(&String::from_utf8_lossy(k))?, v)))
            .collect();
        let candidate = match leases
            .iter()
            .find(|(_, v)| SubnetLease::public_ip(v) == Some(public_ip))
        {
            Some((own, _)) => *own,
            None => {
                let taken: Vec<Ipv4Net> = leases.iter().map(|(net, _)| *net).collect();
                network
                    .free_subnet(&taken)
                    .with_context(|| format!("no free subnet left in {}", network.network))?
            }
        };
        let key = subnet_key(&settings.prefix, candidate);
        if etcd
            .try_claim(&key, value, public_ip, settings.lease_ttl_s)?
            .is_ok()
        {
            return Ok(candidate);
        }
    }
    bail!("every free subnet was taken by other nodes while this one tried")
}

struct Source {
    settings: EtcdSettings,
    config: Config,
    /// This node's lease value.
    lease: String,
    plane: Arc<dyn Plane>,
    applied: Applied,
    stop: Arc<AtomicBool>,
    reachability: Reachability,
}

/// Keys under a prefix and their values, as etcd holds them.
type Records = BTreeMap<Vec<u8>, Vec<u8>>;

/// One watch event, or the end of the watch.
enum Watched {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
    Ended(String),
}

impl Source {
    fn run(&mut self) {
        self.reachability.report(&*self.plane, None);
        let mut attempt = 0usize;
        while !self.stopped() {
            let endpoint = self.settings.endpoints[attempt % self.settings.endpoints.len()].clone();
            attempt += 1;
            let error = match self.session(&Etcd::new(&endpoint)) {
                Ok(()) => break,
                Err(e) => format!("{endpoint}: {e:#}"),
            };
            self.reachability.failed(&*self.plane, error);
            let until = Instant::now() + RETRY;
            while !self.stopped() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// One session; returns Ok only once stopped.
    fn session(&mut self, etcd: &Etcd) -> Result<()> {
        let prefix = &self.settings.prefix;
        let network = etcd
            .get(&config_key(prefix))?
            .with_context(|| format!("no network config at {}", config_key(prefix)))?;
        NetworkConfig::parse(&network)
            .and_then(|n| n.check(&self.config))
            .map_err(|e| anyhow!("{}: {e}", config_key(prefix)))?;
        let own_key = subnet_key(prefix, self.config.pod_cidr);
        let public_ip = SubnetLease::public_ip(self.lease.as_bytes()).context("no IPv4 node_ip")?;
        let lease = etcd
            .try_claim(&own_key, &self.lease, public_ip, self.settings.lease_ttl_s)?
            .map_err(|holder| {
                anyhow!("{own_key} is another node's: {holder}; give this node a free pod_cidr")
            })?;
        let (mut records, revision) = etcd.list(&subnets_prefix(prefix))?;
        records.remove(own_key.as_bytes());
        self.reachability.answered(&*self.plane, &etcd.endpoint);
        let wanted = self.desired(&records);
        self.applied.apply(&*self.plane, &wanted);
        tracing::info!(
            lease,
            revision,
            peers = wanted.len(),
            "membership: following etcd"
        );

        let (events, watched) = unbounded();
        etcd.watch(&subnets_prefix(prefix), revision + 1, events)?;
        let renew = Duration::from_secs(u64::from(self.settings.lease_ttl_s) / 3)
            .max(Duration::from_secs(1));
        let mut next_renewal = Instant::now() + renew;
        loop {
            if self.stopped() {
                if let Err(e) = etcd.revoke(lease) {
                    tracing::warn!("membership: lease not revoked: {e:#}");
                }
                return Ok(());
            }
            if Instant::now() >= next_renewal {
                etcd.keep_alive(lease)?;
                next_renewal = Instant::now() + renew;
            }
            let mut changed = false;
            match watched.recv_timeout(Duration::from_millis(200)) {
                Ok(first) => {
                    for event in std::iter::once(first).chain(watched.try_iter()) {
                        changed = true;
                        match event {
                            Watched::Put { key, value } if key != own_key.as_bytes() => {
                                records.insert(key, value);
                            }
                            Watched::Delete { key } if key == own_key.as_bytes() => {
                                bail!("this node's lease {own_key} was deleted");
                            }
                            Watched::Delete { key } => {
                                records.remove(&key);
                            }
                            Watched::Ended(why) => bail!("the watch ended: {why}"),
                            Watched::Put { .. } => {}
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => bail!("the watch ended"),
            }
            if changed {
                let wanted = self.desired(&records);
                self.applied.apply(&*self.plane, &wanted);
            }
        }
    }

    /// The peers the subnet records describe (records that are not
    /// vxlan leases on this VNI are logged and left out).
    fn desired(&self, records: &Records) -> BTreeMap<IpAddr, PeerConfig> {
        let mut peers = BTreeMap::new();
        for (key, value) in records {
            let key = String::from_utf8_lossy(key);
            let Some(cidr) = parse_subnet_key(&key) else {
                tracing::warn!(%key, "membership: not a subnet key, ignored");
                continue;
            };
            match SubnetLease::peer(value, cidr, self.config.vni) {
                Ok(peer) if peer.node_ip == self.config.node_ip => {}
                Ok(peer) => {
                    if let Some(other) = peers.insert(peer.node_ip, peer) {
                        tracing::warn!(
                            %key,
                            other = %other.pod_cidr,
                            "membership: two subnet leases name this PublicIP; the later key wins"
                        );
                    }
                }
                Err(e) => tracing::warn!(%key, "membership: ignored: {e}"),
            }
        }
        peers
    }
}

/// An etcd member's JSON gateway.
struct Etcd {
    endpoint: String,
    agent: ureq::Agent,
}

#[derive(Deserialize)]
struct KeyValue {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

impl Etcd {
    fn new(endpoint: &str) -> Etcd {
        let agent = ureq::Agent::config_builder()
            .timeout_connect(Some(CALL_TIMEOUT))
            .timeout_recv_response(Some(CALL_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .new_agent();
        Etcd {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            agent,
        }
    }

    /// One call: `body` to `/v3/<path>`, its JSON answer.
    fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}/v3/{path}", self.endpoint);
        let mut answer = self
            .agent
            .post(&url)
            .config()
            .timeout_global(Some(CALL_TIMEOUT))
            .build()
            .send_json(body)
            .with_context(|| format!("POST {url}"))?;
        let value: Value = answer
            .body_mut()
            .read_json()
            .with_context(|| format!("POST {url}"))?;
        if let Some(error) = value.get("error") {
            bail!("POST {url}: {error}");
        }
        Ok(value)
    }

    /// The value at `key`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let answer = self.call("kv/range", &json!({ "key": B64.encode(key) }))?;
        Ok(kvs(&answer["kvs"])?.into_iter().next().map(|(_, v)| v))
    }

    /// Every key under `prefix` with its value, and the revision read.
    fn list(&self, prefix: &str) -> Result<(Records, i64)> {
        let answer = self.call(
            "kv/range",
            &json!({ "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)) }),
        )?;
        let revision =
            int(&answer["header"]["revision"]).context("a range answer without a revision")?;
        Ok((kvs(&answer["kvs"])?.into_iter().collect(), revision))
    }

    /// Write `value` (the lease of the node at `public_ip`) at `key`
    /// under a new lease of `ttl` seconds, only if the key is absent or
    /// holds a lease of the same `PublicIP` (this node's, left by a daemon
    /// that was killed or by the flanneld it replaces), each in one
    /// transaction, so two nodes never hold one subnet. The lease's ID, or
    /// `None` (and the holder's record) if another node holds the key.
    fn try_claim(
        &self,
        key: &str,
        value: &str,
        public_ip: Ipv4Addr,
        ttl: u32,
    ) -> Result<std::result::Result<i64, String>> {
        let granted = self.call("lease/grant", &json!({ "TTL": ttl.to_string() }))?;
        let lease = int(&granted["ID"]).context("a lease grant without an ID")?;
        let k = B64.encode(key);
        let put = json!({ "request_put": {
            "key": k, "value": B64.encode(value), "lease": lease.to_string() } });
        let absent = json!({ "key": k, "target": "VERSION", "result": "EQUAL", "version": "0" });
        let txn = json!({
            "compare": [absent],
            "success": [put],
            "failure": [{ "request_range": { "key": k } }],
        });
        let answer = self.call("kv/txn", &txn)?;
        if answer["succeeded"].as_bool() == Some(true) {
            return Ok(Ok(lease));
        }
        let held = answer["responses"][0]["response_range"]["kvs"][0]["value"].clone();
        let record = decode(&held)?;
        if SubnetLease::public_ip(&record) == Some(public_ip) {
            let unchanged =
                json!({ "key": k, "target": "VALUE", "result": "EQUAL", "value": held });
            let swap = json!({ "compare": [unchanged], "success": [put] });
            if self.call("kv/txn", &swap)?["succeeded"].as_bool() == Some(true) {
                return Ok(Ok(lease));
            }
        }
        let _ = self.revoke(lease);
        Ok(Err(String::from_utf8_lossy(&record).into_owned()))
    }

    /// Renew `lease`; fails if it has expired.
    fn keep_alive(&self, lease: i64) -> Result<()> {
        let answer = self.call("lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        if int(&answer["result"]["TTL"]).unwrap_or(0) <= 0 {
            bail!("this node's lease {lease} has expired");
        }
        Ok(())
    }

    /// Revoke `lease`, deleting the keys attached to it.
    fn revoke(&self, lease: i64) -> Result<()> {
        self.call("lease/revoke", &json!({ "ID": lease.to_string() }))?;
        Ok(())
    }

    /// Watch the keys under `prefix` from `revision` on, sending what
    /// happens to `events` from a thread of its own, which ends with the
    /// watch or when `events` is dropped.
    fn watch(&self, prefix: &str, revision: i64, events: Sender<Watched>) -> Result<()> {
        let url = format!("{}/v3/watch", self.endpoint);
        let request = json!({ "create_request": {
            "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)),
            "start_revision": revision.to_string() } });
        let answer = self
            .agent
            .post(&url)
            .send_json(request)
            .with_context(|| format!("POST {url}"))?;
        let reader = answer.into_body().into_reader();
        std::thread::Builder::new()
            .name("etcd-watch".into())
            .spawn(move || {
                let why = forward_watch(reader, &events);
                let _ = events.send(Watched::Ended(why));
            })
            .context("spawning the watch thread")?;
        Ok(())
    }
}

/// Read the watch stream (one JSON object per answer) into `events`
/// until it ends, fails or nobody listens; why it stopped.
fn forward_watch(reader: impl Read, events: &Sender<Watched>) -> String {
    for message in serde_json::Deserializer::from_reader(reader).into_iter::<Value>() {
        let message = match message {
            Ok(m) => m,
            Err(e) => return format!("the watch stream broke: {e}"),
        };
        let Some(result) = message.get("result") else {
            return format!("etcd ended the watch: {message}");
        };
        if result["canceled"].as_bool() == Some(true) {
            return format!("etcd canceled the watch: {result}");
        }
        for event in result["events"].as_array().into_iter().flatten() {
            let (Ok(key), Ok(value)) = (decode(&event["kv"]["key"]), decode(&event["kv"]["value"]))
            else {
                return format!("an undecodable watch event: {event}");
            };
            let watched = if event["type"].as_str() == Some("DELETE") {
                Watched::Delete { key }
            } else {
                Watched::Put { key, value }
            };
            if events.send(watched).is_err() {
                return "the session ended".into();
            }
        }
    }
    "etcd closed the watch".into()
}

/// The end of the key range of every key starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A gateway integer (int64s come as strings).
fn int(value: &Value) -> Option<i64> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| value.as_i64())
}

/// A base64 field, absent meaning empty.
fn decode(value: &Value) -> Result<Vec<u8>> {
    Ok(B64.decode(value.as_str().unwrap_or(""))?)
}

/// The (key, value) pairs of a range answer's `kvs`.
fn kvs(value: &Value) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    if value.is_null() {
        return Ok(Vec::new());
    }
    let kvs: Vec<KeyValue> = serde_json::from_value(value.clone())?;
    kvs.into_iter()
        .map(|kv| Ok((B64.decode(kv.key)?, B64.decode(kv.value)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_cover_every_key_under_the_prefix() {
        assert_eq!(prefix_end("/a/subnets/"), b"/a/subnets0");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
        assert_eq!(prefix_end(""), vec![0]);
    }

    #[test]
    fn a_watch_stream_becomes_events_and_its_end_is_told() {
        let put = B64.encode("/p/subnets/10.244.2.0-24");
        let stream = format!(
            "{{\"result\":{{\"header\":{{\"revision\":\"5\"}},\"created\":true}}}}\n\
             {{\"result\":{{\"events\":[{{\"kv\":{{\"key\":\"{put}\",\"value\":\"{}\"}}}},\
             {{\"type\":\"DELETE\",\"kv\":{{\"key\":\"{put}\"}}}}]}}}}\n\
             {{\"result\":{{\"canceled\":true,\"compact_revision\":\"3\"}}}}\n",
            B64.encode("v")
        );
        let (events, got) = unbounded();
        let why = forward_watch(stream.as_bytes(), &events);
        assert!(why.contains("canceled"), "{why}");
        let got: Vec<Watched> = got.try_iter().collect();
        assert!(
            matches!(&got[..], [Watched::Put { value, .. }, Watched::Delete { .. }] if value == b"v")
        );
        let (events, _) = unbounded();
        assert!(
            forward_watch(
                &b"{\"result\":{\"events\":[{\"kv\":{\"key\":\"!!\"}}]}}"[..],
                &events
            )
            .contains("undecodable")
        );
        assert!(forward_watch(&b"{\"error\":{\"grpc_code\":14}}"[..], &events).contains("ended"));
        assert!(forward_watch(&b"{\"res"[..], &events).contains("broke"));
    }

    #[test]
    fn gateway_integers_come_as_strings_or_numbers() {
        assert_eq!(
            int(&json!("7587862335155093507")),
            Some(7587862335155093507)
        );
        assert_eq!(int(&json!(12)), Some(12));
        assert_eq!(int(&json!(null)), None);
    }
}
