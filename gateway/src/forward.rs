//! Sends one attempt of an [`Exchange`] to one chosen instance over a keep-alive connection
//! ([`connections`](crate::connections)) and streams the answer back. It knows nothing of routing
//! or retries; those wrap it.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use discovery::client::Instance;
use foldhash::HashMap;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, Uri, header};
use http_body_util::Full;
use hyper::body::{Frame, Incoming, SizeHint};
use metrics::{Counter, Histogram};
use tokio::time::{Instant, Sleep};

use crate::config::UpstreamConfig;
use crate::connections::{self, Connections, Lease, SendError};
use crate::deadline;
use crate::exchange::{Exchange, UpstreamError};

/// The forwarding client: keep-alive connections per thread, shared by all instances. Cheap to
/// clone.
///
/// Per thread because the gateway serves on one single-threaded runtime per core
/// ([`platform::server::Server::serve_per_core`]): a connection's task runs on the runtime that
/// opened it, so connections shared between threads would hand a request to a connection driven
/// by another thread — a cross-thread wakeup each way, which cost the gateway more CPU than any
/// of its layers.
#[derive(Clone)]
pub struct Forward {
    inner: Arc<Inner>,
}

thread_local! {
    /// This thread's connections of each live [`Forward`], found by the address of its `Inner`.
    static CONNECTIONS: RefCell<Vec<(Weak<Inner>, Arc<Connections>)>> =
        const { RefCell::new(Vec::new()) };
}

struct Inner {
    settings: connections::Settings,
    /// From sending a request to the last byte of its answer.
    request_timeout: Duration,
    /// Each instance's authority and `Host` value, by instance id, built once.
    targets: RwLock<HashMap<String, Arc<Target>>>,
}

/// Where an instance is, ready to put in a request.
struct Target {
    address: String,
    port: u16,
    /// `host:port`, to connect to and to find its idle connections by.
    authority: Arc<str>,
    host: HeaderValue,
}

