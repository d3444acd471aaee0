//! The scheduler service: one owning task over the board and the in-memory
//! view ([`core::Core`]). Each turn of its loop takes one input (a batch of
//! intake messages, a heartbeat, an operator command, a tick, acknowledged
//! orders), applies it in one board transaction, places what it can, commits,
//! then sends the outbox and finally acknowledges the intake messages. A crash
//! anywhere before the acknowledgement makes JetStream deliver the input
//! again, and every handler is idempotent against a redelivery.

mod cancel;
pub mod core;
mod dispatch;
mod outbox;
mod presence;
mod reports;
mod state;
mod submit;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use broker::cost_mode::CostMode;
use broker::messages::api::{
    ApiError, ApiErrorKind, CancelReply, CancelRequest, CreateTaskReply, WorkerStatus,
};
use broker::messages::{decode, Heartbeat, Report, TaskSpec};
use broker::provision::{self, ProvisionConfig};
use broker::{subjects, TaskId};
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub use self::cancel::CommandError;
pub use self::core::{Action, Core};
use self::state::{Active, Tasks};
pub use self::submit::SubmitError;
use crate::board::{Board, BoardError};
use crate::fleet::Fleet;

/// Settings of the service, resolved before it starts.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub db: PathBuf,
    pub provision: ProvisionConfig,
    /// How often silent workers, deadlines and backoffs are checked.
    pub tick: Duration,
    /// Silence after which a worker is offline.
    pub offline_after: Duration,
    /// Hosts registry (`--hosts`): heartbeats are checked against it.
    pub hosts: Option<broker::identity::Registry>,
}

impl ServiceConfig {
    pub fn new(db: PathBuf) -> ServiceConfig {
        ServiceConfig {
            db,
            provision: ProvisionConfig::default(),
            tick: Duration::from_millis(250),
            offline_after: Duration::from_millis(broker::messages::presence::OFFLINE_AFTER_MS),
            hosts: None,
        }
    }
}

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    #[error(transparent)]
    Provision(#[from] provision::ProvisionError),
    #[error(transparent)]
    Board(#[from] BoardError),
    #[error("{what}: {source}")]
    Nats {
        what: &'static str,
        #[source]
        source: async_nats::Error,
    },
}

fn nats_err<E: Into<async_nats::Error>>(what: &'static str) -> impl FnOnce(E) -> ServiceError {
    move |e| ServiceError::Nats {
        what,
        source: e.into(),
    }
}

/// Requests from the endpoint tasks to the owning task.
pub enum Command {
    Create {
        spec: Box<TaskSpec>,
        reply: oneshot::Sender<Result<CreateTaskReply, ApiError>>,
    },
    Cancel {
        req: CancelRequest,
        reply: oneshot::Sender<Result<CancelReply, ApiError>>,
    },
    Fleet {
        reply: oneshot::Sender<FleetView>,
    },
}

/// One input of the loop.
enum Input {
    Dispatched(Vec<(TaskId, u32)>),
    Command(Command),
    /// Heartbeats that arrived together, applied in one turn.
    Heartbeats(Vec<async_nats::Message>),
    Intake(
        Vec<
            Result<
                jetstream::Message,
                async_nats::error::Error<jetstream::consumer::pull::MessagesErrorKind>,
            >,
        >,
    ),
    /// A change of the fleet's cost-mode key: a put, or `None` when the key
    /// was deleted or purged (the default mode then, as on the workers).
    CostMode(Option<bytes::Bytes>),
    Tick,
}

impl Input {
    fn name(&self) -> &'static str {
        match self {
            Input::Dispatched(_) => "dispatched",
            Input::Command(_) => "command",
            Input::Heartbeats(_) => "heartbeats",
            Input::Intake(_) => "intake",
            Input::CostMode(_) => "cost_mode",
            Input::Tick => "tick",
        }
    }
}

/// What `status` needs from memory.
#[derive(Debug, Clone)]
pub struct FleetView {
    pub workers: Vec<WorkerStatus>,
    pub cost_mode: CostMode,
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// Runs the scheduler until `shutdown` fires.
pub async fn run(
    client: async_nats::Client,
    config: ServiceConfig,
    shutdown: CancellationToken,
) -> Result<(), ServiceError> {
    let js = jetstream::new(client.clone());
    // JetStream may not be ready yet (a cold cluster boot, quorum lost, a
    // leader election): wait for it, stopping only on a configuration error.
    let provisioning = provision::until_ready("JetStream to provision the streams", || {
        provision::provision_all(&js, &config.provision)
    });
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        done = provisioning => done?,
    }
    // Connected now (a daemon's connect returns before it is): the server's
    // INFO is the real one.
    broker::connect::warn_if_open(&client);
    let mut board = Board::open(&config.db)?;
    let mut tasks = Tasks::default();
    for row in board.load_active()? {
        tasks.insert(Active::from_row(row));
    }
    tracing::info!(active = tasks.len(), db = %config.db.display(), "board loaded");

