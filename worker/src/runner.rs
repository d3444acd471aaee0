//! The worker daemon's main loop, [`run`]: wait for the hub's streams, attach the order
//! feed, heartbeat, and turn each order into an attempt task; on shutdown,
//! stop every agent, report each one interrupted, say goodbye.
//!
//! One owning task holds the state (attempts running, orders seen); attempt
//! tasks report back over a channel, so nothing is shared behind a lock.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Message};
use broker::messages::{
    decode, AttemptRef, CancelOrder, Outcome, ReportBody, RunOrder, SharedTranscript, WorkItem,
    WorkMessage,
};
use broker::provision::{
    CONFIG_BUCKET, INTAKE_STREAM, SESSIONS_STREAM, TRANSCRIPTS_STREAM, WORK_STREAM,
};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::config::{Confinement, WorkerConfig};
use crate::error::WorkerError;
use crate::executor::Executor;
use crate::presence::Presence;
use crate::reports::Reporter;
use crate::session_output::SessionOutput;
use crate::supervise::{Ending, StopCause};
use crate::transcripts::TranscriptStore;

/// Orders remembered to drop duplicates; the oldest are forgotten first.
const SEEN_CAPACITY: usize = 100_000;

/// Runs the worker until `shutdown` is cancelled, then stops its agents
/// (reporting them interrupted) within `limits.shutdown_grace`.
pub async fn run(
    client: async_nats::Client,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    // A root worker never runs an agent as root: it refuses to start
    // without a usable agent_user.
    config.agent_ids().map_err(WorkerError::AgentUser)?;
    let config = Arc::new(config);
    let root = config.work_root();
    std::fs::create_dir_all(&root).map_err(|source| WorkerError::StateDir {
        path: root.clone(),
        source,
    })?;
    let js = jetstream::new(client.clone());
    provision(&js, &shutdown).await?;
    if shutdown.is_cancelled() {
        // Told to stop while waiting for the hub: nothing was started.
        return Ok(());
    }
    broker::connect::warn_if_open(&client);
    if config.confinement == Confinement::Unconfined {
        warn!(worker = %config.worker_id, "agents run UNCONFINED: full access to this host's files, processes and network");
    }
    let incarnation = uuid::Uuid::new_v4();
    let (order_tx, order_rx) = mpsc::channel(256);
    let feed_stop = shutdown.child_token();
    let feed = tokio::spawn(crate::orders::feed(
        js.clone(),
        config.worker_id.clone(),
        order_tx,
        feed_stop.clone(),
    ));
    daemon::notify_ready();
    info!(worker = %config.worker_id, %incarnation, slots = config.slots, confinement = config.confinement.as_str(),
        agents = %config.agents.enabled().joined(), tags = %config.capabilities.joined(), "worker ready");

    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let fleet_cost = crate::cost::watch_fleet(js.clone(), shutdown.child_token());
    let fleet_mode = fleet_cost.clone();
    let transcripts = TranscriptStore::new(js.clone());
    let reporter = Reporter::new(js, config.worker_id.clone(), incarnation);
    let sessions = SessionOutput::new(
        client.clone(),
        reporter.clone(),
        config.worker_id.clone(),
        config.state_dir.clone(),
    )
    .with_fleet_cost(fleet_cost)
    .with_stall_after(config.limits.stall)
    .with_redactor(crate::secret::Redactor::new(config.agents.secrets()));
    let mut state = State {
        presence: Presence::new(&config, incarnation),
        fleet_mode,
        reporter,
        transcripts,
        executor: Executor::new(config.clone()).with_sessions(sessions),
        client,
        config,
        running: HashMap::new(),
        seen: Seen::default(),
        early_cancels: Seen::default(),
        malformed: 0,
        tracker: TaskTracker::new(),
        done_tx,
    };
    state.serve(order_rx, done_rx, &shutdown).await;
    feed_stop.cancel();
    let _ = feed.await;
    Ok(())
}

