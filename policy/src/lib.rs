//! Kubernetes NetworkPolicy (`networking.k8s.io/v1`) for podswitch: the
//! API's semantics over pods, namespaces and policies ([`model`],
//! [`selector`]), and their compilation into per-pod rule sets that the
//! switch evaluates per packet ([`compile`]). Pure: the sources and the
//! switch's policy stage are elsewhere. See `docs/policy.md`.

pub mod compile;

/// The objects policy is about (they live in `podswitch-control`, whose
/// protocol carries them).
pub use podswitch_control::policy as model;
pub use podswitch_control::policy::{Protocol, selector};

#[cfg(test)]
mod tests;

pub use compile::{CompiledPolicies, DirectionPolicy, PodPolicy, Verdict, compile, compile_for};
pub use model::{Cluster, Direction, Namespace, NetworkPolicy, Pod};
