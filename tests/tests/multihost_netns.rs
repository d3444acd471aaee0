//! Three hosts on one machine, in network namespaces this test creates (and
//! deletes on drop): `osa` runs nats-server (listening on its own bridge
//! address only) and the scheduler; `debby` and `domedog` each run a real
//! `colibri-worker` with its own nkey identity and tags, linked to osa's
//! bridge by a veth pair in 10.231.0.0/24 (addresses inside these namespaces
//! only; nothing touches the host's own network).
//!
//! It routes tasks across the hosts, cuts debby's link mid-task (debby goes
//! offline in time, its unstarted work moves to domedog, its running task is
//! fenced and retried), restores it (debby returns by itself; its stale
//! attempt cannot report), and restarts osa's nats-server (everyone carries
//! on). Where namespaces cannot be made (not root, no `ip`, `ip netns add`
//! refused) it prints why and skips: it never passes without running.

mod identity_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use broker::messages::{ApiReply, StatusReply, TaskDetail, TaskState};
use harness::{eventually, nats::nats_server_binary};
use identity_support::{colibri, scheduler_bin, worker_bin, Identities, Proc};

const HUB: &str = "10.231.0.1";
const PORT: u16 = 4222;

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !o.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(())
}

/// The namespaces and links; deleted on drop.
struct Net {
    suffix: String,
    made: Vec<String>,
}

impl Net {
    fn ns(&self, host: &str) -> String {
        format!("colibri-{host}-{}", self.suffix)
    }
    /// osa's end of a host's veth (the one cut to drop the host's link).
    fn hub_end(&self, host: &str) -> String {
        format!("c{}{}", &host[..2], self.suffix)
    }

    /// Builds osa with a bridge and one veth per host; `Err` (with the
    /// reason) where namespaces are not available.
    fn build(hosts: &[(&str, &str)]) -> Result<Net, String> {
        // Root check: the real uid, from /proc.
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            })
            .unwrap_or_default();
        if uid != "0" {
            return Err(format!("not root (uid {uid})"));
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("no `ip` command".into());
        }
        let suffix = format!("{}", std::process::id() % 100_000);
        let mut net = Net {
            suffix,
            made: Vec::new(),
        };
        let osa = net.ns("osa");
        ip(&["netns", "add", &osa]).map_err(|e| format!("`ip netns add` failed: {e}"))?;
        net.made.push(osa.clone());
        let setup = || -> anyhow::Result<()> {
            ip(&["-n", &osa, "link", "set", "lo", "up"])?;
            ip(&["-n", &osa, "link", "add", "br0", "type", "bridge"])?;
            ip(&[
                "-n",
                &osa,
                "addr",
                "add",
                &format!("{HUB}/24"),
                "dev",
                "br0",
            ])?;
            ip(&["-n", &osa, "link", "set", "br0", "up"])?;
            Ok(())
        };
        setup().map_err(|e| e.to_string())?;
        for (host, addr) in hosts {
            let ns = net.ns(host);
            ip(&["netns", "add", &ns]).map_err(|e| e.to_string())?;
            net.made.push(ns.clone());
            let hub_end = net.hub_end(host);
            let run = || -> anyhow::Result<()> {
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
                ip(&[
                    "-n", &osa, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ])?;
                ip(&["-n", &osa, "link", "set", &hub_end, "master", "br0"])?;
                ip(&["-n", &osa, "link", "set", &hub_end, "up"])?;
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ])?;
                ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
                Ok(())
            };
            run().map_err(|e| e.to_string())?;
        }
        Ok(net)
    }

    fn link(&self, host: &str, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.ns("osa"),
            "link",
            "set",
            &self.hub_end(host),
            state,
        ])
    }

    fn exec(&self, host: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(host)]).arg(program);
        cmd
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.made.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

struct Cluster {
    net: Net,
    ids: Identities,
    dir: tempfile::TempDir,
    nats_bin: PathBuf,
    nats: Option<Proc>,
    _scheduler: Proc,
    workers: Vec<Proc>,
}

impl Cluster {
    fn url() -> String {
        format!("nats://{HUB}:{PORT}")
    }

    fn start_nats(&mut self) -> anyhow::Result<()> {
        let mut cmd = self.net.exec("osa", &self.nats_bin);
        cmd.args(["-a", HUB, "-p", &PORT.to_string(), "-js", "-sd"])
            .arg(self.dir.path().join("store"))
            .arg("-c")
            .arg(self.ids.authorization());
        self.nats = Some(Proc::spawn("nats-server", cmd, self.dir.path())?);
        Ok(())
    }

