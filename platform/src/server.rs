//! HTTP server bootstrap shared by every process: bind first (so port 0 works and a busy port is a clear
//! error), wrap the component's router in the standard layers, add `/health/*` and `/metrics`, serve
//! until the shutdown token fires, then drain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use http::{HeaderName, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

use crate::access_log::AccessLogLayer;
use crate::faults::{self, FaultConfig};
use crate::limits::HeaderLimits;
use crate::problem::Problem;
use crate::trace::ScopeLayer;
use crate::{deadline, extract, metrics};

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The HTTP part of every component's config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Address to listen on; port 0 picks a free port (the launcher reads it from `port_file`).
    pub listen: String,
    /// Largest request body accepted; larger bodies get 413.
    pub body_limit_bytes: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub shutdown_grace_seconds: u64,
    /// When set, the bound address is written here once the server listens (for launchers and tests).
    pub port_file: Option<PathBuf>,
    /// Injected errors and delays for resilience tests and chaos runs; off by default.
    pub faults: FaultConfig,
    /// Most header fields and bytes a request may carry (431 beyond).
    pub header_limits: HeaderLimits,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:0".into(),
            body_limit_bytes: 64 * 1024,
            shutdown_grace_seconds: 10,
            port_file: None,
            faults: FaultConfig::default(),
            header_limits: HeaderLimits::default(),
        }
    }
}

/// Decides readiness; `Err` carries a short reason shown in the 503 body.
pub type ReadyCheck =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A ready check that is always ready (for processes without dependencies).
pub fn always_ready() -> ReadyCheck {
    Arc::new(|| Box::pin(async { Ok(()) }))
}

/// A bound, not yet serving, HTTP server.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    config: HttpConfig,
    draining: Arc<AtomicBool>,
}

impl Server {
    /// Binds the listener; a busy port is one clear sentence.
    pub async fn bind(config: &HttpConfig) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(&config.listen).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                anyhow::anyhow!(
                    "{} is already in use: stop whatever listens there or choose another address",
                    config.listen
                )
            } else {
                anyhow::anyhow!("cannot listen on {}: {e}", config.listen)
            }
        })?;
        let addr = listener.local_addr()?;
        if let Some(path) = &config.port_file {
            write_port_file(path, addr)?;
        }
        Ok(Server {
            listener,
            addr,
            config: config.clone(),
            draining: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `api` with the standard layers until `shutdown` is cancelled, then stops accepting,
    /// reports not-ready, and gives in-flight requests `shutdown_grace_seconds` to finish.
    pub async fn serve(
        self,
        api: Router,
        ready: ReadyCheck,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let app = with_standard_layers(api, ready, self.draining.clone(), &self.config);
        let grace = Duration::from_secs(self.config.shutdown_grace_seconds);
        serve_listener(self.listener, app, self.draining, grace, shutdown).await
    }

    /// Like [`Server::serve`], but on `threads` threads (0: one per CPU), each running its own
    /// single-threaded runtime that accepts from the one listening socket and serves the
    /// connections it accepted from start to end.
    ///
    /// For a proxy, whose every request is a few reads and writes on two sockets: on the shared
    /// multi-threaded runtime a connection's task, the upstream connection's task and the worker
    /// that woke them often sit on different threads, and every hand-off is a wakeup (≈8 % of the
    /// gateway's CPU per request, measured). One runtime per thread is how nginx runs.
    /// Everything the requests share (breakers, budgets, limits, metrics) is already thread-safe;
    /// what is per runtime must be per thread (the gateway's upstream pools are). Returns once
    /// every thread has drained.
    pub async fn serve_per_core(
        self,
        api: Router,
        ready: ReadyCheck,
        shutdown: CancellationToken,
        threads: usize,
    ) -> anyhow::Result<()> {
        let threads = match threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let app = with_standard_layers(api, ready, self.draining.clone(), &self.config);
        let grace = Duration::from_secs(self.config.shutdown_grace_seconds);
        // Every thread gets its own descriptor of the same socket: the kernel queues a new
        // connection once, and whichever thread is free first accepts it.
        let socket = self.listener.into_std()?;
        let mut finished = Vec::with_capacity(threads);
        for index in 0..threads {
            let socket = socket.try_clone()?;
            let (app, draining, shutdown) = (app.clone(), self.draining.clone(), shutdown.clone());
            let (done, result) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name(format!("http-{index}"))
                .spawn(move || {
                    let served = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(anyhow::Error::from)
                        .and_then(|runtime| {
                            runtime.block_on(async move {
                                let listener = TcpListener::from_std(socket)?;
                                serve_listener(listener, app, draining, grace, shutdown).await
                            })
                        });
                    let _ = done.send(served);
                })?;
            finished.push(result);
        }
        drop(socket);
        let mut outcome = Ok(());
        for result in finished {
            let served = result
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a serving thread panicked")));
            if outcome.is_ok() {
                outcome = served;
            } else if let Err(e) = served {
                tracing::error!(error = format!("{e:#}"), "a serving thread failed");
            }
        }
        outcome
    }
}

/// Serves `app` on `listener` until `shutdown`, then drains for at most `grace`.
async fn serve_listener(
    listener: TcpListener,
    app: Router,
    draining: Arc<AtomicBool>,
    grace: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let signal = shutdown.clone();
    let listener = no_delay(listener);
    let serve = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        signal.cancelled().await;
        draining.store(true, Ordering::SeqCst);
    });
    let mut serve = std::pin::pin!(serve.into_future());
    tokio::select! {
        result = &mut serve => return Ok(result?),
        _ = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(grace, serve).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tracing::warn!(
                grace_seconds = grace.as_secs(),
                "in-flight requests outlived the grace period"
            );
            Ok(())
        }
    }
}

