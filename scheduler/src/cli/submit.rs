//! `create-task` (through the scheduler's endpoint, answered once stored)
//! and `intake-task` (through the durable intake stream, with the task id as
//! `Nats-Msg-Id`, so a retried submit never makes two tasks).

use std::time::Duration;

use anyhow::{anyhow, Context};
use async_nats::jetstream::{self, message::PublishMessage};
use broker::messages::api::CreateTaskReply;
use broker::messages::{encode, TaskSpec};
use broker::subjects::{self, api};

use super::{ApiClient, CliError};

/// Stores `spec` (built and checked by `TaskArgs::to_spec` before connecting).
pub async fn create(api_client: &ApiClient, spec: TaskSpec) -> Result<(), CliError> {
    let reply: CreateTaskReply = api_client.call(api::CREATE_TASK, &spec).await?;
    println!("{}", reply.task_id);
    Ok(())
}

/// Submits `spec` (built and checked before connecting) through the intake.
pub async fn intake(api_client: &ApiClient, spec: TaskSpec) -> Result<(), CliError> {
    let js = jetstream::new(api_client.client.clone());
    let publish = PublishMessage::build()
        .payload(encode(&spec))
        .message_id(spec.id.to_string())
        .header(broker::HEADER_KIND, "submit");
    let ack = tokio::time::timeout(Duration::from_secs(10), async {
        js.send_publish(subjects::task_submit(&spec.id), publish).await?.await
    })
    .await
    .map_err(|_| anyhow!("intake: JetStream did not acknowledge within 10 s"))?
    .context("intake: publish failed (is the COLIBRI_INTAKE stream provisioned? start the scheduler once)")?;
    if ack.duplicate {
        eprintln!("note: task {} was already submitted", spec.id);
    }
    println!("{}", spec.id);
    Ok(())
}
