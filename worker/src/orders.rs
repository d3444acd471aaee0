//! The worker's order feed: its durable pull consumer on `COLIBRI_WORK`,
//! filtered to `colibri.work.<worker>`, forwarded as raw messages into a
//! channel. When the message stream fails or ends (nats-server restarting,
//! consumer lost), the consumer is found or created again, with backoff, and
//! the feed carries on until shutdown.

use std::time::Duration;

use async_nats::jetstream::{self, Message};
use broker::provision::{durable_consumer, worker_consumer_config, WORK_STREAM};
use broker::WorkerId;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Forwards orders into `tx` until `shutdown` (or the receiver is gone).
pub async fn feed(
    js: jetstream::Context,
    worker: WorkerId,
    tx: mpsc::Sender<Message>,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        let attach = async {
            let consumer = durable_consumer(&js, WORK_STREAM, worker_consumer_config(&worker))
                .await
                .map_err(|e| e.to_string())?;
            consumer.messages().await.map_err(|e| e.to_string())
        };
        let attached = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = attach => r,
        };
        match attached {
            Err(error) => {
                warn!(%error, retry_in_ms = delay.as_millis() as u64, "order consumer unavailable")
            }
            Ok(mut messages) => {
                debug!(worker = %worker, "order consumer attached");
                loop {
                    let next = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        next = messages.next() => next,
                    };
                    match next {
                        Some(Ok(msg)) => {
                            delay = Duration::from_millis(100);
                            if tx.send(msg).await.is_err() {
                                return;
                            }
                        }
                        Some(Err(error)) => {
                            warn!(%error, "order stream failed; attaching again");
                            break;
                        }
                        None => {
                            warn!("order stream ended; attaching again");
                            break;
                        }
                    }
                }
            }
        }
        let jitter = Duration::from_millis(rand::random_range(0..=delay.as_millis() as u64 / 2));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay + jitter) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