/// A listener whose connections answer as soon as an answer is written (nginx's `tcp_nodelay
/// on`); axum leaves sockets as accepted. With Nagle's algorithm on, the second write of an answer
/// written in two — a proxied answer's head, then its body as it arrives — waits until the client
/// has acknowledged the first, and a client that delays its ACK holds it for up to 40 ms.
pub type NoDelay = axum::serve::TapIo<TcpListener, fn(&mut TcpStream)>;

/// `listener` with `TCP_NODELAY` set on every connection it accepts (see [`NoDelay`]).
pub fn no_delay(listener: TcpListener) -> NoDelay {
    listener.tap_io(set_nodelay as fn(&mut TcpStream))
}

fn set_nodelay(stream: &mut TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on an accepted connection");
    }
}

fn write_port_file(path: &std::path::Path, addr: SocketAddr) -> anyhow::Result<()> {
    // Write then rename, so a reader never sees half an address.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, addr.to_string())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Wraps a component's router in what every process has: operations routes, problem+json fallbacks,
/// body limit, request id, trace context, access log line, RED metrics and panic safety.
pub fn with_standard_layers(
    api: Router,
    ready: ReadyCheck,
    draining: Arc<AtomicBool>,
    config: &HttpConfig,
) -> Router {
    let ops = Router::new()
        .route("/health/live", get(|| async { "ok" }))
        .route(
            "/health/ready",
            get(readiness).with_state((ready, draining)),
        )
        .route("/metrics", get(|| async { metrics::render() }));
    // Layers run outside-in in the order written: request id is set first, then the trace context,
    // then the request's scope that carries both into every log line, then the access line and
    // metrics around the handler. Health and
    // metrics routes are merged after the access log and RED layers: probes every second would
    // drown the requests that matter.
    let api = if config.faults.is_active() {
        tracing::warn!(faults = ?config.faults, "fault injection is on");
        api.layer(middleware::from_fn_with_state(
            config.faults.clone(),
            faults::inject,
        ))
    } else {
        api
    };
    //
    // Each group of layers is one `ServiceBuilder` stack, applied with one `Router::layer` call:
    // axum boxes every layer it is given separately and clones that box, with everything below
    // it, for each request.
    let around_api = ServiceBuilder::new()
        .layer(AccessLogLayer)
        .layer(metrics::RedLayer)
        // Inside the RED metrics and the access log, so an abandoned request is counted and logged
        // as the 504 it is; outside the handler, so giving up drops the handler's work.
        .layer(deadline::EnforceLayer)
        .layer(DefaultBodyLimit::max(config.body_limit_bytes));
    let around_all = ServiceBuilder::new()
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid4))
        .map_request(ensure_traceparent)
        .layer(ScopeLayer)
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(CatchPanicLayer::custom(panic_problem))
        .map_response(close_after_refused_body)
        .layer(config.header_limits);
    api.fallback(extract::no_route)
        .method_not_allowed_fallback(extract::wrong_method)
        .layer(around_api)
        .merge(ops)
        .layer(around_all)
}

async fn readiness(State((ready, draining)): State<(ReadyCheck, Arc<AtomicBool>)>) -> Response {
    if draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    match ready().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

/// A body refused as too large is left unread, so the connection cannot carry another request:
/// say so, or the client reuses it from its pool and its next request fails.
fn close_after_refused_body(mut response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn panic_problem(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    Problem::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "an unexpected error occurred; it has been logged",
    )
    .into_response()
}

/// Gives every request a W3C `traceparent`: kept when a valid one arrives, else started here, so a
/// request keeps one trace id across the gateway and the services it forwards to.
fn ensure_traceparent(mut request: Request) -> Request {
    let valid = request
        .headers()
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| trace_id_of(v).is_some());
    if !valid && let Some(value) = new_traceparent() {
        request.headers_mut().insert(TRACEPARENT, value);
        if crate::otlp::enabled() {
            request.extensions_mut().insert(crate::otlp::StartedHere);
        }
    }
    request
}

