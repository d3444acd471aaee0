//! `cancel ID [--reason TEXT]`

use broker::messages::api::{CancelReply, CancelRequest};
use broker::subjects::api;
use broker::TaskId;
use clap::Args;

use super::{ApiClient, CliError};

#[derive(Debug, Args)]
pub struct CancelArgs {
    pub task_id: TaskId,
    #[arg(long)]
    pub reason: Option<String>,
}

pub async fn run(api_client: &ApiClient, args: CancelArgs) -> Result<(), CliError> {
    let reply: CancelReply = api_client
        .call(
            api::CANCEL,
            &CancelRequest {
                task_id: args.task_id,
                reason: args.reason,
            },
        )
        .await?;
    println!("{} {}", reply.task_id, reply.state);
    Ok(())
}
