//! One shutdown signal for the whole process, and a bounded grace.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT. Must be called inside a
/// tokio runtime.
pub fn on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let fire = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
        }
        fire.cancel();
    });
    Ok(token)
}

/// Waits for `drain` at most `grace`; logs and returns false when the grace ran out.
pub async fn drain_within<F: Future<Output = ()>>(grace: Duration, drain: F) -> bool {
    match tokio::time::timeout(grace, drain).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "shutdown grace ran out"
            );
            false
        }
    }
}
