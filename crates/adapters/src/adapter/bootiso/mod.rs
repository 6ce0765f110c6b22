//! A per-operation boot ISO for BMCs with one virtual medium: the catalogue's installer ISO with
//! the operation's configuration files added at its root and, where the installer needs them,
//! kernel arguments added to its boot menus — as Ironic builds a boot ISO with the configuration
//! inside, but without copying the installer.
//!
//! The installer ISO is never downloaded whole. osprov reads what it changes (the volume
//! descriptors, the root directories, the boot menus) with ranged reads, and keeps the change as
//! a [`BootIso`]: byte patches over the original and a tail appended after it. That is how ISO
//! 9660 images are grown in place (the volume descriptors at sector 16 point at new root
//! directories written after the old end; every other extent, the El Torito boot catalogue and
//! the boot images' info tables stay where they were): a few KiB per operation, kept in the
//! operation's record, whatever the size of the installer. The controller then serves the
//! result by streaming the original with the patches applied, followed by the tail
//! ([`http::body`]).
//!
//! What changes:
//! - each tree (the primary one, with its Rock Ridge names, and each Joliet one) gets a new root
//!   directory: the old records plus one per configuration file (a Rock Ridge `NM` name where the
//!   tree has Rock Ridge, a UCS-2 name in Joliet trees); the volume descriptors, the root's
//!   path-table entries and every root subdirectory's `..` record point at it;
//! - with kernel arguments, every ISOLINUX/SYSLINUX configuration (`*.cfg` in `isolinux/`,
//!   `syslinux/`, `boot/isolinux/`, `boot/syslinux/`) and GRUB one (`grub.cfg`, `loopback.cfg` in
//!   `boot/grub/`, `boot/grub2/`, `EFI/BOOT/`) that has a kernel line is rewritten into the tail
//!   and its directory records (in every tree) point at the new copy ([`kernel_args`]);
//! - the volume space size in every volume descriptor grows to the new end.
pub mod http;
mod kernel_args;
mod records;

pub use kernel_args::Loader;
use records::{layout_dir, le32, sectors, set_both32, Record, SECTOR};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Largest directory or boot menu osprov reads from an installer image.
const MAX_READ: usize = 1 << 20;

/// An installer ISO changed for one operation: the original with `patches` applied, zeros up to
/// `tail_start`, then `tail`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BootIso {
    /// Where the original is read (the catalogue's image URL, without a credential).
    pub upstream: String,
    /// The original's length in bytes.
    pub upstream_len: u64,
    /// Where the tail starts (a sector boundary at or after the original's end).
    pub tail_start: u64,
    /// Byte ranges of the original replaced, sorted by offset, not overlapping.
    pub patches: Vec<Patch>,
    /// What follows the original: new directories and files.
    #[serde(with = "b64")]
    pub tail: Vec<u8>,
}

/// Bytes replacing the original's at `offset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch {
    pub offset: u64,
    #[serde(with = "b64")]
    pub bytes: Vec<u8>,
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

impl BootIso {
    /// The served image's length.
    pub fn len(&self) -> u64 {
        self.tail_start + self.tail.len() as u64
    }

    /// Never empty: the tail holds at least the new root directory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Apply the patches to `chunk`, a piece of the original starting at `offset`.
    pub fn overlay(&self, offset: u64, chunk: &mut [u8]) {
        let end = offset + chunk.len() as u64;
        for p in &self.patches {
            let (a, b) = (p.offset, p.offset + p.bytes.len() as u64);
            if b <= offset || a >= end {
                continue;
            }
            let from = a.max(offset);
            let to = b.min(end);
            let dst = usize::try_from(from - offset).unwrap_or(0);
            let src = usize::try_from(from - a).unwrap_or(0);
            let n = usize::try_from(to - from).unwrap_or(0);
            chunk[dst..dst + n].copy_from_slice(&p.bytes[src..src + n]);
        }
    }

    /// Bytes `[from, to)` past the original's end: zeros up to the tail, then the tail.
    pub fn after_original(&self, from: u64, to: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at = from.max(self.upstream_len);
        if at < self.tail_start {
            let zeros = self.tail_start.min(to).saturating_sub(at);
            out.resize(usize::try_from(zeros).unwrap_or(0), 0);
            at += zeros;
        }
        if at < to {
            let a = usize::try_from(at - self.tail_start).unwrap_or(usize::MAX);
            let b = usize::try_from(to - self.tail_start).unwrap_or(usize::MAX);
            out.extend_from_slice(self.tail.get(a..b.min(self.tail.len())).unwrap_or_default());
        }
        out
    }
}