    let kv = provision::until_ready("the config bucket", || {
        provision::config_bucket(&js, &config.provision)
    });
    let kv = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        kv = kv => kv?,
    };
    let cost_mode = read_cost_mode(&kv).await;
    let mut core = Core::new(tasks, Fleet::new(config.offline_after), cost_mode);
    core.hosts = config.hosts.clone();
    {
        let tx = board.transaction()?;
        core.redispatch_pending(&tx)?;
        tx.commit()?;
    }

    let consumer = provision::until_ready("the scheduler's intake consumer", || {
        provision::durable_consumer(
            &js,
            provision::INTAKE_STREAM,
            provision::scheduler_consumer_config(),
        )
    });
    let consumer = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        consumer = consumer => consumer?,
    };
    let mut intake = consumer
        .messages()
        .await
        .map_err(nats_err("reading the intake"))?
        .ready_chunks(512);
    let mut presence = client
        .subscribe(subjects::PRESENCE_ALL)
        .await
        .map_err(nats_err("subscribing to presence"))?
        // A flood of adverts costs one turn (one transaction, one placement
        // pass) per batch, not per heartbeat.
        .ready_chunks(1024);
    let mut mode_watch = kv
        .watch(provision::COST_MODE_KEY)
        .await
        .map_err(nats_err("watching the cost mode"))?;

    let (commands_tx, mut commands) = mpsc::channel::<Command>(1024);
    let api = crate::api::start(client.clone(), config.db.clone(), commands_tx).await?;

    let (dispatched_tx, mut dispatched) = mpsc::unbounded_channel::<Vec<(TaskId, u32)>>();
    let mut out = outbox::Sender::new(client.clone(), js.clone(), dispatched_tx, shutdown.clone());
    let mut tick = tokio::time::interval(config.tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    // Orders left unsent by a previous run go out first.
    out.send(std::mem::take(&mut core.outbox)).await;
    daemon::notify_ready();
    tracing::info!("scheduler ready");

    loop {
        // Not biased: with every input ready at once (a flood of adverts,
        // an intake backlog) each still gets its turns; a biased order let
        // a heartbeat flood starve the intake and the tick.
        let input = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = dispatched.recv() => Input::Dispatched(done),
            Some(cmd) = commands.recv() => Input::Command(cmd),
            Some(beats) = presence.next() => Input::Heartbeats(beats),
            batch = intake.next() => match batch {
                Some(batch) => Input::Intake(batch),
                None => return Err(ServiceError::Nats { what: "intake", source: "intake consumer ended".into() }),
            },
            Some(entry) = mode_watch.next() => match entry {
                Ok(e) if e.operation == jetstream::kv::Operation::Put => Input::CostMode(Some(e.value)),
                Ok(_) => Input::CostMode(None),
                Err(error) => {
                    tracing::warn!(%error, "cost mode watch error; keeping the current mode");
                    continue;
                }
            },
            _ = tick.tick() => Input::Tick,
        };
        tracing::trace!(input = input.name(), "turn");
        let to_ack = apply(&mut board, &mut core, input)?;
        out.send(std::mem::take(&mut core.outbox)).await;
        for (msg, ack) in to_ack {
            let kind = if ack { AckKind::Ack } else { AckKind::Term };
            if let Err(error) = msg.ack_with(kind).await {
                tracing::warn!(%error, "intake ack failed; the message will be redelivered");
            }
        }
    }
    tracing::info!("scheduler stopping");
    drop(api);
    out.drain(Duration::from_secs(5)).await;
    Ok(())
}

