//! Routing benchmarks, printed as a table: `cargo bench -p colibri-tests --bench routing`.
//!
//! Every figure runs against a real nats-server on loopback (its own port and
//! store), the real scheduler service and real workers, in this process
//! unless said otherwise. The raw JetStream publish→consume hop is measured
//! the same way first, as the ceiling.
//!
//! `COLIBRI_BENCH_QUICK=1` shrinks the counts (and skips the 1,000,000-task
//! board) for a smoke run.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream::{self, message::PublishMessage};
use broker::messages::{decode, encode, TaskEvent, TaskSpec, TaskState};
use broker::{subjects, TagSet, TaskId};
use futures::StreamExt;
use harness::{NatsServer, SchedulerHandle, WorkerHandle};
use worker::config::Confinement;

struct Row {
    what: String,
    value: String,
    target: String,
}

fn quick() -> bool {
    std::env::var_os("COLIBRI_BENCH_QUICK").is_some()
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn command_task(argv: &[&str], caps: &[&str]) -> TaskSpec {
    TaskSpec::command(
        "bench",
        TagSet::parse_lists(caps).unwrap_or_default(),
        argv.iter().map(|s| s.to_string()).collect(),
    )
}

async fn submit(
    js: &jetstream::Context,
    spec: &TaskSpec,
) -> anyhow::Result<jetstream::context::PublishAckFuture> {
    let publish = PublishMessage::build()
        .payload(encode(spec))
        .message_id(spec.id.to_string());
    Ok(js
        .send_publish(subjects::task_submit(&spec.id), publish)
        .await?)
}

/// Raw JetStream: publish one message, receive it on a pull consumer, ack; one at a time.
async fn raw_hop(nats: &NatsServer, n: usize) -> anyhow::Result<(Duration, Duration, f64)> {
    // The real path's settings: a worker's order subject on COLIBRI_WORK,
    // read by a worker's durable consumer, acknowledged per message.
    let client = nats.client().await?;
    let js = jetstream::new(client);
    broker::provision::provision_all(&js, &Default::default()).await?;
    let raw = broker::WorkerId::parse("bench-raw")?;
    let subject = subjects::work(&raw);
    let consumer = broker::provision::durable_consumer(
        &js,
        broker::provision::WORK_STREAM,
        broker::provision::worker_consumer_config(&raw),
    )
    .await?;
    let mut messages = consumer.messages().await?;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t0 = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), async {
            js.publish(subject.clone(), "x".into()).await?.await
        })
        .await
        .context("publish ack")??;
        let msg = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .with_context(|| format!("message {i}"))?
            .context("stream ended")??;
        lat.push(t0.elapsed());
        msg.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    lat.sort();
    // Throughput ceiling: pipelined publishes, one consumer.
    let burst = n * 4;
    let t0 = Instant::now();
    // Acks awaited in chunks: each unawaited one holds an in-flight permit.
    for _ in 0..burst / 1000 {
        let mut acks = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let publish = PublishMessage::build().payload("x".into());
            acks.push(js.send_publish(subject.clone(), publish).await?);
        }
        for a in acks {
            a.await?;
        }
    }
    for i in 0..burst {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .with_context(|| format!("burst message {i}"))?
            .context("stream ended")??;
        msg.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let rate = burst as f64 / t0.elapsed().as_secs_f64();
    Ok((pct(&lat, 0.5), pct(&lat, 0.99), rate))
}

/// Submit (JetStream publish acked) → the task's `running` event, one task at a time.
async fn submit_to_start(
    nats: &NatsServer,
    n: usize,
    confined: bool,
) -> anyhow::Result<(Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let scheduler = SchedulerHandle::start(nats, &dir.path().join("b.db")).await?;
    let worker = WorkerHandle::start(nats, "bench-lat", &["linux"], 4, |c| {
        if confined {
            c.confinement = Confinement::Bwrap;
        }
    })
    .await?;
    let client = nats.client().await?;
    let js = jetstream::new(client.clone());
    let mut events = client.subscribe(subjects::TASK_STATE_ALL).await?;
    wait_online(&client, "bench-lat").await?;
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let spec = command_task(&["/bin/true"], &["linux"]);
        let t0 = Instant::now();
        submit(&js, &spec).await?.await?;
        let mut started = None;
        while let Some(msg) = tokio::time::timeout(Duration::from_secs(20), events.next()).await? {
            let Ok(e) = decode::<TaskEvent>(&msg.payload) else {
                continue;
            };
            if e.task_id == spec.id && e.state == TaskState::Running && started.is_none() {
                started = Some(t0.elapsed());
            }
            if e.task_id == spec.id && e.state.is_terminal() {
                break;
            }
        }
        lat.push(started.context("no running event")?);
    }
    lat.sort();
    worker.stop().await?;
    scheduler.stop().await?;
    Ok((pct(&lat, 0.5), pct(&lat, 0.99)))
}

