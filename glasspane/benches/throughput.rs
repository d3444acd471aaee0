//! Glasspane throughput benchmark (not a test): `cargo bench -p colibri-glasspane`.
//!
//! Starts its own nats-server (`$COLIBRI_NATS_SERVER`, `.tools/bin`, or
//! PATH) with JetStream and the Colibri streams, then measures:
//!
//! 1. flood: 1,000,000 pi-format lines written into an in-memory pipe as fast
//!    as possible, through `run_session` (parser, transcript, bounded
//!    publisher) to a subscriber on its own connection: events/s delivered,
//!    events dropped live, and the process's peak RSS (VmHWM);
//! 2. paced: lines written in bursts every millisecond, latency from the
//!    line's write to the subscriber's receipt (p50/p99);
//! 3. the same two measurements for raw core-NATS publish → subscribe of
//!    payloads of the same size on a subject the same stream captures.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::{SessionId, TaskId, WorkerId};
use futures::StreamExt;
use glasspane::{
    run_session, AgentEnding, AgentExit, AgentFormat, LiveState, PumpConfig, SessionMeta,
    SessionPublisher, Transcript,
};
use tokio::io::AsyncWriteExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const FLOOD_LINES: u64 = 1_000_000;
const PACED_LINES: u64 = 20_000;
const PACED_BURST: u64 = 10;

struct Server {
    child: Child,
    _store: tempfile::TempDir,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nats_server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("COLIBRI_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/nats-server");
    if local.exists() {
        return Some(local);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("nats-server"))
        .find(|p| p.exists())
}

fn start_server() -> Result<Server, BoxError> {
    let bin = nats_server_binary().ok_or("nats-server not found (run scripts/setup.sh)")?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let store = tempfile::tempdir()?;
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("nats-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(Server {
        child,
        _store: store,
        url: format!("nats://127.0.0.1:{port}"),
    })
}

/// A pi `tool_execution_start`/`_end` line whose tool call id carries the
/// write time (µs since `t0`).
fn pi_line(i: u64, t_us: u64) -> String {
    if i.is_multiple_of(2) {
        format!(
            r#"{{"type":"tool_execution_start","toolCallId":"t{t_us}","toolName":"bash","args":{{"command":"grep -rn 'fn main' src/ | head -n 20"}}}}"#
        )
    } else {
        format!(
            r#"{{"type":"tool_execution_end","toolCallId":"t{t_us}","toolName":"bash","result":{{"content":[{{"type":"text","text":"src/main.rs:12:fn main() {{ run() }}"}}]}},"isError":false}}"#
        )
    }
}

