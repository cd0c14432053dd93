//! The gateway's server certificates: loaded from directories laid out as mounted
//! Kubernetes TLS Secrets (`tls.crt`, `tls.key`), picked per handshake by the name
//! the client asks for (SNI: an exact DNS name of a certificate first, then a `*.`
//! wildcard of one; a client that sends no name gets the first certificate), and
//! reloaded when their files change. A name no certificate covers fails the
//! handshake: the gateway never answers for a host with another host's certificate.
//! A reload that fails keeps the certificates in force and says why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use pillion_identity::server_cert::{ServerCert, ServerCertError};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the certificate files are checked for changes.
pub(crate) const RELOAD_EVERY: Duration = Duration::from_secs(5);
/// The chain's file name in each directory (a TLS Secret's key).
pub(crate) const CHAIN_FILE: &str = "tls.crt";
/// The key's file name in each directory.
pub(crate) const KEY_FILE: &str = "tls.key";

/// Why the certificates could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The kernel's reason.
        #[source]
        source: std::io::Error,
    },
    /// A directory's certificate cannot be served.
    #[error("{dir}: {source}")]
    Cert {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with its files.
        #[source]
        source: ServerCertError,
    },
}

/// One generation of loaded certificates.
#[derive(Debug)]
pub(crate) struct Loaded {
    certs: Vec<Arc<ServerCert>>,
    exact: HashMap<String, usize>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, usize>,
    /// Each file's modification time and length when read.
    stamps: Vec<Option<(SystemTime, u64)>>,
}

impl Loaded {
    /// The certificate for `name` (lowercase), or the first one when the client
    /// named none.
    pub(crate) fn pick(&self, name: Option<&str>) -> Option<&Arc<ServerCert>> {
        let Some(name) = name else {
            return self.certs.first();
        };
        let index = self.exact.get(name).or_else(|| {
            let (label, rest) = name.split_once('.')?;
            (!label.is_empty())
                .then(|| self.wildcard.get(rest))
                .flatten()
        })?;
        self.certs.get(*index)
    }
}

/// The certificates in force, as rustls asks for them.
#[derive(Debug)]
pub(crate) struct Certs {
    dirs: Vec<PathBuf>,
    current: ArcSwap<Loaded>,
}

impl Certs {
    /// Loads every directory; any unusable one fails the start.
    pub(crate) fn load(dirs: &[PathBuf]) -> Result<Arc<Certs>, CertsError> {
        let loaded = load_all(dirs)?;
        for cert in &loaded.certs {
            tracing::info!(names = ?cert.dns_names, "gateway certificate loaded");
        }
        Ok(Arc::new(Certs {
            dirs: dirs.to_vec(),
            current: ArcSwap::from_pointee(loaded),
        }))
    }

    /// The generation in force.
    pub(crate) fn loaded(&self) -> Arc<Loaded> {
        self.current.load_full()
    }

    /// Reloads when a file changed; a failed reload keeps what is in force.
    pub(crate) fn reload_if_changed(&self) {
        let stamps: Vec<_> = self
            .dirs
            .iter()
            .flat_map(|d| files(d))
            .map(|f| stamp(&f))
            .collect();
        if stamps == self.current.load().stamps {
            return;
        }
        match load_all(&self.dirs) {
            Ok(loaded) => {
                let names: Vec<&Vec<String>> = loaded.certs.iter().map(|c| &c.dns_names).collect();
                tracing::info!(?names, "gateway certificates reloaded");
                self.current.store(Arc::new(loaded));
            }
            Err(error) => {
                tracing::error!(%error, "gateway certificates changed but cannot be loaded; keeping those in force");
            }
        }
    }

