//! TLS session caches that forget everything when the store changes.
//!
//! A resumed handshake skips certificate verification, so a session made under an
//! old trust bundle or an old leaf must not be resumed: both caches are replaced
//! whenever the store installs a new leaf or bundle. The server side also refuses
//! sessions older than `SESSION_MAX_AGE`, bounding how long a peer identity proven
//! once can be reused without a fresh certificate check.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::NamedGroup;

use crate::store::CertStore;

/// Sessions kept per cache.
pub const SESSION_CACHE_SIZE: usize = 1024;
/// Oldest session the server resumes.
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(600);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Server session cache bound to the store's generation, with a maximum age.
#[derive(Debug)]
pub(crate) struct ServerSessions {
    store: Arc<CertStore>,
    cache: Mutex<(u64, Arc<ServerSessionMemoryCache>)>,
}

impl ServerSessions {
    pub fn new(store: Arc<CertStore>) -> Self {
        let generation = store.generation();
        ServerSessions {
            store,
            cache: Mutex::new((
                generation,
                ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
            )),
        }
    }

    fn current(&self) -> Arc<ServerSessionMemoryCache> {
        let generation = self.store.generation();
        let mut guard = lock(&self.cache);
        if guard.0 != generation {
            *guard = (
                generation,
                ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
            );
        }
        guard.1.clone()
    }

    /// Strips the timestamp prefix; `None` when the session is too old.
    fn fresh(stamped: Vec<u8>) -> Option<Vec<u8>> {
        let (stamp, value) = stamped.split_at_checked(8)?;
        let created = u64::from_be_bytes(stamp.try_into().ok()?);
        (now_secs().saturating_sub(created) <= SESSION_MAX_AGE.as_secs()).then(|| value.to_vec())
    }
}

impl StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let mut stamped = Vec::with_capacity(8 + value.len());
        stamped.extend_from_slice(&now_secs().to_be_bytes());
        stamped.extend_from_slice(&value);
        self.current().put(key, stamped)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.current().get(key).and_then(Self::fresh)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.current().take(key).and_then(Self::fresh)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// Client session cache bound to the store's generation.
#[derive(Debug)]
pub(crate) struct ClientSessions {
    store: Arc<CertStore>,
    cache: Mutex<(u64, Arc<ClientSessionMemoryCache>)>,
}

impl ClientSessions {
    pub fn new(store: Arc<CertStore>) -> Self {
        let generation = store.generation();
        ClientSessions {
            store,
            cache: Mutex::new((
                generation,
                Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE_SIZE)),
            )),
        }
    }

    fn current(&self) -> Arc<ClientSessionMemoryCache> {
        let generation = self.store.generation();
        let mut guard = lock(&self.cache);
        if guard.0 != generation {
            *guard = (
                generation,
                Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE_SIZE)),
            );
        }
        guard.1.clone()
    }
}

impl ClientSessionStore for ClientSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.current().set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.current().kx_hint(server_name)
    }

    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.current().set_tls12_session(server_name, value)
    }

    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.current().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.current().remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.current().insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.current().take_tls13_ticket(server_name)
    }
}
