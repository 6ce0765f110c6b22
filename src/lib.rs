//! osprov: an OS provisioner for Kubernetes.
//!
//! The workspace is split by layer, and the compiler enforces it:
//! - `osprov-api` ([`api`]): the custom resource types;
//! - `osprov-engine` ([`provisioner`], [`ident`], the contract in [`adapter`]): planner,
//!   decisions, inventory, sessions; no Kubernetes client;
//! - `osprov-adapters` ([`adapter`]): Redfish, libvirt, vSphere, the simulator, against the
//!   engine's contract;
//! - this crate: the controller, the CLI and the standalone mode;
//! - `kapi` ([`apiserver`]): the embedded single-node Kubernetes API.
/// The embedded Kubernetes API: the workspace crate `kapi` (crates/kapi).
pub use kapi as apiserver;
pub use osprov_adapters::adapter;
pub use osprov_api as api;
pub use osprov_engine::{ident, provisioner};
pub mod cli;
pub mod controller;
pub mod standalone;
