//! Per-client rate limit: a token bucket per client, and 429 with `Retry-After` once it is empty.
//!
//! The bucket is kept as GCRA ("virtual scheduling"), which is the token bucket stored as one
//! instant per client: the *theoretical arrival time* `tat`. Each admitted request pushes `tat` one
//! emission interval `T = 1 / requests_per_second` later; a request is admitted while
//! `tat + T - now <= burst * T`, i.e. while a token is left. `tat <= now` means the bucket is full,
//! so such an entry remembers nothing and can be forgotten at no cost.
//!
//! Memory is bounded by `max_clients`: the map is split into shards behind std mutexes (never held
//! across an `.await`), and a full shard first forgets its full buckets, then the buckets nearest to
//! full. A client that rotates keys therefore evicts idle clients and its own fresh keys, never the
//! buckets of clients that are being limited right now.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use futures::future::{Either, Ready, ready};
use http::{Request, StatusCode};
use platform::Problem;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// The rate-limit settings of the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// Whether requests are limited at all (default true).
    pub enabled: bool,
    /// Sustained requests per second each client may send (default 50).
    pub requests_per_second: f64,
    /// Requests a client may send at once after being idle: the bucket's size (default 100).
    pub burst: u32,
    /// Clients tracked at most; the idlest are forgotten beyond it, so memory stays bounded
    /// (default 100 000, roughly 100 bytes each).
    pub max_clients: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: true,
            requests_per_second: 50.0,
            burst: 100,
            max_clients: 100_000,
        }
    }
}

/// Who a request comes from, as authentication established it (the token's subject). When this
/// extension is present the client is limited by it rather than by its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey(pub String);

/// Which bucket a request draws from. Addresses are kept as numbers, not text: the key is
/// built for every request, and formatting the peer's address cost the gateway ≈ 0.5 % of its CPU.
/// Shown (in logs) as `sub:<subject>`, `ip:<IPv4>`, `ip6:<first four groups>::/64`, `unknown`, or
/// a custom key function's text as is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Client {
    /// An authenticated subject ([`ClientKey`]).
    Subject(String),
    /// An IPv4 peer (or an IPv4 peer seen through an IPv6 socket).
    Ipv4(Ipv4Addr),
    /// An IPv6 peer's /64: its first four groups.
    Ipv6Net([u16; 4]),
    /// A key chosen by a custom key function ([`RateLimitLayer::with_key_fn`]).
    Named(String),
    /// No subject and no peer address.
    Unknown,
}

impl fmt::Display for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Client::Subject(subject) => write!(f, "sub:{subject}"),
            Client::Ipv4(ip) => write!(f, "ip:{ip}"),
            Client::Ipv6Net([a, b, c, d]) => write!(f, "ip6:{a:x}:{b:x}:{c:x}:{d:x}::/64"),
            Client::Named(name) => f.write_str(name),
            Client::Unknown => f.write_str("unknown"),
        }
    }
}

/// Decides which bucket a request draws from.
pub type KeyFn = Arc<dyn Fn(&Request<Body>) -> Client + Send + Sync>;

/// The default client key: the authenticated subject ([`ClientKey`]) if there is one, else the
/// peer's address (an IPv6 peer by its /64, which one subscriber usually holds whole), else
/// [`Client::Unknown`]. Behind a trusted load balancer, swap it for one that reads
/// `X-Forwarded-For`.
pub fn client_key(request: &Request<Body>) -> Client {
    let extensions = request.extensions();
    if let Some(ClientKey(subject)) = extensions.get::<ClientKey>() {
        return Client::Subject(subject.clone());
    }
    match extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => match addr.ip().to_canonical() {
            IpAddr::V4(ip) => Client::Ipv4(ip),
            IpAddr::V6(ip) => {
                let s = ip.segments();
                Client::Ipv6Net([s[0], s[1], s[2], s[3]])
            }
        },
        None => Client::Unknown,
    }
}

