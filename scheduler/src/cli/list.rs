//! `list-tasks [--status S] [--limit N] [--after ID] [--json]`

use broker::messages::api::{ListTasksReply, ListTasksRequest};
use broker::messages::TaskState;
use broker::subjects::api;
use broker::TaskId;
use clap::Args;

use super::{render, ApiClient, CliError};

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tasks in this state.
    #[arg(long)]
    pub status: Option<TaskState>,
    /// Page size (at most 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Continue after this task id (printed at the end of the previous page).
    #[arg(long)]
    pub after: Option<TaskId>,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(api_client: &ApiClient, args: ListArgs) -> Result<(), CliError> {
    let req = ListTasksRequest {
        status: args.status,
        limit: Some(args.limit),
        after: args.after,
    };
    let reply: ListTasksReply = api_client.call(api::LIST_TASKS, &req).await?;
    if args.json {
        return render::json(&reply);
    }
    let rows: Vec<Vec<String>> = reply
        .tasks
        .iter()
        .map(|t| {
            let note = match (&t.parked, &t.reason) {
                (Some(p), _) if t.state == TaskState::Queued => format!("parked: {p}"),
                (_, Some(r)) => r.clone(),
                _ => String::new(),
            };
            vec![
                t.task_id.to_string(),
                t.state.to_string(),
                t.attempt.to_string(),
                t.worker
                    .as_ref()
                    .map(|w| w.to_string())
                    .unwrap_or_else(|| "-".into()),
                if t.capabilities.is_empty() {
                    "-".into()
                } else {
                    t.capabilities.joined()
                },
                t.title.clone(),
                note,
            ]
        })
        .collect();
    render::table(
        &["ID", "STATE", "ATTEMPT", "WORKER", "NEEDS", "TITLE", "NOTE"],
        &rows,
    );
    if let Some(next) = reply.next {
        println!("more: --after {next}");
    }
    Ok(())
}
