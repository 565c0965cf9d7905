//! A real etcd (Debian's `etcd-server`) inside a lab namespace, its data
//! in a directory of the test's, and the few calls a test makes to it
//! (through its JSON gateway, with curl in the namespace): writing
//! Flannel's records as flanneld would, reading them back, granting and
//! revoking leases. Stopped by PID, and its data removed, when dropped.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::netns::Netns;
use crate::process::Process;

/// etcd's client port.
pub const ETCD_PORT: u16 = 2379;

/// An etcd server listening on `ip` inside a namespace.
pub struct EtcdServer {
    ns: Netns,
    ip: Ipv4Addr,
    dir: PathBuf,
    process: Option<Process>,
}

impl EtcdServer {
    /// Start etcd in `ns`, serving clients on `ip` (an address of the
    /// namespace), keeping its data and log in `dir`; returns once it
    /// answers.
    pub fn start(ns: &Netns, ip: Ipv4Addr, dir: &Path) -> Result<EtcdServer> {
        std::fs::create_dir_all(dir)?;
        let mut server = EtcdServer {
            ns: ns.clone(),
            ip,
            dir: dir.into(),
            process: None,
        };
        server.launch()?;
        Ok(server)
    }

    /// `http://ip:2379`.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{ETCD_PORT}", self.ip)
    }

    /// Start (again, on the same data) and wait until it answers.
    pub fn launch(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("etcd.log"))?;
        let peer = "http://127.0.0.1:2380";
        let mut cmd = self.ns.command("etcd")?;
        cmd.args(["--name", "lab", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &self.endpoint()])
            .args(["--advertise-client-urls", &self.endpoint()])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &format!("lab={peer}")]);
        self.process = Some(Process::spawn_logged(&mut cmd, "etcd", log)?);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self
            .call("kv/range", &json!({ "key": B64.encode("/") }))
            .is_err()
        {
            if Instant::now() > deadline {
                bail!("etcd did not answer within 30 s: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Stop it with SIGTERM (by PID); true if it exited within 10 s.
    pub fn stop(&mut self) -> bool {
        self.process
            .take()
            .is_none_or(|mut p| p.signal_and_wait(Signal::SIGTERM, Duration::from_secs(10)))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
    }

    /// One gateway call: `body` to `/v3/<path>`, its answer.
    pub fn call(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}/v3/{path}", self.endpoint());
        let output = self
            .ns
            .command("curl")?
            .args(["-sS", "--max-time", "5", "-X", "POST", &url, "-d"])
            .arg(body.to_string())
            .output()
            .context("running curl")?;
        if !output.status.success() {
            bail!(
                "POST {url}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let answer: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("POST {url}: {}", String::from_utf8_lossy(&output.stdout)))?;
        if let Some(error) = answer.get("error") {
            bail!("POST {url}: {error}");
        }
        Ok(answer)
    }

    /// Write `value` at `key`, attached to `lease` if given.
    pub fn put(&self, key: &str, value: &str, lease: Option<i64>) -> Result<()> {
        let mut body = json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if let Some(lease) = lease {
            body["lease"] = lease.to_string().into();
        }
        self.call("kv/put", &body)?;
        Ok(())
    }

    /// A new lease of `ttl` seconds; its ID.
    pub fn grant(&self, ttl: u32) -> Result<i64> {
        let answer = self.call("lease/grant", &json!({ "TTL": ttl.to_string() }))?;
        answer["ID"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .context("a lease grant without an ID")
    }

    /// Revoke `lease`, deleting its keys.
    pub fn revoke(&self, lease: i64) -> Result<()> {
        self.call("lease/revoke", &json!({ "ID": lease.to_string() }))?;
        Ok(())
    }

    /// Every key under `prefix` with its value, as text.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let answer = self.call(
            "kv/range",
            &json!({ "key": B64.encode(prefix), "range_end": B64.encode(end) }),
        )?;
        let text = |v: &Value| -> Result<String> {
            Ok(String::from_utf8(B64.decode(v.as_str().unwrap_or(""))?)?)
        };
        answer["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| Ok((text(&kv["key"])?, text(&kv["value"])?)))
            .collect()
    }
}

/// Stops etcd and removes its data (etcd preallocates 64 MB of log), keeping
/// its log.
impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(self.dir.join("data"));
    }
}
