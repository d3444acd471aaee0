//! What Colibri's daemons (scheduler, worker) share and nothing else:
//!
//! - [`logging`]: tracing to stderr or a file, text or JSON; a log file is
//!   reopened on SIGHUP so newsyslog/logrotate can rotate it;
//! - [`shutdown`]: one cancellation token fired by SIGTERM or SIGINT, and a
//!   bounded-grace drain helper;
//! - [`config_checks`]: what `check-config` checks on the host (files it
//!   names readable, log file appendable, the platform's default config);
//! - [`config_file`]: what both TOML files share (problems, key-by-key
//!   parsing, the `[nats]` table);
//! - [`notify_ready`]: systemd `Type=notify` readiness (a no-op elsewhere).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod config_checks;
pub mod config_file;
pub mod logging;
pub mod shutdown;

/// Tells systemd the daemon is connected and provisioned. A no-op when not
/// started by systemd (no `NOTIFY_SOCKET`).
pub fn notify_ready() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
            tracing::warn!(%error, "sd_notify READY failed");
        }
    }
}

/// Tells systemd the daemon is stopping.
pub fn notify_stopping() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    }
}