/// bubblewrap alone, as the worker runs it (same flags, no network),
/// spawn → exit of `/bin/true`: the floor under a confined start.
fn bwrap_alone(n: usize) -> anyhow::Result<(Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let sandbox = worker::confine::Sandbox {
        workdir: dir.path().to_path_buf(),
        network: broker::messages::NetworkPolicy::None,
        name: "bench".into(),
        agent_user: String::new(),
        hide_dirs: Vec::new(),
        hide_files: Vec::new(),
        system: worker::confine::bwrap::system_view(),
        agent_paths: Vec::new(),
        tmp_size: Some(1 << 30),
    };
    let argv = worker::confine::bwrap::argv(&sandbox, &["/bin/true".to_string()]);
    // Without the status and seccomp fds, which only the worker's spawn sets up.
    let args: Vec<&String> = argv[1 + worker::confine::bwrap::FD_ARGS..].iter().collect();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let status = std::process::Command::new(&argv[0]).args(&args).status()?;
        anyhow::ensure!(status.success(), "bwrap failed: {status}");
        lat.push(t0.elapsed());
    }
    lat.sort();
    Ok((pct(&lat, 0.5), pct(&lat, 0.99)))
}

async fn wait_online(client: &async_nats::Client, worker: &str) -> anyhow::Result<()> {
    let board = harness::BoardClient::new(client.clone());
    harness::eventually(Duration::from_secs(20), "bench worker online", || async {
        board
            .status()
            .await
            .ok()?
            .workers
            .iter()
            .any(|w| w.worker.as_str() == worker && w.online)
            .then_some(())
    })
    .await
}

/// A burst of `n` tasks, submitted pipelined; time until every terminal state is stored.
async fn burst(nats: &NatsServer, n: usize, workers: usize, noop: bool) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let scheduler = SchedulerHandle::start(nats, &dir.path().join("b.db")).await?;
    let client = nats.client().await?;
    let mut handles = Vec::new();
    for i in 0..workers {
        let id = format!("burst-{i}");
        handles.push(
            WorkerHandle::start(nats, &id, &["linux"], 64, |c| {
                if noop {
                    c.executor = worker::ExecutorKind::Noop;
                }
            })
            .await?,
        );
        wait_online(&client, &id).await?;
    }
    let js = jetstream::new(client.clone());
    let mut events = client.subscribe(subjects::TASK_STATE_ALL).await?;
    let specs: Vec<TaskSpec> = (0..n)
        .map(|_| command_task(&["/bin/true"], &["linux"]))
        .collect();
    let mut pending: HashSet<TaskId> = specs.iter().map(|s| s.id).collect();
    let t0 = Instant::now();
    // Await acks in chunks: each unawaited one holds an in-flight permit.
    for chunk in specs.chunks(1000) {
        let mut acks = Vec::with_capacity(chunk.len());
        for s in chunk {
            acks.push(submit(&js, s).await?);
        }
        for a in acks {
            a.await?;
        }
    }
    while !pending.is_empty() {
        let msg = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .with_context(|| format!("{} tasks never ended", pending.len()))?
            .context("events ended")?;
        if let Ok(e) = decode::<TaskEvent>(&msg.payload) {
            if e.state.is_terminal() {
                anyhow::ensure!(
                    e.state == TaskState::Succeeded,
                    "task {} ended {}: {:?}",
                    e.task_id,
                    e.state,
                    e.reason
                );
                pending.remove(&e.task_id);
            }
        }
    }
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    for h in handles {
        h.stop().await?;
    }
    scheduler.stop().await?;
    Ok(rate)
}

/// Sharing then fetching a transcript segment of `bytes` through the
/// transcript object store, `n` times: (share p50, fetch p50), each
/// including the file read or the digest-checked write and rename.
async fn transcript_handoff(
    nats: &NatsServer,
    bytes: usize,
    n: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let client = nats.client().await?;
    let js = jetstream::new(client);
    broker::provision::provision_all(&js, &Default::default()).await?;
    let store = worker::transcripts::TranscriptStore::new(js);
    let line = "{\"seq\":1,\"event\":{\"kind\":\"message\",\"text\":\"....................\"}}\n";
    let data = line.repeat(bytes / line.len() + 1);
    let (mut share, mut fetch) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let home = tempfile::tempdir()?;
        let away = tempfile::tempdir()?;
        let session = broker::SessionId::new();
        let path = costmode::segment::path(home.path(), &session, 0);
        std::fs::create_dir_all(path.parent().context("sessions dir")?)?;
        std::fs::write(&path, &data[..bytes])?;
        let t = Instant::now();
        let shared = store
            .share(home.path(), &session)
            .await?
            .context("nothing shared")?;
        share.push(t.elapsed());
        let t = Instant::now();
        anyhow::ensure!(
            store
                .ensure_local(away.path(), &session, Some(&shared))
                .await?
        );
        fetch.push(t.elapsed());
    }
    share.sort();
    fetch.sort();
    Ok((pct(&share, 0.5), pct(&fetch, 0.5)))
}

