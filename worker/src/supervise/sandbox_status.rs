//! bwrap's report on its own set-up, read right after it is spawned, so that
//! a sandbox that could not be built (no namespace, a bad bind source, ...)
//! is a spawn failure, retried, and not an agent that "exited 1".
//!
//! Two pipes, whose write ends bwrap inherits (see [`crate::confine::bwrap`]):
//! - `--info-fd`: `child-pid` (the sandbox's pid 1, as a host pid), then end
//!   of file; nothing is written there when bwrap fails before cloning;
//! - `--json-status-fd`: `child-pid`, then `exit-code` only when the set-up
//!   completed; end of file when bwrap exits.
//!
//! Then, until a bound: once the sandbox's pid 1 has a child (it forks the
//! agent only after the whole set-up succeeded) the agent runs; if bwrap
//! exits first, an `exit-code` says the agent ran (a quick one), its absence
//! that the set-up failed. The status pipe is then drained until bwrap exits,
//! so that its last write never meets a closed pipe (SIGPIPE would kill it).
//!
//! The write ends are inheritable only between [`StatusPipes::spawn_with`]'s
//! lock and their close; every spawn of the worker takes [`spawn_lock`], so
//! no other child (another task's sandbox) inherits them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tokio::process::Child;
use tracing::debug;

use crate::confine::bwrap::StatusFds;

/// How often the sandbox is looked at while bwrap sets it up.
const POLL: Duration = Duration::from_millis(1);

static SPAWN_LOCK: Mutex<()> = Mutex::new(());

/// Held around every spawn of the worker (see the module docs).
pub fn spawn_lock() -> MutexGuard<'static, ()> {
    SPAWN_LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The two pipes of one spawn try.
#[derive(Debug)]
pub struct StatusPipes {
    info: (OwnedFd, OwnedFd),
    json_status: (OwnedFd, OwnedFd),
}

/// The worker's ends, once bwrap is spawned.
#[derive(Debug)]
pub struct StatusReaders {
    info: OwnedFd,
    json_status: OwnedFd,
}

impl StatusPipes {
    pub fn new() -> io::Result<StatusPipes> {
        Ok(StatusPipes {
            info: pipe_above_stdio()?,
            json_status: pipe_above_stdio()?,
        })
    }

    /// The numbers bwrap sees (inherited fds keep their numbers).
    pub fn fds(&self) -> StatusFds {
        StatusFds {
            info: self.info.1.as_raw_fd(),
            json_status: self.json_status.1.as_raw_fd(),
        }
    }

    /// Spawns with `spawn`, the write ends inheritable only meanwhile, and
    /// closes them in the worker.
    pub fn spawn_with<T>(
        self,
        spawn: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<(T, StatusReaders)> {
        let _lock = spawn_lock();
        for fd in [&self.info.1, &self.json_status.1] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(io::Error::from)?;
        }
        let spawned = spawn()?;
        let readers = StatusReaders {
            info: self.info.0,
            json_status: self.json_status.0,
        };
        // The write ends (`self.info.1`, ...) close here, under the lock.
        Ok((spawned, readers))
    }
}

/// A close-on-exec pipe whose fds are not 0 to 2 (which the child's stdio
/// takes over).
fn pipe_above_stdio() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let above = |fd: OwnedFd| {
        if fd.as_raw_fd() > 2 {
            Ok(fd)
        } else {
            fd.try_clone()
        }
    };
    Ok((above(r)?, above(w)?))
}

