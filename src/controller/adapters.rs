//! [`AdapterFactory`]: the one place that turns an OSDispatcher's `spec.adapter` into an
//! [`Adapter`]. Nothing else in osprov matches on [`AdapterKind`].
//!
//! Building happens in two steps because some adapters need objects from the API first:
//! [`AdapterFactory::inputs`] reads them (the Redfish and vSphere credentials and CA Secrets), and their
//! versions become part of the session fingerprint, so a changed Secret rebuilds the adapter;
//! [`AdapterFactory::build`] then makes the adapter from the spec and those inputs. The simulator
//! registry lives here, so one factory handed to two controllers (tests, a replica pair) makes
//! them share simulated fleets the way two controllers share real hardware.
use super::{libvirt, redfish, vsphere, Scope};
use crate::adapter::simulator::remote::RemoteSimulator;
use crate::adapter::simulator::{SimRegistry, SimulatorAdapter};
use crate::adapter::{Adapter, AdapterError};
use crate::api::{AdapterKind, OSDispatcher};
use crate::provisioner::keys::DispKey;
use std::sync::Arc;

/// Builds the adapter of each dispatcher.
#[derive(Clone, Default)]
pub struct AdapterFactory {
    simulators: Arc<SimRegistry>,
}

/// What an adapter needs read from the API before it can be built.
#[derive(Debug)]
pub enum Inputs {
    /// Nothing (the simulator; the adapters this build does not include).
    None,
    Redfish(Result<redfish::Inputs, AdapterError>),
    Libvirt(Result<libvirt::Inputs, AdapterError>),
    Vsphere(Result<vsphere::Inputs, AdapterError>),
}

impl Inputs {
    /// The part of the session fingerprint that changes when the inputs change (never their
    /// contents: Secret values stay out of it).
    pub fn fingerprint(&self) -> String {
        match self {
            Inputs::None => String::new(),
            Inputs::Redfish(Ok(i)) => format!("|{}", i.version),
            Inputs::Libvirt(Ok(i)) => format!("|{}", i.version),
            Inputs::Vsphere(Ok(i)) => format!("|{}", i.version),
            Inputs::Redfish(Err(e)) | Inputs::Libvirt(Err(e)) | Inputs::Vsphere(Err(e)) => {
                format!("|error: {e}")
            }
        }
    }
}

impl AdapterFactory {
    /// A factory whose simulator dispatchers use `simulators`' fleets.
    pub fn with_simulators(simulators: Arc<SimRegistry>) -> Self {
        AdapterFactory { simulators }
    }

    /// Read what `d`'s adapter needs from the API.
    pub async fn inputs(&self, scope: &Scope, d: &OSDispatcher, ns: &str) -> Inputs {
        match d.spec.adapter {
            AdapterKind::Redfish => Inputs::Redfish(redfish::inputs(scope, d, ns).await),
            AdapterKind::Libvirt => Inputs::Libvirt(libvirt::inputs(scope, d, ns).await),
            AdapterKind::Vsphere => Inputs::Vsphere(vsphere::inputs(scope, d, ns).await),
            AdapterKind::Simulator => Inputs::None,
        }
    }

    /// Build `d`'s adapter from its spec and the inputs [`Self::inputs`] read, its calls counted
    /// in the metrics ([`super::metered`]).
    pub fn build(
        &self,
        key: &DispKey,
        d: &OSDispatcher,
        scope: &Scope,
        inputs: Inputs,
    ) -> Result<Arc<dyn Adapter>, AdapterError> {
        let adapter = self.build_bare(key, d, scope, inputs)?;
        Ok(super::metered::Metered::wrap(
            adapter,
            scope.shared.metrics.clone(),
            key.to_string(),
            d.spec.adapter.as_str(),
        ))
    }

    fn build_bare(
        &self,
        key: &DispKey,
        d: &OSDispatcher,
        scope: &Scope,
        inputs: Inputs,
    ) -> Result<Arc<dyn Adapter>, AdapterError> {
        match (d.spec.adapter, inputs) {
            (AdapterKind::Simulator, _) => {
                let spec = d.spec.simulator.clone().unwrap_or_default();
                if let Some(endpoint) = spec.endpoint.clone() {
                    return Ok(Arc::new(RemoteSimulator::new(
                        &endpoint,
                        &key.namespace,
                        &key.name,
                        spec,
                    )?));
                }
                let fleet = self.simulators.fleet(&key.to_string(), &spec);
                Ok(Arc::new(SimulatorAdapter::new(fleet)))
            }
            (AdapterKind::Redfish, Inputs::Redfish(inputs)) => {
                redfish::build(key, d, scope, inputs?)
            }
            (AdapterKind::Libvirt, Inputs::Libvirt(inputs)) => {
                libvirt::build(key, d, scope, inputs?)
            }
            (AdapterKind::Vsphere, Inputs::Vsphere(inputs)) => {
                vsphere::build(key, d, scope, inputs?)
            }
            (AdapterKind::Redfish | AdapterKind::Libvirt | AdapterKind::Vsphere, _) => Err(
                AdapterError::Config("the adapter's Secrets were not read".into()),
            ),
        }
    }
}
