//! Calls to the other platform processes checkout needs — books (the price quote) and the
//! coordinator — found through the registry and authenticated with the internal credential.
//!
//! Every failure is classified by what it means for the request: [`PeerError::NotSent`] when it
//! certainly never reached the peer (no instance, connection refused), so the caller may give up
//! cleanly; [`PeerError::Ambiguous`] when it may have been processed (timeout, broken answer).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use discovery::client::{Instance, RegistryConfig, watch_healthy};
use http::{Method, StatusCode};
use platform::auth::INTERNAL_TOKEN_HEADER;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why a call to a peer produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// The request never reached any instance.
    #[error("no instance of {service} could be reached: {reason}")]
    NotSent { service: String, reason: String },
    /// The request may have been processed; its outcome is unknown.
    #[error("the call to {service} has an unknown outcome: {reason}")]
    Ambiguous { service: String, reason: String },
}

/// One service's healthy instances, followed through the registry.
struct Peer {
    name: String,
    instances: watch::Receiver<Vec<Instance>>,
    next: AtomicUsize,
}

/// The peers of the orders service. Cheap to clone.
#[derive(Clone)]
pub struct Peers {
    books: Arc<Peer>,
    coordinator: Arc<Peer>,
    client: reqwest::Client,
    internal_token: Arc<str>,
}

impl Peers {
    /// Starts following `books_service` and `coordinator_service` until `shutdown`.
    pub fn follow(
        registry: &RegistryConfig,
        books_service: &str,
        coordinator_service: &str,
        internal_token: &str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Peers> {
        let peer = |name: &str| {
            Arc::new(Peer {
                name: name.to_owned(),
                instances: watch_healthy(registry, name, shutdown.clone()),
                next: AtomicUsize::new(0),
            })
        };
        Ok(Peers {
            books: peer(books_service),
            coordinator: peer(coordinator_service),
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true)
                .build()?,
            internal_token: Arc::from(internal_token),
        })
    }

    pub async fn books(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Value), PeerError> {
        self.call(&self.books, method, path, body, timeout).await
    }

    pub async fn coordinator(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Value), PeerError> {
        self.call(&self.coordinator, method, path, body, timeout)
            .await
    }

    /// Tries the instances in turn, moving on only when a connection could not even be made.
    async fn call(
        &self,
        peer: &Peer,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Value), PeerError> {
        let instances = peer.instances.borrow().clone();
        let not_sent = |reason: String| PeerError::NotSent {
            service: peer.name.clone(),
            reason,
        };
        if instances.is_empty() {
            return Err(not_sent("the registry lists no healthy instance".into()));
        }
        let start = peer.next.fetch_add(1, Ordering::Relaxed);
        let mut last = String::new();
        for offset in 0..instances.len() {
            let instance = &instances[(start + offset) % instances.len()];
            let url = format!("http://{}:{}{path}", instance.address, instance.port);
            let mut request = self
                .client
                .request(method.clone(), &url)
                .timeout(timeout)
                .header(INTERNAL_TOKEN_HEADER, &*self.internal_token);
            if let Some(traceparent) = platform::trace::outgoing() {
                request = request.header(platform::server::TRACEPARENT, traceparent);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let body = response.json::<Value>().await.unwrap_or(Value::Null);
                    return Ok((status, body));
                }
                Err(e) if e.is_connect() => last = format!("{}: {e}", instance.id),
                Err(e) => {
                    return Err(PeerError::Ambiguous {
                        service: peer.name.clone(),
                        reason: format!("{}: {e}", instance.id),
                    });
                }
            }
        }
        Err(not_sent(last))
    }
}
