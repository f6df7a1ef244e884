//! The launcher's own signal handling: SIGTERM or SIGINT (Ctrl-C) start an orderly stop.

/// Resolves on the first SIGTERM or SIGINT.
pub async fn wait() {
    platform::shutdown::wait_for_signal().await;
}
