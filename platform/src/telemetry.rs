//! Structured JSON logs. Every line carries the current span, so lines logged while serving a request
//! carry its `request_id` and `trace_id`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Initialises logging once: JSON lines on stdout, level from `RUST_LOG` (default `info`).
/// `BOOKSTORE_LOG_FORMAT=pretty` gives human-readable lines for local debugging.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,hyper=warn,reqwest=warn,h2=warn,tower_http=warn")
    });
    let pretty = std::env::var("BOOKSTORE_LOG_FORMAT").is_ok_and(|v| v == "pretty");
    let registry = tracing_subscriber::registry().with(filter);
    let result = if pretty {
        registry.with(fmt::layer().with_target(false)).try_init()
    } else {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .flatten_event(true),
            )
            .try_init()
    };
    // Already initialised (several apps in one test process): keep the first subscriber.
    let _ = result;
}