/// Waits until the hub (the scheduler) has provisioned every stream this
/// worker uses, or the worker is told to stop. A worker never creates a
/// stream itself: the hub's `[streams]` settings (replicas, limits) are the
/// only ones, whichever process starts first.
async fn provision(
    js: &jetstream::Context,
    shutdown: &CancellationToken,
) -> Result<(), WorkerError> {
    let mut delay = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            ready = provisioned(js) => if ready {
                return Ok(());
            },
        }
        info!(
            awaiting = "the hub (colibri-scheduler) to provision the streams",
            retry_in_ms = delay.as_millis() as u64,
            "streams not there yet; waiting"
        );
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Whether every stream this worker uses exists (stream info is all a
/// least-privilege worker identity may ask of the JetStream API here).
async fn provisioned(js: &jetstream::Context) -> bool {
    let config = format!("KV_{CONFIG_BUCKET}");
    for stream in [
        WORK_STREAM,
        INTAKE_STREAM,
        SESSIONS_STREAM,
        TRANSCRIPTS_STREAM,
        config.as_str(),
    ] {
        if js.get_stream(stream).await.is_err() {
            return false;
        }
    }
    true
}

/// A bounded set of recently seen attempts.
#[derive(Default)]
struct Seen {
    set: HashSet<AttemptRef>,
    order: VecDeque<AttemptRef>,
}

impl Seen {
    /// Adds `key`; false when it was already there.
    fn insert(&mut self, key: AttemptRef) -> bool {
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > SEEN_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    fn contains(&self, key: &AttemptRef) -> bool {
        self.set.contains(key)
    }
}

struct State {
    config: Arc<WorkerConfig>,
    client: async_nats::Client,
    presence: Presence,
    /// The fleet cost mode, advertised in every heartbeat.
    fleet_mode: tokio::sync::watch::Receiver<crate::cost::FleetCost>,
    reporter: Reporter,
    /// Shares finished sessions' transcripts; fetches continued ones.
    transcripts: TranscriptStore,
    executor: Executor,
    /// Attempts whose Finished report is not stored yet, with their stop switch.
    running: HashMap<AttemptRef, watch::Sender<Option<StopCause>>>,
    seen: Seen,
    /// Cancels that arrived before their Run.
    early_cancels: Seen,
    /// Orders that could not be decoded (logged, terminated, counted).
    malformed: u64,
    tracker: TaskTracker,
    done_tx: mpsc::UnboundedSender<AttemptRef>,
}

impl State {
    async fn serve(
        &mut self,
        mut orders: mpsc::Receiver<Message>,
        mut done: mpsc::UnboundedReceiver<AttemptRef>,
        shutdown: &CancellationToken,
    ) {
        let mut beat = tokio::time::interval(self.config.heartbeat_interval);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(key) = done.recv() => { self.running.remove(&key); }
                Some(msg) = orders.recv() => self.handle(msg).await,
                _ = beat.tick() => {
                    let mode = self.fleet_mode.borrow().mode;
                    self.presence.send(&self.client, self.running_list(), false, mode).await
                }
            }
        }
        self.shut_down(done).await;
    }

    fn running_list(&self) -> Vec<AttemptRef> {
        self.running.keys().copied().collect()
    }

    async fn handle(&mut self, msg: Message) {
        let order: WorkMessage = match decode(&msg.payload) {
            Ok(order) => order,
            Err(error) => {
                self.malformed += 1;
                warn!(%error, subject = %msg.subject, malformed_total = self.malformed, "malformed order dropped");
                if let Err(error) = msg.ack_with(AckKind::Term).await {
                    warn!(%error, "terminating a malformed order");
                }
                return;
            }
        };
        match order.item {
            WorkItem::Run(run) => self.run_order(*run, msg),
            WorkItem::Cancel(cancel) => self.cancel_order(cancel, msg),
        }
    }

    fn run_order(&mut self, order: RunOrder, msg: Message) {
        let key = AttemptRef {
            task_id: order.task.id,
            attempt: order.attempt,
        };
        if !self.seen.insert(key) {
            debug!(task_id = %key.task_id, attempt = key.attempt, "duplicate run order acknowledged");
            tokio::spawn(async move { ack(&msg, false).await });
            return;
        }
        let (stop_tx, mut stop_rx) = watch::channel(None);
        if self.early_cancels.contains(&key) {
            let _ = stop_tx.send(Some(StopCause::Cancel(
                "cancelled before it started".into(),
            )));
        }
        if self.running.len() >= self.config.slots as usize {
            warn!(task_id = %key.task_id, attempt = key.attempt, running = self.running.len(), slots = self.config.slots,
                "order beyond this worker's slots; running it anyway");
        }
        self.running.insert(key, stop_tx);
        let executor = self.executor.clone();
        let reporter = self.reporter.clone();
        let transcripts = self.transcripts.clone();
        let state_dir = self.config.state_dir.clone();
        let runs_agents = self.config.executor != crate::executor::ExecutorKind::Noop;
        let done = self.done_tx.clone();
        self.tracker.spawn(async move {
            // A continued session's transcript is made local first (the
            // no-spawn executor runs nothing and needs none).
            let prepared = if runs_agents {
                transcripts.prepare_continuation(&state_dir, &order).await
            } else {
                Ok(())
            };
            let begun = match prepared {
                Ok(()) => executor.begin(&order, &mut stop_rx).await,
                Err(refusal) => Err(Ending::without_run(Outcome::Rejected, refusal)),
            };
            let ending = match begun {
                Err(ending) => {
                    ack(&msg, true).await;
                    ending
                }
                Ok(begun) => {
                    let started = ReportBody::Started {
                        session: order.session,
                        pid: begun.pid(),
                    };
                    reporter
                        .publish(&reporter.report(key.task_id, key.attempt, started))
                        .await;
                    ack(&msg, true).await;
                    executor.finish(begun, &mut stop_rx).await
                }
            };
            // Only an attempt that ran has a transcript to share.
            let transcript = match ending.session {
                Some(_) => transcripts.share_attempt(&state_dir, &order).await,
                None => None,
            };
            finish(&reporter, key, ending, transcript).await;
            let _ = done.send(key);
        });
    }

    fn cancel_order(&mut self, cancel: CancelOrder, msg: Message) {
        let key = AttemptRef {
            task_id: cancel.task_id,
            attempt: cancel.attempt,
        };
        match self.running.get(&key) {
            Some(stop) => {
                info!(task_id = %key.task_id, attempt = key.attempt, reason = %cancel.reason, "cancelling");
                stop.send_if_modified(|cause| {
                    if cause.is_none() {
                        *cause = Some(StopCause::Cancel(cancel.reason.clone()));
                        true
                    } else {
                        false
                    }
                });
            }
            None if self.seen.contains(&key) => {
                info!(task_id = %key.task_id, attempt = key.attempt, "cancel for an attempt already ended")
            }
            None => {
                info!(task_id = %key.task_id, attempt = key.attempt, "cancel for an unknown attempt");
                self.early_cancels.insert(key);
            }
        }
        tokio::spawn(async move { ack(&msg, true).await });
    }

    async fn shut_down(&mut self, mut done: mpsc::UnboundedReceiver<AttemptRef>) {
        daemon::notify_stopping();
        info!(running = self.running.len(), "stopping agents");
        for stop in self.running.values() {
            stop.send_if_modified(|cause| {
                if cause.is_none() {
                    *cause = Some(StopCause::Shutdown);
                    true
                } else {
                    false
                }
            });
        }
        self.tracker.close();
        let grace = self
            .config
            .limits
            .shutdown_grace
            .saturating_sub(Duration::from_millis(500));
        let tracker = self.tracker.clone();
        let drained = daemon::shutdown::drain_within(grace, tracker.wait()).await;
        while let Ok(key) = done.try_recv() {
            self.running.remove(&key);
        }
        if !drained {
            error!(
                left = self.running.len(),
                "agents or their reports did not finish within the shutdown grace"
            );
        }
        let mode = self.fleet_mode.borrow().mode;
        self.presence
            .send(&self.client, self.running_list(), true, mode)
            .await;
        info!("worker stopped");
    }
}

