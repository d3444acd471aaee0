//! Progress reports: while an attempt runs, its session's [`LiveState`]
//! (pane, last event, current tool, usage so far) goes to the scheduler as
//! `ReportBody::Progress`, so that `colibri status` shows what each agent is
//! doing.
//!
//! The pump wakes the live-state receivers only when the pane, the current
//! tool or the usage change; [`coalesce`] sends the first change at once and
//! then at most one report per [`MIN_INTERVAL`], always the latest state
//! (a `watch` keeps only that). It runs on its own task and the pump never
//! waits for it, so a slow or unreachable NATS cannot hold the agent back.
//! Each report is published once, best effort: the next one supersedes it,
//! and the attempt's `finished` report (sent after this loop has stopped)
//! carries the final word.

use std::future::Future;
use std::time::Duration;

use broker::messages::ReportBody;
use broker::SessionId;
use glasspane::LiveState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::reports::Reporter;

/// Shortest time between two progress reports of one attempt.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// Longest time the board's "last event" of a running agent lags behind,
/// when nothing but the time of its last event changed.
pub const REFRESH: Duration = Duration::from_secs(10);

enum Wake {
    Stop,
    Changed,
    Refresh,
}

/// Longest wait for the stream to acknowledge one progress report.
pub const PUBLISH_LIMIT: Duration = Duration::from_secs(2);

/// Calls `send` with the latest live state whenever it changed, at most once
/// per `every`, until `stop` is cancelled or the session's pump is gone;
/// then once more with the state the session ended in, if that was not sent
/// yet (so the board shows `stopped` or `failed` and the final usage).
pub async fn coalesce<F, Fut>(
    mut live: watch::Receiver<LiveState>,
    every: Duration,
    stop: CancellationToken,
    mut send: F,
) where
    F: FnMut(LiveState) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut sent: Option<LiveState> = None;
    loop {
        let wake = tokio::select! {
            biased;
            () = stop.cancelled() => Wake::Stop,
            changed = live.changed() => if changed.is_ok() { Wake::Changed } else { Wake::Stop },
            () = tokio::time::sleep(REFRESH) => Wake::Refresh,
        };
        match wake {
            Wake::Stop => break,
            Wake::Changed => {}
            Wake::Refresh => {
                // Only the time of the last event may have moved (messages,
                // raw lines): worth a report now and then, not at every line.
                let seen = sent.as_ref().map_or(0, |s| s.last_event_ms);
                if live.borrow().last_event_ms == seen {
                    continue;
                }
            }
        }
        let state = live.borrow_and_update().clone();
        send(state.clone()).await;
        sent = Some(state);
        let open = tokio::select! {
            biased;
            () = stop.cancelled() => false,
            () = tokio::time::sleep(every) => true,
        };
        if !open {
            break;
        }
    }
    let last = live.borrow().clone();
    if sent.is_none_or(|s| !same_report(&s, &last)) {
        send(last).await;
    }
}

/// Whether two states make the same progress report (the pump wakes us on
/// these fields only; `last_event_ms` alone waits for [`REFRESH`]).
fn same_report(a: &LiveState, b: &LiveState) -> bool {
    a.pane == b.pane
        && a.current_tool == b.current_tool
        && a.usage == b.usage
        && a.escalation == b.escalation
        && a.last_event_ms == b.last_event_ms
}

/// Reports `live` for one attempt as `progress` reports until `stop`.
pub async fn report(
    reporter: Reporter,
    attempt: broker::messages::AttemptRef,
    session: SessionId,
    live: watch::Receiver<LiveState>,
    stop: CancellationToken,
) {
    let mut seq = 0u64;
    coalesce(live, MIN_INTERVAL, stop, |state| {
        seq += 1;
        let body = ReportBody::Progress {
            session,
            pane: state.pane.as_str().to_string(),
            last_event_ms: state.last_event_ms,
            current_tool: state.current_tool,
            usage: state.usage,
            seq,
            escalation: state.escalation,
        };
        let report = reporter.report(attempt.task_id, attempt.attempt, body);
        let reporter = reporter.clone();
        async move {
            if let Err(error) = reporter.publish_once(&report, PUBLISH_LIMIT).await {
                debug!(task_id = %report.task_id, attempt = report.attempt, seq, %error, "progress report not stored; the next one supersedes it");
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::messages::session::Pane;
    use std::sync::{Arc, Mutex};

    /// Ten changes in a burst become two reports: the first at once, the
    /// latest one interval later.
    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_coalesced_to_the_latest() {
        let (tx, rx) = watch::channel(LiveState::default());
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let log = sent.clone();
        let task = tokio::spawn(coalesce(rx, MIN_INTERVAL, stop.clone(), move |s| {
            if let Ok(mut v) = log.lock() {
                v.push((s.pane, s.current_tool.clone()));
            }
            async {}
        }));
        tx.send_modify(|s| s.pane = Pane::Running);
        tokio::time::sleep(Duration::from_millis(10)).await;
        for i in 0..10 {
            tx.send_modify(|s| s.current_tool = Some(format!("tool{i}")));
        }
        tokio::time::sleep(MIN_INTERVAL * 3).await;
        stop.cancel();
        task.await.expect("coalescing task ends");
        let sent = sent.lock().expect("not poisoned").clone();
        assert_eq!(
            sent,
            vec![
                (Pane::Running, None),
                (Pane::Running, Some("tool9".to_string()))
            ]
        );
    }

    /// Lines that change nothing but the time of the last event still
    /// reach the board, within [`REFRESH`].
    #[tokio::test(start_paused = true)]
    async fn the_last_event_time_is_refreshed_without_other_changes() {
        let (tx, rx) = watch::channel(LiveState::default());
        let sent = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let log = sent.clone();
        let task = tokio::spawn(coalesce(rx, MIN_INTERVAL, stop.clone(), move |s| {
            if let Ok(mut v) = log.lock() {
                v.push(s.last_event_ms);
            }
            async {}
        }));
        tx.send_modify(|s| {
            s.pane = Pane::Running;
            s.last_event_ms = 1;
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A message: the pump does not wake the receivers for it.
        tx.send_if_modified(|s| {
            s.last_event_ms = 2;
            false
        });
        tokio::time::sleep(REFRESH * 3).await;
        stop.cancel();
        task.await.expect("coalescing task ends");
        let sent = sent.lock().expect("not poisoned").clone();
        assert_eq!(sent, vec![1, 2], "one refresh, then nothing new to say");
    }

    /// The state the session ended in is reported even when it changed
    /// within the interval after the previous report.
    #[tokio::test(start_paused = true)]
    async fn the_final_state_is_flushed_when_the_pump_ends() {
        let (tx, rx) = watch::channel(LiveState::default());
        let sent = Arc::new(Mutex::new(Vec::new()));
        let log = sent.clone();
        let task = tokio::spawn(coalesce(
            rx,
            MIN_INTERVAL,
            CancellationToken::new(),
            move |s| {
                if let Ok(mut v) = log.lock() {
                    v.push(s.pane);
                }
                async {}
            },
        ));
        tx.send_modify(|s| s.pane = Pane::Running);
        tokio::time::sleep(Duration::from_millis(10)).await;
        tx.send_modify(|s| s.pane = Pane::Stopped);
        drop(tx);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("ends without a stop")
            .expect("does not panic");
        let sent = sent.lock().expect("not poisoned").clone();
        assert_eq!(sent, vec![Pane::Running, Pane::Stopped]);
    }
}
