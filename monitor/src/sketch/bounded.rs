//! State tables with a fixed entry budget. Every behavioural rule keys its memory by workload,
//! remote or pair; traffic decides how many keys there are, so each table holds at most a
//! configured number of entries and, when full, forgets the half that was touched longest ago
//! (in event time). That keeps memory flat however many distinct addresses pass, at an
//! amortised O(1) per insert.

use std::hash::Hash;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize + Eq + Hash, V: Serialize",
    deserialize = "K: Deserialize<'de> + Eq + Hash, V: Deserialize<'de>"
))]
pub struct BoundedMap<K, V> {
    /// Key -> (last event time the entry was touched, value).
    entries: FxHashMap<K, (u64, V)>,
    capacity: usize,
    /// Entries forgotten to stay within the budget, over the table's life.
    pub evicted: u64,
}

impl<K: Eq + Hash, V> BoundedMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        BoundedMap {
            entries: FxHashMap::default(),
            capacity: capacity.max(2),
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adopts a new budget (after a configuration change), trimming now if needed.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(2);
        while self.entries.len() > self.capacity {
            self.forget_oldest_half();
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(_, v)| v)
    }

    /// The entry for `key` if present, without marking it touched.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(_, v)| v)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.entries.remove(key).map(|(_, v)| v)
    }

    /// The entry for `key`, created with `init` if absent; marks it touched at `now`.
    pub fn touch(&mut self, key: K, now: u64, init: impl FnOnce() -> V) -> &mut V {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.forget_oldest_half();
        }
        let slot = self.entries.entry(key).or_insert_with(|| (now, init()));
        if now > slot.0 {
            slot.0 = now;
        }
        &mut slot.1
    }

    /// Every entry, in no particular order, without marking any touched.
    pub fn values_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(k, (_, v))| (k, v))
    }

    /// Keeps only the entries whose key passes `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    fn forget_oldest_half(&mut self) {
        let before = self.entries.len();
        if before == 0 {
            return;
        }
        let mut stamps: Vec<u64> = self.entries.values().map(|(t, _)| *t).collect();
        let mid = stamps.len() / 2;
        let (_, cutoff, _) = stamps.select_nth_unstable(mid);
        let cutoff = *cutoff;
        self.entries.retain(|_, (t, _)| *t > cutoff);
        if self.entries.len() == before {
            // Every entry shares one timestamp: drop an arbitrary half instead.
            let mut n = 0usize;
            self.entries.retain(|_, _| {
                n += 1;
                n.is_multiple_of(2)
            });
        }
        self.evicted += (before - self.entries.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_and_keeps_the_recent_half() {
        let mut m: BoundedMap<u32, u32> = BoundedMap::new(100);
        for i in 0..1_000u32 {
            *m.touch(i, u64::from(i), || 0) += 1;
            assert!(m.len() <= 100);
        }
        // The most recently touched keys survive; the oldest are gone.
        assert_eq!(m.get(&999), Some(&1));
        assert_eq!(m.get(&0), None);
        assert!(m.evicted >= 900 - 100);
        // Touching refreshes an entry so it outlives newer but idle ones.
        let mut m: BoundedMap<u32, u32> = BoundedMap::new(4);
        for i in 0..4u32 {
            m.touch(i, u64::from(i), || i);
        }
        m.touch(0, 10, || 99);
        m.touch(7, 11, || 7);
        assert_eq!(m.get(&0), Some(&0));
        assert_eq!(m.get(&1), None);
        assert_eq!(m.get(&7), Some(&7));
    }

    #[test]
    fn equal_timestamps_still_make_room() {
        let mut m: BoundedMap<u32, ()> = BoundedMap::new(10);
        for i in 0..100 {
            m.touch(i, 5, || ());
            assert!(m.len() <= 10);
        }
        assert!(m.get(&99).is_some());
    }
}
