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
//!
//! Only the hub (the scheduler) provisions, from its own settings
//! (`[streams]` in scheduler.toml); workers and clients only bind, so no two
//! processes ever provision with different replicas or limits. A JetStream
//! that is not ready yet (a cold cluster boot, a leader election, quorum lost,
//! resources still settling after a scale) is waited for by
//! [`until_ready`]; only a configuration error (the disk cannot hold the
//! limits, a setting the server refuses) ends provisioning.

use std::future::Future;
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

/// One mebibyte, the unit of the `[streams] *_mib` settings.
pub const MIB: i64 = 1 << 20;

impl Default for ProvisionConfig {
    /// Limits that fit a hub with a 10 GB disk: 4 GiB reserved in all
    /// (nats-server admits reservations up to 75 % of the store disk's free
    /// space, so about 5.8 GB free is enough).
    fn default() -> Self {
        ProvisionConfig {
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            intake_max_bytes: 256 * MIB,
            work_max_bytes: 256 * MIB,
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            events_max_bytes: 512 * MIB,
            sessions_max_age: Duration::from_secs(7 * 24 * 3600),
            sessions_max_bytes: 2048 * MIB,
            transcripts_max_age: Duration::from_secs(30 * 24 * 3600),
            transcripts_max_bytes: 1024 * MIB,
            max_msg_size: 1 << 20,
        }
    }
}

impl ProvisionConfig {
    /// Every stream's `max_bytes` with the `[streams]` setting that sets it.
    pub fn reservations(&self) -> [(&'static str, i64); 5] {
        [
            ("intake_mib", self.intake_max_bytes),
            ("work_mib", self.work_max_bytes),
            ("events_mib", self.events_max_bytes),
            ("sessions_mib", self.sessions_max_bytes),
            ("transcripts_mib", self.transcripts_max_bytes),
        ]
    }

    /// What the streams reserve on each server of the hub, in bytes.
    pub fn reserved_bytes(&self) -> i64 {
        self.reservations().iter().map(|(_, b)| *b).sum()
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
    /// nats-server refused a stream's reservation (10047): the limits do not
    /// fit the store disk.
    #[error(
        "creating stream {stream}: nats-server has no room for the streams' limits \
         (insufficient storage resources, 10047). They reserve {reserved_mib} MiB in all on \
         every server ({detail}); nats-server admits reservations up to its jetstream \
         max_file_store, by default 75% of the free space under store_dir. Lower the \
         [streams] settings named here in scheduler.toml, or free disk space, or raise \
         max_file_store"
    )]
    Storage {
        stream: String,
        reserved_mib: i64,
        /// `intake_mib = 256, work_mib = 256, ...`.
        detail: String,
    },
}

/// JetStream API error codes that mean "not ready yet" rather than "wrong".
/// A cluster answers them while it boots, elects a leader, has lost its
/// quorum or is still moving resources after a scale.
const NOT_READY_CODES: &[u64] = &[
    10004, // cluster incomplete results
    10005, // no suitable peers for placement (peers still booting)
    10007, // cluster not assigned to this server
    10008, // JetStream system temporarily unavailable (no meta leader)
    10009, // cluster can not handle request (not leader)
    10023, // insufficient resources (right after scaling streams)
    10040, // peer not a member (yet)
    10202, // membership change in progress
];

/// The storage reservation error (`JSStorageResourcesExceededErr`).
const STORAGE_CODE: u64 = 10047;

/// The JetStream API error code anywhere in `error`'s source chain.
fn jetstream_code(error: &(dyn std::error::Error + 'static)) -> Option<u64> {
    use async_nats::jetstream::context::{
        CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind,
    };
    use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(js) = e.downcast_ref::<async_nats::jetstream::Error>() {
            return Some(js.error_code().0);
        }
        if let Some(c) = e.downcast_ref::<CreateStreamError>() {
            if let CreateStreamErrorKind::JetStream(js) = c.kind() {
                return Some(js.error_code().0);
            }
        }
        if let Some(c) = e.downcast_ref::<GetStreamError>() {
            if let GetStreamErrorKind::JetStream(js) = c.kind() {
                return Some(js.error_code().0);
            }
        }
        if let Some(c) = e.downcast_ref::<ConsumerError>() {
            if let ConsumerErrorKind::JetStream(js) = c.kind() {
                return Some(js.error_code().0);
            }
        }
        next = e.source();
    }
    None
}

impl ProvisionError {
    /// The failing NATS error, when there is one.
    fn nats_source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProvisionError::Stream { source, .. }
            | ProvisionError::Consumer { source, .. }
            | ProvisionError::ObjectStore { source, .. }
            | ProvisionError::KeyValue { source, .. } => Some(source.as_ref()),
            ProvisionError::Storage { .. } => None,
        }
    }

    /// The JetStream API error code the server answered, if it answered one.
    pub fn jetstream_code(&self) -> Option<u64> {
        self.nats_source().and_then(jetstream_code)
    }

    /// True when JetStream is not ready yet (no answer, a timeout, a leader
    /// election, quorum lost, resources settling): waiting helps. False for a
    /// configuration error, which waiting does not fix.
    pub fn is_transient(&self) -> bool {
        match self {
            ProvisionError::Storage { .. } => false,
            _ => match self.jetstream_code() {
                // No API answer: no responders, a timeout, a lost connection.
                None => true,
                Some(code) => NOT_READY_CODES.contains(&code),
            },
        }
    }

    /// A 10047 turned into [`ProvisionError::Storage`] with the numbers and
    /// the settings to change; any other error as it is.
    fn explain_storage(self, cfg: &ProvisionConfig) -> ProvisionError {
        match (&self, self.jetstream_code()) {
            (ProvisionError::Stream { stream, .. }, Some(STORAGE_CODE)) => {
                storage_error(stream, cfg)
            }
            (ProvisionError::ObjectStore { .. }, Some(STORAGE_CODE)) => {
                storage_error(TRANSCRIPTS_STREAM, cfg)
            }
            _ => self,
        }
    }
}

