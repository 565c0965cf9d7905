//! The control plane's socket: the protocol and the client the CLI and
//! the CNI plugin use (from `podswitch-control`), and the daemon's server.

pub mod server;

pub use podswitch_control::{client, protocol};

pub use client::{Client, ClientError};
pub use protocol::{Request, Response};
pub use server::{ControlServer, Handler};
