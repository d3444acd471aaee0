//! The scheduler's configuration: TOML file, then `COLIBRI_*` env, then
//! flags (see docs/CONFIG.md). Everything is parsed and checked here, before
//! the runtime starts; `check-config` prints every problem with its field.

use std::path::{Path, PathBuf};

use broker::connect::ConnectArgs;
use broker::provision::ProvisionConfig;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use daemon::logging::{LogConfig, LogFormat};
use serde::Deserialize;

/// `[nats]` table, shared in shape with the worker's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsFile {
    #[serde(default)]
    pub url: Vec<String>,
    pub creds: Option<PathBuf>,
    pub nkey: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub inbox_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsFile {
    pub replicas: Option<usize>,
}

/// scheduler.toml
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerFile {
    pub db: Option<PathBuf>,
    /// Hosts registry written by `colibri admin` (see `--hosts`).
    pub hosts: Option<PathBuf>,
    #[serde(default)]
    pub nats: NatsFile,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub streams: StreamsFile,
}

/// Flags of `colibri-scheduler`.
#[derive(Debug, Clone, Args)]
pub struct SchedulerArgs {
    /// Config file (TOML).
    #[arg(long, env = "COLIBRI_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// SQLite board path.
    #[arg(long, env = "COLIBRI_DB", global = true)]
    pub db: Option<PathBuf>,
    /// Log format.
    #[arg(
        long = "log-format",
        env = "COLIBRI_LOG_FORMAT",
        value_enum,
        global = true
    )]
    pub log_format: Option<LogFormat>,
    /// Log file (reopened on SIGHUP); stderr when absent.
    #[arg(long = "log-file", env = "COLIBRI_LOG_FILE", global = true)]
    pub log_file: Option<PathBuf>,
    /// Hosts registry (`hosts.json` from `colibri admin`): heartbeats from a
    /// host not in it, or advertising tags it may not, are refused.
    #[arg(long, env = "COLIBRI_HOSTS", global = true)]
    pub hosts: Option<PathBuf>,
    /// Stream replicas (1 single server, 3 cluster).
    #[arg(long, env = "COLIBRI_REPLICAS", global = true)]
    pub replicas: Option<usize>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub db: PathBuf,
    pub connect: ConnectArgs,
    pub log: LogConfig,
    pub provision: ProvisionConfig,
    pub hosts: Option<broker::identity::Registry>,
}

/// Every problem found, each naming its field.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

fn from_file(value_source: Option<ValueSource>) -> bool {
    matches!(value_source, None | Some(ValueSource::DefaultValue))
}

impl SchedulerConfig {
    /// Resolves flags (and env) over the config file.
    pub fn resolve(
        args: &SchedulerArgs,
        matches: &ArgMatches,
    ) -> Result<SchedulerConfig, ConfigError> {
        let mut problems = Vec::new();
        let file = match &args.config {
            Some(path) => match load_file(path) {
                Ok(f) => f,
                Err(e) => {
                    problems.push(e);
                    SchedulerFile::default()
                }
            },
            None => SchedulerFile::default(),
        };
        let db = args.db.clone().or(file.db.clone());
        if db.is_none() {
            problems.push("db: required (--db, COLIBRI_DB or `db` in the config file)".to_string());
        }
        let mut connect = args.connect.clone();
        if from_file(matches.value_source("nats_url")) && !file.nats.url.is_empty() {
            connect.nats_url = file.nats.url.clone();
        }
        connect.creds = connect.creds.or(file.nats.creds.clone());
        connect.nkey = connect.nkey.or(file.nats.nkey.clone());
        connect.tls_ca = connect.tls_ca.or(file.nats.tls_ca.clone());
        connect.tls_cert = connect.tls_cert.or(file.nats.tls_cert.clone());
        connect.tls_key = connect.tls_key.or(file.nats.tls_key.clone());
        connect.inbox_prefix = connect.inbox_prefix.or(file.nats.inbox_prefix.clone());
        check_connect(&connect, &mut problems);
        let mut log = file.log.clone();
        if let Some(f) = args.log_format {
            log.format = f;
        }
        if let Some(path) = &args.log_file {
            log.file = Some(path.clone());
        }
        if let Some(level) = &log.level {
            if tracing_subscriber::EnvFilter::try_new(level).is_err() {
                problems.push(format!("log.level: {level:?} is not a valid filter"));
            }
        }
        let replicas = args.replicas.or(file.streams.replicas).unwrap_or(1);
        if !(1..=5).contains(&replicas) {
            problems.push(format!(
                "streams.replicas: {replicas} must be between 1 and 5"
            ));
        }
        let hosts = match args.hosts.clone().or(file.hosts.clone()) {
            Some(path) => match broker::identity::Registry::load(&path) {
                Ok(reg) => Some(reg),
                Err(e) => {
                    problems.push(format!("hosts: {e}"));
                    None
                }
            },
            None => None,
        };
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(SchedulerConfig {
            db: db.unwrap_or_default(),
            connect,
            log,
            provision: ProvisionConfig {
                replicas,
                ..ProvisionConfig::default()
            },
            hosts,
        })
    }
}

/// Checks connection settings shared by every binary.
pub fn check_connect(connect: &ConnectArgs, problems: &mut Vec<String>) {
    for url in &connect.nats_url {
        if url.trim().parse::<async_nats::ServerAddr>().is_err() {
            problems.push(format!(
                "nats.url: {url:?} is not a server URL (nats://host:port)"
            ));
        }
    }
    for (field, path) in [
        ("nats.creds", &connect.creds),
        ("nats.nkey", &connect.nkey),
        ("nats.tls_ca", &connect.tls_ca),
        ("nats.tls_cert", &connect.tls_cert),
        ("nats.tls_key", &connect.tls_key),
    ] {
        if let Some(p) = path {
            if !p.is_file() {
                problems.push(format!(
                    "{field}: {} does not exist or is not a file",
                    p.display()
                ));
            }
        }
    }
}

fn load_file(path: &Path) -> Result<SchedulerFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("config: cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("config: {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SchedulerArgs,
    }

    fn resolve(argv: &[&str]) -> Result<SchedulerConfig, ConfigError> {
        let matches = Cli::command().try_get_matches_from(argv).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        SchedulerConfig::resolve(&cli.args, &matches)
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "db = \"/tmp/a.db\"\n[nats]\nurl = [\"nats://10.0.0.1:4222\"]\n[streams]\nreplicas = 3\n").unwrap();
        let c = resolve(&["x", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.db, PathBuf::from("/tmp/a.db"));
        assert_eq!(c.connect.nats_url, vec!["nats://10.0.0.1:4222"]);
        assert_eq!(c.provision.replicas, 3);
        let c = resolve(&[
            "x",
            "--config",
            path.to_str().unwrap(),
            "--db",
            "/tmp/b.db",
            "--nats-url",
            "nats://127.0.0.1:1",
        ])
        .unwrap();
        assert_eq!(c.db, PathBuf::from("/tmp/b.db"));
        assert_eq!(c.connect.nats_url, vec!["nats://127.0.0.1:1"]);
    }

    #[test]
    fn every_problem_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "[streams]\nreplicas = 9\n[nats]\nnkey = \"/nonexistent\"\n",
        )
        .unwrap();
        let e = resolve(&["x", "--config", path.to_str().unwrap()]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("db: required"), "{text}");
        assert!(text.contains("streams.replicas"), "{text}");
        assert!(text.contains("nats.nkey"), "{text}");
        std::fs::write(&path, "bogus = 1\n").unwrap();
        let e = resolve(&["x", "--config", path.to_str().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
