//! osprov: an OS provisioner for Kubernetes.
//!
//! The crate is split by concern: `api` holds the custom resource types, `apiserver` the embedded
//! single-node Kubernetes API used by `osprov standalone` and the integration tests.
pub mod adapter;
pub mod api;
pub mod apiserver;
pub mod cli;
pub mod controller;
pub mod provisioner;
pub mod standalone;