impl Target {
    fn new(instance: &Instance) -> Result<Target, String> {
        let authority = match instance.address.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", instance.port),
            _ => format!("{}:{}", instance.address, instance.port),
        };
        // What a URI would accept as its authority (no path, no user info) is a valid `Host`.
        let host = authority
            .parse::<http::uri::Authority>()
            .map_err(|e| format!("invalid address {}: {e}", instance.address))
            .and_then(|valid| HeaderValue::from_str(valid.as_str()).map_err(|e| e.to_string()))?;
        Ok(Target {
            address: instance.address.clone(),
            port: instance.port,
            authority: authority.into(),
            host,
        })
    }

    fn is(&self, instance: &Instance) -> bool {
        self.port == instance.port && self.address == instance.address
    }
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
        Ok(Forward {
            inner: Arc::new(Inner {
                settings: connections::Settings {
                    connect_timeout: Duration::from_millis(config.connect_timeout_ms),
                    max_idle_per_instance: config.pool_max_idle_per_host,
                    idle_timeout: Duration::from_millis(config.pool_idle_timeout_ms),
                },
                request_timeout: Duration::from_millis(config.request_timeout_ms),
                targets: RwLock::new(HashMap::default()),
            }),
        })
    }

    /// This thread's connections, made on first use.
    fn connections(&self) -> Arc<Connections> {
        CONNECTIONS.with_borrow_mut(|all| {
            // By address: a Weak keeps its allocation, so no later Forward can have the same one.
            let mine = Arc::as_ptr(&self.inner);
            if let Some((_, connections)) = all.iter().find(|(owner, _)| owner.as_ptr() == mine) {
                return connections.clone();
            }
            // Only on a miss: the connections of forwards that are gone (a test's gateway) go.
            all.retain(|(owner, _)| owner.strong_count() > 0);
            let owner = Arc::downgrade(&self.inner);
            let connections = Connections::new(self.inner.settings, owner.clone());
            all.push((owner, connections.clone()));
            connections
        })
    }

    /// Sends one attempt of `exchange` to `instance`, giving up on the answer's head after
    /// `timeout`. This is what the resilience layers call per attempt; they decide where and how
    /// often. The request carries the client's headers less the hop-by-hop ones, `X-Forwarded-*`,
    /// and the time this attempt has left ([`deadline::stamp`]); the answer's body streams through.
    pub async fn send_exchange(
        &self,
        instance: &Instance,
        exchange: Exchange,
        timeout: Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        let started = Instant::now();
        // The stamp must say what the gateway will really wait.
        let timeout = timeout.min(self.inner.request_timeout);
        let Exchange {
            service,
            method,
            uri,
            mut headers,
            body,
            peer,
            ..
        } = exchange;
        let result = match self.target(instance) {
            Ok(target) => {
                add_forwarded_headers(&mut headers, peer);
                strip_hop_by_hop(&mut headers);
                headers.insert(header::HOST, target.host.clone());
                // The service stops working on this attempt when the gateway stops waiting for it.
                deadline::stamp(&mut headers, timeout);
                continue_trace(&mut headers);
                // Origin-form: the upstream is no proxy.
                let path = uri
                    .into_parts()
                    .path_and_query
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                let mut request = Request::new(Full::new(body));
                *request.method_mut() = method;
                *request.uri_mut() = Uri::from(path);
                *request.headers_mut() = headers;
                self.attempt(instance, &target, request, started, timeout)
                    .await
            }
            Err(reason) => Err(failed(instance, reason)),
        };
        let outcome = match &result {
            Ok(response) => response.status().as_u16(),
            Err(UpstreamError::Connect { .. }) => CONNECT_ERROR,
            Err(UpstreamError::Timeout { .. }) => TIMEOUT,
            Err(_) => ERROR,
        };
        let (requests, duration) = attempt_metrics(&service, &instance.id, outcome);
        requests.increment(1);
        duration.record(started.elapsed().as_secs_f64());
        result
    }

    /// The instance's cached target, rebuilt when its address changed.
    fn target(&self, instance: &Instance) -> Result<Arc<Target>, String> {
        {
            let targets = self
                .inner
                .targets
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(target) = targets.get(instance.id.as_str())
                && target.is(instance)
            {
                return Ok(target.clone());
            }
        }
        let target = Arc::new(Target::new(instance)?);
        self.inner
            .targets
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(instance.id.clone(), target.clone());
        Ok(target)
    }

    async fn attempt(
        &self,
        instance: &Instance,
        target: &Target,
        request: Request<Full<Bytes>>,
        started: Instant,
        timeout: Duration,
    ) -> Result<Response<Body>, UpstreamError> {
        let request_timeout = self.inner.request_timeout;
        let connections = self.connections();
        let sent = connections.send(&target.authority, request, started);
        match tokio::time::timeout(timeout.min(request_timeout), sent).await {
            Err(_) => Err(UpstreamError::Timeout {
                instance: instance.id.clone(),
            }),
            Ok(Err(SendError::NotSent(reason))) => {
                tracing::debug!(instance = %instance.id, %reason, "request not sent");
                Err(UpstreamError::Connect {
                    instance: instance.id.clone(),
                })
            }
            Ok(Err(SendError::Broken(reason))) => Err(failed(instance, reason)),
            Ok(Ok((upstream, lease))) => {
                let (parts, incoming) = upstream.into_parts();
                let body = TimedBody {
                    inner: incoming,
                    deadline: started + request_timeout,
                    timer: None,
                    _lease: lease,
                };
                let mut response = Response::new(Body::new(body));
                *response.status_mut() = parts.status;
                *response.headers_mut() = parts.headers;
                strip_hop_by_hop(response.headers_mut());
                Ok(response)
            }
        }
    }
}

fn failed(instance: &Instance, reason: String) -> UpstreamError {
    UpstreamError::Failed {
        instance: instance.id.clone(),
        reason,
    }
}

