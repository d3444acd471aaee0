//! What both daemons' TOML files share: the [`Problem`] a check reports,
//! parsing one key (or one table, key by key) so that one bad key never
//! hides the others, and the `[nats]` table.

use std::fmt;
use std::path::PathBuf;

use broker::connect::ConnectArgs;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The offending field (`db`, `nats.nkey`, `limits.idle_secs`, ...).
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Problems as `check-config` lists them: one indented line each.
pub fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `value` as a `T`, or a problem named `name` (and `None`).
pub fn field<T: DeserializeOwned>(
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

/// `value` as a table, or a problem named `name` (and an empty table).
pub fn table(name: &str, value: toml::Value, problems: &mut Vec<Problem>) -> toml::Table {
    match value {
        toml::Value::Table(t) => t,
        other => {
            let message = format!("must be a table, not a {}", other.type_str());
            problems.push(Problem::new(name, message));
            toml::Table::new()
        }
    }
}

/// A table whose keys are each checked alone (a problem per bad key, named
/// `table.key`); the good keys are kept.
pub fn typed_table<T: DeserializeOwned + Default>(
    name: &str,
    value: toml::Value,
    problems: &mut Vec<Problem>,
) -> T {
    let good: toml::Table = table(name, value, problems)
        .into_iter()
        .filter(|(key, value)| {
            let alone = toml::Table::from_iter([(key.clone(), value.clone())]);
            field::<T>(&format!("{name}.{key}"), alone.into(), problems).is_some()
        })
        .collect();
    field(name, good.into(), problems).unwrap_or_default()
}

/// The `[nats]` table of both daemons' files.
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

impl NatsFile {
    /// Fills what flags and environment left unset in `connect` (the URL
    /// list is each daemon's own rule).
    pub fn fill_in(&self, connect: &mut ConnectArgs) {
        let or = |given: &mut Option<PathBuf>, file: &Option<PathBuf>| {
            if given.is_none() {
                given.clone_from(file);
            }
        };
        or(&mut connect.creds, &self.creds);
        or(&mut connect.nkey, &self.nkey);
        or(&mut connect.tls_ca, &self.tls_ca);
        or(&mut connect.tls_cert, &self.tls_cert);
        or(&mut connect.tls_key, &self.tls_key);
        if connect.inbox_prefix.is_none() {
            connect.inbox_prefix.clone_from(&self.inbox_prefix);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct T {
        a: Option<u32>,
        b: Option<String>,
    }

    #[test]
    fn a_table_keeps_its_good_keys_and_names_each_bad_one() {
        let value: toml::Value = toml::from_str::<toml::Table>("a = \"x\"\nb = \"ok\"\nc = 1")
            .unwrap()
            .into();
        let mut problems = Vec::new();
        let t: T = typed_table("t", value, &mut problems);
        assert_eq!(
            t,
            T {
                a: None,
                b: Some("ok".into())
            }
        );
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["t.a", "t.c"]);
    }

    #[test]
    fn the_file_fills_only_what_flags_left_unset() {
        let file = NatsFile {
            nkey: Some("/etc/colibri/debby.nk".into()),
            creds: Some("/etc/colibri/x.creds".into()),
            inbox_prefix: Some("_INBOX.debby".into()),
            ..Default::default()
        };
        let mut connect = ConnectArgs {
            creds: Some("/flag.creds".into()),
            ..Default::default()
        };
        file.fill_in(&mut connect);
        assert_eq!(connect.creds, Some("/flag.creds".into()));
        assert_eq!(connect.nkey, Some("/etc/colibri/debby.nk".into()));
        assert_eq!(connect.inbox_prefix.as_deref(), Some("_INBOX.debby"));
    }
}
