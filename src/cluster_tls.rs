//! Mutual TLS for the link between cluster nodes. `warren certs --cluster`
//! creates a cluster CA and one node identity it signs (for the name
//! `warren-cluster`); every node gets the same three files. A node accepts a
//! link only from a peer presenting a certificate of that CA, and dials
//! peers verifying theirs the same way: holding the files is what makes a
//! node a member (the shared secret stays as a second check).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, PrivateKeyDer, ServerName},
    server::WebPkiClientVerifier,
    RootCertStore,
};

use crate::tls::{load_certs, write_private, TlsError};

/// The name every node's certificate carries and every node verifies.
pub const CLUSTER_NAME: &str = "warren-cluster";

const CA_CERT: &str = "cluster-ca.pem";
const CA_KEY: &str = "cluster-ca.key";
const NODE_CERT: &str = "cluster.pem";
const NODE_KEY: &str = "cluster.key";

/// Both sides of the link's TLS: accepting peers and dialing them.
#[derive(Clone)]
pub struct ClusterTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn generate_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Generate(e.to_string())
}

/// Creates the cluster CA and node identity in `dir` unless present; whether
/// it created them. Copy the directory's `cluster-ca.pem`, `cluster.pem` and
/// `cluster.key` to every node (`cluster-ca.key` stays with the operator).
pub fn create(dir: &Path) -> Result<bool, TlsError> {
    if dir.join(NODE_CERT).exists() && dir.join(NODE_KEY).exists() && dir.join(CA_CERT).exists() {
        return Ok(false);
    }
    let write_err = |path: PathBuf| move |source| TlsError::Write { path, source };
    std::fs::create_dir_all(dir).map_err(write_err(dir.to_path_buf()))?;
    let ca_key = KeyPair::generate().map_err(generate_err)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(generate_err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "warren cluster CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(generate_err)?;
    let node_key = KeyPair::generate().map_err(generate_err)?;
    let mut node = CertificateParams::new(vec![CLUSTER_NAME.to_string()]).map_err(generate_err)?;
    node.distinguished_name
        .push(DnType::CommonName, "warren cluster node");
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node_cert = node
        .signed_by(&node_key, &ca_cert, &ca_key)
        .map_err(generate_err)?;
    write_private(&dir.join(CA_KEY), ca_key.serialize_pem().as_bytes())
        .map_err(write_err(dir.join(CA_KEY)))?;
    write_private(&dir.join(NODE_KEY), node_key.serialize_pem().as_bytes())
        .map_err(write_err(dir.join(NODE_KEY)))?;
    std::fs::write(dir.join(CA_CERT), ca_cert.pem()).map_err(write_err(dir.join(CA_CERT)))?;
    std::fs::write(dir.join(NODE_CERT), node_cert.pem()).map_err(write_err(dir.join(NODE_CERT)))?;
    Ok(true)
}

/// Loads the cluster CA and this node's identity from `dir`.
pub fn load(dir: &Path) -> Result<ClusterTls, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&dir.join(CA_CERT))? {
        roots.add(ca)?;
    }
    let roots = Arc::new(roots);
    let chain = load_certs(&dir.join(NODE_CERT))?;
    let key_path = dir.join(NODE_KEY);
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|_| TlsError::NoPem {
        path: key_path,
        what: "private key",
    })?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::Generate(format!("cluster client verifier: {e}")))?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(ClusterTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
    })
}

/// The name a node dials its peers by (every node's certificate has it).
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(CLUSTER_NAME).expect("a valid DNS name")
}
