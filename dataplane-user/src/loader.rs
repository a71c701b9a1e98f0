//! Loading the eBPF object: bpffs, the versioned pin directory, and checks
//! that pinned maps from an earlier run still have the layout we expect.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapInfo, ProgramArray},
    programs::{CgroupSockAddr, SchedClassifier},
};
use aya_obj::maps::PinningType;
use dataplane_common::{FROM_OUTSIDE_SLOT, MAP_LAYOUT_VERSION, TO_BACKEND_SLOT, names};

use crate::EBPF_OBJECT;

mod mounts;

#[cfg(test)]
use mounts::cgroup2_mount_point;
use mounts::{BPFFS_MOUNT_POINT, is_bpffs};
pub use mounts::{cgroup2_root, ensure_bpffs_mounted};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot mount bpffs at {BPFFS_MOUNT_POINT}: {0}")]
    MountBpffs(nix::Error),
    #[error(
        "{BPFFS_MOUNT_POINT} is no bpffs in this mount namespace but is in the host's (PID 1's): \
         started under `ip netns exec`, which remounts /sys? Run the agent in the host's mount \
         namespace (enter only the network namespace, e.g. `nsenter --net=/run/netns/NAME`), \
         where its pins are"
    )]
    HostBpffsHidden,
    #[error(
        "{bpf_root} holds the maps of map layout v{newer}, newer than this agent's \
         v{MAP_LAYOUT_VERSION}: starting would remove them and every endpoint and connection \
         they hold. Run the newer agent, or `dataplane uninstall` first to start afresh"
    )]
    NewerLayout { bpf_root: PathBuf, newer: u32 },
    #[error("cannot install the tail-called programs: {0}")]
    TailCall(String),
    #[error("cannot find or mount the cgroup2 hierarchy (for the host socket hooks): {0}")]
    Cgroup2(io::Error),
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
    #[error("cannot parse the eBPF object built with this agent: {0}")]
    ParseObject(aya_obj::ParseError),
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
    layout_versions(bpf_root)
        .into_iter()
        .filter(|(version, _)| *version != MAP_LAYOUT_VERSION)
        .map(|(_, path)| path)
        .filter(|path| std::fs::remove_dir_all(path).is_ok())
        .collect()
}

/// The map layout versions pinned under `bpf_root` (`v<N>` directories).
fn layout_versions(bpf_root: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(bpf_root) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter_map(|path| {
            let version = path
                .file_name()?
                .to_str()?
                .strip_prefix('v')?
                .parse::<u32>()
                .ok()?;
            Some((version, path))
        })
        .collect()
}

/// Refuses to start over the maps of a newer layout (a downgrade): this
/// agent would remove them, and their endpoints and connections with them.
pub fn refuse_newer_layouts(bpf_root: &Path) -> Result<(), LoadError> {
    match layout_versions(bpf_root)
        .into_iter()
        .map(|(version, _)| version)
        .filter(|version| *version > MAP_LAYOUT_VERSION)
        .max()
    {
        Some(newer) => Err(LoadError::NewerLayout {
            bpf_root: bpf_root.to_owned(),
            newer,
        }),
        None => Ok(()),
    }
}

/// What a pinned map must match to be reused by this build's programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapLayout {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

