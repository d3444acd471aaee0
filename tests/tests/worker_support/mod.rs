//! Fixtures shared by the worker's end-to-end tests: a real nats-server, a
//! worker running in-process (`worker::run`), orders published the way the
//! scheduler publishes them, and reports and heartbeats read back.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use broker::messages::{
    decode, encode, CancelOrder, Heartbeat, Outcome, Report, ReportBody, RunOrder, TaskSpec,
    WorkItem, WorkMessage,
};
use broker::{subjects, SessionId, TagSet, WorkerId};
use futures::StreamExt;
use harness::{within, NatsServer};
use tokio_util::sync::CancellationToken;
use worker::config::Confinement;
use worker::WorkerConfig;

pub const LONG: Duration = Duration::from_secs(20);

/// The fake agent, built once per test binary (integration tests of another
/// package do not build this package's binaries by themselves).
pub fn fake_agent() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args([
                    "build",
                    "-q",
                    "-p",
                    "colibri-worker",
                    "--bin",
                    "colibri-fake-agent",
                ])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "building colibri-fake-agent failed"
            );
            harness::workspace_bin("colibri-fake-agent")
        })
        .clone()
}

/// A command task running the fake agent with `args`.
pub fn fake_task(args: &[&str]) -> TaskSpec {
    let mut argv = vec![fake_agent().display().to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    TaskSpec::command("fake agent", TagSet::new(), argv)
}

pub fn command_task(argv: &[&str]) -> TaskSpec {
    TaskSpec::command(
        "command",
        TagSet::new(),
        argv.iter().map(|s| s.to_string()).collect(),
    )
}

/// A nats-server with subscriptions to every report and heartbeat.
pub struct Fleet {
    pub nats: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    reports: async_nats::Subscriber,
    presence: async_nats::Subscriber,
    pub seen_reports: Vec<Report>,
}

/// A worker running in-process.
pub struct Worker {
    pub id: WorkerId,
    pub state: tempfile::TempDir,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<Result<(), worker::WorkerError>>,
}

impl Worker {
    pub fn workdir(&self, task: &TaskSpec, attempt: u32) -> PathBuf {
        self.state
            .path()
            .join("work")
            .join(format!("{}-{attempt}", task.id))
    }
}

impl Fleet {
    pub async fn start() -> anyhow::Result<Fleet> {
        harness::init_logging();
        let nats = NatsServer::start()?;
        let client = nats.client().await?;
        let js = jetstream::new(client.clone());
        // The hub provisions; workers only bind (issue 12 item 10).
        let limits = broker::provision::ProvisionConfig::default();
        let provisioning = broker::provision::provision_all(&js, &limits);
        within(Duration::from_secs(20), "provisioning", provisioning).await??;
        let reports = client.subscribe(subjects::TASK_REPORT_ALL).await?;
        let presence = client.subscribe(subjects::PRESENCE_ALL).await?;
        client.flush().await?;
        Ok(Fleet {
            nats,
            client,
            js,
            reports,
            presence,
            seen_reports: Vec::new(),
        })
    }

    /// A worker config for tests: unconfined, `command` allowed, short graces.
    pub fn config(name: &str, state: &Path) -> WorkerConfig {
        let mut cfg = WorkerConfig::new(WorkerId::parse(name).expect("valid worker id"), state);
        cfg.confinement = Confinement::Unconfined;
        cfg.agents.set_allow_command(true);
        cfg.limits.kill_grace = Duration::from_millis(500);
        cfg.limits.spawn_backoff = Duration::from_millis(10);
        cfg.limits.shutdown_grace = Duration::from_secs(5);
        cfg.heartbeat_interval = Duration::from_millis(200);
        cfg
    }

    /// Starts a worker (configured by `tweak`) and waits for its first heartbeat.
    pub async fn worker(
        &mut self,
        name: &str,
        tweak: impl FnOnce(&mut WorkerConfig),
    ) -> anyhow::Result<Worker> {
        let state = tempfile::tempdir()?;
        let mut cfg = Fleet::config(name, state.path());
        tweak(&mut cfg);
        let id = cfg.worker_id.clone();
        let shutdown = CancellationToken::new();
        let client = self.nats.client().await?;
        let handle = tokio::spawn(worker::run(client, cfg, shutdown.clone()));
        self.heartbeat(|hb| hb.worker == id).await?;
        Ok(Worker {
            id,
            state,
            shutdown,
            handle,
        })
    }

    /// The next heartbeat matching `pred`.
    pub async fn heartbeat(
        &mut self,
        pred: impl Fn(&Heartbeat) -> bool,
    ) -> anyhow::Result<Heartbeat> {
        let presence = &mut self.presence;
        within(LONG, "a heartbeat", async {
            while let Some(msg) = presence.next().await {
                if let Ok(hb) = decode::<Heartbeat>(&msg.payload) {
                    if pred(&hb) {
                        return Ok(hb);
                    }
                }
            }
            anyhow::bail!("presence subscription ended")
        })
        .await?
    }

    /// Publishes an order on the worker's work subject, as the scheduler does.
    pub async fn order(&self, worker: &WorkerId, item: WorkItem) -> anyhow::Result<()> {
        self.raw_order(worker, encode(&WorkMessage::new(item)).to_vec())
            .await
    }

    pub async fn raw_order(&self, worker: &WorkerId, payload: Vec<u8>) -> anyhow::Result<()> {
        within(LONG, "order stored", async {
            self.js
                .publish(subjects::work(worker), payload.into())
                .await?
                .await
                .context("order ack")
        })
        .await??;
        Ok(())
    }

    pub async fn run(
        &self,
        worker: &WorkerId,
        task: &TaskSpec,
        attempt: u32,
    ) -> anyhow::Result<()> {
        let order = RunOrder {
            attempt,
            ..run_order(task, Default::default())
        };
        self.place(worker, order).await.map(|_| ())
    }

    /// Orders `order` on `worker`, as the scheduler does; returns its session.
    pub async fn place(&self, worker: &WorkerId, order: RunOrder) -> anyhow::Result<SessionId> {
        let session = order.session;
        self.order(worker, WorkItem::Run(Box::new(order))).await?;
        Ok(session)
    }

    pub async fn cancel(
        &self,
        worker: &WorkerId,
        task: &TaskSpec,
        attempt: u32,
    ) -> anyhow::Result<()> {
        let order = CancelOrder {
            task_id: task.id,
            attempt,
            reason: "test cancel".into(),
        };
        self.order(worker, WorkItem::Cancel(order)).await
    }

    /// The next report of `task` of the given kind (`started`, `finished`).
    pub async fn report(&mut self, task: &TaskSpec, kind: &str) -> anyhow::Result<Report> {
        if let Some(r) = self
            .seen_reports
            .iter()
            .find(|r| r.task_id == task.id && r.body.kind() == kind)
        {
            return Ok(r.clone());
        }
        let reports = &mut self.reports;
        let seen = &mut self.seen_reports;
        within(LONG, &format!("a {kind} report"), async {
            while let Some(msg) = reports.next().await {
                let report: Report = decode(&msg.payload)?;
                seen.push(report.clone());
                if report.task_id == task.id && report.body.kind() == kind {
                    return Ok(report);
                }
            }
            anyhow::bail!("report subscription ended")
        })
        .await?
    }

    /// The Finished report of `task`: (outcome, exit code, reason).
    pub async fn finished(
        &mut self,
        task: &TaskSpec,
    ) -> anyhow::Result<(Outcome, Option<i32>, String)> {
        match self.report(task, "finished").await?.body {
            ReportBody::Finished {
                outcome,
                exit_code,
                reason,
                ..
            } => Ok((outcome, exit_code, reason.unwrap_or_default())),
            other => anyhow::bail!("not a finished report: {other:?}"),
        }
    }
}

/// The first run order of `task` under `mode`, with a new session.
pub fn run_order(task: &TaskSpec, mode: broker::cost_mode::CostMode) -> RunOrder {
    RunOrder {
        task: task.clone(),
        attempt: 1,
        session: SessionId::new(),
        cost_mode: mode,
        spent: Default::default(),
        continue_from: None,
    }
}

/// True while `pid` is a live process (a zombie counts as dead).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next().map(String::from));
            !matches!(state.as_deref(), Some("Z") | Some("X"))
        }
    }
}

/// The worker binary, built once per test binary.
pub fn worker_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "-q", "-p", "colibri-worker", "--bins"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "building colibri-worker failed"
            );
            harness::workspace_bin("colibri-worker")
        })
        .clone()
}
