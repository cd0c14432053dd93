//! The proxy's one store of answers: bounded by weight (bytes of keys, heads and
//! bodies) over every route, evicting what is least likely to be asked again when
//! full (quick_cache's S3-FIFO), built on first use so a proxy without a caching
//! route holds none of it. A miss leaves a placeholder that later requests for the
//! same key wait on, so a burst of misses sends one request upstream.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use quick_cache::sync::{Cache, DefaultLifecycle, PlaceholderGuard};
use quick_cache::{DefaultHashBuilder, OptionsBuilder};

use super::freshness::Storable;
use super::key::{Key, KeyRules};
use super::vary::Vary;

/// Bytes an entry costs beyond its key, head and body (the `Stored`, its `Arc`,
/// the store's own slot).
const ENTRY_OVERHEAD: u64 = 384;
/// Bytes a header costs beyond its name and value (its slot in the map).
const HEADER_OVERHEAD: u64 = 96;
/// A shard holds at least this much, so the largest body a route may store fits.
const MIN_SHARD_BYTES: u64 = 2 * pillion_api::cache::MAX_BODY_BYTES;

/// An answer kept for reuse.
#[derive(Debug)]
pub(crate) struct Stored {
    /// Its status.
    pub status: StatusCode,
    /// Its header fields, hop-by-hop ones removed.
    pub headers: HeaderMap,
    /// Its whole body.
    pub body: Bytes,
    /// When it was received (or last confirmed by the origin).
    pub stored_at: Instant,
    /// Its freshness and variants.
    pub freshness: Storable,
}

impl Stored {
    /// Its age now (RFC 9111 §4.2.3): what it arrived with plus its time here.
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.freshness.initial_age + now.saturating_duration_since(self.stored_at)
    }

    /// Whether it may be reused without asking the origin.
    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        self.age(now) < self.freshness.lifetime
    }

    fn weight(&self) -> u64 {
        let head: u64 = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().len() + v.len()) as u64 + HEADER_OVERHEAD)
            .sum();
        ENTRY_OVERHEAD + head + self.body.len() as u64
    }
}

/// What a key holds: an answer, or (at a primary key) the headers its variants
/// differ by.
#[derive(Debug, Clone)]
pub(crate) enum Cached {
    /// An answer.
    Answer(Arc<Stored>),
    /// Look again under the variant key for these headers.
    Variants(Vary),
    /// The last answer could not be kept: requests go upstream at once, without
    /// waiting for each other, until one brings an answer that can be.
    Pass,
}

/// The weight of an entry: bytes, roughly.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Weight;

impl quick_cache::Weighter<Key, Cached> for Weight {
    fn weight(&self, key: &Key, val: &Cached) -> u64 {
        key.len() as u64
            + match val {
                Cached::Answer(stored) => stored.weight(),
                Cached::Variants(vary) => ENTRY_OVERHEAD + 32 * vary.names().len() as u64,
                Cached::Pass => ENTRY_OVERHEAD,
            }
    }
}

type Inner = Cache<Key, Cached, Weight, DefaultHashBuilder, DefaultLifecycle<Key, Cached>>;

/// A placeholder for a missing key; filling it (or dropping it) wakes those waiting.
pub(crate) type Guard<'a> =
    PlaceholderGuard<'a, Key, Cached, Weight, DefaultHashBuilder, DefaultLifecycle<Key, Cached>>;

/// What a lookup found.
pub(crate) enum Lookup<'a> {
    /// An answer (fresh or not: the caller decides).
    Found {
        /// Where it is when the answer varies; `None`: under the primary key.
        variant: Option<Key>,
        /// The answer.
        stored: Arc<Stored>,
    },
    /// Nothing under `key`; this request fetches it and fills `guard`.
    Vacant {
        /// The key to fill.
        key: Key,
        /// The placeholder others wait on.
        guard: Guard<'a>,
    },
    /// Its last answer could not be kept: go upstream at once, and keep the answer
    /// if it can be now.
    Pass,
    /// Another request is fetching it and did not finish in time, or the store is
    /// off: go upstream without the cache.
    Busy,
}

