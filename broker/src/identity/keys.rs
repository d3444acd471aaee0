//! Nkey user identities: a key pair per host or user. The seed is the secret;
//! it is written once, to a file readable only by its owner (`0600`), and is
//! never formatted by `Debug` or `Display`. The public key (`U...`) is what
//! the server's authorization block and the hosts file hold.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// A freshly generated user identity.
pub struct Identity {
    public_key: String,
    seed: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.public_key)
            .field("seed", &"<redacted>")
            .finish()
    }
}

/// Why an identity could not be made or stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error("generating an nkey: {0}")]
    Generate(String),
    #[error("{path}: already exists; refusing to overwrite a seed")]
    Exists { path: PathBuf },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Generates a new nkey user.
pub fn generate() -> Result<Identity, KeyError> {
    let pair = nkeys::KeyPair::new_user();
    let seed = pair.seed().map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok(Identity {
        public_key: pair.public_key(),
        seed,
    })
}

impl Identity {
    /// The public key (`U...`), safe to print and to put in server config.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Writes the seed to `path` (created, mode `0600`; an existing file is
    /// never overwritten).
    pub fn write_seed(&self, path: &Path) -> Result<(), KeyError> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                    path: path.to_path_buf(),
                },
                _ => KeyError::Write {
                    path: path.to_path_buf(),
                    source,
                },
            })?;
        writeln!(file, "{}", self.seed)
            .and_then(|()| file.sync_all())
            .map_err(|source| KeyError::Write {
                path: path.to_path_buf(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn seed_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let id = generate().unwrap();
        assert!(id.public_key().starts_with('U'));
        let path = dir.path().join("debby.nk");
        id.write_seed(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("SU"));
        // The seed signs for the public key.
        let pair = nkeys::KeyPair::from_seed(text.trim()).unwrap();
        assert_eq!(pair.public_key(), id.public_key());
        assert!(matches!(
            generate().unwrap().write_seed(&path),
            Err(KeyError::Exists { .. })
        ));
        assert!(!format!("{id:?}").contains(text.trim()));
    }
}
