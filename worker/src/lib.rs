//! Colibri's per-host worker: it takes the orders the scheduler places on
//! this host, runs each as a confined, supervised agent process, and reports
//! what happened.
//!
//! - [`config`]: `worker.toml` + `COLIBRI_*` env + flags, validated up front;
//! - [`profiles`]: agent profiles (pi, claude, codex, command) and their argv;
//! - [`confine`]: bubblewrap, FreeBSD jail or unconfined launch argv;
//! - [`supervise`]: spawn with retries, limits, and killing a whole tree;
//! - [`cost`]: cost modes followed live and enforced on every append;
//! - [`session_output`]: each agent's output as a glasspane session (live
//!   events, transcript, verdict); [`progress`]: its live state as
//!   coalesced `progress` reports;
//! - [`executor`]: what runs an order (real agents, or the bench no-op);
//! - [`reports`] and [`presence`]: at-least-once reports and heartbeats;
//! - [`orders`]: the durable order feed; [`runner`]: the daemon's main loop.
// `unsafe` lives in one place: the pre-exec hook of `supervise::child`.
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod agent_controls;
pub mod cgroup;
pub mod config;
pub mod confine;
pub mod cost;
pub mod error;
pub mod executor;
pub mod orders;
pub mod presence;
pub mod profiles;
pub mod progress;
pub mod reports;
pub mod runner;
pub mod secret;
pub mod session_output;
pub mod supervise;
pub mod transcripts;
pub mod workdir;

pub use config::WorkerConfig;
pub use error::WorkerError;
pub use executor::ExecutorKind;
pub use runner::run;
