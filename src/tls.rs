//! TLS material for both ends: the server's certificate (loaded from `--certs`, or
//! generated self-signed on first start) and the agent's choice of what to trust
//! (a CA/certificate file, a pinned SHA-256 fingerprint, or the system's roots).

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    client::WebPkiServerVerifier,
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName, UnixTime},
    DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no usable PEM {what}")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("generating a self-signed certificate failed: {0}")]
    Generate(String),
    #[error("fingerprint {0:?} is not 64 hex digits (SHA-256, colons allowed)")]
    BadFingerprint(String),
    #[error("no system root certificates found; pass --ca FILE or --fingerprint SHA256")]
    NoSystemRoots,
    #[error("{cert} and {key} do not make a usable certificate/key pair: {reason}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("HTTPS on the client API needs at least one --api-tls-cert/--api-tls-key pair")]
    NoPairs,
    #[error(
        "no system root certificates to check the https:// upstream with; pass --upstream-ca FILE"
    )]
    NoUpstreamRoots,
    #[error("TLS configuration rejected: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a certificate's DER, as 64 lowercase hex digits.
pub fn fingerprint(cert: &[u8]) -> String {
    hex::encode(Sha256::digest(cert))
}

/// The server's certificate chain and key.
pub struct ServerIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Whether this start generated the pair (so the operator should be told).
    pub generated: bool,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("fingerprint", &self.fingerprint())
            .field("generated", &self.generated)
            .finish()
    }
}

impl ServerIdentity {
    /// Loads `server.pem`/`server.key` from `dir`, generating a self-signed pair for
    /// `names` (DNS names or IP addresses) when they are absent.
    pub fn load_or_generate(dir: &Path, names: &[String]) -> Result<Self, TlsError> {
        let cert_path = dir.join("server.pem");
        let key_path = dir.join("server.key");
        let mut generated = false;
        if !cert_path.exists() || !key_path.exists() {
            generate(dir, &cert_path, &key_path, names)?;
            generated = true;
        }
        let chain = load_certs(&cert_path)?;
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|_| TlsError::NoPem {
            path: key_path,
            what: "private key",
        })?;
        Ok(ServerIdentity {
            chain,
            key,
            generated,
        })
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.chain[0])
    }

    /// The secret keying QUIC stateless resets: derived from the private key,
    /// so a restarted server (same key) sends resets its agents recognise.
    pub fn reset_secret(&self) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(b"warren stateless reset v1\0");
        hash.update(self.key.secret_der());
        hash.finalize().into()
    }

    /// A TLS 1.3 server configuration (QUIC requires 1.3; our agents all speak it).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        Ok(rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?)
    }
}

fn generate(
    dir: &Path,
    cert_path: &Path,
    key_path: &Path,
    names: &[String],
) -> Result<(), TlsError> {
    let certified = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    write_private(key_path, certified.key_pair.serialize_pem().as_bytes())
        .map_err(write_err(key_path))?;
    std::fs::write(cert_path, certified.cert.pem()).map_err(write_err(cert_path))?;
    Ok(())
}

/// The certificates of a PEM file (at least one, or an error naming the file).
pub(crate) fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// Writes a file only its owner can read (the private key).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)?.write_all(contents)
}

/// What the agent trusts when it checks the server's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The certificates in this PEM file: CA roots, or the server's own
    /// self-signed certificate (accepted when it is presented verbatim).
    CaFile(PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint.
    Fingerprint(String),
    /// The operating system's root store.
    System,
}

/// Builds the agent's TLS client configuration for `trust`.
pub fn client_config(trust: &Trust) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let mode = match trust {
        Trust::Fingerprint(text) => Mode::Pinned(parse_fingerprint(text)?),
        Trust::CaFile(path) => {
            let certs = load_certs(path)?;
            let mut roots = RootCertStore::empty();
            // Certificates that are not CAs (a self-signed leaf) may be refused as
            // roots; they still count through the exact-match path below.
            let _ = roots.add_parsable_certificates(certs.iter().cloned());
            let webpki = if roots.is_empty() {
                None
            } else {
                Some(build_webpki(roots, &provider)?)
            };
            Mode::Ca {
                exact: certs,
                webpki,
            }
        }
        Trust::System => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
            Mode::System(build_webpki(roots, &provider)?)
        }
    };
    let verifier = AgentVerifier {
        mode,
        provider: provider.clone(),
    };
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// The agent's TLS client for an `https://` upstream: the system's roots
/// plus the certificates of `ca` (a private CA, or the service's own
/// self-signed certificate); TLS 1.2 and 1.3, ALPN `http/1.1`.
pub fn upstream_client_config(ca: Option<&Path>) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = ca {
        let (added, _) = roots.add_parsable_certificates(load_certs(path)?);
        if added == 0 {
            return Err(TlsError::NoPem {
                path: path.to_path_buf(),
                what: "certificate usable as a root",
            });
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoUpstreamRoots);
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn build_webpki(
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))
}

fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let digits: String = text
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&digits, &mut out).map_err(|_| TlsError::BadFingerprint(text.into()))?;
    Ok(out)
}

#[derive(Debug)]
enum Mode {
    Pinned([u8; 32]),
    Ca {
        exact: Vec<CertificateDer<'static>>,
        webpki: Option<Arc<WebPkiServerVerifier>>,
    },
    System(Arc<WebPkiServerVerifier>),
}

#[derive(Debug)]
struct AgentVerifier {
    mode: Mode,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AgentVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refuse = |why: &str| {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    std::io::Error::other(why.to_string()),
                ))),
            ))
        };
        match &self.mode {
            Mode::Pinned(want) => {
                let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
                if bool::from(got.ct_eq(want)) {
                    Ok(ServerCertVerified::assertion())
                } else {
                    refuse(&format!(
                        "server certificate fingerprint {} does not match --fingerprint",
                        hex::encode(got)
                    ))
                }
            }
            Mode::Ca { exact, webpki } => {
                // The operator handed us this very certificate: trust it as a pin.
                if exact.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
                    return Ok(ServerCertVerified::assertion());
                }
                match webpki {
                    Some(v) => {
                        v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
                    }
                    None => refuse("server certificate is not in the --ca file"),
                }
            }
            Mode::System(v) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
