//! Colibri on a 3-node JetStream cluster (issue 12, items 9–11 and the
//! cluster test): the scheduler survives a start while the cluster has lost
//! its quorum, and with tasks running, the `COLIBRI_INTAKE` stream leader and
//! then the meta leader are killed (and restarted); every submitted task is
//! accepted and succeeds, none lost.
//!
//! Ports: each node's client and monitoring ports are picked by nats-server
//! (`-p -1`, `-m -1`) and read back from its ports file
//! (`--ports_file_dir`); a restarted node takes the same ones again. Route
//! ports cannot be picked that way: every node must know every other's route
//! URL before any of them starts (a lone node that knows no peers would form
//! a cluster of one), so they are picked by binding port 0 and releasing it,
//! just before the nodes start.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use broker::messages::TaskState;
use broker::provision::{ProvisionConfig, INTAKE_STREAM, MIB};
use broker::{TaskId, WorkerId};
use harness::{eventually, within, BoardClient};
use scheduler::service::{self, ServiceConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use worker::config::Confinement;
use worker::WorkerConfig;

const NODES: usize = 3;
const T: Duration = Duration::from_secs(60);

/// One nats-server of the cluster.
struct Node {
    name: String,
    dir: PathBuf,
    route_port: u16,
    /// Client and monitoring ports, once the first start has chosen them.
    ports: Option<(u16, u16)>,
    child: Option<Child>,
}

struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

fn released_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl Cluster {
    fn start() -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let mut nodes = Vec::new();
        for i in 1..=NODES {
            let node_dir = dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(node_dir.join("ports"))?;
            nodes.push(Node {
                name: format!("n{i}"),
                dir: node_dir,
                route_port: released_port()?,
                ports: None,
                child: None,
            });
        }
        let mut cluster = Cluster { _dir: dir, nodes };
        for i in 0..NODES {
            cluster.start_node(i)?;
        }
        Ok(cluster)
    }

    fn routes(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats-route://127.0.0.1:{}", n.route_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `i` (again), on the ports it had if it ran before.
    fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let routes = self.routes();
        let binary = harness::nats::nats_server_binary()?;
        let node = &mut self.nodes[i];
        let (client, monitor) = node
            .ports
            .map_or(("-1".to_string(), "-1".to_string()), |(c, m)| {
                (c.to_string(), m.to_string())
            });
        let ports_dir = node.dir.join("ports");
        for entry in std::fs::read_dir(&ports_dir)? {
            std::fs::remove_file(entry?.path())?;
        }
        let log = std::fs::File::create(node.dir.join("nats.log"))?;
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &client, "-m", &monitor, "-js"])
            .args(["-n", &node.name, "--cluster_name", "colibri"])
            .arg("--cluster")
            .arg(format!("nats://127.0.0.1:{}", node.route_port))
            .args(["--routes", &routes])
            .arg("-sd")
            .arg(node.dir.join("js"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning nats-server")?;
        let pid = child.id();
        node.child = Some(child);
        node.ports = Some(read_ports(&ports_dir, pid)?);
        Ok(())
    }

    /// `kill -9` of node `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    fn index(&self, name: &str) -> anyhow::Result<usize> {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .with_context(|| format!("no node named {name}"))
    }

    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|n| n.ports)
            .map(|(client, _)| format!("nats://127.0.0.1:{client}"))
            .collect()
    }

    fn connect_args(&self) -> broker::connect::ConnectArgs {
        broker::connect::ConnectArgs {
            nats_url: self.urls(),
            ..Default::default()
        }
    }

    async fn client(&self) -> anyhow::Result<async_nats::Client> {
        let args = self.connect_args();
        let connecting = args.connect("cluster-test", broker::connect::Role::Daemon);
        Ok(within(T, "connect", connecting).await??)
    }

    /// The meta leader's name, asked of any live node's monitoring port.
    async fn meta_leader(&self) -> Option<String> {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let Some((_, monitor)) = node.ports else {
                continue;
            };
            if let Ok(Ok(jsz)) =
                tokio::time::timeout(Duration::from_secs(2), http_get_json(monitor, "/jsz")).await
            {
                if let Some(leader) = jsz["meta_cluster"]["leader"].as_str() {
                    if !leader.is_empty() {
                        return Some(leader.to_string());
                    }
                }
            }
        }
        None
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The (client, monitoring) ports nats-server `pid` wrote into `dir`.
fn read_ports(dir: &Path, pid: u32) -> anyhow::Result<(u16, u16)> {
    let file = dir.join(format!("nats-server_{pid}.ports"));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
                let port = |key: &str| {
                    json[key][0]
                        .as_str()
                        .and_then(|url| url.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok())
                };
                if let (Some(client), Some(monitor)) = (port("nats"), port("monitoring")) {
                    return Ok((client, monitor));
                }
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("no ports file {} within 15 s", file.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn http_get_json(port: u16, path: &str) -> anyhow::Result<serde_json::Value> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let body = text.split("\r\n\r\n").nth(1).context("no HTTP body")?;
    Ok(serde_json::from_str(body)?)
}

/// Limits small enough for three stores on one test disk.
fn cluster_provisioning() -> ProvisionConfig {
    ProvisionConfig {
        replicas: 3,
        intake_max_bytes: 64 * MIB,
        work_max_bytes: 64 * MIB,
        events_max_bytes: 64 * MIB,
        sessions_max_bytes: 64 * MIB,
        transcripts_max_bytes: 64 * MIB,
        ..ProvisionConfig::default()
    }
}

/// `colibri intake-task` of a `/bin/true` task with id `id`: the CLI's own
/// retries carry it through leader elections.
async fn intake(cluster_urls: &str, id: TaskId) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new(colibri_bin());
    cmd.args(["intake-task", "--id", &id.to_string(), "--title", "cluster"])
        .args(["--", "/bin/true"])
        .env("COLIBRI_NATS_URL", cluster_urls)
        .kill_on_drop(true);
    let out = within(T, "colibri intake-task", cmd.output()).await??;
    if !out.status.success() {
        bail!(
            "intake-task {id}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn colibri_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-q", "-p", "colibri-scheduler", "--bin", "colibri"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status();
            assert!(status.is_ok_and(|s| s.success()), "building colibri failed");
            harness::workspace_bin("colibri")
        })
        .clone()
}

