//! The kernel's interfaces and namespaces as podswitch uses them, shared
//! by the daemon and the CNI plugin:
//!
//! - [`ethtool`]: an interface's driver, and turning offloads off;
//! - [`netlink`]: interfaces, addresses, routes and neighbours over a
//!   blocking rtnetlink socket, and the `disable_ipv6` sysctl;
//! - [`netns`]: running code inside another network namespace;
//! - [`tap`]: TAP devices, plain or with a virtio-net header and offloads.
//!
//! Every call acts on the calling thread's network namespace.

pub mod ethtool;
pub mod netlink;
pub mod netns;
mod route_socket;
pub mod tap;