/// A random (version 4) UUID for each request that arrives without an `x-request-id`, drawn from
/// the thread's userspace generator: `Uuid::new_v4` would make a `getrandom(2)` call per request.
#[derive(Debug, Clone, Copy)]
struct MakeRequestUuid4;

impl MakeRequestId for MakeRequestUuid4 {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        let uuid = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut text = uuid::Uuid::encode_buffer();
        let text = uuid.hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(text).ok().map(RequestId::new)
    }
}

/// The trace id of a version-00 `traceparent`, if it is well formed and not all zeros.
///
/// The layout is fixed (`vv-<32 hex>-<16 hex>-ff`, 55 bytes), so it is checked by position, with
/// folds that do not stop early: the compiler makes them straight-line vector code. The gateway
/// reads a traceparent about three times per request; a byte-by-byte loop with a branch per byte
/// cost it ≈ 1.3 % of its CPU.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let bytes: &[u8; 55] = traceparent.as_bytes().try_into().ok()?;
    let hex = |part: &[u8]| part.iter().fold(true, |ok, b| ok & b.is_ascii_hexdigit());
    let (version, trace, parent, flags) =
        (&bytes[..2], &bytes[3..35], &bytes[36..52], &bytes[53..]);
    let dashes = bytes[2] == b'-' && bytes[35] == b'-' && bytes[52] == b'-';
    let well_formed = dashes & hex(version) & hex(trace) & hex(parent) & hex(flags);
    let nonzero = trace.iter().fold(false, |any, &b| any | (b != b'0'));
    // Every byte is ASCII once well formed, so 3..35 is on character boundaries.
    (well_formed && nonzero)
        .then(|| traceparent.get(3..35))
        .flatten()
}

/// A version-00 `traceparent` with a random trace id and parent id (neither all zeros, which
/// would be invalid), sampled.
fn new_traceparent() -> Option<HeaderValue> {
    let (trace, parent): (u128, u64) = rand::random();
    let mut trace_id = [0; 32];
    hex_into(&mut trace_id, trace.max(1));
    traceparent(&trace_id, parent, b"01")
}

/// A version-00 `traceparent` of the given trace id (32 hex digits), parent id (zero is made one:
/// all zeros is invalid) and flags (2 hex digits). Written by hand, not with `format!`: one is made
/// for every request that arrives without one and for every call forwarded, and `core::fmt`'s
/// padded hex cost four to five times what the table below does.
pub(crate) fn traceparent(
    trace_id: &[u8; 32],
    parent: u64,
    flags: &[u8; 2],
) -> Option<HeaderValue> {
    let mut text = [0; 55];
    text[..3].copy_from_slice(b"00-");
    text[3..35].copy_from_slice(trace_id);
    text[35] = b'-';
    hex_into(&mut text[36..52], u128::from(parent.max(1)));
    text[52] = b'-';
    text[53..].copy_from_slice(flags);
    HeaderValue::from_bytes(&text).ok()
}

