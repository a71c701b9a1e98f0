//! Attachment records: what each attachment programmed, one durable file per
//! (network, container, interface).

use super::*;

/// `<dataDir>/<network>`: each network's records apart, so GC of one never
/// sees another's.
pub(super) fn network_dir(conf: &NetConf) -> PathBuf {
    conf.data_dir.join(&conf.name)
}

/// The longest file name Linux file systems take (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// `<dataDir>/<network>/<record_name>`.
pub(super) fn record_path(conf: &NetConf, attachment: &Attachment) -> PathBuf {
    network_dir(conf).join(record_name(attachment))
}

/// `<containerID>:<ifname>.json`; neither part can hold a ':' or a '/'
/// (both are validated). A container ID too long for a file name (the spec
/// allows any length) is cut and followed by `~` and the CRC-32 of the whole
/// ID ('~' is in no container ID): the name then stands for itself.
pub(super) fn record_name(attachment: &Attachment) -> String {
    let (id, ifname) = (&attachment.container_id, &attachment.ifname);
    let name = format!("{id}:{ifname}.json");
    if name.len() <= NAME_MAX {
        return name;
    }
    // Container IDs are ASCII (validated): any byte is a character boundary.
    let kept = NAME_MAX - ":.json".len() - ifname.len() - "~00000000".len();
    let checksum = crc32fast::hash(id.as_bytes());
    format!("{}~{checksum:08x}:{ifname}.json", &id[..kept.min(id.len())])
}

/// Where plugin versions before networks had directories kept the record.
pub(super) fn legacy_record_path(conf: &NetConf, attachment: &Attachment) -> PathBuf {
    conf.data_dir.join(format!(
        "{}-{}.json",
        attachment.container_id, attachment.ifname
    ))
}

/// The attachment a record file name stands for.
pub(super) fn attachment_of_record(file_name: &str) -> Option<Attachment> {
    let (container_id, ifname) = file_name.strip_suffix(".json")?.split_once(':')?;
    Some(Attachment {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
    })
}

/// Writes the record durably: a temporary file, synced, renamed over the
/// record, and the directory synced, so after a power loss the record is
/// either whole or absent.
pub(super) fn write_record(path: &Path, record: &AttachmentRecord) -> CniResult<()> {
    let failure = |error: std::io::Error| {
        CniError::new(code::IO_FAILURE, format!("cannot write {}", path.display()))
            .with_details(error)
    };
    let directory = path.parent().expect("records live in a directory");
    std::fs::create_dir_all(directory).map_err(failure)?;
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary).map_err(failure)?;
    file.write_all(&serde_json::to_vec(record).expect("records serialize"))
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path))
        .and_then(|()| File::open(directory)?.sync_all())
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temporary);
        })
        .map_err(failure)
}

/// What reading a record found.
pub(super) enum Record {
    Absent,
    Found(AttachmentRecord),
    /// Present but unreadable or not a record (e.g. truncated by a crash).
    Unreadable(CniError),
}

/// No such file, or no such directory to hold it.
pub(super) fn is_absent(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

pub(super) fn read_record(path: &Path) -> Record {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(record) => Record::Found(record),
            Err(error) => Record::Unreadable(
                CniError::new(code::IO_FAILURE, format!("{} is corrupt", path.display()))
                    .with_details(error),
            ),
        },
        Err(error) if is_absent(&error) => Record::Absent,
        Err(error) => Record::Unreadable(
            CniError::new(code::IO_FAILURE, format!("cannot read {}", path.display()))
                .with_details(error),
        ),
    }
}

pub(super) fn remove_record(path: &Path) -> CniResult<()> {
    match std::fs::remove_file(path) {
        Err(error) if !is_absent(&error) => Err(CniError::new(
            code::IO_FAILURE,
            format!("cannot remove {}", path.display()),
        )
        .with_details(error)),
        _ => Ok(()),
    }
}
