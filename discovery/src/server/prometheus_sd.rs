//! `GET /v1/prometheus/targets`: every registered instance in Prometheus' HTTP service discovery
//! format — our own extension, not Consul's API. Prometheus finds the instances through
//! `consul_sd_configs` where it has Consul discovery, but Debian's build of Prometheus leaves
//! Consul discovery out; `http_sd_configs` (which every build has) reads this instead
//! (deploy/prometheus/prometheus-http-sd.yml).
//!
//! One target group per instance: `targets: ["address:port"]`, labels `__meta_bookstore_service`,
//! `__meta_bookstore_service_id`, `__meta_bookstore_health` (the worst of its checks, as Consul's
//! aggregated status) and `__meta_bookstore_tags` (`,a,b,` like Consul's). `?service=` (repeatable)
//! keeps only those services. Like consul_sd, critical instances are listed too: a scrape is how one
//! sees an instance that is up but not ready.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::routing::get;
use axum::{Json, Router};
use platform::ApiError;
use serde::Serialize;

use crate::server::blocking::Params;
use crate::server::checks::Status;
use crate::server::registry::Registry;
use crate::server::state::Instance;

pub fn routes() -> Router<Registry> {
    Router::new().route("/v1/prometheus/targets", get(list_targets))
}

/// One HTTP SD target group.
#[derive(Debug, Serialize)]
struct TargetGroup {
    targets: Vec<String>,
    labels: BTreeMap<&'static str, String>,
}

async fn list_targets(
    State(registry): State<Registry>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<TargetGroup>>, ApiError> {
    let params = Params::parse(query.as_deref());
    let services: Vec<String> = params.all("service").map(str::to_owned).collect();
    let groups = registry
        .read(|catalog| {
            let mut groups: Vec<TargetGroup> = catalog
                .instances()
                .filter(|i| services.is_empty() || services.contains(&i.name))
                .map(target_group)
                .collect();
            groups.sort_by(|a, b| a.labels.get(ID).cmp(&b.labels.get(ID)));
            groups
        })
        .await;
    Ok(Json(groups))
}

const ID: &str = "__meta_bookstore_service_id";

fn target_group(instance: &Instance) -> TargetGroup {
    let health = [Status::Critical, Status::Warning]
        .into_iter()
        .find(|worst| instance.checks.iter().any(|c| c.status == *worst))
        .unwrap_or(Status::Passing);
    let labels = BTreeMap::from([
        ("__meta_bookstore_service", instance.name.clone()),
        (ID, instance.id.clone()),
        ("__meta_bookstore_health", health.as_str().to_owned()),
        (
            "__meta_bookstore_tags",
            format!(",{},", instance.tags.join(",")),
        ),
    ]);
    TargetGroup {
        targets: vec![format!("{}:{}", instance.address, instance.port)],
        labels,
    }
}
