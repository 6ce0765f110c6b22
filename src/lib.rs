//! osprov: an OS provisioner for Kubernetes.
//!
//! The crate is split by concern: `api` holds the custom resource types, `apiserver` the embedded
//! single-node Kubernetes API used by `osprov standalone` and the integration tests.
pub mod adapter;
pub mod api;
/// The embedded Kubernetes API: the workspace crate `kapi` (crates/kapi).
pub use kapi as apiserver;
pub mod cli;
pub mod controller;
pub mod ident;
pub mod provisioner;
pub mod standalone;
