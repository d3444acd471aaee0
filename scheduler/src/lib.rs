//! Colibri's scheduler: the SQLite board, placement, worker presence and
//! leases, the `$SRV` request endpoints, and the `colibri` operator CLI.
//!
//! The service ([`service::run`]) is one owning task: it reads the durable
//! intake (submissions and worker reports), heartbeats and write requests,
//! changes the board in batched transactions, and only then acknowledges
//! what it read and publishes orders and events. Read requests are served
//! from a separate read-only connection so they never wait on writes.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod api;
pub mod board;
pub mod claims;
pub mod cli;
pub mod config;
pub mod fleet;
pub mod nats_config;
pub mod placement;
pub mod service;
