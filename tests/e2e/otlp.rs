//! OTLP trace export end to end: a platform started with `OTEL_EXPORTER_OTLP_ENDPOINT` sends its
//! spans to a receiver on loopback. No collector can be installed on the machine these tests run
//! on, so the receiver is a small real HTTP server that decodes the OTLP/HTTP protobuf requests with
//! the protocol's own types (`opentelemetry-proto`) — what a collector's OTLP receiver does first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::{AnyValue as Any, KeyValue};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use serde_json::Value;
use testkit::TestPlatform;

use crate::bookstore;
use crate::checkout::Shop;
use crate::traces::{committed_checkout, unique_trace_id};

/// One span as the receiver got it: ids in lowercase hex, parent empty for a root.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    kind: i32,
    status_code: Option<i64>,
}

#[derive(Default)]
struct Inbox {
    spans: Vec<Received>,
    /// Export requests that did not decode as OTLP.
    garbled: Vec<String>,
}

/// An OTLP/HTTP receiver on a free loopback port; stops when dropped.
struct Receiver {
    url: String,
    inbox: Arc<Mutex<Inbox>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    async fn start() -> anyhow::Result<Receiver> {
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let app = Router::new()
            .route("/v1/traces", post(export))
            .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { url, inbox, server })
    }

    fn spans(&self) -> Vec<Received> {
        self.lock().spans.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox> {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `POST /v1/traces`: what an OTLP/HTTP receiver answers (an empty export response).
async fn export(State(inbox): State<Arc<Mutex<Inbox>>>, body: Bytes) -> (StatusCode, Vec<u8>) {
    let mut inbox = inbox.lock().unwrap_or_else(PoisonError::into_inner);
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            inbox.spans.extend(received(request));
            (
                StatusCode::OK,
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
        }
        Err(e) => {
            inbox.garbled.push(e.to_string());
            (StatusCode::BAD_REQUEST, Vec::new())
        }
    }
}

fn received(request: ExportTraceServiceRequest) -> Vec<Received> {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let attributes = resource_spans.resource.map(|r| r.attributes);
        let service = string_attribute(&attributes.unwrap_or_default(), "service.name");
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let status_code = span
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "http.response.status_code")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        AnyValue::IntValue(n) => Some(*n),
                        _ => None,
                    });
                spans.push(Received {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    status_code,
                });
            }
        }
    }
    spans
}

fn string_attribute(attributes: &[KeyValue], key: &str) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref() {
            Some(Any {
                value: Some(AnyValue::StringValue(s)),
            }) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of `trace_id` once `complete` holds for them (export is batched; wait for it).
async fn wait_for_trace(
    receiver: &Receiver,
    trace_id: &str,
    complete: impl Fn(&[Received]) -> bool,
) -> anyhow::Result<Vec<Received>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let spans: Vec<Received> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        if complete(&spans) {
            return Ok(spans);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "trace {trace_id} incomplete after 30 s: {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every span's parent is another span of the trace, except the root's, which is `root_parent`.
fn linked(spans: &[Received], root_parent: &str) -> bool {
    let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    spans
        .iter()
        .filter(|s| !ids.contains(&s.parent.as_str()))
        .all(|s| s.parent == root_parent)
        && spans.iter().filter(|s| s.parent == root_parent).count() == 1
}

/// The first span of `service` whose parent is `parent` and whose name passes `named`.
fn child<'a>(
    spans: &'a [Received],
    parent: &Received,
    service: &str,
    named: impl Fn(&str) -> bool,
) -> Option<&'a Received> {
    spans
        .iter()
        .find(|s| s.parent == parent.span_id && s.service == service && named(&s.name))
}

/// The trace id the gateway logged for the request with `request_id`.
fn logged_trace_id(platform: &TestPlatform, request_id: &str) -> anyhow::Result<Option<String>> {
    for process in platform.processes("gateway") {
        let text = std::fs::read_to_string(&process.log)?;
        for line in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            if line["span"]["request_id"] == request_id {
                return Ok(line["span"]["trace_id"].as_str().map(str::to_owned));
            }
        }
    }
    Ok(None)
}

