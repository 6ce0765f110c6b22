//! The libvirt XML osprov reads and writes, as pure functions over strings: the root disk of a
//! domain and how to point it at another volume, and osprov's record in the domain's
//! `<metadata>`. No libvirt inside, so it builds and is unit-tested without the `libvirt`
//! feature.
//!
//! Reading uses quick-xml. Rewriting the domain XML changes only the root disk's `<source>`
//! element, in place, and leaves every other byte as libvirt wrote it (a full parse and
//! re-serialisation would reorder attributes and drop what osprov does not model).
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// The XML namespace of osprov's metadata element.
pub const NAMESPACE: &str = "https://osprov.io/libvirt/v1";
/// The prefix libvirt writes osprov's element with.
pub const PREFIX: &str = "osprov";

/// Errors reading libvirt XML.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("malformed XML: {0}")]
    Malformed(#[from] quick_xml::Error),
    #[error("malformed XML attribute: {0}")]
    Attribute(#[from] quick_xml::events::attributes::AttrError),
    #[error("the domain has no disk device{}", .0.as_deref().map(|t| format!(" with target {t}")).unwrap_or_default())]
    NoRootDisk(Option<String>),
    #[error("root disk {0} has no source (a disk of type {1})")]
    NoSource(String, String),
    #[error("{0}")]
    Unsupported(String),
}

/// Where a disk's data comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskSource {
    /// `<disk type='file'>`: a path, normally a volume of a pool.
    File(String),
    /// `<disk type='volume'>`: a volume of a pool, by name.
    Volume { pool: String, volume: String },
}

/// The domain's root disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootDisk {
    /// Target device (`vda`).
    pub target: String,
    pub source: DiskSource,
    /// Byte range of its `<source …/>` element in the XML it was read from.
    span: (usize, usize),
}

/// The unescaped value of attribute `name`.
pub(super) fn attr(e: &BytesStart<'_>, name: &str) -> Result<Option<String>, XmlError> {
    for a in e.attributes() {
        let a = a?;
        if a.key.as_ref() == name.as_bytes() {
            return Ok(Some(a.unescape_value()?.into_owned()));
        }
    }
    Ok(None)
}

/// The reader's byte offset.
pub(super) fn pos(reader: &Reader<&[u8]>) -> usize {
    usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX)
}

/// A disk element being read.
#[derive(Default)]
struct DiskRead {
    kind: String,
    target: Option<String>,
    source: Option<(DiskSource, (usize, usize))>,
}

/// The root disk: the disk device with target `wanted`, else the first disk device (cdroms and
/// floppies are not disks).
pub fn root_disk(domain_xml: &str, wanted: Option<&str>) -> Result<RootDisk, XmlError> {
    let mut reader = Reader::from_str(domain_xml);
    let mut current: Option<DiskRead> = None;
    let mut depth_in_devices = false;
    loop {
        let start = pos(&reader);
        let event = reader.read_event()?;
        let end = pos(&reader);
        match event {
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"devices" => {
                depth_in_devices = true;
            }
            Event::Start(e) if depth_in_devices && e.name().as_ref() == b"disk" => {
                current = (attr(&e, "device")?.as_deref().unwrap_or("disk") == "disk").then(|| {
                    DiskRead {
                        kind: attr(&e, "type").ok().flatten().unwrap_or_default(),
                        ..Default::default()
                    }
                });
            }
            Event::Start(e) | Event::Empty(e) => {
                let Some(disk) = current.as_mut() else {
                    continue;
                };
                match e.name().as_ref() {
                    b"target" => disk.target = attr(&e, "dev")?,
                    b"source" if disk.source.is_none() => {
                        let source = match disk.kind.as_str() {
                            "volume" => match (attr(&e, "pool")?, attr(&e, "volume")?) {
                                (Some(pool), Some(volume)) => {
                                    Some(DiskSource::Volume { pool, volume })
                                }
                                _ => None,
                            },
                            _ => attr(&e, "file")?.map(DiskSource::File),
                        };
                        disk.source = source.map(|s| (s, (start, end)));
                    }
                    _ => {}
                }
            }
            Event::End(e) if e.name().as_ref() == b"disk" => {
                let Some(disk) = current.take() else {
                    continue;
                };
                let target = disk.target.clone().unwrap_or_default();
                if wanted.is_some_and(|w| w != target) {
                    continue;
                }
                let Some((source, span)) = disk.source else {
                    return Err(XmlError::NoSource(target, disk.kind));
                };
                return Ok(RootDisk {
                    target,
                    source,
                    span,
                });
            }
            Event::End(e) if e.name().as_ref() == b"devices" => depth_in_devices = false,
            Event::Eof => return Err(XmlError::NoRootDisk(wanted.map(str::to_string))),
            _ => {}
        }
    }
}

