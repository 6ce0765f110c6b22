//! Discovery: the Systems collection → [`HostInfo`]s, and the per-system facts worth caching
//! (resource path, MACs, where the CD virtual media lives).
//!
//! Everything is reached by `@odata.id` links. Virtual media is looked for under the System first
//! (`ComputerSystem.VirtualMedia`, Redfish 1.11+, sushy-tools, newer iDRAC/iLO) and then under each
//! Manager in `Links.ManagedBy` (older iDRAC, iLO 5, most OpenBMC builds); the first device whose
//! `MediaTypes` has `CD` or `DVD` is used. MACs and the media location are fetched once per system
//! and cached: a steady-state discovery costs one GET for the collection and one per system. The
//! last read of each system is kept too: a reprovision takes the boot targets it allows and its
//! links from there instead of reading the system again.
use super::client::{Client, RedfishError};
use super::model::{Collection, ComputerSystem, EthernetInterface, Manager, VirtualMedia};
use crate::adapter::HostInfo;
use crate::api::{HostProvisioningState, PowerState};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};

/// What the adapter keeps about one system between calls.
#[derive(Clone, Debug, Default)]
pub struct SystemCache {
    /// `@odata.id` of the system.
    pub path: String,
    pub macs: Option<Vec<String>>,
    /// `@odata.id` of the CD virtual media device, once found.
    pub cd_media: Option<String>,
    /// The device's `EjectMedia` target, once read.
    pub cd_eject: Option<String>,
    /// The system as last read (by discovery or a reprovision).
    pub system: Option<ComputerSystem>,
    /// The host name the last discovery gave it.
    pub name: Option<String>,
}

/// One discovered system: its resource and the cached facts.
pub struct Found {
    pub system: ComputerSystem,
    pub macs: Vec<String>,
}

/// The service root's link to the Systems collection (the root is read once per client).
pub async fn systems_path(client: &Client) -> Result<String, RedfishError> {
    let root = client.root().await?;
    root.systems.map(|l| l.id).ok_or_else(|| {
        RedfishError::Unsupported("the Redfish service root has no Systems collection".into())
    })
}

/// Read every selected system (at most `parallel` GETs at once).
pub async fn read_systems(
    client: &Client,
    cache: &std::sync::Mutex<HashMap<String, SystemCache>>,
    selector: &[String],
    parallel: usize,
) -> Result<Vec<Found>, RedfishError> {
    let collection: Collection = client.get(&systems_path(client).await?).await?;
    let found: Vec<Option<Found>> = stream::iter(collection.members)
        .map(|link| async move { read_one(client, cache, &link.id, selector).await })
        .buffer_unordered(parallel.max(1))
        .try_collect()
        .await?;
    let mut found: Vec<Found> = found.into_iter().flatten().collect();
    found.sort_by(|a, b| a.system.id.cmp(&b.system.id));
    Ok(found)
}

