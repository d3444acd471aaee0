//! The nats-server configuration of the Colibri hub, generated from a few
//! typed inputs.
//!
//! The hub runs one nats-server with JetStream next to the scheduler. Its
//! config is small but two choices in it matter for safety, so they are made
//! here, in one pure function, instead of by hand in each package:
//!
//! - **Where it listens.** Loopback by default, or a given (tailnet) address.
//!   An unspecified address (`0.0.0.0`, `::`) would expose the bus on every
//!   interface, so [`render`] refuses it unless [`HubConfig::allow_any`] is set.
//! - **Who may connect.** Only holders of an identity made by `colibri admin`:
//!   the config includes the `authorization.conf` it writes, so nats-server
//!   does not start until identities exist. A hub anyone may use is the
//!   explicit exception ([`HubConfig::open`]).
//! - **When JetStream fsyncs.** `sync_interval: always` by default: the Jepsen
//!   analysis of NATS 2.12 showed that the default lazy fsync (every two
//!   minutes) loses acknowledged writes on power loss. The price is lower
//!   publish throughput, since every acknowledged write waits for the disk.
//!
//! The files shipped in `packaging/freebsd/nats-server.conf` and
//! `packaging/systemd/nats-server.conf` are exactly
//! `render(&HubConfig::freebsd())` and `render(&HubConfig::linux())`; the
//! packaging test checks it. Std only, no I/O.

use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// The file `colibri admin` writes with the authorization block, included by
/// default from the config's own directory.
pub const AUTHORIZATION_FILE: &str = "authorization.conf";
/// The client port nats-server uses unless told otherwise.
pub const DEFAULT_PORT: u16 = 4222;
/// JetStream store of the FreeBSD hub.
pub const FREEBSD_STORE_DIR: &str = "/var/db/nats";
/// JetStream store on Linux (the `StateDirectory=nats` of the systemd unit).
pub const LINUX_STORE_DIR: &str = "/var/lib/nats";

/// When JetStream flushes its files to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncInterval {
    /// fsync after every write: no acknowledged write is lost on power loss.
    #[default]
    Always,
    /// fsync on a timer (whole seconds, at least one): faster publishes, and
    /// up to this much acknowledged data lost on power loss.
    Every(Duration),
}

/// The inputs of the hub's nats-server config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Address nats-server listens on: loopback or a tailnet address.
    pub listen: IpAddr,
    /// Client port.
    pub port: u16,
    /// JetStream store directory (absolute).
    pub store_dir: PathBuf,
    /// JetStream fsync policy.
    pub sync_interval: SyncInterval,
    /// Body of an `authorization { ... }` block, inserted as given (indented).
    pub authorization: Option<String>,
    /// File holding the `authorization { ... }` block that `colibri admin`
    /// writes (`authorization.conf`), included by the config; relative to the
    /// config file's directory. Set by default ([`AUTHORIZATION_FILE`]).
    pub authorization_file: Option<String>,
    /// Permit an unspecified listen address (`0.0.0.0` or `::`). Off by default.
    pub allow_any: bool,
}

impl HubConfig {
    /// Defaults (loopback, port 4222, `sync_interval: always`, the
    /// identities of [`AUTHORIZATION_FILE`]) with the given store directory.
    pub fn new(store_dir: impl Into<PathBuf>) -> Self {
        HubConfig {
            listen: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: DEFAULT_PORT,
            store_dir: store_dir.into(),
            sync_interval: SyncInterval::Always,
            authorization: None,
            authorization_file: Some(AUTHORIZATION_FILE.to_string()),
            allow_any: false,
        }
    }

    /// This config without any authorization: anyone who reaches the port
    /// may submit, cancel and read every session. For a throwaway hub only.
    pub fn open(self) -> Self {
        HubConfig {
            authorization: None,
            authorization_file: None,
            ..self
        }
    }

    /// The defaults of the FreeBSD hub (`/var/db/nats`).
    pub fn freebsd() -> Self {
        Self::new(FREEBSD_STORE_DIR)
    }

    /// The defaults of a Linux hub (`/var/lib/nats`).
    pub fn linux() -> Self {
        Self::new(LINUX_STORE_DIR)
    }
}

