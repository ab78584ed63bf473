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
//! happen in the proxy (the page's `dnsMs`/`connectMs` then measure the hop to the proxy),
//! and each plain-HTTP request opens its own upstream connection (no pooling); HTTPS
//! timings are end to end through the tunnel.

use crate::policy::UrlPolicy;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A name must resolve, and an address answer, within these.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type Body = BoxBody<Bytes, hyper::Error>;

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
                let policy = policy.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(policy.clone(), req));
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

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message)).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8".parse().expect("a header"));
    response
}

async fn handle(policy: Arc<UrlPolicy>, req: Request<Incoming>) -> Result<Response<Body>, std::convert::Infallible> {
    let Some(authority) = req.uri().authority().cloned() else {
        return Ok(text(StatusCode::BAD_REQUEST, "baton's browser proxy takes absolute URLs only".into()));
    };
    let tls = req.method() == Method::CONNECT;
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let upstream = match connect_checked(&policy, authority.host(), port).await {
        Ok(upstream) => upstream,
        Err(reason) => {
            tracing::warn!(host = authority.host(), %reason, "the browser's request was refused");
            return Ok(text(StatusCode::FORBIDDEN, format!("baton refused this request: {reason}")));
        }
    };
    if tls {
        tokio::spawn(async move {
            if let Ok(upgraded) = hyper::upgrade::on(req).await {
                let mut upstream = upstream;
                let _ = tokio::io::copy_bidirectional(&mut TokioIo::new(upgraded), &mut upstream).await;
            }
        });
        return Ok(Response::new(Full::new(Bytes::new()).map_err(|never| match never {}).boxed()));
    }
    Ok(forward(req, upstream).await.unwrap_or_else(|e| text(StatusCode::BAD_GATEWAY, format!("upstream: {e}"))))
}

/// Sends the request, in origin form, over `upstream`; streams the answer back.
async fn forward(mut req: Request<Incoming>, upstream: TcpStream) -> Result<Response<Body>, hyper::Error> {
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .title_case_headers(true)
        .handshake(TokioIo::new(upstream))
        .await?;
    tokio::spawn(connection);
    let origin_form = req.uri().path_and_query().map_or("/", |p| p.as_str()).parse().expect("a path is a URI");
    *req.uri_mut() = origin_form;
    for hop_by_hop in ["proxy-connection", "proxy-authorization", "keep-alive"] {
        req.headers_mut().remove(hop_by_hop);
    }
    let response = sender.send_request(req).await?;
    Ok(response.map(|body| body.boxed()))
}

/// A connection to `host:port` if the policy allows it, made to an address the policy
/// checked: never one resolved again afterwards.
async fn connect_checked(policy: &UrlPolicy, host: &str, port: u16) -> Result<TcpStream, String> {
    let addresses: Vec<SocketAddr> = match policy.check_as_written(&format!("http://{host}:{port}/"))? {
        None => {
            let ip = host.trim_matches(['[', ']']).parse().map_err(|_| format!("{host} is not an address"))?;
            vec![SocketAddr::new(ip, port)]
        }
        Some((name, port)) => {
            let resolved = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name.as_str(), port)))
                .await
                .map_err(|_| format!("{name} did not resolve within {}s", RESOLVE_TIMEOUT.as_secs()))?
                .map_err(|e| format!("{name} does not resolve: {e}"))?
                .collect::<Vec<_>>();
            policy.check_addresses(&name, resolved.iter().map(|a| a.ip()))?;
            resolved
        }
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
}
