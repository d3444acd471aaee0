//! The scheduler's configuration: TOML file, then `COLIBRI_*` env, then
//! flags (see docs/CONFIG.md). Everything is parsed and checked here, before
//! the runtime starts; `check-config` prints every problem with its field.

use std::path::PathBuf;

use broker::connect::ConnectArgs;
use broker::provision::{ProvisionConfig, MIB};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use daemon::logging::{LogConfig, LogFormat};

pub use daemon::config_checks as checks;
mod file;

use daemon::config_file::render;
pub use daemon::config_file::{NatsFile, Problem};
pub use file::{SchedulerFile, StreamsFile};

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
    /// The file the configuration was read from: `--config`, else the
    /// platform's default if it exists ([`checks::default_config_path`]).
    pub config_file: Option<PathBuf>,
}

/// Every problem found, each naming its field (the worker's format).
#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in the configuration:\n{}", .problems.len(), render(.problems))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

fn from_file(value_source: Option<ValueSource>) -> bool {
    matches!(value_source, None | Some(ValueSource::DefaultValue))
}

impl SchedulerConfig {
    /// Resolves flags (and env) over the config file: `--config`, else the
    /// platform's default file if it exists.
    pub fn resolve(
        args: &SchedulerArgs,
        matches: &ArgMatches,
    ) -> Result<SchedulerConfig, ConfigError> {
        let default = checks::default_config_path("scheduler");
        Self::resolve_with_default(args, matches, &default)
    }

    /// [`SchedulerConfig::resolve`] with the default config path given.
    pub fn resolve_with_default(
        args: &SchedulerArgs,
        matches: &ArgMatches,
        default_config: &std::path::Path,
    ) -> Result<SchedulerConfig, ConfigError> {
        let mut problems = Vec::new();
        let config_file = checks::config_path(args.config.as_deref(), default_config);
        let file = match &config_file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => file::parse(&text, &mut problems),
                Err(e) => {
                    let message = format!("cannot read {}: {e}", path.display());
                    problems.push(Problem::new("config", message));
                    SchedulerFile {
                        db_given: true,
                        ..SchedulerFile::default()
                    }
                }
            },
            None => SchedulerFile::default(),
        };
        let db = args.db.clone().or(file.db.clone());
        if db.is_none() && !file.db_given {
            problems.push(Problem::new(
                "db",
                "required (--db, COLIBRI_DB or `db` in the config file)",
            ));
        }
        let mut connect = args.connect.clone();
        if from_file(matches.value_source("nats_url")) && !file.nats.url.is_empty() {
            connect.nats_url = file.nats.url.clone();
        }
        file.nats.fill_in(&mut connect);
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
                let message = format!("{level:?} is not a valid filter");
                problems.push(Problem::new("log.level", message));
            }
        }
        if let Some(Err(message)) = log.file.as_deref().map(checks::appendable_file) {
            problems.push(Problem::new("log.file", message));
        }
        let replicas = args.replicas.or(file.streams.replicas).unwrap_or(1);
        if !(1..=5).contains(&replicas) {
            let message = format!("{replicas} must be between 1 and 5");
            problems.push(Problem::new("streams.replicas", message));
        }
        let mut provision = ProvisionConfig {
            replicas,
            ..ProvisionConfig::default()
        };
        let streams = &file.streams;
        for (setting, value, limit) in [
            (
                "intake_mib",
                streams.intake_mib,
                &mut provision.intake_max_bytes,
            ),
            ("work_mib", streams.work_mib, &mut provision.work_max_bytes),
            (
                "events_mib",
                streams.events_mib,
                &mut provision.events_max_bytes,
            ),
            (
                "sessions_mib",
                streams.sessions_mib,
                &mut provision.sessions_max_bytes,
            ),
            (
                "transcripts_mib",
                streams.transcripts_mib,
                &mut provision.transcripts_max_bytes,
            ),
        ] {
            match value {
                None => {}
                Some(mib) if (1..=1 << 30).contains(&mib) => *limit = mib * MIB,
                Some(mib) => {
                    let message = format!("{mib} must be a size in MiB, at least 1");
                    problems.push(Problem::new(format!("streams.{setting}"), message));
                }
            }
        }
        let hosts = match args.hosts.clone().or(file.hosts.clone()) {
            Some(path) => match broker::identity::Registry::load(&path) {
                Ok(reg) => Some(reg),
                Err(e) => {
                    problems.push(Problem::new("hosts", e.to_string()));
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
            provision,
            hosts,
            config_file,
        })
    }
}

