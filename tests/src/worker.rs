//! A real worker (`worker::run`) in-process for one test, killed on drop.

use std::time::Duration;

use broker::{TagSet, WorkerId};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use worker::config::Confinement;
use worker::WorkerConfig;

use crate::NatsServer;

pub struct WorkerHandle {
    pub id: WorkerId,
    pub state: tempfile::TempDir,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), worker::WorkerError>>>,
}

impl WorkerHandle {
    /// Starts a worker advertising `tags` with `slots`, running plain
    /// commands unconfined unless `configure` says otherwise.
    pub async fn start(
        nats: &NatsServer,
        id: &str,
        tags: &[&str],
        slots: u32,
        configure: impl FnOnce(&mut WorkerConfig),
    ) -> anyhow::Result<WorkerHandle> {
        let id = WorkerId::parse(id)?;
        let state = tempfile::tempdir()?;
        let mut config = WorkerConfig::new(id.clone(), state.path());
        config.capabilities = TagSet::parse_lists(tags)?;
        config.slots = slots;
        config.confinement = Confinement::Unconfined;
        config.agents.set_allow_command(true);
        config.heartbeat_interval = Duration::from_millis(500);
        config.connect = nats.connect_args();
        configure(&mut config);
        let client = nats.client().await?;
        // The hub provisions and workers only bind: a test without a
        // scheduler stands in for it.
        let js = async_nats::jetstream::new(client.clone());
        let limits = broker::provision::ProvisionConfig::default();
        let provisioning = broker::provision::provision_all(&js, &limits);
        crate::within(Duration::from_secs(20), "provisioning", provisioning).await??;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker::run(client, config, shutdown.clone()));
        Ok(WorkerHandle {
            id,
            state,
            shutdown,
            task: Some(task),
        })
    }

    /// SIGTERM-like stop: agents interrupted, leaving heartbeat sent.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            crate::within(Duration::from_secs(30), "worker stop", task).await???;
        }
        Ok(())
    }

    /// Abrupt loss: the task is dropped mid-flight (no leaving heartbeat).
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
