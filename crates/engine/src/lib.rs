//! osprov's engine: what decides, without I/O of its own and without a Kubernetes client.
//!
//! - [`provisioner`]: the planner and decisions (pure functions over data), the inventory cache,
//!   the occupancy book and the dispatcher sessions that drive adapters;
//! - [`adapter`]: the contract every adapter implements ([`adapter::Adapter`]), the host
//!   configuration it is handed ([`adapter::configdrive`]) and the operation-record store it
//!   keeps its progress in ([`adapter::store`]);
//! - [`ident`]: names and hashes shared by every layer.
//!
//! The adapters (`osprov-adapters`) depend on this crate, never the other way round; the
//! controller (the `osprov` crate) performs what the engine decides.
use osprov_api as api;

pub mod adapter;
pub mod ident;
pub mod provisioner;
