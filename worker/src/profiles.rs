//! Agent profiles: which agents this worker runs and how. A profile is an
//! argv template (`{prompt}`, `{model}`, `{provider}`, `{session}`, `{task}`
//! are substituted), maps of model and provider names to extra arguments,
//! and an environment of secrets that reaches only the agent.
//!
//! Built-in templates exist for `pi`, `claude` and `codex`; a profile is
//! enabled only when the worker's file lists it. `command` (a task's own
//! argv) is enabled only by `allow_command`. A model or provider a profile
//! cannot pass to its agent is refused, never dropped.

use std::collections::BTreeMap;

use broker::messages::task::COMMAND_AGENT;
use broker::messages::TaskSpec;
use broker::{SessionId, Tag, TagSet};
use serde::Deserialize;

use crate::config::Problem;
use crate::secret::Secret;

/// `[agents.NAME]` as written in `worker.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// Enabled when the table is present, unless `enabled = false`.
    pub enabled: Option<bool>,
    /// The built-in template when absent (pi, claude, codex).
    pub argv: Option<Vec<String>>,
    #[serde(default)]
    pub models: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub providers: BTreeMap<String, Vec<String>>,
    /// Arguments for a provider not in `providers` (`{provider}` substituted);
    /// the agent's built-in ones when absent, none when `[]`.
    pub provider_args: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, Secret>,
}

/// A validated agent profile.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentProfile {
    pub name: Tag,
    pub argv: Vec<String>,
    /// `--model NAME` of a task maps to these extra arguments.
    pub models: BTreeMap<String, Vec<String>>,
    /// Secrets: only in the agent's environment, never logged.
    pub env: BTreeMap<String, Secret>,
}

/// How a profile passes a task's `--provider NAME`. Kept beside the
/// profile, not in it, so a profile built in code gets its agent's built-in
/// provider arguments without naming them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProviderArgs {
    /// A provider with its own extra arguments.
    pub named: BTreeMap<String, Vec<String>>,
    /// Any other provider: these arguments with `{provider}` substituted;
    /// empty when the agent's CLI takes no provider.
    pub any: Vec<String>,
}

impl ProviderArgs {
    /// What a known agent's own CLI takes: pi has `--provider NAME`; claude
    /// and codex have no provider flag, so only `providers` entries work.
    pub fn builtin(name: &str) -> ProviderArgs {
        let any = match name {
            "pi" => vec!["--provider".to_string(), "{provider}".to_string()],
            _ => Vec::new(),
        };
        ProviderArgs {
            named: BTreeMap::new(),
            any,
        }
    }
}

/// The built-in argv template of a known agent.
pub fn builtin_argv(name: &str) -> Option<Vec<String>> {
    let argv: &[&str] = match name {
        "pi" => &["pi", "--mode", "json", "{prompt}"],
        "claude" => &[
            "claude",
            "-p",
            "--output-format",
            "stream-json",
            "--verbose",
            "{prompt}",
        ],
        "codex" => &["codex", "exec", "--json", "{prompt}"],
        _ => return None,
    };
    Some(argv.iter().map(|s| s.to_string()).collect())
}

/// What to run for one order: the agent's argv and its own environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub agent: Tag,
    pub argv: Vec<String>,
    pub env: Vec<(String, Secret)>,
}

/// Why an order is refused (reported as `Rejected` with this reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// The enabled profiles of this worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profiles {
    profiles: BTreeMap<String, AgentProfile>,
    /// By agent name; an agent missing here takes its built-in ones.
    providers: BTreeMap<String, ProviderArgs>,
    allow_command: bool,
}

impl Profiles {
    /// Every secret of every profile, by its variable name: what the
    /// worker's [`crate::secret::Redactor`] removes from agent output.
    pub fn secrets(&self) -> impl Iterator<Item = (&str, &Secret)> {
        self.profiles
            .values()
            .flat_map(|p| p.env.iter().map(|(name, value)| (name.as_str(), value)))
    }

