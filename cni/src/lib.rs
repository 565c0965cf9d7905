//! The podswitch CNI plugin as a library: the protocol (`spec`), the
//! commands, the address allocator, the pod's interface and what the
//! runtime asks of it (`requests`: a fixed address or MAC). The
//! `podswitch-cni` binary (`main.rs`) reads the environment and stdin and
//! hands them to [`commands::run`]; the fuzz targets in `cni/fuzz/` feed
//! the parsers directly.

pub mod commands;
pub mod ipam;
pub mod pod_link;
pub mod requests;
pub mod spec;
