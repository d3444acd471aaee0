//! Floods (issue 12, items 16 and 17): with 10,000 fake adverts a second
//! arriving on `colibri.presence.*`, a real task is still placed within a
//! second, the real worker stays online, and `status` still answers, paged,
//! past thousands of workers.
//!
//! Regression: 10,000 fake adverts stopped placement for minutes at 100 %
//! CPU (a turn per heartbeat, each building a view of every worker ever
//! seen, offline ones included; a biased loop in which heartbeats starved
//! the intake), and `status` past ~6,500 workers was over 1 MiB and never
//! sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use broker::messages::api::{ApiReply, StatusReply, StatusRequest, MAX_REPLY_BYTES};
use broker::messages::presence::HEARTBEAT_INTERVAL_MS;
use broker::messages::{encode, Heartbeat, TaskSpec};
use broker::subjects::api as ep;
use broker::{subjects, TagSet, WorkerId};
use harness::{within, BoardClient, NatsServer, SchedulerHandle, SimWorker};
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(15);
/// The target: a real task placed within this, flood or not.
const PLACED_WITHIN: Duration = Duration::from_secs(1);
/// Adverts a second, and how many fake workers send them.
const RATE: u64 = 10_000;
const FAKES: usize = 9_000;
/// Tasks parked for want of a worker while the flood runs.
const PARKED: usize = 200;
/// How long the fleet may take to hear every fake (a precondition only).
const FILL_WITHIN: Duration = Duration::from_secs(60);

/// Publishes `RATE` adverts a second from `FAKES` fake workers (each with a
/// few tags, one of which changes every round so every advert is news to
/// the scheduler) until `stop`; counts what it published.
async fn flood(client: async_nats::Client, stop: CancellationToken, sent: Arc<AtomicU64>) {
    let ids: Vec<WorkerId> = (0..FAKES)
        .map(|i| WorkerId::parse(&format!("fake-{i}")).expect("valid id"))
        .collect();
    let incarnations: Vec<uuid::Uuid> = (0..FAKES).map(|_| uuid::Uuid::new_v4()).collect();
    let per_tick = RATE / 100;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for _ in 0..per_tick {
            let i = (n % FAKES as u64) as usize;
            let round = n / FAKES as u64;
            let beat = Heartbeat {
                v: broker::WIRE_VERSION,
                worker: ids[i].clone(),
                host: "flood".into(),
                incarnation: incarnations[i],
                version: "flood".into(),
                tags: TagSet::parse_lists([
                    "fake".to_string(),
                    format!("f{}", i % 64),
                    format!("round{}", round % 4),
                ])
                .expect("valid tags"),
                agents: TagSet::parse_lists(["pi"]).expect("valid tags"),
                slots: 1,
                running: vec![],
                interval_ms: HEARTBEAT_INTERVAL_MS,
                leaving: false,
                cost_mode: None,
                at_ms: broker::time_ms::now_ms(),
            };
            if client
                .publish(subjects::presence(&ids[i]), encode(&beat))
                .await
                .is_err()
            {
                return;
            }
            n += 1;
        }
        sent.store(n, Ordering::Relaxed);
    }
}

/// Every worker `status` lists, page by page, checking each reply's size.
async fn all_workers(client: &async_nats::Client) -> anyhow::Result<(usize, usize, bool)> {
    let mut req = StatusRequest::default();
    let (mut workers, mut pages) = (0, 0);
    let mut real_online = false;
    loop {
        let reply = within(
            T,
            "status",
            client.request(ep::subject(ep::STATUS), encode(&req)),
        )
        .await??;
        anyhow::ensure!(
            reply.payload.len() <= MAX_REPLY_BYTES,
            "status reply too large"
        );
        let ApiReply::Ok(status) = serde_json::from_slice::<ApiReply<StatusReply>>(&reply.payload)?
        else {
            anyhow::bail!("status failed");
        };
        pages += 1;
        workers += status.workers.len();
        real_online |= status
            .workers
            .iter()
            .any(|w| w.worker.as_str() == "real" && w.online);
        match status.workers_next {
            Some(next) => req.workers_after = Some(next),
            None => return Ok((workers, pages, real_online)),
        }
        anyhow::ensure!(pages < 1_000, "status paging does not end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_adverts_stopped_placement() -> anyhow::Result<()> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let _scheduler = SchedulerHandle::start(&nats, &dir.path().join("board.db")).await?;
    let client = nats.client().await?;
    let board = BoardClient::new(client.clone());
    let js = jetstream::new(client.clone());
    let mut real = SimWorker::start(nats.client().await?, "real", &["linux", "real"], 4).await?;

    // A backlog of parked tasks no worker can take: every advert change
    // makes placement judge them again.
    for i in 0..PARKED {
        let spec = TaskSpec::command(
            &format!("parked {i}"),
            TagSet::parse_lists(["nowhere"])?,
            vec!["/bin/true".into()],
        );
        board.create(&spec).await?;
    }

    let stop = CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let sent = Arc::new(AtomicU64::new(0));
    let flood_started = Instant::now();
    let flooder = tokio::spawn(flood(nats.client().await?, stop.clone(), sent.clone()));

    // The fleet fills with fakes, and status pages through all of them.
    // (A debug build on a shared machine needs a while to hear them all.)
    let (workers, pages, _) = harness::eventually(FILL_WITHIN, "fakes in the fleet", || async {
        all_workers(&client)
            .await
            .ok()
            .filter(|(w, _, real_online)| *w > FAKES && *real_online)
    })
    .await?;
    assert!(pages > 1, "{workers} workers in one status page");

    // A real task through the request API, then one through the intake:
    // each is placed on the real worker within the target.
    let spec = TaskSpec::command(
        "real work",
        TagSet::parse_lists(["real"])?,
        vec!["/bin/true".into()],
    );
    let t0 = Instant::now();
    board.create(&spec).await?;
    let run = real
        .next_run(PLACED_WITHIN.saturating_sub(t0.elapsed()))
        .await?;
    assert_eq!(run.task.id, spec.id);
    let via_api = t0.elapsed();

    let spec = TaskSpec::command(
        "real work via the intake",
        TagSet::parse_lists(["real"])?,
        vec!["/bin/true".into()],
    );
    let publish = async_nats::jetstream::message::PublishMessage::build()
        .payload(encode(&spec))
        .message_id(spec.id.to_string());
    let t0 = Instant::now();
    within(T, "submit acknowledged", async {
        js.send_publish(subjects::task_submit(&spec.id), publish)
            .await?
            .await
    })
    .await??;
    let run = real
        .next_run(PLACED_WITHIN.saturating_sub(t0.elapsed()))
        .await?;
    assert_eq!(run.task.id, spec.id);
    let via_intake = t0.elapsed();

    // The flood really ran at the rate (or the test proves nothing).
    let elapsed = flood_started.elapsed().as_secs_f64();
    let rate = sent.load(Ordering::Relaxed) as f64 / elapsed;
    eprintln!(
        "flood: {rate:.0} adverts/s over {elapsed:.1} s; placed in {via_api:?} (api), {via_intake:?} (intake); {workers} workers in {pages} status pages"
    );
    assert!(
        rate >= RATE as f64 * 0.8,
        "the flood ran at {rate:.0} adverts/s, under the {RATE}/s it must test"
    );
    stop.cancel();
    within(T, "flood stops", flooder).await??;
    Ok(())
}
