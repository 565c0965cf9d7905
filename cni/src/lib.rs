//! The podswitch CNI plugin as a library: the protocol (`spec`), the
//! commands, the address allocator and the pod's veth. The
//! `podswitch-cni` binary (`main.rs`) reads the environment and stdin and
//! hands them to [`commands::run`]; the fuzz targets in `cni/fuzz/` feed
//! the parsers directly.

pub mod commands;
pub mod ipam;
pub mod pod_link;
pub mod spec;