/// Why a boot ISO could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BootIsoError {
    #[error("reading the installer image: {message}")]
    Read {
        message: String,
        /// Worth trying again (the server was unreachable or failed), or not (it refused).
        transient: bool,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("the installer image's server does not answer byte-range reads (HTTP Range), which a per-operation boot ISO needs")]
    NoRanges,
    #[error("the installer image is not an ISO 9660 image osprov can add files to: {0}")]
    NotIso9660(String),
    #[error("kernel arguments were asked for, but the installer image has no ISOLINUX/SYSLINUX or GRUB kernel line to add them to")]
    NoBootMenu,
}

impl BootIsoError {
    /// The one place that decides whether trying again can help.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BootIsoError::Read {
                transient: true,
                ..
            }
        )
    }
}

/// Random access to an installer image.
#[async_trait::async_trait]
pub trait Source: Send + Sync {
    /// `len` bytes from `offset` (fewer only at the end of the image).
    async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, BootIsoError>;
    /// The image's length.
    async fn size(&self) -> Result<u64, BootIsoError>;
}

/// One directory tree of the image: the primary one or a Joliet one.
struct Tree {
    /// Sector of its volume descriptor.
    descriptor: usize,
    joliet: bool,
    rock_ridge: bool,
    root: (u32, u32),
    /// Path tables (sector, big-endian) whose first entry is the root.
    path_tables: Vec<(u32, bool)>,
}

/// A directory read from the image.
struct Dir {
    extent: u32,
    records: Vec<(usize, Record)>,
}

/// The tail being built: extents are handed out in order from `start`.
struct Tail {
    start: u32,
    bytes: Vec<u8>,
}

impl Tail {
    fn next_extent(&self) -> u32 {
        self.start + sectors(self.bytes.len())
    }

    fn push(&mut self, data: &[u8]) -> u32 {
        let extent = self.next_extent();
        self.bytes.extend_from_slice(data);
        let rest = self.bytes.len() % SECTOR;
        if rest != 0 {
            self.bytes.resize(self.bytes.len() + SECTOR - rest, 0);
        }
        extent
    }
}

/// Make the boot ISO: `files` (name, contents) at the root, `kernel_args` in the boot menus.
pub async fn remaster(
    src: &dyn Source,
    upstream: &str,
    files: &[(String, Vec<u8>)],
    kernel_args: Option<&str>,
) -> Result<BootIso, BootIsoError> {
    let upstream_len = src.size().await?;
    let descriptors = read_descriptors(src).await?;
    let mut trees = find_trees(&descriptors)?;
    let volume = descriptors
        .iter()
        .find(|d| d[0] == 1)
        .map(|d| le32(d, 80))
        .unwrap_or(0);
    let start = volume.max(u32::try_from(upstream_len.div_ceil(SECTOR as u64)).unwrap_or(u32::MAX));
    let mut tail = Tail {
        start,
        bytes: Vec::new(),
    };
    let mut patches = Vec::new();
    let mut roots = Vec::new();
    for t in &mut trees {
        let root = read_dir(src, t.root.0, t.root.1).await?;
        t.rock_ridge = !t.joliet
            && root
                .records
                .first()
                .is_some_and(|(_, r)| r.announces_susp());
        roots.push(root);
    }
    // Moved records inside each root, by offset.
    let mut root_moves: Vec<HashMap<usize, (u32, u32)>> = vec![HashMap::new(); trees.len()];
    if let Some(args) = kernel_args {
        let menus = rewrite_menus(src, &trees, &roots, args, &mut tail).await?;
        if menus.is_empty() {
            return Err(BootIsoError::NoBootMenu);
        }
        for m in menus {
            if m.dir == trees[m.tree].root.0 {
                root_moves[m.tree].insert(m.offset, m.to);
            } else {
                let mut r = m.record;
                r.set_extent(m.to.0, m.to.1);
                patches.push(Patch {
                    offset: u64::from(m.dir) * SECTOR as u64 + m.offset as u64,
                    bytes: r.bytes,
                });
            }
        }
    }
    let added: Vec<(String, u32, u32)> = files
        .iter()
        .map(|(name, data)| {
            let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
            (name.clone(), tail.push(data), size)
        })
        .collect();
    for (i, t) in trees.iter_mut().enumerate() {
        let new_root = new_root(t, &roots[i], &root_moves[i], &added, &mut tail);
        patches.extend(parent_patches(src, t, &roots[i], new_root).await?);
        for &(sector, big) in &t.path_tables {
            let v = if big {
                new_root.0.to_be_bytes()
            } else {
                new_root.0.to_le_bytes()
            };
            patches.push(Patch {
                offset: u64::from(sector) * SECTOR as u64 + 2,
                bytes: v.to_vec(),
            });
        }
        t.root = new_root;
    }
    let end = tail.next_extent();
    for (i, d) in descriptors.iter().enumerate() {
        if !matches!(d[0], 1 | 2) {
            continue;
        }
        let mut d = d.clone();
        set_both32(&mut d, 80, end);
        if let Some(t) = trees.iter().find(|t| t.descriptor == i) {
            set_both32(&mut d, 156 + 2, t.root.0);
            set_both32(&mut d, 156 + 10, t.root.1);
        }
        patches.push(Patch {
            offset: ((16 + i) * SECTOR) as u64,
            bytes: d,
        });
    }
    patches.sort_by_key(|p| p.offset);
    Ok(BootIso {
        upstream: upstream.to_string(),
        upstream_len,
        tail_start: u64::from(start) * SECTOR as u64,
        patches,
        tail: tail.bytes,
    })
}

