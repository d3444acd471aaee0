//! `show-task ID [--json]`

use broker::messages::api::{TaskDetail, TaskRef};
use broker::subjects::api;
use broker::TaskId;
use clap::Args;

use super::{render, ApiClient, CliError};

#[derive(Debug, Args)]
pub struct ShowArgs {
    pub task_id: TaskId,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(api_client: &ApiClient, args: ShowArgs) -> Result<(), CliError> {
    let d: TaskDetail = api_client
        .call(
            api::SHOW_TASK,
            &TaskRef {
                task_id: args.task_id,
            },
        )
        .await?;
    if args.json {
        return render::json(&d);
    }
    let s = &d.summary;
    println!("task      {}", s.task_id);
    println!("title     {}", s.title);
    println!("state     {}", s.state);
    println!("agent     {}", s.agent);
    println!(
        "needs     {}",
        if s.capabilities.is_empty() {
            "-".into()
        } else {
            s.capabilities.joined()
        }
    );
    if let Some(p) = &s.parked {
        println!("parked    {p}");
    }
    if let Some(r) = &s.reason {
        println!("reason    {r}");
    }
    println!("created   {}", render::time(s.created_at_ms));
    println!("updated   {}", render::time(s.updated_at_ms));
    if !d.spec.command.is_empty() {
        println!("argv      {}", d.spec.command.join(" "));
    }
    if let Some(session) = &d.spec.continue_session {
        println!("continues session {session}");
    }
    if let Some(mode) = d.spec.cost_mode {
        println!("cost mode {mode} (the task's own)");
    }
    println!();
    let rows: Vec<Vec<String>> = d
        .attempts
        .iter()
        .map(|a| {
            vec![
                a.attempt.to_string(),
                a.worker.to_string(),
                a.session.to_string(),
                render::opt_time(a.started_at_ms),
                render::opt_time(a.ended_at_ms),
                a.outcome
                    .map(|o| {
                        serde_json::to_string(&o)
                            .unwrap_or_default()
                            .trim_matches('"')
                            .to_string()
                    })
                    .unwrap_or_else(|| match (a.ended_at_ms, &a.pane) {
                        // Closed by the scheduler when its worker was lost.
                        (Some(_), _) => "lost".into(),
                        (None, Some(pane)) => pane.clone(),
                        (None, None) => "-".into(),
                    }),
                a.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                a.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    render::table(
        &[
            "ATTEMPT", "WORKER", "SESSION", "STARTED", "ENDED", "OUTCOME", "EXIT", "REASON",
        ],
        &rows,
    );
    for a in &d.attempts {
        if let Some(t) = &a.transcript {
            println!(
                "attempt {} transcript shared: segment {}, {} bytes, {}",
                a.attempt, t.segment, t.bytes, t.digest
            );
        }
        if let Some(e) = &a.escalation {
            println!(
                "attempt {} escalated {} -> {} at {}: {}",
                a.attempt,
                e.from,
                e.to,
                render::time(e.at_ms),
                e.reason
            );
        }
    }
    println!();
    for t in &d.transitions {
        println!(
            "{}  {:<15} attempt {}  {}",
            render::time(t.at_ms),
            t.state.to_string(),
            t.attempt,
            t.reason.clone().unwrap_or_default()
        );
    }
    Ok(())
}
