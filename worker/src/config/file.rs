//! `worker.toml` as written, parsed key by key (the `[nats]`, `[log]` and
//! `[limits]` tables too) so that one bad key does not hide the others; the
//! resolution in the parent module then applies env and flags over it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use daemon::config_file::{field, table, typed_table, NatsFile, Problem};
use daemon::logging::LogConfig;

use super::{Confinement, KeepWorkdirs, Network};
use crate::profiles::AgentFile;

/// `worker.toml` as written: every key optional, each parsed on its own so
/// that one bad key does not hide the others.
#[derive(Debug, Default)]
pub(super) struct FileConfig {
    pub(super) worker_id: Option<String>,
    pub(super) capabilities: Option<Vec<String>>,
    pub(super) slots: Option<i64>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) allow_command: Option<bool>,
    pub(super) confinement: Option<Confinement>,
    pub(super) network: Option<Network>,
    pub(super) agent_user: Option<String>,
    pub(super) agent_paths: Option<Vec<PathBuf>>,
    pub(super) keep_workdirs: Option<KeepWorkdirs>,
    pub(super) limits: LimitsFile,
    pub(super) nats: NatsFile,
    pub(super) log: LogConfig,
    pub(super) agents: BTreeMap<String, AgentFile>,
}

#[derive(Debug, Default)]
pub(super) struct LimitsFile {
    pub(super) max_run_secs: Option<i64>,
    pub(super) idle_secs: Option<i64>,
    pub(super) stall_secs: Option<i64>,
    pub(super) kill_grace_secs: Option<i64>,
    pub(super) spawn_retries: Option<i64>,
    pub(super) shutdown_grace_secs: Option<i64>,
    pub(super) memory_mib: Option<i64>,
    pub(super) pids: Option<i64>,
    pub(super) tmp_mib: Option<i64>,
    pub(super) workdir_mib: Option<i64>,
}

pub(super) fn parse_file(text: &str, problems: &mut Vec<Problem>) -> FileConfig {
    let root: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem::new("(file)", e.to_string().trim().to_string()));
            return FileConfig::default();
        }
    };
    let mut file = FileConfig::default();
    for (key, value) in root {
        let p = &mut *problems;
        match key.as_str() {
            "worker_id" => file.worker_id = field(&key, value, p),
            "capabilities" => file.capabilities = field(&key, value, p),
            "slots" => file.slots = field(&key, value, p),
            "state_dir" => file.state_dir = field(&key, value, p),
            "allow_command" => file.allow_command = field(&key, value, p),
            "confinement" => file.confinement = field(&key, value, p),
            "network" => file.network = field(&key, value, p),
            "agent_user" => file.agent_user = field(&key, value, p),
            "agent_paths" => file.agent_paths = field(&key, value, p),
            "keep_workdirs" => file.keep_workdirs = field(&key, value, p),
            "nats" => file.nats = typed_table(&key, value, p),
            "log" => file.log = typed_table(&key, value, p),
            "limits" => {
                for (k, v) in table("limits", value, p) {
                    let name = format!("limits.{k}");
                    let slot = match k.as_str() {
                        "max_run_secs" => &mut file.limits.max_run_secs,
                        "idle_secs" => &mut file.limits.idle_secs,
                        "stall_secs" => &mut file.limits.stall_secs,
                        "kill_grace_secs" => &mut file.limits.kill_grace_secs,
                        "spawn_retries" => &mut file.limits.spawn_retries,
                        "shutdown_grace_secs" => &mut file.limits.shutdown_grace_secs,
                        "memory_mib" => &mut file.limits.memory_mib,
                        "pids" => &mut file.limits.pids,
                        "tmp_mib" => &mut file.limits.tmp_mib,
                        "workdir_mib" => &mut file.limits.workdir_mib,
                        _ => {
                            p.push(Problem::new(name, "unknown key"));
                            continue;
                        }
                    };
                    *slot = field(&name, v, p);
                }
            }
            "agents" => {
                for (name, v) in table("agents", value, p) {
                    let path = format!("agents.{name}");
                    if let Some(agent) = field::<AgentFile>(&path, v, p) {
                        file.agents.insert(name, agent);
                    }
                }
            }
            _ => problems.push(Problem::new(key, "unknown key")),
        }
    }
    file
}