async fn intake_leader(js: &async_nats::jetstream::Context) -> Option<String> {
    let mut stream = js.get_stream(INTAKE_STREAM).await.ok()?;
    let info = tokio::time::timeout(Duration::from_secs(5), stream.info())
        .await
        .ok()?
        .ok()?;
    info.cluster.as_ref()?.leader.clone()
}

async fn submit_batch(urls: &str, n: usize, ids: &mut Vec<TaskId>) -> anyhow::Result<()> {
    let batch: Vec<TaskId> = (0..n).map(|_| TaskId::new()).collect();
    let results = futures::future::join_all(batch.iter().map(|id| intake(urls, *id))).await;
    for result in results {
        result?;
    }
    ids.extend(batch);
    Ok(())
}

/// Regression (issue 12, item 9): on a 3-node cluster the scheduler exited 1
/// when JetStream was not ready at start; and the intake leader's and meta
/// leader's deaths must lose no task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_die_while_tasks_run_and_no_task_is_lost() -> anyhow::Result<()> {
    harness::init_logging();
    let mut cluster = Cluster::start()?;
    eventually(T, "a meta leader", || cluster.meta_leader()).await?;

    // The scheduler starts while two of three nodes are down: no quorum.
    cluster.kill(1);
    cluster.kill(2);
    let dir = tempfile::tempdir()?;
    let mut config = ServiceConfig::new(dir.path().join("board.db"));
    config.provision = cluster_provisioning();
    config.tick = Duration::from_millis(100);
    let shutdown = CancellationToken::new();
    let client = cluster.client().await?;
    let mut scheduler = tokio::spawn(service::run(client.clone(), config, shutdown.clone()));
    let js = async_nats::jetstream::new(client.clone());
    let quorum_lost = eventually(
        T,
        "a JetStream request refused for lack of quorum",
        || async { js.query_account().await.is_err().then_some(()) },
    );
    quorum_lost.await?;
    // Before the fix the scheduler returned its first provisioning error
    // here (a timeout or 10008); it must keep waiting instead.
    let early = tokio::time::timeout(Duration::from_secs(8), &mut scheduler).await;
    assert!(
        early.is_err(),
        "the scheduler stopped while quorum was lost: {early:?}"
    );
    cluster.start_node(1)?;
    cluster.start_node(2)?;
    let board = BoardClient::new(client.clone());
    eventually(T, "the scheduler answers once quorum is back", || async {
        board.status().await.ok()
    })
    .await?;

    // Two workers; they only bind to what the scheduler provisioned.
    let mut workers = Vec::new();
    for name in ["debby", "domedog"] {
        let state = tempfile::tempdir()?;
        let mut cfg = WorkerConfig::new(WorkerId::parse(name)?, state.path());
        cfg.confinement = Confinement::Unconfined;
        cfg.agents.set_allow_command(true);
        cfg.slots = 4;
        cfg.heartbeat_interval = Duration::from_millis(500);
        cfg.connect = cluster.connect_args();
        let stop = shutdown.child_token();
        let task = tokio::spawn(worker::run(cluster.client().await?, cfg, stop));
        workers.push((state, task));
    }

    let urls = cluster.urls().join(",");
    let mut ids = Vec::new();
    submit_batch(&urls, 15, &mut ids).await?;

    // The intake stream's leader dies while the first batch runs; the next
    // batch is submitted through its election.
    let leader = eventually(T, "the intake stream leader", || intake_leader(&js)).await?;
    let victim = cluster.index(&leader)?;
    cluster.kill(victim);
    submit_batch(&urls, 15, &mut ids).await?;
    cluster.start_node(victim)?;

    // Then the meta leader.
    let meta = eventually(T, "a meta leader", || cluster.meta_leader()).await?;
    let victim = cluster.index(&meta)?;
    cluster.kill(victim);
    submit_batch(&urls, 15, &mut ids).await?;
    cluster.start_node(victim)?;

    for id in &ids {
        let state = board.wait_state(id, TaskState::Succeeded, Duration::from_secs(120));
        within(Duration::from_secs(150), "a task succeeded", state)
            .await?
            .with_context(|| format!("task {id}"))?;
    }
    assert!(!scheduler.is_finished(), "the scheduler stopped");
    shutdown.cancel();
    within(T, "scheduler stop", scheduler).await???;
    for (_state, task) in workers {
        within(T, "worker stop", task).await???;
    }
    Ok(())
}
