//! Sends what a committed transaction queued: events (core publish, stored
//! by the events stream), purges of an offline worker's queue, and orders
//! (JetStream publishes deduplicated by `Nats-Msg-Id`). Order acknowledgements
//! are awaited off the loop; an order whose publish fails is sent again with
//! backoff until it is acknowledged or the service stops.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use backon::{ExponentialBuilder, Retryable};
use broker::{provision, subjects, TaskId};
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::core::Action;

/// Orders whose acknowledgements one waiter task awaits.
const ACK_CHUNK: usize = 256;

pub struct Sender {
    client: async_nats::Client,
    js: jetstream::Context,
    dispatched: mpsc::UnboundedSender<Vec<(TaskId, u32)>>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

struct Pending {
    subject: String,
    payload: Bytes,
    msg_id: String,
    dispatch: Option<(TaskId, u32)>,
    ack: Option<PublishAckFuture>,
}

impl Sender {
    pub fn new(
        client: async_nats::Client,
        js: jetstream::Context,
        dispatched: mpsc::UnboundedSender<Vec<(TaskId, u32)>>,
        shutdown: CancellationToken,
    ) -> Sender {
        Sender {
            client,
            js,
            dispatched,
            shutdown,
            tracker: TaskTracker::new(),
        }
    }

    pub async fn send(&mut self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        let mut pending = Vec::new();
        for action in actions {
            match action {
                Action::Event { subject, payload } => {
                    if let Err(error) = self.client.publish(subject, payload).await {
                        tracing::warn!(%error, "event publish failed");
                    }
                }
                Action::PurgeWork(worker) => {
                    let subject = subjects::work(&worker);
                    let purge = async {
                        let stream = self.js.get_stream(provision::WORK_STREAM).await?;
                        stream.purge().filter(subject.clone()).await?;
                        Ok::<_, async_nats::Error>(())
                    };
                    match tokio::time::timeout(Duration::from_secs(5), purge).await {
                        Ok(Ok(())) => {
                            tracing::info!(worker = %worker, "offline worker's queue purged")
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(worker = %worker, %error, "purge failed; stale orders are fenced")
                        }
                        Err(_) => {
                            tracing::warn!(worker = %worker, "purge timed out; stale orders are fenced")
                        }
                    }
                }
                Action::Order {
                    worker,
                    payload,
                    msg_id,
                    dispatch,
                } => {
                    let subject = subjects::work(&worker);
                    let ack = self
                        .js
                        .send_publish(
                            subject.clone(),
                            PublishMessage::build()
                                .payload(payload.clone())
                                .message_id(&msg_id),
                        )
                        .await
                        .inspect_err(|error| tracing::warn!(%error, worker = %worker, "order publish failed; will retry"))
                        .ok();
                    pending.push(Pending {
                        subject,
                        payload,
                        msg_id,
                        dispatch,
                        ack,
                    });
                    // Each unawaited ack holds one of the context's in-flight
                    // permits: hand them to a waiter in chunks, never all at once.
                    if pending.len() >= ACK_CHUNK {
                        self.await_acks(std::mem::take(&mut pending));
                    }
                }
            }
        }
        if !pending.is_empty() {
            self.await_acks(pending);
        }
    }

    /// Waits for a chunk of order acknowledgements off the loop, sending again
    /// what failed, then reports the dispatched run orders.
    fn await_acks(&self, pending: Vec<Pending>) {
        let js = self.js.clone();
        let done_tx = self.dispatched.clone();
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(async move {
            let mut done = Vec::new();
            for mut p in pending {
                let acked = match p.ack.take() {
                    Some(ack) => ack
                        .await
                        .inspect_err(|error| tracing::warn!(%error, msg_id = %p.msg_id, "order not acknowledged; retrying"))
                        .is_ok(),
                    None => false,
                };
                let acked = acked || resend(&js, &p, &shutdown).await;
                if acked {
                    if let Some(d) = p.dispatch {
                        done.push(d);
                    }
                }
            }
            if !done.is_empty() {
                let _ = done_tx.send(done);
            }
        });
    }

    /// Waits (bounded) for outstanding order acknowledgements.
    pub async fn drain(self, grace: Duration) {
        self.tracker.close();
        daemon::shutdown::drain_within(grace, self.tracker.wait()).await;
    }
}

async fn resend(js: &jetstream::Context, p: &Pending, shutdown: &CancellationToken) -> bool {
    let attempt = || async {
        js.send_publish(
            p.subject.clone(),
            PublishMessage::build()
                .payload(p.payload.clone())
                .message_id(&p.msg_id),
        )
        .await?
        .await?;
        Ok::<_, async_nats::Error>(())
    };
    let retry = attempt
        .retry(
            ExponentialBuilder::default()
                .with_max_delay(Duration::from_secs(5))
                .without_max_times(),
        )
        .notify(|error, delay| tracing::warn!(%error, ?delay, "order publish failed; retrying"));
    tokio::select! {
        r = retry => r.is_ok(),
        _ = shutdown.cancelled() => false,
    }
}
