//! The sample upstream behind TLS: a terminator with a self-signed
//! certificate for `localhost` in front of it, recording the name (SNI) each
//! client asked for. The https side of the tests run over upstream schemes
//! (`over_transports_versions_and_upstreams!`), and of `tests/upstream_tls.rs`.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

pub struct HttpsService {
    /// `https://localhost:PORT`.
    pub url: String,
    /// The certificate to trust (`--upstream-ca`).
    pub cert: PathBuf,
    /// The SNI of every connection so far.
    pub names: Arc<Mutex<Vec<Option<String>>>>,
}

impl HttpsService {
    /// TLS on a new port of this machine, in front of the plain service at
    /// `behind` (HOST:PORT); its certificate is written into `dir`.
    pub async fn spawn(dir: &Path, behind: String) -> HttpsService {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = dir.join("upstream.pem");
        std::fs::write(&cert, made.cert.pem()).unwrap();
        let chain = vec![CertificateDer::from_pem_slice(made.cert.pem().as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(made.key_pair.serialize_pem().as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let names = Arc::new(Mutex::new(Vec::new()));
        let seen = names.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, behind, seen) = (acceptor.clone(), behind.clone(), seen.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let sni = tls.get_ref().1.server_name().map(str::to_string);
                    seen.lock().unwrap().push(sni);
                    let mut plain = TcpStream::connect(&behind).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        HttpsService {
            url: format!("https://localhost:{port}"),
            cert,
            names,
        }
    }
}