/// The low `out.len()` hex digits of `value`, lower case, most significant first.
fn hex_into(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for digit in out.iter_mut().rev() {
        *digit = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connections `serve` accepts have Nagle's algorithm off; a plain accept leaves it on.
    #[tokio::test]
    async fn accepted_connections_answer_without_nagles_delay() {
        use axum::serve::Listener;
        for wrapped in [false, true] {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("address");
            let connect = TcpStream::connect(addr);
            let nodelay = if wrapped {
                let mut listener = no_delay(listener);
                let ((stream, _), client) = tokio::join!(listener.accept(), connect);
                client.expect("connect");
                stream.nodelay()
            } else {
                let (accepted, client) = tokio::join!(listener.accept(), connect);
                client.expect("connect");
                accepted.expect("accept").0.nodelay()
            };
            assert_eq!(nodelay.expect("TCP_NODELAY"), wrapped);
        }
    }

    /// One HTTP/1.1 GET on a fresh connection; the status code and the body.
    async fn get_once(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await?;
        let status = answer.get(9..12).unwrap_or("").parse()?;
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        Ok((status, body))
    }

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn per_core_threads_serve_while_one_is_stuck_and_drain_on_shutdown() -> anyhow::Result<()>
    {
        let (entered, is_entered) = std::sync::mpsc::sync_channel::<()>(1);
        let api = Router::new()
            .route(
                "/stuck",
                get(move || {
                    let entered = entered.clone();
                    async move {
                        let _ = entered.try_send(());
                        // Blocks this thread's whole event loop, as no handler should.
                        std::thread::sleep(Duration::from_millis(500));
                        thread_name()
                    }
                }),
            )
            .route("/name", get(|| async { thread_name() }));
        let server = Server::bind(&HttpConfig::default()).await?;
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let serving = tokio::spawn(server.serve_per_core(api, always_ready(), shutdown.clone(), 2));
        let stuck = tokio::spawn(get_once(addr, "/stuck"));
        tokio::task::spawn_blocking(move || is_entered.recv_timeout(Duration::from_secs(5)))
            .await??;
        // The stuck thread cannot accept: the other one must take this connection and answer.
        let (status, other) = get_once(addr, "/name").await?;
        assert_eq!(status, 200);
        // Shutting down while the stuck request is in flight lets it finish.
        shutdown.cancel();
        let (status, first) = stuck.await??;
        assert_eq!(status, 200);
        assert!(
            first.starts_with("http-") && other.starts_with("http-"),
            "{first} {other}"
        );
        assert_ne!(first, other, "both requests were served by one thread");
        tokio::time::timeout(Duration::from_secs(5), serving).await???;
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "the socket is still open after every thread stopped"
        );
        Ok(())
    }

    #[test]
    fn trace_ids_are_taken_only_from_well_formed_traceparents() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id_of(good), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-701",
            "0-04bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
        ] {
            assert_eq!(trace_id_of(bad), None, "{bad}");
        }
    }

    /// Every single-byte change of a valid traceparent, against the rule written plainly.
    #[test]
    fn trace_ids_agree_with_the_plain_rule_for_every_one_byte_change() {
        fn plain(text: &str) -> Option<&str> {
            let ok = text.len() == 55
                && text.bytes().enumerate().all(|(i, b)| match i {
                    2 | 35 | 52 => b == b'-',
                    _ => b.is_ascii_hexdigit(),
                })
                && text[3..35].bytes().any(|b| b != b'0');
            ok.then(|| &text[3..35])
        }
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut checked = 0;
        for at in 0..good.len() {
            for byte in [
                b'-', b'0', b'9', b'a', b'f', b'A', b'F', b'g', b'z', b' ', b'/', b':',
            ] {
                let mut bytes = good.as_bytes().to_vec();
                bytes[at] = byte;
                let text = String::from_utf8(bytes).expect("ASCII");
                assert_eq!(trace_id_of(&text), plain(&text), "{text}");
                checked += 1;
            }
        }
        let zeros = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert_eq!(trace_id_of(zeros), None);
        assert_eq!(checked, 55 * 12);
    }

    #[test]
    fn request_ids_are_random_v4_uuids() {
        let request = http::Request::new(());
        let mut make = MakeRequestUuid4;
        let ids: Vec<uuid::Uuid> = (0..2)
            .map(|_| {
                let id = make.make_request_id(&request).expect("an id");
                let text = id.header_value().to_str().expect("ascii");
                assert_eq!(text.len(), 36, "{text}");
                assert_eq!(text, text.to_lowercase());
                uuid::Uuid::parse_str(text).expect("a uuid")
            })
            .collect();
        assert!(ids.iter().all(|id| id.get_version_num() == 4));
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn started_traceparents_are_well_formed_and_random() {
        let text = |value: Option<HeaderValue>| {
            value
                .and_then(|v| v.to_str().ok().map(str::to_owned))
                .expect("a traceparent")
        };
        let (first, second) = (text(new_traceparent()), text(new_traceparent()));
        assert_eq!(first.len(), 55, "{first}");
        assert!(
            first.starts_with("00-") && first.ends_with("-01"),
            "{first}"
        );
        assert!(trace_id_of(&first).is_some(), "{first}");
        assert!(trace_id_of(&second).is_some(), "{second}");
        assert_ne!(trace_id_of(&first), trace_id_of(&second));
        assert_ne!(first[36..52], second[36..52], "parent ids repeat");
    }

    #[test]
    fn traceparents_are_written_with_every_digit_in_place() {
        let value = traceparent(
            b"4bf92f3577b34da6a3ce929d0e0e4736",
            0x00f0_67aa_0ba9_02b7,
            b"00",
        );
        assert_eq!(
            value.as_ref().and_then(|v| v.to_str().ok()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
        );
        // A zero parent id is invalid: it becomes one.
        let value = traceparent(b"4bf92f3577b34da6a3ce929d0e0e4736", 0, b"01");
        assert_eq!(
            value.as_ref().and_then(|v| v.to_str().ok()),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000001-01")
        );
        let mut digits = [0; 32];
        hex_into(&mut digits, u128::MAX - 0xf0);
        assert_eq!(&digits, b"ffffffffffffffffffffffffffffff0f");
    }
}
