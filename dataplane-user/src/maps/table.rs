//! The seam between the agent and the kernel: every map the agent reads or
//! writes is a [`Table`], backed by the pinned BPF map, or in unit tests by
//! memory that fills up as the kernel's maps do and fails when a test says
//! so (`maps::fake`). Everything above it (the typed map access, the
//! mirrors, the reconciler) runs the same code either way.

use std::{io, path::Path};

use aya::{
    Pod,
    maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use dataplane_common::CounterValue;

/// BPF_NOEXIST: an entry is only created, never replaces one.
const ONLY_NEW: u64 = 1;

/// A BPF map as the agent uses it.
pub trait Table<K, V>: Send + Sync {
    /// The value at `key`, if there is one.
    fn get(&self, key: &K) -> Result<Option<V>, MapError>;
    /// Creates or replaces the entry.
    fn insert(&mut self, key: &K, value: &V) -> Result<(), MapError>;
    /// Creates the entry unless `key` has one (EEXIST then).
    fn insert_new(&mut self, key: &K, value: &V) -> Result<(), MapError>;
    /// Removes the entry (a missing one is an error: see `maps::removed`).
    fn remove(&mut self, key: &K) -> Result<(), MapError>;
    /// Every entry; keys removed during the walk are skipped.
    fn entries(&self) -> Result<Vec<(K, V)>, MapError>;
    /// Every entry handed to `visit` as the walk reaches it, nothing held:
    /// for walks of large tables that keep little of what they see.
    fn visit(&self, visit: &mut dyn FnMut(&K, &V)) -> Result<(), MapError> {
        for (key, value) in self.entries()? {
            visit(&key, &value);
        }
        Ok(())
    }
}

/// The map pinned at `path`, as the typed map `T`.
pub fn open_pinned<T: TryFrom<Map, Error = MapError>>(path: &Path) -> Result<T, MapError> {
    T::try_from(Map::from_map_data(MapData::from_pin(path)?)?)
}

/// A boxed table, as the typed map access holds them.
pub type BoxedTable<K, V> = Box<dyn Table<K, V>>;

/// More entries than any map holds: a walk that keeps restarting (its
/// current key removed under it each time, by the programs) is cut there.
const WALK_LIMIT: usize = 1 << 24;

fn absent_is_none<V>(result: Result<V, MapError>) -> Result<Option<V>, MapError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(error) => Err(error),
    }
}

impl<K: Pod + Send + Sync, V: Pod + Send + Sync> Table<K, V> for HashMap<MapData, K, V> {
    fn get(&self, key: &K) -> Result<Option<V>, MapError> {
        absent_is_none(HashMap::get(self, key, 0))
    }

    fn insert(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        HashMap::insert(self, key, value, 0)
    }

    fn insert_new(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        HashMap::insert(self, key, value, ONLY_NEW)
    }

    fn remove(&mut self, key: &K) -> Result<(), MapError> {
        HashMap::remove(self, key)
    }

    fn entries(&self) -> Result<Vec<(K, V)>, MapError> {
        self.iter().take(WALK_LIMIT).collect()
    }

    fn visit(&self, visit: &mut dyn FnMut(&K, &V)) -> Result<(), MapError> {
        for entry in self.iter().take(WALK_LIMIT) {
            let (key, value) = entry?;
            visit(&key, &value);
        }
        Ok(())
    }
}

impl<K: Pod + Send + Sync, V: Pod + Send + Sync> Table<Key<K>, V> for LpmTrie<MapData, K, V> {
    fn get(&self, key: &Key<K>) -> Result<Option<V>, MapError> {
        absent_is_none(LpmTrie::get(self, key, 0))
    }

    fn insert(&mut self, key: &Key<K>, value: &V) -> Result<(), MapError> {
        LpmTrie::insert(self, key, value, 0)
    }

    fn insert_new(&mut self, key: &Key<K>, value: &V) -> Result<(), MapError> {
        LpmTrie::insert(self, key, value, ONLY_NEW)
    }

    fn remove(&mut self, key: &Key<K>) -> Result<(), MapError> {
        LpmTrie::remove(self, key)
    }

    fn entries(&self) -> Result<Vec<(Key<K>, V)>, MapError> {
        self.iter().take(WALK_LIMIT).collect()
    }
}

fn no_removal() -> MapError {
    MapError::IoError(io::Error::new(
        io::ErrorKind::Unsupported,
        "array entries cannot be removed",
    ))
}

impl<V: Pod + Send + Sync> Table<u32, V> for Array<MapData, V> {
    fn get(&self, index: &u32) -> Result<Option<V>, MapError> {
        Array::get(self, index, 0).map(Some)
    }

    fn insert(&mut self, index: &u32, value: &V) -> Result<(), MapError> {
        self.set(*index, value, 0)
    }

    fn insert_new(&mut self, index: &u32, value: &V) -> Result<(), MapError> {
        self.set(*index, value, 0)
    }

    fn remove(&mut self, _: &u32) -> Result<(), MapError> {
        Err(no_removal())
    }

    fn entries(&self) -> Result<Vec<(u32, V)>, MapError> {
        (0..self.len())
            .map(|index| Ok((index, Array::get(self, &index, 0)?)))
            .collect()
    }
}

/// The counters: a per-CPU array read as its sums over the CPUs.
pub struct CounterSums(pub PerCpuArray<MapData, CounterValue>);

fn read_only() -> MapError {
    MapError::IoError(io::Error::new(
        io::ErrorKind::Unsupported,
        "the counters are written by the programs only",
    ))
}

impl Table<u32, CounterValue> for CounterSums {
    fn get(&self, index: &u32) -> Result<Option<CounterValue>, MapError> {
        let per_cpu = self.0.get(index, 0)?;
        Ok(Some(per_cpu.iter().fold(
            CounterValue::default(),
            |sum, cpu| CounterValue {
                packets: sum.packets + cpu.packets,
                bytes: sum.bytes + cpu.bytes,
            },
        )))
    }

    fn insert(&mut self, _: &u32, _: &CounterValue) -> Result<(), MapError> {
        Err(read_only())
    }

    fn insert_new(&mut self, _: &u32, _: &CounterValue) -> Result<(), MapError> {
        Err(read_only())
    }

    fn remove(&mut self, _: &u32) -> Result<(), MapError> {
        Err(read_only())
    }

    fn entries(&self) -> Result<Vec<(u32, CounterValue)>, MapError> {
        (0..self.0.len())
            .map(|index| Ok((index, self.get(&index)?.unwrap_or_default())))
            .collect()
    }
}
