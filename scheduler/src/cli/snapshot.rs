//! `snapshot --json`: the whole board as one JSON document, `{"status":
//! ..., "tasks": [...]}`. The scheduler answers a page of tasks at a time;
//! this follows the `next` cursor to the end and writes each page out as it
//! arrives (one task per line), so memory stays bounded by one page however
//! big the board is. The status is the one sent with the first page.

use std::io::Write;

use anyhow::{anyhow, Context};
use broker::messages::api::{ListTasksRequest, SnapshotReply};
use broker::subjects::api;
use broker::TaskId;
use clap::Args;

use super::{ApiClient, CliError};

#[derive(Debug, Args)]
pub struct SnapshotArgs {
    /// JSON output (the only format).
    #[arg(long)]
    pub json: bool,
    /// Tasks asked for per request (the output is always every task).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Start after this task id instead of at the oldest task.
    #[arg(long)]
    pub after: Option<TaskId>,
}

pub async fn run(api_client: &ApiClient, args: SnapshotArgs) -> Result<(), CliError> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut after = args.after;
    let mut first_page = true;
    let mut any_task = false;
    loop {
        let req = ListTasksRequest {
            status: None,
            limit: Some(args.limit),
            after,
        };
        let page: SnapshotReply = api_client.call(api::SNAPSHOT, &req).await?;
        if first_page {
            let status = serde_json::to_string(&page.status).context("encoding the status")?;
            write!(out, "{{\n  \"status\": {status},\n  \"tasks\": [").context("writing")?;
        }
        for task in &page.tasks {
            let task = serde_json::to_string(task).context("encoding a task")?;
            let sep = if any_task { "," } else { "" };
            write!(out, "{sep}\n    {task}").context("writing")?;
            any_task = true;
        }
        first_page = false;
        match page.next {
            None => break,
            // A cursor that does not move would loop forever.
            Some(next) if Some(next) == after => {
                return Err(anyhow!("snapshot: the scheduler returned cursor {next} twice").into())
            }
            Some(next) => after = Some(next),
        }
        out.flush().context("writing")?;
    }
    writeln!(out, "\n  ]\n}}").context("writing")?;
    out.flush().context("writing")?;
    Ok(())
}
