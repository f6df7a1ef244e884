//! Structured JSON logs. Every line carries the current span, so lines logged while serving a request
//! carry its `request_id` and `trace_id`.
//!
//! Lines are written by a background thread (`tracing-appender`, lossless: a full queue makes the
//! logging thread wait, it never drops a line), so a request does not pay for the `write(2)` and the
//! stdout lock. [`flush`] drains the queue and switches back to writing directly; it runs on its own
//! when the runtime that called [`init`] shuts down (at the end of `main`, after the last line of
//! the process was logged), and may be called before any other exit.

use std::cell::RefCell;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, UNIX_EPOCH};

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Initialises logging once: JSON lines on stdout, level from `RUST_LOG` (default `info`).
/// `BOOKSTORE_LOG_FORMAT=pretty` gives human-readable lines for local debugging.
pub fn init() {
    init_logs(None);
}

/// [`init`] for a component's process: also exports its spans as `service` over OTLP when an
/// endpoint is configured (the environment or `file`'s `telemetry` section, see [`crate::otlp`]).
pub fn init_service(service: &str, file: Option<&Path>) {
    init_logs(Some((service, file)));
}

fn init_logs(service: Option<(&str, Option<&Path>)>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,sqlx=warn,hyper=warn,reqwest=warn,h2=warn,tower_http=warn")
    });
    let pretty = std::env::var("BOOKSTORE_LOG_FORMAT").is_ok_and(|v| v == "pretty");
    let registry = tracing_subscriber::registry().with(filter);
    let result = if pretty {
        registry
            .with(
                fmt::layer()
                    .event_format(Readable(fmt::format().with_target(false)))
                    .with_writer(Stdout),
            )
            .with(service.and_then(|(name, file)| crate::otlp::layer(name, file)))
            .try_init()
    } else {
        registry
            .with(service.and_then(|(name, file)| crate::otlp::layer(name, file)))
            .with(fmt::layer().event_format(JsonLine).with_writer(Stdout))
            .try_init()
    };
    // Already initialised (several apps in one test process): keep the first subscriber, and its
    // writer as it is.
    if result.is_ok() {
        start_background_writer();
    }
}

/// One event as one JSON line: `timestamp`, `level`, the event's fields (`message` first), `target`
/// and, inside a request, `span` with the request's method, path, request id and trace id (from
/// its [`crate::trace::Scope`]):
///
/// `{"timestamp":"…Z","level":"INFO","message":"request served","status":200,"latency_ms":0.41,
/// "target":"platform::server","span":{"method":"GET","path":"/api/books","request_id":"…",
/// "trace_id":"…","name":"request"}}`
///
/// The shape of tracing-subscriber's JSON format (flattened event, current span), written
/// directly: that format keeps a span's fields as JSON text and parses it back for every line.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        write_timestamp(&mut writer, std::time::SystemTime::now())?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        let mut fields = JsonFields {
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        json_string(&mut writer, meta.target())?;
        crate::trace::with_current(|scope| {
            writer.write_str(",\"span\":{\"method\":")?;
            json_string(&mut writer, scope.method())?;
            writer.write_str(",\"path\":")?;
            json_string(&mut writer, scope.path())?;
            writer.write_str(",\"request_id\":")?;
            json_string(&mut writer, scope.request_id())?;
            writer.write_str(",\"trace_id\":")?;
            json_string(&mut writer, scope.trace_id())?;
            writer.write_str(",\"name\":\"request\"}")
        })
        .unwrap_or(Ok(()))?;
        writer.write_str("}\n")
    }
}

/// `BOOKSTORE_LOG_FORMAT=pretty`: tracing-subscriber's readable line, after the request's method,
/// path and ids when it is written inside a request (there is no span to show them otherwise).
struct Readable<F>(F);

impl<S, N, F> FormatEvent<S, N> for Readable<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        crate::trace::with_current(|scope| {
            write!(
                writer,
                "[{} {} request_id={} trace_id={}] ",
                scope.method(),
                scope.path(),
                scope.request_id(),
                scope.trace_id()
            )
        })
        .unwrap_or(Ok(()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Writes each field of an event as `,"name":value` (numbers and booleans as JSON values,
/// anything else as a string).
struct JsonFields<'a, W> {
    out: &'a mut W,
    result: std::fmt::Result,
}

impl<W: std::fmt::Write> JsonFields<'_, W> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut W) -> std::fmt::Result) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let name = field.name();
        self.result = (|| {
            self.out.write_char(',')?;
            json_string(self.out, name.strip_prefix("r#").unwrap_or(name))?;
            self.out.write_char(':')?;
            value(self.out)
        })();
    }
}

