//! What the libvirt adapter says it can deliver, per strategy.
use super::*;
use crate::adapter::store::MemoryStore;
use crate::adapter::DriveFormat;

fn adapter(strategy: LibvirtStrategy, callback: bool, store: bool) -> LibvirtAdapter {
    let a = LibvirtAdapter::new(LibvirtConfig {
        uri: "test:///default".into(),
        credentials: None,
        names: vec![],
        labelled: false,
        image_pool: "default-pool".into(),
        images: vec![],
        root_disk: None,
        strategy,
        callback_base: callback.then(|| "http://10.0.2.2:9443".into()),
        callback_timeout: Duration::from_secs(60),
    });
    if store {
        a.with_operations(Arc::new(MemoryStore::default()))
    } else {
        a
    }
}

#[test]
fn the_image_strategy_takes_a_nocloud_seed_only_with_a_callback_endpoint_and_a_store() {
    let image = adapter(LibvirtStrategy::Image, true, true);
    assert!(image.delivers_config(DriveFormat::NoCloud));
    // A cloud image reads no Anaconda volume: refused before anything touches the host.
    assert!(!image.delivers_config(DriveFormat::Oemdrv));
    assert!(!adapter(LibvirtStrategy::Image, false, true).delivers_config(DriveFormat::NoCloud));
    assert!(!adapter(LibvirtStrategy::Image, true, false).delivers_config(DriveFormat::NoCloud));
    assert!(adapter(LibvirtStrategy::Iso, true, true).delivers_config(DriveFormat::Oemdrv));
}