impl MapLayout {
    fn fields(self) -> [(&'static str, u32); 5] {
        [
            ("map type", self.map_type),
            ("key size", self.key_size),
            ("value size", self.value_size),
            ("max entries", self.max_entries),
            ("flags", self.flags),
        ]
    }
}

/// The layout of every pinned map, as the eBPF object built with this agent
/// defines it: one definition (the eBPF crate's map declarations), nothing
/// restated here.
pub(crate) fn expected_layouts() -> Result<Vec<(String, MapLayout)>, LoadError> {
    let object = aya_obj::Object::parse(EBPF_OBJECT).map_err(LoadError::ParseObject)?;
    let mut layouts: Vec<(String, MapLayout)> = object
        .maps
        .iter()
        .filter(|(_, map)| map.pinning() == PinningType::ByName)
        .map(|(name, map)| {
            let layout = MapLayout {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                max_entries: map.max_entries(),
                flags: map.map_flags(),
            };
            (name.clone(), layout)
        })
        .collect();
    layouts.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(layouts)
}

/// The names of the maps the eBPF object pins (for tests that hold lists
/// to them).
#[cfg(test)]
pub(crate) fn pinned_map_names() -> std::collections::BTreeSet<String> {
    expected_layouts()
        .expect("the object built with this agent parses")
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

fn check_pinned_layouts(pin_dir: &Path) -> Result<(), LoadError> {
    for (name, expected) in expected_layouts()? {
        let path = pin_dir.join(&name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|source| LoadError::InspectPin {
            path: path.clone(),
            source,
        })?;
        let found = MapLayout {
            map_type: info.map_type().map_or(u32::MAX, |map_type| map_type as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        };
        let mismatch = found
            .fields()
            .into_iter()
            .zip(expected.fields())
            .find(|((_, found), (_, expected))| found != expected);
        if let Some(((what, found), (_, expected))) = mismatch {
            return Err(LoadError::IncompatiblePin {
                path,
                what,
                found,
                expected,
            });
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
    for name in SOCKET_PROGRAMS {
        socket_hook(&mut ebpf, name)
            .load()
            .map_err(|source| LoadError::Program { name, source })?;
    }
    install_tail_calls(&mut ebpf)?;
    Ok(ebpf)
}

/// Puts this build's tail-called programs in their slots of the pinned
/// program array, replacing an earlier build's (from-uplink of either
/// build then continues in them).
fn install_tail_calls(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    for (slot, name) in [
        (FROM_OUTSIDE_SLOT, names::FROM_OUTSIDE_PROGRAM),
        (TO_BACKEND_SLOT, names::OUTSIDE_TO_BACKEND_PROGRAM),
    ] {
        let program = classifier(ebpf, name)
            .fd()
            .map_err(|source| LoadError::Program { name, source })?
            .try_clone()
            .map_err(|error| LoadError::TailCall(error.to_string()))?;
        let map = ebpf
            .map_mut(names::TAIL_CALLS_MAP)
            .ok_or_else(|| LoadError::TailCall("the object has no tail call map".into()))?;
        ProgramArray::try_from(map)
            .and_then(|mut slots| slots.set(slot, &program, 0))
            .map_err(|error| LoadError::TailCall(format!("{name}: {error}")))?;
    }
    Ok(())
}

/// The object's TC classifiers (the outside ones are entered by tail call only).
pub const PROGRAMS: [&str; 7] = [
    names::FROM_OUTSIDE_PROGRAM,
    names::OUTSIDE_TO_BACKEND_PROGRAM,
    names::FROM_POD_PROGRAM,
    names::TO_POD_PROGRAM,
    names::FROM_TUNNEL_PROGRAM,
    names::FROM_HOST_PROGRAM,
    names::FROM_UPLINK_PROGRAM,
];

/// The object's cgroup socket-address hooks (Services for the node's own
/// sockets).
pub const SOCKET_PROGRAMS: [&str; 4] = [
    names::HOST_CONNECT_PROGRAM,
    names::HOST_SENDMSG_PROGRAM,
    names::HOST_RECVMSG_PROGRAM,
    names::HOST_GETPEERNAME_PROGRAM,
];

/// The socket hook `name` of a loaded object.
pub fn socket_hook<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut CgroupSockAddr {
    ebpf.program_mut(name)
        .and_then(|program| program.try_into().ok())
        .unwrap_or_else(|| panic!("the eBPF object built with this agent has a {name} socket hook"))
}

/// The classifier `name` of a loaded object.
pub fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
    ebpf.program_mut(name)
        .and_then(|program| program.try_into().ok())
        .unwrap_or_else(|| panic!("the eBPF object built with this agent has a {name} classifier"))
}

#[cfg(test)]
mod tests;
