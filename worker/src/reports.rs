//! At-least-once reports to the scheduler: each report goes through
//! JetStream on `colibri.task.<task>.report` with `Nats-Msg-Id` set to
//! [`Report::msg_id`], and is published again, with backoff, until the
//! server acknowledges it. A retried publish is deduplicated by the stream,
//! so retrying is always safe; a report is never dropped.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use backon::{ExponentialBuilder, Retryable};
use broker::messages::{encode, Report, ReportBody};
use broker::{subjects, TaskId, WorkerId};
use tracing::{debug, warn};

/// Bound on one publish try (send plus acknowledgement).
const TRY_TIMEOUT: Duration = Duration::from_secs(5);

/// Publishes one worker process's reports.
#[derive(Clone, Debug)]
pub struct Reporter {
    js: jetstream::Context,
    worker: WorkerId,
    incarnation: uuid::Uuid,
}

#[derive(Debug, thiserror::Error)]
enum TryError {
    #[error("publish: {0}")]
    Publish(String),
    #[error("no acknowledgement within {0:?}")]
    Timeout(Duration),
}

impl Reporter {
    pub fn new(js: jetstream::Context, worker: WorkerId, incarnation: uuid::Uuid) -> Reporter {
        Reporter {
            js,
            worker,
            incarnation,
        }
    }

    /// A report of this worker about `task`'s attempt.
    pub fn report(&self, task: TaskId, attempt: u32, body: ReportBody) -> Report {
        Report {
            v: broker::WIRE_VERSION,
            task_id: task,
            attempt,
            worker: self.worker.clone(),
            incarnation: self.incarnation,
            at_ms: broker::time_ms::now_ms(),
            body,
        }
    }

    /// Publishes `report` until the stream has it (retries forever, backing
    /// off up to 2 s; the caller bounds the wait at shutdown).
    pub async fn publish(&self, report: &Report) {
        let subject = subjects::task_report(&report.task_id, &report.worker);
        let payload = encode(report);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", report.msg_id().as_str());
        let once = || {
            let (subject, payload, headers) = (subject.clone(), payload.clone(), headers.clone());
            async move {
                let ack = self
                    .js
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| TryError::Publish(e.to_string()))?;
                match tokio::time::timeout(TRY_TIMEOUT, ack).await {
                    Ok(Ok(ack)) => Ok(ack),
                    Ok(Err(e)) => Err(TryError::Publish(e.to_string())),
                    Err(_) => Err(TryError::Timeout(TRY_TIMEOUT)),
                }
            }
        };
        let policy = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times();
        let result = once
            .retry(policy)
            .notify(|error: &TryError, after: Duration| {
                warn!(task_id = %report.task_id, attempt = report.attempt, kind = report.body.kind(), %error,
                    retry_in_ms = after.as_millis() as u64, "report not acknowledged; retrying");
            })
            .await;
        if let Ok(ack) = result {
            debug!(task_id = %report.task_id, attempt = report.attempt, kind = report.body.kind(),
                seq = ack.sequence, duplicate = ack.duplicate, "report stored");
        }
    }

    /// Publishes `report` once, waiting at most `limit` for the stream's
    /// acknowledgement: for `progress` reports, which the next one
    /// supersedes, so a lost one is not worth a retry (and a retry could
    /// land after the attempt's `finished`).
    pub async fn publish_once(&self, report: &Report, limit: Duration) -> Result<(), String> {
        let subject = subjects::task_report(&report.task_id, &report.worker);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", report.msg_id().as_str());
        let sent = async {
            let ack = self
                .js
                .publish_with_headers(subject, headers, encode(report))
                .await
                .map_err(|e| e.to_string())?;
            ack.await.map(|_| ()).map_err(|e| e.to_string())
        };
        match tokio::time::timeout(limit, sent).await {
            Ok(result) => result,
            Err(_) => Err(TryError::Timeout(limit).to_string()),
        }
    }
}
