//! The file systems the agent needs mounted: bpffs for its pins, cgroup2
//! for the socket hooks; mounted by the agent where the host has not.

use std::path::{Path, PathBuf};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use super::LoadError;

pub(super) const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there yet, unless
/// the host has one this mount namespace does not see.
pub fn ensure_bpffs_mounted() -> Result<(), LoadError> {
    if is_bpffs(Path::new(BPFFS_MOUNT_POINT)) {
        return Ok(());
    }
    // `ip netns exec` remounts /sys in a mount namespace of its own: a bpffs
    // mounted there would hold none of the running agent's pins, and this
    // one would attach a second program set beside it.
    let host_bpffs = Path::new("/proc/1/root").join(BPFFS_MOUNT_POINT.trim_start_matches('/'));
    if sys_mounted_by_ip_netns_exec()
        || (in_a_mount_namespace_of_its_own() && is_bpffs(&host_bpffs))
    {
        return Err(LoadError::HostBpffsHidden);
    }
    tracing::info!("no bpffs at {BPFFS_MOUNT_POINT}: mounting one");
    mount(
        Some("bpf"),
        BPFFS_MOUNT_POINT,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(LoadError::MountBpffs)
}

/// Whether /sys is the sysfs `ip netns exec` mounts (its source is the
/// network namespace's name, one of /run/netns): what is the case where
/// PID 1's namespaces cannot be inspected.
fn sys_mounted_by_ip_netns_exec() -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    // `id parent major:minor root mountpoint options... - fstype source options`;
    // the last mount at a point is the one seen.
    let sys_source = mounts.lines().rev().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mount_point = before.split_whitespace().nth(4)?;
        let mut after = after.split_whitespace();
        let (fstype, source) = (after.next()?, after.next()?);
        (mount_point == "/sys" && fstype == "sysfs").then_some(source)
    });
    sys_source.is_some_and(|source| {
        source != "sysfs" && !source.contains('/') && Path::new("/run/netns").join(source).exists()
    })
}

/// Whether this process's mount namespace is not PID 1's.
fn in_a_mount_namespace_of_its_own() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(own), Ok(host)) => own != host,
        _ => false,
    }
}

pub(super) fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Where the unified (v2) cgroup hierarchy is mounted, mounting it at
/// `CGROUP2_MOUNT_POINT` when nothing has (the socket hooks attach to its
/// root: every process of the machine, filtered by network namespace).
pub fn cgroup2_root() -> Result<PathBuf, LoadError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(LoadError::Cgroup2)?;
    if let Some(mount_point) = cgroup2_mount_point(&mountinfo) {
        return Ok(mount_point);
    }
    std::fs::create_dir_all(CGROUP2_MOUNT_POINT).map_err(LoadError::Cgroup2)?;
    mount(
        Some("cgroup2"),
        CGROUP2_MOUNT_POINT,
        Some("cgroup2"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|errno| LoadError::Cgroup2(errno.into()))?;
    Ok(CGROUP2_MOUNT_POINT.into())
}

/// Where the agent mounts the cgroup2 hierarchy when the system has not.
const CGROUP2_MOUNT_POINT: &str = "/run/dataplane/cgroupv2";

/// The first cgroup2 mount in `/proc/self/mountinfo` text whose root is the
/// hierarchy's root.
pub(super) fn cgroup2_mount_point(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, filesystem) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let root = fields.get(3)?;
        let mount_point = fields.get(4)?;
        (filesystem.split(' ').next() == Some("cgroup2") && *root == "/")
            .then(|| PathBuf::from(mount_point.replace("\\040", " ")))
    })
}