async fn read_one(
    client: &Client,
    cache: &std::sync::Mutex<HashMap<String, SystemCache>>,
    path: &str,
    selector: &[String],
) -> Result<Option<Found>, RedfishError> {
    let mut system: ComputerSystem = match client.get(path).await {
        Ok(s) => s,
        // Gone between the collection and the GET.
        Err(RedfishError::Status { status: 404, .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if system.odata_id.is_empty() {
        system.odata_id = path.to_string();
    }
    if system.id.is_empty() {
        system.id = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(path)
            .to_string();
    }
    let selected = selector.is_empty()
        || selector
            .iter()
            .any(|s| *s == system.id || Some(s.as_str()) == system.name.as_deref());
    if !selected {
        return Ok(None);
    }
    let cached = lock(cache).get(&system.id).and_then(|c| c.macs.clone());
    let macs = match cached {
        Some(m) => m,
        None => {
            let macs = read_macs(client, &system).await.unwrap_or_default();
            macs
        }
    };
    let mut c = lock(cache);
    let entry = c.entry(system.id.clone()).or_default();
    entry.path = system.odata_id.clone();
    entry.macs = Some(macs.clone());
    entry.system = Some(system.clone());
    drop(c);
    Ok(Some(Found { system, macs }))
}

async fn read_macs(client: &Client, system: &ComputerSystem) -> Result<Vec<String>, RedfishError> {
    let Some(link) = system.ethernet_interfaces.as_ref() else {
        return Ok(Vec::new());
    };
    let nics: Collection = client.get(&link.id).await?;
    let mut macs = Vec::new();
    for nic in nics.members {
        let n: EthernetInterface = client.get(&nic.id).await?;
        if let Some(mac) = n.mac.or(n.permanent_mac).filter(|m| !m.is_empty()) {
            macs.push(mac.to_lowercase());
        }
    }
    Ok(macs)
}

/// Find (and cache) the CD virtual media device of a system; returns the device as read now.
pub async fn cd_media(
    client: &Client,
    cache: &std::sync::Mutex<HashMap<String, SystemCache>>,
    system: &ComputerSystem,
) -> Result<VirtualMedia, RedfishError> {
    let known = lock(cache).get(&system.id).and_then(|c| c.cd_media.clone());
    if let Some(path) = known {
        let device: VirtualMedia = client.get(&path).await?;
        remember_eject(cache, &system.id, &device);
        return Ok(device);
    }
    let device = find_media(client, system, VirtualMedia::takes_cd)
        .await?
        .ok_or_else(|| {
            RedfishError::Unsupported(format!(
                "system {} has no CD/DVD virtual media (looked under the System and its Managers)",
                system.id
            ))
        })?;
    lock(cache).entry(system.id.clone()).or_default().cd_media = Some(device.odata_id.clone());
    remember_eject(cache, &system.id, &device);
    Ok(device)
}

/// The system's virtual media device for a config drive: one that takes a USB stick or a
/// floppy image (not the CD the installer goes on).
pub async fn drive_media(
    client: &Client,
    system: &ComputerSystem,
) -> Result<VirtualMedia, RedfishError> {
    find_media(client, system, |d| d.takes_removable() && !d.takes_cd())
        .await?
        .ok_or_else(|| {
            RedfishError::Unsupported(format!(
                "system {} has no second virtual media device (USBStick or Floppy) for the \
                 config drive",
                system.id
            ))
        })
}

/// The first virtual media device `wanted` takes, under the System, then its Managers.
async fn find_media(
    client: &Client,
    system: &ComputerSystem,
    wanted: impl Fn(&VirtualMedia) -> bool,
) -> Result<Option<VirtualMedia>, RedfishError> {
    let mut collections = Vec::new();
    if let Some(l) = system.virtual_media.as_ref() {
        collections.push(l.id.clone());
    }
    let managers = system
        .links
        .as_ref()
        .map(|l| l.managed_by.clone())
        .unwrap_or_default();
    let mut checked_managers = false;
    let mut i = 0;
    loop {
        if i == collections.len() {
            if checked_managers {
                break;
            }
            checked_managers = true;
            for m in &managers {
                let manager: Manager = client.get(&m.id).await?;
                if let Some(l) = manager.virtual_media {
                    collections.push(l.id);
                }
            }
            if i == collections.len() {
                break;
            }
        }
        let collection: Collection = client.get(&collections[i]).await?;
        i += 1;
        for member in collection.members {
            let mut device: VirtualMedia = client.get(&member.id).await?;
            if wanted(&device) {
                if device.odata_id.is_empty() {
                    device.odata_id = member.id.clone();
                }
                return Ok(Some(device));
            }
        }
    }
    Ok(None)
}

fn remember_eject(
    cache: &std::sync::Mutex<HashMap<String, SystemCache>>,
    id: &str,
    device: &VirtualMedia,
) {
    let target = device
        .actions
        .as_ref()
        .and_then(|a| a.eject.as_ref())
        .map(|t| t.target.clone());
    lock(cache).entry(id.to_string()).or_default().cd_eject = target;
}

/// Turn a system into the engine's host facts.
pub fn host_info(
    found: &Found,
    name: String,
    images: &[String],
    provisioning: HostProvisioningState,
    current_os: Option<String>,
) -> HostInfo {
    let s = &found.system;
    let power = match s.power_state.as_deref() {
        Some("On" | "PoweringOff") => PowerState::On,
        Some("Off" | "PoweringOn") => PowerState::Off,
        _ => PowerState::Unknown,
    };
    let mut details = BTreeMap::new();
    let mut put = |k: &str, v: Option<&String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            details.insert(k.to_string(), v.clone());
        }
    };
    put("uuid", s.uuid.as_ref());
    put("manufacturer", s.manufacturer.as_ref());
    put("model", s.model.as_ref());
    put("serial", s.serial_number.as_ref());
    put("redfishPath", Some(&s.odata_id));
    if let Some(boot) = s.boot.as_ref() {
        put(
            "bootOverrideTarget",
            boot.boot_source_override_target.as_ref(),
        );
        put(
            "bootOverrideEnabled",
            boot.boot_source_override_enabled.as_ref(),
        );
    }
    if !found.macs.is_empty() {
        details.insert("macs".into(), found.macs.join(","));
    }
    HostInfo {
        id: s.id.clone(),
        name,
        current_os,
        available_os: images.to_vec(),
        power,
        provisioning,
        details,
    }
}

/// Host names: the system's `Name` when it is set and unique among the discovered systems,
/// otherwise its `Id` (many BMCs call every system "System").
pub fn host_names(found: &[Found]) -> Vec<String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for f in found {
        if let Some(n) = f.system.name.as_deref().filter(|n| !n.trim().is_empty()) {
            *counts.entry(n).or_default() += 1;
        }
    }
    found
        .iter()
        .map(|f| match f.system.name.as_deref() {
            Some(n) if counts.get(n) == Some(&1) => n.to_string(),
            _ => f.system.id.clone(),
        })
        .collect()
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(id: &str, name: Option<&str>) -> Found {
        Found {
            system: ComputerSystem {
                id: id.into(),
                name: name.map(str::to_string),
                ..Default::default()
            },
            macs: vec![],
        }
    }

    #[test]
    fn duplicate_or_missing_names_fall_back_to_ids() {
        let f = vec![
            found("1", Some("System")),
            found("2", Some("System")),
            found("3", Some("db-1")),
            found("4", None),
        ];
        assert_eq!(host_names(&f), ["1", "2", "db-1", "4"]);
    }
}
