//! `scheduler.toml` as written, parsed key by key (tables too) so that one
//! bad key does not hide the others: each problem names its field, the way
//! the worker's configuration does.

use std::path::PathBuf;

use daemon::config_file::{field, typed_table, NatsFile, Problem};
use daemon::logging::LogConfig;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamsFile {
    pub replicas: Option<usize>,
    /// Size limits in MiB (`broker::provision::ProvisionConfig`); each is
    /// reserved on the store disk of every server holding a replica.
    pub intake_mib: Option<i64>,
    pub work_mib: Option<i64>,
    pub events_mib: Option<i64>,
    pub sessions_mib: Option<i64>,
    pub transcripts_mib: Option<i64>,
}

/// scheduler.toml: every key optional.
#[derive(Debug, Clone, Default)]
pub struct SchedulerFile {
    pub db: Option<PathBuf>,
    /// `db` is in the file (valid or not): it is not missing.
    pub db_given: bool,
    /// Hosts registry written by `colibri admin` (see `--hosts`).
    pub hosts: Option<PathBuf>,
    pub nats: NatsFile,
    pub log: LogConfig,
    pub streams: StreamsFile,
}

pub fn parse(text: &str, problems: &mut Vec<Problem>) -> SchedulerFile {
    let mut file = SchedulerFile::default();
    let root: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem::new("(file)", e.to_string().trim()));
            // Nothing can be said of any key, `db` included.
            file.db_given = true;
            return file;
        }
    };
    for (key, value) in root {
        let p = &mut *problems;
        match key.as_str() {
            "db" => {
                file.db_given = true;
                file.db = field(&key, value, p);
            }
            "hosts" => file.hosts = field(&key, value, p),
            "nats" => file.nats = typed_table(&key, value, p),
            "log" => file.log = typed_table(&key, value, p),
            "streams" => file.streams = typed_table(&key, value, p),
            _ => p.push(Problem::new(key, "unknown key")),
        }
    }
    file
}
