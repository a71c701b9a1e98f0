//! Loading the eBPF object: bpffs, the versioned pin directory, and checks
//! that pinned maps from an earlier run still have the layout we expect.

use std::{
    io,
    mem::size_of,
    path::{Path, PathBuf},
};

use aya::{Ebpf, EbpfLoader, maps::MapInfo, programs::SchedClassifier};
use dataplane_common::{
    Counter, CounterValue, EVENTS_RING_BYTES, Endpoint, EventBudget, FlowKey, Ipv4Octets,
    MAP_LAYOUT_VERSION, MAX_ENDPOINTS, MAX_HOST_ADDRESSES, MAX_NAT_ENTRIES, MAX_NO_MASQUERADE,
    MAX_REMOTE_NODES, MonitorConfig, NatEntry, NodeConfig, RemoteNode, TunnelRoute, names,
};
use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use crate::EBPF_OBJECT;

const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot mount bpffs at {BPFFS_MOUNT_POINT}: {0}")]
    MountBpffs(nix::Error),
    #[error("cannot create pin directory {path}: {source}")]
    PinDirectory { path: PathBuf, source: io::Error },
    #[error(
        "{0} is not on a bpf filesystem (mount -t bpf bpf <dir>, or pick a bpf_root under {BPFFS_MOUNT_POINT})"
    )]
    NotBpffs(PathBuf),
    #[error(
        "pinned map {path} has {what} {found}, expected {expected}: its layout changed without a \
         MAP_LAYOUT_VERSION bump; remove {path} (or run `dataplane uninstall`)"
    )]
    IncompatiblePin {
        path: PathBuf,
        what: &'static str,
        found: u32,
        expected: u32,
    },
    #[error("cannot inspect pinned map {path}: {source}")]
    InspectPin {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error("cannot load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("cannot load program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
}

/// Where this build's maps live: `<bpf_root>/v<MAP_LAYOUT_VERSION>`.
pub fn pin_directory(bpf_root: &Path) -> PathBuf {
    bpf_root.join(format!("v{MAP_LAYOUT_VERSION}"))
}

/// Removes pin directories of other map layout versions under `bpf_root`:
/// their pinned links would keep programs of an older build attached beside
/// ours, and their maps cannot be read by this build. Called once this
/// build's programs are attached. Returns the directories removed.
pub fn remove_other_layout_versions(bpf_root: &Path) -> Vec<PathBuf> {
    let current = pin_directory(bpf_root);
    let Ok(entries) = std::fs::read_dir(bpf_root) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| *path != current)
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| name.strip_prefix('v'))
                .is_some_and(|version| version.parse::<u32>().is_ok())
        })
        .filter(|path| std::fs::remove_dir_all(path).is_ok())
        .collect()
}

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there yet.
pub fn ensure_bpffs_mounted() -> Result<(), LoadError> {
    if is_bpffs(Path::new(BPFFS_MOUNT_POINT)) {
        return Ok(());
    }
    mount(
        Some("bpf"),
        BPFFS_MOUNT_POINT,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(LoadError::MountBpffs)
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Expected (key size, value size, max entries) of every pinned map.
fn expected_layouts() -> [(&'static str, u32, u32, u32); 11] {
    let size = |bytes: usize| bytes as u32;
    [
        (
            names::ENDPOINTS_MAP,
            size(size_of::<Ipv4Octets>()),
            size(size_of::<Endpoint>()),
            MAX_ENDPOINTS,
        ),
        (
            names::NODE_CONFIG_MAP,
            size(size_of::<u32>()),
            size(size_of::<NodeConfig>()),
            1,
        ),
        (
            names::TUNNEL_ROUTES_MAP,
            // LPM trie keys are {u32 prefix length, address}.
            size(size_of::<u32>() + size_of::<Ipv4Octets>()),
            size(size_of::<TunnelRoute>()),
            MAX_REMOTE_NODES,
        ),
        (
            names::REMOTE_NODES_MAP,
            size(size_of::<Ipv4Octets>()),
            size(size_of::<RemoteNode>()),
            MAX_REMOTE_NODES,
        ),
        (
            names::NAT_MAP,
            size(size_of::<FlowKey>()),
            size(size_of::<NatEntry>()),
            MAX_NAT_ENTRIES,
        ),
        (
            names::NO_MASQUERADE_MAP,
            size(size_of::<u32>() + size_of::<Ipv4Octets>()),
            size(size_of::<u8>()),
            MAX_NO_MASQUERADE,
        ),
        (
            names::HOST_ADDRESSES_MAP,
            size(size_of::<Ipv4Octets>()),
            size(size_of::<u8>()),
            MAX_HOST_ADDRESSES,
        ),
        (names::EVENTS_MAP, 0, 0, EVENTS_RING_BYTES),
        (
            names::MONITOR_MAP,
            size(size_of::<u32>()),
            size(size_of::<MonitorConfig>()),
            1,
        ),
        (
            names::EVENT_BUDGET_MAP,
            size(size_of::<u32>()),
            size(size_of::<EventBudget>()),
            1,
        ),
        (
            names::COUNTERS_MAP,
            size(size_of::<u32>()),
            size(size_of::<CounterValue>()),
            Counter::COUNT,
        ),
    ]
}

fn check_pinned_layouts(pin_dir: &Path) -> Result<(), LoadError> {
    for (name, key_size, value_size, max_entries) in expected_layouts() {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| LoadError::InspectPin {
            path: path.clone(),
            source,
        })?;
        for (what, found, expected) in [
            ("key size", info.key_size(), key_size),
            ("value size", info.value_size(), value_size),
            ("max entries", info.max_entries(), max_entries),
        ] {
            if found != expected {
                return Err(LoadError::IncompatiblePin {
                    path,
                    what,
                    found,
                    expected,
                });
            }
        }
    }
    Ok(())
}

/// Loads the programs into the kernel, reusing maps pinned under `pin_dir`
/// (creating and pinning them on first start).
pub fn load(pin_dir: &Path) -> Result<Ebpf, LoadError> {
    std::fs::create_dir_all(pin_dir).map_err(|source| LoadError::PinDirectory {
        path: pin_dir.to_owned(),
        source,
    })?;
    if !is_bpffs(pin_dir) {
        return Err(LoadError::NotBpffs(pin_dir.to_owned()));
    }
    check_pinned_layouts(pin_dir)?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(EBPF_OBJECT)?;
    for name in PROGRAMS {
        classifier(&mut ebpf, name)
            .load()
            .map_err(|source| LoadError::Program { name, source })?;
    }
    Ok(ebpf)
}

/// Every program of the object; all are TC classifiers.
pub const PROGRAMS: [&str; 4] = [
    names::FROM_POD_PROGRAM,
    names::FROM_TUNNEL_PROGRAM,
    names::FROM_HOST_PROGRAM,
    names::FROM_UPLINK_PROGRAM,
];

/// The classifier `name` of a loaded object.
pub fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
    ebpf.program_mut(name)
        .and_then(|program| program.try_into().ok())
        .unwrap_or_else(|| panic!("the eBPF object built with this agent has a {name} classifier"))
}
