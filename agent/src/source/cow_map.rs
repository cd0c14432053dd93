//! A hash map whose copies share all but what each of them changed: the keys are
//! spread over shards, each a std `HashMap` behind an `Arc`, and a change copies
//! only the shard it touches. A copy costs one `Arc` per shard; a change costs its
//! shard, a few hundred entries at 100,000 services. Why not a HAMT: see
//! `docs/decisions.md` ("The agent's catalog is persistent").

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Arc;

/// Shards per map: enough that a change copies little (at 100,000 services a shard
/// holds about 50 keys), few enough that a copy of the map is cheap (one `Arc` each).
const SHARDS: usize = 4096;

/// A sharded copy-on-write hash map.
#[derive(Debug, Clone)]
pub struct CowMap<K, V> {
    hasher: RandomState,
    shards: Arc<Vec<Arc<HashMap<K, V>>>>,
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        // Every shard starts as the one empty map; a change gives its shard its own.
        let empty = Arc::new(HashMap::new());
        Self {
            hasher: RandomState::new(),
            shards: Arc::new(vec![empty; SHARDS]),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> CowMap<K, V> {
    /// The shard `key` lives in: below `SHARDS`, the length of `shards`.
    fn shard_of(&self, key: &K) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    /// The value of `key`, if any.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.shards[self.shard_of(key)].get(key)
    }

    /// The shard of `key`, to change: copied first if another map shares it.
    fn shard_mut(&mut self, key: &K) -> &mut HashMap<K, V> {
        let i = self.shard_of(key);
        Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[i])
    }

    /// The value of `key`, to change, if any.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.get(key)?;
        self.shard_mut(key).get_mut(key)
    }

    /// The value of `key`, to change, made the default one if there was none.
    pub fn get_or_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        self.shard_mut(&key).entry(key).or_default()
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.get(key)?;
        self.shard_mut(key).remove(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_keeps_its_values_while_the_original_changes() {
        let mut a: CowMap<u32, String> = CowMap::default();
        for i in 0..2_000 {
            *a.get_or_default(i) = format!("a{i}");
        }
        let b = a.clone();
        *a.get_mut(&7).unwrap() = "changed".into();
        assert_eq!(a.remove(&8).as_deref(), Some("a8"));
        assert!(a.get_mut(&9_999).is_none());
        assert_eq!(a.remove(&9_999), None);
        assert_eq!(a.get(&7).map(String::as_str), Some("changed"));
        assert_eq!(a.get(&8), None);
        assert_eq!(b.get(&7).map(String::as_str), Some("a7"));
        assert_eq!(b.get(&8).map(String::as_str), Some("a8"));
        // Only the two shards touched were copied.
        let shared = (a.shards.iter().zip(b.shards.iter()))
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert!(shared >= SHARDS - 2, "{shared} of {SHARDS} shards shared");
    }
}
