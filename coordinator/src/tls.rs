//! The coordinator's TLS listener: rustls (ring), its certificate, key and client CA
//! re-read whenever their files change, so a rotated certificate (a renewed Kubernetes
//! Secret, cert-manager) serves every new connection without a restart. Client
//! certificates are checked against `--client-ca` but optional at this layer: people
//! authenticate with tokens; [`crate::access`] decides who may do what.

use anyhow::{Context as _, anyhow};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// How often the files are looked at for a new version.
pub const RELOAD_EVERY: Duration = Duration::from_secs(2);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// The current server configuration and the file contents it was built from.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<(Vec<Vec<u8>>, Arc<ServerConfig>)>,
}

impl Tls {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let bytes = read(&files)?;
        let config = build(&files, &bytes)?;
        Ok(Arc::new(Self { files, current: RwLock::new((bytes, Arc::new(config))) }))
    }

    /// Builds a new configuration if any file changed. A change that does not load (a
    /// half-written file, a key that does not match) keeps the old one and says why.
    pub fn reload(&self) {
        let bytes = match read(&self.files) {
            Ok(bytes) => bytes,
            Err(e) => return tracing::warn!(error = %format!("{e:#}"), "TLS files unreadable: keeping the loaded ones"),
        };
        if self.current.read().unwrap_or_else(|e| e.into_inner()).0 == bytes {
            return;
        }
        match build(&self.files, &bytes) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (bytes, Arc::new(config));
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "new TLS files do not load: keeping the old ones"),
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().unwrap_or_else(|e| e.into_inner()).1.clone())
    }
}

fn read(files: &TlsFiles) -> anyhow::Result<Vec<Vec<u8>>> {
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|path| std::fs::read(path).with_context(|| format!("reading {}", path.display())))
        .collect()
}

fn build(files: &TlsFiles, bytes: &[Vec<u8>]) -> anyhow::Result<ServerConfig> {
    let certs = certificates(&bytes[0]).with_context(|| format!("--tls-cert {}", files.cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&bytes[1])
        .map_err(|e| anyhow!("--tls-key {}: no private key in PEM: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(&bytes[2]).with_context(|| format!("--client-ca {}", path.display()))? {
                roots.add(cert).with_context(|| format!("--client-ca {}", path.display()))?;
            }
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .allow_unauthenticated()
                .build()
                .with_context(|| format!("--client-ca {}", path.display()))?
        }
        None => WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .with_context(|| format!("--tls-key {} does not match --tls-cert", files.key.display()))?;
    // gRPC is HTTP/2: clients (grpc-go, grpcurl) require it negotiated.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

fn certificates(pem: &[u8]) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem).collect::<Result<Vec<_>, _>>().map_err(|e| anyhow!("{e}"))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in PEM");
    }
    Ok(certs)
}

/// The identity a client certificate names: its subject's common name, or else its first
/// DNS name.
pub fn identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    if let Some(cn) = parsed.subject().iter_common_name().next().and_then(|cn| cn.as_str().ok()) {
        return Some(cn.to_string());
    }
    let san = parsed.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
        _ => None,
    })
}

/// TLS connections accepted on `listener` until `stop`, handshakes done concurrently (a
/// slow client holds up no one), each with the configuration current when it arrived.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Tls>,
    stop: CancellationToken,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Small messages (assignments, acks) must not wait for Nagle's algorithm.
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