async fn finish(
    reporter: &Reporter,
    key: AttemptRef,
    ending: Ending,
    transcript: Option<SharedTranscript>,
) {
    let (events, dropped) = ending
        .session
        .as_ref()
        .map_or((0, 0), |s| (s.events, s.dropped));
    info!(task_id = %key.task_id, attempt = key.attempt, outcome = ?ending.outcome, exit_code = ?ending.exit_code,
        signal = ?ending.signal, reason = ending.reason.as_deref().unwrap_or(""), events, dropped, "attempt finished");
    let body = ReportBody::Finished {
        outcome: ending.outcome,
        exit_code: ending.exit_code,
        signal: ending.signal,
        reason: ending.reason,
        usage: ending.usage,
        transcript,
    };
    reporter
        .publish(&reporter.report(key.task_id, key.attempt, body))
        .await;
}

/// Acknowledges an order, retrying a few times (a lost ack only means a
/// redelivery, which the seen-set answers).
async fn ack(msg: &Message, double: bool) {
    let mut delay = Duration::from_millis(50);
    for _ in 0..5 {
        let result = if double {
            msg.double_ack().await
        } else {
            msg.ack().await
        };
        match result {
            Ok(()) => return,
            Err(error) => {
                debug!(%error, "order ack failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
    warn!(subject = %msg.subject, "order not acknowledged; it will be redelivered and deduplicated");
}
