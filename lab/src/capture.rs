//! Raw Ethernet frames in and out of an interface (AF_PACKET, through
//! `pnet_datalink`), for injecting hand-built frames and capturing what
//! the kernel sends.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pnet_datalink::{Channel, Config, DataLinkReceiver, DataLinkSender};

use crate::netns::Netns;

/// A raw socket bound to one interface of one namespace.
pub struct RawLink {
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
}

impl RawLink {
    /// Open `ifname` in `ns`; reads give up after `read_timeout`.
    pub fn open(ns: &Netns, ifname: &str, read_timeout: Duration) -> Result<RawLink> {
        let ifname = ifname.to_string();
        ns.enter(move || {
            let interface = pnet_datalink::interfaces()
                .into_iter()
                .find(|i| i.name == ifname)
                .with_context(|| format!("no interface {ifname}"))?;
            let config = Config {
                read_timeout: Some(read_timeout),
                read_buffer_size: 65536,
                write_buffer_size: 65536,
                ..Config::default()
            };
            match pnet_datalink::channel(&interface, config)
                .with_context(|| format!("AF_PACKET socket on {ifname}"))?
            {
                Channel::Ethernet(tx, rx) => Ok(RawLink { tx, rx }),
                _ => bail!("{ifname}: not an Ethernet channel"),
            }
        })
    }

    /// Send one frame as it is.
    pub fn send(&mut self, frame: &[u8]) -> Result<()> {
        match self.tx.send_to(frame, None) {
            Some(result) => result.context("sending a raw frame"),
            None => bail!("raw send: no buffer space"),
        }
    }

    /// Collect up to `count` frames that `keep` accepts, for at most `limit`.
    pub fn collect(
        &mut self,
        count: usize,
        limit: Duration,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + limit;
        let mut frames = Vec::new();
        while frames.len() < count && Instant::now() < deadline {
            if let Ok(frame) = self.rx.next()
                && keep(frame)
            {
                frames.push(frame.to_vec());
            }
        }
        frames
    }
}