/// RSS of an idle `colibri-worker` process after it has settled.
async fn idle_worker_rss(nats: &NatsServer) -> anyhow::Result<u64> {
    let state = tempfile::tempdir()?;
    let mut child = tokio::process::Command::new(harness::workspace_bin("colibri-worker"))
        .args([
            "--worker-id",
            "idle",
            "--capabilities",
            "linux",
            "--slots",
            "2",
            "--state-dir",
        ])
        .arg(state.path())
        .args(["--nats-url", &nats.url()])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("spawn colibri-worker (cargo build --release --bins first)")?;
    let pid = child.id().context("pid")?;
    let client = nats.client().await?;
    let mut presence = client.subscribe(subjects::PRESENCE_ALL).await?;
    // Settled: three heartbeats seen.
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), presence.next()).await?;
    }
    let rss = rss_kib(pid).context("read rss")?;
    child.kill().await.ok();
    Ok(rss)
}

/// A board of `n` tasks (`queued` of them queued, the rest succeeded) served
/// by the real `colibri-scheduler` binary: its RSS, and `list-tasks --status
/// queued` (first page of 100) latency p50 / p99 over the request endpoint.
async fn big_board(
    nats: &NatsServer,
    n: usize,
    queued: usize,
) -> anyhow::Result<(u64, Duration, Duration, Duration)> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("big.db");
    let t0 = Instant::now();
    {
        let mut board = scheduler::board::Board::open(&db)?;
        let mut done = 0;
        while done < n {
            let tx = board.transaction()?;
            for i in done..(done + 50_000).min(n) {
                let spec = command_task(&["/bin/true"], &["nowhere"]);
                let state = if i < queued {
                    TaskState::Queued
                } else {
                    TaskState::Succeeded
                };
                tx.insert_task(&spec, state, None, 0)?;
            }
            tx.commit()?;
            done = (done + 50_000).min(n);
        }
    }
    eprintln!(
        "  (board of {n} tasks written in {:.1} s)",
        t0.elapsed().as_secs_f64()
    );
    let mut child = tokio::process::Command::new(harness::workspace_bin("colibri-scheduler"))
        .arg("--db")
        .arg(&db)
        .args(["--nats-url", &nats.url()])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("spawn colibri-scheduler")?;
    let pid = child.id().context("pid")?;
    let client = nats.client().await?;
    let api = scheduler::cli::ApiClient { client };
    let req = broker::messages::api::ListTasksRequest {
        status: Some(TaskState::Queued),
        limit: Some(100),
        after: None,
    };
    let t_up = Instant::now();
    loop {
        let r: Result<broker::messages::api::ListTasksReply, _> =
            api.call(broker::subjects::api::LIST_TASKS, &req).await;
        if r.is_ok() {
            break;
        }
        anyhow::ensure!(
            t_up.elapsed() < Duration::from_secs(60),
            "scheduler did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let startup = t_up.elapsed();
    let mut lat = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        let r: broker::messages::api::ListTasksReply =
            api.call(broker::subjects::api::LIST_TASKS, &req).await?;
        lat.push(t.elapsed());
        anyhow::ensure!(r.tasks.len() == 100.min(queued));
    }
    lat.sort();
    let rss = rss_kib(pid).context("rss")?;
    child.kill().await.ok();
    Ok((rss, pct(&lat, 0.5), pct(&lat, 0.99), startup))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    harness::init_logging();
    let q = quick();
    let nats = NatsServer::start()?;
    if let Ok(only) = std::env::var("COLIBRI_BENCH_ONLY") {
        // Profiling aid: one measurement alone (noop | burst | latency | handoff).
        if only == "handoff" {
            for bytes in [100_000, 2_000_000] {
                let (share, fetch) =
                    transcript_handoff(&nats, bytes, if q { 5 } else { 30 }).await?;
                println!(
                    "{bytes} bytes: share p50 {} fetch p50 {}",
                    ms(share),
                    ms(fetch)
                );
            }
            return Ok(());
        }
        if only == "latency" {
            let n = if q { 50 } else { 300 };
            let (p50, p99) = submit_to_start(&nats, n, false).await?;
            println!("unconfined: p50 {} p99 {}", ms(p50), ms(p99));
            let (p50, p99) = bwrap_alone(n)?;
            println!("bwrap alone: p50 {} p99 {}", ms(p50), ms(p99));
            let (p50, p99) = submit_to_start(&nats, n, true).await?;
            println!("bwrap: p50 {} p99 {}", ms(p50), ms(p99));
            return Ok(());
        }
        let n = if q { 1000 } else { 20000 };
        let rate = burst(&nats, n, 1, only == "noop").await?;
        println!("{only}: {n} tasks: {rate:.0} tasks/s");
        return Ok(());
    }
    let mut rows = Vec::new();
    let mut push = |what: &str, value: String, target: &str| {
        println!("  {what}: {value}");
        rows.push(Row {
            what: what.into(),
            value,
            target: target.into(),
        });
    };

    let (p50, p99, rate) = raw_hop(&nats, if q { 200 } else { 2000 }).await?;
    push(
        "raw JetStream publish→consume hop p50 / p99",
        format!("{} / {}", ms(p50), ms(p99)),
        "ceiling",
    );
    push(
        "raw JetStream pipelined publish+consume",
        format!("{rate:.0} msg/s"),
        "ceiling",
    );

    let n = if q { 50 } else { 300 };
    let (p50, p99) = submit_to_start(&nats, n, false).await?;
    push(
        "submit→start /bin/true, unconfined, p50 / p99",
        format!("{} / {}", ms(p50), ms(p99)),
        "≤ 1.5 / ≤ 5 ms",
    );
    if std::path::Path::new("/usr/bin/bwrap").exists() {
        let (p50, p99) = bwrap_alone(n)?;
        push(
            "bwrap alone (worker's flags), spawn→exit of /bin/true, p50 / p99",
            format!("{} / {}", ms(p50), ms(p99)),
            "floor",
        );
        let (p50, p99) = submit_to_start(&nats, n, true).await?;
        push(
            "submit→start /bin/true, bwrap, p50 / p99",
            format!("{} / {}", ms(p50), ms(p99)),
            "p50 ≤ 4.5 ms",
        );
    }

    let n = if q { 200 } else { 2000 };
    for workers in [1, 3] {
        let rate = burst(&nats, n, workers, false).await?;
        push(
            &format!("burst {n} × /bin/true, {workers} worker(s), submit→terminal"),
            format!("{rate:.0} tasks/s"),
            "≥ 1650/s",
        );
    }
    let n = if q { 1000 } else { 20000 };
    let rate = burst(&nats, n, 1, true).await?;
    push(
        &format!("placement+dispatch, {n} tasks, noop executor"),
        format!("{rate:.0} tasks/s"),
        "≥ 20000/s",
    );

    for (bytes, label) in [
        (100_000, "100 kB"),
        (2_000_000, "2 MB (smart's segment limit)"),
    ] {
        let (share, fetch) = transcript_handoff(&nats, bytes, if q { 5 } else { 30 }).await?;
        push(
            &format!("transcript hand-off of {label}: share / fetch p50"),
            format!("{} / {}", ms(share), ms(fetch)),
            "-",
        );
    }

    match idle_worker_rss(&nats).await {
        Ok(kib) => push(
            "idle colibri-worker RSS",
            format!("{:.1} MB", kib as f64 / 1024.0),
            "≤ 20 MB",
        ),
        Err(e) => push(
            "idle colibri-worker RSS",
            format!("not measured: {e:#}"),
            "≤ 20 MB",
        ),
    }

    if !q {
        match big_board(&nats, 1_000_000, 1_000).await {
            Ok((kib, p50, p99, up)) => {
                push(
                    "scheduler RSS, 1,000,000 tasks on its board",
                    format!("{:.1} MB", kib as f64 / 1024.0),
                    "≤ 200 MB",
                );
                push(
                    "list-tasks --status queued (page of 100) p50 / p99, 1M board",
                    format!("{} / {}", ms(p50), ms(p99)),
                    "≤ 20 ms",
                );
                push(
                    "scheduler start on the 1M board (until it answers)",
                    ms(up),
                    "-",
                );
            }
            Err(e) => push("1M board", format!("not measured: {e:#}"), "-"),
        }
    }

    println!();
    println!("| measurement | result | target |");
    println!("|---|---|---|");
    for r in &rows {
        println!("| {} | {} | {} |", r.what, r.value, r.target);
    }
    Ok(())
}
