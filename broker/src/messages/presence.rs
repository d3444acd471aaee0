//! Heartbeats on `colibri.presence.<worker>` (core NATS, every
//! `interval_ms`): a worker's advert and its lease renewal in one message.

use serde::{Deserialize, Serialize};

use crate::ids::{TaskId, WorkerId};
use crate::tag::TagSet;

/// Default heartbeat interval.
pub const HEARTBEAT_INTERVAL_MS: u64 = 2_000;
/// A worker silent this long is offline (documented bound: 10 s, well under 15 s).
pub const OFFLINE_AFTER_MS: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default = "super::wire_version")]
    pub v: u32,
    pub worker: WorkerId,
    pub host: String,
    /// Random per worker process; a new value means the worker restarted and
    /// every attempt it was running is lost.
    pub incarnation: uuid::Uuid,
    pub version: String,
    pub tags: TagSet,
    /// Agent profiles this worker enables (`command` only with --allow-command).
    pub agents: TagSet,
    pub slots: u32,
    /// Attempts running now: each one's lease is renewed by this heartbeat.
    #[serde(default)]
    pub running: Vec<AttemptRef>,
    pub interval_ms: u64,
    /// Sent once on clean shutdown: the worker takes no more work.
    #[serde(default)]
    pub leaving: bool,
    /// The fleet cost mode this worker applies now (from the config bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_mode: Option<crate::cost_mode::CostMode>,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttemptRef {
    pub task_id: TaskId,
    pub attempt: u32,
}