/// Checks connection settings shared by every binary (see [`checks`]).
pub fn check_connect(connect: &ConnectArgs, problems: &mut Vec<Problem>) {
    for (field, message) in checks::check_connect(connect) {
        problems.push(Problem::new(field, message));
    }
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
        let no_default = std::path::Path::new("/nonexistent/colibri/scheduler.toml");
        SchedulerConfig::resolve_with_default(&cli.args, &matches, no_default)
    }

    fn fields(e: &ConfigError) -> Vec<&str> {
        e.problems.iter().map(|p| p.field.as_str()).collect()
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
    fn stream_limits_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        let text = "db = \"/tmp/a.db\"\n[streams]\nsessions_mib = 300\nintake_mib = 64\n";
        std::fs::write(&path, text).unwrap();
        let c = resolve(&["x", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(c.provision.sessions_max_bytes, 300 * MIB);
        assert_eq!(c.provision.intake_max_bytes, 64 * MIB);
        assert_eq!(
            c.provision.events_max_bytes,
            ProvisionConfig::default().events_max_bytes
        );
        std::fs::write(&path, "db = \"/tmp/a.db\"\n[streams]\nwork_mib = 0\n").unwrap();
        let e = resolve(&["x", "--config", path.to_str().unwrap()]).unwrap_err();
        assert_eq!(fields(&e), ["streams.work_mib"], "{e}");
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
        assert_eq!(fields(&e), ["bogus", "db"], "{e}");
    }

    // Regression (issue 6): the whole file was parsed with typed serde, so
    // check-config stopped at the first bad key, then fell back to defaults
    // and added a false "db: required" although the file set db.
    #[test]
    fn every_bad_key_reported_without_a_false_db_required() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        let text = "db = \"/tmp/a.db\"\nbogus = 1\n\
                    [nats]\nurl = 3\nnkey = \"/nonexistent.nk\"\ncolour = \"red\"\n\
                    [log]\nformat = \"xml\"\nfile = \"/nonexistent/dir/s.log\"\n\
                    [streams]\nreplicas = \"three\"\n";
        std::fs::write(&path, text).unwrap();
        let e = resolve(&["x", "--config", path.to_str().unwrap()]).unwrap_err();
        let mut f = fields(&e);
        f.sort_unstable();
        assert_eq!(
            f,
            [
                "bogus",
                "log.file",
                "log.format",
                "nats.colour",
                "nats.nkey",
                "nats.url",
                "streams.replicas"
            ],
            "{e}"
        );
        std::fs::write(&path, "db = 3\n").unwrap();
        let e = resolve(&["x", "--config", path.to_str().unwrap()]).unwrap_err();
        assert_eq!(fields(&e), ["db"], "{e}");
        assert!(!e.to_string().contains("required"), "{e}");
    }

    #[test]
    fn log_file_flag_must_be_appendable() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("s.log");
        let ok = resolve(&[
            "x",
            "--db",
            "/tmp/a.db",
            "--log-file",
            log.to_str().unwrap(),
        ]);
        assert_eq!(ok.unwrap().log.file, Some(log));
        let e = resolve(&["x", "--db", "/tmp/a.db", "--log-file", "/nonexistent/s.log"]);
        assert_eq!(fields(&e.unwrap_err()), ["log.file"]);
    }

    #[test]
    fn platform_default_config_read_when_present() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("scheduler.toml");
        let matches = Cli::command().try_get_matches_from(["x"]).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let e = SchedulerConfig::resolve_with_default(&cli.args, &matches, &default);
        assert_eq!(fields(&e.unwrap_err()), ["db"]);
        std::fs::write(&default, "db = \"/tmp/d.db\"\n").unwrap();
        let c = SchedulerConfig::resolve_with_default(&cli.args, &matches, &default).unwrap();
        assert_eq!(c.db, PathBuf::from("/tmp/d.db"));
        assert_eq!(c.config_file, Some(default));
    }
}