impl std::fmt::Debug for Lookup<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lookup::Found { variant, .. } => {
                f.debug_struct("Found").field("variant", variant).finish()
            }
            Lookup::Vacant { key, .. } => f.debug_struct("Vacant").field("key", key).finish(),
            Lookup::Pass => f.write_str("Pass"),
            Lookup::Busy => f.write_str("Busy"),
        }
    }
}

/// The proxy's answers kept for routes with a cache, sized by
/// `--response-cache-bytes` (one per proxy, shared by every route).
pub struct Store {
    capacity: u64,
    inner: OnceLock<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("capacity", &self.capacity)
            .field("weight", &self.weight())
            .field("entries", &self.len())
            .finish()
    }
}

impl Store {
    /// A store of at most `capacity` bytes (0: caching routes pass everything through).
    pub fn new(capacity: u64) -> Store {
        Store {
            capacity,
            inner: OnceLock::new(),
        }
    }

    /// Whether answers can be kept at all.
    pub(crate) fn is_on(&self) -> bool {
        self.capacity > 0
    }

    fn inner(&self) -> &Inner {
        self.inner.get_or_init(|| {
            let shards = (self.capacity / MIN_SHARD_BYTES).clamp(1, 16);
            let options = OptionsBuilder::new()
                .shards(shards as usize)
                .estimated_items_capacity((self.capacity / 4096).clamp(64, 1 << 20) as usize)
                .weight_capacity(self.capacity)
                .build();
            match options {
                Ok(options) => Cache::with_options(
                    options,
                    Weight,
                    DefaultHashBuilder::default(),
                    DefaultLifecycle::default(),
                ),
                Err(_) => Cache::with_weighter(64, self.capacity, Weight),
            }
        })
    }

    /// The bound, bytes.
    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held now.
    pub(crate) fn weight(&self) -> u64 {
        self.inner.get().map_or(0, Inner::weight)
    }

    /// Entries held now.
    pub(crate) fn len(&self) -> usize {
        self.inner.get().map_or(0, Inner::len)
    }

