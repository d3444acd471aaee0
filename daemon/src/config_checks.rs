//! What `check-config` checks on the host rather than in the text: that the
//! files a configuration names (NATS credentials, nkey seed, TLS material)
//! can be read, that the log file can be opened for append, and where the
//! platform keeps the config file when `--config` is not given.
//!
//! Shared by both daemons, which must agree on these. Each check returns the
//! field it concerns and a message, for the caller to wrap in its own
//! problem type.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use broker::connect::ConnectArgs;

/// Where `<daemon>.toml` is read from when neither `--config` nor
/// `COLIBRI_CONFIG` names a file: `/usr/local/etc/colibri/` on FreeBSD,
/// `/etc/colibri/` elsewhere.
pub fn default_config_path(daemon: &str) -> PathBuf {
    let dir = if cfg!(target_os = "freebsd") {
        "/usr/local/etc/colibri"
    } else {
        "/etc/colibri"
    };
    Path::new(dir).join(format!("{daemon}.toml"))
}

/// The config file to read: the one given, else `default` if it exists,
/// else none (flags and environment only).
pub fn config_path(given: Option<&Path>, default: &Path) -> Option<PathBuf> {
    match given {
        Some(path) => Some(path.to_path_buf()),
        None => default.exists().then(|| default.to_path_buf()),
    }
}

/// Connection settings: server URLs parse, credentials are not doubled, the
/// TLS pair is complete, and every file named can be read.
pub fn check_connect(connect: &ConnectArgs) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    for url in &connect.nats_url {
        if url.trim().parse::<async_nats::ServerAddr>().is_err() {
            problems.push((
                "nats.url",
                format!("{url:?} is not a server URL (nats://host:port)"),
            ));
        }
    }
    if connect.creds.is_some() && connect.nkey.is_some() {
        problems.push((
            "nats.nkey",
            "cannot be used together with nats.creds".into(),
        ));
    }
    if connect.tls_cert.is_some() != connect.tls_key.is_some() {
        problems.push(("nats.tls_cert", "tls_cert and tls_key go together".into()));
    }
    for (field, path) in [
        ("nats.creds", &connect.creds),
        ("nats.nkey", &connect.nkey),
        ("nats.tls_ca", &connect.tls_ca),
        ("nats.tls_cert", &connect.tls_cert),
        ("nats.tls_key", &connect.tls_key),
    ] {
        if let Some(Err(message)) = path.as_deref().map(readable_file) {
            problems.push((field, message));
        }
    }
    problems
}

/// `path` is a file this process can open for reading.
pub fn readable_file(path: &Path) -> Result<(), String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(format!("{shown} does not exist")),
        Ok(meta) if !meta.is_file() => return Err(format!("{shown} is not a file")),
        _ => {}
    }
    File::open(path)
        .map(drop)
        .map_err(|e| format!("{shown} cannot be read: {e}"))
}

/// `path` can be opened for append as the daemon will open its log: an
/// existing file is opened (not changed); otherwise its directory must exist
/// and let this process create the file, which is tried and undone.
pub fn appendable_file(path: &Path) -> Result<(), String> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Err(format!("{shown} is a directory")),
        Ok(_) => {
            return OpenOptions::new()
                .append(true)
                .open(path)
                .map(drop)
                .map_err(|e| format!("{shown} cannot be opened for append: {e}"))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{shown}: {e}")),
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "{shown} cannot be created: directory {} does not exist",
            dir.display()
        ));
    }
    match OpenOptions::new().append(true).create_new(true).open(path) {
        Ok(_) => {
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        // Made meanwhile (the daemon itself): it exists, which is the point.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("{shown} cannot be created: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_read_only_when_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("daemon.toml");
        let given = Path::new("/given.toml");
        assert_eq!(config_path(None, &default), None);
        assert_eq!(config_path(Some(given), &default), Some(given.into()));
        std::fs::write(&default, "").unwrap();
        assert_eq!(config_path(None, &default), Some(default.clone()));
        assert_eq!(config_path(Some(given), &default), Some(given.into()));
        let platform = default_config_path("scheduler");
        assert!(platform.ends_with("colibri/scheduler.toml"), "{platform:?}");
    }

    #[test]
    fn log_file_must_be_appendable() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("new.log");
        assert_eq!(appendable_file(&fresh), Ok(()));
        assert!(!fresh.exists(), "the probe must not leave the file behind");
        let old = dir.path().join("old.log");
        std::fs::write(&old, "kept\n").unwrap();
        assert_eq!(appendable_file(&old), Ok(()));
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "kept\n");
        let e = appendable_file(&dir.path().join("nodir/x.log")).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        assert!(appendable_file(dir.path())
            .unwrap_err()
            .contains("directory"));
    }

    #[test]
    fn named_files_must_be_readable() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed.nk");
        std::fs::write(&seed, "SU...").unwrap();
        let connect = ConnectArgs {
            nkey: Some(seed),
            tls_ca: Some(dir.path().join("missing.pem")),
            tls_cert: Some(dir.path().to_path_buf()),
            ..ConnectArgs::default()
        };
        let fields: Vec<_> = check_connect(&connect).into_iter().map(|p| p.0).collect();
        assert_eq!(fields, ["nats.tls_cert", "nats.tls_ca", "nats.tls_cert"]);
    }
}
