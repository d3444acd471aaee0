//! The hosts file: every identity of the fleet with its role, public key and,
//! for a host, the capability tags it may advertise. `colibri admin` writes
//! it; the scheduler reads it (`--hosts FILE`) to reject claims a host's
//! identity does not allow; [`super::render`] turns it into the server's
//! authorization block. It holds public keys only, never a seed.
//!
//! ```json
//! { "v": 1, "identities": {
//!     "debby": { "role": "worker", "public_key": "UA...", "capabilities": ["docker", "linux"] },
//!     "ops":   { "role": "operator", "public_key": "UB..." } } }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Name, Role};
use crate::ids::WorkerId;
use crate::tag::TagSet;

/// One identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub role: Role,
    pub public_key: String,
    /// Tags a host may advertise (workers only).
    #[serde(default, skip_serializing_if = "TagSet::is_empty")]
    pub capabilities: TagSet,
}

/// Every identity, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    #[serde(default = "crate::messages::wire_version")]
    pub v: u32,
    #[serde(default)]
    pub identities: BTreeMap<Name, Entry>,
}

/// Why the hosts file could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a hosts file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("name: {name:?} is already known (as {role}); pick another name")]
    Taken { name: String, role: Role },
    #[error("public_key: {0:?} is not an nkey user public key")]
    BadKey(String),
}

/// What a host's heartbeat claimed beyond what its identity allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimVerdict {
    Allowed,
    /// No host of that name in the registry.
    UnknownHost,
    /// Tags advertised that the host may not claim.
    TagsExceed(Vec<String>),
}

impl Registry {
    /// Reads a hosts file; a missing file is an empty registry.
    pub fn load_or_default(path: &Path) -> Result<Registry, RegistryError> {
        match std::fs::read(path) {
            Ok(bytes) => Registry::parse(path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry::default()),
            Err(source) => Err(RegistryError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Reads a hosts file that must exist.
    pub fn load(path: &Path) -> Result<Registry, RegistryError> {
        let bytes = std::fs::read(path).map_err(|source| RegistryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Registry::parse(path, &bytes)
    }

    fn parse(path: &Path, bytes: &[u8]) -> Result<Registry, RegistryError> {
        let reg: Registry =
            serde_json::from_slice(bytes).map_err(|source| RegistryError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        for entry in reg.identities.values() {
            check_key(&entry.public_key)?;
        }
        Ok(reg)
    }

    /// Writes it atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), RegistryError> {
        let err = |source| RegistryError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut text = serde_json::to_string_pretty(self).map_err(|e| err(e.into()))?;
        text.push('\n');
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// Adds an identity; a name may be used once, whatever its role.
    pub fn add(&mut self, name: Name, entry: Entry) -> Result<(), RegistryError> {
        check_key(&entry.public_key)?;
        if let Some(old) = self.identities.get(&name) {
            return Err(RegistryError::Taken {
                name: name.to_string(),
                role: old.role,
            });
        }
        self.identities.insert(name, entry);
        Ok(())
    }

    /// Checks a host's advertised tags against what its identity allows.
    pub fn check_claim(&self, worker: &WorkerId, tags: &TagSet) -> ClaimVerdict {
        let host = self
            .identities
            .iter()
            .find(|(name, e)| e.role == Role::Worker && name.as_str() == worker.as_str());
        match host {
            None => ClaimVerdict::UnknownHost,
            Some((_, e)) => {
                let extra: Vec<String> = tags
                    .missing_from(&e.capabilities)
                    .into_iter()
                    .map(|t| t.to_string())
                    .collect();
                if extra.is_empty() {
                    ClaimVerdict::Allowed
                } else {
                    ClaimVerdict::TagsExceed(extra)
                }
            }
        }
    }
}

fn check_key(key: &str) -> Result<(), RegistryError> {
    match nkeys::KeyPair::from_public_key(key) {
        Ok(_) if key.starts_with('U') => Ok(()),
        _ => Err(RegistryError::BadKey(key.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{generate, parse_name};

    fn host(tags: &[&str]) -> Entry {
        Entry {
            role: Role::Worker,
            public_key: generate().unwrap().public_key().to_string(),
            capabilities: TagSet::parse_lists(tags).unwrap(),
        }
    }

    #[test]
    fn claims_are_checked_against_the_host() {
        let mut reg = Registry::default();
        reg.add(parse_name("debby").unwrap(), host(&["linux", "docker"]))
            .unwrap();
        let debby = WorkerId::parse("debby").unwrap();
        let tags = |t: &[&str]| TagSet::parse_lists(t).unwrap();
        assert_eq!(
            reg.check_claim(&debby, &tags(&["linux"])),
            ClaimVerdict::Allowed
        );
        assert_eq!(
            reg.check_claim(&debby, &tags(&["linux", "gpu"])),
            ClaimVerdict::TagsExceed(vec!["gpu".into()])
        );
        assert_eq!(
            reg.check_claim(&WorkerId::parse("eve").unwrap(), &tags(&[])),
            ClaimVerdict::UnknownHost
        );
    }

    #[test]
    fn names_are_unique_and_the_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.json");
        let mut reg = Registry::load_or_default(&path).unwrap();
        reg.add(parse_name("debby").unwrap(), host(&["linux"]))
            .unwrap();
        let err = reg
            .add(parse_name("debby").unwrap(), host(&["linux"]))
            .unwrap_err();
        assert!(matches!(err, RegistryError::Taken { .. }));
        reg.save(&path).unwrap();
        assert_eq!(Registry::load(&path).unwrap(), reg);
        let mut bad = host(&[]);
        bad.public_key = "SUAAAA".into();
        assert!(matches!(
            reg.add(parse_name("x").unwrap(), bad),
            Err(RegistryError::BadKey(_))
        ));
    }
}
