//! The embedded, single-node Kubernetes API for osprov's kinds.
//!
//! `schema` (structural schema: pruning, defaults, validation, CEL) and `ssa` (server-side apply
//! and managedFields) are pure modules; the rest of the server lives beside them.
pub mod schema;
pub mod ssa;
