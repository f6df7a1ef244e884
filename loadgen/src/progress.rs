//! Progress for a person watching: elapsed time, requests and failures so far. Hidden under CI,
//! when stderr is not a terminal, or when asked to be quiet.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(duration: Duration, quiet: bool) -> Progress {
        let hidden = quiet
            || std::env::var_os("CI").is_some()
            || !std::io::IsTerminal::is_terminal(&std::io::stderr());
        let bar = ProgressBar::new(duration.as_secs().max(1));
        if hidden {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} s  {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Progress { bar }
    }

    /// Cheap enough to call per request: indicatif redraws at most a few times a second.
    pub fn tick(&self, elapsed: Duration, (requests, failed): (u64, u64)) {
        self.bar.set_position(elapsed.as_secs());
        if requests % 64 == 0 || failed > 0 {
            self.bar
                .set_message(format!("{requests} requests, {failed} failed"));
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