impl<W: std::fmt::Write> Visit for JsonFields<'_, W> {
    // Numbers through `ryu` and `itoa` (as serde_json writes them): `core::fmt` pads and
    // dispatches for every number, and each access line has two.
    fn record_f64(&mut self, field: &Field, value: f64) {
        if value.is_finite() {
            self.field(field, |out| {
                out.write_str(ryu::Buffer::new().format_finite(value))
            });
        } else {
            self.field(field, |out| out.write_str("null"));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |out| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |out| json_string(out, value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.field(field, |out| json_display(out, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.field(field, |out| {
            out.write_char('"')?;
            write!(Escaped(out), "{value:?}")?;
            out.write_char('"')
        });
    }
}

/// `value` as a JSON string.
fn json_string(out: &mut impl std::fmt::Write, value: &str) -> std::fmt::Result {
    out.write_char('"')?;
    Escaped(out).write_str(value)?;
    out.write_char('"')
}

/// `value`'s `Display` as a JSON string, escaped as it is written (no intermediate `String`).
fn json_display(out: &mut impl std::fmt::Write, value: &dyn std::fmt::Display) -> std::fmt::Result {
    out.write_char('"')?;
    write!(Escaped(out), "{value}")?;
    out.write_char('"')
}

/// `time` as tracing-subscriber's `SystemTime` timer writes it — RFC 3339 in UTC with microseconds,
/// `2026-12-05T06:01:02.123456Z` — with everything up to the second formatted once per second and
/// thread: formatting the whole of it for every line cost a quarter of an access line.
fn write_timestamp(
    out: &mut impl std::fmt::Write,
    time: std::time::SystemTime,
) -> std::fmt::Result {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since_epoch.as_secs();
    // Not cached when the thread-local is gone (a line logged while the thread exits) or in use
    // (a line logged while one is being written): such a line is formatted in full.
    let from_cache = SECOND
        .try_with(|second| {
            let mut second = second.try_borrow_mut().ok()?;
            let (cached, text) = &mut *second;
            if *cached != seconds {
                text.clear();
                write_second(text, seconds).ok()?;
                *cached = seconds;
            }
            Some(out.write_str(text))
        })
        .ok()
        .flatten();
    match from_cache {
        Some(written) => written?,
        None => write_second(out, seconds)?,
    }
    let mut fraction = *b".000000Z";
    let mut micros = since_epoch.subsec_micros();
    for digit in fraction[1..7].iter_mut().rev() {
        *digit = b'0' + (micros % 10) as u8;
        micros /= 10;
    }
    out.write_str(std::str::from_utf8(&fraction).map_err(|_| std::fmt::Error)?)
}

thread_local! {
    /// The second last written by this thread, and its text (see [`write_timestamp`]).
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// `2026-12-05T06:01:02`: the date and time of `seconds` since the epoch, in UTC.
fn write_second(out: &mut impl std::fmt::Write, seconds: u64) -> std::fmt::Result {
    let utc = i64::try_from(seconds)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .unwrap_or_default();
    write!(out, "{}", utc.format("%Y-%m-%dT%H:%M:%S"))
}

/// Bytes that cannot stand as they are inside a JSON string.
fn needs_escape(b: u8) -> bool {
    (b < 0x20) | (b == b'"') | (b == b'\\')
}

/// Escapes what it is given for the inside of a JSON string.
struct Escaped<'a, W>(&'a mut W);

impl<W: std::fmt::Write> std::fmt::Write for Escaped<'_, W> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        // Almost every string needs no escape: one pass without a branch per byte says so, and
        // the text goes out whole instead of in pieces.
        if !text.bytes().fold(false, |any, b| any | needs_escape(b)) {
            return self.0.write_str(text);
        }
        let mut plain = 0;
        for (i, b) in text.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0..0x20 => "",
                _ => continue,
            };
            self.0.write_str(&text[plain..i])?;
            if escape.is_empty() {
                write!(self.0, "\\u{b:04x}")?;
            } else {
                self.0.write_str(escape)?;
            }
            plain = i + 1;
        }
        self.0.write_str(&text[plain..])
    }
}

/// Writes every queued line and waits for that, then writes later lines directly (synchronously);
/// first sends the spans buffered for OTLP export, if on, and stops it. Idempotent; lines logged
/// while it runs wait for it, so their order is kept and none is lost.
pub fn flush() {
    crate::otlp::shutdown();
    let mut queue = QUEUE.write().unwrap_or_else(PoisonError::into_inner);
    // Dropping the guard makes the worker write what is queued and stop (waiting up to a second).
    drop(queue.take());
}

/// The background writer while it runs; `None` before [`init`] and after [`flush`].
static QUEUE: RwLock<Option<(NonBlocking, WorkerGuard)>> = RwLock::new(None);

