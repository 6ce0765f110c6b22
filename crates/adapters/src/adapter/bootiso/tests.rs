//! The remaster checked with an independent reader: `hadris-iso` writes an installer-shaped ISO
//! (Rock Ridge and Joliet, boot menus in subdirectories), osprov grows it, and `hadris-iso`'s own
//! reader walks the result through every tree. `tests/redfish_config.rs` checks a real
//! xorriso-built installer with `isoinfo` and `xorriso`, and `tests/real_os.rs` boots one.
use super::*;
use hadris_iso::file::EntryType;
use hadris_iso::read::{IsoImage, PathSeparator};
use hadris_iso::write::options::{CreationFeatures, IsoFormatOptions};
use hadris_iso::write::{File as IsoFile, InputFiles, IsoImageWriter};
use std::io::Cursor;
use std::sync::Arc;

/// An image in memory, as a [`Source`].
struct Mem(Vec<u8>);

#[async_trait::async_trait]
impl Source for Mem {
    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, BootIsoError> {
        let a = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let b = a.saturating_add(len).min(self.0.len());
        Ok(self.0[a..b].to_vec())
    }

    async fn size(&self) -> Result<u64, BootIsoError> {
        Ok(self.0.len() as u64)
    }
}

fn file(name: &str, contents: &[u8]) -> IsoFile {
    IsoFile::File {
        name: Arc::new(name.into()),
        contents: contents.to_vec(),
    }
}

fn dir(name: &str, children: Vec<IsoFile>) -> IsoFile {
    IsoFile::Directory {
        name: Arc::new(name.into()),
        children,
    }
}

const ISOLINUX: &str =
    "DEFAULT install\nLABEL install\n  KERNEL /vmlinuz\n  APPEND console=ttyS0 quiet\n";
const GRUB: &str = "menuentry install {\n  linux /vmlinuz quiet ---\n  initrd /initrd.gz\n}\n";

/// An ISO 9660 image (Rock Ridge and Joliet) of `files`, labelled `label`.
fn image(label: &str, files: Vec<IsoFile>) -> Vec<u8> {
    let options = IsoFormatOptions {
        volume_name: label.into(),
        system_id: None,
        volume_set_id: None,
        publisher_id: None,
        preparer_id: None,
        application_id: None,
        sector_size: 2048,
        path_separator: PathSeparator::ForwardSlash,
        features: CreationFeatures::extensions(),
        strict_charset: false,
    };
    let mut out = Cursor::new(Vec::new());
    IsoImageWriter::create(
        &mut out,
        InputFiles {
            path_separator: PathSeparator::ForwardSlash,
            files,
        },
        options,
    )
    .expect("an image");
    out.into_inner()
}

/// An installer-shaped image: a kernel, an ISOLINUX and a GRUB menu, a payload.
fn installer() -> Vec<u8> {
    let files = vec![
        file("vmlinuz", &[7u8; 5000]),
        dir(
            "isolinux",
            vec![
                file("isolinux.cfg", ISOLINUX.as_bytes()),
                file("ldlinux.c32", &[1; 100]),
            ],
        ),
        dir(
            "boot",
            vec![dir("grub", vec![file("grub.cfg", GRUB.as_bytes())])],
        ),
        file("os.img", &[9u8; 70_000]),
    ];
    image("OSPROV_INSTALL", files)
}

/// The whole served image, as a BMC reads it.
fn served(original: &[u8], iso: &BootIso) -> Vec<u8> {
    let mut out = original.to_vec();
    iso.overlay(0, &mut out);
    out.extend(iso.after_original(original.len() as u64, iso.len()));
    out
}

/// Every tree's view: (path, contents) of each file, walked by hadris-iso's reader.
fn trees(image: &[u8]) -> Vec<Vec<(String, Vec<u8>)>> {
    let iso = IsoImage::open(Cursor::new(image.to_vec())).expect("readable");
    let mut out = Vec::new();
    for root in iso.root_dirs().iter() {
        let mut files = Vec::new();
        let mut todo = vec![(String::new(), root.dir_ref())];
        while let Some((prefix, d)) = todo.pop() {
            for e in iso.open_dir(d).entries().filter_map(Result::ok) {
                if e.is_special() {
                    continue;
                }
                let name = if matches!(root.entry_type(), EntryType::Joliet { .. }) {
                    e.record.joliet_name()
                } else {
                    e.display_name().to_string()
                };
                let name = name.split(';').next().unwrap_or_default().to_string();
                let path = format!("{prefix}/{name}");
                if e.is_directory() {
                    todo.push((path, e.record.as_dir_ref().expect("a directory")));
                } else {
                    let h = e.header();
                    let at = h.extent.read() as usize * SECTOR;
                    let len = h.data_len.read() as usize;
                    files.push((path, image[at..at + len].to_vec()));
                }
            }
        }
        files.sort();
        out.push(files);
    }
    out
}

fn config() -> Vec<(String, Vec<u8>)> {
    vec![
        (
            "user-data".into(),
            b"#cloud-config\nhostname: web-1\n".to_vec(),
        ),
        ("meta-data".into(), b"instance-id: i-1\n".to_vec()),
        (
            "osprov-callback".into(),
            b"http://c/callback/k.s\n".to_vec(),
        ),
    ]
}

