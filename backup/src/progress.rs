//! Progress for a person at a terminal; nothing under CI, `--quiet` or when stderr is not a TTY.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether progress (and chatty notes) should be drawn.
pub fn visible(quiet: bool) -> bool {
    !quiet
        && std::env::var_os("CI").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// A spinner showing bytes written and a message; hidden when `visible` is false.
pub fn spinner(visible: bool) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if !visible {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {prefix} {bytes} ({binary_bytes_per_sec}) {wide_msg} [{elapsed}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A note for the person running the command (stderr), unless quiet.
pub fn note(quiet: bool, text: &str) {
    if !quiet {
        eprintln!("{text}");
    }
}