fn storage_error(stream: &str, cfg: &ProvisionConfig) -> ProvisionError {
    let detail = cfg
        .reservations()
        .iter()
        .map(|(setting, bytes)| format!("{setting} = {}", bytes / MIB))
        .collect::<Vec<_>>()
        .join(", ");
    ProvisionError::Storage {
        stream: stream.to_string(),
        reserved_mib: cfg.reserved_bytes() / MIB,
        detail,
    }
}

/// Runs `op` until it succeeds or fails with a configuration error, waiting
/// with exponential backoff (200 ms up to 5 s) for as long as JetStream is
/// not ready, and logging each wait with `awaiting` (what is waited for) and
/// the error seen. Cancel by dropping the future.
pub async fn until_ready<T, F, Fut>(awaiting: &'static str, op: F) -> Result<T, ProvisionError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProvisionError>>,
{
    use backon::{ExponentialBuilder, Retryable};
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    op.retry(backoff)
        .when(ProvisionError::is_transient)
        .notify(|error, wait| {
            tracing::warn!(
                awaiting,
                error = %error,
                jetstream_code = error.jetstream_code(),
                retry_in_ms = wait.as_millis() as u64,
                "JetStream not ready; waiting"
            )
        })
        .await
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
        js.create_or_update_stream(config).await.map_err(|e| {
            ProvisionError::Stream {
                stream: name,
                source: e.into(),
            }
            .explain_storage(cfg)
        })?;
    }
    config_bucket(js, cfg).await?;
    js.create_or_update_stream(transcripts_stream_config(cfg))
        .await
        .map_err(|e| {
            ProvisionError::ObjectStore {
                bucket: TRANSCRIPTS_BUCKET,
                source: e.into(),
            }
            .explain_storage(cfg)
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

    /// Regression: the default limits reserved 16 GiB, so nats-server refused
    /// the streams (10047) on any hub with less than about 22 GB free. They
    /// must fit a 10 GB disk: 75 % of its free space after an OS.
    #[test]
    fn default_limits_fit_a_10_gb_disk() {
        let cfg = ProvisionConfig::default();
        let free_on_a_10_gb_disk: i64 = 7_000_000_000;
        assert!(
            cfg.reserved_bytes() + transcripts_stream_config(&cfg).max_bytes
                - cfg.transcripts_max_bytes
                <= free_on_a_10_gb_disk * 3 / 4
        );
        assert_eq!(cfg.reserved_bytes(), 4096 * MIB);
    }

    #[test]
    fn storage_error_names_the_numbers_and_settings() {
        let text = storage_error(SESSIONS_STREAM, &ProvisionConfig::default()).to_string();
        assert!(text.contains("4096 MiB in all"), "{text}");
        assert!(text.contains("sessions_mib = 2048"), "{text}");
        assert!(text.contains("[streams]"), "{text}");
        assert!(text.contains("10047"), "{text}");
    }

    #[test]
    fn no_answer_is_transient_and_storage_is_not() {
        let timeout = ProvisionError::Stream {
            stream: INTAKE_STREAM,
            source: "jetstream request timed out".into(),
        };
        assert!(timeout.is_transient());
        assert!(!storage_error(INTAKE_STREAM, &ProvisionConfig::default()).is_transient());
    }

    /// The server's answer `code` to a stream create, as async-nats hands it.
    fn answered(code: u64) -> ProvisionError {
        use async_nats::jetstream::context::{CreateStreamError, CreateStreamErrorKind};
        let body = format!(r#"{{"code":503,"err_code":{code},"description":"answer {code}"}}"#);
        let js: async_nats::jetstream::Error = serde_json::from_str(&body).unwrap();
        ProvisionError::Stream {
            stream: INTAKE_STREAM,
            source: Box::new(CreateStreamError::new(CreateStreamErrorKind::JetStream(js))),
        }
    }

    /// Regression: on a 3-node cluster the scheduler exited 1 on 10023 right
    /// after a scale and on 10008 while the meta group had no leader.
    #[test]
    fn cluster_not_ready_answers_are_transient() {
        for code in [10023, 10008, 10005, 10009] {
            let e = answered(code);
            assert_eq!(e.jetstream_code(), Some(code));
            assert!(e.is_transient(), "{code}");
        }
    }

    #[test]
    fn configuration_answers_end_provisioning() {
        // 10058: stream name already in use with a different configuration.
        assert!(!answered(10058).is_transient());
        let storage = answered(STORAGE_CODE).explain_storage(&ProvisionConfig::default());
        assert!(
            matches!(storage, ProvisionError::Storage { .. }),
            "{storage}"
        );
        assert!(!storage.is_transient());
    }
}
