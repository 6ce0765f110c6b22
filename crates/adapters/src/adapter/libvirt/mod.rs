//! The libvirt adapter: KVM/QEMU and Xen domains (any libvirt driver) as hosts.
//!
//! - [`xml`], [`installer`], [`steps`], [`iso_steps`] and [`uri`]: pure — the domain XML osprov
//!   reads and rewrites, its metadata record, the step machines of the `image` and `iso`
//!   strategies, and which connection URIs are allowed.
//!   They build without the `libvirt` feature, so their unit tests always run.
//! - `conn`, `events`, `adapter`, `image`, `iso`, `drive` (feature `libvirt`, linking libvirt through the
//!   `virt` crate, libvirt's own Rust bindings): shared connections with credentials, libvirt's
//!   event loop and lifecycle callbacks, [`LibvirtAdapter`] itself, and the two strategies'
//!   performers.
//!
//! One adapter serves every libvirt driver; what differs between QEMU and Xen (driver names, disk
//! buses, `xen:///system` permissions) is in the domain XML osprov leaves as it is. See
//! `docs/libvirt.md` for what was tested.
pub mod installer;
pub mod iso_steps;
pub mod seed;
pub mod steps;
pub mod uri;
pub mod xml;

#[cfg(feature = "libvirt")]
mod adapter;
#[cfg(feature = "libvirt")]
mod conn;
#[cfg(feature = "libvirt")]
mod drive;
#[cfg(feature = "libvirt")]
mod events;
#[cfg(feature = "libvirt")]
mod image;
#[cfg(feature = "libvirt")]
mod iso;

#[cfg(feature = "libvirt")]
pub use adapter::{LibvirtAdapter, LibvirtConfig};
#[cfg(feature = "libvirt")]
pub use conn::{shared_connection, Credentials};
