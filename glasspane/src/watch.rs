//! Following one session from NATS: the reader side of glasspane, behind
//! `colibri watch TASK|SESSION`.
//!
//! [`follow`] creates an ordered, ephemeral consumer on
//! `colibri.session.<session>.>` in `COLIBRI_SESSIONS`, from the session's
//! first stored event or from now, and yields decoded [`SessionEvent`]s in
//! stream order. The stream ends after the session's `end` event; if the
//! session has not ended it stays open, live.
//!
//! An event is believed only when it came on its own worker's subject
//! ([`published_by_its_worker`]) and, given the worker of the session's
//! attempt (the board knows it: [`follow_worker`]), only from that worker.
//! Any other event is skipped, logged and counted ([`Skipped`]): a host may
//! publish on its own session subjects only, so without this check a host
//! could still end another host's session early with a forged `end`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::jetstream::{self, consumer};
use broker::messages::session::SessionEvent;
use broker::messages::DecodeError;
use broker::provision::SESSIONS_STREAM;
use broker::{SessionId, WorkerId};
use futures::{Stream, StreamExt};

/// Why following a session failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FollowError {
    #[error("getting stream {SESSIONS_STREAM}: {0}")]
    GetStream(#[source] jetstream::context::GetStreamError),
    #[error("creating an ordered consumer on {SESSIONS_STREAM}: {0}")]
    Consumer(#[source] jetstream::stream::ConsumerError),
    #[error("starting delivery: {0}")]
    Messages(#[source] consumer::StreamError),
    #[error("receiving: {0}")]
    Receive(#[source] consumer::pull::OrderedError),
    #[error("decoding a session event: {0}")]
    Decode(#[source] DecodeError),
}

/// How many events a follower skipped as not its session's worker's; a
/// cloneable handle, read while or after following.
#[derive(Debug, Clone, Default)]
pub struct Skipped(Arc<AtomicU64>);

impl Skipped {
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a follower makes of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Belief {
    Believed,
    /// The event names another worker, session or kind than its subject.
    ForgedSubject,
    /// Its own subject, but not the worker of the session's attempt.
    OtherWorker,
}

/// Judges an event that came on `subject`, for a session whose attempt ran
/// on `worker` (when known).
pub fn judge(subject: &str, event: &SessionEvent, worker: Option<&WorkerId>) -> Belief {
    if !published_by_its_worker(subject, event) {
        Belief::ForgedSubject
    } else if worker.is_some_and(|w| *w != event.worker) {
        Belief::OtherWorker
    } else {
        Belief::Believed
    }
}

/// Follows `session` from its first event (`from_start`) or from now,
/// believing any worker that publishes on its own subject. Prefer
/// [`follow_worker`] whenever the session's worker is known.
pub async fn follow(
    js: &jetstream::Context,
    session: SessionId,
    from_start: bool,
) -> Result<impl Stream<Item = Result<SessionEvent, FollowError>>, FollowError> {
    follow_worker(js, session, None, from_start, Skipped::default()).await
}

/// Follows `session` believing only `worker` (the worker of the session's
/// attempt, from the board), counting every other event in `skipped`.
pub async fn follow_worker(
    js: &jetstream::Context,
    session: SessionId,
    worker: Option<WorkerId>,
    from_start: bool,
    skipped: Skipped,
) -> Result<impl Stream<Item = Result<SessionEvent, FollowError>>, FollowError> {
    let stream = js
        .get_stream(SESSIONS_STREAM)
        .await
        .map_err(FollowError::GetStream)?;
    let deliver_policy = if from_start {
        consumer::DeliverPolicy::All
    } else {
        consumer::DeliverPolicy::New
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: broker::subjects::session_any(&session),
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(FollowError::Consumer)?;
    let messages = consumer.messages().await.map_err(FollowError::Messages)?;
    let events = messages.filter_map(move |m| {
        let worker = worker.clone();
        let skipped = skipped.clone();
        async move {
            let m = match m {
                Ok(m) => m,
                Err(e) => return Some(Err(FollowError::Receive(e))),
            };
            match broker::messages::decode::<SessionEvent>(&m.payload) {
                Err(e) => Some(Err(FollowError::Decode(e))),
                Ok(e) => match judge(&m.subject, &e, worker.as_ref()) {
                    Belief::Believed => Some(Ok(e)),
                    Belief::ForgedSubject => {
                        skipped.add();
                        tracing::warn!(subject = %m.subject, worker = %e.worker, session = %e.session,
                            "skipping a session event whose subject is not its own worker's");
                        None
                    }
                    Belief::OtherWorker => {
                        skipped.add();
                        tracing::warn!(subject = %m.subject, worker = %e.worker, session = %e.session,
                            expected = ?worker.as_ref().map(ToString::to_string),
                            "skipping a session event from another worker than the session's");
                        None
                    }
                },
            }
        }
    });
    // Checked before polling the consumer again: after `end` nothing more
    // arrives, so waiting for one more message would hang.
    let until_end =
        futures::stream::unfold((Box::pin(events), false), |(mut s, ended)| async move {
            if ended {
                return None;
            }
            let item = s.next().await?;
            let end = matches!(&item, Ok(e) if e.event.is_end());
            Some((item, (s, end)))
        });
    Ok(until_end)
}

/// Whether `event` came on its own subject
/// (`colibri.session.<session>.<worker>.<kind>`), which a host's permissions
/// allow only for itself: an event naming another worker is forged.
pub fn published_by_its_worker(subject: &str, event: &SessionEvent) -> bool {
    subject == broker::subjects::session(&event.session, &event.worker, event.kind())
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::messages::session::Event;
    use broker::{TaskId, WorkerId};

    #[test]
    fn only_the_workers_own_subject_is_believed() {
        let event = SessionEvent {
            v: 1,
            session: SessionId::new(),
            seq: 1,
            task_id: TaskId::new(),
            attempt: 1,
            worker: WorkerId::parse("debby.lan").unwrap(),
            at_ms: 0,
            event: Event::Raw {
                stream: broker::messages::session::Stream::Stdout,
                text: "hi".into(),
                len: 2,
            },
        };
        let own = broker::subjects::session(&event.session, &event.worker, "raw");
        assert_eq!(
            own,
            format!("colibri.session.{}.debby_dlan.raw", event.session)
        );
        assert!(published_by_its_worker(&own, &event));
        let evil = WorkerId::parse("domedog").unwrap();
        for forged in [
            broker::subjects::session(&event.session, &evil, "raw"),
            broker::subjects::session(&event.session, &event.worker, "end"),
            broker::subjects::session(&SessionId::new(), &event.worker, "raw"),
        ] {
            assert!(!published_by_its_worker(&forged, &event), "{forged}");
            assert_eq!(judge(&forged, &event, None), Belief::ForgedSubject);
        }
        assert_eq!(judge(&own, &event, None), Belief::Believed);
        assert_eq!(judge(&own, &event, Some(&event.worker)), Belief::Believed);
    }

    /// Regression (issue 13): a host publishing on its own subjects into
    /// another host's session, a forged `end` included, was believed.
    #[test]
    fn another_hosts_event_on_its_own_subject_is_not_the_sessions() {
        let domedog = WorkerId::parse("domedog").unwrap();
        let forged_end = SessionEvent {
            v: 1,
            session: SessionId::new(),
            seq: 99,
            task_id: TaskId::new(),
            attempt: 1,
            worker: domedog.clone(),
            at_ms: 0,
            event: Event::End {
                success: true,
                reason: None,
            },
        };
        let subject = broker::subjects::session(&forged_end.session, &domedog, "end");
        let debby = WorkerId::parse("debby").unwrap();
        assert_eq!(
            judge(&subject, &forged_end, Some(&debby)),
            Belief::OtherWorker
        );
    }
}
