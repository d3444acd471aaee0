//! `create-task` (through the scheduler's endpoint, answered once stored)
//! and `intake-task` (through the durable intake stream, with the task id as
//! `Nats-Msg-Id`, so a retried submit never makes two tasks).

use std::time::{Duration, Instant};

use anyhow::anyhow;
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, message::PublishMessage};
use broker::messages::api::CreateTaskReply;
use broker::messages::{encode, TaskSpec};
use broker::subjects::{self, api};

use super::{ApiClient, CliError};

/// Stores `spec` (built and checked by `TaskArgs::to_spec` before connecting).
pub async fn create(api_client: &ApiClient, spec: TaskSpec) -> Result<(), CliError> {
    let reply: CreateTaskReply = api_client.call(api::CREATE_TASK, &spec).await?;
    println!("{}", reply.task_id);
    Ok(())
}

/// How long `intake-task` keeps trying: longer than a stream leader
/// election (5–8 s) with room for a second one.
pub const INTAKE_BUDGET: Duration = Duration::from_secs(30);
/// How long one publish waits for its acknowledgement.
const TRY_TIMEOUT: Duration = Duration::from_secs(5);

/// Submits `spec` (built and checked before connecting) through the intake.
///
/// A stream electing a leader (or without quorum) does not answer, answers
/// "no responders", or answers an error for a few seconds: the same bytes
/// with the same `Nats-Msg-Id` are published again, with backoff, until one
/// is acknowledged or [`INTAKE_BUDGET`] is spent. JetStream drops any copy
/// that did get stored (the duplicate window), so a retry never makes two
/// tasks. Giving up, it says what each try saw.
pub async fn intake(api_client: &ApiClient, spec: TaskSpec) -> Result<(), CliError> {
    let js = jetstream::new(api_client.client.clone());
    let subject = subjects::task_submit(&spec.id);
    let payload = encode(&spec);
    let deadline = Instant::now() + INTAKE_BUDGET;
    let mut seen = Seen::default();
    let mut delay = Duration::from_millis(250);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let publish = PublishMessage::build()
            .payload(payload.clone())
            .message_id(spec.id.to_string())
            .header(broker::HEADER_KIND, "submit");
        let attempt = tokio::time::timeout(TRY_TIMEOUT.min(left), async {
            js.send_publish(subject.clone(), publish).await?.await
        })
        .await;
        match attempt {
            Ok(Ok(ack)) => {
                if ack.duplicate {
                    eprintln!("note: task {} was already submitted", spec.id);
                }
                println!("{}", spec.id);
                return Ok(());
            }
            Ok(Err(e)) if !retryable(e.kind()) => {
                return Err(anyhow!("intake: {e}").into());
            }
            Ok(Err(e)) => seen.add(describe(&e)),
            Err(_) => seen.add(format!(
                "no acknowledgement within {} s",
                TRY_TIMEOUT.min(left).as_secs_f32()
            )),
        }
        if Instant::now() + delay >= deadline {
            return Err(anyhow!(
                "intake: task {id} not acknowledged by the {stream} stream within {budget} s; \
                 {tries} tries with Nats-Msg-Id {id} saw: {what}. A stream electing a leader or \
                 without quorum answers like this; if none is provisioned, start the scheduler \
                 once. Submitting again with --id {id} cannot make a second task",
                id = spec.id,
                stream = broker::provision::INTAKE_STREAM,
                budget = INTAKE_BUDGET.as_secs(),
                tries = seen.tries,
                what = seen,
            )
            .into());
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Whether a publish that failed this way may succeed if sent again: not a
/// message too large for the server, nor a failed expectation.
fn retryable(kind: PublishErrorKind) -> bool {
    !matches!(
        kind,
        PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
    )
}

/// One try's failure in words, the server's own error included.
fn describe(error: &PublishError) -> String {
    match error.kind() {
        PublishErrorKind::StreamNotFound => "no responders (no stream leader answered)".into(),
        _ => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

/// What the tries saw, each distinct outcome with its count, in order.
#[derive(Debug, Default)]
struct Seen {
    tries: u32,
    outcomes: Vec<(String, u32)>,
}

impl Seen {
    fn add(&mut self, outcome: String) {
        self.tries += 1;
        match self.outcomes.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, n)) => *n += 1,
            None => self.outcomes.push((outcome, 1)),
        }
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (outcome, n)) in self.outcomes.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{outcome} ({n}x)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_counts_each_outcome_once_in_order() {
        let mut seen = Seen::default();
        seen.add("no responders (no stream leader answered)".into());
        seen.add("no acknowledgement within 5 s".into());
        seen.add("no responders (no stream leader answered)".into());
        assert_eq!(seen.tries, 3);
        assert_eq!(
            seen.to_string(),
            "no responders (no stream leader answered) (2x); no acknowledgement within 5 s (1x)"
        );
    }

    #[test]
    fn only_a_message_the_server_can_never_take_is_final() {
        assert!(retryable(PublishErrorKind::StreamNotFound));
        assert!(retryable(PublishErrorKind::TimedOut));
        assert!(retryable(PublishErrorKind::Other));
        assert!(!retryable(PublishErrorKind::MaxPayloadExceeded));
    }
}
