//! Optional export of spans over OTLP/HTTP (protobuf) to a collector. Off unless an endpoint is
//! configured — `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), or the
//! config key `telemetry.otlp_endpoint` — and then free: no layer is installed, and the request
//! path only reads one flag.
//!
//! When on, every request span becomes an OpenTelemetry server span in the trace its `traceparent`
//! names, so the collector's trace ids are the ones the JSON logs carry; calls to other components
//! send the current span's id as their parent id (see `trace::child_of`), which links the next
//! process's span under it.

use std::cell::Cell;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use http::{HeaderValue, StatusCode};
use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;

use crate::server::TRACEPARENT;

/// The `telemetry` section of any component's config file (`BOOKSTORE_TELEMETRY__…`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TelemetryConfig {
    /// Base URL of an OTLP/HTTP receiver (e.g. `http://collector:4318`; `/v1/traces` is added).
    /// Wins over `OTEL_EXPORTER_OTLP_ENDPOINT`; unset (and no such variable): no export.
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Settings {
    telemetry: TelemetryConfig,
}

/// Whether spans are exported; read on every request, so an atomic flag and nothing else.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The provider, kept to flush and stop it at exit.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Whether this process exports spans.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The OpenTelemetry layer for `service`, when export is configured (from `file` and the
/// environment, as the component will read its own config); `None` costs nothing. A setting that
/// cannot be used is logged to stderr and leaves export off: traces are never worth not starting.
pub fn layer<S>(service: &str, file: Option<&Path>) -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let endpoint = match endpoint(file) {
        Ok(endpoint) => endpoint?,
        Err(e) => {
            eprintln!("OTLP export stays off: {e:#}");
            return None;
        }
    };
    let provider = match provider(service, endpoint.as_deref()) {
        Ok(provider) => provider,
        Err(e) => {
            eprintln!("OTLP export stays off: {e:#}");
            return None;
        }
    };
    let tracer = provider.tracer(service.to_owned());
    if PROVIDER.set(provider).is_err() {
        return None; // a second init in one process keeps the first subscriber, and exporter
    }
    ENABLED.store(true, Ordering::Relaxed);
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

/// `Ok(None)`: export off. `Ok(Some(None))`: on, the exporter reads the standard variables.
/// `Ok(Some(Some(url)))`: on, to the configured receiver.
fn endpoint(file: Option<&Path>) -> anyhow::Result<Option<Option<String>>> {
    let standard_off =
        env_is("OTEL_SDK_DISABLED", "true") || env_is("OTEL_TRACES_EXPORTER", "none");
    if standard_off {
        return Ok(None);
    }
    let settings: Settings = crate::config::load(file)?;
    if let Some(base) = settings
        .telemetry
        .otlp_endpoint
        .filter(|s| !s.trim().is_empty())
    {
        return Ok(Some(Some(format!(
            "{}/v1/traces",
            base.trim().trim_end_matches('/')
        ))));
    }
    let from_env = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|v| !v.trim().is_empty()));
    Ok(from_env.then_some(None))
}

fn env_is(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value))
}

fn provider(service: &str, endpoint: Option<&str>) -> anyhow::Result<SdkTracerProvider> {
    for name in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        if std::env::var(name).is_ok_and(|v| v != "http/protobuf") {
            eprintln!(
                "{name} is ignored: spans go out as http/protobuf (the collector's port 4318)"
            );
        }
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary);
    if let Some(endpoint) = endpoint {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter.build()?;
    // `OTEL_RESOURCE_ATTRIBUTES` is read too; the component decides `service.name`, so that every
    // process of one `up` (which share an environment) is told apart.
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new("process.pid", i64::from(std::process::id())))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_id_generator(Ids::default())
        .with_resource(resource)
        .build())
}

/// Sends what is buffered and stops the exporter (waiting a few seconds at most). Idempotent.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get()
        && ENABLED.swap(false, Ordering::Relaxed)
        && let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5))
    {
        eprintln!("OTLP export did not finish: {e}");
    }
}

