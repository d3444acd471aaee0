//! Idempotent provisioning of every stream, consumer and KV bucket, with
//! explicit settings. Both daemons call [`provision_all`] at start; running it
//! twice, or from two processes at once, changes nothing.
//!
//! | stream             | subjects                                            | retention  | discard |
//! |--------------------|-----------------------------------------------------|------------|---------|
//! | `COLIBRI_INTAKE`   | `colibri.task.*.submit`, `colibri.task.*.report.*`  | work queue | new     |
//! | `COLIBRI_WORK`     | `colibri.work.>`                                    | work queue | new     |
//! | `COLIBRI_EVENTS`   | `colibri.task.*.state`, `colibri.worker.*.state`    | limits     | old     |
//! | `COLIBRI_SESSIONS` | `colibri.session.>`                                 | limits     | old     |
//! | `OBJ_colibri-transcripts` | `$O.colibri-transcripts.>` (object store)    | limits     | new     |
//!
//! Work-queue streams refuse new messages when full rather than drop
//! accepted ones: a submit into a full intake fails loudly at the client.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{self, pull, AckPolicy, DeliverPolicy},
    kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType},
};

use crate::ids::WorkerId;
use crate::subjects;

pub const INTAKE_STREAM: &str = "COLIBRI_INTAKE";
pub const WORK_STREAM: &str = "COLIBRI_WORK";
pub const EVENTS_STREAM: &str = "COLIBRI_EVENTS";
pub const SESSIONS_STREAM: &str = "COLIBRI_SESSIONS";
/// KV bucket of fleet-wide settings (the cost mode).
pub const CONFIG_BUCKET: &str = "colibri-config";
/// Key of the fleet's cost mode in [`CONFIG_BUCKET`].
pub const COST_MODE_KEY: &str = "cost-mode";
/// Key of the operator's escalation ceiling (`fast`, `smart` or `max`;
/// absent means `max`) in [`CONFIG_BUCKET`]: no session's cost mode
/// escalates past it.
pub const COST_CEILING_KEY: &str = "cost-ceiling";
/// Object store of shared session transcripts: what another worker needs
/// to continue a session whose worker is away.
pub const TRANSCRIPTS_BUCKET: &str = "colibri-transcripts";
/// The stream behind [`TRANSCRIPTS_BUCKET`].
pub const TRANSCRIPTS_STREAM: &str = "OBJ_colibri-transcripts";
/// Durable consumer through which the scheduler reads the intake.
pub const SCHEDULER_CONSUMER: &str = "scheduler";

/// Limits and replication of what [`provision_all`] creates.
#[derive(Debug, Clone, PartialEq)]
pub struct ProvisionConfig {
    /// 1 on a single server, 3 on a three-node cluster.
    pub replicas: usize,
    /// Window within which a repeated `Nats-Msg-Id` is dropped.
    pub duplicate_window: Duration,
    pub intake_max_bytes: i64,
    pub work_max_bytes: i64,
    pub events_max_age: Duration,
    pub events_max_bytes: i64,
    pub sessions_max_age: Duration,
    pub sessions_max_bytes: i64,
    /// How long a shared transcript stays continuable elsewhere.
    pub transcripts_max_age: Duration,
    /// When full, new shares are refused (the session then continues only
    /// on its own worker); none already shared is dropped early.
    pub transcripts_max_bytes: i64,
    /// Largest single message on any Colibri stream.
    pub max_msg_size: i32,
}

impl Default for ProvisionConfig {
    fn default() -> Self {
        const GIB: i64 = 1 << 30;
        ProvisionConfig {
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            intake_max_bytes: GIB,
            work_max_bytes: GIB,
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            events_max_bytes: 4 * GIB,
            sessions_max_age: Duration::from_secs(7 * 24 * 3600),
            sessions_max_bytes: 8 * GIB,
            transcripts_max_age: Duration::from_secs(30 * 24 * 3600),
            transcripts_max_bytes: 2 * GIB,
            max_msg_size: 1 << 20,
        }
    }
}

/// Why provisioning failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    #[error("creating stream {stream}: {source}")]
    Stream {
        stream: &'static str,
        #[source]
        source: async_nats::Error,
    },
    #[error("creating consumer {consumer} on {stream}: {source}")]
    Consumer {
        stream: &'static str,
        consumer: String,
        #[source]
        source: async_nats::Error,
    },
    #[error("creating object store {bucket}: {source}")]
    ObjectStore {
        bucket: &'static str,
        #[source]
        source: async_nats::Error,
    },
    #[error("creating key-value bucket {bucket}: {source}")]
    KeyValue {
        bucket: &'static str,
        #[source]
        source: async_nats::Error,
    },
}