/// Why a [`HubConfig`] cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatsConfigError {
    /// `listen` is `0.0.0.0` or `::` and `allow_any` is not set.
    UnspecifiedListen { addr: IpAddr },
    /// `port` is 0.
    ZeroPort,
    /// `store_dir` is relative or holds a character the config cannot quote.
    BadStoreDir { store_dir: PathBuf },
    /// `sync_interval` is shorter than a second or not whole seconds.
    BadSyncInterval { interval: Duration },
    /// `authorization` is empty or its braces do not balance.
    BadAuthorization,
    /// Both `authorization` and `authorization_file` are set.
    TwoAuthorizations,
    /// `authorization_file` is empty or holds a character the config cannot quote.
    BadAuthorizationFile { file: String },
}

impl NatsConfigError {
    /// The [`HubConfig`] field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            NatsConfigError::UnspecifiedListen { .. } => "listen",
            NatsConfigError::ZeroPort => "port",
            NatsConfigError::BadStoreDir { .. } => "store_dir",
            NatsConfigError::BadSyncInterval { .. } => "sync_interval",
            NatsConfigError::BadAuthorization | NatsConfigError::TwoAuthorizations => {
                "authorization"
            }
            NatsConfigError::BadAuthorizationFile { .. } => "authorization_file",
        }
    }
}

impl fmt::Display for NatsConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.field())?;
        match self {
            NatsConfigError::UnspecifiedListen { addr } => write!(
                f,
                "{addr} would expose nats-server on every interface; \
                 use 127.0.0.1 or the tailnet address, or set allow_any"
            ),
            NatsConfigError::ZeroPort => write!(f, "must not be 0"),
            NatsConfigError::BadStoreDir { store_dir } => write!(
                f,
                "{} must be an absolute path without quotes, backslashes or newlines",
                store_dir.display()
            ),
            NatsConfigError::BadSyncInterval { interval } => write!(
                f,
                "{interval:?} must be whole seconds, at least one (or `always`)"
            ),
            NatsConfigError::BadAuthorization => {
                write!(f, "must be a non-empty block body with balanced braces")
            }
            NatsConfigError::TwoAuthorizations => {
                write!(
                    f,
                    "set either authorization or authorization_file, not both"
                )
            }
            NatsConfigError::BadAuthorizationFile { file } => write!(
                f,
                "{file:?} must be a non-empty path without quotes, backslashes or newlines"
            ),
        }
    }
}

impl std::error::Error for NatsConfigError {}

