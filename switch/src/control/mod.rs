//! The control plane's socket: the protocol, the daemon's server and the
//! client the CLI and the CNI plugin use.

pub mod client;
pub mod protocol;
pub mod server;

pub use client::{Client, ClientError};
pub use protocol::{Request, Response};
pub use server::{ControlServer, Handler};
