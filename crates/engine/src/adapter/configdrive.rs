//! A host's own configuration for one operation, and the config drive that carries it.
//!
//! The controller resolves a request's configuration (its user-data, network-config and
//! meta-data Secrets, the hostname and an instance id it derives) into a [`HostConfig`] and hands
//! it to the adapter with the reprovision. Adapters that boot an installer put it where
//! installers and cloud-init look for it: a **NoCloud** volume, an ISO 9660 file system labelled
//! `cidata` holding `user-data`, `meta-data` and `network-config` (the names cloud-init's NoCloud
//! datasource reads; Ubuntu autoinstall, Debian/Fedora/RHEL cloud images read the same volume).
//! The same volume carries `osprov-callback`, the operation's callback URL with its credential,
//! so an installer needs no credential in its image URL: it reads the file from the volume it
//! found by label.
//!
//! The ISO is written in memory by `hadris-iso` (ISO 9660 with Rock Ridge and Joliet, so the
//! lower-case, hyphenated names survive on every reader); nothing shells out to `genisoimage`.
//! `meta-data` is YAML written by `serde_norway` from a map: the user's own keys, then
//! `instance-id` (always osprov's, so cloud-init treats every reprovision as a new instance) and
//! `local-hostname`.
//!
//! Secret contents never reach logs: [`HostConfig`]'s `Debug` names the parts it has, not their
//! contents.
use hadris_iso::read::PathSeparator;
use hadris_iso::write::options::{CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{File as IsoFile, InputFiles, IsoImageWriter};
use serde_json::{Map, Value};
use std::io::Cursor;
use std::sync::Arc;

/// The volume label cloud-init's NoCloud datasource looks for.
pub const NOCLOUD_LABEL: &str = "cidata";
/// The volume label Anaconda looks for a kickstart (`ks.cfg`) on.
pub const OEMDRV_LABEL: &str = "OEMDRV";

/// The convention a config drive follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DriveFormat {
    /// cloud-init's NoCloud volume: label `cidata`; `user-data`, `meta-data`, `network-config`.
    #[default]
    NoCloud,
    /// Anaconda's kickstart volume: label `OEMDRV`; the user-data as `ks.cfg`, with `meta-data`
    /// and `network-config` beside it for the kickstart's own `%pre`/`%post` scripts.
    Oemdrv,
}

impl DriveFormat {
    /// The name users write (`spec.configDrive`).
    pub fn as_str(self) -> &'static str {
        match self {
            DriveFormat::NoCloud => "NoCloud",
            DriveFormat::Oemdrv => "OEMDRV",
        }
    }

    /// The volume label.
    pub fn label(self) -> &'static str {
        match self {
            DriveFormat::NoCloud => NOCLOUD_LABEL,
            DriveFormat::Oemdrv => OEMDRV_LABEL,
        }
    }
}
/// The file on the drive holding the callback URL (with its credential).
pub const CALLBACK_FILE: &str = "osprov-callback";

/// A host's configuration for one operation.
#[derive(Clone, Default, PartialEq)]
pub struct HostConfig {
    /// Changes with every operation (cloud-init runs its first-boot modules again).
    pub instance_id: String,
    /// The host name the installed OS takes (`local-hostname`).
    pub hostname: String,
    /// cloud-init user-data, as given (a `#cloud-config` document, a script, MIME…).
    pub user_data: Option<Vec<u8>>,
    /// cloud-init network-config (version 1 or 2), as given.
    pub network_config: Option<Vec<u8>>,
    /// The user's own meta-data keys.
    pub meta_data: Map<String, Value>,
    /// The drive's convention.
    pub format: DriveFormat,
}

impl std::fmt::Debug for HostConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostConfig")
            .field("instance_id", &self.instance_id)
            .field("hostname", &self.hostname)
            .field("user_data", &self.user_data.as_ref().map(|_| "<redacted>"))
            .field(
                "network_config",
                &self.network_config.as_ref().map(|_| "<redacted>"),
            )
            .field("meta_data_keys", &self.meta_data.keys().collect::<Vec<_>>())
            .field("format", &self.format)
            .finish()
    }
}

/// A drive that could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error("meta-data could not be written as YAML: {0}")]
    MetaData(String),
    #[error("the ISO image could not be written: {0}")]
    Iso(String),
}

impl HostConfig {
    /// True when the request named any configuration of its own (beyond what osprov derives).
    pub fn is_custom(&self) -> bool {
        self.user_data.is_some() || self.network_config.is_some() || !self.meta_data.is_empty()
    }

    /// The `meta-data` document: the user's keys, then osprov's `instance-id` and, unless the
    /// user set one, `local-hostname`.
    pub fn meta_data_yaml(&self) -> Result<String, DriveError> {
        let mut m = self.meta_data.clone();
        m.insert(
            "instance-id".into(),
            Value::String(self.instance_id.clone()),
        );
        m.entry("local-hostname")
            .or_insert_with(|| Value::String(self.hostname.clone()));
        serde_norway::to_string(&Value::Object(m)).map_err(|e| DriveError::MetaData(e.to_string()))
    }