/// Renders the nats-server config text of the hub, or says which input is
/// wrong.
pub fn render(config: &HubConfig) -> Result<String, NatsConfigError> {
    if config.listen.is_unspecified() && !config.allow_any {
        return Err(NatsConfigError::UnspecifiedListen {
            addr: config.listen,
        });
    }
    if config.port == 0 {
        return Err(NatsConfigError::ZeroPort);
    }
    let store_dir = match config.store_dir.to_str() {
        Some(dir) if config.store_dir.is_absolute() && !dir.contains(['"', '\\', '\n', '\r']) => {
            dir
        }
        _ => {
            return Err(NatsConfigError::BadStoreDir {
                store_dir: config.store_dir.clone(),
            })
        }
    };
    let sync_interval = match config.sync_interval {
        SyncInterval::Always => "always".to_owned(),
        SyncInterval::Every(interval) => {
            if interval.as_secs() == 0 || interval.subsec_nanos() != 0 {
                return Err(NatsConfigError::BadSyncInterval { interval });
            }
            format!("\"{}s\"", interval.as_secs())
        }
    };
    let authorization = match &config.authorization {
        None => None,
        Some(body) if body.trim().is_empty() || !braces_balance(body) => {
            return Err(NatsConfigError::BadAuthorization)
        }
        Some(body) => Some(body),
    };
    let authorization_file = match &config.authorization_file {
        None => None,
        Some(_) if authorization.is_some() => return Err(NatsConfigError::TwoAuthorizations),
        Some(file) if file.trim().is_empty() || file.contains(['"', '\\', '\n', '\r']) => {
            return Err(NatsConfigError::BadAuthorizationFile { file: file.clone() })
        }
        Some(file) => Some(file),
    };

    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(out, "# nats-server configuration of the Colibri hub.");
    let _ = writeln!(
        out,
        "# Generated by scheduler::nats_config::render; change its inputs, not this text."
    );
    let _ = writeln!(out, "#");
    let _ = writeln!(
        out,
        "# Listens on loopback or on the tailnet address only. 0.0.0.0 and :: are"
    );
    let _ = writeln!(out, "# refused unless allow_any is set explicitly.");
    if config.listen.is_unspecified() {
        let _ = writeln!(
            out,
            "# allow_any is set: this server listens on every interface."
        );
    }
    let _ = writeln!(out, "host: \"{}\"", config.listen);
    let _ = writeln!(out, "port: {}", config.port);
    let _ = writeln!(out);
    let _ = writeln!(out, "jetstream {{");
    let _ = writeln!(out, "  store_dir: \"{store_dir}\"");
    let _ = writeln!(
        out,
        "  # sync_interval: always fsyncs after every write. The Jepsen analysis of"
    );
    let _ = writeln!(
        out,
        "  # NATS 2.12 showed that the default lazy fsync (every 2 minutes) loses"
    );
    let _ = writeln!(
        out,
        "  # acknowledged writes on power loss. The trade-off is lower publish"
    );
    let _ = writeln!(
        out,
        "  # throughput: every acknowledged write waits for the disk."
    );
    let _ = writeln!(out, "  sync_interval: {sync_interval}");
    let _ = writeln!(out, "}}");
    if let Some(body) = authorization {
        let _ = writeln!(out);
        let _ = writeln!(out, "authorization {{");
        for line in body.trim_matches('\n').lines() {
            if line.trim().is_empty() {
                let _ = writeln!(out);
            } else {
                let _ = writeln!(out, "  {}", line.trim_end());
            }
        }
        let _ = writeln!(out, "}}");
    }
    if let Some(file) = authorization_file {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "# Only holders of an identity made by `colibri admin` connect: {file} is"
        );
        let _ = writeln!(
            out,
            "# the block it writes (`colibri admin add-user scheduler hub --out DIR`, then"
        );
        let _ = writeln!(
            out,
            "# add-host per worker). nats-server does not start until the file exists."
        );
        let _ = writeln!(out, "include \"{file}\"");
    }
    if authorization.is_none() && authorization_file.is_none() {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "# No authorization: anyone who reaches this port may submit, cancel and"
        );
        let _ = writeln!(out, "# read every session.");
    }
    Ok(out)
}

/// True when every `{` outside a quoted string has its `}`, in order.
fn braces_balance(text: &str) -> bool {
    let mut depth: usize = 0;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '{') => depth += 1,
            (None, '}') => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            (None, _) => {}
        }
    }
    depth == 0 && quote.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    const FREEBSD_DEFAULT: &str = r#"# nats-server configuration of the Colibri hub.
# Generated by scheduler::nats_config::render; change its inputs, not this text.
#
# Listens on loopback or on the tailnet address only. 0.0.0.0 and :: are
# refused unless allow_any is set explicitly.
host: "127.0.0.1"
port: 4222

jetstream {
  store_dir: "/var/db/nats"
  # sync_interval: always fsyncs after every write. The Jepsen analysis of
  # NATS 2.12 showed that the default lazy fsync (every 2 minutes) loses
  # acknowledged writes on power loss. The trade-off is lower publish
  # throughput: every acknowledged write waits for the disk.
  sync_interval: always
}