    /// Looks `primary` up, following it to the variant `headers` select; waits
    /// until `deadline` for a request already fetching the same key.
    pub(crate) async fn lookup(
        &self,
        primary: &Key,
        headers: &HeaderMap,
        deadline: Option<Instant>,
    ) -> Lookup<'_> {
        if !self.is_on() {
            return Lookup::Busy;
        }
        let inner = self.inner();
        // Primary, then a variant; a variant that names variants again is a race
        // with a changed Vary, served from upstream. The primary key is only
        // copied when it must be kept (a placeholder's).
        let mut variant: Option<Key> = None;
        for _ in 0..2 {
            let found = inner.get_value_or_guard_async(variant.as_ref().unwrap_or(primary));
            let found = match deadline {
                Some(at) => match tokio::time::timeout_at(at.into(), found).await {
                    Ok(found) => found,
                    Err(_) => return Lookup::Busy,
                },
                None => found.await,
            };
            match found {
                Ok(Cached::Answer(stored)) => return Lookup::Found { variant, stored },
                Ok(Cached::Variants(vary)) if variant.is_none() => {
                    variant = Some(KeyRules::variant(primary, &vary, headers));
                }
                Ok(Cached::Variants(_)) => return Lookup::Busy,
                Ok(Cached::Pass) => return Lookup::Pass,
                Err(guard) => {
                    let key = variant.unwrap_or_else(|| primary.clone());
                    return Lookup::Vacant { key, guard };
                }
            }
        }
        Lookup::Busy
    }

    /// The answer `primary` holds for a request with fields `headers`, without
    /// waiting for one being fetched and without leaving a placeholder (a `HEAD`
    /// never fills an entry, so nobody may wait on it).
    pub(crate) fn find(&self, primary: &Key, headers: &HeaderMap) -> Option<Arc<Stored>> {
        let inner = self.inner.get()?;
        match inner.get(primary)? {
            Cached::Answer(stored) => Some(stored),
            Cached::Variants(vary) => {
                match inner.get(&KeyRules::variant(primary, &vary, headers))? {
                    Cached::Answer(stored) => Some(stored),
                    _ => None,
                }
            }
            Cached::Pass => None,
        }
    }

    /// Keeps `stored` for the request keyed `primary` (`headers`: its header
    /// fields, for the variant key), filling `vacant` if it is this key's.
    pub(crate) fn fill(
        &self,
        primary: &Key,
        headers: &HeaderMap,
        vacant: Option<(Key, Guard<'_>)>,
        stored: Arc<Stored>,
    ) {
        if !self.is_on() {
            return;
        }
        let inner = self.inner();
        let vary = stored.freshness.vary.clone();
        let (at_primary, answer_key) = if vary.is_empty() {
            (Cached::Answer(Arc::clone(&stored)), primary.clone())
        } else {
            let variant = KeyRules::variant(primary, &vary, headers);
            (Cached::Variants(vary), variant)
        };
        let answer = Cached::Answer(stored);
        let varies = answer_key != *primary;
        match vacant {
            // The variant first, so those waiting on the primary find it.
            Some((key, guard)) if key == *primary => {
                if varies {
                    inner.insert(answer_key, answer);
                }
                let _ = guard.insert(at_primary);
            }
            Some((key, guard)) if key == answer_key => {
                inner.insert(primary.clone(), at_primary);
                let _ = guard.insert(answer);
            }
            other => {
                drop(other);
                if varies {
                    inner.insert(answer_key, answer);
                }
                inner.insert(primary.clone(), at_primary);
            }
        }
    }

    /// Marks `key` as holding answers that cannot be kept (filling `vacant` if it
    /// is this key's, replacing an entry the origin no longer lets us keep), so
    /// the next requests for it do not wait for each other.
    pub(crate) fn pass(&self, key: Key, vacant: Option<(Key, Guard<'_>)>) {
        let Some(inner) = self.inner.get() else {
            return;
        };
        match vacant {
            Some((held, guard)) if held == key => {
                let _ = guard.insert(Cached::Pass);
            }
            other => {
                drop(other);
                inner.insert(key, Cached::Pass);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method};

    fn rules() -> KeyRules {
        KeyRules::new("demo/web", 80, "r", false, &[])
    }

    fn primary(path: &str) -> Key {
        rules().primary(&Method::GET, b"web", path.as_bytes(), &HeaderMap::new())
    }

    fn stored(body: usize, vary: Option<&'static str>) -> Arc<Stored> {
        let mut headers = HeaderMap::new();
        if let Some(v) = vary {
            headers.insert(http::header::VARY, HeaderValue::from_static(v));
        }
        let vary = super::super::vary::of(&headers).unwrap();
        Arc::new(Stored {
            status: StatusCode::OK,
            headers,
            body: Bytes::from(vec![b'x'; body]),
            stored_at: Instant::now(),
            freshness: Storable {
                lifetime: Duration::from_secs(60),
                initial_age: Duration::ZERO,
                vary,
            },
        })
    }

    #[tokio::test]
    async fn a_miss_is_filled_once_and_found_after() {
        let store = Store::new(1 << 20);
        assert_eq!(
            store.weight(),
            0,
            "nothing is allocated before the first use"
        );
        let key = primary("/a");
        let headers = HeaderMap::new();
        let Lookup::Vacant { key: k, guard } = store.lookup(&key, &headers, None).await else {
            panic!("expected a miss");
        };
        store.fill(&key, &headers, Some((k, guard)), stored(10, None));
        match store.lookup(&key, &headers, None).await {
            Lookup::Found { stored, .. } => assert_eq!(stored.body.len(), 10),
            other => panic!("{other:?}"),
        };
    }

    #[tokio::test]
    async fn waiting_requests_get_the_answer_the_first_one_fetched() {
        let store = Arc::new(Store::new(1 << 20));
        let key = primary("/a");
        let headers = HeaderMap::new();
        let Lookup::Vacant { key: k, guard } = store.lookup(&key, &headers, None).await else {
            panic!("expected a miss");
        };
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let (store, key) = (Arc::clone(&store), key.clone());
                tokio::spawn(async move {
                    matches!(
                        store.lookup(&key, &HeaderMap::new(), None).await,
                        Lookup::Found { .. }
                    )
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.fill(&key, &headers, Some((k, guard)), stored(10, None));
        for w in waiters {
            assert!(w.await.unwrap(), "a waiter did not get the answer");
        }
    }

    #[tokio::test]
    async fn a_dropped_placeholder_hands_the_fetch_to_a_waiter_and_waits_are_bounded() {
        let store = Arc::new(Store::new(1 << 20));
        let key = primary("/a");
        let headers = HeaderMap::new();
        let Lookup::Vacant { guard, .. } = store.lookup(&key, &headers, None).await else {
            panic!("expected a miss");
        };
        let soon = Some(Instant::now() + Duration::from_millis(30));
        assert!(matches!(
            store.lookup(&key, &headers, soon).await,
            Lookup::Busy
        ));
        let (s, k) = (Arc::clone(&store), key.clone());
        let waiter = tokio::spawn(async move {
            matches!(
                s.lookup(&k, &HeaderMap::new(), None).await,
                Lookup::Vacant { .. }
            )
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(guard);
        assert!(waiter.await.unwrap(), "the waiter should fetch it itself");
    }

    #[tokio::test]
    async fn after_an_answer_that_cannot_be_kept_requests_no_longer_wait() {
        let store = Arc::new(Store::new(1 << 20));
        let key = primary("/a");
        let headers = HeaderMap::new();
        let Lookup::Vacant { key: k, guard } = store.lookup(&key, &headers, None).await else {
            panic!("expected a miss");
        };
        let (s, k2) = (Arc::clone(&store), key.clone());
        let waiter = tokio::spawn(async move {
            matches!(s.lookup(&k2, &HeaderMap::new(), None).await, Lookup::Pass)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.pass(k.clone(), Some((k, guard)));
        assert!(
            waiter.await.unwrap(),
            "the waiter should go upstream at once"
        );
        // Once an answer can be kept, it is.
        store.fill(&key, &headers, None, stored(1, None));
        assert!(matches!(
            store.lookup(&key, &headers, None).await,
            Lookup::Found { .. }
        ));
    }

    #[tokio::test]
    async fn variants_are_kept_apart() {
        let store = Store::new(1 << 20);
        let key = primary("/a");
        let mut en = HeaderMap::new();
        en.insert("accept-language", HeaderValue::from_static("en"));
        let mut de = HeaderMap::new();
        de.insert("accept-language", HeaderValue::from_static("de"));
        let Lookup::Vacant { key: k, guard } = store.lookup(&key, &en, None).await else {
            panic!("expected a miss");
        };
        store.fill(
            &key,
            &en,
            Some((k, guard)),
            stored(2, Some("accept-language")),
        );
        assert!(matches!(
            store.lookup(&key, &en, None).await,
            Lookup::Found { .. }
        ));
        let Lookup::Vacant { key: k, guard } = store.lookup(&key, &de, None).await else {
            panic!("the other language must miss");
        };
        assert_ne!(k, key);
        store.fill(
            &key,
            &de,
            Some((k, guard)),
            stored(3, Some("accept-language")),
        );
        for (headers, len) in [(&en, 2), (&de, 3)] {
            match store.lookup(&key, headers, None).await {
                Lookup::Found { stored, .. } => assert_eq!(stored.body.len(), len),
                other => panic!("{other:?}"),
            };
        }
    }

    #[tokio::test]
    async fn a_full_store_evicts_and_never_grows() {
        let capacity = 1 << 20;
        let store = Store::new(capacity);
        let headers = HeaderMap::new();
        for i in 0..1_000 {
            store.fill(
                &primary(&format!("/{i}")),
                &headers,
                None,
                stored(10_000, None),
            );
            assert!(
                store.weight() <= capacity,
                "{} > {capacity}",
                store.weight()
            );
        }
        assert!(
            store.len() < 1_000 && store.len() > 50,
            "{} entries",
            store.len()
        );
    }

    #[tokio::test]
    async fn an_off_store_keeps_nothing() {
        let store = Store::new(0);
        let key = primary("/a");
        assert!(matches!(
            store.lookup(&key, &HeaderMap::new(), None).await,
            Lookup::Busy
        ));
        store.fill(&key, &HeaderMap::new(), None, stored(1, None));
        assert_eq!(store.len(), 0);
    }
}
