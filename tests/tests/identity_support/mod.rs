//! Fixtures for the least-privilege tests: identities made with the real
//! `colibri admin` CLI, a nats-server started with the authorization block
//! it printed, connections that report every server error (permission
//! violations arrive as `-ERR` events, not as failed calls), and the real
//! binaries run as child processes with their stderr captured to a file.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{bail, Context};
use async_nats::{Event, ServerError};
use tokio::sync::mpsc;

/// Builds the three binaries once per test binary.
pub fn bins() -> &'static (PathBuf, PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        for pkg in ["colibri-scheduler", "colibri-worker"] {
            let status = Command::new(&cargo)
                .args(["build", "-q", "-p", pkg, "--bins"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status();
            assert!(status.is_ok_and(|s| s.success()), "building {pkg} failed");
        }
        (
            harness::workspace_bin("colibri"),
            harness::workspace_bin("colibri-scheduler"),
            harness::workspace_bin("colibri-worker"),
        )
    })
}

pub fn colibri() -> &'static Path {
    &bins().0
}
pub fn scheduler_bin() -> &'static Path {
    &bins().1
}
pub fn worker_bin() -> &'static Path {
    &bins().2
}

/// The identities of a test fleet, in one admin directory.
pub struct Identities {
    pub dir: tempfile::TempDir,
    /// Everything `colibri admin` printed (stdout and stderr), for the leak check.
    pub admin_output: String,
}

impl Identities {
    /// Runs `colibri admin` for each host (name, tags) and the three users
    /// `hub` (scheduler), `ops` (operator), `watch` (observer).
    pub fn create(hosts: &[(&str, &str)]) -> anyhow::Result<Identities> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().to_str().context("utf-8 dir")?.to_string();
        let mut admin_output = String::new();
        let mut run = |args: Vec<&str>| -> anyhow::Result<()> {
            let o = Command::new(colibri())
                .arg("admin")
                .args(&args)
                .args(["--out", &out])
                .output()
                .context("running colibri admin")?;
            admin_output.push_str(&String::from_utf8_lossy(&o.stdout));
            admin_output.push_str(&String::from_utf8_lossy(&o.stderr));
            if !o.status.success() {
                bail!("colibri admin {args:?}: {admin_output}");
            }
            Ok(())
        };
        for (name, tags) in hosts {
            run(vec!["add-host", name, "--capabilities", tags])?;
        }
        run(vec!["add-user", "scheduler", "hub"])?;
        run(vec!["add-user", "operator", "ops"])?;
        run(vec!["add-user", "observer", "watch"])?;
        Ok(Identities { dir, admin_output })
    }

    pub fn seed_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.nk"))
    }
    pub fn seed(&self, name: &str) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.seed_file(name))?
            .trim()
            .to_string())
    }
    pub fn hosts_file(&self) -> PathBuf {
        self.dir.path().join("hosts.json")
    }
    pub fn authorization(&self) -> PathBuf {
        self.dir.path().join("authorization.conf")
    }
    pub fn inbox(name: &str) -> String {
        format!("_INBOX.{name}")
    }

    /// Connection flags of the Colibri binaries for identity `name`.
    pub fn flags(&self, name: &str, url: &str) -> Vec<String> {
        vec![
            "--nats-url".into(),
            url.into(),
            "--nats-nkey".into(),
            self.seed_file(name).display().to_string(),
            "--inbox-prefix".into(),
            Identities::inbox(name),
        ]
    }

    /// Connects as `name` to `url`; every server error is sent to the probe.
    pub async fn connect(&self, name: &str, url: &str) -> anyhow::Result<Probe> {
        let (tx, errors) = mpsc::unbounded_channel();
        let client = harness::within(
            Duration::from_secs(10),
            "identity connect",
            async_nats::ConnectOptions::with_nkey(self.seed(name)?)
                .custom_inbox_prefix(Identities::inbox(name))
                .event_callback(move |event| {
                    let tx = tx.clone();
                    async move {
                        if let Event::ServerError(e) = event {
                            let text = match e {
                                ServerError::Other(s) => s,
                                other => other.to_string(),
                            };
                            let _ = tx.send(text);
                        }
                    }
                })
                .connect(url),
        )
        .await??;
        Ok(Probe { client, errors })
    }
}

/// A connection that sees the server's errors.
pub struct Probe {
    pub client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

impl Probe {
    /// Waits for the server's permission violation naming `what`, for
    /// example `Publish to "colibri.task.x.submit"`.
    pub async fn violation(&mut self, what: &str) -> anyhow::Result<String> {
        let want = format!("Permissions Violation for {what}");
        harness::within(Duration::from_secs(5), &want, async {
            while let Some(e) = self.errors.recv().await {
                if e.contains(&want) {
                    return Ok(e);
                }
            }
            bail!("connection closed before: {want}")
        })
        .await?
    }

    /// Publishes and proves the server refused it.
    pub async fn denied_publish(&mut self, subject: &str) -> anyhow::Result<()> {
        self.client
            .publish(subject.to_string(), "{}".into())
            .await?;
        self.client.flush().await?;
        self.violation(&format!("Publish to \"{subject}\"")).await?;
        Ok(())
    }

    /// Subscribes and proves the server refused it.
    pub async fn denied_subscribe(&mut self, subject: &str) -> anyhow::Result<()> {
        let _sub = self.client.subscribe(subject.to_string()).await?;
        self.client.flush().await?;
        self.violation(&format!("Subscription to \"{subject}\""))
            .await?;
        Ok(())
    }

    /// No server error so far (checked after a flush round trip).
    pub async fn no_errors(&mut self) -> anyhow::Result<()> {
        self.client.flush().await?;
        if let Ok(e) = self.errors.try_recv() {
            bail!("unexpected server error: {e}");
        }
        Ok(())
    }
}

/// A child process killed on drop, its stderr going to a file.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> anyhow::Result<Proc> {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("spawning {name}"))?;
        Ok(Proc {
            name: name.into(),
            child: Some(child),
            log,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Exited already?
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the `colibri` CLI as `name`; returns (exit code, stdout, stderr).
pub fn cli(ids: &Identities, name: &str, url: &str, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(colibri())
        .args(ids.flags(name, url))
        .args(args)
        .output();
    match o {
        Ok(o) => (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        ),
        Err(e) => (-1, String::new(), e.to_string()),
    }
}