thread_local! {
    /// The trace id the next root span on this thread takes (see [`Ids`]).
    static PRESET_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Random ids, except that a root span started while a trace id is preset takes it: a request
/// that arrives without `traceparent` gets its trace id from the server before its span exists,
/// and the span must be the root of that trace, not the child of a parent nobody exported.
#[derive(Debug, Default)]
struct Ids(RandomIdGenerator);

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        PRESET_TRACE_ID
            .take()
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// Marks a request whose `traceparent` the server started (none valid arrived): its span is the
/// trace's root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StartedHere;

/// Puts a request's span into the trace of its `traceparent`: the child of the caller's span,
/// or the root when the trace starts here. Names it `METHOD route` as a server span.
pub(crate) fn continue_request(span: &tracing::Span, request: &Request) {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", |m| m.as_str());
    span.record(
        "otel.name",
        format!("{} {route}", request.method()).trim_end(),
    );
    span.record("otel.kind", "server");
    let Some(incoming) = request
        .headers()
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse)
    else {
        return;
    };
    if request.extensions().get::<StartedHere>().is_some() {
        let _ = span.set_parent(Context::new());
        PRESET_TRACE_ID.set(Some(incoming.trace_id()));
        // Starts the span now, on this thread, so it takes the preset id.
        let _ = span.context();
        PRESET_TRACE_ID.set(None);
    } else {
        let _ = span.set_parent(Context::new().with_remote_span_context(incoming));
    }
}

/// Records the answer's status on a request's span; a 5xx marks it failed.
pub(crate) fn record_status(span: &tracing::Span, status: StatusCode) {
    span.set_attribute("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set_status(Status::error(status.to_string()));
    }
}

/// The `traceparent` for a call made now, naming the current span as the parent, if export is on
/// and that span belongs to `trace_id` (the trace the request carries).
pub(crate) fn traceparent_from_current_span(trace_id: &str) -> Option<HeaderValue> {
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    let span = context.span();
    let current = span.span_context();
    let matches = current.is_valid() && format!("{:032x}", current.trace_id()) == trace_id;
    matches
        .then(|| {
            format!(
                "00-{:032x}-{:016x}-{:02x}",
                current.trace_id(),
                current.span_id(),
                current.trace_flags().to_u8()
            )
        })
        .and_then(|v| HeaderValue::try_from(v).ok())
}

/// The remote span context a version-00 `traceparent` names.
fn parse(traceparent: &str) -> Option<SpanContext> {
    let trace_id = crate::server::trace_id_of(traceparent)?;
    let mut parts = traceparent.split('-').skip(2);
    let (parent, flags) = (parts.next()?, parts.next()?);
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(parent).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_names_a_remote_sampled_parent() {
        let context = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .expect("a span context");
        assert_eq!(
            format!("{:032x}", context.trace_id()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(format!("{:016x}", context.span_id()), "00f067aa0ba902b7");
        assert!(context.is_sampled() && context.is_remote());
        // An all-zero parent id is invalid (W3C): no parent rather than a broken one.
        assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01").is_none());
        assert!(parse("garbage").is_none());
    }

    #[test]
    fn a_preset_trace_id_is_taken_once_by_the_next_root() {
        let ids = Ids::default();
        let preset = TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128);
        PRESET_TRACE_ID.set(Some(preset));
        assert_eq!(ids.new_trace_id(), preset);
        assert_ne!(ids.new_trace_id(), preset);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail fixes the closure's error type
    fn export_follows_the_standard_variables_and_the_config_key() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            let on = |file: Option<&Path>| endpoint(file).expect("settings");
            assert_eq!(on(None), None, "nothing set: off");
            jail.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318");
            assert_eq!(on(None), Some(None), "the exporter reads the variable");
            jail.create_file(
                "component.toml",
                "[telemetry]\notlp_endpoint = \"http://collector:4318/\"\n",
            )?;
            let file = Path::new("component.toml");
            assert_eq!(
                on(Some(file)),
                Some(Some("http://collector:4318/v1/traces".into())),
                "the config key wins"
            );
            jail.set_env("OTEL_SDK_DISABLED", "true");
            assert_eq!(on(Some(file)), None, "the standard switch turns it off");
            Ok(())
        });
    }
}
