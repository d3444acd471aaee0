//! The end-to-end test harness: a real nats-server per test, and helpers to
//! wait for conditions with a deadline.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let mut nats = harness::NatsServer::start()?;
//! let client = nats.client().await?;
//! nats.restart()?; // same port, same store dir
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod board_client;
pub mod nats;
pub mod scheduler;
pub mod sim_worker;
pub mod wait;
pub mod worker;

pub use board_client::BoardClient;
pub use nats::NatsServer;
pub use scheduler::{SchedulerHandle, SchedulerProcess};
pub use sim_worker::SimWorker;
pub use wait::{eventually, within, DEFAULT_DEADLINE};
pub use worker::WorkerHandle;

/// Installs a test logger once (RUST_LOG controls it; quiet by default).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Path of a binary built from this workspace (target/<profile>/NAME).
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop(); // deps/
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}