fn start_background_writer() {
    let (queue, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("log-writer")
        .finish(Batches(BufWriter::with_capacity(64 * 1024, io::stdout())));
    *QUEUE.write().unwrap_or_else(PoisonError::into_inner) = Some((queue, guard));
    flush_when_the_runtime_stops();
}

/// `main` returns after its runtime has stopped, and the runtime drops every task when it stops:
/// a task that never ends, holding a [`FlushOnDrop`], flushes after the process's last line.
fn flush_when_the_runtime_stops() {
    struct FlushOnDrop;

    impl Drop for FlushOnDrop {
        fn drop(&mut self) {
            flush();
        }
    }

    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let flush = FlushOnDrop;
        runtime.spawn(async move {
            let _flush = flush;
            std::future::pending::<()>().await;
        });
    }
}

/// How long the worker waits after writing a batch before it takes the next one.
const LINGER: Duration = Duration::from_millis(5);

/// The worker's output. The worker flushes whenever it has emptied its queue; the flush writes
/// the batch (one `write(2)` for every line that piled up) and then lingers a little. Under load,
/// lines logged meanwhile just queue up, without waking the worker for each one, and go out in the
/// next batch; a line logged while the process is idle still goes out at once.
struct Batches(BufWriter<io::Stdout>);

impl Write for Batches {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        let result = self.0.flush();
        std::thread::sleep(LINGER);
        result
    }
}

/// The subscriber's writer: the queue while the background writer runs, else stdout directly.
struct Stdout;

