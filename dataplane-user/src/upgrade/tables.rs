//! Pinned maps of either layout opened by path, and entries carried from
//! one into the other without overwriting what the other has.

use std::path::PathBuf;

use nix::errno::Errno;

use crate::maps::table::{Table, open_pinned};

use aya::{
    Pod,
    maps::{HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray},
};

#[derive(Debug, thiserror::Error)]
pub enum CarryError {
    #[error("cannot open the pinned map {path}: {source}")]
    Open { path: PathBuf, source: MapError },
    #[error("cannot read {map} of the previous map layout: {source}")]
    Read { map: &'static str, source: MapError },
}

/// What became of one map's entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Carried {
    pub map: &'static str,
    pub carried: u64,
    /// Entries this layout already had under the same key (newer), kept.
    pub kept: u64,
    /// Entries that could not be carried, and why (the last reason).
    pub lost: u64,
    pub why_lost: String,
}

impl Carried {
    pub fn new(map: &'static str) -> Self {
        Self {
            map,
            ..Self::default()
        }
    }

    /// Counts the outcome of one insertion.
    pub fn count(&mut self, inserted: Result<(), MapError>) {
        match inserted {
            Ok(()) => self.carried += 1,
            Err(MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(Errno::EEXIST as i32) =>
            {
                self.kept += 1;
            }
            Err(error) => self.lose(1, full_or(&error)),
        }
    }

    pub fn lose(&mut self, entries: u64, why: String) {
        self.lost += entries;
        self.why_lost = why;
    }
}

fn full_or(error: &MapError) -> String {
    match error {
        MapError::SyscallError(error)
            if matches!(
                error.io_error.raw_os_error(),
                Some(code) if [Errno::E2BIG, Errno::ENOMEM, Errno::ENOSPC].contains(&Errno::from_raw(code))
            ) =>
        {
            "the map is full".into()
        }
        other => other.to_string(),
    }
}

/// A pinned map directory of one layout.
pub struct Pins(pub PathBuf);

impl Pins {
    /// The map `name` pinned here, as the typed map `T`.
    pub fn typed<T: TryFrom<Map, Error = MapError>>(&self, name: &str) -> Result<T, CarryError> {
        let path = self.0.join(name);
        open_pinned(&path).map_err(|source| CarryError::Open { path, source })
    }

    pub fn hash<K: Pod, V: Pod>(&self, name: &str) -> Result<HashMap<MapData, K, V>, CarryError> {
        self.typed(name)
    }

    pub fn lpm<K: Pod, V: Pod>(&self, name: &str) -> Result<LpmTrie<MapData, K, V>, CarryError> {
        self.typed(name)
    }
}

/// Every entry of `table`, read as map `map` of the previous layout.
pub fn entries_of<K, V>(
    map: &'static str,
    table: &impl Table<K, V>,
) -> Result<Vec<(K, V)>, CarryError> {
    table
        .entries()
        .map_err(|source| CarryError::Read { map, source })
}

/// Carries `entries` (read from `map` of the previous layout) into `into`,
/// each as `convert` makes it; an entry `into` has already is kept.
pub fn carry<K, V, K2, V2>(
    map: &'static str,
    entries: &[(K, V)],
    into: &mut impl Table<K2, V2>,
    convert: impl Fn(&K, &V) -> (K2, V2),
) -> Carried {
    let mut carried = Carried::new(map);
    for (key, value) in entries {
        let (key, value) = convert(key, value);
        carried.count(into.insert_new(&key, &value));
    }
    carried
}

/// Copies a map whose layout did not change, entry by entry.
pub fn copy<K: Pod, V: Pod, T>(
    map: &'static str,
    from: &Pins,
    into: &Pins,
    open: impl Fn(&Pins, &str) -> Result<T, CarryError>,
) -> Result<Carried, CarryError>
where
    T: Table<K, V>,
{
    let entries = entries_of(map, &open(from, map)?)?;
    Ok(carry(map, &entries, &mut open(into, map)?, |key, value| {
        (*key, *value)
    }))
}

/// Copies a per-CPU array whose element layout did not change, every
/// CPU's value, at the indices both have (it only grows at its end).
pub fn copy_per_cpu_array<V: Pod>(
    map: &'static str,
    from: &Pins,
    into: &Pins,
) -> Result<Carried, CarryError> {
    let old: PerCpuArray<MapData, V> = from.typed(map)?;
    let mut new: PerCpuArray<MapData, V> = into.typed(map)?;
    let mut carried = Carried::new(map);
    for index in 0..old.len().min(new.len()) {
        let values = old
            .get(&index, 0)
            .map_err(|source| CarryError::Read { map, source })?;
        carried.count(new.set(index, values, 0));
    }
    Ok(carried)
}
