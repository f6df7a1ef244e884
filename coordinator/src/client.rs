//! The coordinator's side of the participant protocol: finds a healthy instance of a service through
//! the registry, sends one request with the internal credential under a per-call timeout, and
//! classifies the answer. It never retries an answer; only a connection that could not be opened
//! (nothing was sent) moves on to the next instance. Retrying is the driver's decision.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use discovery::client::{Instance, RegistryConfig, watch_healthy};
use http::{HeaderValue, StatusCode};
use platform::auth::{INTERNAL_TOKEN_HEADER, Secret};
use platform::deadline::REQUEST_TIMEOUT_HEADER;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// Longest answer body read from a participant.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// How long a call waits for the registry's first answer about a service it never asked for.
const FIRST_LOOKUP_WAIT: Duration = Duration::from_secs(1);

/// One participant operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Prepare,
    Commit,
    Abort,
    Action,
    Compensate,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Prepare => "prepare",
            Op::Commit => "commit",
            Op::Abort => "abort",
            Op::Action => "action",
            Op::Compensate => "compensate",
        }
    }

    fn route(self, gid: &str) -> String {
        let protocol = match self {
            Op::Prepare | Op::Commit | Op::Abort => "2pc",
            Op::Action | Op::Compensate => "saga",
        };
        format!("/internal/{protocol}/{gid}/{}", self.as_str())
    }

    /// Whether the request carries the branch payload.
    fn sends_payload(self) -> bool {
        matches!(self, Op::Prepare | Op::Action | Op::Compensate)
    }
}

/// What a participant's answer means for the coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// 200 `prepared`.
    Prepared,
    /// 200 `committed` (to a commit, or to a prepare of an already committed gid).
    Committed,
    /// 200 `aborted`.
    Aborted,
    /// 200 `done`.
    Done,
    /// 200 `compensated`.
    Compensated,
    /// 409 `refused`: a definite business "no", nothing kept. The participant's `refusal` object.
    Refused(Value),
    /// 409 `aborted`: an abort or compensation came first and blocks this prepare or action.
    Blocked(String),
    /// 422 (bad payload) or 400 (a request the participant cannot take): definitely not applied.
    Invalid(String),
    /// 409 `not-prepared` to a commit: a protocol violation.
    NotPrepared,
    /// 409 `already-committed` to an abort: a protocol violation.
    AlreadyCommitted,
    /// Anything else — 5xx, 503 busy, a timeout, a connection lost after sending, no instance, an
    /// answer the protocol does not have: the branch may or may not have applied.
    Ambiguous(String),
}

impl Answer {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Answer::Prepared => "prepared",
            Answer::Committed => "committed",
            Answer::Aborted => "aborted",
            Answer::Done => "done",
            Answer::Compensated => "compensated",
            Answer::Refused(_) => "refused",
            Answer::Blocked(_) => "blocked",
            Answer::Invalid(_) => "invalid",
            Answer::NotPrepared => "not-prepared",
            Answer::AlreadyCommitted => "already-committed",
            Answer::Ambiguous(_) => "ambiguous",
        }
    }
}

/// One entry of `GET /internal/2pc/prepared`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PreparedEntry {
    pub gid: String,
    pub prepared_at: DateTime<Utc>,
    /// The age by the participant database's clock; absent from participants older than the
    /// field, whose entries are aged by this process's clock instead.
    #[serde(default)]
    pub age_ms: Option<u64>,
}

impl PreparedEntry {
    /// How long ago the branch was prepared: by the database's clock when the participant said.
    pub fn age(&self, now: DateTime<Utc>) -> Duration {
        match self.age_ms {
            Some(ms) => Duration::from_millis(ms),
            None => (now - self.prepared_at).to_std().unwrap_or_default(),
        }
    }
}

/// Calls participants; one registry watch per service, started on first use.
pub struct ParticipantClient {
    http: reqwest::Client,
    registry: RegistryConfig,
    watchers: Mutex<HashMap<String, watch::Receiver<Vec<Instance>>>>,
    token: HeaderValue,
    timeout: Duration,
    shutdown: CancellationToken,
    next: AtomicUsize,
}