async fn grown(original: &[u8], args: Option<&str>) -> Vec<u8> {
    let iso = remaster(
        &Mem(original.to_vec()),
        "http://images/i.iso",
        &config(),
        args,
    )
    .await
    .expect("a boot ISO");
    // What the record keeps survives its serialisation.
    let back: BootIso =
        serde_json::from_str(&serde_json::to_string(&iso).expect("json")).expect("read back");
    assert_eq!(back, iso);
    assert!(iso.tail_start >= original.len() as u64);
    served(original, &iso)
}

#[tokio::test]
async fn every_tree_keeps_its_files_and_gains_the_configuration_at_its_root() {
    let original = installer();
    let before = trees(&original);
    let after = trees(&grown(&original, None).await);
    assert_eq!(before.len(), after.len());
    assert!(after.len() >= 2, "a primary and a Joliet tree");
    for (b, a) in before.iter().zip(&after) {
        for f in b {
            let name = f.0.to_ascii_lowercase();
            assert!(
                a.iter()
                    .any(|g| g.0.to_ascii_lowercase() == name && g.1 == f.1),
                "{} kept: {:?}",
                f.0,
                a.iter().map(|g| &g.0).collect::<Vec<_>>()
            );
        }
        for (name, contents) in config() {
            assert!(
                a.iter().any(|g| {
                    let n = g.0.to_ascii_lowercase();
                    (n == format!("/{name}") || n == format!("/{}.", name.replace('-', "_")))
                        && g.1 == contents
                }),
                "{name} added: {:?}",
                a.iter().map(|g| &g.0).collect::<Vec<_>>()
            );
        }
    }
}

#[tokio::test]
async fn kernel_arguments_reach_every_boot_menu_in_every_tree() {
    let original = installer();
    let image = grown(&original, Some("autoinstall ds=nocloud;s=/cdrom/")).await;
    for tree in trees(&image) {
        let read = |suffix: &str| {
            tree.iter()
                .find(|f| f.0.to_ascii_lowercase().ends_with(suffix))
                .map(|f| String::from_utf8_lossy(&f.1).into_owned())
                .unwrap_or_else(|| {
                    panic!(
                        "{suffix} in {:?}",
                        tree.iter().map(|f| &f.0).collect::<Vec<_>>()
                    )
                })
        };
        assert!(read("/isolinux/isolinux.cfg")
            .contains("APPEND console=ttyS0 quiet autoinstall ds=nocloud;s=/cdrom/\n"));
        assert!(read("/boot/grub/grub.cfg")
            .contains("linux /vmlinuz quiet autoinstall 'ds=nocloud;s=/cdrom/' ---\n"));
    }
}

#[tokio::test]
async fn the_volume_grows_to_the_tail_and_the_original_stays_byte_for_byte_elsewhere() {
    let original = installer();
    let iso = remaster(&Mem(original.clone()), "u", &config(), Some("a=1"))
        .await
        .expect("a boot ISO");
    let image = served(&original, &iso);
    assert_eq!(image.len() as u64 % SECTOR as u64, 0);
    let pvd = &image[16 * SECTOR..17 * SECTOR];
    assert_eq!(u64::from(le32(pvd, 80)) * SECTOR as u64, image.len() as u64);
    // Only the patched bytes differ from the original.
    let patched: usize = iso.patches.iter().map(|p| p.bytes.len()).sum();
    let differing = original.iter().zip(&image).filter(|(a, b)| a != b).count();
    assert!(differing <= patched, "{differing} > {patched}");
    for w in iso.patches.windows(2) {
        assert!(
            w[0].offset + w[0].bytes.len() as u64 <= w[1].offset,
            "patches overlap"
        );
    }
    // A range read across the original's end and into the tail is the same bytes.
    let from = original.len() as u64 - 100;
    let mut piece = original[from as usize..].to_vec();
    iso.overlay(from, &mut piece);
    piece.extend(iso.after_original(original.len() as u64, original.len() as u64 + 3000));
    assert_eq!(piece, image[from as usize..original.len() + 3000]);
}

#[tokio::test]
async fn images_that_cannot_be_grown_are_refused_with_the_reason() {
    let not_iso = Mem(vec![0u8; 64 * 1024]);
    assert!(matches!(
        remaster(&not_iso, "u", &config(), None).await,
        Err(BootIsoError::NotIso9660(_))
    ));
    // No kernel line anywhere: arguments cannot be placed.
    let plain = image("X", vec![file("readme", b"hi")]);
    let e = remaster(&Mem(plain.clone()), "u", &config(), Some("autoinstall")).await;
    assert!(matches!(e, Err(BootIsoError::NoBootMenu)), "{e:?}");
    assert!(!BootIsoError::NoBootMenu.is_transient());
    // Without arguments the same image is fine.
    let image = grown(&plain, None).await;
    assert!(trees(&image)[0].iter().any(|f| f.1 == b"hi"));
}
