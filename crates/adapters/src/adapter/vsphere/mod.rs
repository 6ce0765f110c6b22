//! The vSphere adapter: virtual machines behind vCenter (or ESXi) as hosts, reprovisioned by
//! booting an installer ISO or by swapping in a copy of a template's disk, over vCenter's vim25
//! SOAP API.
//!
//! - [`soap`]: the SOAP client (sessions, faults, bounded calls); [`tls`]: its HTTP client and
//!   certificate trust (CA bundle or pinned thumbprint).
//! - [`model`], [`steps`] and [`template`]: pure — VMs read from property-collector answers, the
//!   reconfigure bodies, and the step machines of the `iso` and `template` strategies.
//! - `adapter`, `work`, `template_work`, `events`: [`VsphereAdapter`], the workers that perform
//!   the steps, and the `WaitForUpdatesEx` change feed.
mod adapter;
mod events;
pub mod model;
pub mod soap;
pub mod steps;
pub mod template;
mod template_work;
pub mod tls;
mod work;

pub use adapter::{VsphereAdapter, VsphereConfig};
