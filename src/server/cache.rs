//! A small time-bounded cache for lookups that would otherwise hit the
//! registry on every request. Bounded: when full it starts over, which is cheap
//! and means a flood of made-up keys cannot grow memory.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

pub(crate) struct TtlCache<V> {
    entries: Mutex<HashMap<String, (Instant, V)>>,
    ttl: Duration,
    max: usize,
}

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
            max,
        }
    }

    pub fn get(&self, key: &str) -> Option<V> {
        let entries = self.entries.lock().expect("cache poisoned");
        let (at, value) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| value.clone())
    }

    pub fn put(&self, key: &str, value: V) {
        let mut entries = self.entries.lock().expect("cache poisoned");
        if entries.len() >= self.max {
            entries.clear();
        }
        entries.insert(key.to_string(), (Instant::now(), value));
    }

    pub fn invalidate(&self, key: &str) {
        self.entries.lock().expect("cache poisoned").remove(key);
    }

    pub fn clear(&self) {
        self.entries.lock().expect("cache poisoned").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_the_cache_stays_bounded() {
        let cache = TtlCache::new(Duration::from_secs(2), 3);
        cache.put("a", 1);
        assert_eq!(cache.get("a"), Some(1));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(cache.get("a"), None, "expired");
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            cache.put(k, i);
        }
        assert!(cache.get("a").is_none(), "full: started over");
        assert_eq!(cache.get("d"), Some(3));
        cache.invalidate("d");
        assert_eq!(cache.get("d"), None);
    }
}
