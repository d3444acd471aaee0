//! Per-attempt work dirs: `<state_dir>/work/<task>-<attempt>`, made fresh
//! before the agent starts and kept or removed by the `keep_workdirs` policy
//! when it ends.

use std::io;
use std::path::{Path, PathBuf};

use broker::messages::Outcome;
use broker::TaskId;
use tracing::warn;

use crate::config::KeepWorkdirs;

/// The work dir of one attempt.
pub fn path(root: &Path, task: &TaskId, attempt: u32) -> PathBuf {
    root.join(format!("{task}-{attempt}"))
}

/// Makes a fresh, empty work dir (a leftover of an earlier run is removed).
pub fn create(root: &Path, task: &TaskId, attempt: u32) -> io::Result<PathBuf> {
    let dir = path(root, task, attempt);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Hands the work dir to the unprivileged agent user (jail confinement).
pub fn give_to(dir: &Path, user: &str) -> io::Result<()> {
    let found = nix::unistd::User::from_name(user).map_err(io::Error::from)?;
    let Some(user) = found else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no user {user}"),
        ));
    };
    nix::unistd::chown(dir, Some(user.uid), Some(user.gid)).map_err(io::Error::from)
}

/// Applies the policy once the attempt has ended.
pub fn finish(dir: &Path, policy: KeepWorkdirs, outcome: Outcome) {
    let keep = match policy {
        KeepWorkdirs::Always => true,
        KeepWorkdirs::Never => false,
        KeepWorkdirs::OnFailure => outcome != Outcome::Succeeded,
    };
    if !keep {
        if let Err(error) = std::fs::remove_dir_all(dir) {
            warn!(%error, dir = %dir.display(), "removing the work dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_and_removed_by_policy() {
        let root = tempfile::tempdir().unwrap();
        let task = TaskId::new();
        let dir = create(root.path(), &task, 2).unwrap();
        assert!(dir.ends_with(format!("{task}-2")));
        std::fs::write(dir.join("x"), "1").unwrap();
        let again = create(root.path(), &task, 2).unwrap();
        assert!(!again.join("x").exists());
        finish(&again, KeepWorkdirs::OnFailure, Outcome::Failed);
        assert!(again.exists());
        finish(&again, KeepWorkdirs::OnFailure, Outcome::Succeeded);
        assert!(!again.exists());
    }
}
