//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`) for podswitch: the
//! API's semantics over pods, namespaces and policies ([`model`],
//! [`selector`]), and their compilation into per-pod rule sets that the
//! switch evaluates per packet ([`compile`]). Pure: the sources and the
//! switch's policy stage are elsewhere. See `docs/policy.md`.

pub mod compile;
pub mod model;
pub mod selector;

/// The protocols a policy port names: the Services' ones.
pub use podswitch_control::service::ServiceProtocol as Protocol;

#[cfg(test)]
mod tests;

pub use compile::{CompiledPolicies, Verdict, compile};
pub use model::{Direction, Namespace, NetworkPolicy, Pod};