#[tokio::test]
async fn otlp_export_sends_one_linked_trace_from_gateway_through_orders_and_the_coordinator_to_books()
-> anyhow::Result<()> {
    let receiver = Receiver::start().await?;
    let platform = TestPlatform::start_with(
        bookstore(),
        &[
            ("BOOKSTORE_NO_DEMO", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
            // Export every 100 ms instead of every 5 s: the test waits less.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    )
    .await?;
    let mut shop = Shop::open(platform).await?;
    let book = shop.book(5, 1_000).await?;
    let customer = shop.customer(10_000).await?;

    // A checkout under the client's own trace: the gateway's span is the child of the client's.
    let trace_id = unique_trace_id()?;
    let client_span = format!("{:016x}", u64::from(std::process::id()).max(1) << 8);
    committed_checkout(
        &shop,
        &customer,
        &book,
        &format!("00-{trace_id}-{client_span}-01"),
    )
    .await?;

    let chain = |spans: &[Received]| -> Option<[Received; 4]> {
        let gateway = spans
            .iter()
            .find(|s| s.service == "gateway" && s.parent == client_span)?;
        let orders = child(spans, gateway, "orders", |n| n.contains("/api/checkout"))?;
        let coordinator = child(spans, orders, "coordinator", |_| true)?;
        let books = child(spans, coordinator, "books", |n| {
            n.contains("/internal/2pc/")
        })?;
        Some([
            gateway.clone(),
            orders.clone(),
            coordinator.clone(),
            books.clone(),
        ])
    };
    let spans = wait_for_trace(&receiver, &trace_id, |spans| {
        chain(spans).is_some() && linked(spans, &client_span)
    })
    .await?;
    let [gateway, orders, coordinator, books] = chain(&spans).expect("waited for it");
    assert!(
        matches!(gateway.status_code, Some(201 | 202)),
        "{gateway:?}"
    );
    for span in [&gateway, &orders, &coordinator, &books] {
        assert_eq!(span.kind, SpanKind::Server as i32, "{span:?}");
        assert!(span.name.starts_with("POST /"), "{span:?}");
    }
    // The same trace id is the one the JSON logs carry (the gateway logged it under the checkout).
    let gateway_log = std::fs::read_to_string(&shop.platform.processes("gateway")[0].log)?;
    assert!(gateway_log.contains(&format!("\"trace_id\":\"{trace_id}\"")));

    // A request without `traceparent`: the gateway starts the trace, its span is the root, and the
    // trace id is the one it logged for the request.
    let request_id = format!("otlp-root-{trace_id}");
    shop.client
        .get(format!("{}/api/books/{book}", shop.gateway))
        .header("x-request-id", &request_id)
        .send()
        .await?
        .error_for_status()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let started = loop {
        if let Some(id) = logged_trace_id(&shop.platform, &request_id)? {
            break id;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no log line for {request_id}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let spans = wait_for_trace(&receiver, &started, |spans| {
        linked(spans, "") && spans.iter().any(|s| s.service == "books")
    })
    .await?;
    let root = spans.iter().find(|s| s.parent.is_empty()).expect("linked");
    assert_eq!(root.service, "gateway", "{spans:#?}");
    assert!(
        child(&spans, root, "books", |n| n.starts_with("GET /")).is_some(),
        "{spans:#?}"
    );

    // Every process exported under its own name, and every export request decoded.
    let services: HashMap<String, usize> =
        receiver.spans().iter().fold(HashMap::new(), |mut seen, s| {
            *seen.entry(s.service.clone()).or_default() += 1;
            seen
        });
    for name in ["gateway", "orders", "coordinator", "books", "discovery"] {
        assert!(
            services.contains_key(name),
            "no span from {name}: {services:?}"
        );
    }
    assert!(
        receiver.lock().garbled.is_empty(),
        "{:?}",
        receiver.lock().garbled
    );
    Ok(())
}