/// Write time (µs) carried in an event payload's `"id":"t<µs>"`.
fn stamp(payload: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(payload, br#""id":"t"#)? + 7;
    let rest = &payload[at..];
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

struct Figures {
    events_per_s: f64,
    delivered: u64,
    dropped: u64,
    p50_us: f64,
    p99_us: f64,
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64
}

/// Subscribes to `subject`, counts messages until one whose subject ends
/// with `.end` (or `expected` arrive), recording latencies.
async fn subscriber(
    client: async_nats::Client,
    subject: String,
    t0: Instant,
    expected: u64,
) -> Result<tokio::task::JoinHandle<(u64, Vec<u64>, Instant)>, BoxError> {
    let mut sub = client.subscribe(subject).await?;
    client.flush().await?;
    Ok(tokio::spawn(async move {
        let mut n = 0u64;
        let mut lat = Vec::new();
        while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
            let now = t0.elapsed().as_micros() as u64;
            if msg.subject.ends_with(".end") {
                break;
            }
            n += 1;
            if let Some(t) = stamp(&msg.payload) {
                lat.push(now.saturating_sub(t));
            }
            if n == expected {
                break;
            }
        }
        (n, lat, Instant::now())
    }))
}

async fn pump_run(
    client: &async_nats::Client,
    sub_client: &async_nats::Client,
    lines: u64,
    paced: bool,
) -> Result<Figures, BoxError> {
    let meta = SessionMeta {
        session: SessionId::new(),
        task_id: TaskId::new(),
        attempt: 1,
        worker: WorkerId::parse("bench")?,
    };
    let t0 = Instant::now();
    let sub = subscriber(
        sub_client.clone(),
        broker::subjects::session_any(&meta.session),
        t0,
        u64::MAX,
    )
    .await?;
    let state = tempfile::tempdir()?;
    let transcript = Transcript::create(state.path(), &meta.session, Default::default())?;
    let (mut w, r) = tokio::io::duplex(64 * 1024);
    let writer = tokio::spawn(async move {
        let mut buf = String::with_capacity(64 * 1024);
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let burst = if paced { PACED_BURST } else { 256 };
        let mut i = 0;
        while i < lines {
            if paced {
                tick.tick().await;
            }
            buf.clear();
            let t = t0.elapsed().as_micros() as u64;
            for _ in 0..burst.min(lines - i) {
                buf.push_str(&pi_line(i, t));
                buf.push('\n');
                i += 1;
            }
            if w.write_all(buf.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let (live, _rx) = tokio::sync::watch::channel(LiveState::default());
    let start = Instant::now();
    let summary = run_session(
        r,
        tokio::io::empty(),
        async { AgentEnding::from(AgentExit::success()) },
        meta,
        AgentFormat::Pi,
        PumpConfig::default(),
        SessionPublisher::spawn(client.clone(), glasspane::publish::DEFAULT_CAPACITY),
        Some(transcript),
        live,
    )
    .await;
    writer.await?;
    let (n, mut lat, done) = sub.await?;
    lat.sort_unstable();
    let secs = done.duration_since(start).as_secs_f64();
    Ok(Figures {
        events_per_s: n as f64 / secs,
        delivered: n,
        dropped: summary.dropped,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
    })
}

async fn raw_run(
    client: &async_nats::Client,
    sub_client: &async_nats::Client,
    lines: u64,
    paced: bool,
) -> Result<Figures, BoxError> {
    let session = SessionId::new();
    let worker = WorkerId::parse("bench")?;
    let subject = broker::subjects::session(&session, &worker, "raw");
    let t0 = Instant::now();
    let sub = subscriber(sub_client.clone(), subject.clone(), t0, lines).await?;
    let subject = async_nats::Subject::from(subject);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let burst = if paced { PACED_BURST } else { lines };
    let mut i = 0;
    while i < lines {
        if paced {
            tick.tick().await;
        }
        let t = t0.elapsed().as_micros() as u64;
        for _ in 0..burst.min(lines - i) {
            // Same size as a glasspane event: envelope + normalised event.
            let payload = format!(
                r#"{{"v":1,"session":"{session}","seq":{i},"task_id":"{session}","attempt":1,"worker":"bench","at_ms":0,"event":{{"kind":"tool_start","id":"t{t}","name":"bash","args":"{{\"command\":\"grep -rn 'fn main' src/ | head -n 20\"}}","args_len":52}}}}"#
            );
            client.publish(subject.clone(), payload.into()).await?;
            i += 1;
        }
    }
    client.flush().await?;
    let (n, mut lat, done) = sub.await?;
    lat.sort_unstable();
    Ok(Figures {
        events_per_s: n as f64 / done.duration_since(start).as_secs_f64(),
        delivered: n,
        dropped: lines - n,
        p50_us: percentile(&lat, 0.5),
        p99_us: percentile(&lat, 0.99),
    })
}

fn row(name: &str, f: &Figures, lat: &Figures) {
    println!(
        "| {name:<26} | {:>12.0} | {:>9} | {:>8} | {:>8.3} | {:>8.3} |",
        f.events_per_s,
        f.delivered,
        f.dropped,
        lat.p50_us / 1000.0,
        lat.p99_us / 1000.0
    );
}

fn main() -> Result<(), BoxError> {
    // `cargo bench` passes `--bench`; anything asking for a filter is ignored.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let server = start_server()?;
        let client = async_nats::connect(&server.url).await?;
        let sub_client = async_nats::connect(&server.url).await?;
        let js = async_nats::jetstream::new(client.clone());
        let cfg = broker::provision::ProvisionConfig {
            sessions_max_bytes: 512 << 20,
            ..Default::default()
        };
        broker::provision::provision_all(&js, &cfg).await?;

        let flood = pump_run(&client, &sub_client, FLOOD_LINES, false).await?;
        let rss = peak_rss_kib();
        let paced = pump_run(&client, &sub_client, PACED_LINES, true).await?;
        let raw_flood = raw_run(&client, &sub_client, FLOOD_LINES, false).await?;
        let raw_paced = raw_run(&client, &sub_client, PACED_LINES, true).await?;

        println!();
        println!(
            "glasspane throughput ({} cores, nats-server with JetStream, stream COLIBRI_SESSIONS)",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!("flood: {FLOOD_LINES} lines; latency: {PACED_LINES} lines paced at {PACED_BURST}/ms");
        println!();
        println!("| path                       |   events/s   | delivered |  dropped | p50 (ms) | p99 (ms) |");
        println!("|----------------------------|--------------|-----------|----------|----------|----------|");
        row("agent stdout → subscriber", &flood, &paced);
        row("raw core publish → sub", &raw_flood, &raw_paced);
        println!();
        println!("peak RSS (VmHWM) after flooding {FLOOD_LINES} lines: {:.1} MiB", rss as f64 / 1024.0);
        drop(server);
        Ok::<_, BoxError>(())
    })
}
