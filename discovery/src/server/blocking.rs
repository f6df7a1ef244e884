//! Consul's blocking queries: `?index=N&wait=5s` holds the answer until the index passes N or the wait
//! ends (default 5 minutes, at most 10, plus up to 1/16 of jitter so watchers do not stampede), and
//! every answer carries `X-Consul-Index`. Waiting is driven by the registry's watch channel, never by
//! polling.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use platform::ApiError;
use platform::extract::Json;
use rand::Rng;
use serde::Serialize;

use crate::duration;
use crate::server::registry::Registry;
use crate::server::state::Catalog;

pub const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
pub const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// The query string, parsed once. Consul's flags may be bare (`?passing`) and `tag` may repeat, which
/// serde's query extractor cannot express.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(raw: Option<&str>) -> Params {
        let pairs = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes());
        Params(pairs.into_owned().collect())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean flag as Consul reads it: absent is false, bare is true, else Go's `ParseBool`.
    pub fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None => Ok(false),
            Some("" | "1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
            Some(other) => Err(ApiError::BadRequest(format!(
                "invalid value {other:?} for ?{key}"
            ))),
        }
    }
}

/// What a request asked to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    /// Answer once the index passes this; 0 answers at once.
    pub index: u64,
    pub wait: Duration,
}

impl Blocking {
    pub fn from_params(params: &Params) -> Result<Blocking, ApiError> {
        let index = match params.get("index") {
            None | Some("") => 0,
            Some(text) => text.parse().map_err(|_| {
                ApiError::BadRequest(format!(
                    "invalid index {text:?}: expected an unsigned integer"
                ))
            })?,
        };
        let wait = match params.get("wait") {
            None | Some("") => DEFAULT_WAIT,
            Some(text) => duration::parse(text)
                .map_err(|e| ApiError::BadRequest(format!("invalid wait: {e}")))?,
        };
        Ok(Blocking {
            index,
            wait: wait.min(MAX_WAIT),
        })
    }

    /// Waits until `index_of` the catalog differs from the index asked about, the wait ends, or the
    /// registry shuts down. A lower index than asked about means the asker saw an earlier life of this
    /// registry, so that answers at once too rather than hanging until the index catches up.
    pub async fn wait(&self, registry: &Registry, index_of: impl Fn(&Catalog) -> u64) {
        if self.index == 0 {
            return;
        }
        let mut changes = registry.subscribe();
        let deadline = tokio::time::sleep(jittered(self.wait));
        tokio::pin!(deadline);
        loop {
            if registry.read(&index_of).await != self.index {
                return;
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                () = &mut deadline => return,
                () = registry.shutdown().cancelled() => return,
            }
        }
    }
}

fn jittered(wait: Duration) -> Duration {
    let spread = u64::try_from((wait / 16).as_millis()).unwrap_or(u64::MAX);
    wait + Duration::from_millis(rand::rng().random_range(0..=spread))
}

/// A JSON answer with Consul's query headers. The index is never 0, which clients read as "do not block".
pub fn answer<T: Serialize>(index: u64, body: T) -> Response {
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert("x-consul-index", HeaderValue::from(index.max(1)));
    headers.insert("x-consul-knownleader", HeaderValue::from_static("true"));
    headers.insert("x-consul-lastcontact", HeaderValue::from_static("0"));
    response
}
