//! Logging set-up shared by the daemons: level filter, text or JSON, stderr
//! or a file that is reopened on SIGHUP (for newsyslog and logrotate).
//!
//! A SIGHUP handler is installed whatever the destination: `service ...
//! reload`, systemd's `ExecReload` and newsyslog send SIGHUP to daemons that
//! log to stderr too, and SIGHUP's default action would kill them.

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tracing_subscriber::{fmt::MakeWriter, EnvFilter};

/// Output format of the logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logging options, from flags, env or the config file's `[log]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `RUST_LOG`-style filter; `info` when absent.
    #[serde(default)]
    pub level: Option<String>,
    #[serde(default)]
    pub format: LogFormat,
    /// Log file; stderr when absent.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// A log file that can be reopened in place.
#[derive(Clone)]
struct ReopenableFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl ReopenableFile {
    fn open(path: &Path) -> io::Result<Self> {
        Ok(ReopenableFile {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(open_append(path)?)),
        })
    }

    fn reopen(&self) -> io::Result<()> {
        let fresh = open_append(&self.path)?;
        if let Ok(mut guard) = self.file.lock() {
            *guard = fresh;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

struct FileWriter(Arc<Mutex<File>>);

impl Write for FileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.0.lock() {
            Ok(mut f) => f.write(buf),
            Err(_) => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.0.lock() {
            Ok(mut f) => f.flush(),
            Err(_) => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for ReopenableFile {
    type Writer = FileWriter;
    fn make_writer(&'a self) -> Self::Writer {
        FileWriter(self.file.clone())
    }
}

/// Installs the global subscriber, and (inside the current tokio runtime) a
/// SIGHUP handler: with a log file it reopens the file, without one it only
/// logs that there is nothing to reopen. Either way SIGHUP no longer kills
/// the process.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = match &config.level {
        Some(level) => EnvFilter::try_new(level)
            .map_err(|e| anyhow::anyhow!("log.level: {level:?} is not a valid filter: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let file = match &config.file {
        None => {
            // Colours only on a terminal: under daemon(8) -o or a journal,
            // escape codes would end up in the log.
            let ansi = io::stderr().is_terminal();
            match config.format {
                LogFormat::Text => builder.with_ansi(ansi).with_writer(io::stderr).try_init(),
                LogFormat::Json => builder.json().with_writer(io::stderr).try_init(),
            }
            .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
            None
        }
        Some(path) => {
            let file = ReopenableFile::open(path)
                .map_err(|e| anyhow::anyhow!("log.file: cannot open {}: {e}", path.display()))?;
            match config.format {
                LogFormat::Text => builder
                    .with_ansi(false)
                    .with_writer(file.clone())
                    .try_init(),
                LogFormat::Json => builder.json().with_writer(file.clone()).try_init(),
            }
            .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
            Some(file)
        }
    };
    handle_sighup(file);
    Ok(())
}

/// Installs the SIGHUP handler before returning (so no SIGHUP after `init`
/// can kill the process), then serves it from a task. Outside a runtime, or
/// if the handler cannot be installed, logs a warning and leaves SIGHUP alone.
fn handle_sighup(file: Option<ReopenableFile>) {
    use tokio::signal::unix::{signal, SignalKind};
    if tokio::runtime::Handle::try_current().is_err() {
        tracing::warn!("no tokio runtime: SIGHUP keeps its default action");
        return;
    }
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(error) => {
            tracing::warn!(%error, "cannot install the SIGHUP handler");
            return;
        }
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match &file {
                Some(file) => match file.reopen() {
                    Ok(()) => tracing::info!(path = %file.path.display(), "log file reopened"),
                    Err(error) => eprintln!("reopening {}: {error}", file.path.display()),
                },
                None => tracing::info!(
                    signal = "SIGHUP",
                    "no log file configured: nothing to reopen"
                ),
            }
        }
    });
}
