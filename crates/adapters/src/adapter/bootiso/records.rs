//! ISO 9660 directory records and volume descriptors: only the fields a remaster reads and
//! rewrites (ECMA-119 §8.4 volume descriptors, §9.1 directory records, §9.4 path tables), Rock
//! Ridge's `SP` and `NM` entries (SUSP §5.3, RRIP §4.1.4) and Joliet's UCS-2 names.
//!
//! Hand-written, because the one maintained Rust ISO 9660 crate we use (`hadris-iso`, which
//! writes the config drive) rewrites a whole image to change it: its multi-session modifier
//! flattens subdirectories into the root and drops Rock Ridge, and an installer ISO of several
//! GiB must not be copied at all. Here a record is its bytes as found on the disc, and the
//! accessors read the handful of fields at their fixed offsets.

/// The logical sector (and block) size of every ISO 9660 image osprov remasters.
pub const SECTOR: usize = 2048;

/// Little-endian `u32` at `at`.
pub fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

/// Write `v` as a both-endian `u32` (ECMA-119 §7.3.3): little-endian at `at`, big-endian at
/// `at + 4`.
pub fn set_both32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 8) {
        s[..4].copy_from_slice(&v.to_le_bytes());
        s[4..].copy_from_slice(&v.to_be_bytes());
    }
}

/// One directory record, as its bytes on the disc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub bytes: Vec<u8>,
}

/// File flag bit: a directory.
const DIRECTORY: u8 = 0x02;

impl Record {
    /// The records of a directory extent, each with its offset in `dir`. A zero length byte
    /// ends a sector's records (records never cross a sector boundary).
    pub fn parse_dir(dir: &[u8]) -> Vec<(usize, Record)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < dir.len() {
            let len = usize::from(dir[at]);
            if len < 34 || at + len > dir.len() {
                // Padding to the end of this sector.
                at = (at / SECTOR + 1) * SECTOR;
                continue;
            }
            out.push((
                at,
                Record {
                    bytes: dir[at..at + len].to_vec(),
                },
            ));
            at += len;
        }
        out
    }

    pub fn extent(&self) -> u32 {
        le32(&self.bytes, 2)
    }

    pub fn size(&self) -> u32 {
        le32(&self.bytes, 10)
    }

    pub fn is_dir(&self) -> bool {
        self.bytes.get(25).is_some_and(|f| f & DIRECTORY != 0)
    }

    /// The identifier as recorded (`\0` for `.`, `\x01` for `..`).
    pub fn raw_name(&self) -> &[u8] {
        let n = usize::from(self.bytes.get(32).copied().unwrap_or(0));
        self.bytes.get(33..33 + n).unwrap_or_default()
    }

    /// `.` or `..`.
    pub fn is_self_or_parent(&self) -> bool {
        matches!(self.raw_name(), [0] | [1])
    }

    /// The System Use area (Rock Ridge entries live here).
    pub fn system_use(&self) -> &[u8] {
        let n = usize::from(self.bytes.get(32).copied().unwrap_or(0));
        let start = 33 + n + usize::from(n.is_multiple_of(2));
        self.bytes.get(start..).unwrap_or_default()
    }

    /// Whether this (a root's `.`) announces SUSP, and so Rock Ridge: an `SP` entry first.
    pub fn announces_susp(&self) -> bool {
        self.system_use().starts_with(b"SP") && self.system_use().get(4..6) == Some(&[0xBE, 0xEF])
    }

    /// The name a reader shows: Rock Ridge's `NM`, else the Joliet (UCS-2) or ISO name without
    /// its version, in lower case for plain ISO names as Linux shows them.
    pub fn name(&self, joliet: bool) -> String {
        if let Some(nm) = self.rock_ridge_name() {
            return nm;
        }
        let raw = self.raw_name();
        let text = if joliet {
            let units: Vec<u16> = raw
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        } else {
            String::from_utf8_lossy(raw).to_ascii_lowercase()
        };
        let text = text.split(';').next().unwrap_or_default();
        text.strip_suffix('.').unwrap_or(text).to_string()
    }

    /// The concatenated `NM` entries, when there are any (entries in a continuation area are not
    /// followed: the ISO name serves then).
    fn rock_ridge_name(&self) -> Option<String> {
        let mut su = self.system_use();
        let mut name = Vec::new();
        let mut found = false;
        while su.len() >= 4 {
            let len = usize::from(su[2]);
            if len < 4 || len > su.len() {
                break;
            }
            if &su[..2] == b"NM" && len >= 5 {
                found = true;
                name.extend_from_slice(&su[5..len]);
            }
            su = &su[len..];
        }
        found.then(|| String::from_utf8_lossy(&name).into_owned())
    }

    /// Point this record at another extent of another size.
    pub fn set_extent(&mut self, extent: u32, size: u32) {
        set_both32(&mut self.bytes, 2, extent);
        set_both32(&mut self.bytes, 10, size);
    }

    /// A record for a regular file named `name`, in a Joliet tree or a primary one (with a Rock
    /// Ridge `NM` entry when the tree has Rock Ridge), dated `date` (ECMA-119 §9.1.5).
    pub fn file(
        name: &str,
        joliet: bool,
        rock_ridge: bool,
        extent: u32,
        size: u32,
        date: [u8; 7],
    ) -> Record {
        let id: Vec<u8> = if joliet {
            name.encode_utf16().flat_map(u16::to_be_bytes).collect()
        } else {
            iso_identifier(name)
        };
        let mut su = Vec::new();
        if rock_ridge && !joliet {
            let nm = name.as_bytes();
            su.extend_from_slice(b"NM");
            su.push(u8::try_from(5 + nm.len()).unwrap_or(u8::MAX));
            su.extend_from_slice(&[1, 0]);
            su.extend_from_slice(nm);
        }
        let pad = usize::from(id.len().is_multiple_of(2));
        let mut len = 33 + id.len() + pad + su.len();
        len += len % 2;
        let mut b = vec![0u8; len];
        b[0] = u8::try_from(len).unwrap_or(u8::MAX);
        set_both32(&mut b, 2, extent);
        set_both32(&mut b, 10, size);
        b[18..25].copy_from_slice(&date);
        // Volume sequence number 1, both-endian u16.
        b[28..32].copy_from_slice(&[1, 0, 0, 1]);
        b[32] = u8::try_from(id.len()).unwrap_or(u8::MAX);
        b[33..33 + id.len()].copy_from_slice(&id);
        let su_at = 33 + id.len() + pad;
        b[su_at..su_at + su.len()].copy_from_slice(&su);
        Record { bytes: b }
    }

    /// The recording date (7 bytes).
    pub fn date(&self) -> [u8; 7] {
        let mut d = [0u8; 7];
        if let Some(s) = self.bytes.get(18..25) {
            d.copy_from_slice(s);
        }
        d
    }
}

