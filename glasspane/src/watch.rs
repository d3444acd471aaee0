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
    let events = messages.map(|m| {
        let m = m.map_err(FollowError::Receive)?;
        broker::messages::decode::<SessionEvent>(&m.payload).map_err(FollowError::Decode)
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