/// The upstream's answer body, cut off with an error once `request_timeout` has passed since the
/// request was sent, so an upstream that stalls half way cannot hold the client's connection. The
/// timer is armed only if the body ever has to wait. Dropping it gives the connection back.
struct TimedBody {
    inner: Incoming,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    _lease: Lease,
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(
                "the upstream's answer did not finish in time".into(),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `outcome` codes besides HTTP statuses.
const CONNECT_ERROR: u16 = 0;
const TIMEOUT: u16 = 1;
const ERROR: u16 = 2;

fn outcome_label(outcome: u16) -> String {
    match outcome {
        CONNECT_ERROR => "connect_error".into(),
        TIMEOUT => "timeout".into(),
        ERROR => "error".into(),
        status => status.to_string(),
    }
}

/// `gateway_upstream_requests_total` and `gateway_upstream_request_duration_seconds` handles by
/// upstream, instance and outcome, as this thread has used them.
#[derive(Default)]
struct AttemptMetrics {
    recorder: usize,
    by_upstream: HashMap<Box<str>, HashMap<Box<str>, ByOutcome>>,
}

type ByOutcome = HashMap<u16, (Counter, Histogram)>;

thread_local! {
    static ATTEMPT_METRICS: RefCell<AttemptMetrics> = RefCell::default();
}

fn attempt_metrics(upstream: &str, instance: &str, outcome: u16) -> (Counter, Histogram) {
    ATTEMPT_METRICS.with_borrow_mut(|cache| {
        let recorder = platform::metrics::recorder_id();
        if cache.recorder != recorder {
            cache.by_upstream.clear();
            cache.recorder = recorder;
        }
        if !cache.by_upstream.contains_key(upstream) {
            cache
                .by_upstream
                .insert(upstream.into(), HashMap::default());
        }
        let by_instance = cache.by_upstream.get_mut(upstream).expect("inserted above");
        if !by_instance.contains_key(instance) {
            by_instance.insert(instance.into(), HashMap::default());
        }
        let by_outcome = by_instance.get_mut(instance).expect("inserted above");
        by_outcome
            .entry(outcome)
            .or_insert_with(|| {
                let labels = [
                    ("upstream", upstream.to_owned()),
                    ("instance", instance.to_owned()),
                    ("outcome", outcome_label(outcome)),
                ];
                (
                    metrics::counter!("gateway_upstream_requests_total", &labels),
                    metrics::histogram!("gateway_upstream_request_duration_seconds", &labels),
                )
            })
            .clone()
    })
}

/// The request's `traceparent` (the server gave it one) continued by one hop: the same trace id,
/// the gateway's own parent id.
fn continue_trace(headers: &mut HeaderMap) {
    let child = headers
        .get(&platform::server::TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(platform::trace::child_of);
    if let Some(child) = child {
        headers.insert(platform::server::TRACEPARENT, child);
    }
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none of them: looking costs a comparison per header present, removing
    // a hash per name. (Without a Connection header no other name can be hop-by-hop.)
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
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
    if let Some(peer) = peer {
        let mut chain = String::new();
        if let Some(existing) = headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            chain.push_str(existing);
            chain.push_str(", ");
        }
        push_ip(&mut chain, peer.ip());
        if let Ok(value) = HeaderValue::try_from(chain) {
            headers.insert(X_FORWARDED_FOR, value);
        }
    }
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert(X_FORWARDED_HOST, host);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `ip` as text. An IPv4 address's four numbers are written directly: `Display` for an address
/// supports padding, and was two fifths of what the forwarded headers cost per request.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut number = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(number.format(octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
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

        // Without a Connection header, each hop-by-hop header alone is still dropped.
        for name in HOP_BY_HOP {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
            headers.insert(name.clone(), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut headers);
            assert!(!headers.contains_key(&name), "{name} was kept");
            assert_eq!(headers.len(), 1, "{name}");
        }
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

        // The first proxy starts the chain; every kind of address is written as `Display` writes it.
        for peer in [
            "203.0.113.255:1",
            "10.0.0.0:1",
            "[2001:db8::1]:1",
            "[::ffff:1.2.3.4]:1",
        ] {
            let peer: SocketAddr = peer.parse().expect("addr");
            let mut headers = HeaderMap::new();
            add_forwarded_headers(&mut headers, Some(peer));
            assert_eq!(headers["x-forwarded-for"], peer.ip().to_string().as_str());
            assert!(!headers.contains_key("x-forwarded-host"));
        }
    }
}
