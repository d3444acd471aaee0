//! Connection options shared by every binary: server URLs, credentials or
//! nkey seed file, TLS, inbox prefix. Each flag has a `COLIBRI_*` variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Default server URL.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// NATS server URL(s), comma-separated.
    #[arg(long = "nats-url", env = "COLIBRI_NATS_URL", default_value = DEFAULT_NATS_URL, value_delimiter = ',', global = true)]
    pub nats_url: Vec<String>,
    /// Credentials file (JWT + nkey seed).
    #[arg(long = "nats-creds", env = "COLIBRI_NATS_CREDS", global = true)]
    pub creds: Option<PathBuf>,
    /// Nkey seed file (a file holding one `SU...` seed).
    #[arg(
        long = "nats-nkey",
        env = "COLIBRI_NATS_NKEY",
        global = true,
        conflicts_with = "creds"
    )]
    pub nkey: Option<PathBuf>,
    /// CA certificate (PEM) to verify the server with; implies TLS.
    #[arg(long = "tls-ca", env = "COLIBRI_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key.
    #[arg(
        long = "tls-cert",
        env = "COLIBRI_TLS_CERT",
        global = true,
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(
        long = "tls-key",
        env = "COLIBRI_TLS_KEY",
        global = true,
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Inbox prefix for replies (least-privilege identities get their own).
    #[arg(long = "inbox-prefix", env = "COLIBRI_INBOX_PREFIX", global = true)]
    pub inbox_prefix: Option<String>,
}

impl Default for ConnectArgs {
    fn default() -> Self {
        ConnectArgs {
            nats_url: vec![DEFAULT_NATS_URL.to_string()],
            creds: None,
            nkey: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            inbox_prefix: None,
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error("nats-url: {0:?} is not a server URL")]
    BadUrl(String),
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {urls}: {source}")]
    Connect {
        urls: String,
        #[source]
        source: async_nats::ConnectError,
    },
}

/// How a process uses its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A CLI call: fail fast when no server answers.
    Client,
    /// A daemon: wait for the server at start, reconnect forever.
    Daemon,
}

impl ConnectArgs {
    /// Connects with these options, naming the connection `name`.
    pub async fn connect(
        &self,
        name: &str,
        role: Role,
    ) -> Result<async_nats::Client, ConnectError> {
        let mut addrs = Vec::new();
        for url in &self.nats_url {
            let addr: async_nats::ServerAddr = url
                .trim()
                .parse()
                .map_err(|_| ConnectError::BadUrl(url.clone()))?;
            addrs.push(addr);
        }
        let mut opts = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .ping_interval(Duration::from_secs(10));
        if role == Role::Daemon {
            opts = opts.retry_on_initial_connect().max_reconnects(None);
        }
        if let Some(path) = &self.creds {
            opts = opts
                .credentials_file(path)
                .await
                .map_err(|source| ConnectError::Read {
                    what: "credentials file",
                    path: path.clone(),
                    source,
                })?;
        }
        if let Some(path) = &self.nkey {
            let seed = std::fs::read_to_string(path).map_err(|source| ConnectError::Read {
                what: "nkey seed file",
                path: path.clone(),
                source,
            })?;
            opts = opts.nkey(seed.trim().to_string());
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            opts = opts
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            opts = opts.custom_inbox_prefix(prefix);
        }
        opts.connect(addrs)
            .await
            .map_err(|source| ConnectError::Connect {
                urls: self.nats_url.join(","),
                source,
            })
    }
}

/// Logs a warning when the server lets any client in (its INFO says no
/// authorization is required): then any process that reaches the hub, an
/// agent on a `network = "host"` worker for one, may submit, cancel and read
/// every session. Call it once connected (a daemon's [`ConnectArgs::connect`]
/// returns before the first connection, when there is no INFO yet). Returns
/// whether the server is open.
pub fn warn_if_open(client: &async_nats::Client) -> bool {
    let info = client.server_info();
    if info.auth_required {
        return false;
    }
    tracing::warn!(
        server = %info.server_id,
        "nats-server lets anyone in (no authorization): make identities with `colibri admin` \
         and include their authorization.conf in the server's config (packaging/README.md)"
    );
    true
}
