//! A hub on a small disk (issue 12, item 14): the default stream limits fit
//! a 10 GB disk, and limits that do not fit stop the scheduler with the
//! numbers and the settings to change, not a retry loop.

use std::time::Duration;

use broker::provision::{ProvisionConfig, ProvisionError};
use harness::{within, NatsServer, SchedulerHandle};
use scheduler::service::{self, ServiceConfig, ServiceError};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(30);

/// A nats-server that admits `max_file_store` of stream reservations, as
/// one does by default on a disk with 4/3 of that free.
fn hub_with_room(max_file_store: &str) -> anyhow::Result<(tempfile::TempDir, NatsServer)> {
    let dir = tempfile::tempdir()?;
    let conf = dir.path().join("nats-server.conf");
    std::fs::write(
        &conf,
        format!("jetstream {{\n  max_file_store: {max_file_store}\n}}\n"),
    )?;
    let nats = NatsServer::start_with(vec!["-c".into(), conf.display().to_string()])?;
    Ok((dir, nats))
}

/// Regression: the defaults reserved 16 GiB, so a hub needed about 22 GB
/// free and nats-server refused the streams (10047) on a 20 GB VPS. 75 % of
/// the free space of a 10 GB disk (about 7 GB free) is 5 GB.
#[tokio::test]
async fn default_limits_fit_a_10_gb_disk() -> anyhow::Result<()> {
    harness::init_logging();
    let (_dir, nats) = hub_with_room("5GB")?;
    let board = tempfile::tempdir()?;
    let scheduler = SchedulerHandle::start(&nats, &board.path().join("board.db")).await?;
    scheduler.stop().await
}

#[tokio::test]
async fn limits_the_disk_cannot_hold_stop_the_scheduler_with_the_numbers() -> anyhow::Result<()> {
    harness::init_logging();
    let (_dir, nats) = hub_with_room("1GB")?;
    let board = tempfile::tempdir()?;
    let mut config = ServiceConfig::new(board.path().join("board.db"));
    config.provision = ProvisionConfig::default();
    let run = service::run(nats.client().await?, config, CancellationToken::new());
    let error = match within(T, "the scheduler to stop", run).await? {
        Ok(()) => anyhow::bail!("the scheduler started on a disk too small for its limits"),
        Err(e) => e,
    };
    let ServiceError::Provision(provision) = &error else {
        anyhow::bail!("not a provisioning error: {error}");
    };
    assert!(
        matches!(provision, ProvisionError::Storage { .. }),
        "{provision}"
    );
    assert!(!provision.is_transient());
    let text = error.to_string();
    assert!(text.contains("4096 MiB in all"), "{text}");
    assert!(text.contains("sessions_mib = 2048"), "{text}");
    assert!(text.contains("[streams]"), "{text}");
    Ok(())
}
