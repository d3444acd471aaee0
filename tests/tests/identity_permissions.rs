//! Least privilege against a real nats-server configured with the
//! authorization block `colibri admin` generated: every denial is proven by
//! the server's own permission violation, and a fleet of least-privilege
//! identities (scheduler, one worker, operator and observer CLIs) still runs
//! tasks end to end. Nothing secret (seeds, an agent API key) appears in the
//! logs, the events or the board.

mod identity_support;

use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use broker::messages::{
    decode, encode, ApiReply, Heartbeat, Report, ReportBody, StatusReply, TaskEvent, TaskState,
};
use broker::{subjects, TagSet, TaskId, WorkerId};
use futures::StreamExt;
use harness::{eventually, within, NatsServer};
use identity_support::{cli, scheduler_bin, worker_bin, Identities, Probe, Proc};

const API_KEY: &str = "sk-ant-LEAKCHECK-4f1d2c9b7e";

fn server(ids: &Identities) -> anyhow::Result<NatsServer> {
    NatsServer::start_with(vec!["-c".into(), ids.authorization().display().to_string()])
}

#[tokio::test]
async fn worker_identity_may_do_only_its_own_job() -> anyhow::Result<()> {
    let ids = Identities::create(&[("debby", "linux"), ("domedog", "linux,docker")])?;
    let nats = server(&ids)?;
    let mut debby = ids.connect("debby", &nats.url()).await?;

    // What it may do: its own presence, reports, session events.
    for subject in [
        "colibri.presence.debby".to_string(),
        subjects::task_report(&TaskId::new(), &WorkerId::parse("debby")?),
        "colibri.session.0190-x.debby.message".to_string(),
    ] {
        debby.client.publish(subject, "{}".into()).await?;
    }
    debby.no_errors().await?;

    let task = TaskId::new();
    // Submit a task, or call the scheduler's command endpoints.
    debby.denied_publish(&subjects::task_submit(&task)).await?;
    debby.denied_publish("colibri.api.create-task").await?;
    debby.denied_publish("colibri.api.cancel").await?;
    // Speak for another host, in its reports or its sessions.
    debby.denied_publish("colibri.presence.domedog").await?;
    debby
        .denied_publish("colibri.session.0190-x.domedog.message")
        .await?;
    debby.denied_publish("colibri.session.0190-x.end").await?;
    debby
        .denied_publish(&subjects::task_report(&task, &WorkerId::parse("domedog")?))
        .await?;
    // Place work, or touch another host's placed work.
    debby.denied_publish("colibri.work.domedog").await?;
    debby
        .denied_publish("$JS.API.CONSUMER.MSG.NEXT.COLIBRI_WORK.worker-domedog")
        .await?;
    debby
        .denied_publish("$JS.API.CONSUMER.CREATE.COLIBRI_WORK.worker-domedog.colibri.work.domedog")
        .await?;
    // Its own consumer name with another host's filter.
    debby
        .denied_publish("$JS.API.CONSUMER.CREATE.COLIBRI_WORK.worker-debby.colibri.work.domedog")
        .await?;
    debby
        .denied_publish("$JS.ACK.COLIBRI_WORK.worker-domedog.1.1.1.1.1.0")
        .await?;
    // Change the cost mode (KV put), or any stream.
    debby.denied_publish("$KV.colibri-config.cost-mode").await?;
    debby
        .denied_publish("$JS.API.STREAM.UPDATE.COLIBRI_WORK")
        .await?;
    debby
        .denied_publish("$JS.API.STREAM.DELETE.COLIBRI_INTAKE")
        .await?;
    debby
        .denied_publish("$JS.API.STREAM.PURGE.COLIBRI_WORK")
        .await?;
    // Listen anywhere but its own inbox.
    debby.denied_subscribe("colibri.>").await?;
    debby.denied_subscribe("colibri.work.domedog").await?;
    debby.denied_subscribe("colibri.presence.*").await?;
    debby.denied_subscribe("_INBOX.domedog.>").await?;
    debby.denied_subscribe("_INBOX.>").await?;
    Ok(())
}

