//! Keep-alive HTTP/1 connections to upstream instances: one set per thread and [`Forward`], on
//! hyper's connection-level client.
//!
//! Why not hyper-util's pooled client: it races a pool checkout against a new connection in a
//! boxed future per request, hashes its key with SipHash under a pool-wide lock, and spawns a task
//! per answer to put the connection back. Pooling here is a list per instance: an answered request
//! takes the newest ready connection and its body puts it back when it is dropped. The gateway
//! executes 9 % fewer instructions per request this way, the bare proxy 21 % (docs/BENCHMARKS.md,
//! "Instructions per request").
//!
//! What the resilience layers rely on is kept: a request is reported as never sent
//! ([`SendError::NotSent`]) only when it certainly did not leave — the connection could not be
//! made, or hyper handed the request back unwritten. A request handed back by a reused connection
//! (closed while idle) is sent again on another one, as hyper-util does; one that was written
//! into it may have been read, and is reported as [`SendError::Broken`].
//!
//! [`Forward`]: crate::forward::Forward

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use foldhash::HashMap;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio::time::Instant;

type Sender = SendRequest<Full<Bytes>>;

/// How connections are opened and kept.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// Idle connections kept per instance (per thread); 0 keeps none.
    pub max_idle_per_instance: usize,
    /// An idle connection older than this is closed.
    pub idle_timeout: Duration,
}

/// One thread's idle connections for one [`Forward`](crate::forward::Forward), by instance
/// address.
pub struct Connections {
    settings: Settings,
    /// Locked only by its own thread, the idle sweep, and an answer's body if it is dropped on
    /// another thread: never contended on the gateway's per-core runtimes.
    idle: Mutex<HashMap<Box<str>, Vec<Idle>>>,
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// Why a request got no answer head.
#[derive(Debug)]
pub enum SendError {
    /// The request certainly did not leave: no connection could be made, or hyper gave the
    /// request back unwritten.
    NotSent(String),
    /// The request may have been written, in part or whole, before the exchange broke.
    Broken(String),
}

/// A connection that carried an answer; dropping it puts the connection back with its instance's
/// idle connections. Held by the answer's body, so the connection is reused only once the body is
/// done with.
pub struct Lease {
    connections: Arc<Connections>,
    authority: Arc<str>,
    sender: Option<Sender>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sender) = self.sender.take() {
            self.connections
                .give_back(&self.authority, sender, Instant::now());
        }
    }
}

impl Connections {
    /// A new set, swept for expired connections in the background every idle timeout until
    /// `owner` is gone, when its idle connections are closed. Needs a Tokio runtime to sweep.
    pub fn new<T: Send + Sync + 'static>(settings: Settings, owner: Weak<T>) -> Arc<Connections> {
        let connections = Arc::new(Connections {
            settings,
            idle: Mutex::new(HashMap::default()),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(sweep(Arc::downgrade(&connections), owner));
        }
        connections
    }

    /// Sends `request` (origin-form, with its `Host`) to the instance at `authority`
    /// (`host:port`) on the newest ready idle connection, or on a new one.
    pub async fn send(
        self: &Arc<Self>,
        authority: &Arc<str>,
        mut request: Request<Full<Bytes>>,
        now: Instant,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        loop {
            let (mut sender, reused) = match self.checkout(authority, now) {
                Some(sender) => (sender, true),
                None => (self.connect(authority).await?, false),
            };
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        connections: self.clone(),
                        authority: authority.clone(),
                        sender: Some(sender),
                    };
                    return Ok((response, lease));
                }
                Err(mut error) => match error.take_message() {
                    // Closed while idle: each retry uses up an idle connection, and a new
                    // connection is not retried, so this ends.
                    Some(unsent) if reused => request = unsent,
                    Some(_) => return Err(SendError::NotSent(describe(error.error()))),
                    None => return Err(SendError::Broken(describe(error.error()))),
                },
            }
        }
    }

    /// The newest ready idle connection to `authority`. Closed and expired ones found on the way
    /// are dropped; busy ones (an answer's body still draining) stay.
    fn checkout(&self, authority: &str, now: Instant) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = idle.get_mut(authority)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let entry = &list[i];
            if entry.sender.is_closed() || self.expired(entry, now) {
                list.swap_remove(i);
            } else if entry.sender.is_ready() {
                return Some(list.swap_remove(i).sender);
            }
        }
        None
    }

    fn give_back(&self, authority: &str, sender: Sender, now: Instant) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = Idle { sender, since: now };
        match idle.get_mut(authority) {
            Some(list) if list.len() < self.settings.max_idle_per_instance => list.push(entry),
            Some(_) => {}
            None if self.settings.max_idle_per_instance > 0 => {
                idle.insert(authority.into(), vec![entry]);
            }
            None => {}
        }
    }

    fn expired(&self, entry: &Idle, now: Instant) -> bool {
        now.saturating_duration_since(entry.since) >= self.settings.idle_timeout
    }

    /// Drops closed and expired connections, and the lists left empty (instances gone).
    fn sweep(&self, now: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|_, list| {
            list.retain(|entry| !entry.sender.is_closed() && !self.expired(entry, now));
            !list.is_empty()
        });
    }

    fn close_all(&self) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Opens a connection and starts its task on this thread's runtime.
    async fn connect(&self, authority: &str) -> Result<Sender, SendError> {
        let not_sent =
            |reason: String| SendError::NotSent(format!("connect to {authority}: {reason}"));
        let stream =
            tokio::time::timeout(self.settings.connect_timeout, TcpStream::connect(authority))
                .await
                .map_err(|_| not_sent("timed out".into()))?
                .map_err(|e| not_sent(e.to_string()))?;
        configure(&stream).map_err(|e| not_sent(e.to_string()))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| not_sent(describe(&e)))?;
        // Rare when keep-alive works: a rate near the request rate means it does not.
        metrics::counter!("gateway_upstream_connections_opened_total", "address" => authority.to_owned())
            .increment(1);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %describe(&error), "upstream connection ended");
            }
        });
        Ok(sender)
    }

    #[cfg(test)]
    fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.values().map(Vec::len).sum()
    }
}

