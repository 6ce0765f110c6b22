//! The reprovisioning steps against the BMC, each safe to repeat for the same token.
//!
//! `start` runs: virtual media (eject what is there, insert the image — skipped when the BMC
//! already shows this token's image), one-time boot override to `Cd` (read back: what the BMC set
//! is recorded, and a BMC that did not take `Cd` is an error), then the reset — `ForceRestart`
//! when the system is on, `On` when it is off. The reset is the one step that cannot be repeated
//! safely, so "reset requested" is written to the operation record *before* it is sent and a
//! token whose record says so is never reset again (at most once; a crash between the two leaves
//! a host that may not have rebooted, which the callback timeout turns into a clear failure).
//!
//! `cleanup` runs once the outcome is known: eject this token's image and clear the boot override,
//! which matters on BMCs that only do `Continuous`.
//!
//! Calls are kept to what the flow needs (the benchmark counts them): the system is taken from
//! discovery's last read instead of being read again before the media step; the read-back after
//! the boot override is the one read of the system, and it also gives the power state and the
//! reset action. When this token reached the reset, the image on the device is this token's (the
//! host is held by the request meanwhile), so cleanup ejects through the remembered target
//! without reading the device first; otherwise it reads the device and ejects only this token's
//! image. That is 7 requests for a whole reprovision on an empty drive against a floor of 6.
use super::client::{Idempotent, RedfishError};
use super::discovery;
use super::model::{ComputerSystem, VirtualMedia};
use super::Inner;
use crate::adapter::store::OpRecord;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tracing::{info, warn};

/// How long an installer runs at least: a host seen `Off` sooner after the reset is taken for the
/// reset itself.
pub(super) const INSTALLER_MIN_RUN: std::time::Duration = std::time::Duration::from_secs(15);

/// The system's `ComputerSystem.Reset` action.
fn reset_action(system: &ComputerSystem) -> Result<super::model::ResetAction, RedfishError> {
    system
        .actions
        .as_ref()
        .and_then(|a| a.reset.clone())
        .ok_or_else(|| {
            RedfishError::Unsupported(format!(
                "system {} has no ComputerSystem.Reset action",
                system.id
            ))
        })
}

/// The boot override that undoes osprov's: none, or — where the BMC lists the targets it takes and
/// `None` is not among them (sushy-tools' libvirt driver, some BMCs that only do `Continuous`) —
/// the disk, persistently, as Ironic leaves a host after a deploy.
fn cleared_override(allowed: &[String]) -> serde_json::Value {
    if allowed.is_empty() || allowed.iter().any(|t| t == "None") {
        json!({"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled"})
    } else {
        json!({"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Continuous"})
    }
}

