//! Following one session from NATS: the reader side of glasspane, behind
//! `colibri watch TASK|SESSION`.
//!
//! [`follow`] creates an ordered, ephemeral consumer on
//! `colibri.session.<session>.>` in `COLIBRI_SESSIONS`, from the session's
//! first stored event or from now, and yields decoded [`SessionEvent`]s in
//! stream order. The stream ends after the session's `end` event; if the
//! session has not ended it stays open, live.

use async_nats::jetstream::{self, consumer};
use broker::messages::session::SessionEvent;
use broker::messages::DecodeError;
use broker::provision::SESSIONS_STREAM;
use broker::SessionId;
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

/// Follows `session` from its first event (`from_start`) or from now.
pub async fn follow(
    js: &jetstream::Context,
    session: SessionId,
    from_start: bool,
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
    let events = messages.filter_map(|m| async move {
        let m = match m {
            Ok(m) => m,
            Err(e) => return Some(Err(FollowError::Receive(e))),
        };
        match broker::messages::decode::<SessionEvent>(&m.payload) {
            Err(e) => Some(Err(FollowError::Decode(e))),
            Ok(e) if !published_by_its_worker(&m.subject, &e) => {
                tracing::warn!(subject = %m.subject, worker = %e.worker, session = %e.session,
                    "skipping a session event whose subject is not its own worker's");
                None
            }
            Ok(e) => Some(Ok(e)),
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
        }
    }
}
