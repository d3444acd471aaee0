//! Logging set-up shared by the daemons: level filter, text or JSON, stderr
//! or a file that is reopened on SIGHUP (for newsyslog and logrotate).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
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

/// Installs the global subscriber. With a log file, spawns (inside the
/// current tokio runtime) a task that reopens it on every SIGHUP.
pub fn init(config: &LogConfig) -> anyhow::Result<()> {
    let filter = match &config.level {
        Some(level) => EnvFilter::try_new(level)
            .map_err(|e| anyhow::anyhow!("log.level: {level:?} is not a valid filter: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match &config.file {
        None => match config.format {
            LogFormat::Text => builder.with_writer(io::stderr).try_init(),
            LogFormat::Json => builder.json().with_writer(io::stderr).try_init(),
        }
        .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?,
        Some(path) => {
            let file = ReopenableFile::open(path)
                .map_err(|e| anyhow::anyhow!("log.file: cannot open {}: {e}", path.display()))?;
            spawn_reopen_on_sighup(file.clone());
            match config.format {
                LogFormat::Text => builder.with_ansi(false).with_writer(file).try_init(),
                LogFormat::Json => builder.json().with_writer(file).try_init(),
            }
            .map_err(|e| anyhow::anyhow!("installing the logger: {e}"))?;
        }
    }
    Ok(())
}

fn spawn_reopen_on_sighup(file: ReopenableFile) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match file.reopen() {
                Ok(()) => tracing::info!(path = %file.path.display(), "log file reopened"),
                Err(error) => eprintln!("reopening {}: {error}", file.path.display()),
            }
        }
    });
}
