//! The versioned payloads carried on Colibri's subjects, one file per kind.
//! Every payload is JSON with a `"v"` field equal to [`crate::WIRE_VERSION`];
//! [`decode`] rejects anything else with a typed error, so a daemon can log,
//! count and drop a malformed message without crashing.

pub mod api;
pub mod event;
pub mod presence;
pub mod report;
pub mod session;
pub mod task;
pub mod work;

pub use api::*;
pub use event::{TaskEvent, TaskState, WorkerEvent, WorkerState};
pub use presence::{AttemptRef, Heartbeat};
pub use report::{Escalated, FailureClass, Outcome, Report, ReportBody, SharedTranscript, Usage};
pub use session::SessionEvent;
pub use task::{NetworkPolicy, RetryPolicy, TaskLimits, TaskSpec, TaskSpecError};
pub use work::{CancelOrder, RunOrder, WorkItem, WorkMessage};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a payload could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("payload is not valid JSON for this kind: {0}")]
    Json(#[from] serde_json::Error),
    #[error("payload version {found} is not supported (this build speaks version {expected})")]
    Version { found: u32, expected: u32 },
}

/// Payloads that carry a wire version.
pub trait Versioned {
    fn version(&self) -> u32;
}

/// Serializes a payload. Serialization of these plain types cannot fail.
pub fn encode<T: Serialize>(value: &T) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Parses a payload and checks its version.
pub fn decode<T: DeserializeOwned + Versioned>(payload: &[u8]) -> Result<T, DecodeError> {
    let value: T = serde_json::from_slice(payload)?;
    if value.version() != crate::WIRE_VERSION {
        return Err(DecodeError::Version {
            found: value.version(),
            expected: crate::WIRE_VERSION,
        });
    }
    Ok(value)
}

pub(crate) fn wire_version() -> u32 {
    crate::WIRE_VERSION
}

macro_rules! versioned {
    ($($t:ty),* $(,)?) => {
        $(impl Versioned for $t { fn version(&self) -> u32 { self.v } })*
    };
}
versioned!(
    TaskSpec,
    Report,
    Heartbeat,
    TaskEvent,
    WorkerEvent,
    WorkMessage,
    SessionEvent
);