impl Inner {
    /// Read a system by its Redfish `Id` through the cached path.
    pub(super) async fn system(&self, host_id: &str) -> Result<ComputerSystem, RedfishError> {
        let path = self
            .systems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host_id)
            .map(|c| c.path.clone())
            .ok_or_else(|| RedfishError::Connect {
                url: host_id.to_string(),
                detail: "system not discovered yet".into(),
            })?;
        let mut s: ComputerSystem = self.client.get(&path).await?;
        if s.odata_id.is_empty() {
            s.odata_id = path;
        }
        if s.id.is_empty() {
            s.id = host_id.to_string();
        }
        Ok(s)
    }

    /// The system as discovery last read it, or read now.
    async fn known_system(&self, host_id: &str) -> Result<ComputerSystem, RedfishError> {
        let cached = self
            .systems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host_id)
            .and_then(|c| c.system.clone());
        match cached {
            Some(s) => Ok(s),
            None => self.system(host_id).await,
        }
    }

    /// Media, boot override and reset for `rec`; returns the record as last stored.
    pub(super) async fn start(&self, mut rec: OpRecord) -> Result<OpRecord, RedfishError> {
        let system = self.known_system(&rec.host_id).await?;
        // 0. The config drive, on a device of its own (the CD takes the installer).
        let base = self.cfg.callback_base.as_deref().unwrap_or_default();
        if let Some(url) = rec.drive_url(base) {
            let device = discovery::drive_media(&self.client, &system).await?;
            if device.inserted_image() != Some(url.as_str()) {
                let actions = device.actions.clone().unwrap_or_default();
                if device.inserted_image().is_some() {
                    if let Some(eject) = actions.eject.as_ref() {
                        self.client
                            .action(&eject.target, json!({}), Idempotent::Yes)
                            .await?;
                    }
                }
                let insert = actions.insert.as_ref().ok_or_else(|| {
                    RedfishError::Unsupported(
                        "the config drive's virtual media has no InsertMedia action".into(),
                    )
                })?;
                self.client
                    .action(
                        &insert.target,
                        json!({"Image": url, "Inserted": true, "WriteProtected": true}),
                        Idempotent::Yes,
                    )
                    .await?;
                info!(host = %rec.host_id, "config drive inserted");
            }
        }
        // 1. Virtual media.
        let media = discovery::cd_media(&self.client, &self.systems, &system).await?;
        let actions = media.actions.clone().unwrap_or_default();
        if media.inserted_image() == Some(rec.image.as_str()) {
            info!(host = %rec.host_id, "image already inserted for this request");
        } else {
            if media.inserted_image().is_some() {
                let eject = actions.eject.as_ref().ok_or_else(|| {
                    RedfishError::Unsupported("the virtual media has no EjectMedia action".into())
                })?;
                self.client
                    .action(&eject.target, json!({}), Idempotent::Yes)
                    .await?;
            }
            let insert = actions.insert.as_ref().ok_or_else(|| {
                RedfishError::Unsupported("the virtual media has no InsertMedia action".into())
            })?;
            self.client
                .action(
                    &insert.target,
                    json!({"Image": rec.image, "Inserted": true, "WriteProtected": true}),
                    Idempotent::Yes,
                )
                .await?;
            info!(host = %rec.host_id, os = %rec.os, "virtual media inserted");
        }
        // 2. One-time boot override to Cd, read back.
        if let Some(boot) = system.boot.as_ref() {
            if !boot.allowed_targets.is_empty() && !boot.allowed_targets.iter().any(|t| t == "Cd") {
                return Err(RedfishError::Unsupported(format!(
                    "system {} does not allow a boot override to Cd (allowed: {})",
                    rec.host_id,
                    boot.allowed_targets.join(", ")
                )));
            }
        }
        self.client
            .patch(
                &system.odata_id,
                json!({"Boot": {"BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once"}}),
            )
            .await?;
        let after = self.system(&rec.host_id).await?;
        if let Some(c) = self
            .systems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&rec.host_id)
        {
            c.system = Some(after.clone());
        }
        let boot = after.boot.clone().unwrap_or_default();
        if boot.boot_source_override_target.as_deref() != Some("Cd") {
            return Err(RedfishError::Unsupported(format!(
                "system {} reports boot override target {:?} after osprov set Cd",
                rec.host_id, boot.boot_source_override_target
            )));
        }
        let set = format!(
            "Cd/{}",
            boot.boot_source_override_enabled
                .as_deref()
                .unwrap_or("Unknown")
        );
        if set != "Cd/Once" {
            info!(host = %rec.host_id, boot_override = %set, "the BMC set a boot override other than Once; osprov clears it afterwards");
        }
        // 3. Reset, at most once per token.
        if rec.reset_requested_at.is_some() {
            warn!(host = %rec.host_id, "a reset was already requested for this token; not resetting again");
            return Ok(rec);
        }
        rec = self
            .mutate(&rec.token, |r| {
                r.reset_requested_at.get_or_insert(Timestamp::now());
                r.boot_override = Some(set.clone());
            })
            .await?;
        let reset = reset_action(&after)?;
        let on = matches!(after.power_state.as_deref(), Some("On" | "PoweringOn"));
        let wanted: &[&str] = if on {
            &["ForceRestart", "PowerCycle", "GracefulRestart"]
        } else {
            &["On", "ForceOn"]
        };
        let reset_type = wanted
            .iter()
            .find(|w| reset.allowed.is_empty() || reset.allowed.iter().any(|a| a == *w))
            .ok_or_else(|| {
                RedfishError::Unsupported(format!(
                    "system {} allows none of the reset types {wanted:?}",
                    rec.host_id
                ))
            })?;
        self.client
            .action(
                &reset.target,
                json!({"ResetType": reset_type}),
                Idempotent::No,
            )
            .await?;
        info!(host = %rec.host_id, reset = %reset_type, "system reset; waiting for the installer's callback");
        self.mutate(&rec.token, |r| {
            r.reset_at.get_or_insert(Timestamp::now());
        })
        .await
    }

    /// After the reset: once the installer has powered the host off, eject the media, clear the
    /// boot override and power the host on into the installed OS (at most once per token), whose
    /// first-boot report ends the operation. An installer that reboots on its own (a BMC that
    /// honours `Once`) never shows `Off` here, and its installed OS reports the same way.
    ///
    /// A host seen `Off` less than [`INSTALLER_MIN_RUN`] after the reset is taken for the reset
    /// itself (a BMC may show `Off` between the two halves of a restart), not for an installer.
    pub(super) async fn boot_installed(&self, rec: OpRecord) -> Result<OpRecord, RedfishError> {
        let Some(reset_at) = rec.reset_at else {
            return Ok(rec);
        };
        if rec.outcome.is_some() || rec.installed_boot_at.is_some() {
            return Ok(rec);
        }
        let ran = Timestamp::now().duration_since(reset_at);
        if std::time::Duration::try_from(ran).unwrap_or_default() < INSTALLER_MIN_RUN {
            return Ok(rec);
        }
        let system = self.system(&rec.host_id).await?;
        if let Some(c) = self
            .systems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&rec.host_id)
        {
            c.system = Some(system.clone());
        }
        if system.power_state.as_deref() != Some("Off") {
            return Ok(rec);
        }
        // Everything that can refuse is settled before the mark: a host marked is powered on.
        let reset = reset_action(&system)?;
        let on = ["On", "ForceOn"]
            .into_iter()
            .find(|w| reset.allowed.is_empty() || reset.allowed.iter().any(|a| a == w))
            .ok_or_else(|| {
                RedfishError::Unsupported(format!(
                    "system {} allows no power-on reset type",
                    rec.host_id
                ))
            })?;
        // Decide on the stored record, not a cached copy: an outcome reported meanwhile (the
        // installer called back, then powered off) leaves the host as it is.
        let fresh = self.store.get(&rec.token).await.map_err(super::store_err)?;
        match &fresh {
            Some(r) if r.outcome.is_none() && r.installed_boot_at.is_none() => {}
            Some(r) => return Ok(r.clone()),
            None => return Ok(rec),
        }
        info!(host = %rec.host_id, "the installer powered the host off; ejecting the media and booting the installed OS");
        self.cleanup(&rec).await?;
        // The mark is this caller's only if no outcome and no other mark got there first (the
        // store's optimistic concurrency decides between replicas): `On` is sent once.
        // Not `cleaned`: the host stays this operation's (busy, its media this token's) until the
        // installed OS reports; the final cleanup runs again then, idempotently.
        let stamp = Timestamp::now();
        let rec = self
            .mutate(&rec.token, |r| {
                if r.outcome.is_none() && r.installed_boot_at.is_none() {
                    r.installed_boot_at = Some(stamp);
                }
            })
            .await?;
        if rec.installed_boot_at != Some(stamp) {
            return Ok(rec);
        }
        self.client
            .action(&reset.target, json!({"ResetType": on}), Idempotent::No)
            .await?;
        info!(host = %rec.host_id, "powered on into the installed OS; waiting for its first-boot report");
        Ok(rec)
    }

    /// Eject this token's image (and its config drive) and clear the boot override.
    pub(super) async fn cleanup(&self, rec: &OpRecord) -> Result<(), RedfishError> {
        let base = self.cfg.callback_base.as_deref().unwrap_or_default();
        if let Some(url) = rec.drive_url(base) {
            let system = self.known_system(&rec.host_id).await?;
            let device = discovery::drive_media(&self.client, &system).await?;
            if device.inserted_image() == Some(url.as_str()) {
                if let Some(eject) = device.actions.as_ref().and_then(|a| a.eject.as_ref()) {
                    self.client
                        .action(&eject.target, json!({}), Idempotent::Yes)
                        .await?;
                }
            }
        }
        let cached = self
            .systems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rec.host_id)
            .map(|c| (c.path.clone(), c.cd_media.clone(), c.cd_eject.clone()));
        // This token reached the reset, so the image on the device is its own: eject it blind.
        // A BMC that refuses (some answer an error when nothing is inserted, e.g. on a repeated
        // cleanup) gets the careful path below.
        let blind = match &cached {
            Some((path, _, Some(eject)))
                if rec.reset_requested_at.is_some() && rec.installed_boot_at.is_none() =>
            {
                match self.client.action(eject, json!({}), Idempotent::Yes).await {
                    Ok(()) => Some(path.clone()),
                    Err(RedfishError::Status { .. }) => None,
                    Err(e) => return Err(e),
                }
            }
            _ => None,
        };
        let path = match blind {
            Some(path) => path,
            None => {
                let (path, media) = match cached {
                    Some((path, Some(media), _)) => {
                        (path, self.client.get::<VirtualMedia>(&media).await?)
                    }
                    _ => {
                        let system = self.system(&rec.host_id).await?;
                        let media =
                            discovery::cd_media(&self.client, &self.systems, &system).await?;
                        (system.odata_id, media)
                    }
                };
                if media.inserted_image() == Some(rec.image.as_str()) {
                    if let Some(eject) = media.actions.as_ref().and_then(|a| a.eject.as_ref()) {
                        self.client
                            .action(&eject.target, json!({}), Idempotent::Yes)
                            .await?;
                    }
                }
                path
            }
        };
        let allowed = self
            .systems
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rec.host_id)
            .and_then(|c| {
                c.system
                    .as_ref()?
                    .boot
                    .as_ref()
                    .map(|b| b.allowed_targets.clone())
            })
            .unwrap_or_default();
        self.client
            .patch(&path, json!({"Boot": cleared_override(&allowed)}))
            .await?;
        info!(host = %rec.host_id, "media ejected and boot override cleared");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cleared_override_is_what_the_bmc_takes() {
        let none =
            json!({"BootSourceOverrideTarget": "None", "BootSourceOverrideEnabled": "Disabled"});
        let hdd =
            json!({"BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Continuous"});
        assert_eq!(
            cleared_override(&[]),
            none,
            "nothing listed: the standard clear"
        );
        let listed = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            cleared_override(&listed(&["None", "Pxe", "Cd", "Hdd"])),
            none
        );
        // sushy-tools' libvirt driver lists Pxe, Cd and Hdd, and fails a PATCH to None.
        assert_eq!(cleared_override(&listed(&["Pxe", "Cd", "Hdd"])), hdd);
    }
}