    /// Checks the files every [`RELOAD_EVERY`] until `stop`.
    pub(crate) async fn watch(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let certs = Arc::clone(&self);
                    // Reading files blocks; keep it off the data path's threads.
                    let _ = tokio::task::spawn_blocking(move || certs.reload_if_changed()).await;
                }
                () = &mut stop => return,
            }
        }
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.current.load();
        let name = hello.server_name().map(super::host::lowercase);
        let found = loaded.pick(name.as_deref()).map(|c| Arc::clone(&c.key));
        if found.is_none() {
            tracing::debug!(sni = ?name, "no gateway certificate covers the name asked for");
        }
        found
    }
}

fn files(dir: &Path) -> [PathBuf; 2] {
    [dir.join(CHAIN_FILE), dir.join(KEY_FILE)]
}

fn stamp(file: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(file).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn load_all(dirs: &[PathBuf]) -> Result<Loaded, CertsError> {
    let mut loaded = Loaded {
        certs: Vec::new(),
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        stamps: Vec::new(),
    };
    for dir in dirs {
        let [chain_path, key_path] = files(dir);
        loaded.stamps.push(stamp(&chain_path));
        loaded.stamps.push(stamp(&key_path));
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path).map_err(|source| CertsError::Read {
                path: path.clone(),
                source,
            })
        };
        let chain = read(&chain_path)?;
        // The key's text lives only as long as this call (zeroed when dropped).
        let key = pillion_identity::Zeroizing::new(read(&key_path)?);
        let cert = ServerCert::from_pem(&chain, &key).map_err(|source| CertsError::Cert {
            dir: dir.clone(),
            source,
        })?;
        let index = loaded.certs.len();
        for name in &cert.dns_names {
            match name.strip_prefix("*.") {
                Some(rest) => loaded.wildcard.entry(rest.to_string()).or_insert(index),
                None => loaded.exact.entry(name.clone()).or_insert(index),
            };
        }
        loaded.certs.push(Arc::new(cert));
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn write_cert(dir: &Path, names: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(CHAIN_FILE), cert.pem()).unwrap();
        std::fs::write(dir.join(KEY_FILE), key.serialize_pem()).unwrap();
    }

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pillion-gw-certs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn names_pick_certificates_and_unknown_names_get_none() {
        let root = temp("pick");
        write_cert(&root.join("shop"), &["shop.test", "*.shop.test"]);
        write_cert(&root.join("api"), &["api.shop.test"]);
        let certs = Certs::load(&[root.join("shop"), root.join("api")]).unwrap();
        let loaded = certs.loaded();
        let names = |n: Option<&str>| loaded.pick(n).map(|c| c.dns_names[0].clone());
        assert_eq!(names(Some("shop.test")).as_deref(), Some("shop.test"));
        assert_eq!(names(Some("www.shop.test")).as_deref(), Some("shop.test"));
        assert_eq!(
            names(Some("api.shop.test")).as_deref(),
            Some("api.shop.test")
        );
        assert_eq!(names(None).as_deref(), Some("shop.test"));
        for unknown in ["other.test", "a.b.shop.test", ".shop.test"] {
            assert_eq!(names(Some(unknown)), None, "{unknown}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn changed_files_are_reloaded_and_broken_ones_keep_the_last_good() {
        let root = temp("reload");
        let dir = root.join("one");
        write_cert(&dir, &["old.test"]);
        let certs = Certs::load(std::slice::from_ref(&dir)).unwrap();
        assert!(certs.loaded().pick(Some("old.test")).is_some());
        // mtime granularity: make the change visible whatever the filesystem.
        std::thread::sleep(Duration::from_millis(20));
        write_cert(&dir, &["new.test", "other.new.test"]);
        certs.reload_if_changed();
        assert!(certs.loaded().pick(Some("new.test")).is_some());
        assert!(certs.loaded().pick(Some("old.test")).is_none());
        std::fs::write(dir.join(KEY_FILE), "broken").unwrap();
        certs.reload_if_changed();
        assert!(certs.loaded().pick(Some("new.test")).is_some(), "kept");
        // A missing directory fails the start, naming the file.
        let err = Certs::load(&[root.join("missing")]).unwrap_err();
        assert!(err.to_string().contains("tls.crt"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