    /// `colibri` as the operator, run inside osa.
    fn ops(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = self
            .net
            .exec("osa", colibri())
            .args(self.ids.flags("ops", &Cluster::url()))
            .args(args)
            .output()?;
        if !o.status.success() {
            bail!("colibri {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn status(&self) -> Option<StatusReply> {
        let out = self.ops(&["status", "--json"]).ok()?;
        serde_json::from_str::<StatusReply>(&out).ok().or_else(|| {
            match serde_json::from_str::<ApiReply<StatusReply>>(&out) {
                Ok(ApiReply::Ok(s)) => Some(s),
                _ => None,
            }
        })
    }

    fn online(&self, worker: &str) -> Option<bool> {
        let s = self.status()?;
        Some(
            s.workers
                .iter()
                .any(|w| w.worker.as_str() == worker && w.online),
        )
    }

    fn show(&self, id: &str) -> Option<TaskDetail> {
        serde_json::from_str(&self.ops(&["show-task", id, "--json"]).ok()?).ok()
    }

    fn submit(&self, cap: &str, argv: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["create-task", "--title", "netns", "--capability", cap, "--"];
        args.extend_from_slice(argv);
        Ok(self.ops(&args)?.trim().to_string())
    }

    async fn until(
        &self,
        limit: Duration,
        what: &str,
        f: impl Fn(&Cluster) -> bool,
    ) -> anyhow::Result<()> {
        eventually(limit, what, || async { f(self).then_some(()) })
            .await
            .with_context(|| self.logs())
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for w in &self.workers {
            let text = w.log_text();
            let tail: String = text.lines().rev().take(15).collect::<Vec<_>>().join("\n");
            s.push_str(&format!("--- {} (last lines, reversed)\n{tail}\n", w.name));
        }
        s
    }
}

fn state_of(c: &Cluster, id: &str) -> Option<(TaskState, u32, String)> {
    let d = c.show(id)?;
    Some((
        d.summary.state,
        d.summary.attempt,
        d.summary.worker.map(|w| w.to_string()).unwrap_or_default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_route_survive_a_cut_link_and_a_hub_restart() -> anyhow::Result<()> {
    let hosts = [("debby", "10.231.0.2"), ("domedog", "10.231.0.3")];
    let net = match Net::build(&hosts) {
        Ok(net) => net,
        Err(why) => {
            eprintln!("SKIPPED three_hosts_route_survive_a_cut_link_and_a_hub_restart: network namespaces are not available here: {why}");
            return Ok(());
        }
    };
    let nats_bin = nats_server_binary()?;
    // debby: linux+docker, domedog: linux+docker+gpu. A docker task fits
    // debby best; domedog is the other qualifying host.
    let ids = Identities::create(&[("debby", "linux,docker"), ("domedog", "linux,docker,gpu")])?;
    let dir = tempfile::tempdir()?;
    let mut cmd = net.exec("osa", scheduler_bin());
    cmd.args(ids.flags("hub", &Cluster::url()))
        .arg("--db")
        .arg(dir.path().join("board.db"))
        .arg("--hosts")
        .arg(ids.hosts_file());
    let mut cluster = Cluster {
        nats: None,
        _scheduler: Proc::spawn("scheduler", cmd, dir.path())?,
        workers: Vec::new(),
        net,
        ids,
        dir,
        nats_bin,
    };
    cluster.start_nats()?;
    // Both hosts run `pi` as the fake agent, which speaks pi's json mode.
    let agents = cluster.dir.path().join("worker.toml");
    std::fs::write(
        &agents,
        format!(
            "[agents.pi]\nargv = [\"{}\", \"--sleep-ms\", \"50\", \"{{prompt}}\"]\n",
            worker_bin().with_file_name("colibri-fake-agent").display()
        ),
    )?;
    for (host, tags) in [("debby", "linux,docker"), ("domedog", "linux,docker,gpu")] {
        let state = cluster.dir.path().join(format!("{host}-state"));
        std::fs::create_dir_all(&state)?;
        let mut cmd = cluster.net.exec(host, worker_bin());
        cmd.arg("--config")
            .arg(&agents)
            .args(cluster.ids.flags(host, &Cluster::url()))
            .args(["--worker-id", host, "--capabilities", tags, "--slots", "2"])
            .args([
                "--allow-command",
                "--confinement",
                "unconfined",
                "--state-dir",
            ])
            .arg(&state);
        cluster
            .workers
            .push(Proc::spawn(host, cmd, cluster.dir.path())?);
    }
    let c = &cluster;
    c.until(Duration::from_secs(60), "both workers online", |c| {
        c.online("debby") == Some(true) && c.online("domedog") == Some(true)
    })
    .await?;

    // Routing across hosts: best fit for docker is debby, gpu only domedog.
    let on_debby = c.submit("docker", &["/bin/true"])?;
    let on_domedog = c.submit("gpu", &["/bin/true"])?;
    c.until(Duration::from_secs(30), "routed tasks succeed", |c| {
        state_of(c, &on_debby).is_some_and(|s| s.0 == TaskState::Succeeded && s.2 == "debby")
            && state_of(c, &on_domedog)
                .is_some_and(|s| s.0 == TaskState::Succeeded && s.2 == "domedog")
    })
    .await?;

    // An agent session on debby, its transcript shared through the hub.
    let first = c
        .ops(&[
            "create-task",
            "--title",
            "map it",
            "--capability",
            "docker",
            "--agent",
            "pi",
            "--prompt",
            "map the parser",
        ])?
        .trim()
        .to_string();
    c.until(
        Duration::from_secs(30),
        "agent task succeeds on debby",
        |c| state_of(c, &first).is_some_and(|s| s.0 == TaskState::Succeeded && s.2 == "debby"),
    )
    .await?;
    let attempt = c.show(&first).context("show the agent task")?.attempts[0].clone();
    let shared = attempt.transcript.context("debby shared no transcript")?;
    assert_eq!(shared.session, attempt.session);
    let session = attempt.session.to_string();

    // A long task runs on debby; then debby's link is cut.
    let long = c.submit("docker", &["/bin/sleep", "25"])?;
    c.until(Duration::from_secs(30), "long task running on debby", |c| {
        state_of(c, &long).is_some_and(|s| s.0 == TaskState::Running && s.2 == "debby")
    })
    .await?;
    c.net.link("debby", false)?;
    let cut_at = Instant::now();
    // Work placed on debby while it is still believed online never starts there.
    let unstarted = c.submit("docker", &["/bin/true"])?;
    c.until(Duration::from_secs(20), "debby marked offline", |c| {
        c.online("debby") == Some(false)
    })
    .await?;
    let offline_after = cut_at.elapsed();
    assert!(
        offline_after <= Duration::from_secs(16),
        "debby marked offline after {offline_after:?}"
    );
    // With debby away, its session continues on domedog from the shared
    // transcript, fetched through the hub under domedog's own identity.
    let next = c
        .ops(&[
            "create-task",
            "--title",
            "fix it",
            "--capability",
            "docker",
            "--agent",
            "pi",
            "--session",
            &session,
            "--prompt",
            "now fix the parser",
        ])?
        .trim()
        .to_string();
    c.until(
        Duration::from_secs(30),
        "continuation succeeds on domedog",
        |c| state_of(c, &next).is_some_and(|s| s.0 == TaskState::Succeeded && s.2 == "domedog"),
    )
    .await?;
    let fetched = c
        .dir
        .path()
        .join("domedog-state/sessions")
        .join(format!("{session}.jsonl"));
    assert!(fetched.exists(), "domedog holds the fetched transcript");
    c.until(
        Duration::from_secs(30),
        "unstarted work done on domedog",
        |c| {
            state_of(c, &unstarted).is_some_and(|s| s.0 == TaskState::Succeeded && s.2 == "domedog")
        },
    )
    .await?;
    c.until(
        Duration::from_secs(20),
        "running task retried on domedog",
        |c| state_of(c, &long).is_some_and(|s| s.1 >= 2 && s.2 == "domedog"),
    )
    .await?;

    // The link returns: debby comes back by itself; its stale attempt is
    // fenced and cannot report the task done.
    c.net.link("debby", true)?;
    c.until(Duration::from_secs(60), "debby back online", |c| {
        c.online("debby") == Some(true)
    })
    .await?;
    c.until(
        Duration::from_secs(60),
        "long task done by attempt 2",
        |c| state_of(c, &long).is_some_and(|s| s.0 == TaskState::Succeeded && s.2 == "domedog"),
    )
    .await?;
    let detail = c.show(&long).context("show long task")?;
    let first = detail
        .attempts
        .iter()
        .find(|a| a.attempt == 1)
        .context("attempt 1 recorded")?;
    assert_eq!(first.worker.as_str(), "debby");
    c.until(
        Duration::from_secs(40),
        "stale attempt fenced or its report ignored",
        |c| {
            c.status().is_some_and(|s| {
                s.counters.get("stale_reports").copied().unwrap_or(0)
                    + s.counters
                        .get("stale_attempts_fenced")
                        .copied()
                        .unwrap_or(0)
                    >= 1
            })
        },
    )
    .await?;
    let detail = c.show(&long).context("show long task")?;
    assert_eq!(detail.summary.state, TaskState::Succeeded);
    assert_eq!(
        detail.summary.worker.map(|w| w.to_string()).as_deref(),
        Some("domedog")
    );

    // osa's nats-server restarts; everyone carries on without help.
    if let Some(mut n) = cluster.nats.take() {
        n.kill();
    }
    cluster.start_nats()?;
    let c = &cluster;
    c.until(
        Duration::from_secs(60),
        "both workers online after restart",
        |c| c.online("debby") == Some(true) && c.online("domedog") == Some(true),
    )
    .await?;
    let after_debby = c.submit("docker", &["/bin/true"])?;
    let after_domedog = c.submit("gpu", &["/bin/true"])?;
    c.until(
        Duration::from_secs(60),
        "tasks after the restart succeed",
        |c| {
            state_of(c, &after_debby).is_some_and(|s| s.0 == TaskState::Succeeded)
                && state_of(c, &after_domedog).is_some_and(|s| s.0 == TaskState::Succeeded)
        },
    )
    .await?;
    for w in cluster.workers.iter_mut() {
        assert!(!w.exited(), "{} exited", w.name);
    }
    Ok(())
}
