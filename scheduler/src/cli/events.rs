//! `events [--task ID] [--json]`: task and worker lifecycle events, live, as
//! `nats sub 'colibri.task.*.state' 'colibri.worker.*.state'` would show them
//! but readable. Runs until interrupted (or until the task ends, with --task).

use broker::messages::{decode, TaskEvent, WorkerEvent};
use broker::{subjects, TaskId};
use clap::Args;
use futures::StreamExt;

use super::{render, ApiClient, CliError};

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only this task's events; exit when it ends.
    #[arg(long)]
    pub task: Option<TaskId>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(api_client: &ApiClient, args: EventsArgs) -> Result<(), CliError> {
    let client = &api_client.client;
    let task_subject = match &args.task {
        Some(id) => subjects::task_state(id),
        None => subjects::TASK_STATE_ALL.to_string(),
    };
    let tasks = client
        .subscribe(task_subject)
        .await
        .map_err(anyhow::Error::from)?;
    let workers = client
        .subscribe(subjects::WORKER_STATE_ALL)
        .await
        .map_err(anyhow::Error::from)?;
    let mut all = futures::stream::select(tasks, workers);
    while let Some(msg) = all.next().await {
        if args.json {
            println!("{}", String::from_utf8_lossy(&msg.payload));
            continue;
        }
        if let Ok(e) = decode::<TaskEvent>(&msg.payload) {
            let worker = e
                .worker
                .as_ref()
                .map(|w| format!(" on {w}"))
                .unwrap_or_default();
            let why = e
                .reason
                .as_ref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            println!(
                "{}  task {}  {:<15} attempt {}{worker}{why}",
                render::time(e.at_ms),
                e.task_id,
                e.state.to_string(),
                e.attempt
            );
            if args.task.is_some() && e.state.is_terminal() {
                break;
            }
        } else if let Ok(e) = decode::<WorkerEvent>(&msg.payload) {
            println!(
                "{}  worker {}  {:?} ({})",
                render::time(e.at_ms),
                e.worker,
                e.state,
                e.reason
            );
        }
    }
    Ok(())
}