/// `domain_xml` with `disk` pointing at `source` instead; nothing else changes.
pub fn with_disk_source(domain_xml: &str, disk: &RootDisk, source: &DiskSource) -> String {
    let element = match source {
        DiskSource::File(path) => format!("<source file='{}'/>", escape(path)),
        DiskSource::Volume { pool, volume } => format!(
            "<source pool='{}' volume='{}'/>",
            escape(pool),
            escape(volume)
        ),
    };
    let (a, b) = disk.span;
    let mut out = String::with_capacity(domain_xml.len() + element.len());
    out.push_str(domain_xml.get(..a).unwrap_or_default());
    out.push_str(&element);
    out.push_str(domain_xml.get(b..).unwrap_or_default());
    out
}

/// The format (`qcow2`, `raw`) in a volume's `<target><format type=…/></target>`.
pub fn volume_format(volume_xml: &str) -> Option<String> {
    let mut reader = Reader::from_str(volume_xml);
    let mut in_target = false;
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) if e.name().as_ref() == b"target" => in_target = true,
            Event::End(e) if e.name().as_ref() == b"target" => in_target = false,
            Event::Start(e) | Event::Empty(e) if in_target && e.name().as_ref() == b"format" => {
                return attr(&e, "type").ok().flatten();
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// The XML of a volume named `name`, `capacity` bytes, in `format` when known.
pub fn volume_xml(name: &str, capacity: u64, format: Option<&str>) -> String {
    let target = format
        .map(|f| format!("<target><format type='{}'/></target>", escape(f)))
        .unwrap_or_default();
    format!(
        "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity>{target}</volume>",
        escape(name)
    )
}

fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

/// How far osprov got with the operation a [`Record`] describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// The intent is recorded; the disk may or may not be replaced yet.
    Recorded,
    /// The domain runs the new disk.
    Done,
    Failed,
    Cancelled,
}

impl Progress {
    fn as_str(self) -> &'static str {
        match self {
            Progress::Recorded => "recorded",
            Progress::Done => "done",
            Progress::Failed => "failed",
            Progress::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<Progress> {
        match s {
            "recorded" => Some(Progress::Recorded),
            "done" => Some(Progress::Done),
            "failed" => Some(Progress::Failed),
            "cancelled" => Some(Progress::Cancelled),
            _ => None,
        }
    }

    pub fn is_finished(self) -> bool {
        match self {
            Progress::Recorded => false,
            Progress::Done | Progress::Failed | Progress::Cancelled => true,
        }
    }
}

/// osprov's record on a domain: `<host os=… token=… progress=… previous=… message=…/>` in
/// [`NAMESPACE`]. An element without attributes only marks the domain as a host (see the
/// dispatcher's `domains.labelled`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// The OS the last operation installs (installed, once `Done`).
    pub os: Option<String>,
    pub token: Option<String>,
    pub progress: Option<Progress>,
    /// The root-disk volume the operation replaces (deleted once replaced).
    pub previous: Option<String>,
    /// Why the operation failed.
    pub message: Option<String>,
    /// The `iso` strategy's progress; `None` for the `image` strategy.
    pub installer: Option<Installer>,
    /// The `image` strategy's config drive (path of its volume), when the request carries
    /// configuration: attached for the new disk's first boot, removed once that boot reported.
    pub seed: Option<String>,
}

