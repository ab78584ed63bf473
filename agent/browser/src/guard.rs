//! The browser's only way out: a forward proxy on loopback that every request of every
//! session goes through (navigations, redirects, script-initiated navigations, every
//! subresource and fetch; Chromium is told not to bypass it even for loopback).
//!
//! Each request's host is checked against the [`UrlPolicy`] before anything is sent: as
//! written, and for a name by every address it resolves to; the proxy then connects to
//! exactly the addresses it checked, so a DNS answer that changes between the check and
//! the connection (DNS rebinding) cannot reach a denied address. HTTPS goes through as a
//! CONNECT tunnel to the checked address (the proxy never sees inside). A denied request
//! gets `403 Forbidden` with the reason and never leaves the machine.
//!
//! What it costs the figures: the browser's DNS lookup and TCP connect for plain HTTP
//! happen in the proxy (the page's `dnsMs`/`connectMs` then measure the hop to the proxy;
//! upstream connections are kept alive and reused, as the browser would); HTTPS timings are
//! end to end through the tunnel.

use crate::policy::UrlPolicy;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A name must resolve, and an address answer, within these.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Body = BoxBody<Bytes, hyper::Error>;
/// Plain-HTTP requests go upstream through this pooled client, whose connector resolves
/// names only through the policy ([`CheckedNames`]).
type Upstream = Client<HttpConnector<CheckedNames>, Incoming>;

/// Why the policy refused a name (as the upstream connector's error source).
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The upstream connector's resolver: a name's addresses, if the policy allows every one.
#[derive(Clone)]
struct CheckedNames(Arc<UrlPolicy>);

impl tower_service::Service<Name> for CheckedNames {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.0.clone();
        Box::pin(async move {
            let addresses =
                resolve_checked(&policy, name.as_str(), 0).await.map_err(|r| std::io::Error::other(Refused(r)))?;
            Ok(addresses.into_iter())
        })
    }
}

