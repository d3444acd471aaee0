//! `scheduler.toml` as written, parsed key by key (tables too) so that one
//! bad key does not hide the others: each problem names its field, the way
//! the worker's configuration does.

use std::path::PathBuf;

use daemon::logging::LogConfig;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::Problem;

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

fn field<T: DeserializeOwned>(
    name: &str,
    value: toml::Value,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match T::deserialize(value) {
        Ok(v) => Some(v),
        Err(e) => {
            // The first line: the field is named already (toml adds "in `key`").
            let message = e.to_string();
            let message = message.lines().next().unwrap_or_default().trim();
            problems.push(Problem::new(name, message));
            None
        }
    }
}

/// A table whose keys are each checked alone (a problem per bad key, named
/// `table.key`); the good keys are kept.
fn typed_table<T: DeserializeOwned + Default>(
    name: &str,
    value: toml::Value,
    problems: &mut Vec<Problem>,
) -> T {
    let table = match value {
        toml::Value::Table(t) => t,
        other => {
            let message = format!("must be a table, not a {}", other.type_str());
            problems.push(Problem::new(name, message));
            return T::default();
        }
    };
    let good: toml::Table = table
        .into_iter()
        .filter(|(key, value)| {
            let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
            field::<T>(&format!("{name}.{key}"), alone.into(), problems).is_some()
        })
        .collect();
    field(name, good.into(), problems).unwrap_or_default()
}
