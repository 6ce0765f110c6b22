//! The vSphere adapter: virtual machines behind vCenter (or ESXi) as hosts, reprovisioned by
//! booting an installer ISO, over vCenter's vim25 SOAP API.
//!
//! - [`soap`]: the SOAP client (sessions, faults, bounded calls); [`tls`]: its HTTP client and
//!   certificate trust (CA bundle or pinned thumbprint).
//! - [`model`] and [`steps`]: pure — VMs read from property-collector answers, the reconfigure
//!   bodies, and the `iso` strategy's step machine.
//! - `adapter`, `work`, `events`: [`VsphereAdapter`], the worker that performs the steps, and the
//!   `WaitForUpdatesEx` change feed.
mod adapter;
mod events;
pub mod model;
pub mod soap;
pub mod steps;
pub mod tls;
mod work;

pub use adapter::{VsphereAdapter, VsphereConfig};