#[tokio::test]
async fn worker_identities_share_and_fetch_transcripts_but_cannot_purge() -> anyhow::Result<()> {
    let ids = Identities::create(&[("debby", "linux"), ("domedog", "linux")])?;
    let nats = server(&ids)?;
    let hub = ids.connect("hub", &nats.url()).await?;
    let hub_js = jetstream::new(hub.client.clone());
    let limits = broker::provision::ProvisionConfig::default();
    let provisioning = broker::provision::provision_all(&hub_js, &limits);
    within(Duration::from_secs(20), "provisioning", provisioning).await??;

    let session = broker::SessionId::new();
    let debby_state = tempfile::tempdir()?;
    let path = costmode::segment::path(debby_state.path(), &session, 0);
    std::fs::create_dir_all(path.parent().context("sessions dir")?)?;
    let transcript = b"{\"seq\":1}\n".repeat(20_000);
    std::fs::write(&path, &transcript)?;
    let mut debby = ids.connect("debby", &nats.url()).await?;
    let store = worker::transcripts::TranscriptStore::new(jetstream::new(debby.client.clone()));
    let shared = store
        .share(debby_state.path(), &session)
        .await?
        .context("nothing shared")?;
    assert_eq!(shared.bytes, transcript.len() as u64);

    let mut domedog = ids.connect("domedog", &nats.url()).await?;
    let domedog_state = tempfile::tempdir()?;
    let store = worker::transcripts::TranscriptStore::new(jetstream::new(domedog.client.clone()));
    assert!(
        store
            .ensure_local(domedog_state.path(), &session, Some(&shared))
            .await?
    );
    let fetched = std::fs::read(costmode::segment::path(domedog_state.path(), &session, 0))?;
    assert_eq!(fetched, transcript);
    debby.no_errors().await?;
    domedog.no_errors().await?;
    // Neither may wipe the store.
    debby
        .denied_publish("$JS.API.STREAM.PURGE.OBJ_colibri-transcripts")
        .await?;
    debby
        .denied_publish("$JS.API.STREAM.DELETE.OBJ_colibri-transcripts")
        .await?;
    Ok(())
}

#[tokio::test]
async fn observer_reads_but_cannot_command_and_operator_can() -> anyhow::Result<()> {
    let ids = Identities::create(&[("debby", "linux")])?;
    let nats = server(&ids)?;
    let mut watch = ids.connect("watch", &nats.url()).await?;
    for ep in ["create-task", "cancel"] {
        watch.denied_publish(&format!("colibri.api.{ep}")).await?;
    }
    watch
        .denied_publish(&subjects::task_submit(&TaskId::new()))
        .await?;
    watch.denied_publish("$KV.colibri-config.cost-mode").await?;
    watch.denied_subscribe("colibri.work.>").await?;
    watch.denied_subscribe("colibri.presence.*").await?;
    // Its read paths are allowed.
    let _events = watch.client.subscribe("colibri.task.*.state").await?;
    for ep in ["status", "list-tasks", "show-task", "snapshot"] {
        watch
            .client
            .publish(format!("colibri.api.{ep}"), "{}".into())
            .await?;
    }
    watch.no_errors().await?;

    let mut ops = ids.connect("ops", &nats.url()).await?;
    let _all = ops.client.subscribe("colibri.>").await?;
    for ep in ["create-task", "cancel"] {
        ops.client
            .publish(format!("colibri.api.{ep}"), "{}".into())
            .await?;
    }
    ops.client
        .publish(subjects::task_submit(&TaskId::new()), "{}".into())
        .await?;
    ops.no_errors().await?;
    // The operator may not impersonate a host.
    ops.denied_publish("colibri.presence.debby").await?;
    Ok(())
}

/// Everything a test fleet runs, its logs, and what the operator saw.
struct LeastPrivilegeFleet {
    ids: Identities,
    nats: NatsServer,
    logs: tempfile::TempDir,
    scheduler: Proc,
    worker: Proc,
}