# Only holders of an identity made by `colibri admin` connect: authorization.conf is
# the block it writes (`colibri admin add-user scheduler hub --out DIR`, then
# add-host per worker). nats-server does not start until the file exists.
include "authorization.conf"
"#;

    #[test]
    fn freebsd_default_is_exact() {
        assert_eq!(render(&HubConfig::freebsd()).unwrap(), FREEBSD_DEFAULT);
    }

    #[test]
    fn linux_default_differs_only_in_store_dir() {
        let expected = FREEBSD_DEFAULT.replace("/var/db/nats", "/var/lib/nats");
        assert_eq!(render(&HubConfig::linux()).unwrap(), expected);
    }

    #[test]
    fn tailnet_address_port_interval_and_authorization() {
        let config = HubConfig {
            listen: "100.101.102.103".parse().unwrap(),
            port: 4333,
            sync_interval: SyncInterval::Every(Duration::from_secs(30)),
            authorization: Some("\ntoken: \"s3cr{t\"\n\nusers = [ { user: a } ]\n".into()),
            ..HubConfig::new("/srv/nats").open()
        };
        let text = render(&config).unwrap();
        let tail = "host: \"100.101.102.103\"\nport: 4333\n";
        assert!(text.contains(tail), "{text}");
        assert!(text.contains("  store_dir: \"/srv/nats\"\n"), "{text}");
        assert!(text.contains("  sync_interval: \"30s\"\n}\n"), "{text}");
        assert!(text.ends_with(
            "}\n\nauthorization {\n  token: \"s3cr{t\"\n\n  users = [ { user: a } ]\n}\n"
        ));
    }

    #[test]
    fn an_open_hub_says_so() {
        let text = render(&HubConfig::linux().open()).unwrap();
        assert!(!text.contains("include"), "{text}");
        assert!(text.ends_with(
            "}\n\n# No authorization: anyone who reaches this port may submit, cancel and\n# read every session.\n"
        ));
    }

    #[test]
    fn inline_and_included_authorization_are_exclusive() {
        let config = HubConfig {
            authorization: Some("users = []".into()),
            ..HubConfig::linux()
        };
        assert_eq!(
            render(&config).unwrap_err(),
            NatsConfigError::TwoAuthorizations
        );
        let config = HubConfig {
            authorization_file: Some("a\"b".into()),
            ..HubConfig::linux()
        };
        assert_eq!(render(&config).unwrap_err().field(), "authorization_file");
    }

    #[test]
    fn ipv6_loopback_is_written_bare() {
        let config = HubConfig {
            listen: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ..HubConfig::linux()
        };
        assert!(render(&config).unwrap().contains("host: \"::1\"\n"));
    }

    #[test]
    fn unspecified_addresses_are_refused_without_allow_any() {
        for addr in [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ] {
            let config = HubConfig {
                listen: addr,
                ..HubConfig::freebsd()
            };
            let error = render(&config).unwrap_err();
            assert_eq!(error, NatsConfigError::UnspecifiedListen { addr });
            assert_eq!(error.field(), "listen");
        }
    }

    #[test]
    fn unspecified_address_with_allow_any_is_written_with_a_warning() {
        let config = HubConfig {
            listen: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            allow_any: true,
            ..HubConfig::freebsd()
        };
        let text = render(&config).unwrap();
        assert!(text.contains(
            "# allow_any is set: this server listens on every interface.\nhost: \"0.0.0.0\"\n"
        ));
    }

    #[test]
    fn bad_inputs_name_their_field() {
        let cases: Vec<(HubConfig, &str)> = vec![
            (
                HubConfig {
                    port: 0,
                    ..HubConfig::freebsd()
                },
                "port",
            ),
            (HubConfig::new("var/db/nats"), "store_dir"),
            (HubConfig::new("/var/db/na\"ts"), "store_dir"),
            (
                HubConfig {
                    sync_interval: SyncInterval::Every(Duration::from_millis(500)),
                    ..HubConfig::freebsd()
                },
                "sync_interval",
            ),
            (
                HubConfig {
                    sync_interval: SyncInterval::Every(Duration::from_millis(1500)),
                    ..HubConfig::freebsd()
                },
                "sync_interval",
            ),
            (
                HubConfig {
                    authorization: Some("  \n".into()),
                    ..HubConfig::freebsd()
                },
                "authorization",
            ),
            (
                HubConfig {
                    authorization: Some("users = [ { user: a ]".into()),
                    ..HubConfig::freebsd()
                },
                "authorization",
            ),
            (
                HubConfig {
                    authorization: Some("} token: x {".into()),
                    ..HubConfig::freebsd()
                },
                "authorization",
            ),
        ];
        for (config, field) in cases {
            let error = render(&config).unwrap_err();
            assert_eq!(error.field(), field, "{config:?}");
            assert!(error.to_string().starts_with(&format!("{field}: ")));
        }
    }
}
