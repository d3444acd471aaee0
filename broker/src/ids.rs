//! Identifiers: tasks and sessions are UUIDv7 (time-ordered, so the board's
//! primary key sorts by submission), workers are operator-chosen names under
//! the tag rules so they can sit in a subject.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::tag::{Tag, TagError};

macro_rules! uuid_id {
    ($name:ident, $what:literal) => {
        #[doc = concat!("Identifier of a ", $what, " (UUIDv7, rendered hyphenated).")]
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            pub fn new() -> Self {
                $name(uuid::Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                uuid::Uuid::parse_str(s).map($name)
            }
        }
    };
}

uuid_id!(TaskId, "task");
uuid_id!(SessionId, "session (one agent run's event stream)");

/// A worker's name: chosen by the operator (`--worker-id`), under the tag
/// rules, unique in the fleet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(Tag);

impl WorkerId {
    pub fn parse(value: &str) -> Result<WorkerId, TagError> {
        Tag::parse_name("worker-id", value).map(WorkerId)
    }
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
    /// The worker's subject token (see [`Tag::subject_token`]).
    pub fn token(&self) -> String {
        self.0.subject_token()
    }
}

/// Any valid name is a valid worker id (same rules).
impl From<Tag> for WorkerId {
    fn from(name: Tag) -> WorkerId {
        WorkerId(name)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for WorkerId {
    type Err = TagError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WorkerId::parse(s)
    }
}