/// Builds [`RateLimit`] services that share one set of buckets.
#[derive(Clone)]
pub struct RateLimitLayer {
    limiter: Option<Arc<Limiter>>,
    key: KeyFn,
}

impl RateLimitLayer {
    /// Refuses settings that cannot limit anything sensibly (a rate that is not a positive number,
    /// an empty bucket, no room for clients).
    pub fn new(config: &RateLimitConfig) -> anyhow::Result<Self> {
        let limiter = if config.enabled {
            // At 0 from the start, so `rate()` sees the first limited request.
            metrics::counter!("gateway_rate_limited_total").increment(0);
            Some(Arc::new(Limiter::new(config)?))
        } else {
            None
        };
        Ok(RateLimitLayer {
            limiter,
            key: Arc::new(client_key),
        })
    }

    /// Uses `key` instead of [`client_key`] to choose the bucket.
    pub fn with_key_fn(
        mut self,
        key: impl Fn(&Request<Body>) -> Client + Send + Sync + 'static,
    ) -> Self {
        self.key = Arc::new(key);
        self
    }

    /// How many clients have a bucket now (at most `max_clients`).
    pub fn tracked_clients(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            key: self.key.clone(),
        }
    }
}

/// Answers 429 to a client whose bucket is empty; passes everything else to `S`.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Option<Arc<Limiter>>,
    key: KeyFn,
}

impl<S> tower::Service<Request<Body>> for RateLimit<S>
where
    S: tower::Service<Request<Body>, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let Some(limiter) = &self.limiter else {
            return Either::Right(self.inner.call(request));
        };
        let key = (self.key)(&request);
        match limiter.acquire(&key, Instant::now()) {
            Ok(()) => Either::Right(self.inner.call(request)),
            Err(wait) => {
                metrics::counter!("gateway_rate_limited_total").increment(1);
                tracing::debug!(client = %key, wait_ms = wait.as_millis() as u64, "rate limited");
                Either::Left(ready(Ok(limiter.refusal(wait))))
            }
        }
    }
}

/// The buckets of every client, sharded so concurrent requests rarely wait on one lock.
struct Limiter {
    /// Time between two tokens.
    interval: Duration,
    /// `burst * interval`: how far ahead of now a client's `tat` may run.
    window: Duration,
    requests_per_second: f64,
    burst: u32,
    per_shard: usize,
    hasher: RandomState,
    /// Client → theoretical arrival time.
    shards: Vec<Mutex<HashMap<Client, Instant>>>,
}

/// Clients per shard below which one shard is enough.
const CLIENTS_PER_SHARD: usize = 4096;
const MAX_SHARDS: usize = 16;