/// The volume descriptors from sector 16 up to the set terminator.
async fn read_descriptors(src: &dyn Source) -> Result<Vec<Vec<u8>>, BootIsoError> {
    let mut out = Vec::new();
    for i in 0..32usize {
        let d = src.read_at(((16 + i) * SECTOR) as u64, SECTOR).await?;
        if d.len() < SECTOR || &d[1..6] != b"CD001" {
            return Err(BootIsoError::NotIso9660(format!(
                "no ISO 9660 volume descriptor at sector {}",
                16 + i
            )));
        }
        if d[0] == 255 {
            return Ok(out);
        }
        out.push(d);
    }
    Err(BootIsoError::NotIso9660(
        "no volume descriptor set terminator in the first 32 descriptors".into(),
    ))
}

/// The primary tree and the Joliet ones.
fn find_trees(descriptors: &[Vec<u8>]) -> Result<Vec<Tree>, BootIsoError> {
    let mut trees = Vec::new();
    for (i, d) in descriptors.iter().enumerate() {
        let joliet = d[0] == 2 && d[6] == 1 && matches!(&d[88..91], b"%/@" | b"%/C" | b"%/E");
        if d[0] != 1 && !joliet {
            continue;
        }
        if u16::from_le_bytes([d[128], d[129]]) as usize != SECTOR {
            return Err(BootIsoError::NotIso9660(
                "a logical block size other than 2048".into(),
            ));
        }
        let path_tables = [(140, false), (144, false), (148, true), (152, true)]
            .into_iter()
            .filter_map(|(at, big)| {
                let s = if big {
                    u32::from_be_bytes([d[at], d[at + 1], d[at + 2], d[at + 3]])
                } else {
                    le32(d, at)
                };
                (s != 0).then_some((s, big))
            })
            .collect();
        trees.push(Tree {
            descriptor: i,
            joliet,
            rock_ridge: false,
            root: (le32(d, 156 + 2), le32(d, 156 + 10)),
            path_tables,
        });
    }
    if !trees.iter().any(|t| !t.joliet) {
        return Err(BootIsoError::NotIso9660(
            "no primary volume descriptor".into(),
        ));
    }
    Ok(trees)
}

async fn read_dir(src: &dyn Source, extent: u32, size: u32) -> Result<Dir, BootIsoError> {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > MAX_READ {
        return Err(BootIsoError::NotIso9660(format!(
            "a directory of {size} bytes (at most {MAX_READ})"
        )));
    }
    let bytes = src.read_at(u64::from(extent) * SECTOR as u64, size).await?;
    Ok(Dir {
        extent,
        records: Record::parse_dir(&bytes),
    })
}

/// A boot menu moved into the tail, as one tree sees it.
struct Moved {
    tree: usize,
    /// The directory holding its record, and the record's offset there.
    dir: u32,
    offset: usize,
    record: Record,
    to: (u32, u32),
}

/// Where boot menus live, for which loader, and which files there are menus.
const MENU_DIRS: [(&str, Loader); 8] = [
    ("isolinux", Loader::Syslinux),
    ("syslinux", Loader::Syslinux),
    ("boot/isolinux", Loader::Syslinux),
    ("boot/syslinux", Loader::Syslinux),
    ("boot/grub", Loader::Grub),
    ("boot/grub2", Loader::Grub),
    ("EFI/BOOT", Loader::Grub),
    ("boot/grub/x86_64-efi", Loader::Grub),
];

fn is_menu(name: &str, loader: Loader) -> bool {
    let name = name.to_ascii_lowercase();
    match loader {
        Loader::Syslinux => name.ends_with(".cfg"),
        Loader::Grub => name == "grub.cfg" || name == "loopback.cfg",
    }
}

