//! The escape suite: each probe is a real `command` task that tries what a
//! hostile agent would, and must be denied, under a worker running as root
//! (as CI does: the worker drops to agent_user before bwrap) and under a
//! worker running as an unprivileged user (the `colibri-worker` binary
//! started with `setpriv` as nobody).
//!
//! A probe's shell snippet succeeding means the agent got through: the task
//! then exits 99 and the test fails, printing what the probe saw. A snippet
//! that needs a tool the host lacks exits 98, which fails too (a probe that
//! cannot run proves nothing). The limit probes (2,000 processes under 256,
//! memory past its limit, `/tmp` past its size) check that the attempt ends
//! the way the issue asks.
//!
//! Without bwrap, user namespaces, or root for the root-worker half, a test
//! prints why it skips; with `COLIBRI_REQUIRE_SANDBOX=1` that is a failure.

mod worker_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use broker::messages::{NetworkPolicy, Outcome, TaskSpec};
use broker::WorkerId;
use worker::config::{Confinement, KeepWorkdirs};
use worker::WorkerConfig;
use worker_support::{command_task, fake_agent, worker_bin, Fleet};

const ESCAPED: i32 = 99;
const MISSING_TOOL: i32 = 98;
/// The unprivileged worker's user (nobody).
const NOBODY: u32 = 65534;
const PIDS_LIMIT: u32 = 256;
const MEMORY_MIB: u64 = 128;
const TMP_MIB: u64 = 16;

