//! The agents' own cost controls follow the order's cost mode, against a
//! real nats-server and an in-process worker running stand-in programs
//! named `claude`, `codex` and `pi` that record what they were given.

mod worker_support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use broker::cost_mode::CostMode;
use broker::messages::{Outcome, RunOrder, TaskSpec, Usage};
use broker::{Tag, TagSet};
use worker::profiles::AgentProfile;
use worker_support::Fleet;

/// Writes an executable `name` into `dir` that records its arguments (one
/// per line) to `<rec>/<name>.args`, copies `$HOME/.pi/agent/settings.json`
/// (if any) to `<rec>/<name>.settings`, then prints `output`.
fn stand_in(dir: &Path, rec: &Path, name: &str, output: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let rec = rec.display();
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{rec}/{name}.args'\n\
         [ -f \"$HOME/.pi/agent/settings.json\" ] && cp \"$HOME/.pi/agent/settings.json\" '{rec}/{name}.settings'\n\
         cat <<'EOF'\n{output}\nEOF\n"
    );
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn profile(name: &str, program: &Path, rest: &[&str]) -> AgentProfile {
    let mut argv = vec![program.display().to_string()];
    argv.extend(rest.iter().map(|s| s.to_string()));
    AgentProfile {
        name: Tag::parse(name).expect("tag"),
        argv,
        models: BTreeMap::new(),
        env: BTreeMap::new(),
    }
}

fn task(agent: &str) -> TaskSpec {
    let mut t = TaskSpec::command("controls", TagSet::new(), vec![]);
    t.agent = Tag::parse(agent).expect("tag");
    t.command = Vec::new();
    t.prompt = Some("do it".into());
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_get_their_own_limits_from_the_mode() -> anyhow::Result<()> {
    let bin = tempfile::tempdir()?;
    let rec = tempfile::tempdir()?;
    let claude = stand_in(
        bin.path(),
        rec.path(),
        "claude",
        "{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"c1\"}\n\
         {\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"ok\",\"session_id\":\"c1\"}",
    )?;
    let codex = stand_in(
        bin.path(),
        rec.path(),
        "codex",
        "{\"type\":\"thread.started\",\"thread_id\":\"t1\"}\n\
         {\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":1,\"cached_input_tokens\":0,\"output_tokens\":1}}",
    )?;
    let pi = stand_in(
        bin.path(),
        rec.path(),
        "pi",
        "{\"type\":\"session\",\"version\":3,\"id\":\"p1\",\"timestamp\":\"0\",\"cwd\":\"/\"}\n\
         {\"type\":\"message_end\",\"message\":{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"ok\"}],\"stopReason\":\"stop\"}}\n\
         {\"type\":\"agent_end\",\"messages\":[]}",
    )?;
    let mut fleet = Fleet::start().await?;
    let w = fleet
        .worker("controlled", |cfg| {
            cfg.agents.insert(profile(
                "claude",
                &claude,
                &[
                    "-p",
                    "--output-format",
                    "stream-json",
                    "--verbose",
                    "{prompt}",
                ],
            ));
            cfg.agents
                .insert(profile("codex", &codex, &["exec", "--json", "{prompt}"]));
            cfg.agents
                .insert(profile("pi", &pi, &["--mode", "json", "{prompt}"]));
        })
        .await?;

    let spent = Usage {
        cost_usd: Some(0.4),
        ..Default::default()
    };
    for (agent, mode) in [
        ("claude", CostMode::Fast),
        ("codex", CostMode::Smart),
        ("pi", CostMode::Fast),
    ] {
        let t = task(agent);
        let order = RunOrder {
            spent: spent.clone(),
            ..worker_support::run_order(&t, mode)
        };
        fleet.place(&w.id, order).await?;
        let (outcome, _, reason) = fleet.finished(&t).await?;
        assert_eq!(outcome, Outcome::Succeeded, "{agent}: {reason}");
    }
    let args = |name: &str| -> anyhow::Result<Vec<String>> {
        Ok(
            std::fs::read_to_string(rec.path().join(format!("{name}.args")))?
                .lines()
                .map(String::from)
                .collect(),
        )
    };
    // The task's $1.00 fast ceiling less the $0.40 already spent.
    assert_eq!(
        args("claude")?,
        [
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "--max-budget-usd",
            "0.6000",
            "do it"
        ]
    );
    assert_eq!(
        args("codex")?,
        [
            "exec",
            "--json",
            "-c",
            "model_auto_compact_token_limit=160000",
            "do it"
        ]
    );
    assert_eq!(args("pi")?, ["--mode", "json", "do it"]);
    assert_eq!(
        std::fs::read_to_string(rec.path().join("pi.settings"))?,
        "{\"compaction\":{\"enabled\":true,\"keepRecentTokens\":8000}}\n"
    );
    assert!(!rec.path().join("claude.settings").exists());
    Ok(())
}