/// The stream configurations, exactly as provisioned.
pub fn stream_configs(cfg: &ProvisionConfig) -> Vec<stream::Config> {
    let base = |name: &str, subjects: Vec<String>| stream::Config {
        name: name.to_string(),
        subjects,
        storage: StorageType::File,
        num_replicas: cfg.replicas,
        duplicate_window: cfg.duplicate_window,
        max_message_size: cfg.max_msg_size,
        ..Default::default()
    };
    vec![
        stream::Config {
            description: Some(
                "Task submissions and worker reports, consumed by the scheduler".into(),
            ),
            retention: RetentionPolicy::WorkQueue,
            discard: DiscardPolicy::New,
            max_bytes: cfg.intake_max_bytes,
            ..base(
                INTAKE_STREAM,
                vec![
                    subjects::TASK_SUBMIT_ALL.into(),
                    subjects::TASK_REPORT_ALL.into(),
                ],
            )
        },
        stream::Config {
            description: Some("Orders placed on workers, one subject per worker".into()),
            retention: RetentionPolicy::WorkQueue,
            discard: DiscardPolicy::New,
            max_bytes: cfg.work_max_bytes,
            ..base(WORK_STREAM, vec![subjects::WORK_ALL.into()])
        },
        stream::Config {
            description: Some("Task and worker lifecycle events, for watchers and history".into()),
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: cfg.events_max_age,
            max_bytes: cfg.events_max_bytes,
            ..base(
                EVENTS_STREAM,
                vec![
                    subjects::TASK_STATE_ALL.into(),
                    subjects::WORKER_STATE_ALL.into(),
                ],
            )
        },
        stream::Config {
            description: Some("Glasspane session events, for live watch and replay".into()),
            retention: RetentionPolicy::Limits,
            discard: DiscardPolicy::Old,
            max_age: cfg.sessions_max_age,
            max_bytes: cfg.sessions_max_bytes,
            ..base(SESSIONS_STREAM, vec![subjects::SESSION_ALL.into()])
        },
    ]
}

/// The stream behind the transcript object store, as async-nats's
/// `create_object_store` makes it (chunk and meta subjects, rollup, direct
/// gets, discard new), but created or updated so that a changed limit
/// applies to an existing bucket.
pub fn transcripts_stream_config(cfg: &ProvisionConfig) -> stream::Config {
    stream::Config {
        name: TRANSCRIPTS_STREAM.to_string(),
        description: Some("Shared session transcripts, for continuing a session elsewhere".into()),
        subjects: vec![
            format!("$O.{TRANSCRIPTS_BUCKET}.C.>"),
            format!("$O.{TRANSCRIPTS_BUCKET}.M.>"),
        ],
        max_age: cfg.transcripts_max_age,
        max_bytes: cfg.transcripts_max_bytes,
        storage: StorageType::File,
        num_replicas: cfg.replicas,
        discard: DiscardPolicy::New,
        allow_rollup: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// Creates or updates every stream, the config bucket and the transcript
/// object store.
pub async fn provision_all(
    js: &jetstream::Context,
    cfg: &ProvisionConfig,
) -> Result<(), ProvisionError> {
    for config in stream_configs(cfg) {
        let name = stream_name(&config.name);
        js.create_or_update_stream(config)
            .await
            .map_err(|e| ProvisionError::Stream {
                stream: name,
                source: e.into(),
            })?;
    }
    config_bucket(js, cfg).await?;
    js.create_or_update_stream(transcripts_stream_config(cfg))
        .await
        .map_err(|e| ProvisionError::ObjectStore {
            bucket: TRANSCRIPTS_BUCKET,
            source: e.into(),
        })?;
    Ok(())
}

fn stream_name(name: &str) -> &'static str {
    [INTAKE_STREAM, WORK_STREAM, EVENTS_STREAM, SESSIONS_STREAM]
        .into_iter()
        .find(|n| *n == name)
        .unwrap_or("unknown")
}

/// The fleet settings bucket (history 10, so a mode change is auditable).
pub async fn config_bucket(
    js: &jetstream::Context,
    cfg: &ProvisionConfig,
) -> Result<kv::Store, ProvisionError> {
    js.create_or_update_key_value(kv::Config {
        bucket: CONFIG_BUCKET.to_string(),
        description: "Colibri fleet settings".to_string(),
        history: 10,
        storage: StorageType::File,
        num_replicas: cfg.replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| ProvisionError::KeyValue {
        bucket: CONFIG_BUCKET,
        source: e.into(),
    })
}

/// The scheduler's durable consumer on the intake.
pub fn scheduler_consumer_config() -> pull::Config {
    pull::Config {
        durable_name: Some(SCHEDULER_CONSUMER.to_string()),
        description: Some("scheduler: submissions and reports".to_string()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        // A scheduler killed mid-batch has its unacknowledged messages
        // redelivered to the next one this soon; every handler is idempotent.
        ack_wait: Duration::from_secs(5),
        max_deliver: -1,
        max_ack_pending: 20_000,
        ..Default::default()
    }
}

/// Durable consumer name of a worker's orders.
pub fn worker_consumer_name(worker: &WorkerId) -> String {
    format!("worker-{}", worker.token())
}

/// A worker's durable consumer on its own work subject.
pub fn worker_consumer_config(worker: &WorkerId) -> pull::Config {
    pull::Config {
        durable_name: Some(worker_consumer_name(worker)),
        description: Some(format!("orders for worker {worker}")),
        filter_subject: subjects::work(worker),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        max_ack_pending: 1_000,
        ..Default::default()
    }
}

/// Creates (or finds) a durable pull consumer on `stream`.
pub async fn durable_consumer(
    js: &jetstream::Context,
    stream: &'static str,
    config: pull::Config,
) -> Result<consumer::PullConsumer, ProvisionError> {
    let name = config.durable_name.clone().unwrap_or_default();
    let err = |source: async_nats::Error| ProvisionError::Consumer {
        stream,
        consumer: name.clone(),
        source,
    };
    let s = js.get_stream(stream).await.map_err(|e| err(e.into()))?;
    s.create_consumer(config).await.map_err(|e| err(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_explicit() {
        let cfgs = stream_configs(&ProvisionConfig::default());
        assert_eq!(cfgs.len(), 4);
        for c in &cfgs {
            assert_eq!(c.storage, StorageType::File);
            assert_eq!(c.duplicate_window, Duration::from_secs(120));
            assert!(c.max_bytes > 0);
        }
        assert_eq!(cfgs[0].retention, RetentionPolicy::WorkQueue);
        assert_eq!(cfgs[0].discard, DiscardPolicy::New);
    }
}