/// An ISO 9660 file identifier for `name`: d-characters (`A-Z`, `0-9`, `_`), one dot, `;1`.
fn iso_identifier(name: &str) -> Vec<u8> {
    let upper: String = name
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            c @ ('A'..='Z' | '0'..='9' | '_' | '.') => c,
            _ => '_',
        })
        .collect();
    let (stem, ext) = match upper.rsplit_once('.') {
        Some((s, e)) => (s.replace('.', "_"), e.to_string()),
        None => (upper, String::new()),
    };
    format!("{stem}.{ext};1").into_bytes()
}

/// Lay records out as a directory extent: whole sectors, no record crossing a sector boundary.
pub fn layout_dir(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let used = out.len() % SECTOR;
        if used + r.bytes.len() > SECTOR {
            out.resize(out.len() + SECTOR - used, 0);
        }
        out.extend_from_slice(&r.bytes);
    }
    let rest = out.len() % SECTOR;
    if rest != 0 || out.is_empty() {
        out.resize(out.len() + SECTOR - rest, 0);
    }
    out
}

/// How many sectors `len` bytes take.
pub fn sectors(len: usize) -> u32 {
    u32::try_from(len.div_ceil(SECTOR)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_record_reads_back_its_fields_and_names() {
        let r = Record::file("user-data", false, true, 77, 1234, [126, 12, 8, 1, 2, 3, 0]);
        assert_eq!((r.extent(), r.size(), r.is_dir()), (77, 1234, false));
        assert_eq!(r.raw_name(), b"USER_DATA.;1");
        assert_eq!(r.name(false), "user-data");
        assert_eq!(r.bytes.len() % 2, 0);
        let plain = Record::file("meta-data", false, false, 1, 2, [0; 7]);
        assert_eq!(plain.name(false), "meta_data");
        let j = Record::file("network-config", true, true, 5, 6, [0; 7]);
        assert_eq!(j.name(true), "network-config");
        assert!(j.system_use().is_empty());
    }

    #[test]
    fn records_never_cross_a_sector_and_parse_back_in_order() {
        let records: Vec<Record> = (0..60)
            .map(|i| Record::file(&format!("file-number-{i:03}"), false, true, i, 1, [0; 7]))
            .collect();
        let dir = layout_dir(&records);
        assert_eq!(dir.len() % SECTOR, 0);
        let back = Record::parse_dir(&dir);
        assert_eq!(back.len(), 60);
        for (i, (at, r)) in back.iter().enumerate() {
            assert_eq!(at / SECTOR, (at + r.bytes.len() - 1) / SECTOR);
            assert_eq!(r.name(false), format!("file-number-{i:03}"));
        }
    }

    #[test]
    fn both_endian_fields_are_written_both_ways() {
        let mut b = [0u8; 8];
        set_both32(&mut b, 0, 0x0102_0304);
        assert_eq!(b, [4, 3, 2, 1, 1, 2, 3, 4]);
        assert_eq!(le32(&b, 0), 0x0102_0304);
    }
}
