//! Bounded waiting: every await in a test goes through [`within`], and
//! conditions are polled with [`eventually`] rather than slept for.

use std::future::Future;
use std::time::Duration;

/// Deadline used when a test does not name one.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);

/// Awaits `fut` for at most `limit`, failing with `what` in the message.
pub async fn within<T, F: Future<Output = T>>(
    limit: Duration,
    what: &str,
    fut: F,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            anyhow::bail!("condition not met within {limit:?}: {what}");
        }
        if let Ok(Some(value)) = tokio::time::timeout(remaining, check()).await {
            return Ok(value);
        }
        tokio::time::sleep(Duration::from_millis(20).min(remaining)).await;
    }
}