    /// Validates `[agents.*]`, pushing a problem per bad field.
    pub fn from_file(
        agents: &BTreeMap<String, AgentFile>,
        allow_command: bool,
        problems: &mut Vec<Problem>,
    ) -> Profiles {
        let mut out = Profiles {
            profiles: BTreeMap::new(),
            providers: BTreeMap::new(),
            allow_command,
        };
        for (name, file) in agents {
            let field = format!("agents.{name}");
            if name == COMMAND_AGENT {
                problems.push(Problem {
                    field,
                    message: "the command agent has no profile; enable it with allow_command"
                        .into(),
                });
                continue;
            }
            let tag = match Tag::parse_name("agent", name) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(Problem {
                        field,
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            let argv = match file.argv.clone().or_else(|| builtin_argv(name)) {
                Some(argv) if !argv.is_empty() && !argv[0].is_empty() => argv,
                Some(_) => {
                    problems.push(Problem {
                        field: format!("{field}.argv"),
                        message: "must hold at least a program".into(),
                    });
                    continue;
                }
                None => {
                    problems.push(Problem {
                        field: format!("{field}.argv"),
                        message: "required: no built-in template for this agent".into(),
                    });
                    continue;
                }
            };
            for key in file.env.keys() {
                if key.is_empty() || key.contains('=') || key.contains('\0') {
                    problems.push(Problem {
                        field: format!("{field}.env"),
                        message: format!("{key:?} is not a variable name"),
                    });
                }
            }
            let any = file
                .provider_args
                .clone()
                .unwrap_or_else(|| ProviderArgs::builtin(name).any);
            if !any.is_empty() && !any.iter().any(|a| a.contains("{provider}")) {
                problems.push(Problem {
                    field: format!("{field}.provider_args"),
                    message: "must contain {provider} (or be [] for none)".into(),
                });
            }
            if file.enabled == Some(false) {
                continue;
            }
            let providers = ProviderArgs {
                named: file.providers.clone(),
                any,
            };
            out.insert_with_providers(
                AgentProfile {
                    name: tag,
                    argv,
                    models: file.models.clone(),
                    env: file.env.clone(),
                },
                providers,
            );
        }
        out
    }

    /// Adds (or replaces) an enabled profile; it passes providers as its
    /// agent's CLI does (`ProviderArgs::builtin`).
    pub fn insert(&mut self, profile: AgentProfile) {
        let providers = ProviderArgs::builtin(profile.name.as_str());
        self.insert_with_providers(profile, providers);
    }

    /// Adds (or replaces) an enabled profile with its own provider arguments.
    pub fn insert_with_providers(&mut self, profile: AgentProfile, providers: ProviderArgs) {
        let name = profile.name.as_str().to_string();
        self.providers.insert(name.clone(), providers);
        self.profiles.insert(name, profile);
    }

    /// Enables or disables the `command` agent.
    pub fn set_allow_command(&mut self, allow: bool) {
        self.allow_command = allow;
    }

    pub fn allow_command(&self) -> bool {
        self.allow_command
    }

    pub fn get(&self, name: &str) -> Option<&AgentProfile> {
        self.profiles.get(name)
    }

    /// The agents this worker advertises in its heartbeat.
    pub fn enabled(&self) -> TagSet {
        let mut set = TagSet::new();
        for p in self.profiles.values() {
            set.insert(p.name.clone());
        }
        if self.allow_command {
            if let Ok(t) = Tag::parse(COMMAND_AGENT) {
                set.insert(t);
            }
        }
        set
    }

    /// What to run for `task`, or why this worker refuses it.
    pub fn invocation(&self, task: &TaskSpec, session: &SessionId) -> Result<Invocation, Refusal> {
        self.invocation_with(task, session, &[])
    }

    /// The program a profile runs (its argv's first word), if enabled.
    pub fn program(&self, agent: &str) -> Option<&str> {
        self.profiles
            .get(agent)
            .and_then(|p| p.argv.first())
            .map(String::as_str)
    }

    /// [`Profiles::invocation`] with `controls` (the agent's own cost
    /// controls, set from the mode) after the provider and model arguments,
    /// before the prompt.
    pub fn invocation_with(
        &self,
        task: &TaskSpec,
        session: &SessionId,
        controls: &[String],
    ) -> Result<Invocation, Refusal> {
        let agent = task.agent.as_str();
        if agent == COMMAND_AGENT {
            if !self.allow_command {
                return Err(Refusal(
                    "agent command is not enabled on this worker (it was not started with --allow-command)".into(),
                ));
            }
            if task.command.first().is_none_or(|p| p.is_empty()) {
                return Err(Refusal("a command task needs an argv".into()));
            }
            return Ok(Invocation {
                agent: task.agent.clone(),
                argv: task.command.clone(),
                env: Vec::new(),
            });
        }
        let Some(profile) = self.profiles.get(agent) else {
            return Err(Refusal(format!(
                "agent {agent} is not enabled on this worker"
            )));
        };
        let mut vars = BTreeMap::new();
        vars.insert("prompt", task.prompt.clone().unwrap_or_default());
        vars.insert("model", task.model.clone().unwrap_or_default());
        vars.insert("provider", task.provider.clone().unwrap_or_default());
        vars.insert("session", session.to_string());
        vars.insert("task", task.id.to_string());
        let mut argv: Vec<String> = profile.argv.iter().map(|a| substitute(a, &vars)).collect();
        let uses = |var: &str| profile.argv.iter().any(|a| a.contains(var));
        // Extra arguments go before the prompt: provider, then model.
        let mut extra = Vec::new();
        if let Some(provider) = &task.provider {
            if provider.is_empty() {
                return Err(Refusal("the task names an empty provider".into()));
            }
            let builtin = ProviderArgs::builtin(agent);
            let providers = self.providers.get(agent).unwrap_or(&builtin);
            match providers.named.get(provider) {
                Some(args) => extra.extend(args.iter().cloned()),
                None if uses("{provider}") => {}
                None if !providers.any.is_empty() => {
                    extra.extend(providers.any.iter().map(|a| substitute(a, &vars)))
                }
                None => {
                    return Err(Refusal(format!(
                        "provider {provider} is not in agents.{agent}.providers on this worker, \
                         and agent {agent} has no provider_args to pass it"
                    )))
                }
            }
        }
        if let Some(model) = &task.model {
            match profile.models.get(model) {
                Some(args) => extra.extend(args.iter().cloned()),
                None if uses("{model}") => {}
                None => {
                    return Err(Refusal(format!(
                        "model {model} is not in agents.{agent}.models on this worker"
                    )))
                }
            }
        }
        extra.extend(controls.iter().cloned());
        let at = profile
            .argv
            .iter()
            .position(|a| a.contains("{prompt}"))
            .unwrap_or(argv.len());
        argv.splice(at..at, extra);
        Ok(Invocation {
            agent: task.agent.clone(),
            argv,
            env: profile
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }
}

/// Replaces each `{name}` of `vars` in one pass (a prompt that contains
/// `{model}` is left as written).
pub fn substitute(template: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after
            .find('}')
            .and_then(|close| vars.get(&after[..close]).map(|v| (close, v)))
        {
            Some((close, value)) => {
                out.push_str(value);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(agent: &str, prompt: &str, model: Option<&str>) -> TaskSpec {
        let mut t = TaskSpec::command("t", TagSet::new(), vec![]);
        t.agent = Tag::parse(agent).unwrap();
        t.prompt = Some(prompt.into());
        t.model = model.map(String::from);
        t
    }

    fn profiles(file: &str, allow_command: bool) -> Profiles {
        let agents: BTreeMap<String, AgentFile> = toml::from_str(file).unwrap();
        let mut problems = Vec::new();
        let p = Profiles::from_file(&agents, allow_command, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        p
    }

    #[test]
    fn pi_template_with_model_args() {
        let p = profiles(
            r#"
[pi]
models = { sonnet = ["--model", "claude-sonnet-4"] }
env = { ANTHROPIC_API_KEY = "sk-1" }
"#,
            false,
        );
        let inv = p
            .invocation(
                &task("pi", "fix {model} bug", Some("sonnet")),
                &SessionId::new(),
            )
            .unwrap();
        assert_eq!(
            inv.argv,
            [
                "pi",
                "--mode",
                "json",
                "--model",
                "claude-sonnet-4",
                "fix {model} bug"
            ]
        );
        assert_eq!(inv.env[0].0, "ANTHROPIC_API_KEY");
        assert_eq!(inv.env[0].1.expose(), "sk-1");
        assert!(!format!("{inv:?}").contains("sk-1"));
    }

    #[test]
    fn placeholders_are_substituted() {
        let p = profiles(
            r#"x = { argv = ["x", "--m={model}", "--s", "{session}", "{prompt}"] }"#,
            false,
        );
        let s = SessionId::new();
        let inv = p.invocation(&task("x", "hi", Some("big")), &s).unwrap();
        assert_eq!(
            inv.argv,
            vec![
                "x".into(),
                "--m=big".into(),
                "--s".into(),
                s.to_string(),
                "hi".into()
            ]
        );
    }

    #[test]
    fn refusals_name_the_reason() {
        let p = profiles(
            r#"pi = { enabled = true }
claude = { enabled = false }"#,
            false,
        );
        let e = p
            .invocation(&task("claude", "x", None), &SessionId::new())
            .unwrap_err();
        assert!(e.0.contains("claude is not enabled"));
        let e = p
            .invocation(&task("pi", "x", Some("opus")), &SessionId::new())
            .unwrap_err();
        assert!(e.0.contains("model opus"));
        let cmd = TaskSpec::command("t", TagSet::new(), vec!["/bin/true".into()]);
        let e = p.invocation(&cmd, &SessionId::new()).unwrap_err();
        assert!(e.0.contains("--allow-command"));
        assert_eq!(
            p.enabled().joined(),
            TagSet::parse_lists(["pi"]).unwrap().joined()
        );
    }

    #[test]
    fn command_needs_allow_command() {
        let p = profiles("", true);
        let cmd = TaskSpec::command("t", TagSet::new(), vec!["/bin/true".into()]);
        assert_eq!(
            p.invocation(&cmd, &SessionId::new()).unwrap().argv,
            ["/bin/true"]
        );
        assert!(p.enabled().iter().any(|t| t.as_str() == "command"));
    }

    fn with_provider(agent: &str, provider: &str, model: Option<&str>) -> TaskSpec {
        let mut t = task(agent, "go", model);
        t.provider = Some(provider.into());
        t
    }

    // `--provider` was silently dropped: no built-in template used
    // `{provider}`, so `pi` ran on its default provider.
    #[test]
    fn pi_passes_the_provider_with_its_flag() {
        let p = profiles(
            r#"pi = { models = { sonnet = ["--model", "claude-sonnet-4"] } }"#,
            false,
        );
        let t = with_provider("pi", "openrouter", Some("sonnet"));
        let inv = p.invocation(&t, &SessionId::new()).unwrap();
        assert_eq!(
            inv.argv,
            [
                "pi",
                "--mode",
                "json",
                "--provider",
                "openrouter",
                "--model",
                "claude-sonnet-4",
                "go"
            ]
        );
        // A profile built in code (spawn-local, tests) takes the same.
        let mut p = Profiles::default();
        p.insert(AgentProfile {
            name: Tag::parse("pi").unwrap(),
            argv: builtin_argv("pi").unwrap(),
            models: BTreeMap::new(),
            env: BTreeMap::new(),
        });
        let inv = p.invocation(&with_provider("pi", "google", None), &SessionId::new());
        assert_eq!(inv.unwrap().argv[3..], ["--provider", "google", "go"]);
    }

    #[test]
    fn providers_map_to_arguments_or_are_refused_by_name() {
        let p = profiles(
            r#"
codex = { providers = { ollama = ["-c", "model_provider=ollama"] } }
claude = {}
pi = { provider_args = [], providers = { local = ["--provider", "ollama"] } }
x = { argv = ["x", "--p={provider}", "{prompt}"] }
"#,
            false,
        );
        let s = SessionId::new();
        let argv = |agent, provider| p.invocation(&with_provider(agent, provider, None), &s);
        assert_eq!(
            argv("codex", "ollama").unwrap().argv,
            [
                "codex",
                "exec",
                "--json",
                "-c",
                "model_provider=ollama",
                "go"
            ]
        );
        assert_eq!(argv("x", "any").unwrap().argv, ["x", "--p=any", "go"]);
        assert_eq!(
            argv("pi", "local").unwrap().argv[3..],
            ["--provider", "ollama", "go"]
        );
        for (agent, provider) in [("codex", "openai"), ("claude", "bedrock"), ("pi", "google")] {
            let e = argv(agent, provider).unwrap_err();
            assert!(
                e.0.contains(&format!(
                    "provider {provider} is not in agents.{agent}.providers"
                )),
                "{e}"
            );
        }
        assert!(argv("pi", "").unwrap_err().0.contains("empty provider"));
    }

    #[test]
    fn provider_args_must_use_the_provider() {
        let agents: BTreeMap<String, AgentFile> =
            toml::from_str(r#"pi = { provider_args = ["--openai"] }"#).unwrap();
        let mut problems = Vec::new();
        Profiles::from_file(&agents, false, &mut problems);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].field, "agents.pi.provider_args");
    }
}