impl Limiter {
    fn new(config: &RateLimitConfig) -> anyhow::Result<Limiter> {
        let rate = config.requests_per_second;
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "rate_limit.requests_per_second must be a positive number, not {rate}"
        );
        anyhow::ensure!(config.burst >= 1, "rate_limit.burst must be at least 1");
        anyhow::ensure!(
            config.max_clients >= 1,
            "rate_limit.max_clients must be at least 1"
        );
        let interval = Duration::try_from_secs_f64(1.0 / rate)
            .ok()
            .filter(|i| !i.is_zero())
            .ok_or_else(|| {
                anyhow::anyhow!("rate_limit.requests_per_second {rate} is out of range")
            })?;
        let window = interval
            .checked_mul(config.burst)
            .filter(|w| *w <= Duration::from_secs(365 * 24 * 3600))
            .ok_or_else(|| anyhow::anyhow!("rate_limit.burst / requests_per_second is too long"))?;
        let shards = (config.max_clients / CLIENTS_PER_SHARD).clamp(1, MAX_SHARDS);
        Ok(Limiter {
            interval,
            window,
            requests_per_second: rate,
            burst: config.burst,
            per_shard: config.max_clients / shards,
            hasher: RandomState::new(),
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    /// Takes a token from `key`'s bucket, or says how long until one is there.
    fn acquire(&self, key: &Client, now: Instant) -> Result<(), Duration> {
        let shard = &self.shards[self.shard_of(key)];
        // A panic while holding the lock cannot leave a half-updated instant behind: keep going.
        let mut buckets = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let tat = buckets.get(key).map_or(now, |tat| (*tat).max(now));
        let next = tat + self.interval;
        let ahead = next - now;
        if ahead > self.window {
            return Err(ahead - self.window);
        }
        match buckets.get_mut(key) {
            Some(entry) => *entry = next,
            None => {
                if buckets.len() >= self.per_shard {
                    self.evict(&mut buckets, now);
                }
                buckets.insert(key.clone(), next);
            }
        }
        Ok(())
    }

    /// Makes room in a full shard: full buckets go first (forgetting them changes nothing), then the
    /// eighth of the shard nearest to full, so the cost of a sweep is spread over many inserts.
    fn evict(&self, buckets: &mut HashMap<Client, Instant>, now: Instant) {
        buckets.retain(|_, tat| *tat > now);
        if buckets.len() < self.per_shard {
            return;
        }
        let count = (self.per_shard / 8).max(1);
        let mut by_tat: Vec<(Instant, Client)> = buckets
            .iter()
            .map(|(key, tat)| (*tat, key.clone()))
            .collect();
        by_tat.select_nth_unstable_by_key(count - 1, |(tat, _)| *tat);
        for (_, key) in by_tat.drain(..count) {
            buckets.remove(&key);
        }
    }

    fn shard_of(&self, key: &Client) -> usize {
        (self.hasher.hash_one(key) % self.shards.len() as u64) as usize
    }

    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    fn refusal(&self, wait: Duration) -> Response {
        // Whole seconds, rounded up: a client that waits that long finds a token.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let seconds = seconds.max(1);
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!(
                "too many requests from this client (the limit is {} per second, bursts of {}); \
                 try again in {seconds} s",
                self.requests_per_second, self.burst
            ),
        )
        .with_retry_after(seconds)
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    use http::header;
    use http_body_util::BodyExt;
    use tower::{Layer, Service, ServiceExt};

    fn ok_service()
    -> impl Service<Request<Body>, Response = Response, Error = Infallible, Future: Send> + Clone
    {
        tower::service_fn(|_: Request<Body>| async { Ok(StatusCode::OK.into_response()) })
    }

    fn config(requests_per_second: f64, burst: u32) -> RateLimitConfig {
        RateLimitConfig {
            requests_per_second,
            burst,
            ..RateLimitConfig::default()
        }
    }

    fn from_ip(ip: &str) -> Request<Body> {
        let mut request = Request::new(Body::empty());
        let addr = SocketAddr::new(ip.parse().expect("test ip"), 40000);
        request.extensions_mut().insert(ConnectInfo(addr));
        request
    }

    fn from_subject(ip: &str, subject: &str) -> Request<Body> {
        let mut request = from_ip(ip);
        request
            .extensions_mut()
            .insert(ClientKey(subject.to_owned()));
        request
    }

    async fn status<S>(service: &mut S, request: Request<Body>) -> StatusCode
    where
        S: Service<Request<Body>, Response = Response, Error = Infallible>,
    {
        let response = service.ready().await.expect("ready").call(request).await;
        response.expect("infallible").status()
    }

    /// Sends `n` requests from `ip` at the current instant; how many were let through.
    async fn admitted<S>(service: &mut S, ip: &str, n: usize) -> usize
    where
        S: Service<Request<Body>, Response = Response, Error = Infallible>,
    {
        let mut ok = 0;
        for _ in 0..n {
            if status(service, from_ip(ip)).await == StatusCode::OK {
                ok += 1;
            }
        }
        ok
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_gets_its_burst_at_once_then_the_sustained_rate() {
        let layer = RateLimitLayer::new(&config(10.0, 5)).expect("valid");
        let mut service = layer.layer(ok_service());

        assert_eq!(admitted(&mut service, "10.0.0.1", 8).await, 5);

        // One token every 100 ms: none after 99 ms, one at 100 ms.
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(admitted(&mut service, "10.0.0.1", 3).await, 0);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(admitted(&mut service, "10.0.0.1", 3).await, 1);

        // A client hammering every 10 ms for 10 s gets exactly 10 per second through.
        let mut ok = 0;
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_millis(10)).await;
            ok += admitted(&mut service, "10.0.0.1", 1).await;
        }
        assert_eq!(ok, 100);

        // Idle long enough, the bucket is full again, but never fuller than the burst.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(admitted(&mut service, "10.0.0.1", 8).await, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn clients_have_separate_buckets() {
        let layer = RateLimitLayer::new(&config(1.0, 2)).expect("valid");
        let mut service = layer.layer(ok_service());

        assert_eq!(admitted(&mut service, "10.0.0.1", 5).await, 2);
        assert_eq!(admitted(&mut service, "10.0.0.2", 5).await, 2);
        // The authenticated subject is its own client, whatever address it comes from...
        for _ in 0..2 {
            let request = from_subject("10.0.0.1", "alice");
            assert_eq!(status(&mut service, request).await, StatusCode::OK);
        }
        let request = from_subject("10.0.0.2", "alice");
        assert_eq!(
            status(&mut service, request).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        // ...and another subject sharing alice's address is not limited by her.
        let request = from_subject("10.0.0.1", "bob");
        assert_eq!(status(&mut service, request).await, StatusCode::OK);
        assert_eq!(layer.tracked_clients(), 4);
    }

    #[test]
    fn client_keys_prefer_the_subject_then_the_address() {
        let key = |request: &Request<Body>| client_key(request).to_string();
        assert_eq!(key(&from_subject("10.0.0.1", "alice")), "sub:alice");
        assert_eq!(key(&from_ip("10.0.0.1")), "ip:10.0.0.1");
        // An IPv4 client seen through an IPv6 socket is the same client.
        assert_eq!(
            client_key(&from_ip("::ffff:10.0.0.1")),
            client_key(&from_ip("10.0.0.1"))
        );
        // Addresses in one /64 belong to one subscriber: rotating them gains nothing.
        assert_eq!(
            client_key(&from_ip("2001:db8:1:2::1")),
            client_key(&from_ip("2001:db8:1:2:ffff::9"))
        );
        assert_eq!(key(&from_ip("2001:db8:1:2::1")), "ip6:2001:db8:1:2::/64");
        assert_ne!(
            client_key(&from_ip("2001:db8:1:2::1")),
            client_key(&from_ip("2001:db8:1:3::1"))
        );
        assert_eq!(key(&Request::new(Body::empty())), "unknown");
    }

    #[tokio::test(start_paused = true)]
    async fn the_key_function_can_be_swapped() {
        let layer = RateLimitLayer::new(&config(1.0, 1))
            .expect("valid")
            .with_key_fn(|r| Client::Named(r.uri().path().to_owned()));
        let mut service = layer.layer(ok_service());
        let to = |path: &str| Request::get(path).body(Body::empty()).expect("request");
        assert_eq!(status(&mut service, to("/a")).await, StatusCode::OK);
        assert_eq!(
            status(&mut service, to("/a")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(status(&mut service, to("/b")).await, StatusCode::OK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_problem_json_with_the_seconds_until_a_token() {
        // One token every 4 s.
        let layer = RateLimitLayer::new(&config(0.25, 2)).expect("valid");
        let mut service = layer.layer(ok_service());
        assert_eq!(admitted(&mut service, "10.0.0.1", 2).await, 2);

        let retry_after = |response: &Response| {
            response.headers()[header::RETRY_AFTER]
                .to_str()
                .expect("ascii")
                .to_owned()
        };
        let refused = service.call(from_ip("10.0.0.1")).await.expect("infallible");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            refused.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        assert_eq!(retry_after(&refused), "4");
        let body = refused
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let problem: Problem = serde_json::from_slice(&body).expect("problem json");
        assert_eq!(problem.kind, "/problems/rate-limited");
        assert_eq!(problem.status, 429);
        assert!(
            problem.detail.contains("0.25 per second"),
            "{}",
            problem.detail
        );

        // 2.5 s to go is rounded up to 3: a client that waits exactly that long is admitted.
        tokio::time::advance(Duration::from_millis(1500)).await;
        let refused = service.call(from_ip("10.0.0.1")).await.expect("infallible");
        assert_eq!(retry_after(&refused), "3");
        tokio::time::advance(Duration::from_millis(2500)).await;
        assert_eq!(admitted(&mut service, "10.0.0.1", 1).await, 1);

        // Less than a second to wait is still "1", never "0".
        let layer = RateLimitLayer::new(&config(50.0, 1)).expect("valid");
        let mut service = layer.layer(ok_service());
        assert_eq!(admitted(&mut service, "10.0.0.1", 1).await, 1);
        let refused = service.call(from_ip("10.0.0.1")).await.expect("infallible");
        assert_eq!(retry_after(&refused), "1");
    }

    #[tokio::test(start_paused = true)]
    async fn rotating_keys_cannot_grow_memory_or_free_a_limited_client() {
        for max_clients in [100, 20_000] {
            let config = RateLimitConfig {
                max_clients,
                ..config(1.0, 3)
            };
            let layer = RateLimitLayer::new(&config).expect("valid");
            let mut service = layer.layer(ok_service());
            assert_eq!(admitted(&mut service, "10.0.0.1", 5).await, 3);

            for i in 0..max_clients + 5_000 {
                let ip = format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256);
                assert_eq!(admitted(&mut service, &ip, 1).await, 1);
                assert!(layer.tracked_clients() <= max_clients);
            }
            assert!(layer.tracked_clients() > max_clients / 2);
            // The client being limited kept its (empty) bucket through the flood.
            assert_eq!(admitted(&mut service, "10.0.0.1", 1).await, 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_clients_are_forgotten_first() {
        let config = RateLimitConfig {
            max_clients: 10,
            ..config(1.0, 2)
        };
        let layer = RateLimitLayer::new(&config).expect("valid");
        let mut service = layer.layer(ok_service());
        for i in 0..10 {
            assert_eq!(admitted(&mut service, &format!("10.0.0.{i}"), 1).await, 1);
        }
        assert_eq!(layer.tracked_clients(), 10);
        // Two seconds on every bucket is full again; a newcomer sweeps them all away.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(admitted(&mut service, "10.0.1.1", 1).await, 1);
        assert_eq!(layer.tracked_clients(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_disabled_limit_lets_everything_through() {
        let config = RateLimitConfig {
            enabled: false,
            ..config(1.0, 1)
        };
        let layer = RateLimitLayer::new(&config).expect("valid");
        let mut service = layer.layer(ok_service());
        assert_eq!(admitted(&mut service, "10.0.0.1", 1000).await, 1000);
        assert_eq!(layer.tracked_clients(), 0);
    }

    #[test]
    fn settings_that_cannot_limit_are_refused() {
        for bad in [
            config(0.0, 10),
            config(-1.0, 10),
            config(f64::NAN, 10),
            config(f64::INFINITY, 10),
            config(1e-300, 10),
            config(10.0, 0),
            RateLimitConfig {
                max_clients: 0,
                ..RateLimitConfig::default()
            },
        ] {
            assert!(RateLimitLayer::new(&bad).is_err(), "{bad:?}");
        }
        assert!(RateLimitLayer::new(&RateLimitConfig::default()).is_ok());
    }

    #[test]
    fn rate_limited_requests_are_counted() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .start_paused(true)
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let layer = RateLimitLayer::new(&config(1.0, 2)).expect("valid");
                let mut service = layer.layer(ok_service());
                assert_eq!(admitted(&mut service, "10.0.0.1", 5).await, 2);
            });
        });
        let text = handle.render();
        assert!(
            text.lines().any(|l| l == "gateway_rate_limited_total 3"),
            "{text}"
        );
    }
}
