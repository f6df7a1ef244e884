//! Consul's read endpoints, all blocking queries: who provides a service and whether it is healthy
//! (`/v1/health/service/:name`, what the gateway and Prometheus watch) and the catalog listings.
//! Unsupported Consul parameters (`dc`, `stale`, `near`, `filter`, …) are accepted and ignored.

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use platform::ApiError;
use platform::extract::Path;

use crate::server::blocking::{Blocking, Params, answer};
use crate::server::registry::Registry;
use crate::server::state::Instance;
use crate::server::views;

pub fn routes() -> Router<Registry> {
    Router::new()
        .route("/v1/health/service/{name}", get(list_service_health))
        .route("/v1/catalog/services", get(list_catalog_services))
        .route("/v1/catalog/service/{name}", get(list_catalog_service))
}

/// `?passing` keeps instances whose every check passes (a warning does not); `?tag=` may repeat and
/// every tag must match. An unknown service is `[]`, not 404, as in Consul.
async fn list_service_health(
    State(registry): State<Registry>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    let passing = params.flag("passing")?;
    let tags: Vec<&str> = params.all("tag").collect();
    Blocking::from_params(&params)?
        .wait(&registry, |catalog| catalog.service_index(&name))
        .await;
    let node = registry.node();
    let (index, entries) = registry
        .read(|catalog| {
            let entries: Vec<_> = catalog
                .instances_of(&name)
                .filter(|i| !passing || i.is_passing())
                .filter(|i| has_tags(i, &tags))
                .map(|i| views::health_entry(node, i))
                .collect();
            (catalog.service_index(&name), entries)
        })
        .await;
    Ok(answer(index, entries))
}

/// Every service name with the union of its instances' tags.
async fn list_catalog_services(
    State(registry): State<Registry>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    Blocking::from_params(&params)?
        .wait(&registry, |catalog| catalog.index())
        .await;
    let (index, services) = registry
        .read(|catalog| {
            let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for instance in catalog.instances() {
                services
                    .entry(instance.name.clone())
                    .or_default()
                    .extend(instance.tags.iter().cloned());
            }
            (catalog.index(), services)
        })
        .await;
    Ok(answer(index, services))
}

/// Every instance of one service regardless of health, as catalog entries.
async fn list_catalog_service(
    State(registry): State<Registry>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = Params::parse(query.as_deref());
    let tags: Vec<&str> = params.all("tag").collect();
    Blocking::from_params(&params)?
        .wait(&registry, |catalog| catalog.service_index(&name))
        .await;
    let node = registry.node();
    let (index, entries) = registry
        .read(|catalog| {
            let entries: Vec<_> = catalog
                .instances_of(&name)
                .filter(|i| has_tags(i, &tags))
                .map(|i| views::catalog_entry(node, i))
                .collect();
            (catalog.service_index(&name), entries)
        })
        .await;
    Ok(answer(index, entries))
}

fn has_tags(instance: &Instance, tags: &[&str]) -> bool {
    tags.iter()
        .all(|tag| instance.tags.iter().any(|t| t == tag))
}
