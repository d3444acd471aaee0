//! Colibri's shared crate: everything the scheduler, the workers and the
//! `colibri` CLI must agree on, and nothing else.
//!
//! - [`tag`]: capability tags and names, their validation and their injective
//!   mapping to subject tokens;
//! - [`ids`]: task, worker and session identifiers;
//! - [`subjects`]: every subject Colibri publishes or subscribes to;
//! - [`messages`]: the versioned serde payloads carried on those subjects;
//! - [`provision`]: idempotent creation of every stream, consumer and KV bucket;
//! - [`connect`]: the connection options shared by all binaries.
//!
//! `subjects.md` at the repository root is the prose form of this crate; keep
//! the two in step.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod connect;
pub mod cost_mode;
pub mod identity;
pub mod ids;
pub mod messages;
pub mod provision;
pub mod subjects;
pub mod tag;
pub mod time_ms;

pub use ids::{SessionId, TaskId, WorkerId};
pub use tag::{Tag, TagError, TagSet};

/// Version of every payload this crate writes (`"v"` field). Readers accept
/// this version and reject others with a clear error.
pub const WIRE_VERSION: u32 = 1;

/// Header carrying the payload kind on every Colibri message, so a generic
/// client can route without parsing the body.
pub const HEADER_KIND: &str = "Colibri-Kind";
