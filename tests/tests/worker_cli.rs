//! The `colibri-worker` binary's command line: exit 2 on usage errors that
//! name the flag and the rule, exit 1 with every problem of a bad
//! configuration, `check-config` on a good one, and `spawn-local`.

mod worker_support;

use std::process::{Command, Output};

use worker_support::{fake_agent, worker_bin};

fn worker(args: &[&str]) -> Output {
    Command::new(worker_bin())
        .args(args)
        .env_remove("COLIBRI_CONFIG")
        .env_remove("COLIBRI_WORKER_ID")
        .env_remove("COLIBRI_STATE_DIR")
        .output()
        .expect("running colibri-worker")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn rejected_capabilities_exit_2_naming_the_rule() {
    for bad in ["gpu*", "a b", "GPU", &"x".repeat(65)] {
        let o = worker(&[
            "--worker-id",
            "w",
            "--state-dir",
            "/tmp/x",
            "--capabilities",
            bad,
            "check-config",
        ]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("--capabilities"), "{}", stderr(&o));
    }
}

#[test]
fn check_config_reports_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("worker.toml");
    std::fs::write(
        &file,
        "worker_id = \"w\"\nslots = 0\ncolour = 1\n[limits]\nidle_secs = 0\n[agents.pi]\nenv = { KEY = \"sk-do-not-print\" }\nargv = []\n",
    )
    .unwrap();
    let o = worker(&["--config", file.to_str().unwrap(), "check-config"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    for field in [
        "slots:",
        "colour:",
        "limits.idle_secs:",
        "agents.pi.argv:",
        "state_dir:",
    ] {
        assert!(err.contains(field), "{field} missing from {err}");
    }
    assert!(!err.contains("sk-do-not-print"));
}

#[test]
fn check_config_accepts_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("worker.toml");
    std::fs::write(
        &file,
        format!(
            "worker_id = \"debby\"\ncapabilities = [\"linux\", \"python3.12\"]\nstate_dir = \"{}\"\nconfinement = \"unconfined\"\n[agents.pi]\nenv = {{ KEY = \"sk-x\" }}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let o = worker(&["--config", file.to_str().unwrap(), "check-config"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("debby") && out.contains("pi"), "{out}");
}

#[test]
fn spawn_local_runs_a_confined_agent_and_exits_with_its_status() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().display().to_string();
    let fake = fake_agent().display().to_string();
    let o = worker(&[
        "--worker-id",
        "w",
        "--state-dir",
        &state,
        "spawn-local",
        "command",
        "--session-id",
        &broker::SessionId::new().to_string(),
        "--",
        &fake,
        "--exit-code",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("\"type\":\"session\""));
}

// A missing --worker-id or --state-dir exited 1, and --slots 0 exited 1
// naming the config field: usage errors exit 2 naming the flag.
#[test]
fn usage_errors_exit_2_naming_the_flag() {
    for (args, flag) in [
        (
            &["--state-dir", "/tmp/x", "check-config"][..],
            "--worker-id",
        ),
        (&["--worker-id", "w", "check-config"][..], "--state-dir"),
        (&["check-config"][..], "--worker-id"),
        (
            &["--worker-id", "w", "--state-dir", "/tmp/x", "--slots", "0"][..],
            "--slots",
        ),
    ] {
        let o = worker(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(flag), "{args:?}: {}", stderr(&o));
    }
}

// spawn-local needed a worker id and a state dir although it runs no daemon:
// without them it uses the host name and a temporary dir, removed after.
#[test]
fn spawn_local_needs_no_worker_id_or_state_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = fake_agent().display().to_string();
    for code in ["0", "4"] {
        let o = Command::new(worker_bin())
            .args(["spawn-local", "command", "--session-id"])
            .arg(broker::SessionId::new().to_string())
            .args(["--", &fake, "--exit-code", code])
            .env_remove("COLIBRI_CONFIG")
            .env_remove("COLIBRI_WORKER_ID")
            .env_remove("COLIBRI_STATE_DIR")
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        assert_eq!(
            o.status.code().map(|c| c.to_string()).as_deref(),
            Some(code),
            "{}",
            stderr(&o)
        );
    }
    // The successful run left nothing; the failed one kept its dir and said so.
    let left = std::fs::read_dir(tmp.path()).unwrap().count();
    assert!(left <= 1, "{left} dirs left in {}", tmp.path().display());
}
