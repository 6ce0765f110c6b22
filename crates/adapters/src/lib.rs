//! osprov's adapters: one per kind of management software, each against the engine's contract
//! (`osprov_engine::adapter`), none aware of Kubernetes or of the controller.
//!
//! [`adapter`] re-exports the contract next to the adapters, so an adapter names
//! `crate::adapter::Adapter` and `crate::adapter::redfish` alike.
use osprov_api as api;
use osprov_engine::ident;

/// The contract (re-exported from the engine) and the adapters.
pub mod adapter {
    pub use osprov_engine::adapter::*;

    pub mod bootiso;
    pub mod libvirt;
    pub mod redfish;
    pub mod simulator;
    pub mod tls;
    pub mod vsphere;
}
