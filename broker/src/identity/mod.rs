//! Per-host and per-user NATS identities and exactly what each may do.
//!
//! Every host of the fleet connects as its own nkey user; so do the
//! scheduler, each operator and each read-only observer. The hub's
//! nats-server holds only public keys and, for each one, the subjects it may
//! publish and subscribe to. This module is the single source of those rules:
//!
//! - [`keys`]: generating an nkey user and writing its seed to a `0600` file
//!   (the seed goes nowhere else: not to stdout, not to a log);
//! - [`permissions`]: the permission set of each [`Role`], as data;
//! - [`registry`]: the hosts file that lists every identity, its role and,
//!   for a host, the capability tags it may advertise (the scheduler reads it
//!   to check claims);
//! - [`render`]: the `authorization { users = [...] }` block for nats-server.
//!
//! Status and read paths are kept apart from command and write paths: the
//! observer may call the read endpoints and follow events, never submit,
//! cancel or change the cost mode.

pub mod keys;
pub mod permissions;
pub mod registry;
pub mod render;

pub use keys::{generate, Identity, KeyError};
pub use permissions::{Permissions, Role};
pub use registry::{Entry, Registry, RegistryError};

use crate::tag::{Tag, TagError};

/// An identity's name: the host or user name, under the tag rules so it can
/// sit in a subject (its token names the identity's inbox prefix).
pub type Name = Tag;

/// Parses an identity name (field `name` in errors).
pub fn parse_name(value: &str) -> Result<Name, TagError> {
    Tag::parse_name("name", value)
}

/// The inbox prefix an identity must connect with (`--inbox-prefix`): replies
/// to its requests arrive under it, and it may subscribe nowhere else.
pub fn inbox_prefix(name: &Name) -> String {
    format!("_INBOX.{}", name.subject_token())
}
