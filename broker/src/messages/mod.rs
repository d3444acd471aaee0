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
pub use presence::{AttemptRef, Heartbeat, HeartbeatError};
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
    /// Not JSON at all (or not an object of this kind at the top level).
    #[error("payload is not valid JSON for this kind: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but one field has the wrong type or value: names the field.
    #[error("{field}: {message}")]
    Field { field: String, message: String },
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

/// Parses a payload and checks its version. An error names the field
/// (`limits.timeout_secs: invalid type: string "x", expected u64`).
pub fn decode<T: DeserializeOwned + Versioned>(payload: &[u8]) -> Result<T, DecodeError> {
    let value: T = decode_fields(payload)?;
    if value.version() != crate::WIRE_VERSION {
        return Err(DecodeError::Version {
            found: value.version(),
            expected: crate::WIRE_VERSION,
        });
    }
    Ok(value)
}

/// Parses JSON into `T`, naming the field that broke in the error instead
/// of serde's line and column.
pub fn decode_fields<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    // The fast path (heartbeats arrive by the thousand); the path is
    // tracked only to explain an error.
    if let Ok(value) = serde_json::from_slice(payload) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    let result: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = match result {
        Ok(value) => value,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() || inner.is_io() {
                return Err(DecodeError::Json(inner));
            }
            return Err(field_error(&path, &inner));
        }
    };
    de.end()?;
    Ok(value)
}

/// `path` (serde_path_to_error's, `.` for the top level) and serde's
/// message without its position.
fn field_error(path: &str, error: &serde_json::Error) -> DecodeError {
    let text = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = text.strip_suffix(&suffix).unwrap_or(&text).to_string();
    // A missing field is reported at its parent: name the field itself.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'));
    let field = match (path, missing) {
        (".", Some(name)) => name.to_string(),
        (parent, Some(name)) => format!("{parent}.{name}"),
        (".", None) => "request".to_string(),
        (path, None) => path.to_string(),
    };
    let message = match missing {
        Some(_) => "required".to_string(),
        None => message,
    };
    DecodeError::Field { field, message }
}

/// `text` cut to at most `max_bytes` on a UTF-8 boundary, with `…` marking
/// the cut (the result is then at most `max_bytes + 3` bytes).
pub fn trim_text(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Page {
        #[allow(dead_code)]
        limit: Option<u32>,
        #[allow(dead_code)]
        inner: Option<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    struct Inner {
        #[allow(dead_code)]
        n: u64,
    }

    // Regression: API errors carried serde's text ("invalid type: ... at
    // line 1 column 12") and never named the field that broke.
    #[test]
    fn decode_errors_name_the_field() {
        match decode_fields::<Page>(br#"{"limit":"x"}"#) {
            Err(DecodeError::Field { field, message }) => {
                assert_eq!(field, "limit");
                assert!(!message.contains("line 1"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match decode_fields::<Page>(br#"{"inner":{}}"#) {
            Err(DecodeError::Field { field, message }) => {
                assert_eq!(field, "inner.n");
                assert_eq!(message, "required");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_fields::<Page>(b"{not json"),
            Err(DecodeError::Json(_))
        ));
    }

    #[test]
    fn trim_text_cuts_on_a_char_boundary() {
        assert_eq!(trim_text("abc", 3), "abc");
        assert_eq!(trim_text("abcd", 3), "abc…");
        assert_eq!(trim_text("aé", 2), "a…");
    }
}