/// No Nagle delay (requests are written whole); TCP keepalive so that a pooled connection to a
/// host that vanished is noticed.
fn configure(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(15))
        .with_interval(Duration::from_secs(15))
        .with_retries(3);
    SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// Closes expired idle connections even when no request comes to look at them (so an idle
/// connection lives at most twice the idle timeout).
async fn sweep<T>(connections: Weak<Connections>, owner: Weak<T>) {
    let Some(every) = connections
        .upgrade()
        .map(|c| c.settings.idle_timeout.max(Duration::from_millis(10)))
    else {
        return;
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(connections) = connections.upgrade() else {
            return;
        };
        if owner.strong_count() == 0 {
            connections.close_all();
            return;
        }
        connections.sweep(Instant::now());
    }
}

/// An error with its causes, on one line.
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{Shutdown, SocketAddr, TcpListener};

    use tokio::sync::mpsc;

    use http::header;
    use http_body_util::BodyExt;

    use super::*;

    /// What the hand-written upstream does with a request, by connection and request number.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Action {
        /// `200 ok`, keeping the connection.
        Answer,
        /// `200 ok`, then closes the connection once the test says so.
        AnswerThenCloseWhenTold,
        /// Closes the connection without answering.
        Close,
        /// Sends the head and half the body, then waits.
        HalfAnswer,
    }

    #[derive(Debug, PartialEq)]
    enum Event {
        Request {
            connection: usize,
            path: String,
        },
        /// The connection ended, closed by either side.
        Closed {
            connection: usize,
        },
    }

    /// An HTTP/1 upstream on plain threads, so that a test decides exactly when it answers and
    /// closes, whatever the runtime under test is doing.
    struct RawUpstream {
        authority: Arc<str>,
        received: mpsc::UnboundedReceiver<Event>,
        /// Lets [`Action::AnswerThenCloseWhenTold`] close.
        close: std::sync::mpsc::Sender<()>,
    }

    fn raw_upstream(act: impl Fn(usize, usize) -> Action + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (events, received) = mpsc::unbounded_channel();
        let (close, told) = std::sync::mpsc::channel();
        let told = Arc::new(Mutex::new(told));
        let act = Arc::new(act);
        std::thread::spawn(move || {
            for (connection, stream) in listener.incoming().enumerate() {
                let Ok(stream) = stream else { return };
                let (act, events, told) = (act.clone(), events.clone(), told.clone());
                std::thread::spawn(move || serve(stream, connection, &*act, &events, &told));
            }
        });
        RawUpstream {
            authority: addr.to_string().into(),
            received,
            close,
        }
    }

    fn serve(
        mut stream: std::net::TcpStream,
        connection: usize,
        act: &dyn Fn(usize, usize) -> Action,
        events: &mpsc::UnboundedSender<Event>,
        told: &Mutex<std::sync::mpsc::Receiver<()>>,
    ) {
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 4096];
        for request in 0.. {
            // Requests here have no body: the head is the request.
            let end = loop {
                if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => {
                        let _ = events.send(Event::Closed { connection });
                        return;
                    }
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end);
            let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
            let _ = events.send(Event::Request { connection, path });
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            match act(connection, request) {
                Action::Answer => {
                    let _ = stream.write_all(ok);
                }
                Action::AnswerThenCloseWhenTold => {
                    let _ = stream.write_all(ok);
                    let _ = told.lock().map(|told| told.recv());
                    let _ = stream.shutdown(Shutdown::Both);
                    let _ = events.send(Event::Closed { connection });
                    return;
                }
                Action::Close => {
                    let _ = stream.shutdown(Shutdown::Both);
                    let _ = events.send(Event::Closed { connection });
                    return;
                }
                Action::HalfAnswer => {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf.");
                }
            }
        }
    }

    fn settings() -> Settings {
        Settings {
            connect_timeout: Duration::from_secs(1),
            max_idle_per_instance: 8,
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn get(authority: &str, path: &str) -> Request<Full<Bytes>> {
        Request::get(path)
            .header(header::HOST, authority)
            .body(Full::new(Bytes::new()))
            .expect("request")
    }

    /// Sends a GET and reads the whole answer; the connection goes back when this returns.
    async fn fetch(
        connections: &Arc<Connections>,
        authority: &Arc<str>,
        path: &str,
    ) -> Result<String, SendError> {
        let (response, _lease) = connections
            .send(authority, get(authority, path), Instant::now())
            .await?;
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    impl RawUpstream {
        async fn next(&mut self) -> Event {
            tokio::time::timeout(Duration::from_secs(5), self.received.recv())
                .await
                .expect("an event in time")
                .expect("the upstream runs")
        }

        async fn events(&mut self, count: usize) -> Vec<Event> {
            let mut events = Vec::new();
            for _ in 0..count {
                events.push(self.next().await);
            }
            events
        }

        /// The next `count` requests, skipping connections' ends.
        async fn requests(&mut self, count: usize) -> Vec<Event> {
            let mut requests = Vec::new();
            while requests.len() < count {
                let event = self.next().await;
                if matches!(event, Event::Request { .. }) {
                    requests.push(event);
                }
            }
            requests
        }

        async fn nothing_more(&mut self) -> bool {
            tokio::time::timeout(Duration::from_millis(200), self.received.recv())
                .await
                .is_err()
        }
    }

    fn request(connection: usize, path: &str) -> Event {
        Event::Request {
            connection,
            path: path.into(),
        }
    }

    fn connections(settings: Settings) -> (Arc<Connections>, Arc<()>) {
        let owner = Arc::new(());
        (Connections::new(settings, Arc::downgrade(&owner)), owner)
    }

    #[tokio::test]
    async fn an_answered_connection_is_reused_for_the_next_request() {
        let (connections, _owner) = connections(settings());
        let mut upstream = raw_upstream(|_, _| Action::Answer);
        for path in ["/a", "/b", "/c"] {
            let answer = fetch(&connections, &upstream.authority, path).await;
            assert_eq!(answer.expect("answer"), "ok");
        }
        assert_eq!(
            upstream.events(3).await,
            vec![request(0, "/a"), request(0, "/b"), request(0, "/c")]
        );
        assert_eq!(connections.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_reported_as_never_sent() {
        let (connections, _owner) = connections(settings());
        let closed = TcpListener::bind("127.0.0.1:0").expect("bind");
        let authority: Arc<str> = closed.local_addr().expect("addr").to_string().into();
        drop(closed);
        let result = fetch(&connections, &authority, "/").await;
        assert!(matches!(result, Err(SendError::NotSent(_))), "{result:?}");
    }

    #[tokio::test]
    async fn a_connection_that_cannot_be_made_in_time_is_reported_as_never_sent() {
        let mut settings = settings();
        settings.connect_timeout = Duration::from_millis(50);
        let (connections, _owner) = connections(settings);
        // TEST-NET-1 (RFC 5737) is never routed: the connect hangs or fails, never succeeds.
        let authority: Arc<str> = SocketAddr::from(([192, 0, 2, 1], 80)).to_string().into();
        let result = fetch(&connections, &authority, "/").await;
        assert!(matches!(result, Err(SendError::NotSent(_))), "{result:?}");
    }

    #[tokio::test]
    async fn a_request_that_went_out_and_broke_off_is_reported_as_maybe_sent_and_not_resent() {
        let (connections, _owner) = connections(settings());
        let mut upstream = raw_upstream(|_, _| Action::Close);
        let result = fetch(&connections, &upstream.authority, "/once").await;
        assert!(matches!(result, Err(SendError::Broken(_))), "{result:?}");
        assert_eq!(
            upstream.events(2).await,
            vec![request(0, "/once"), Event::Closed { connection: 0 }]
        );
        // No second connection, no second request.
        assert!(upstream.nothing_more().await);
    }

    /// A request answered on connection 0, kept idle; the upstream is then told to close it.
    async fn one_idle_connection_the_upstream_closes() -> (Arc<Connections>, Arc<()>, RawUpstream) {
        let (connections, owner) = connections(settings());
        let mut upstream = raw_upstream(|connection, request| match (connection, request) {
            (0, 0) => Action::AnswerThenCloseWhenTold,
            _ => Action::Answer,
        });
        let answer = fetch(&connections, &upstream.authority, "/first").await;
        assert_eq!(answer.expect("answer"), "ok");
        assert_eq!(upstream.events(1).await, vec![request(0, "/first")]);
        assert_eq!(connections.idle_count(), 1);
        upstream.close.send(()).expect("upstream");
        (connections, owner, upstream)
    }

    /// The upstream closes a kept connection just as it is reused: the close reaches the socket
    /// before the connection's task has seen it (this thread is held up meanwhile), so the request
    /// is written into a closed connection. Whether it was read is unknowable in general, so it
    /// counts as maybe sent — as with hyper-util's client — and is not sent again here.
    #[tokio::test]
    async fn a_request_written_into_a_connection_closed_while_idle_counts_as_maybe_sent() {
        let (connections, _owner, mut upstream) = one_idle_connection_the_upstream_closes().await;
        // Blocks this thread: the close arrives, but the connection's task cannot run.
        std::thread::sleep(Duration::from_millis(100));
        let result = fetch(&connections, &upstream.authority, "/second").await;
        assert!(matches!(result, Err(SendError::Broken(_))), "{result:?}");
        assert_eq!(
            upstream.events(1).await,
            vec![Event::Closed { connection: 0 }]
        );
        assert!(upstream.nothing_more().await);
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_dropped_at_checkout() {
        let (connections, _owner, mut upstream) = one_idle_connection_the_upstream_closes().await;
        assert_eq!(upstream.next().await, Event::Closed { connection: 0 });
        // This time the connection's task sees the close first.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let answer = fetch(&connections, &upstream.authority, "/second").await;
        assert_eq!(answer.expect("answer"), "ok");
        assert_eq!(upstream.events(1).await, vec![request(1, "/second")]);
    }

    #[tokio::test]
    async fn a_connection_whose_answer_was_left_half_read_is_not_reused() {
        let (connections, _owner) = connections(settings());
        let mut upstream = raw_upstream(|connection, _| match connection {
            0 => Action::HalfAnswer,
            _ => Action::Answer,
        });
        let authority = upstream.authority.clone();
        let (response, lease) = connections
            .send(&authority, get(&authority, "/half"), Instant::now())
            .await
            .expect("head");
        drop(response);
        drop(lease);
        let answer = fetch(&connections, &authority, "/next").await;
        assert_eq!(answer.expect("answer"), "ok");
        assert_eq!(
            upstream.requests(2).await,
            vec![request(0, "/half"), request(1, "/next")]
        );
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_idle_timeout_without_traffic() {
        let mut settings = settings();
        settings.idle_timeout = Duration::from_millis(50);
        let (connections, _owner) = connections(settings);
        let mut upstream = raw_upstream(|_, _| Action::Answer);
        let answer = fetch(&connections, &upstream.authority, "/").await;
        assert_eq!(answer.expect("answer"), "ok");
        assert_eq!(connections.idle_count(), 1);
        assert_eq!(
            upstream.events(2).await,
            vec![request(0, "/"), Event::Closed { connection: 0 }]
        );
        assert_eq!(connections.idle_count(), 0);
    }

    #[tokio::test]
    async fn no_more_connections_are_kept_than_the_limit() {
        let mut settings = settings();
        settings.max_idle_per_instance = 2;
        let (connections, _owner) = connections(settings);
        let mut upstream = raw_upstream(|_, _| Action::Answer);
        let authority = upstream.authority.clone();
        // Three answers held at once need three connections; two are kept.
        let mut held = Vec::new();
        for path in ["/1", "/2", "/3"] {
            let request = get(&authority, path);
            let sent = connections.send(&authority, request, Instant::now()).await;
            held.push(sent.expect("answer"));
        }
        for (response, lease) in held {
            response.into_body().collect().await.expect("body");
            drop(lease);
        }
        assert_eq!(connections.idle_count(), 2);
        let mut seen = upstream.events(4).await;
        seen.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(
            seen,
            vec![
                Event::Closed { connection: 2 },
                request(0, "/1"),
                request(1, "/2"),
                request(2, "/3")
            ]
        );
    }
}
