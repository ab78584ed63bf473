//! How a client reaches a coordinator: the CLI, agents, a follower coordinator calling its
//! leader. An `https://` URL speaks TLS (the coordinator's certificate checked against
//! `--tls-ca`, or the system's roots without one; `--tls-cert`/`--tls-key` present a
//! client certificate: mutual TLS, how agents prove who they are). A bearer token from
//! `--token-file` goes with every call as `authorization: Bearer …`.
//!
//! Files are read each time a connection is made, so a rotated certificate or token is
//! picked up at the next reconnect without a restart.

use std::path::{Path, PathBuf};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The gRPC metadata key that carries a bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// A client's TLS files and token.
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct ClientAuth {
    /// The CA certificate (PEM) that signed the coordinator's certificate, for https://
    /// coordinator URLs; without it, the system's trusted roots.
    #[cfg_attr(feature = "cli", arg(long, global = true, env = "BATON_TLS_CA"))]
    pub tls_ca: Option<PathBuf>,
    /// The name the coordinator's certificate must carry, when the URL's host is not it
    /// (e.g. its Service name through `kubectl port-forward`).
    #[cfg_attr(feature = "cli", arg(long, global = true, env = "BATON_TLS_SERVER_NAME"))]
    pub tls_server_name: Option<String>,
    /// This client's certificate (PEM), for mutual TLS: an agent's identity.
    #[cfg_attr(feature = "cli", arg(long, global = true, env = "BATON_TLS_CERT", requires = "tls_key"))]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[cfg_attr(feature = "cli", arg(long, global = true, env = "BATON_TLS_KEY", requires = "tls_cert"))]
    pub tls_key: Option<PathBuf>,
    /// A file holding a bearer token (`baton token` makes one), sent with every call.
    #[cfg_attr(feature = "cli", arg(long, global = true, env = "BATON_TOKEN_FILE"))]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url:?} is not a coordinator URL: {reason}")]
    Url { url: String, reason: String },
    #[error("{flag} {}: {reason}", path.display())]
    File { flag: &'static str, path: PathBuf, reason: String },
    #[error("{0} is for https:// coordinator URLs; {1} is plaintext")]
    TlsWithoutHttps(&'static str, String),
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::File { flag, path: path.to_owned(), reason: e.to_string() })
}

impl ClientAuth {
    /// An endpoint for `url`, TLS set up when the URL is https.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, ClientError> {
        let bad_url = |reason: String| ClientError::Url { url: url.to_string(), reason };
        let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| bad_url(e.to_string()))?;
        if !url.starts_with("https://") {
            if self.tls_ca.is_some() {
                return Err(ClientError::TlsWithoutHttps("--tls-ca", url.to_string()));
            }
            if self.tls_cert.is_some() {
                return Err(ClientError::TlsWithoutHttps("--tls-cert", url.to_string()));
            }
            return Ok(endpoint);
        }
        let mut tls = ClientTlsConfig::new();
        tls = match &self.tls_ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?)),
            None => tls.with_native_roots(),
        };
        if let Some(name) = &self.tls_server_name {
            tls = tls.domain_name(name);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            tls = tls.identity(Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?));
        }
        endpoint.tls_config(tls).map_err(|e| bad_url(e.to_string()))
    }

    /// What goes with every call: the bearer token, if any.
    pub fn credentials(&self) -> Result<Credentials, ClientError> {
        let Some(path) = &self.token_file else { return Ok(Credentials::default()) };
        let text = String::from_utf8(read("--token-file", path)?).unwrap_or_default();
        let header = format!("Bearer {}", text.trim()).parse().map_err(|_| ClientError::File {
            flag: "--token-file",
            path: path.clone(),
            reason: "is not a token".into(),
        })?;
        Ok(Credentials(Some(header)))
    }
}

/// Adds the bearer token to each call (an interceptor).
#[derive(Clone, Debug, Default)]
pub struct Credentials(Option<MetadataValue<Ascii>>);

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, token.clone());
        }
        Ok(request)
    }
}

/// A channel whose calls carry the client's credentials.
pub type Channel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Credentials>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_need_an_https_url() {
        let auth = ClientAuth { tls_ca: Some("ca.pem".into()), ..Default::default() };
        let e = auth.endpoint("http://10.0.0.1:7070").unwrap_err();
        assert_eq!(e.to_string(), "--tls-ca is for https:// coordinator URLs; http://10.0.0.1:7070 is plaintext");
        let e = ClientAuth { tls_ca: Some("/nonexistent/ca.pem".into()), ..Default::default() }
            .endpoint("https://10.0.0.1:7070")
            .unwrap_err();
        assert!(e.to_string().starts_with("--tls-ca /nonexistent/ca.pem: "), "{e}");
    }

    #[test]
    fn the_token_goes_with_every_call() {
        let dir = std::env::temp_dir().join(format!("baton-token-{}", std::process::id()));
        std::fs::write(&dir, "baton_abc\n").unwrap();
        let mut credentials = ClientAuth { token_file: Some(dir.clone()), ..Default::default() }.credentials().unwrap();
        let request = credentials.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get(AUTHORIZATION).unwrap(), "Bearer baton_abc");
        std::fs::remove_file(dir).unwrap();
    }
}
