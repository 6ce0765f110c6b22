//! The few Redfish (DMTF) resources osprov reads, as serde types.
//!
//! Only the properties osprov uses are declared; everything is optional because BMCs differ in
//! what they fill in. Navigation is always through `@odata.id` links taken from these resources,
//! never through guessed paths.
use serde::Deserialize;

/// A navigation link (`{"@odata.id": "/redfish/v1/..."}`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Link {
    #[serde(rename = "@odata.id")]
    pub id: String,
}

/// `/redfish/v1/`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceRoot {
    pub systems: Option<Link>,
    pub managers: Option<Link>,
    pub event_service: Option<Link>,
    pub session_service: Option<Link>,
    pub links: Option<RootLinks>,
}

/// `Links` of the service root.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootLinks {
    pub sessions: Option<Link>,
}

/// Any resource collection.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Collection {
    #[serde(default)]
    pub members: Vec<Link>,
}

/// A `ComputerSystem`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ComputerSystem {
    #[serde(rename = "@odata.id", default)]
    pub odata_id: String,
    #[serde(default)]
    pub id: String,
    pub name: Option<String>,
    #[serde(rename = "UUID")]
    pub uuid: Option<String>,
    pub power_state: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub boot: Option<Boot>,
    pub ethernet_interfaces: Option<Link>,
    pub virtual_media: Option<Link>,
    pub links: Option<SystemLinks>,
    pub actions: Option<SystemActions>,
}

/// `ComputerSystem.Boot`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Boot {
    pub boot_source_override_enabled: Option<String>,
    pub boot_source_override_target: Option<String>,
    #[serde(rename = "BootSourceOverrideTarget@Redfish.AllowableValues", default)]
    pub allowed_targets: Vec<String>,
}

/// `ComputerSystem.Links`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SystemLinks {
    #[serde(default)]
    pub managed_by: Vec<Link>,
}

/// `ComputerSystem.Actions`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct SystemActions {
    #[serde(rename = "#ComputerSystem.Reset")]
    pub reset: Option<ResetAction>,
}

/// The `#ComputerSystem.Reset` action.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ResetAction {
    pub target: String,
    #[serde(rename = "ResetType@Redfish.AllowableValues", default)]
    pub allowed: Vec<String>,
}

/// A `Manager` (only its virtual media matter here).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Manager {
    pub virtual_media: Option<Link>,
}

/// A `VirtualMedia` device.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VirtualMedia {
    #[serde(rename = "@odata.id", default)]
    pub odata_id: String,
    pub image: Option<String>,
    pub inserted: Option<bool>,
    #[serde(default)]
    pub media_types: Vec<String>,
    pub actions: Option<MediaActions>,
}

impl VirtualMedia {
    /// True when the device takes CDs or DVDs (where an installer ISO goes).
    pub fn takes_cd(&self) -> bool {
        self.media_types.iter().any(|t| t == "CD" || t == "DVD")
    }

    /// True when the device takes a USB stick or floppy image (where a config drive goes).
    pub fn takes_removable(&self) -> bool {
        self.media_types
            .iter()
            .any(|t| t == "USBStick" || t == "Floppy")
    }

    /// The image currently inserted, if any.
    pub fn inserted_image(&self) -> Option<&str> {
        let image = self.image.as_deref().filter(|i| !i.is_empty())?;
        (self.inserted != Some(false)).then_some(image)
    }
}

/// `VirtualMedia.Actions`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct MediaActions {
    #[serde(rename = "#VirtualMedia.InsertMedia")]
    pub insert: Option<Target>,
    #[serde(rename = "#VirtualMedia.EjectMedia")]
    pub eject: Option<Target>,
}

/// An action target.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Target {
    pub target: String,
}

/// An `EthernetInterface`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct EthernetInterface {
    #[serde(rename = "MACAddress")]
    pub mac: Option<String>,
    #[serde(rename = "PermanentMACAddress")]
    pub permanent_mac: Option<String>,
}

/// A `Task` (as a task monitor reports it).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Task {
    pub task_state: Option<String>,
    #[serde(default)]
    pub messages: Vec<TaskMessage>,
}

/// One message of a task.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TaskMessage {
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_and_media_parse() {
        let sys: ComputerSystem = serde_json::from_value(serde_json::json!({
            "@odata.id": "/redfish/v1/Systems/1", "Id": "1", "Name": "node", "UUID": "u",
            "PowerState": "On",
            "Boot": {"BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": "Cd",
                     "BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Cd"]},
            "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/1"}]},
            "Actions": {"#ComputerSystem.Reset": {"target": "/r",
                        "ResetType@Redfish.AllowableValues": ["On", "ForceRestart"]}}
        }))
        .expect("system");
        assert_eq!(sys.uuid.as_deref(), Some("u"));
        assert_eq!(sys.boot.expect("boot").allowed_targets, ["Pxe", "Cd"]);
        assert_eq!(sys.links.expect("links").managed_by.len(), 1);
        assert_eq!(
            sys.actions.and_then(|a| a.reset).expect("reset").allowed,
            ["On", "ForceRestart"]
        );
        let vm: VirtualMedia = serde_json::from_value(serde_json::json!({
            "Image": "", "Inserted": false, "MediaTypes": ["CD", "DVD"]
        }))
        .expect("vm");
        assert!(vm.takes_cd());
        assert_eq!(vm.inserted_image(), None);
    }
}

/// `EventService`: whether it runs and where its server-sent event stream is.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventService {
    pub service_enabled: Option<bool>,
    pub server_sent_event_uri: Option<String>,
}

/// One message on the event stream (an `Event` resource).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Event {
    #[serde(default)]
    pub events: Vec<EventRecord>,
}

/// One record of an [`Event`]: what happened, to which resource.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EventRecord {
    pub event_type: Option<String>,
    pub message_id: Option<String>,
    pub origin_of_condition: Option<Link>,
}
