//! The operator's runbook, as written, against a real nats-server, the
//! scheduler and real workers, through the `colibri` binary (built by
//! `cargo build --bins`, as scripts/test.sh does).

use std::process::{Command, Output};
use std::time::Duration;

use broker::messages::api::{ListTasksReply, StatusReply, TaskDetail};
use broker::messages::TaskState;
use harness::{BoardClient, NatsServer, SchedulerHandle, WorkerHandle};

const T: Duration = Duration::from_secs(20);

struct Cli {
    url: String,
}

impl Cli {
    /// Runs `colibri ARGS` (bounded), returning its output.
    async fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd =
            tokio::process::Command::from(Command::new(harness::workspace_bin("colibri")));
        cmd.args(args)
            .env("COLIBRI_NATS_URL", &self.url)
            .kill_on_drop(true);
        Ok(harness::within(T, &format!("colibri {}", args.join(" ")), cmd.output()).await??)
    }

    async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args).await?;
        anyhow::ensure!(
            out.status.success(),
            "colibri {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?)
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> anyhow::Result<T> {
        Ok(serde_json::from_str(&self.ok(args).await?)?)
    }
}

#[tokio::test]
async fn runbook_commands_work_as_written() -> anyhow::Result<()> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let scheduler = SchedulerHandle::start(&nats, &dir.path().join("board.db")).await?;
    let _linux = WorkerHandle::start(&nats, "laptop", &["linux"], 2, |_| {}).await?;
    let cli = Cli { url: nats.url() };

    harness::eventually(T, "worker online in status", || async {
        let s: StatusReply = cli.json(&["status", "--json"]).await.ok()?;
        s.workers
            .iter()
            .any(|w| w.worker.as_str() == "laptop" && w.online)
            .then_some(())
    })
    .await?;
    let human = cli.ok(&["status"]).await?;
    assert!(
        human.contains("laptop") && human.contains("linux"),
        "{human}"
    );

    // create-task is synchronous: the id printed is stored.
    let iso = cli
        .ok(&["create-task", "--title", "iso check"])
        .await?
        .trim()
        .to_string();
    let queued: ListTasksReply = cli
        .json(&["list-tasks", "--status", "queued", "--json"])
        .await?;
    assert!(queued.tasks.iter().any(|t| t.task_id.to_string() == iso));

    // intake-task shows up after the next scheduler turn, parked with its reason.
    let intake = cli
        .ok(&[
            "intake-task",
            "--title",
            "iso intake check",
            "--capability",
            "freebsd",
        ])
        .await?
        .trim()
        .to_string();
    let parked = harness::eventually(T, "intake task listed as queued", || async {
        let l: ListTasksReply = cli
            .json(&["list-tasks", "--status", "queued", "--json"])
            .await
            .ok()?;
        l.tasks
            .into_iter()
            .find(|t| t.task_id.to_string() == intake && t.parked.is_some())
    })
    .await?;
    assert!(parked.parked.unwrap().to_string().contains("freebsd"));
    let text = cli.ok(&["list-tasks", "--status", "queued"]).await?;
    assert!(
        text.contains("iso intake check") && text.contains("parked"),
        "{text}"
    );

    // A plain command runs on the real worker and succeeds.
    let ok = cli
        .ok(&[
            "create-task",
            "--title",
            "true",
            "--capability",
            "linux",
            "--",
            "/bin/true",
        ])
        .await?
        .trim()
        .to_string();
    let board = BoardClient::new(nats.client().await?);
    board
        .wait_state(&ok.parse()?, TaskState::Succeeded, T)
        .await?;
    let shown: TaskDetail = cli.json(&["show-task", &ok, "--json"]).await?;
    assert_eq!(shown.attempts.len(), 1);
    assert_eq!(shown.attempts[0].exit_code, Some(0));
    assert_eq!(shown.attempts[0].worker.as_str(), "laptop");
    let text = cli.ok(&["show-task", &ok]).await?;
    assert!(text.contains("succeeded"), "{text}");

    // A failing command fails, with its exit status.
    let bad = cli
        .ok(&[
            "create-task",
            "--title",
            "false",
            "--capability",
            "linux",
            "--",
            "/bin/sh",
            "-c",
            "exit 3",
        ])
        .await?
        .trim()
        .to_string();
    let d = board
        .wait_state(&bad.parse()?, TaskState::Failed, T)
        .await?;
    assert_eq!(d.attempts[0].exit_code, Some(3));

    // cancel of a parked task is immediate.
    let out = cli.ok(&["cancel", &iso]).await?;
    assert!(out.contains("cancelled"), "{out}");
    let snapshot: serde_json::Value = cli.json(&["snapshot", "--json"]).await?;
    assert!(snapshot["tasks"].as_array().is_some_and(|t| t.len() == 4));
    // snapshot returned one page and a cursor: it now follows the cursor, so
    // a page size below the board's size still gives every task, in order.
    let paged: serde_json::Value = cli.json(&["snapshot", "--json", "--limit", "3"]).await?;
    assert_eq!(paged["tasks"], snapshot["tasks"]);
    assert!(paged.get("next").is_none(), "{paged}");
    assert!(paged["status"]["workers"].is_array(), "{paged}");
    scheduler.stop().await
}

