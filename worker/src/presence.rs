//! Heartbeats on `colibri.presence.<worker>` (core NATS): the worker's
//! advert (host, tags, agents, slots, version) and the lease renewal of every
//! attempt it runs, every `heartbeat_interval`; one last heartbeat with
//! `leaving: true` on clean shutdown.

use std::time::Duration;

use broker::cost_mode::CostMode;
use broker::messages::{encode, AttemptRef, Heartbeat};
use broker::subjects;
use tracing::warn;

use crate::config::WorkerConfig;

/// Builds and sends this worker process's heartbeats.
#[derive(Debug, Clone)]
pub struct Presence {
    template: Heartbeat,
    subject: String,
}

impl Presence {
    pub fn new(config: &WorkerConfig, incarnation: uuid::Uuid) -> Presence {
        Presence {
            template: Heartbeat {
                v: broker::WIRE_VERSION,
                worker: config.worker_id.clone(),
                host: hostname(),
                incarnation,
                version: env!("CARGO_PKG_VERSION").to_string(),
                tags: config.capabilities.clone(),
                agents: config.agents.enabled(),
                slots: config.slots,
                running: Vec::new(),
                interval_ms: config.heartbeat_interval.as_millis() as u64,
                leaving: false,
                cost_mode: None,
                at_ms: 0,
            },
            subject: subjects::presence(&config.worker_id),
        }
    }

    /// The heartbeat for now.
    pub fn heartbeat(
        &self,
        running: Vec<AttemptRef>,
        leaving: bool,
        cost_mode: CostMode,
    ) -> Heartbeat {
        Heartbeat {
            running,
            leaving,
            cost_mode: Some(cost_mode),
            at_ms: broker::time_ms::now_ms(),
            ..self.template.clone()
        }
    }

    /// Sends a heartbeat (fire and forget: the next one follows shortly).
    pub async fn send(
        &self,
        client: &async_nats::Client,
        running: Vec<AttemptRef>,
        leaving: bool,
        cost_mode: CostMode,
    ) {
        let hb = self.heartbeat(running, leaving, cost_mode);
        if let Err(error) = client.publish(self.subject.clone(), encode(&hb)).await {
            warn!(%error, "heartbeat not sent");
        }
        if leaving {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        }
    }
}

/// This host's name.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}
