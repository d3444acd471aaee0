//! The agents' own cost controls, set from the cost mode at launch, so an
//! agent's own limits never contradict the mode Colibri enforces.
//!
//! | agent | control | from the mode |
//! |---|---|---|
//! | `claude` | `--max-budget-usd X` | the task's cost ceiling less what its earlier attempts spent |
//! | `codex` | `-c model_auto_compact_token_limit=N` | `agent_context_tokens` |
//! | `pi` | `$HOME/.pi/agent/settings.json`: `compaction.enabled = true`, `keepRecentTokens` | `prompt_budget_tokens` |
//!
//! They are set only when the profile runs the agent's own program (its
//! argv's first word is named `claude`, `codex` or `pi`): a wrapper script
//! may not take the agent's flags. They are fixed at launch; a mode change
//! mid-session reaches Colibri's own per-append enforcement, which stays the
//! authority (compaction, escalation and the spend ceiling of the transcript).
//!
//! The agents' own resume controls (Claude `--resume`, Codex `exec resume`,
//! pi `--session`) are deliberately not used for a continued session: they
//! would bring back the agent's whole earlier context, which lives on one
//! host and which the mode's prompt budget cannot bound. A continued session
//! starts from the prompt Colibri builds within that budget instead.

use std::path::{Path, PathBuf};

use broker::cost_mode::CostMode;
use broker::messages::Usage;

/// What an agent is given so that its own limits follow the mode.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModeControls {
    /// Arguments placed before the prompt.
    pub args: Vec<String>,
    /// Files written under the attempt's `HOME` (its work dir) before the
    /// agent starts: (path relative to `HOME`, contents).
    pub files: Vec<(PathBuf, String)>,
}

/// The controls for `agent` run by `program` under `mode`, the task having
/// spent `spent` in its earlier attempts.
pub fn for_agent(program: &str, agent: &str, mode: CostMode, spent: &Usage) -> ModeControls {
    let own_program = Path::new(program)
        .file_name()
        .is_some_and(|name| name == agent);
    if !own_program {
        return ModeControls::default();
    }
    let limits = mode.limits();
    match agent {
        "claude" => {
            let left = (limits.max_task_cost_usd - spent.cost_usd.unwrap_or(0.0)).max(0.0);
            ModeControls {
                args: vec!["--max-budget-usd".into(), format!("{left:.4}")],
                files: Vec::new(),
            }
        }
        "codex" => ModeControls {
            args: vec![
                "-c".into(),
                format!(
                    "model_auto_compact_token_limit={}",
                    limits.agent_context_tokens
                ),
            ],
            files: Vec::new(),
        },
        "pi" => {
            let settings = serde_json::json!({
                "compaction": {
                    "enabled": true,
                    "keepRecentTokens": limits.prompt_budget_tokens,
                }
            });
            ModeControls {
                args: Vec::new(),
                files: vec![(
                    PathBuf::from(".pi/agent/settings.json"),
                    format!("{settings}\n"),
                )],
            }
        }
        _ => ModeControls::default(),
    }
}

impl ModeControls {
    /// Writes the files under `home`; returns every directory and file it
    /// created, parents first (to hand them to a jailed agent's user).
    pub fn write_files(&self, home: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut created = Vec::new();
        for (relative, contents) in &self.files {
            let path = home.join(relative);
            let mut dir = PathBuf::from(home);
            for part in relative.parent().into_iter().flat_map(Path::components) {
                dir.push(part);
                if !dir.exists() {
                    std::fs::create_dir(&dir)?;
                    created.push(dir.clone());
                }
            }
            std::fs::write(&path, contents)?;
            created.push(path);
        }
        Ok(created)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(cost: Option<f64>) -> Usage {
        Usage {
            cost_usd: cost,
            ..Default::default()
        }
    }

    #[test]
    fn claude_gets_what_is_left_of_the_cost_ceiling() {
        let c = for_agent("claude", "claude", CostMode::Fast, &spent(Some(0.25)));
        assert_eq!(c.args, ["--max-budget-usd", "0.7500"]);
        let c = for_agent(
            "/usr/local/bin/claude",
            "claude",
            CostMode::Max,
            &spent(None),
        );
        assert_eq!(c.args, ["--max-budget-usd", "25.0000"]);
        let c = for_agent("claude", "claude", CostMode::Fast, &spent(Some(3.0)));
        assert_eq!(c.args, ["--max-budget-usd", "0.0000"]);
        assert!(c.files.is_empty());
    }

    #[test]
    fn codex_compacts_at_the_modes_context() {
        for (mode, n) in [
            (CostMode::Fast, "64000"),
            (CostMode::Smart, "160000"),
            (CostMode::Max, "400000"),
        ] {
            let c = for_agent("codex", "codex", mode, &spent(None));
            assert_eq!(
                c.args,
                [
                    "-c".to_string(),
                    format!("model_auto_compact_token_limit={n}")
                ]
            );
        }
    }

    #[test]
    fn pi_keeps_the_modes_prompt_budget_on_compaction() {
        let c = for_agent("pi", "pi", CostMode::Fast, &spent(None));
        assert!(c.args.is_empty());
        assert_eq!(
            c.files,
            [(
                PathBuf::from(".pi/agent/settings.json"),
                "{\"compaction\":{\"enabled\":true,\"keepRecentTokens\":8000}}\n".to_string()
            )]
        );
        let home = tempfile::tempdir().unwrap();
        let created = c.write_files(home.path()).unwrap();
        let h = home.path();
        assert_eq!(
            created,
            [
                h.join(".pi"),
                h.join(".pi/agent"),
                h.join(".pi/agent/settings.json")
            ]
        );
        let written = std::fs::read_to_string(home.path().join(".pi/agent/settings.json")).unwrap();
        assert_eq!(written, c.files[0].1);
    }

    #[test]
    fn wrappers_and_other_agents_get_nothing() {
        for (program, agent) in [
            ("sh", "claude"),
            ("/opt/wrap-codex", "codex"),
            ("pi-wrapper", "pi"),
            ("aider", "aider"),
        ] {
            assert_eq!(
                for_agent(program, agent, CostMode::Fast, &spent(None)),
                ModeControls::default(),
                "{program} {agent}"
            );
        }
    }
}