/// Applies one input in one board transaction, places what it can and
/// commits. Returns the intake messages to acknowledge (true) or terminate.
fn apply(
    board: &mut Board,
    core: &mut Core,
    input: Input,
) -> Result<Vec<(jetstream::Message, bool)>, BoardError> {
    let mut to_ack = Vec::new();
    let now_ms = broker::time_ms::now_ms();
    let tx = board.transaction()?;
    match input {
        Input::Dispatched(done) => core.dispatched(&tx, &done)?,
        Input::Command(cmd) => handle_command(core, &tx, cmd, now_ms)?,
        Input::Heartbeats(beats) => {
            for msg in beats {
                match decode::<Heartbeat>(&msg.payload) {
                    Ok(beat) if core.admit_heartbeat(&msg.subject, &beat) => {
                        core.heartbeat(&tx, beat, Instant::now(), now_ms)?
                    }
                    Ok(_) => {}
                    Err(error) => {
                        core.count("malformed_heartbeats");
                        tracing::warn!(subject = %msg.subject, %error, "malformed heartbeat dropped");
                    }
                }
            }
        }
        Input::Intake(batch) => {
            for item in batch {
                match item {
                    Ok(msg) => {
                        let keep = handle_intake(core, &tx, &msg, now_ms)?;
                        to_ack.push((msg, keep));
                    }
                    Err(error) => tracing::warn!(%error, "intake read error; continuing"),
                }
            }
        }
        Input::CostMode(None) => {
            tracing::info!(cost_mode = %CostMode::default(), "fleet cost mode key removed; the default applies");
            core.cost_mode = CostMode::default();
        }
        Input::CostMode(Some(value)) => {
            match std::str::from_utf8(&value)
                .ok()
                .and_then(|s| s.trim().parse::<CostMode>().ok())
            {
                Some(mode) => {
                    tracing::info!(cost_mode = %mode, "fleet cost mode changed");
                    core.cost_mode = mode;
                }
                None => {
                    core.count("invalid_cost_modes");
                    tracing::warn!("cost-mode key holds no valid mode; keeping the current one")
                }
            }
        }
        Input::Tick => core.tick(&tx, Instant::now(), now_ms)?,
    }
    core.place_all(&tx, now_ms)?;
    tx.commit()?;
    Ok(to_ack)
}

async fn read_cost_mode(kv: &jetstream::kv::Store) -> CostMode {
    match kv.get(provision::COST_MODE_KEY).await {
        Ok(Some(v)) => std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_default(),
        _ => CostMode::default(),
    }
}

/// Applies one intake message. Returns false for a malformed message, which
/// is terminated rather than redelivered.
fn handle_intake(
    core: &mut Core,
    tx: &crate::board::BoardTx<'_>,
    msg: &jetstream::Message,
    now_ms: i64,
) -> Result<bool, BoardError> {
    let parsed = subjects::parse_task_subject(&msg.subject);
    match parsed {
        Some((id, "submit")) => core.submit_intake(tx, id, &msg.payload, now_ms),
        Some((_, "report")) => match decode::<Report>(&msg.payload) {
            // Permissions pin each host to its own report subject: a body
            // naming another worker is forged (or broken), never applied.
            Ok(report) if subjects::report_sender(&msg.subject) != Some(&report.worker.token()) => {
                core.count("reports_sender_mismatch");
                tracing::warn!(subject = %msg.subject, task_id = %report.task_id, worker = %report.worker,
                    "report naming another worker than its subject dropped");
                Ok(false)
            }
            // Regression: a report was applied to the task its body named,
            // whatever task its subject named.
            Ok(report) if parsed.map(|(id, _)| id) != Some(report.task_id) => {
                core.count("reports_task_mismatch");
                tracing::warn!(subject = %msg.subject, task_id = %report.task_id, worker = %report.worker,
                    "report naming another task than its subject dropped");
                Ok(false)
            }
            Ok(report) => core.report(tx, report, now_ms).map(|_| true),
            Err(error) => {
                core.count("malformed_reports");
                tracing::warn!(subject = %msg.subject, %error, "malformed report dropped");
                Ok(false)
            }
        },
        _ => {
            core.count("unexpected_subjects");
            tracing::warn!(subject = %msg.subject, "unexpected intake subject dropped");
            Ok(false)
        }
    }
}

fn handle_command(
    core: &mut Core,
    tx: &crate::board::BoardTx<'_>,
    cmd: Command,
    now_ms: i64,
) -> Result<(), BoardError> {
    match cmd {
        Command::Create { spec, reply } => {
            let result = match core.submit(tx, *spec.clone(), now_ms) {
                Ok((created, state)) => Ok(CreateTaskReply {
                    task_id: spec.id,
                    state,
                    created,
                }),
                Err(SubmitError::Invalid(rule)) => Err(ApiError {
                    kind: ApiErrorKind::Invalid,
                    message: rule.to_string(),
                }),
                Err(SubmitError::Board(e)) => return Err(e),
            };
            let _ = reply.send(result);
        }
        Command::Cancel { req, reply } => {
            let result = match core.cancel(tx, &req.task_id, req.reason.as_deref(), now_ms) {
                Ok(state) => Ok(CancelReply {
                    task_id: req.task_id,
                    state,
                }),
                Err(CommandError::Api(e)) => Err(e),
                Err(CommandError::Board(e)) => return Err(e),
            };
            let _ = reply.send(result);
        }
        Command::Fleet { reply } => {
            let _ = reply.send(FleetView {
                workers: core.worker_status(),
                cost_mode: core.cost_mode,
                counters: core
                    .counters
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
            });
        }
    }
    Ok(())
}
