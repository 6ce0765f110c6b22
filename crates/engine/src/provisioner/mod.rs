//! The provisioner engine: everything between the adapters and Kubernetes, with no Kubernetes
//! client inside.
//!
//! - [`plan`], [`decision`] and [`status`]: pure decisions (request + observed world → action →
//!   the whole decision: claim, status, effects);
//! - [`keys`]: a host or a dispatcher within its namespace;
//! - [`occupancy`]: who holds which host and how many reprovision slots are in use;
//! - [`inventory`] and [`session`]: per-dispatcher sessions (subscribe, discover, keep the cache
//!   current) and the in-memory inventory cache the controller reads at memory speed.
pub mod decision;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod inventory;
pub mod keys;
pub mod occupancy;
pub mod plan;
pub mod session;
pub mod status;