/// How far the `iso` strategy got on a domain (kept in the record, so a restart resumes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installer {
    /// Path of the ISO volume.
    pub iso: String,
    /// What attaching it changed; set just before the domain is redefined with it.
    pub undo: Option<super::installer::Undo>,
    /// The domain's id when the power cycle was decided (`off`: it was not running).
    pub reset_from: Option<String>,
    /// The domain was started with the installer; never started again for this token.
    pub started: bool,
    /// Path of the operation's config drive volume, when the request carries configuration.
    pub drive: Option<String>,
    /// The domain id of the installer's run.
    pub run: Option<String>,
    /// The installed OS was started (the installer had powered the domain off).
    pub installed_boot: bool,
}

impl Record {
    /// The element as `virDomainSetMetadata` takes it (libvirt adds the prefix and namespace).
    pub fn to_xml(&self) -> String {
        let mut out = String::from("<host");
        let fields = [
            ("os", self.os.as_deref()),
            ("token", self.token.as_deref()),
            ("progress", self.progress.map(Progress::as_str)),
            ("previous", self.previous.as_deref()),
            ("message", self.message.as_deref()),
            ("seed", self.seed.as_deref()),
        ];
        let i = self.installer.as_ref();
        let undo = i.and_then(|i| i.undo.as_ref());
        let boot = undo.map(|u| u.boot.join(","));
        let installer = [
            ("iso", i.map(|i| i.iso.as_str())),
            ("cdrom", undo.map(|u| u.cdrom.as_str())),
            ("cdromXml", undo.and_then(|u| u.cdrom_xml.as_deref())),
            ("boot", boot.as_deref()),
            ("resetFrom", i.and_then(|i| i.reset_from.as_deref())),
            ("started", i.filter(|i| i.started).map(|_| "yes")),
            ("drive", i.and_then(|i| i.drive.as_deref())),
            ("run", i.and_then(|i| i.run.as_deref())),
            (
                "installedBoot",
                i.filter(|i| i.installed_boot).map(|_| "yes"),
            ),
            ("driveTarget", undo.and_then(|u| u.drive.as_deref())),
        ];
        for (k, v) in fields.into_iter().chain(installer) {
            if let Some(v) = v {
                out.push_str(&format!(" {k}='{}'", escape(v)));
            }
        }
        out.push_str("/>");
        out
    }

    /// Read the element `virDomainGetMetadata` returns.
    pub fn parse(xml: &str) -> Result<Record, XmlError> {
        let mut reader = Reader::from_str(xml);
        loop {
            match reader.read_event()? {
                Event::Start(e) | Event::Empty(e) => {
                    return Ok(Record {
                        os: attr(&e, "os")?,
                        token: attr(&e, "token")?,
                        progress: attr(&e, "progress")?.as_deref().and_then(Progress::parse),
                        previous: attr(&e, "previous")?,
                        message: attr(&e, "message")?,
                        installer: installer(&e)?,
                        seed: attr(&e, "seed")?,
                    });
                }
                Event::Eof => return Ok(Record::default()),
                _ => {}
            }
        }
    }
}

/// The `iso` strategy's attributes of a record element.
fn installer(e: &BytesStart<'_>) -> Result<Option<Installer>, XmlError> {
    let Some(iso) = attr(e, "iso")? else {
        return Ok(None);
    };
    let undo = match attr(e, "cdrom")? {
        Some(cdrom) => Some(super::installer::Undo {
            cdrom,
            cdrom_xml: attr(e, "cdromXml")?,
            boot: attr(e, "boot")?
                .unwrap_or_default()
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect(),
            drive: attr(e, "driveTarget")?,
        }),
        None => None,
    };
    Ok(Some(Installer {
        iso,
        undo,
        reset_from: attr(e, "resetFrom")?,
        started: attr(e, "started")?.as_deref() == Some("yes"),
        drive: attr(e, "drive")?,
        run: attr(e, "run")?,
        installed_boot: attr(e, "installedBoot")?.as_deref() == Some("yes"),
    }))
}

#[cfg(test)]
mod tests;