/// Rewrite every boot menu with a kernel line into the tail; the records to repoint, per tree.
async fn rewrite_menus(
    src: &dyn Source,
    trees: &[Tree],
    roots: &[Dir],
    args: &str,
    tail: &mut Tail,
) -> Result<Vec<Moved>, BootIsoError> {
    let mut moved = Vec::new();
    let primary = trees.iter().position(|t| !t.joliet).unwrap_or(0);
    for (path, loader) in MENU_DIRS {
        let Some(dir) = walk(src, &roots[primary], path, trees[primary].joliet).await? else {
            continue;
        };
        for (_, r) in &dir.records {
            let name = r.name(false);
            if r.is_dir() || r.is_self_or_parent() || !is_menu(&name, loader) {
                continue;
            }
            let size = usize::try_from(r.size()).unwrap_or(usize::MAX);
            if size > MAX_READ {
                continue;
            }
            let text = src
                .read_at(u64::from(r.extent()) * SECTOR as u64, size)
                .await?;
            let Some(new) = kernel_args::add(&String::from_utf8_lossy(&text), args, loader) else {
                continue;
            };
            let to = (
                tail.push(new.as_bytes()),
                u32::try_from(new.len()).unwrap_or(u32::MAX),
            );
            // The same file in every tree (trees share file extents, not directories).
            for (ti, t) in trees.iter().enumerate() {
                let Some(d) = walk(src, &roots[ti], path, t.joliet).await? else {
                    continue;
                };
                for (offset, rec) in &d.records {
                    if rec.extent() == r.extent() && !rec.is_dir() {
                        moved.push(Moved {
                            tree: ti,
                            dir: d.extent,
                            offset: *offset,
                            record: rec.clone(),
                            to,
                        });
                    }
                }
            }
        }
    }
    Ok(moved)
}

/// The directory at `path` (components matched without regard to case), from `root`.
async fn walk(
    src: &dyn Source,
    root: &Dir,
    path: &str,
    joliet: bool,
) -> Result<Option<Dir>, BootIsoError> {
    let mut here: Option<Dir> = None;
    for component in path.split('/') {
        let records = &here.as_ref().unwrap_or(root).records;
        let Some((extent, size)) = records
            .iter()
            .find(|(_, r)| {
                r.is_dir()
                    && !r.is_self_or_parent()
                    && r.name(joliet).eq_ignore_ascii_case(component)
            })
            .map(|(_, r)| (r.extent(), r.size()))
        else {
            return Ok(None);
        };
        here = Some(read_dir(src, extent, size).await?);
    }
    Ok(here)
}

/// Write the tree's new root (old records, moved menus repointed, the added files, sorted) into
/// the tail; its extent and size.
fn new_root(
    tree: &Tree,
    root: &Dir,
    moves: &HashMap<usize, (u32, u32)>,
    added: &[(String, u32, u32)],
    tail: &mut Tail,
) -> (u32, u32) {
    let date = root
        .records
        .first()
        .map(|(_, r)| r.date())
        .unwrap_or_default();
    let mut specials = Vec::new();
    let mut rest = Vec::new();
    for (offset, r) in &root.records {
        let mut r = r.clone();
        if let Some(&(e, s)) = moves.get(offset) {
            r.set_extent(e, s);
        }
        if r.is_self_or_parent() {
            specials.push(r);
        } else if !added
            .iter()
            .any(|(n, _, _)| r.name(tree.joliet).eq_ignore_ascii_case(n))
        {
            rest.push(r);
        }
    }
    for (name, extent, size) in added {
        rest.push(Record::file(
            name,
            tree.joliet,
            tree.rock_ridge,
            *extent,
            *size,
            date,
        ));
    }
    rest.sort_by(|a, b| a.raw_name().cmp(b.raw_name()));
    specials.extend(rest);
    let size = u32::try_from(layout_dir(&specials).len()).unwrap_or(u32::MAX);
    let extent = tail.next_extent();
    for r in specials
        .iter_mut()
        .take(2)
        .filter(|r| r.is_self_or_parent())
    {
        r.set_extent(extent, size);
    }
    let written = tail.push(&layout_dir(&specials));
    debug_assert_eq!(written, extent);
    (extent, size)
}

/// Each root subdirectory's `..` record, pointed at the new root.
async fn parent_patches(
    src: &dyn Source,
    tree: &Tree,
    root: &Dir,
    new_root: (u32, u32),
) -> Result<Vec<Patch>, BootIsoError> {
    let mut out = Vec::new();
    for (_, r) in &root.records {
        if !r.is_dir() || r.is_self_or_parent() {
            continue;
        }
        let first = src
            .read_at(u64::from(r.extent()) * SECTOR as u64, SECTOR)
            .await?;
        let records = Record::parse_dir(&first);
        let Some((offset, parent)) = records.iter().find(|(_, p)| p.raw_name() == [1]).cloned()
        else {
            return Err(BootIsoError::NotIso9660(format!(
                "directory {} of the {} tree has no parent record",
                r.name(tree.joliet),
                if tree.joliet { "Joliet" } else { "primary" }
            )));
        };
        let mut parent = parent;
        parent.set_extent(new_root.0, new_root.1);
        out.push(Patch {
            offset: u64::from(r.extent()) * SECTOR as u64 + offset as u64,
            bytes: parent.bytes,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
