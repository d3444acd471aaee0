//! Requests to the scheduler's endpoints, with a bounded wait and errors an
//! operator can act on.

use std::time::Duration;

use anyhow::{anyhow, Context};
use broker::connect::{ConnectArgs, ConnectError, Role};
use broker::messages::api::{ApiErrorKind, ApiReply};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::CliError;

/// How long a request waits for the scheduler.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ApiClient {
    pub client: async_nats::Client,
}

impl ApiClient {
    pub async fn connect(connect: &ConnectArgs) -> Result<ApiClient, CliError> {
        // The URLs are parsed before any connection is tried, so a bad one
        // is a usage error whether or not a server is up.
        let client = connect
            .connect("colibri-cli", Role::Client)
            .await
            .map_err(|e| match e {
                ConnectError::BadUrl(_) => CliError::Usage(format!(
                    "--{e} (expected [nats://|tls://|ws://]HOST[:PORT], comma-separated)"
                )),
                e => CliError::Other(anyhow!(e)),
            })?;
        Ok(ApiClient { client })
    }

    /// Calls `colibri.api.<endpoint>`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        endpoint: &str,
        req: &Req,
    ) -> Result<Resp, CliError> {
        let subject = broker::subjects::api::subject(endpoint);
        let payload = serde_json::to_vec(req).context("encoding the request")?;
        let reply = tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.client.request(subject.clone(), payload.into()),
        )
        .await
        .map_err(|_| anyhow!("{subject}: the scheduler did not answer within {REQUEST_TIMEOUT:?}"))?
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                anyhow!("{subject}: no scheduler is running (no responders)")
            }
            _ => anyhow!("{subject}: {e}"),
        })?;
        let reply: ApiReply<Resp> = serde_json::from_slice(&reply.payload)
            .with_context(|| format!("{subject}: unreadable reply"))?;
        match reply {
            ApiReply::Ok(v) => Ok(v),
            ApiReply::Error(e) if e.kind == ApiErrorKind::Invalid => {
                Err(CliError::Usage(e.message))
            }
            ApiReply::Error(e) => Err(CliError::Other(anyhow!("{}", e.message))),
        }
    }
}
