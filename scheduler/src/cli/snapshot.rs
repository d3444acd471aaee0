//! `snapshot --json [--limit N] [--after ID]`: the whole board, paginated.

use broker::messages::api::{ListTasksRequest, SnapshotReply};
use broker::subjects::api;
use broker::TaskId;
use clap::Args;

use super::{render, ApiClient, CliError};

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// JSON output (the only format).
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    #[arg(long)]
    pub after: Option<TaskId>,
}

pub async fn run(api_client: &ApiClient, args: SnapshotArgs) -> Result<(), CliError> {
    let req = ListTasksRequest {
        status: None,
        limit: Some(args.limit),
        after: args.after,
    };
    let reply: SnapshotReply = api_client.call(api::SNAPSHOT, &req).await?;
    render::json(&reply)
}
