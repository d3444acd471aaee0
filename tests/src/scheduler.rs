//! A scheduler for one test: in-process ([`SchedulerHandle::start`]) or as
//! the real `colibri-scheduler` binary ([`SchedulerProcess`]) for `kill -9`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use scheduler::service::{self, ServiceConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::NatsServer;

/// An in-process scheduler service.
pub struct SchedulerHandle {
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), service::ServiceError>>>,
    pub db: PathBuf,
}

impl SchedulerHandle {
    /// Starts the service on `nats` with its board at `db`.
    pub async fn start(nats: &NatsServer, db: &Path) -> anyhow::Result<SchedulerHandle> {
        let client = nats.client().await?;
        let mut config = ServiceConfig::new(db.to_path_buf());
        config.tick = Duration::from_millis(100);
        SchedulerHandle::start_with(client, config).await
    }

    pub async fn start_with(
        client: async_nats::Client,
        config: ServiceConfig,
    ) -> anyhow::Result<SchedulerHandle> {
        let shutdown = CancellationToken::new();
        let db = config.db.clone();
        let task = tokio::spawn(service::run(client.clone(), config, shutdown.clone()));
        // Ready once its endpoints answer.
        crate::eventually(
            Duration::from_secs(15),
            "scheduler endpoints answer",
            || {
                let client = client.clone();
                async move {
                    let subject = broker::subjects::api::subject(broker::subjects::api::STATUS);
                    client.request(subject, "{}".into()).await.ok().map(|_| ())
                }
            },
        )
        .await?;
        Ok(SchedulerHandle {
            shutdown,
            task: Some(task),
            db,
        })
    }

    /// Stops it cleanly and waits (bounded).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            crate::within(Duration::from_secs(10), "scheduler stop", task).await???;
        }
        Ok(())
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The real `colibri-scheduler` binary, killed on drop.
pub struct SchedulerProcess {
    child: Option<Child>,
    url: String,
    db: PathBuf,
}

impl SchedulerProcess {
    pub fn start(nats_url: &str, db: &Path) -> anyhow::Result<SchedulerProcess> {
        let mut p = SchedulerProcess {
            child: None,
            url: nats_url.to_string(),
            db: db.to_path_buf(),
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let bin = crate::workspace_bin("colibri-scheduler");
        let child = Command::new(&bin)
            .arg("--nats-url")
            .arg(&self.url)
            .arg("--db")
            .arg(&self.db)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "spawning {} (run `cargo build --bins` first)",
                    bin.display()
                )
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }
}

impl Drop for SchedulerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