/// The running proxy; stops when dropped.
pub(crate) struct Guard {
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Guard {
    pub(crate) async fn start(policy: UrlPolicy) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let policy = Arc::new(policy);
        let mut connector = HttpConnector::new_with_resolver(CheckedNames(policy.clone()));
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let upstream: Upstream = Client::builder(TokioExecutor::new()).build(connector);
        let stopped = stop.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stopped.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let (policy, upstream) = (policy.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(policy.clone(), upstream.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .preserve_header_case(true)
                        .title_case_headers(true)
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        tracing::info!(%addr, "browser requests go through the policy proxy");
        Ok(Self { addr, stop })
    }
}

fn body(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(body(Bytes::from(message)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("a header"));
    response
}

async fn handle(
    policy: Arc<UrlPolicy>,
    upstream: Upstream,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let Some(authority) = req.uri().authority().cloned() else {
        return Ok(text(StatusCode::BAD_REQUEST, "baton's browser proxy takes absolute URLs only".into()));
    };
    let refused = |reason: String| {
        tracing::warn!(host = authority.host(), %reason, "the browser's request was refused");
        text(StatusCode::FORBIDDEN, format!("baton refused this request: {reason}"))
    };
    if req.method() == Method::CONNECT {
        let port = authority.port_u16().unwrap_or(443);
        let mut tunnel = match connect_checked(&policy, authority.host(), port).await {
            Ok(tunnel) => tunnel,
            Err(reason) => return Ok(refused(reason)),
        };
        tokio::spawn(async move {
            if let Ok(upgraded) = hyper::upgrade::on(req).await {
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(upgraded), &mut tunnel).await;
            }
        });
        return Ok(Response::new(body(Bytes::new())));
    }
    // The host as written first (an address is refused here; a name again by its addresses
    // when the pool needs a new connection to it).
    if let Err(reason) = policy.check_as_written(&format!("http://{authority}/")) {
        return Ok(refused(reason));
    }
    for hop_by_hop in ["proxy-connection", "proxy-authorization", "keep-alive"] {
        req.headers_mut().remove(hop_by_hop);
    }
    match upstream.request(req).await {
        Ok(response) => Ok(response.map(|upstream_body| upstream_body.boxed())),
        Err(e) => {
            // The resolver's refusal travels as the connect error's source.
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(error) = source {
                // (An io::Error's source skips the error it wraps: look inside it too.)
                let inner = error.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
                if let Some(Refused(reason)) =
                    error.downcast_ref::<Refused>().or_else(|| inner.and_then(|e| e.downcast_ref::<Refused>()))
                {
                    return Ok(refused(reason.clone()));
                }
                source = error.source();
            }
            Ok(text(StatusCode::BAD_GATEWAY, format!("upstream: {e}")))
        }
    }
}

/// A name's addresses, if the policy allows every one (refused: why).
async fn resolve_checked(policy: &UrlPolicy, name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
        .await
        .map_err(|_| format!("{name} did not resolve within {}s", RESOLVE_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{name} does not resolve: {e}"))?
        .collect::<Vec<_>>();
    policy.check_addresses(name, resolved.iter().map(|a| a.ip()))?;
    Ok(resolved)
}

/// A connection to `host:port` if the policy allows it, made to an address the policy
/// checked: never one resolved again afterwards.
async fn connect_checked(policy: &UrlPolicy, host: &str, port: u16) -> Result<TcpStream, String> {
    let addresses: Vec<SocketAddr> = match policy.check_as_written(&format!("http://{host}:{port}/"))? {
        None => {
            let ip = host.trim_matches(['[', ']']).parse().map_err(|_| format!("{host} is not an address"))?;
            vec![SocketAddr::new(ip, port)]
        }
        Some((name, port)) => resolve_checked(policy, &name, port).await?,
    };
    let mut last = format!("{host} has no address");
    for address in addresses {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = format!("connecting to {address}: {e}"),
            Err(_) => last = format!("connecting to {address}: no answer within {}s", CONNECT_TIMEOUT.as_secs()),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_is_connected_to_at_the_addresses_checked_and_denied_ones_never() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = UrlPolicy::new(&[], &[]);
        let stream = connect_checked(&open, "localhost", port).await.unwrap();
        assert!(stream.peer_addr().unwrap().ip().is_loopback());
        let closed = UrlPolicy::new(&[], &["127.0.0.0/8".to_string(), "::1".to_string()]);
        let refused = connect_checked(&closed, "localhost", port).await.unwrap_err();
        assert!(refused.starts_with("host localhost resolves to "), "{refused}");
        let refused = connect_checked(&closed, "127.0.0.1", port).await.unwrap_err();
        assert_eq!(refused, "host 127.0.0.1 matches the deny pattern 127.0.0.0/8");
        let refused = connect_checked(&open, "169.254.169.254", 80).await.unwrap_err();
        assert!(refused.contains("link-local"), "{refused}");
    }

    /// Sends each request (raw HTTP/1.1, absolute-form) in turn on one connection to the
    /// proxy, reading each answer whole (by its Content-Length); returns them all.
    async fn through(guard: &Guard, requests: &[&str]) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut proxy = TcpStream::connect(guard.addr).await.unwrap();
        let mut seen = String::new();
        for request in requests {
            proxy.write_all(request.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&answer).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
                        .and_then(|n| n.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if body.len() >= length {
                        seen.push_str(&text);
                        break;
                    }
                }
                let n = tokio::time::timeout(Duration::from_secs(5), proxy.read(&mut buf)).await.unwrap().unwrap();
                assert!(n > 0, "the proxy closed the connection after {text:?}");
                answer.extend_from_slice(&buf[..n]);
            }
        }
        seen
    }

    #[tokio::test]
    async fn plain_http_goes_through_a_pooled_connection_and_a_denied_name_never_leaves() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // An upstream that answers "ok" to every request and counts its connections.
        let upstream = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = upstream.local_addr().unwrap().port();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = upstream.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = tcp.read(&mut buf).await {
                        if n == 0 || tcp.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let open = Guard::start(UrlPolicy::new(&[], &[])).await.unwrap();
        let get = format!("GET http://localhost:{port}/a HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n");
        let seen = through(&open, &[&get, &get]).await;
        assert_eq!(seen.matches("HTTP/1.1 200 OK").count(), 2, "{seen}");
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1, "the upstream connection was not reused");

        let closed = Guard::start(UrlPolicy::new(&[], &["127.0.0.0/8".to_string(), "::1".to_string()])).await.unwrap();
        let seen = through(&closed, &[&get]).await;
        assert!(seen.starts_with("HTTP/1.1 403 Forbidden"), "{seen}");
        assert!(seen.contains("baton refused this request: host localhost resolves to "), "{seen}");
        let direct = format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        let seen = through(&closed, &[&direct]).await;
        assert!(seen.contains("host 127.0.0.1 matches the deny pattern 127.0.0.0/8"), "{seen}");
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1, "a denied request reached the upstream");
    }
}
