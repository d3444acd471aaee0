//! `set-cost-mode MODE`: writes the fleet's mode to the replicated config
//! bucket; the scheduler and every worker watch it and apply it at once.

use anyhow::Context;
use async_nats::jetstream;
use broker::cost_mode::CostMode;
use broker::provision;
use clap::Args;

use super::{ApiClient, CliError};

#[derive(Debug, Args)]
pub struct SetCostModeArgs {
    /// fast, smart or max.
    pub mode: CostMode,
}

pub async fn run(api_client: &ApiClient, args: SetCostModeArgs) -> Result<(), CliError> {
    let js = jetstream::new(api_client.client.clone());
    let kv = js
        .get_key_value(provision::CONFIG_BUCKET)
        .await
        .context("the config bucket does not exist: start the scheduler once")?;
    kv.put(provision::COST_MODE_KEY, args.mode.as_str().into())
        .await
        .context("writing the cost mode")?;
    println!("cost mode: {}", args.mode);
    Ok(())
}
