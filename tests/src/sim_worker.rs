//! A simulated worker that speaks the wire contract by hand: it heartbeats,
//! reads its orders, and reports exactly what a test tells it to. Scheduler
//! tests use it to hold attempts open, report late, or fall silent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use async_nats::jetstream::{self, message::PublishMessage};
use broker::messages::presence::HEARTBEAT_INTERVAL_MS;
use broker::messages::work::{RunOrder, WorkItem, WorkMessage};
use broker::messages::{
    decode, encode, AttemptRef, Heartbeat, Outcome, Report, ReportBody, SharedTranscript,
};
use broker::{provision, subjects, TagSet, WorkerId};
use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct SimWorker {
    pub id: WorkerId,
    pub incarnation: uuid::Uuid,
    client: async_nats::Client,
    js: jetstream::Context,
    running: Arc<Mutex<Vec<AttemptRef>>>,
    beat: Arc<Mutex<Heartbeat>>,
    orders: tokio::sync::mpsc::UnboundedReceiver<WorkItem>,
    silence: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl SimWorker {
    /// Starts heartbeating as `id` with `tags` and `slots`, enabling the
    /// `command` and `pi` agents.
    pub async fn start(
        client: async_nats::Client,
        id: &str,
        tags: &[&str],
        slots: u32,
    ) -> anyhow::Result<SimWorker> {
        let id = WorkerId::parse(id)?;
        let js = jetstream::new(client.clone());
        provision::provision_all(&js, &Default::default()).await?;
        let consumer = provision::durable_consumer(
            &js,
            provision::WORK_STREAM,
            provision::worker_consumer_config(&id),
        )
        .await?;
        let incarnation = uuid::Uuid::new_v4();
        let beat = Heartbeat {
            v: broker::WIRE_VERSION,
            worker: id.clone(),
            host: "sim".into(),
            incarnation,
            version: "sim".into(),
            tags: TagSet::parse_lists(tags)?,
            agents: TagSet::parse_lists(["command,pi"])?,
            slots,
            running: vec![],
            interval_ms: HEARTBEAT_INTERVAL_MS,
            leaving: false,
            cost_mode: None,
            at_ms: 0,
        };
        let running = Arc::new(Mutex::new(Vec::new()));
        let beat = Arc::new(Mutex::new(beat));
        let silence = CancellationToken::new();
        let mut tasks = Vec::new();
        {
            let (client, beat, running, silence) = (
                client.clone(),
                beat.clone(),
                running.clone(),
                silence.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        _ = silence.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let payload = {
                        let mut b = beat.lock().unwrap().clone();
                        b.running = running.lock().unwrap().clone();
                        b.at_ms = broker::time_ms::now_ms();
                        encode(&b)
                    };
                    let subject = subjects::presence(&b_id(&beat));
                    let _ = client.publish(subject, payload).await;
                }
            }));
        }
        let (tx, orders) = tokio::sync::mpsc::unbounded_channel();
        {
            let silence = silence.clone();
            tasks.push(tokio::spawn(async move {
                let Ok(mut messages) = consumer.messages().await else {
                    return;
                };
                loop {
                    let msg = tokio::select! {
                        _ = silence.cancelled() => return,
                        m = messages.next() => m,
                    };
                    let Some(Ok(msg)) = msg else { continue };
                    if let Ok(order) = decode::<WorkMessage>(&msg.payload) {
                        let _ = msg.ack().await;
                        let _ = tx.send(order.item);
                    }
                }
            }));
        }
        Ok(SimWorker {
            id,
            incarnation,
            client,
            js,
            running,
            beat,
            orders,
            silence,
            tasks,
        })
    }

    /// The next order, within `limit`.
    pub async fn next_order(&mut self, limit: Duration) -> anyhow::Result<WorkItem> {
        crate::within(
            limit,
            &format!("an order for {}", self.id),
            self.orders.recv(),
        )
        .await?
        .context("order channel closed")
    }

    /// The next run order, within `limit`.
    pub async fn next_run(&mut self, limit: Duration) -> anyhow::Result<RunOrder> {
        match self.next_order(limit).await? {
            WorkItem::Run(run) => Ok(*run),
            other => bail!("expected a run order, got {other:?}"),
        }
    }

    /// True when no order arrives within `quiet`.
    pub async fn no_order_within(&mut self, quiet: Duration) -> bool {
        tokio::time::timeout(quiet, self.orders.recv())
            .await
            .is_err()
    }

    async fn report(&self, run: &RunOrder, body: ReportBody) -> anyhow::Result<()> {
        let report = Report {
            v: broker::WIRE_VERSION,
            task_id: run.task.id,
            attempt: run.attempt,
            worker: self.id.clone(),
            incarnation: self.incarnation,
            at_ms: broker::time_ms::now_ms(),
            body,
        };
        // Like a real worker: retried until acknowledged (the server may be restarting).
        crate::eventually(Duration::from_secs(30), "report acknowledged", || async {
            let publish = PublishMessage::build()
                .payload(encode(&report))
                .message_id(report.msg_id());
            let subject = subjects::task_report(&run.task.id, &report.worker);
            self.js
                .send_publish(subject, publish)
                .await
                .ok()?
                .await
                .ok()
        })
        .await?;
        Ok(())
    }

    pub async fn started(&self, run: &RunOrder) -> anyhow::Result<()> {
        self.running.lock().unwrap().push(AttemptRef {
            task_id: run.task.id,
            attempt: run.attempt,
        });
        self.report(
            run,
            ReportBody::Started {
                session: run.session,
                pid: None,
            },
        )
        .await
    }

    pub async fn finished(&self, run: &RunOrder, outcome: Outcome) -> anyhow::Result<()> {
        self.finished_sharing(run, outcome, None).await
    }

    /// Reports `run` finished, its transcript shared as `transcript` says.
    pub async fn finished_sharing(
        &self,
        run: &RunOrder,
        outcome: Outcome,
        transcript: Option<SharedTranscript>,
    ) -> anyhow::Result<()> {
        self.running
            .lock()
            .unwrap()
            .retain(|r| !(r.task_id == run.task.id && r.attempt == run.attempt));
        self.report(
            run,
            ReportBody::Finished {
                outcome,
                exit_code: Some(0),
                signal: None,
                reason: None,
                usage: None,
                transcript,
            },
        )
        .await
    }

    /// Claims `run` is still running (for fencing tests).
    pub fn claim_running(&self, run: &RunOrder) {
        self.running.lock().unwrap().push(AttemptRef {
            task_id: run.task.id,
            attempt: run.attempt,
        });
    }

    /// Stops heartbeats and order reading, as a dead host would.
    pub fn go_silent(&self) {
        self.silence.cancel();
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Changes the advertised slots.
    pub fn set_slots(&self, slots: u32) {
        self.beat.lock().unwrap().slots = slots;
    }
}

fn b_id(beat: &Arc<Mutex<Heartbeat>>) -> WorkerId {
    beat.lock().unwrap().worker.clone()
}

impl Drop for SimWorker {
    fn drop(&mut self) {
        self.silence.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}