/// Skips (returning `None`) with the reason printed, or fails when
/// `COLIBRI_REQUIRE_SANDBOX=1`.
fn skip(reason: &str) -> Option<()> {
    if std::env::var("COLIBRI_REQUIRE_SANDBOX").is_ok_and(|v| v == "1") {
        panic!("COLIBRI_REQUIRE_SANDBOX=1 but: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

fn sandbox_available() -> Option<()> {
    let ok = std::process::Command::new("bwrap")
        .args([
            "--ro-bind",
            "/",
            "/",
            "--unshare-user",
            "--unshare-pid",
            "--",
            "true",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Some(())
    } else {
        skip("bwrap cannot create namespaces on this machine")
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Everything planted on the host for the agents to go after.
struct Host {
    /// A dir every user may read and write: only the sandbox keeps agents
    /// out of it.
    dir: tempfile::TempDir,
    marker: String,
    config: PathBuf,
    seed: PathBuf,
    board: PathBuf,
    socket: PathBuf,
    _listener: std::os::unix::net::UnixListener,
    /// Under /root (root only).
    root_secret: Option<PathBuf>,
    /// An fd of the test process (so of an in-process worker, and inherited
    /// by a worker process) that is not close-on-exec, reading the marker.
    inherited_fd: i32,
}

impl Host {
    fn plant() -> anyhow::Result<Host> {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        let marker = format!("COLIBRI-ESCAPE-{}", uuid::Uuid::new_v4().simple());
        let plant = |name: &str, text: String| -> anyhow::Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, text)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
            Ok(path)
        };
        let config = plant("worker.toml", format!("# {marker}\n"))?;
        let seed = plant("worker.nk", format!("SUA{marker}\n"))?;
        let board = plant("board.db", format!("SQLite format 3 {marker}\n"))?;
        let socket = dir.path().join("host.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket)?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777))?;
        let root_secret = if is_root() {
            let path = PathBuf::from(format!("/root/colibri-escape-{}", uuid::Uuid::new_v4()));
            std::fs::write(&path, &marker)?;
            Some(path)
        } else {
            None
        };
        let file = std::fs::File::open(&seed)?;
        let inherited_fd = nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_DUPFD(100))?;
        Ok(Host {
            dir,
            marker,
            config,
            seed,
            board,
            socket,
            _listener: listener,
            root_secret,
            inherited_fd,
        })
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(path) = &self.root_secret {
            let _ = std::fs::remove_file(path);
        }
        let _ = nix::unistd::close(self.inherited_fd);
    }
}

/// A probe: `snippet` succeeding is an escape; `tools` must exist in the
/// sandbox.
struct Probe {
    name: &'static str,
    tools: &'static [&'static str],
    snippet: String,
}

fn probe_task(probe: &Probe) -> TaskSpec {
    let mut script = String::new();
    for tool in probe.tools {
        script.push_str(&format!(
            "command -v {tool} >/dev/null || {{ echo 'missing tool: {tool}'; exit {MISSING_TOOL}; }}\n"
        ));
    }
    script.push_str(&format!(
        "if ( {} ) > probe.out 2>&1; then cat probe.out; echo ESCAPED; exit {ESCAPED}; fi\ncat probe.out\n",
        probe.snippet
    ));
    let mut task = command_task(&["/bin/sh", "-c", &script]);
    task.title = format!("escape probe: {}", probe.name);
    task
}

/// The probes that must be denied, against `host` and a worker whose pid
/// and an earlier attempt's work dir are given.
fn probes(host: &Host, worker_pid: u32, other_workdir: &Path) -> Vec<Probe> {
    let m = &host.marker;
    let fake = fake_agent().display().to_string();
    let mut probes = vec![
        Probe {
            name: "read /etc/shadow",
            tools: &["grep"],
            snippet: "grep -q '^root:' /etc/shadow".into(),
        },
        Probe {
            name: "read the worker's config",
            tools: &["grep"],
            snippet: format!("grep -q {m} {}", host.config.display()),
        },
        Probe {
            name: "read an identity seed",
            tools: &["grep"],
            snippet: format!("grep -q {m} {}", host.seed.display()),
        },
        Probe {
            name: "read the board",
            tools: &["grep"],
            snippet: format!("grep -q {m} {}", host.board.display()),
        },
        Probe {
            name: "read another attempt's work dir",
            tools: &["grep"],
            snippet: format!("grep -q {m} {}/mine.txt", other_workdir.display()),
        },
        Probe {
            name: "write outside the work dir",
            tools: &[],
            snippet: format!("echo x > {}/written-by-agent", host.dir.path().display()),
        },
        Probe {
            name: "write a read-only system dir",
            tools: &["touch"],
            snippet: "touch /usr/colibri-escape".into(),
        },
        Probe {
            name: "write /proc/sys",
            tools: &["cat"],
            snippet: "v=$(cat /proc/sys/vm/swappiness) && echo $v > /proc/sys/vm/swappiness".into(),
        },
        Probe {
            name: "mount a tmpfs",
            tools: &["mount", "mkdir"],
            snippet: "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m".into(),
        },
        Probe {
            name: "remount a read-only dir read-write",
            tools: &["mount"],
            snippet: "mount -o remount,bind,rw /usr".into(),
        },
        Probe {
            name: "unmount a cover",
            tools: &["umount"],
            snippet: "umount /etc/shadow || umount /proc".into(),
        },
        Probe {
            name: "unshare -U",
            tools: &["unshare"],
            snippet: "unshare -U true || unshare -r true".into(),
        },
        Probe {
            name: "ptrace the worker",
            tools: &[],
            snippet: format!("{fake} --ptrace {worker_pid}"),
        },
        Probe {
            name: "ptrace the sandbox's init",
            tools: &[],
            snippet: format!("{fake} --ptrace 0"),
        },
        Probe {
            name: "read the worker's memory",
            tools: &["head"],
            snippet: format!("head -c 1 /proc/{worker_pid}/mem"),
        },
        Probe {
            name: "nsenter the worker's namespaces",
            tools: &["nsenter"],
            snippet: format!(
                "nsenter --net=/proc/{worker_pid}/ns/net true || nsenter --mount=/proc/1/ns/mnt true"
            ),
        },
        Probe {
            name: "connect to a unix socket planted on the host",
            tools: &[],
            snippet: format!("{fake} --connect-unix {}", host.socket.display()),
        },
        Probe {
            name: "use an inherited fd",
            tools: &["seq", "grep"],
            snippet: format!(
                "grep -q {m} /proc/self/fd/{} || for n in $(seq 3 255); do [ -e /proc/self/fd/$n ] && echo fd $n open; done | grep -q open",
                host.inherited_fd
            ),
        },
        Probe {
            name: "fill /tmp past its size",
            tools: &["dd"],
            snippet: format!(
                "dd if=/dev/zero of=/tmp/fill bs=1M count={}",
                TMP_MIB * 4
            ),
        },
    ];
    if let Some(secret) = &host.root_secret {
        probes.push(Probe {
            name: "read a secret planted under /root",
            tools: &["grep"],
            snippet: format!("grep -q {m} {}", secret.display()),
        });
    }
    probes
}

/// The worker config of the suite: bwrap, tight limits, several slots.
fn limits(cfg: &mut WorkerConfig, host: &Host) {
    cfg.confinement = Confinement::Bwrap;
    cfg.keep_workdirs = KeepWorkdirs::Always;
    cfg.slots = 4;
    cfg.limits.pids = PIDS_LIMIT;
    cfg.limits.memory = MEMORY_MIB << 20;
    cfg.limits.tmp = TMP_MIB << 20;
    cfg.config_file = Some(host.config.clone());
    cfg.connect.nkey = Some(host.seed.clone());
    cfg.agent_paths = vec![fake_agent_dir()];
}

/// Where the fake agent is installed: the probes run it from their shell.
fn fake_agent_dir() -> PathBuf {
    let agent = fake_agent();
    agent.parent().map(Path::to_path_buf).unwrap_or(agent)
}

/// Runs every probe and the limit probes on `worker` (whose pid and work
/// root are given); returns the failures.
async fn run_suite(
    fleet: &mut Fleet,
    worker: &WorkerId,
    worker_pid: u32,
    work_root: &Path,
    host: &Host,
) -> anyhow::Result<Vec<String>> {
    let mut failures = Vec::new();
    // An earlier attempt, whose work dir the others go after.
    let mine = command_task(&["/bin/sh", "-c", &format!("echo {} > mine.txt", host.marker)]);
    fleet.run(worker, &mine, 1).await?;
    let (outcome, _, reason) = fleet.finished(&mine).await?;
    anyhow::ensure!(outcome == Outcome::Succeeded, "planting attempt: {reason}");
    let other = work_root.join(format!("{}-1", mine.id));
    anyhow::ensure!(other.join("mine.txt").exists(), "no {}", other.display());

    let probes = probes(host, worker_pid, &other);
    let tasks: Vec<TaskSpec> = probes.iter().map(probe_task).collect();
    for task in &tasks {
        fleet.run(worker, task, 1).await?;
    }
    for (probe, task) in probes.iter().zip(&tasks) {
        let (outcome, code, reason) = fleet.finished(task).await?;
        let seen = std::fs::read_to_string(work_root.join(format!("{}-1/probe.out", task.id)))
            .unwrap_or_default();
        let seen = seen.trim();
        match (outcome, code) {
            (Outcome::Succeeded, Some(0)) => {
                eprintln!(
                    "denied: {:<45} {}",
                    probe.name,
                    seen.lines().last().unwrap_or("")
                )
            }
            _ => failures.push(format!(
                "{}: {outcome:?} {code:?} {reason}; it saw: {seen}",
                probe.name
            )),
        }
    }
    if host.dir.path().join("written-by-agent").exists() {
        failures.push("write outside the work dir: the file is on the host".into());
    }
    if Path::new("/usr/colibri-escape").exists() {
        failures.push("write a read-only system dir: /usr/colibri-escape exists".into());
    }

    // The NATS port with network none.
    let mut nats =
        worker_support::fake_task(&["--connect", &format!("127.0.0.1:{}", fleet.nats.port())]);
    nats.network = Some(NetworkPolicy::None);
    fleet.run(worker, &nats, 1).await?;
    match fleet.finished(&nats).await? {
        (Outcome::Failed, Some(4), _) => {
            eprintln!("denied: connect to the hub's NATS port with network none")
        }
        other => failures.push(format!("connect to the hub's NATS port: {other:?}")),
    }

    // 2,000 processes under a limit of 256.
    let bomb = command_task(&[
        "/bin/sh",
        "-c",
        "i=0; while [ $i -lt 2000 ]; do sleep 60 & i=$((i+1)); done; wait",
    ]);
    fleet.run(worker, &bomb, 1).await?;
    match fleet.finished(&bomb).await? {
        (Outcome::Failed, _, reason)
            if reason.contains(&format!("process limit {PIDS_LIMIT} reached")) =>
        {
            eprintln!("denied: 2,000 processes ({reason})")
        }
        other => failures.push(format!("2,000 processes under {PIDS_LIMIT}: {other:?}")),
    }

    // Memory past its limit.
    let hog = worker_support::fake_task(&["--alloc-mib", &(MEMORY_MIB * 4).to_string()]);
    fleet.run(worker, &hog, 1).await?;
    match fleet.finished(&hog).await? {
        (Outcome::Failed, _, reason)
            if reason == format!("memory limit {MEMORY_MIB} MiB reached (oom kill)") =>
        {
            eprintln!(
                "denied: {} MiB under {MEMORY_MIB} MiB ({reason})",
                MEMORY_MIB * 4
            )
        }
        other => failures.push(format!("memory past the limit: {other:?}")),
    }
    Ok(failures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_workers_agents_are_denied_every_escape() -> anyhow::Result<()> {
    if sandbox_available().is_none() {
        return Ok(());
    }
    if !is_root() && skip("the root-worker half needs the tests to run as root (CI does)").is_none()
    {
        return Ok(());
    }
    let host = Host::plant()?;
    let mut fleet = Fleet::start().await?;
    let w = fleet.worker("rooted", |cfg| limits(cfg, &host)).await?;
    let work_root = w.state.path().join("work");
    let failures = run_suite(&mut fleet, &w.id, std::process::id(), &work_root, &host).await?;
    assert!(failures.is_empty(), "escapes:\n{}", failures.join("\n"));
    Ok(())
}

/// The `colibri-worker` binary as nobody, killed on drop.
struct Unprivileged {
    child: std::process::Child,
    state: PathBuf,
}

impl Drop for Unprivileged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Hands the v1 `colibri` cgroups to nobody, as docs/CONFIG.md tells an
/// administrator to (nothing to do on cgroup v2 or without v1).
fn delegate_v1_cgroups(uid: u32) -> anyhow::Result<()> {
    for controller in ["memory", "pids"] {
        let root = Path::new("/sys/fs/cgroup").join(controller);
        if !root.join("cgroup.procs").exists() {
            return Ok(());
        }
        let dir = root.join(worker::cgroup::V1_DELEGATED);
        if !dir.exists() {
            std::fs::create_dir(&dir)?;
        }
        for path in [dir.clone(), dir.join("cgroup.procs"), dir.join("tasks")] {
            nix::unistd::chown(
                &path,
                Some(nix::unistd::Uid::from_raw(uid)),
                Some(nix::unistd::Gid::from_raw(uid)),
            )?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_workers_agents_are_denied_every_escape() -> anyhow::Result<()> {
    if sandbox_available().is_none() {
        return Ok(());
    }
    if !is_root() && skip("starting a worker as nobody needs root (setpriv)").is_none() {
        return Ok(());
    }
    let host = Host::plant()?;
    delegate_v1_cgroups(NOBODY)?;
    let mut fleet = Fleet::start().await?;
    let state = host.dir.path().join("state");
    std::fs::create_dir(&state)?;
    nix::unistd::chown(&state, Some(nix::unistd::Uid::from_raw(NOBODY)), None)?;
    // Its real config: the marker line stays (the probe looks for it).
    let text = format!(
        "# {marker}\nworker_id = \"nobody\"\nstate_dir = \"{state}\"\nconfinement = \"bwrap\"\n\
         allow_command = true\nslots = 4\nkeep_workdirs = \"always\"\nagent_paths = [\"{agents}\"]\n\
         [limits]\npids = {PIDS_LIMIT}\nmemory_mib = {MEMORY_MIB}\ntmp_mib = {TMP_MIB}\nkill_grace_secs = 1\n\
         [nats]\nurl = [\"{url}\"]\n",
        marker = host.marker,
        state = state.display(),
        url = fleet.nats.url(),
        agents = fake_agent_dir().display(),
    );
    std::fs::write(&host.config, text)?;
    let mut child = std::process::Command::new("setpriv");
    child
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(worker_bin())
        .arg("--config")
        .arg(&host.config)
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(std::process::Stdio::null());
    let worker = Unprivileged {
        child: child.spawn()?,
        state,
    };
    let id = WorkerId::parse("nobody")?;
    fleet
        .heartbeat(|hb| hb.worker == id)
        .await
        .map_err(|e| anyhow::anyhow!("the unprivileged worker did not come up: {e:#}"))?;
    let work_root = worker.state.join("work");
    let failures = run_suite(&mut fleet, &id, worker.child.id(), &work_root, &host).await?;
    assert!(failures.is_empty(), "escapes:\n{}", failures.join("\n"));
    Ok(())
}

/// The limit reason reaches the board: `show-task` shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crossed_limit_is_shown_by_show_task() -> anyhow::Result<()> {
    if sandbox_available().is_none() {
        return Ok(());
    }
    if worker::cgroup::detect().is_none()
        && skip("no cgroup hierarchy this test process can hold limits in").is_none()
    {
        return Ok(());
    }
    harness::init_logging();
    let nats = harness::NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let scheduler = harness::SchedulerHandle::start(&nats, &dir.path().join("board.db")).await?;
    let _worker = harness::WorkerHandle::start(&nats, "limited", &["linux"], 1, |cfg| {
        cfg.confinement = Confinement::Bwrap;
        cfg.limits.memory = MEMORY_MIB << 20;
    })
    .await?;
    let board = harness::BoardClient::new(nats.client().await?);
    let mut task = worker_support::fake_task(&["--alloc-mib", &(MEMORY_MIB * 4).to_string()]);
    task.retry.max_attempts = 1;
    task.capabilities = broker::TagSet::parse_lists(["linux"])?;
    board.create(&task).await?;
    let detail = harness::eventually(Duration::from_secs(60), "the task failed", || async {
        let d = board.show(&task.id).await.ok()?;
        d.summary.state.is_terminal().then_some(d)
    })
    .await?;
    let reason = detail
        .attempts
        .last()
        .and_then(|a| a.reason.clone())
        .unwrap_or_default();
    assert_eq!(
        reason,
        format!("memory limit {MEMORY_MIB} MiB reached (oom kill)"),
        "{detail:?}"
    );
    scheduler.stop().await?;
    Ok(())
}
