//! Progress of a run for a person at a terminal (indicatif); silent in CI, when stderr is not a
//! terminal, and in the server (where the logs and metrics say how runs go).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What a run reports as it goes.
pub trait Progress: Send + Sync {
    /// A new step ("dim_book", "fact_sales", …).
    fn stage(&self, name: &str);
    /// `n` more source rows read.
    fn rows(&self, n: u64);
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn stage(&self, _: &str) {}
    fn rows(&self, _: u64) {}
}

/// A spinner with the step, the rows read so far and the rate.
pub struct Bar(ProgressBar);

impl Bar {
    /// Hidden when `CI` is set or stderr is not a terminal.
    pub fn new() -> Bar {
        let hidden = std::env::var_os("CI").is_some()
            || !std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = ProgressBar::new_spinner();
        if hidden {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg}: {human_pos} rows ({per_sec}, {elapsed})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        Bar(bar)
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Default for Bar {
    fn default() -> Self {
        Bar::new()
    }
}

impl Progress for Bar {
    fn stage(&self, name: &str) {
        self.0.set_message(name.to_owned());
    }

    fn rows(&self, n: u64) {
        self.0.inc(n);
    }
}
