//! Per-attempt work dirs: `<state_dir>/work/<task>-<attempt>`, made fresh
//! before the agent starts and kept or removed by the `keep_workdirs` policy
//! when it ends.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use broker::messages::Outcome;
use broker::TaskId;
use tracing::warn;

use crate::config::KeepWorkdirs;

/// The work dir of one attempt.
pub fn path(root: &Path, task: &TaskId, attempt: u32) -> PathBuf {
    root.join(format!("{task}-{attempt}"))
}

/// Makes a fresh, empty work dir (a leftover of an earlier run is removed),
/// mode 0700: only its owner (the worker, or a jailed agent's user once
/// handed over) may enter it.
pub fn create(root: &Path, task: &TaskId, attempt: u32) -> io::Result<PathBuf> {
    let dir = path(root, task, attempt);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// The modes a jail needs on the worker's state dir. A jailed agent shares
/// the host's root and runs as the agent user, so it must be able to pass
/// through the state dir and `work/` to its own work dir, and nothing
/// more: both are 0711 (enter, but not list: another attempt's work dir is
/// reachable only by its unguessable name), and `sessions/` (every
/// transcript) is 0700, the worker's alone.
pub fn open_for_jail(state_dir: &Path) -> io::Result<()> {
    let set = |dir: &Path, mode: u32| -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
    };
    set(state_dir, 0o711)?;
    set(&state_dir.join("work"), 0o711)?;
    set(&state_dir.join("sessions"), 0o700)
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

/// Hands an attempt's work dir (and the files the worker wrote into it) to
/// the agent user that bwrap runs as under a root worker, after giving the
/// state dir the modes [`open_for_jail`] gives it: bwrap, as that user, must
/// pass through the state dir to bind the work dir, and may list nothing.
pub fn hand_over(
    state_dir: &Path,
    dir: &Path,
    written: &[PathBuf],
    ids: crate::supervise::Ids,
) -> io::Result<()> {
    open_for_jail(state_dir)?;
    let uid = Some(nix::unistd::Uid::from_raw(ids.uid));
    let gid = Some(nix::unistd::Gid::from_raw(ids.gid));
    for path in std::iter::once(dir).chain(written.iter().map(PathBuf::as_path)) {
        nix::unistd::chown(path, uid, gid).map_err(io::Error::from)?;
    }
    Ok(())
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

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_jailed_agent_may_pass_through_the_state_dir_but_not_look_around() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
        open_for_jail(&state).unwrap();
        assert_eq!(mode(&state), 0o711);
        assert_eq!(mode(&state.join("work")), 0o711);
        assert_eq!(mode(&state.join("sessions")), 0o700);
        let work = create(&state.join("work"), &TaskId::new(), 1).unwrap();
        assert_eq!(mode(&work), 0o700);
        open_for_jail(&state).unwrap();
        assert!(work.exists(), "idempotent, and it touches no work dir");
    }
}