impl LeastPrivilegeFleet {
    fn start() -> anyhow::Result<LeastPrivilegeFleet> {
        let ids = Identities::create(&[("debby", "linux"), ("domedog", "linux,docker")])?;
        let nats = server(&ids)?;
        let logs = tempfile::tempdir()?;
        let url = nats.url();
        let mut cmd = Command::new(scheduler_bin());
        cmd.args(ids.flags("hub", &url))
            .arg("--db")
            .arg(logs.path().join("board.db"))
            .arg("--hosts")
            .arg(ids.hosts_file());
        let scheduler = Proc::spawn("scheduler", cmd, logs.path())?;
        let state = logs.path().join("debby-state");
        std::fs::create_dir_all(&state)?;
        let config = logs.path().join("worker.toml");
        std::fs::write(
            &config,
            format!(
                "worker_id = \"debby\"\ncapabilities = [\"linux\"]\nstate_dir = \"{}\"\nconfinement = \"unconfined\"\nallow_command = true\n[agents.pi]\nenv = {{ ANTHROPIC_API_KEY = \"{API_KEY}\" }}\n",
                state.display()
            ),
        )?;
        let mut cmd = Command::new(worker_bin());
        cmd.arg("--config")
            .arg(&config)
            .args(ids.flags("debby", &url));
        let worker = Proc::spawn("worker", cmd, logs.path())?;
        Ok(LeastPrivilegeFleet {
            ids,
            nats,
            logs,
            scheduler,
            worker,
        })
    }

    async fn status(&self, probe: &Probe) -> Option<StatusReply> {
        let reply = probe
            .client
            .request("colibri.api.status", "{}".into())
            .await
            .ok()?;
        match serde_json::from_slice::<ApiReply<StatusReply>>(&reply.payload).ok()? {
            ApiReply::Ok(s) => Some(s),
            ApiReply::Error(_) => None,
        }
    }
}

async fn wait_state(
    events: &mut async_nats::Subscriber,
    seen: &mut Vec<String>,
    task: &TaskId,
    state: TaskState,
) -> anyhow::Result<()> {
    within(Duration::from_secs(30), "task state", async {
        while let Some(msg) = events.next().await {
            seen.push(String::from_utf8_lossy(&msg.payload).into_owned());
            if let Ok(e) = decode::<TaskEvent>(&msg.payload) {
                if e.task_id == *task && e.state == state {
                    return Ok(());
                }
            }
        }
        anyhow::bail!("event subscription ended")
    })
    .await?
}

