//! The config drive of an `iso` operation as a libvirt volume: uploaded into the image pool
//! through libvirt's stream API (so it works on a remote libvirtd as on a local one), named after
//! the domain and the token so a restarted controller finds the same volume, and deleted when the
//! operation ends (it holds the host's configuration and the callback credential).
use super::adapter::{connect, domain};
use super::conn;
use super::xml;
use super::LibvirtConfig;
use crate::adapter::AdapterError;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;

/// The drive volume's name for `token` on the domain named `domain`.
pub fn volume_name(domain: &str, token: &str) -> String {
    format!(
        "{domain}-osprov-cidata-{}.iso",
        crate::ident::short_hash(token)
    )
}

/// Upload `bytes` as the drive of `token` on domain `uuid` (replacing a volume of the same name
/// a crashed attempt left); the volume's path.
pub fn upload(
    cfg: &LibvirtConfig,
    uuid: &str,
    token: &str,
    bytes: &[u8],
) -> Result<String, AdapterError> {
    let c = connect(cfg)?;
    let d = domain(&c, uuid)?;
    let name = volume_name(&d.name().map_err(|e| conn::call("domain name", &e))?, token);
    let pool = c
        .lookup_storage_pool_by_name(&cfg.image_pool)
        .map_err(|e| {
            AdapterError::Config(format!("image pool {}: {}", cfg.image_pool, e.message()))
        })?;
    if let Ok(old) = pool.lookup_storage_vol_by_name(&name) {
        old.delete(0)
            .map_err(|e| conn::call("deleting a stale config drive", &e))?;
    }
    let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    let vol = StorageVol::create_xml(&pool, &xml::volume_xml(&name, len, Some("raw")), 0)
        .map_err(|e| conn::call("creating the config drive volume", &e))?;
    let stream = Stream::new(&c, 0).map_err(|e| conn::call("opening a stream", &e))?;
    vol.upload(&stream, 0, len, 0)
        .map_err(|e| conn::call("uploading the config drive", &e))?;
    let mut sent = 0;
    while sent < bytes.len() {
        let n = stream
            .send(&bytes[sent..])
            .map_err(|e| conn::call("sending the config drive", &e))?;
        sent += usize::try_from(n).unwrap_or(0).max(1);
    }
    stream
        .finish()
        .map_err(|e| conn::call("finishing the config drive upload", &e))?;
    vol.path()
        .map_err(|e| conn::call("the config drive's path", &e))
}

/// Delete the drive volume at `path`, if it is still there.
pub fn delete(cfg: &LibvirtConfig, path: &str) -> Result<(), AdapterError> {
    let c = connect(cfg)?;
    match c.lookup_storage_vol_by_path(path) {
        Ok(vol) => vol
            .delete(0)
            .map_err(|e| conn::call("deleting the config drive", &e)),
        Err(_) => Ok(()),
    }
}