#[tokio::test]
async fn bad_tags_and_flags_exit_2_naming_the_rule_and_store_nothing() -> anyhow::Result<()> {
    harness::init_logging();
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let scheduler = SchedulerHandle::start(&nats, &dir.path().join("board.db")).await?;
    let cli = Cli { url: nats.url() };
    let long = "a".repeat(65);
    for (tag, rule) in [
        ("gpu*", "'*'"),
        ("a b", "' '"),
        ("GPU", "upper case"),
        (long.as_str(), "at most 64"),
        ("", "empty"),
    ] {
        for cmd in ["create-task", "intake-task"] {
            let out = cli
                .run(&[cmd, "--title", "bad tag", "--capability", tag])
                .await?;
            assert_eq!(out.status.code(), Some(2), "{cmd} --capability {tag:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("--capability") && err.contains(rule),
                "{cmd} {tag:?}: {err}"
            );
        }
    }
    for args in [
        &["list-tasks", "--status", "bogus"][..],
        &["show-task", "not-a-uuid"],
        &["create-task"],
        &["create-task", "--title", "x", "--agent", "pi", "--", "ls"],
        &[
            "create-task",
            "--title",
            "x",
            "--max-attempts",
            "0",
            "--",
            "ls",
        ],
        &["set-cost-mode", "cheap"],
    ] {
        let out = cli.run(args).await?;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Nothing was stored.
    let all: ListTasksReply = cli.json(&["list-tasks", "--json"]).await?;
    assert!(all.tasks.is_empty(), "{:?}", all.tasks);
    // A missing task is a plain failure, not a usage error.
    let out = cli
        .run(&["cancel", &broker::TaskId::new().to_string()])
        .await?;
    assert_eq!(out.status.code(), Some(1));
    scheduler.stop().await
}

#[tokio::test]
async fn no_scheduler_is_a_clear_error() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let cli = Cli { url: nats.url() };
    let out = cli.run(&["status"]).await?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no scheduler is running"));
    Ok(())
}

// The CLI connected before checking its flags, so with NATS unreachable a
// bad tag exited 1 with "connection refused": usage errors now exit 2
// whatever the server's state, naming the flag and the rule.
#[tokio::test]
async fn usage_errors_exit_2_even_when_nats_is_unreachable() -> anyhow::Result<()> {
    let cli = Cli {
        url: "nats://127.0.0.1:1".into(),
    };
    let long = "a".repeat(65);
    for (tag, rule) in [
        ("gpu*", "'*'"),
        ("a b", "' '"),
        ("GPU", "upper case"),
        (long.as_str(), "at most 64"),
        ("", "empty"),
    ] {
        for cmd in ["create-task", "intake-task"] {
            let out = cli.run(&[cmd, "--title", "t", "--capability", tag]).await?;
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{cmd} {tag:?}: {err}");
            assert!(
                err.contains("--capability") && err.contains(rule),
                "{cmd} {tag:?}: {err}"
            );
        }
    }
    let out = cli
        .run(&["create-task", "--title", "x", "--agent", "pi", "--", "ls"])
        .await?;
    assert_eq!(out.status.code(), Some(2));
    let out = cli.run(&["--nats-url", "http://:x", "status"]).await?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--nats-url"), "{err}");
    // A good command against no server is a plain failure.
    let out = cli.run(&["create-task", "--title", "ok"]).await?;
    assert_eq!(out.status.code(), Some(1));
    Ok(())
}

// spawn-local reported an agent exiting 2 as a usage error, needed a worker
// config for its id and state dir, and its README example used "s1" as a
// session id, which is not a UUID.
#[tokio::test]
async fn spawn_local_runs_without_a_config_and_passes_the_exit_code_on() -> anyhow::Result<()> {
    let cli = Cli {
        url: "nats://127.0.0.1:1".into(),
    };
    let tmp = tempfile::tempdir()?;
    let state = tmp.path().display().to_string();
    for (extra, code) in [
        (&[][..], 0),
        (&["--worker-id", "bench", "--state-dir", &state][..], 2),
        (&[], 7),
    ] {
        let script = format!("echo hello; exit {code}");
        let mut args = vec!["spawn-local", "command"];
        args.extend_from_slice(extra);
        args.extend(["--", "/bin/sh", "-c", &script]);
        let out = cli.run(&args).await?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(!err.contains("usage"), "{err}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("hello"));
    }
    let out = cli
        .run(&["spawn-local", "pi", "--session-id", "s1"])
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--session-id") && err.contains("UUID"),
        "{err}"
    );
    Ok(())
}