impl<'a> MakeWriter<'a> for Stdout {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter(QUEUE.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Writes one formatted line. Holding the read lock keeps [`flush`] from stopping the worker
/// between the choice of destination and the write.
struct LineWriter(RwLockReadGuard<'static, Option<(NonBlocking, WorkerGuard)>>);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &*self.0 {
            Some((queue, _)) => queue.clone().write(buf),
            None => io::stdout().write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &*self.0 {
            Some((queue, _)) => queue.clone().write_all(buf),
            None => io::stdout().write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &*self.0 {
            Some(_) => Ok(()),
            None => io::stdout().flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::extract::Request;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::server::{REQUEST_ID, TRACEPARENT};
    use crate::trace::ScopeLayer;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            let bytes = self
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            String::from_utf8(bytes).expect("utf-8 lines")
        }
    }

    /// Lines formatted by `format` go to the returned buffer while the guard lives (this thread).
    fn capture<F>(format: F) -> (Captured, tracing::subscriber::DefaultGuard)
    where
        F: FormatEvent<tracing_subscriber::Registry, fmt::format::DefaultFields>
            + Send
            + Sync
            + 'static,
    {
        let captured = Captured::default();
        let layer = fmt::layer()
            .event_format(format)
            .with_ansi(false)
            .with_writer(captured.clone());
        let guard = tracing::subscriber::set_default(tracing_subscriber::registry().with(layer));
        (captured, guard)
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Odd;

    impl std::fmt::Display for Odd {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("tab\there \"quoted\" \u{1}")
        }
    }

    impl std::error::Error for Odd {}

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[tokio::test]
    async fn lines_are_json_with_typed_fields_and_the_requests_span_inside_a_request() {
        let (captured, _default) = capture(JsonLine);

        tracing::warn!(
            r#type = "plain",
            count = 3u64,
            ratio = 0.5,
            ok = true,
            "outside"
        );
        let handler = tower::service_fn(|_: Request| async {
            let error: &(dyn std::error::Error + 'static) = &Odd;
            tracing::info!(detail = %Odd, error, list = ?["a\"b"], "inside \"a\" request");
            Ok::<_, std::convert::Infallible>(())
        });
        let request = Request::builder()
            .method("POST")
            .uri("/api/checkout?x=1")
            .header(TRACEPARENT, PARENT)
            .header(REQUEST_ID, "req-7")
            .body(axum::body::Body::empty())
            .expect("a request");
        ScopeLayer
            .layer(handler)
            .oneshot(request)
            .await
            .expect("infallible");

        let text = captured.text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("every line is JSON"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let outside = &lines[0];
        assert_eq!(outside["level"], "WARN");
        assert_eq!(outside["message"], "outside");
        assert_eq!(outside["type"], "plain");
        assert_eq!(outside["count"], 3);
        assert_eq!(outside["ratio"], 0.5);
        assert_eq!(outside["ok"], true);
        assert!(
            outside["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("platform"))
        );
        assert!(
            outside["timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z'))
        );
        assert!(outside.get("span").is_none(), "{outside}");

        let inside = &lines[1];
        assert_eq!(inside["level"], "INFO");
        assert_eq!(inside["message"], "inside \"a\" request");
        assert_eq!(inside["detail"], "tab\there \"quoted\" \u{1}");
        assert_eq!(inside["error"], "tab\there \"quoted\" \u{1}");
        assert_eq!(inside["list"], "[\"a\\\"b\"]");
        assert_eq!(
            inside["span"],
            serde_json::json!({
                "method": "POST",
                "path": "/api/checkout",
                "request_id": "req-7",
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "name": "request",
            })
        );
    }

    #[tokio::test]
    async fn api_requests_get_one_access_line_with_status_latency_and_span_and_probes_none() {
        use axum::Router;
        use axum::routing::get;
        use http::StatusCode;

        let (captured, _default) = capture(JsonLine);
        let api = Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route("/broken", get(|| async { StatusCode::BAD_GATEWAY }));
        let app = crate::server::with_standard_layers(
            api,
            crate::server::always_ready(),
            Arc::default(),
            &crate::server::HttpConfig::default(),
        );
        for path in ["/ok", "/broken", "/health/live"] {
            let request = Request::builder()
                .uri(path)
                .body(axum::body::Body::empty())
                .expect("a request");
            app.clone().oneshot(request).await.expect("infallible");
        }

        let text = captured.text();
        let served: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("JSON"))
            .filter(|line| line["message"] == "request served")
            .collect();
        assert_eq!(served.len(), 2, "{text}");
        let (ok, broken) = (&served[0], &served[1]);
        assert_eq!(
            (ok["status"].as_u64(), ok["level"].as_str()),
            (Some(200), Some("INFO"))
        );
        assert_eq!(
            (broken["status"].as_u64(), broken["level"].as_str()),
            (Some(502), Some("WARN"))
        );
        assert!(
            ok["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
            "{ok}"
        );
        // In whole microseconds, as written: at most three decimals.
        for line in text.lines().filter(|line| line.contains("request served")) {
            let number = line
                .split("\"latency_ms\":")
                .nth(1)
                .and_then(|rest| rest.split([',', '}']).next())
                .unwrap_or_default();
            let decimals = number
                .split_once('.')
                .map_or(0, |(_, fraction)| fraction.len());
            assert!(!number.is_empty() && decimals <= 3, "{line}");
        }
        assert_eq!(ok["span"]["path"], "/ok");
        assert_eq!(broken["span"]["path"], "/broken");
        for line in [ok, broken] {
            // The server gave the request an id and a trace; the line carries both.
            assert_eq!(
                line["span"]["request_id"].as_str().map(str::len),
                Some(36),
                "{line}"
            );
            assert_eq!(
                line["span"]["trace_id"].as_str().map(str::len),
                Some(32),
                "{line}"
            );
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds_across_seconds() {
        // Within one second (the cached prefix), across a second, a minute, a day and a year.
        for (seconds, micros) in [
            (1_764_921_662, 7),
            (1_764_921_662, 999_999),
            (1_764_921_663, 0),
            (1_764_921_719, 123_456),
            (1_764_921_720, 120_000),
            (1_767_225_599, 999_999),
            (1_767_225_600, 1),
            (0, 0),
        ] {
            let time = UNIX_EPOCH + Duration::new(seconds, micros * 1000 + 999);
            let mut text = String::new();
            write_timestamp(&mut text, time).expect("formatted");
            let expected = chrono::DateTime::from_timestamp(seconds as i64, micros * 1000)
                .expect("in range")
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
            assert_eq!(text, expected);
            // The same while the cache is in use (a line written while another one is).
            let uncached = SECOND.with_borrow_mut(|_| {
                let mut text = String::new();
                write_timestamp(&mut text, time).map(|()| text)
            });
            assert_eq!(uncached.as_deref(), Ok(expected.as_str()));
        }
    }

    #[test]
    fn strings_are_escaped_wherever_the_special_byte_is() {
        for text in [
            "plain",
            "",
            "\"",
            "a\\",
            "\u{1f}x",
            "é\nz",
            "tab\tin the middle",
        ] {
            let mut out = String::new();
            json_string(&mut out, text).expect("written");
            let back: String = serde_json::from_str(&out).expect("valid JSON");
            assert_eq!(back, text, "{out}");
        }
    }

    #[tokio::test]
    async fn readable_lines_name_the_request_they_were_written_in() {
        let (captured, _default) =
            capture(Readable(fmt::format().with_target(false).without_time()));
        tracing::info!("outside");
        let handler = tower::service_fn(|_: Request| async {
            tracing::info!("inside");
            Ok::<_, std::convert::Infallible>(())
        });
        let request = Request::builder()
            .uri("/api/books")
            .header(TRACEPARENT, PARENT)
            .header(REQUEST_ID, "req-9")
            .body(axum::body::Body::empty())
            .expect("a request");
        ScopeLayer
            .layer(handler)
            .oneshot(request)
            .await
            .expect("infallible");
        let text = captured.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with("outside") && !lines[0].contains('['),
            "{text}"
        );
        assert!(
            lines[1].starts_with(
                "[GET /api/books request_id=req-9 trace_id=4bf92f3577b34da6a3ce929d0e0e4736] "
            ) && lines[1].ends_with("inside"),
            "{text}"
        );
    }
}
