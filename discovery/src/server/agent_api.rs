//! Consul's agent endpoints: register and deregister services, report TTL checks, and describe the
//! agent (`/v1/agent/self`, `/v1/status/leader`) the way Consul clients and Prometheus expect.
//!
//! Bodies are read as JSON whatever their `Content-Type`: Consul does not require one, and neither
//! `curl -d` nor several Consul clients send `application/json`.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::routing::{get, put};
use bytes::Bytes;
use platform::ApiError;
use platform::extract::{Json, Path};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::server::blocking::Params;
use crate::server::checks::Status;
use crate::server::registration::NewService;
use crate::server::registry::Registry;
use crate::server::state::CheckError;
use crate::server::views;
use crate::wire::{AgentService, CheckUpdate, ServiceDefinition};

/// Like Consul, keep at most this much of a reported output.
const MAX_OUTPUT_BYTES: usize = 4096;

pub fn routes() -> Router<Registry> {
    Router::new()
        .route("/v1/agent/service/register", put(register_service))
        .route("/v1/agent/service/deregister/{id}", put(deregister_service))
        .route("/v1/agent/check/pass/{check_id}", put(pass_check))
        .route("/v1/agent/check/warn/{check_id}", put(warn_check))
        .route("/v1/agent/check/fail/{check_id}", put(fail_check))
        .route("/v1/agent/check/update/{check_id}", put(update_check))
        .route("/v1/agent/services", get(list_agent_services))
        .route("/v1/agent/self", get(describe_agent))
        .route("/v1/status/leader", get(get_leader))
        .route("/v1/status/peers", get(list_peers))
}

async fn register_service(State(registry): State<Registry>, body: Bytes) -> Result<(), ApiError> {
    let definition: ServiceDefinition = decode(&body)?;
    let service = NewService::parse(definition).map_err(ApiError::BadRequest)?;
    registry
        .register(service)
        .await
        .map_err(ApiError::BadRequest)
}

/// Unknown IDs answer 200 like Consul, which logs and ignores them: deregistering is idempotent.
async fn deregister_service(State(registry): State<Registry>, Path(id): Path<String>) {
    if !registry.deregister(&id).await {
        tracing::debug!(id = %id, "deregister of an unknown service ignored");
    }
}

async fn pass_check(
    registry: State<Registry>,
    id: Path<String>,
    query: RawQuery,
) -> Result<(), ApiError> {
    report_with_note(registry, id, query, Status::Passing).await
}

async fn warn_check(
    registry: State<Registry>,
    id: Path<String>,
    query: RawQuery,
) -> Result<(), ApiError> {
    report_with_note(registry, id, query, Status::Warning).await
}

async fn fail_check(
    registry: State<Registry>,
    id: Path<String>,
    query: RawQuery,
) -> Result<(), ApiError> {
    report_with_note(registry, id, query, Status::Critical).await
}

async fn report_with_note(
    State(registry): State<Registry>,
    Path(check_id): Path<String>,
    RawQuery(query): RawQuery,
    status: Status,
) -> Result<(), ApiError> {
    let note = Params::parse(query.as_deref())
        .get("note")
        .unwrap_or_default()
        .to_owned();
    report(&registry, &check_id, status, note).await
}

async fn update_check(
    State(registry): State<Registry>,
    Path(check_id): Path<String>,
    body: Bytes,
) -> Result<(), ApiError> {
    let update: CheckUpdate = decode(&body)?;
    let status = Status::parse(&update.status).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "Status: {:?} is not one of passing, warning, critical",
            update.status
        ))
    })?;
    report(&registry, &check_id, status, update.output).await
}

/// Unknown checks are 404 (modern Consul does the same): the client agent takes it as "the registry
/// forgot me" and registers again.
async fn report(
    registry: &Registry,
    check_id: &str,
    status: Status,
    mut output: String,
) -> Result<(), ApiError> {
    truncate(&mut output, MAX_OUTPUT_BYTES);
    registry
        .report(check_id, status, output)
        .await
        .map_err(|e| match e {
            CheckError::Unknown => {
                ApiError::NotFound(format!("CheckID {check_id:?} is not registered"))
            }
            CheckError::NotTtl => ApiError::NotFound(format!(
                "CheckID {check_id:?} does not have an associated TTL"
            )),
        })
}

async fn list_agent_services(
    State(registry): State<Registry>,
) -> Json<BTreeMap<String, AgentService>> {
    let services = registry
        .read(|catalog| {
            catalog
                .instances()
                .map(|i| (i.id.clone(), views::agent_service(i)))
                .collect()
        })
        .await;
    Json(services)
}

/// The parts of Consul's `/v1/agent/self` that clients read; Prometheus' `consul_sd` needs
/// `Config.Datacenter`.
async fn describe_agent(State(registry): State<Registry>) -> Json<Value> {
    let node = registry.node();
    Json(json!({
        "Config": {
            "Datacenter": node.datacenter,
            "PrimaryDatacenter": node.datacenter,
            "NodeName": node.name,
            "NodeID": node.id,
            "Server": true,
            "Revision": "bookstore",
            "Version": env!("CARGO_PKG_VERSION"),
        },
        "Member": {
            "Name": node.name,
            "Addr": node.address,
            "Port": 8301,
            "Tags": { "dc": node.datacenter, "role": "consul", "id": node.id },
            "Status": 1,
        },
        "Meta": {},
    }))
}

async fn get_leader(State(registry): State<Registry>) -> Json<String> {
    Json(format!("{}:8300", registry.node().address))
}

async fn list_peers(State(registry): State<Registry>) -> Json<Vec<String>> {
    Json(vec![format!("{}:8300", registry.node().address)])
}

/// Decodes a JSON body; any failure is a 400 naming what was wrong, as Consul answers.
fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid: {e}")))
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}
