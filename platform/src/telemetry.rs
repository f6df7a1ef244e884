//! Structured JSON logs. Every line carries the current span, so lines logged while serving a request
//! carry its `request_id` and `trace_id`.
//!
//! Lines are written by a background thread (`tracing-appender`, lossless: a full queue makes the
//! logging thread wait, it never drops a line), so a request does not pay for the `write(2)` and the
//! stdout lock. [`flush`] drains the queue and switches back to writing directly; it runs on its own
//! when the runtime that called [`init`] shuts down (at the end of `main`, after the last line of
//! the process was logged), and may be called before any other exit.

use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
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
            .with(fmt::layer().with_target(false).with_writer(Stdout))
            .with(service.and_then(|(name, file)| crate::otlp::layer(name, file)))
            .try_init()
    } else {
        registry
            .with(service.and_then(|(name, file)| crate::otlp::layer(name, file)))
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .flatten_event(true)
                    .with_writer(Stdout),
            )
            .try_init()
    };
    // Already initialised (several apps in one test process): keep the first subscriber, and its
    // writer as it is.
    if result.is_ok() {
        start_background_writer();
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