impl StatusReaders {
    /// Waits (at most `limit`) until bwrap's sandbox runs the agent, or says
    /// why it does not: `Err` carries the cause, bwrap's stderr when piped.
    pub async fn check(self, child: &mut Child, limit: Duration) -> Result<(), String> {
        match self.started(limit).await {
            Ok(()) => Ok(()),
            Err(cause) => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(limit, child.wait()).await;
                let stderr = match child.stderr.take() {
                    Some(mut err) => read_all(&mut err, Duration::from_secs(1)).await,
                    None => String::new(),
                };
                Err(match stderr.trim() {
                    "" => cause,
                    message => message.to_string(),
                })
            }
        }
    }

    async fn started(self, limit: Duration) -> Result<(), String> {
        let mut info = pipe::Receiver::from_owned_fd(self.info).map_err(|e| e.to_string())?;
        let mut status =
            pipe::Receiver::from_owned_fd(self.json_status).map_err(|e| e.to_string())?;
        let mut text = String::new();
        match tokio::time::timeout(limit, info.read_to_string(&mut text)).await {
            Err(_) => {
                return Err(format!(
                    "bubblewrap did not set up the sandbox within {} ms",
                    limit.as_millis()
                ))
            }
            Ok(Err(e)) => return Err(format!("reading bubblewrap's info fd: {e}")),
            Ok(Ok(_)) => {}
        }
        let child_pid = field(&text, "child-pid")
            .and_then(|v| v.as_i64())
            .and_then(|p| i32::try_from(p).ok());
        let deadline = tokio::time::Instant::now() + limit;
        let mut rest = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            if child_pid.is_some_and(has_children) {
                debug!(sandbox_pid = child_pid, "sandbox set up");
                tokio::spawn(async move {
                    let mut tail = Vec::new();
                    let _ = status.read_to_end(&mut tail).await;
                });
                return Ok(());
            }
            tokio::select! {
                read = status.read(&mut buf) => match read {
                    Ok(0) => break,
                    Ok(n) => rest.extend_from_slice(&buf[..n]),
                    Err(e) => return Err(format!("reading bubblewrap's status fd: {e}")),
                },
                _ = tokio::time::sleep(POLL) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(format!(
                        "bubblewrap did not set up the sandbox within {} ms",
                        limit.as_millis()
                    ));
                }
            }
        }
        // bwrap exited: did the agent run (a quick one)?
        if field(&String::from_utf8_lossy(&rest), "exit-code").is_some() {
            Ok(())
        } else if child_pid.is_none() {
            Err("bubblewrap exited before starting the sandbox".into())
        } else {
            Err("bubblewrap exited while setting up the sandbox".into())
        }
    }
}

/// `key` in any of the JSON objects of `text` (bwrap writes one or several).
fn field(text: &str, key: &str) -> Option<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map_while(Result::ok)
        .find_map(|v| v.get(key).cloned())
}

/// True once `pid` has a child. The sandbox's pid 1 (bwrap, as the argv
/// always unshares the pid namespace) forks the agent only after the whole
/// set-up succeeded.
fn has_children(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        Ok(list) => !list.trim().is_empty(),
        // A kernel without CONFIG_PROC_CHILDREN: look for a parent link.
        Err(_) => super::procfs::snapshot()
            .iter()
            .any(|p| p.ppid == pid && p.is_alive()),
    }
}

async fn read_all(from: &mut (impl AsyncRead + Unpin), limit: Duration) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, from.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_in_any_object() {
        let status =
            "{ \"child-pid\": 2780, \"mnt-namespace\": 4026532178 }\n{ \"exit-code\": 0 }\n";
        assert_eq!(field(status, "child-pid"), Some(Value::from(2780)));
        assert_eq!(field(status, "exit-code"), Some(Value::from(0)));
        let cut = "{ \"child-pid\": 2780, \"mnt-namespace\": 4026532178 }bwrap";
        assert_eq!(field(cut, "exit-code"), None);
        assert_eq!(field("", "child-pid"), None);
    }

    #[test]
    fn a_parent_has_children_and_a_leaf_has_none() {
        use std::os::unix::process::CommandExt;
        let mut parent = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 5 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = parent.id() as i32;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !has_children(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(has_children(pid));
        let mut leaf = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(!has_children(leaf.id() as i32));
        for child in [&mut parent, &mut leaf] {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.kill();
            child.wait().unwrap();
        }
    }

    #[test]
    fn status_fds_are_above_stdio_and_close_on_exec() {
        let pipes = StatusPipes::new().unwrap();
        let fds = pipes.fds();
        assert!(fds.info > 2 && fds.json_status > 2);
        let flags = fcntl(&pipes.info.1, FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);
    }
}