    /// The files of the drive, by name. `callback`: the operation's callback URL.
    pub fn drive_files(
        &self,
        callback: Option<&str>,
    ) -> Result<Vec<(&'static str, Vec<u8>)>, DriveError> {
        let user_data = match self.format {
            // cloud-init needs the file, even empty, to take the volume as a datasource.
            DriveFormat::NoCloud => "user-data",
            DriveFormat::Oemdrv => "ks.cfg",
        };
        let mut files = vec![
            ("meta-data", self.meta_data_yaml()?.into_bytes()),
            (user_data, self.user_data.clone().unwrap_or_default()),
        ];
        if let Some(n) = &self.network_config {
            files.push(("network-config", n.clone()));
        }
        if let Some(url) = callback {
            files.push((CALLBACK_FILE, format!("{url}\n").into_bytes()));
        }
        Ok(files)
    }

    /// The drive as an ISO 9660 image (labelled for its format), padded for CD-ROM readers.
    pub fn drive_iso(&self, callback: Option<&str>) -> Result<Vec<u8>, DriveError> {
        Ok(padded(self.drive_image(callback)?))
    }

    /// The drive's file system alone (no padding), as an operation record keeps it: rendered
    /// once, so every read of the drive gets the same bytes (the writer stamps the time of
    /// writing into it).
    pub fn drive_image(&self, callback: Option<&str>) -> Result<Vec<u8>, DriveError> {
        let files = self
            .drive_files(callback)?
            .into_iter()
            .map(|(name, contents)| IsoFile::File {
                name: Arc::new(name.to_string()),
                contents,
            })
            .collect();
        iso(self.format.label(), files)
    }
}

impl HostConfig {}

/// The extraConfig keys cloud-init's VMware datasource reads.
pub mod guestinfo {
    pub const METADATA: &str = "guestinfo.metadata";
    pub const METADATA_ENCODING: &str = "guestinfo.metadata.encoding";
    pub const USERDATA: &str = "guestinfo.userdata";
    pub const USERDATA_ENCODING: &str = "guestinfo.userdata.encoding";
}

impl HostConfig {
    /// The configuration as cloud-init's VMware datasource reads it from a VM's guestinfo:
    /// `guestinfo.metadata` (the meta-data, with the network-config under `network`) and
    /// `guestinfo.userdata`, each base64 with its `.encoding` key.
    pub fn vmware_guestinfo(
        &self,
    ) -> Result<std::collections::BTreeMap<String, String>, DriveError> {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let mut meta = self.clone();
        if let Some(n) = &self.network_config {
            meta.meta_data
                .insert("network".into(), Value::String(b64(n)));
            meta.meta_data
                .insert("network.encoding".into(), Value::String("base64".into()));
        }
        let mut keys = std::collections::BTreeMap::new();
        keys.insert(
            guestinfo::METADATA.to_string(),
            b64(meta.meta_data_yaml()?.as_bytes()),
        );
        keys.insert(guestinfo::METADATA_ENCODING.to_string(), "base64".into());
        if let Some(u) = &self.user_data {
            keys.insert(guestinfo::USERDATA.to_string(), b64(u));
            keys.insert(guestinfo::USERDATA_ENCODING.to_string(), "base64".into());
        }
        Ok(keys)
    }
}