#[tokio::test]
async fn least_privilege_fleet_runs_tasks_and_checks_claims() -> anyhow::Result<()> {
    let mut fleet = LeastPrivilegeFleet::start()?;
    let url = fleet.nats.url();
    let ids = &fleet.ids;
    let ops = ids.connect("ops", &url).await?;
    let watch = ids.connect("watch", &url).await?;
    let mut events = ops.client.subscribe("colibri.>").await?;
    ops.client.flush().await?;
    let mut seen = Vec::new();
    let mut cli_output = String::new();

    // The observer's read path shows the worker online.
    let f = &fleet;
    eventually(Duration::from_secs(30), "debby online", || async {
        let s = f.status(&watch).await?;
        s.workers
            .iter()
            .any(|w| w.worker.as_str() == "debby" && w.online)
            .then_some(())
    })
    .await
    .with_context(|| fleet.worker.log_text())?;

    // The operator submits through the CLI; the task runs on debby.
    let (code, out, err) = cli(
        ids,
        "ops",
        &url,
        &[
            "create-task",
            "--title",
            "lp",
            "--capability",
            "linux",
            "--",
            "/bin/echo",
            "hi",
        ],
    );
    cli_output.push_str(&(out.clone() + &err));
    assert_eq!(code, 0, "{err}");
    let task: TaskId = out.trim().parse()?;
    wait_state(&mut events, &mut seen, &task, TaskState::Succeeded).await?;

    // A host advertising tags its identity does not allow is not believed.
    let debby = ids.connect("debby", &url).await?;
    let fake = Heartbeat {
        v: 1,
        worker: WorkerId::parse("debby")?,
        host: "debby".into(),
        incarnation: uuid::Uuid::new_v4(),
        version: "0".into(),
        tags: TagSet::parse_lists(["linux", "gpu"])?,
        agents: TagSet::parse_lists(["command"])?,
        slots: 8,
        running: vec![],
        interval_ms: 2000,
        leaving: false,
        cost_mode: None,
        at_ms: broker::time_ms::now_ms(),
    };
    debby
        .client
        .publish("colibri.presence.debby", encode(&fake))
        .await?;
    debby.client.flush().await?;
    eventually(Duration::from_secs(10), "tags_exceed counted", || async {
        let s = f.status(&watch).await?;
        let ok = s
            .counters
            .get("heartbeats_tags_exceed")
            .copied()
            .unwrap_or(0)
            >= 1
            && s.workers
                .iter()
                .all(|w| !w.tags.iter().any(|t| t.as_str() == "gpu"));
        ok.then_some(())
    })
    .await?;

    // A running task: another host's report about it is counted and ignored;
    // the operator cancels it.
    let (code, out, err) = cli(
        ids,
        "ops",
        &url,
        &[
            "create-task",
            "--title",
            "long",
            "--capability",
            "linux",
            "--",
            "/bin/sleep",
            "60",
        ],
    );
    cli_output.push_str(&(out.clone() + &err));
    assert_eq!(code, 0, "{err}");
    let long: TaskId = out.trim().parse()?;
    wait_state(&mut events, &mut seen, &long, TaskState::Running).await?;
    let domedog = ids.connect("domedog", &url).await?;
    let forged = Report {
        v: 1,
        task_id: long,
        attempt: 1,
        worker: WorkerId::parse("domedog")?,
        incarnation: uuid::Uuid::new_v4(),
        at_ms: broker::time_ms::now_ms(),
        body: ReportBody::Finished {
            outcome: broker::messages::Outcome::Succeeded,
            exit_code: Some(0),
            signal: None,
            reason: None,
            usage: None,
            transcript: None,
        },
    };
    let js = jetstream::new(domedog.client.clone());
    let domedog_reports = subjects::task_report(&long, &WorkerId::parse("domedog")?);
    within(Duration::from_secs(10), "forged report stored", async {
        js.publish(domedog_reports.clone(), encode(&forged))
            .await?
            .await
    })
    .await??;
    eventually(Duration::from_secs(10), "mismatch counted", || async {
        let s = f.status(&watch).await?;
        (s.counters
            .get("reports_worker_mismatch")
            .copied()
            .unwrap_or(0)
            >= 1)
            .then_some(())
    })
    .await?;
    // domedog, on its own subject, speaking as debby (the run's worker): the
    // subject says who sent it; the report is dropped and counted.
    let impersonated = Report {
        worker: WorkerId::parse("debby")?,
        ..forged.clone()
    };
    within(
        Duration::from_secs(10),
        "impersonating report stored",
        async {
            js.publish(domedog_reports.clone(), encode(&impersonated))
                .await?
                .await
        },
    )
    .await??;
    eventually(Duration::from_secs(10), "impersonation counted", || async {
        let s = f.status(&watch).await?;
        (s.counters
            .get("reports_sender_mismatch")
            .copied()
            .unwrap_or(0)
            >= 1)
            .then_some(())
    })
    .await?;
    let (code, out, err) = cli(ids, "ops", &url, &["cancel", &long.to_string()]);
    cli_output.push_str(&(out + &err));
    assert_eq!(code, 0, "{err}");
    wait_state(&mut events, &mut seen, &long, TaskState::Cancelled).await?;

    // The observer may not cancel or create (its CLI call fails), and may read.
    let (code, out, err) = cli(ids, "watch", &url, &["snapshot", "--json"]);
    assert_eq!(code, 0, "{err}");
    cli_output.push_str(&(out + &err));
    let (code, out, err) = cli(ids, "ops", &url, &["snapshot", "--json"]);
    assert_eq!(code, 0, "{err}");
    let snapshot = out.clone();
    cli_output.push_str(&(out + &err));
    let (code, out, err) = cli(ids, "ops", &url, &["status"]);
    assert_eq!(code, 0, "{err}");
    cli_output.push_str(&(out + &err));

    // Nothing secret anywhere.
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), events.next()).await
    {
        seen.push(String::from_utf8_lossy(&msg.payload).into_owned());
    }
    fleet.worker.kill();
    fleet.scheduler.kill();
    let mut secrets = vec![API_KEY.to_string()];
    for name in ["debby", "domedog", "hub", "ops", "watch"] {
        secrets.push(ids.seed(name)?);
    }
    let places = [
        ("scheduler log", fleet.scheduler.log_text()),
        ("worker log", fleet.worker.log_text()),
        ("events", seen.join("\n")),
        ("snapshot", snapshot),
        ("cli output", cli_output),
        ("admin output", ids.admin_output.clone()),
    ];
    assert!(places[1].1.contains("debby"), "the worker log was captured");
    assert!(!seen.is_empty(), "events were captured");
    for (place, text) in &places {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a secret ({}...) leaked into the {place}",
                &secret[..4]
            );
        }
    }
    let _ = &fleet.logs;
    Ok(())
}