impl ParticipantClient {
    /// `timeout` limits each call; the watches stop when `shutdown` fires.
    pub fn new(
        registry: RegistryConfig,
        internal_token: &Secret,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<ParticipantClient> {
        let mut token = HeaderValue::from_str(internal_token.expose())
            .map_err(|_| anyhow::anyhow!("auth.internal_token is not a valid header value"))?;
        token.set_sensitive(true);
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(timeout.min(Duration::from_secs(1)))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the participant HTTP client: {e}"))?;
        Ok(ParticipantClient {
            http,
            registry,
            watchers: Mutex::new(HashMap::new()),
            token,
            timeout,
            shutdown,
            next: AtomicUsize::new(0),
        })
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The healthy instances of `service`, waiting a little for the registry's first answer.
    async fn instances(&self, service: &str) -> Vec<Instance> {
        let mut receiver = {
            let mut watchers = self
                .watchers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            watchers
                .entry(service.to_owned())
                .or_insert_with(|| watch_healthy(&self.registry, service, self.shutdown.clone()))
                .clone()
        };
        let current = receiver.borrow_and_update().clone();
        if !current.is_empty() {
            return current;
        }
        match tokio::time::timeout(
            FIRST_LOOKUP_WAIT.min(self.timeout),
            receiver.wait_for(|instances| !instances.is_empty()),
        )
        .await
        {
            Ok(Ok(instances)) => instances.clone(),
            _ => Vec::new(),
        }
    }

    /// Sends `op` for `gid` to a healthy instance of `service` and classifies the answer. `budget`
    /// (for example what is left of the transaction's deadline) shortens the per-call timeout.
    pub async fn call(
        &self,
        service: &str,
        op: Op,
        gid: &str,
        payload: &Value,
        budget: Option<Duration>,
    ) -> Answer {
        let limit = budget.map_or(self.timeout, |b| b.min(self.timeout));
        let deadline = Instant::now() + limit;
        let instances = self.instances(service).await;
        if instances.is_empty() {
            return Answer::Ambiguous(format!("no healthy instance of {service}"));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut refused = Vec::new();
        for k in 0..instances.len() {
            let instance = &instances[(start + k) % instances.len()];
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let url = format!("{}{}", instance.base_url(), op.route(gid));
            let millis = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
            let mut request = self
                .http
                .post(url)
                .header(INTERNAL_TOKEN_HEADER, self.token.clone())
                .header(REQUEST_TIMEOUT_HEADER, millis)
                .timeout(remaining);
            if let Some(traceparent) = platform::trace::outgoing() {
                request = request.header(platform::server::TRACEPARENT, traceparent);
            }
            if op.sends_payload() {
                request = request.json(payload);
            }
            match request.send().await {
                // Nothing was sent: another instance may take it.
                Err(e) if e.is_connect() => refused.push(format!("{}: {e}", instance.id)),
                Err(e) => {
                    return Answer::Ambiguous(format!(
                        "{service} ({}) did not answer {}: {e}",
                        instance.id,
                        op.as_str()
                    ));
                }
                Ok(response) => return classify(service, op, response).await,
            }
        }
        if refused.is_empty() {
            Answer::Ambiguous(format!("no time left to call {service}"))
        } else {
            Answer::Ambiguous(format!(
                "no instance of {service} accepted a connection: {}",
                refused.join("; ")
            ))
        }
    }

    /// The prepared gids under `prefix` of `service`'s database (asked of one healthy instance).
    pub async fn list_prepared(
        &self,
        service: &str,
        prefix: &str,
    ) -> anyhow::Result<Vec<PreparedEntry>> {
        let instances = self.instances(service).await;
        anyhow::ensure!(!instances.is_empty(), "no healthy instance of {service}");
        let mut errors = Vec::new();
        for instance in &instances {
            // The prefix is `[a-z0-9]{1,16}:`: nothing in it needs escaping in a query.
            let url = format!(
                "{}/internal/2pc/prepared?prefix={prefix}",
                instance.base_url()
            );
            let answer = self
                .http
                .get(url)
                .header(INTERNAL_TOKEN_HEADER, self.token.clone())
                .timeout(self.timeout)
                .send()
                .await;
            match answer {
                Err(e) if e.is_connect() => errors.push(format!("{}: {e}", instance.id)),
                Err(e) => anyhow::bail!("{service} ({}) did not answer: {e}", instance.id),
                Ok(response) => {
                    let status = response.status();
                    let body = read_body(response).await;
                    anyhow::ensure!(
                        status == StatusCode::OK,
                        "{service} ({}) answered {status} to the prepared list: {}",
                        instance.id,
                        String::from_utf8_lossy(&body)
                    );
                    return serde_json::from_slice(&body).map_err(|e| {
                        anyhow::anyhow!("{service} sent a prepared list that does not parse: {e}")
                    });
                }
            }
        }
        anyhow::bail!(
            "no instance of {service} accepted a connection: {}",
            errors.join("; ")
        )
    }
}

async fn read_body(response: reqwest::Response) -> Vec<u8> {
    match response.bytes().await {
        Ok(bytes) if bytes.len() <= MAX_ANSWER_BYTES => bytes.to_vec(),
        Ok(_) => b"{}".to_vec(),
        Err(_) => Vec::new(),
    }
}

/// The classification of one HTTP answer to `op` (see [`Answer`]).
async fn classify(service: &str, op: Op, response: reqwest::Response) -> Answer {
    let status = response.status();
    let bytes = match response.bytes().await {
        Ok(bytes) => bytes,
        // The status came but the body was lost: we cannot tell what it said.
        Err(e) => return Answer::Ambiguous(format!("{service} answered {status}, body lost: {e}")),
    };
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let answer = classify_body(op, status, &body);
    match &answer {
        Answer::NotPrepared | Answer::AlreadyCommitted => {
            metrics::protocol_violation(op.as_str(), answer.name());
            tracing::error!(
                service,
                op = op.as_str(),
                answer = answer.name(),
                "protocol violation: the participant's answer contradicts what the coordinator knows"
            );
        }
        Answer::Ambiguous(reason) if !status.is_server_error() => {
            // Not a transient failure: a misconfiguration (token, route) or a participant that
            // speaks another protocol. Retried all the same, but someone must look.
            tracing::error!(service, op = op.as_str(), %status, %reason, "unexpected participant answer");
        }
        _ => {}
    }
    answer
}

fn classify_body(op: Op, status: StatusCode, body: &Value) -> Answer {
    let detail = || {
        body.get("detail")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    match status {
        StatusCode::OK => {
            let state = body
                .get("state")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match (op, state) {
                (Op::Prepare, "prepared") => Answer::Prepared,
                (Op::Prepare | Op::Commit, "committed") => Answer::Committed,
                (Op::Abort, "aborted") => Answer::Aborted,
                (Op::Action, "done") => Answer::Done,
                (Op::Compensate, "compensated") => Answer::Compensated,
                _ => Answer::Ambiguous(format!(
                    "200 with state {state:?} is not an answer to {}",
                    op.as_str()
                )),
            }
        }
        StatusCode::CONFLICT => {
            let kind = body.get("type").and_then(Value::as_str).unwrap_or_default();
            let kind = kind.rsplit('/').next().unwrap_or_default();
            match (op, kind) {
                (Op::Prepare | Op::Action, "refused") => {
                    let refusal = match body.get("refusal") {
                        Some(refusal @ Value::Object(_)) => refusal.clone(),
                        _ => json!({"kind": "unknown", "detail": detail()}),
                    };
                    Answer::Refused(refusal)
                }
                (Op::Prepare | Op::Action, "aborted") => Answer::Blocked(detail()),
                (Op::Commit, "not-prepared") => Answer::NotPrepared,
                (Op::Abort, "already-committed") => Answer::AlreadyCommitted,
                _ => Answer::Ambiguous(format!(
                    "409 {kind:?} is not an answer to {}: {}",
                    op.as_str(),
                    detail()
                )),
            }
        }
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => {
            Answer::Invalid(format!("{status}: {}", detail()))
        }
        _ => Answer::Ambiguous(format!("{status}: {}", detail())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str) -> Value {
        json!({"type": format!("/problems/{kind}"), "title": "Conflict", "status": 409, "detail": "d"})
    }

    #[test]
    fn every_answer_of_the_contract_is_classified() {
        let ok = |state: &str| json!({ "state": state });
        let cases = [
            (
                Op::Prepare,
                StatusCode::OK,
                ok("prepared"),
                Answer::Prepared,
            ),
            (
                Op::Prepare,
                StatusCode::OK,
                ok("committed"),
                Answer::Committed,
            ),
            (
                Op::Commit,
                StatusCode::OK,
                ok("committed"),
                Answer::Committed,
            ),
            (Op::Abort, StatusCode::OK, ok("aborted"), Answer::Aborted),
            (Op::Action, StatusCode::OK, ok("done"), Answer::Done),
            (
                Op::Compensate,
                StatusCode::OK,
                ok("compensated"),
                Answer::Compensated,
            ),
            (
                Op::Prepare,
                StatusCode::CONFLICT,
                problem("aborted"),
                Answer::Blocked("d".into()),
            ),
            (
                Op::Commit,
                StatusCode::CONFLICT,
                problem("not-prepared"),
                Answer::NotPrepared,
            ),
            (
                Op::Abort,
                StatusCode::CONFLICT,
                problem("already-committed"),
                Answer::AlreadyCommitted,
            ),
            (
                Op::Action,
                StatusCode::UNPROCESSABLE_ENTITY,
                problem("validation"),
                Answer::Invalid("422 Unprocessable Entity: d".into()),
            ),
        ];
        for (op, status, body, expected) in cases {
            assert_eq!(
                classify_body(op, status, &body),
                expected,
                "{op:?} {status} {body}"
            );
        }
        let mut refused = problem("refused");
        refused["refusal"] = json!({"kind": "insufficient-stock", "detail": "d", "short": []});
        assert_eq!(
            classify_body(Op::Prepare, StatusCode::CONFLICT, &refused),
            Answer::Refused(json!({"kind": "insufficient-stock", "detail": "d", "short": []}))
        );
    }

    #[test]
    fn anything_else_is_ambiguous() {
        for (op, status, body) in [
            (
                Op::Prepare,
                StatusCode::SERVICE_UNAVAILABLE,
                problem("busy"),
            ),
            (Op::Commit, StatusCode::INTERNAL_SERVER_ERROR, Value::Null),
            (Op::Commit, StatusCode::OK, json!({"state": "prepared"})),
            (Op::Abort, StatusCode::CONFLICT, problem("refused")),
            (
                Op::Prepare,
                StatusCode::UNAUTHORIZED,
                problem("unauthorized"),
            ),
            (Op::Compensate, StatusCode::NOT_FOUND, problem("not-found")),
            (Op::Action, StatusCode::OK, Value::Null),
        ] {
            assert!(
                matches!(classify_body(op, status, &body), Answer::Ambiguous(_)),
                "{op:?} {status} {body}"
            );
        }
    }
}
