//! Network-namespace testbeds for podswitch's tests, demos and benchmarks.
//!
//! Everything a [`Lab`] creates carries a prefix unique to the process and
//! the lab, and is removed when the lab is dropped — after a test failure
//! (panic) too. Traffic only ever flows between namespaces the lab made.

pub mod capture;
pub mod cluster;
pub mod cni;
pub mod cpu;
pub mod etcd;
pub mod flat_pods;
pub mod flood;
pub mod host;
pub mod interrupt;
pub mod kernel_node;
pub mod kube_api;
pub mod kube_proxy;
pub mod membership;
pub mod netns;
pub mod ovs_node;
pub mod ping_pong;
pub mod process;
pub mod service_traffic;
pub mod tools;
pub mod traffic;
pub mod tunnel_capture;
pub mod udp_sink;
pub mod unprivileged;

pub use capture::RawLink;
pub use kernel_node::KernelVxlan;
pub use netns::{Lab, Netns, format_mac, parse_mac};
pub use process::Process;

/// Fail with a clear message unless running as root, which labs need.
pub fn require_root() -> anyhow::Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        anyhow::bail!("this builds network namespaces: run it as root (with sudo if you are not)")
    }
}