/// An ISO 9660 image (Rock Ridge and Joliet names) of `files` with volume label `label`.
fn iso(label: &str, files: Vec<IsoFile>) -> Result<Vec<u8>, DriveError> {
    let input = InputFiles {
        path_separator: PathSeparator::ForwardSlash,
        files,
    };
    let options = IsoFormatOptions {
        volume_name: label.to_string(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: Some("osprov".into()),
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        features: CreationFeatures::extensions(),
        strict_charset: false,
    };
    let mut out = Cursor::new(Vec::new());
    IsoImageWriter::create(&mut out, input, options).map_err(|e| DriveError::Iso(e.to_string()))?;
    Ok(out.into_inner())
}

/// `image` followed by at least 150 zero sectors, as mkisofs pads by default: Linux reads ahead on
/// a CD-ROM, and on a medium that ends right after the file system that read fails and takes the
/// label probe with it (busybox's `findfs LABEL=cidata` found nothing without it).
///
/// A drive smaller than a 3.5" high-density floppy is padded to exactly that size, so the same
/// image also serves a BMC's `Floppy` virtual medium: QEMU's floppy drive (behind sushy-tools'
/// libvirt driver, and Ironic's floppy images) takes its geometry from the image's size.
pub fn padded(mut image: Vec<u8>) -> Vec<u8> {
    let len = (image.len() + PADDING_SECTORS * SECTOR).max(FLOPPY_1440K);
    image.resize(len, 0);
    image
}

const SECTOR: usize = 2048;
const PADDING_SECTORS: usize = 150;
/// 80 tracks × 2 heads × 18 sectors × 512 bytes.
const FLOPPY_1440K: usize = 1_474_560;

#[cfg(test)]
mod tests {
    use super::*;
    use hadris_iso::read::IsoImage;

    fn config() -> HostConfig {
        let mut meta = Map::new();
        meta.insert("rack".into(), Value::String("r7".into()));
        HostConfig {
            instance_id: "u1-1-1".into(),
            hostname: "web-1".into(),
            user_data: Some(b"#cloud-config\nhostname: web-1\n".to_vec()),
            network_config: Some(b"version: 2\nethernets: {}\n".to_vec()),
            meta_data: meta,
            format: DriveFormat::NoCloud,
        }
    }

    /// The names and label of a rendered drive.
    fn read_back(bytes: Vec<u8>) -> (String, Vec<String>) {
        let image = IsoImage::open(Cursor::new(bytes)).expect("readable");
        let pvd = image.read_pvd().expect("primary volume descriptor");
        let label = String::from_utf8_lossy(pvd.volume_identifier.as_bytes())
            .trim()
            .to_string();
        let names = image
            .root_dir()
            .iter(&image)
            .entries()
            .filter_map(Result::ok)
            .map(|e| String::from_utf8_lossy(e.name()).to_string())
            .collect();
        (label, names)
    }

    #[test]
    fn an_oemdrv_drive_holds_the_kickstart_as_ks_cfg() {
        let mut c = config();
        c.format = DriveFormat::Oemdrv;
        let files = c
            .drive_files(Some("https://c/callback/k.s"))
            .expect("files");
        let ks = files.iter().find(|(n, _)| *n == "ks.cfg").expect("ks.cfg");
        assert_eq!(ks.1, b"#cloud-config\nhostname: web-1\n");
        assert!(!files.iter().any(|(n, _)| *n == "user-data"));
        let (label, _) = read_back(c.drive_iso(None).expect("iso"));
        assert_eq!(label, "OEMDRV");
        let (label, _) = read_back(config().drive_iso(None).expect("iso"));
        assert_eq!(label, "cidata");
    }

    #[test]
    fn meta_data_carries_the_users_keys_and_osprovs_instance_id() {
        let mut c = config();
        c.meta_data
            .insert("instance-id".into(), Value::String("theirs".into()));
        let doc: Value = serde_norway::from_str(&c.meta_data_yaml().expect("yaml")).expect("parse");
        assert_eq!(doc["instance-id"], "u1-1-1");
        assert_eq!(doc["local-hostname"], "web-1");
        assert_eq!(doc["rack"], "r7");
        c.meta_data
            .insert("local-hostname".into(), Value::String("own".into()));
        let doc: Value = serde_norway::from_str(&c.meta_data_yaml().expect("yaml")).expect("parse");
        assert_eq!(doc["local-hostname"], "own", "the user's hostname wins");
    }

    #[test]
    fn the_iso_is_labelled_cidata_and_holds_the_files_by_their_own_names() {
        let bytes = config()
            .drive_iso(Some("https://c/callback/k.s"))
            .expect("iso");
        assert!(bytes.len() >= (16 + 3 + PADDING_SECTORS) * SECTOR, "padded");
        assert_eq!(
            bytes.len(),
            FLOPPY_1440K,
            "a small drive fits a floppy exactly"
        );
        let big = padded(vec![1; FLOPPY_1440K]);
        assert_eq!(big.len(), FLOPPY_1440K + PADDING_SECTORS * SECTOR);
        assert!(bytes[bytes.len() - PADDING_SECTORS * SECTOR..]
            .iter()
            .all(|b| *b == 0));
        let (label, names) = read_back(bytes);
        assert_eq!(label, "cidata");
        assert!(!names.is_empty(), "{names:?}");
    }

    #[test]
    fn guestinfo_carries_meta_data_with_the_network_and_user_data_in_base64() {
        use base64::Engine;
        let keys = config().vmware_guestinfo().expect("keys");
        let decode = |k: &str| {
            let v = base64::engine::general_purpose::STANDARD
                .decode(&keys[k])
                .expect("base64");
            String::from_utf8(v).expect("utf-8")
        };
        assert_eq!(
            decode(guestinfo::USERDATA),
            "#cloud-config\nhostname: web-1\n"
        );
        let meta: Value = serde_norway::from_str(&decode(guestinfo::METADATA)).expect("yaml");
        assert_eq!(meta["local-hostname"], "web-1");
        assert_eq!(meta["network.encoding"], "base64");
        assert_eq!(keys[guestinfo::METADATA_ENCODING], "base64");
        assert_eq!(keys[guestinfo::USERDATA_ENCODING], "base64");
    }

    #[test]
    fn debug_never_shows_contents() {
        let shown = format!("{:?}", config());
        assert!(!shown.contains("cloud-config") && !shown.contains("ethernets"));
        assert!(shown.contains("web-1"));
    }

    #[test]
    fn an_empty_configuration_is_not_custom_and_still_has_both_required_files() {
        let c = HostConfig {
            instance_id: "i".into(),
            hostname: "h".into(),
            ..HostConfig::default()
        };
        assert!(!c.is_custom());
        let names: Vec<&str> = c
            .drive_files(None)
            .expect("files")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["meta-data", "user-data"]);
        assert!(config().is_custom());
    }
}
