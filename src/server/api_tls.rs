//! HTTPS on the client API: the certificate/key pairs given with
//! `--api-tls-cert`/`--api-tls-key`, chosen for each connection by the name
//! the client asks for (SNI, wildcards included, as each certificate's own
//! names say), and reloaded without a restart when the files change or on
//! SIGHUP. A reload swaps the set for new handshakes only: connections
//! already open keep theirs. A bad new file is refused with a log line and
//! the set in use stays, so a half-written renewal never takes HTTPS down.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use rustls::{
    pki_types::{pem::PemObject, PrivateKeyDer, ServerName},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tracing::{info, warn};

use crate::{shutdown::Shutdown, tls::TlsError};

/// ALPN names the client API offers (most preferred first).
pub(crate) const H2: &[u8] = b"h2";
pub(crate) const HTTP1: &[u8] = b"http/1.1";

/// One certificate chain (PEM, leaf first) and its private key (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ApiTlsConfig {
    /// Tried in order: the first whose certificate covers the client's name
    /// serves it; the first serves clients that name none (or no match).
    pub pairs: Vec<CertPair>,
    /// How often the files are checked for a change (SIGHUP reloads at once).
    pub reload_check: Duration,
}

impl ApiTlsConfig {
    pub fn new(pairs: Vec<CertPair>) -> Self {
        ApiTlsConfig {
            pairs,
            // 10 s: a renewed certificate is served within seconds of being
            // written; a stat of each file that often costs nothing.
            reload_check: Duration::from_secs(10),
        }
    }
}

/// What identifies a file's content without reading it: a renewal (an ACME
/// client writing new files or switching a symlink) changes one of these.
type Stamp = Option<(SystemTime, u64)>;

struct Loaded {
    keys: Vec<Arc<CertifiedKey>>,
    stamps: Vec<Stamp>,
}

/// The client API's certificates, as served now.
pub struct ApiCerts {
    config: ApiTlsConfig,
    current: RwLock<Arc<Loaded>>,
    /// The stamps of the last load tried, failed or not: a bad file is
    /// reported once, not at every check, and tried again when it changes.
    tried: Mutex<Vec<Stamp>>,
}

impl fmt::Debug for ApiCerts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiCerts")
            .field("pairs", &self.config.pairs)
            .finish()
    }
}

impl ApiCerts {
    /// Loads every pair; an error names the file and what is wrong with it.
    pub fn load(config: ApiTlsConfig) -> Result<Arc<ApiCerts>, TlsError> {
        let loaded = load_pairs(&config.pairs, stamps(&config.pairs))?;
        Ok(Arc::new(ApiCerts {
            tried: Mutex::new(loaded.stamps.clone()),
            current: RwLock::new(Arc::new(loaded)),
            config,
        }))
    }

    /// A rustls configuration serving these certificates (and whatever a
    /// reload puts in their place): TLS 1.2 and 1.3, `alpn` offered.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
    ) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// The same for QUIC (HTTP/3): TLS 1.3 only, ALPN `h3`.
    pub fn quic_server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h3".to_vec()];
        // No 0-RTT: a replayed request could reach an agent twice.
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// Reads every file again and, if all make usable pairs, serves them
    /// from the next handshake on. Returns how many pairs are served.
    pub fn reload(&self) -> Result<usize, TlsError> {
        let stamps = stamps(&self.config.pairs);
        *self.tried.lock().expect("not poisoned") = stamps.clone();
        let loaded = load_pairs(&self.config.pairs, stamps)?;
        let n = loaded.keys.len();
        *self.current.write().expect("not poisoned") = Arc::new(loaded);
        Ok(n)
    }

    /// Reloads when a file changed since the last load tried.
    fn reload_if_changed(&self) {
        let now = stamps(&self.config.pairs);
        if now == *self.tried.lock().expect("not poisoned") {
            return;
        }
        match self.reload() {
            Ok(n) => info!(pairs = n, "client API certificates changed on disk: reloaded"),
            Err(e) => warn!("client API certificates changed on disk but were not reloaded (the ones in use stay): {e}"),
        }
    }

    /// Checks the files every `reload_check` until `shutdown`.
    pub(super) async fn watch(self: Arc<Self>, shutdown: Shutdown) {
        let mut clock = shutdown.every(self.config.reload_check);
        while clock.tick().await {
            // File reads and key parsing: off the runtime's workers.
            let certs = self.clone();
            let _ = tokio::task::spawn_blocking(move || certs.reload_if_changed()).await;
        }
    }
}

impl ResolvesServerCert for ApiCerts {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.current.read().expect("not poisoned").clone();
        let named = hello
            .server_name()
            .and_then(|sni| ServerName::try_from(sni).ok())
            .and_then(|name| loaded.keys.iter().find(|key| covers(key, &name)));
        named.or_else(|| loaded.keys.first()).cloned()
    }
}

/// Whether `key`'s certificate is valid for `name` (its SANs, wildcards as
/// TLS clients match them).
fn covers(key: &CertifiedKey, name: &ServerName<'_>) -> bool {
    let Ok(leaf) = key.end_entity_cert() else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(name).is_ok())
}

fn stamps(pairs: &[CertPair]) -> Vec<Stamp> {
    let stamp = |path: &Path| {
        let meta = std::fs::metadata(path).ok()?;
        Some((meta.modified().ok()?, meta.len()))
    };
    pairs
        .iter()
        .flat_map(|p| [stamp(&p.cert), stamp(&p.key)])
        .collect()
}

/// Loads `pairs`, whose files had `stamps` just before.
fn load_pairs(pairs: &[CertPair], stamps: Vec<Stamp>) -> Result<Loaded, TlsError> {
    let provider = rustls::crypto::ring::default_provider();
    let mut keys = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let chain = crate::tls::load_certs(&pair.cert)?;
        let key = PrivateKeyDer::from_pem_file(&pair.key).map_err(|e| match e {
            rustls::pki_types::pem::Error::Io(source) => TlsError::Read {
                path: pair.key.clone(),
                source,
            },
            _ => TlsError::NoPem {
                path: pair.key.clone(),
                what: "private key",
            },
        })?;
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::Pair {
            cert: pair.cert.clone(),
            key: pair.key.clone(),
            reason: e.to_string(),
        })?;
        keys.push(Arc::new(key));
    }
    if keys.is_empty() {
        return Err(TlsError::NoPairs);
    }
    Ok(Loaded { keys, stamps })
}
