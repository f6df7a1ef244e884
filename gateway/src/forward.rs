//! Sends one request to one chosen instance over a keep-alive pool and streams the answer back.
//! It knows nothing of routing or retries; those wrap it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use discovery::client::Instance;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};

use crate::config::UpstreamConfig;
use crate::exchange::{Exchange, UpstreamError};

/// Why an upstream exchange failed. `Connect` means the request was never sent, which later lets the
/// retry layer reroute even non-idempotent requests safely.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("could not connect to {instance}: {source}")]
    Connect {
        instance: String,
        source: reqwest::Error,
    },
    #[error("{instance} did not answer in time")]
    Timeout { instance: String },
    #[error("exchange with {instance} failed: {source}")]
    Other {
        instance: String,
        source: reqwest::Error,
    },
}

/// The forwarding client (one connection pool shared by all instances).
#[derive(Clone)]
pub struct Forward {
    client: reqwest::Client,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are about one connection and are never forwarded.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

impl Forward {
    pub fn new(config: &UpstreamConfig) -> anyhow::Result<Forward> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .pool_idle_timeout(Duration::from_millis(config.pool_idle_timeout_ms))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .http1_only()
            .build()?;
        Ok(Forward { client })
    }

    /// Forwards `request` to `instance`, adding `X-Forwarded-*` for the client at `peer`.
    pub async fn send(
        &self,
        instance: &Instance,
        request: Request<Body>,
        peer: Option<SocketAddr>,
    ) -> Result<Response<Body>, ForwardError> {
        let (parts, body) = request.into_parts();
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let url = format!(
            "http://{}:{}{}",
            instance.address, instance.port, path_and_query
        );
        let mut headers = parts.headers;
        add_forwarded_headers(&mut headers, peer);
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        let upstream = self
            .client
            .request(parts.method, url)
            .headers(headers)
            .body(reqwest::Body::wrap_stream(body.into_data_stream()))
            .send()
            .await
            .map_err(|source| classify(&instance.id, source))?;
        let mut response = Response::builder().status(upstream.status());
        if let Some(headers) = response.headers_mut() {
            headers.extend(upstream.headers().clone());
            strip_hop_by_hop(headers);
        }
        response
            .body(Body::from_stream(upstream.bytes_stream()))
            .map_err(|_| ForwardError::Timeout {
                instance: instance.id.clone(),
            })
    }
}

impl Forward {
    /// Sends one attempt of `exchange` to `instance`, giving up after `timeout`. This is what the
    /// resilience layers call per attempt; they decide where and how often.
    pub async fn send_exchange(
        &self,
        instance: &Instance,
        exchange: &Exchange,
        timeout: Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        let mut request = Request::builder()
            .method(exchange.method.clone())
            .uri(exchange.uri.clone())
            .body(Body::from(exchange.body.clone()))
            .map_err(|e| UpstreamError::Failed {
                instance: instance.id.clone(),
                reason: e.to_string(),
            })?;
        *request.headers_mut() = exchange.headers.clone();
        // The service stops working on this attempt when the gateway stops waiting for it.
        crate::deadline::stamp(request.headers_mut(), timeout);
        let started = std::time::Instant::now();
        let result = self
            .attempt(instance, request, exchange.peer, timeout)
            .await;
        let outcome = match &result {
            Ok(response) => response.status().as_u16().to_string(),
            Err(UpstreamError::Connect { .. }) => "connect_error".into(),
            Err(UpstreamError::Timeout { .. }) => "timeout".into(),
            Err(_) => "error".into(),
        };
        let labels = [
            ("upstream", exchange.service.clone()),
            ("instance", instance.id.clone()),
            ("outcome", outcome),
        ];
        metrics::counter!("gateway_upstream_requests_total", &labels).increment(1);
        metrics::histogram!("gateway_upstream_request_duration_seconds", &labels)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn attempt(
        &self,
        instance: &Instance,
        request: Request<Body>,
        peer: Option<SocketAddr>,
        timeout: Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        match tokio::time::timeout(timeout, self.send(instance, request, peer)).await {
            Err(_) => Err(UpstreamError::Timeout {
                instance: instance.id.clone(),
            }),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(ForwardError::Connect { instance, .. })) => {
                Err(UpstreamError::Connect { instance })
            }
            Ok(Err(ForwardError::Timeout { instance })) => Err(UpstreamError::Timeout { instance }),
            Ok(Err(ForwardError::Other { instance, source })) => Err(UpstreamError::Failed {
                instance,
                reason: source.to_string(),
            }),
        }
    }
}

fn classify(instance: &str, source: reqwest::Error) -> ForwardError {
    let instance = instance.to_owned();
    if source.is_connect() {
        ForwardError::Connect { instance, source }
    } else if source.is_timeout() {
        ForwardError::Timeout { instance }
    } else {
        ForwardError::Other { instance, source }
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
}

fn add_forwarded_headers(headers: &mut HeaderMap, peer: Option<SocketAddr>) {
    let x_forwarded_for = HeaderName::from_static("x-forwarded-for");
    if let Some(peer) = peer {
        let chain = match headers.get(&x_forwarded_for).and_then(|v| v.to_str().ok()) {
            Some(existing) => format!("{existing}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(value) = HeaderValue::from_str(&chain) {
            headers.insert(x_forwarded_for, value);
        }
    }
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    }
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_in_connection_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        headers.insert("x-secret-hop", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::ACCEPT));
    }

    #[test]
    fn the_client_address_is_appended_to_x_forwarded_for() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        headers.insert(header::HOST, HeaderValue::from_static("shop.example"));
        let peer: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        add_forwarded_headers(&mut headers, Some(peer));
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(headers["x-forwarded-host"], "shop.example");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }
}
