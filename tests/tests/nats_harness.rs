//! The harness itself: a server starts, takes JetStream, restarts on the same
//! store and keeps what was stored.

use std::time::Duration;

use harness::{within, NatsServer};

#[tokio::test]
async fn restart_keeps_jetstream_data() -> anyhow::Result<()> {
    let mut nats = NatsServer::start()?;
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    broker::provision::provision_all(&js, &Default::default()).await?;
    let id = broker::TaskId::new();
    within(Duration::from_secs(5), "publish", async {
        js.publish(broker::subjects::task_submit(&id), "{}".into())
            .await?
            .await
    })
    .await??;
    nats.restart()?;
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(broker::provision::INTAKE_STREAM).await?;
    let info = within(Duration::from_secs(5), "stream info", stream.info()).await??;
    assert_eq!(info.state.messages, 1);
    Ok(())
}
