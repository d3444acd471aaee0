//! Publishing one session's events to NATS without ever blocking the agent.
//!
//! The pump hands already-encoded events to a [`SessionPublisher`] through a
//! bounded channel; one publisher task owns the NATS side. Live events go in
//! with [`SessionPublisher::try_publish`], which never waits: when the
//! channel is full the event is not published (the pump counts it and later
//! emits a `dropped {count}` event, see `pump.rs`). The final events go in
//! with [`SessionPublisher::publish`], which waits for room.
//!
//! Events are sent with core NATS publish on `colibri.session.<session>.<worker>.<kind>`;
//! the `COLIBRI_SESSIONS` stream captures them (no per-message ack, for
//! throughput). The `end` event alone is published through JetStream and its
//! ack awaited: since a connection's messages are stored in order, that ack
//! means the whole session is in the stream. [`SessionPublisher::finish`]
//! closes the channel, waits for the task, and flushes the connection.

use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::mpsc;

/// Channel capacity by default: events buffered between pump and NATS.
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

/// One encoded event on its way out.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    /// The JSON of the `SessionEvent` (no trailing LF).
    pub payload: Bytes,
    /// The session's last event: published through JetStream with an ack.
    pub is_end: bool,
}

/// Why publishing a session did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("the publisher task has stopped")]
    Closed,
    #[error("publishing {subject}: {source}")]
    Publish {
        subject: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("flushing the connection: {0}")]
    Flush(#[source] async_nats::client::FlushError),
    #[error("publisher did not finish within {0:?}")]
    Timeout(Duration),
}

/// What the publisher task did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishStats {
    pub published: u64,
    /// Whether JetStream acknowledged the `end` event.
    pub end_acked: bool,
}

/// The pump's handle on one session's publisher task.
pub struct SessionPublisher {
    tx: mpsc::Sender<Outgoing>,
    task: tokio::task::JoinHandle<Result<PublishStats, PublishError>>,
}

impl SessionPublisher {
    /// Starts the publisher task for one session on `client`.
    pub fn spawn(client: async_nats::Client, capacity: usize) -> SessionPublisher {
        let (tx, rx) = mpsc::channel(capacity.max(2));
        let task = tokio::spawn(run(client, rx));
        SessionPublisher { tx, task }
    }

    /// Free slots in the channel now (only the pump sends, so this can only
    /// grow until the pump's next send).
    pub fn room(&self) -> usize {
        self.tx.capacity()
    }

    /// Queues `msg` if there is room; gives it back if not.
    pub fn try_publish(&self, msg: Outgoing) -> Result<(), Outgoing> {
        self.tx.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
        })
    }

    /// Queues `msg`, waiting for room.
    pub async fn publish(&self, msg: Outgoing) -> Result<(), PublishError> {
        self.tx.send(msg).await.map_err(|_| PublishError::Closed)
    }

    /// Closes the channel and waits (at most `limit`) for everything queued
    /// to be published and flushed.
    pub async fn finish(self, limit: Duration) -> Result<PublishStats, PublishError> {
        drop(self.tx);
        match tokio::time::timeout(limit, self.task).await {
            Ok(Ok(res)) => res,
            Ok(Err(_)) => Err(PublishError::Closed),
            Err(_) => Err(PublishError::Timeout(limit)),
        }
    }
}

async fn run(
    client: async_nats::Client,
    mut rx: mpsc::Receiver<Outgoing>,
) -> Result<PublishStats, PublishError> {
    let js = jetstream::new(client.clone());
    let mut stats = PublishStats::default();
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        for msg in batch.drain(..) {
            let subject = async_nats::Subject::from(msg.subject);
            let err = |e: async_nats::Error| PublishError::Publish {
                subject: subject.to_string(),
                source: e,
            };
            if msg.is_end {
                let ack = js
                    .publish(subject.clone(), msg.payload)
                    .await
                    .map_err(|e| err(e.into()))?;
                stats.end_acked = ack.await.is_ok();
            } else {
                client
                    .publish(subject.clone(), msg.payload)
                    .await
                    .map_err(|e| err(e.into()))?;
            }
            stats.published += 1;
        }
    }
    client.flush().await.map_err(PublishError::Flush)?;
    Ok(stats)
}
