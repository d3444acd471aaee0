//! `status [--json]`

use broker::messages::api::{StatusReply, StatusRequest};
use broker::subjects::api;
use clap::Args;

use super::{render, ApiClient, CliError};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long)]
    pub json: bool,
}

pub async fn run(api_client: &ApiClient, args: StatusArgs) -> Result<(), CliError> {
    // Workers come in pages bounded by bytes: read them all.
    let mut s: StatusReply = api_client
        .call(api::STATUS, &StatusRequest::default())
        .await?;
    while let Some(after) = s.workers_next.take() {
        let req = StatusRequest {
            workers_after: Some(after),
        };
        let page: StatusReply = api_client.call(api::STATUS, &req).await?;
        s.workers.extend(page.workers);
        s.workers_next = page.workers_next;
    }
    if args.json {
        return render::json(&s);
    }
    println!("cost mode: {}", s.cost_mode);
    println!();
    let rows: Vec<Vec<String>> = s
        .workers
        .iter()
        .map(|w| {
            vec![
                w.worker.to_string(),
                if w.online { "online" } else { "offline" }.to_string(),
                w.host.clone(),
                format!("{}/{}", w.slots_used, w.slots),
                w.tags.joined(),
                w.agents.joined(),
                render::time(w.last_seen_ms),
            ]
        })
        .collect();
    render::table(
        &[
            "WORKER",
            "STATE",
            "HOST",
            "SLOTS",
            "TAGS",
            "AGENTS",
            "LAST SEEN",
        ],
        &rows,
    );
    println!();
    let counts: Vec<String> = s
        .tasks
        .iter()
        .map(|(state, n)| format!("{state} {n}"))
        .collect();
    println!(
        "tasks: {}",
        if counts.is_empty() {
            "none".to_string()
        } else {
            counts.join(", ")
        }
    );
    if !s.running.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = s
            .running
            .iter()
            .map(|r| {
                let usage = r.record.usage.as_ref();
                vec![
                    r.task_id.to_string(),
                    r.record.worker.to_string(),
                    r.record.pane.clone().unwrap_or_else(|| "-".into()),
                    render::opt_time(r.record.last_event_ms),
                    r.record.current_tool.clone().unwrap_or_else(|| "-".into()),
                    usage
                        .map(|u| u.total_tokens().to_string())
                        .unwrap_or_else(|| "-".into()),
                    usage
                        .and_then(|u| u.cost_usd)
                        .map(|c| format!("${c:.4}"))
                        .unwrap_or_else(|| "-".into()),
                    r.record
                        .escalation
                        .as_ref()
                        .map(|e| format!("{} -> {}", e.from, e.to))
                        .unwrap_or_else(|| "-".into()),
                    r.title.clone(),
                ]
            })
            .collect();
        render::table(
            &[
                "RUNNING",
                "WORKER",
                "PANE",
                "LAST EVENT",
                "TOOL",
                "TOKENS",
                "COST",
                "ESCALATED",
                "TITLE",
            ],
            &rows,
        );
    }
    if !s.counters.is_empty() {
        let c: Vec<String> = s.counters.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!();
        println!("counters: {}", c.join(", "));
    }
    Ok(())
}
