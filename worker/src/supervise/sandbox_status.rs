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
//! The pipes are close-on-exec in the worker from the moment they exist;
//! bwrap gets its copies of the write ends at fixed numbers, by `dup2` in
//! its own fd table between fork and exec ([`super::child`]), so no other
//! child of the worker can inherit them. (They used to be made inheritable
//! under a lock that was released before they were closed: a bwrap started
//! at that moment by another attempt held the first one's `--info-fd`, and
//! the first sandbox "did not set up" and was started twice.)

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use nix::fcntl::OFlag;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::unix::pipe;
use tokio::process::Child;
use tracing::debug;

use super::child::ChildSetup;
use crate::confine::bwrap::{INFO_FD, JSON_STATUS_FD};

/// How often the sandbox is looked at while bwrap sets it up.
const POLL: Duration = Duration::from_millis(1);

/// The worker's read ends of one spawn try's status pipes.
#[derive(Debug)]
pub struct StatusReaders {
    info: OwnedFd,
    json_status: OwnedFd,
}

/// Makes the two status pipes, hands their write ends to `setup` (at
/// [`INFO_FD`] and [`JSON_STATUS_FD`] in the child), and returns the read
/// ends.
pub fn status_pipes(setup: &mut ChildSetup) -> io::Result<StatusReaders> {
    let (info_r, info_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    let (status_r, status_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
    setup.pass(info_w, INFO_FD)?;
    setup.pass(status_w, JSON_STATUS_FD)?;
    Ok(StatusReaders {
        info: info_r,
        json_status: status_r,
    })
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
    fn status_pipes_stay_close_on_exec_in_the_worker() {
        use nix::fcntl::{fcntl, FcntlArg};
        use std::os::fd::AsRawFd;
        let mut setup = ChildSetup::default();
        let readers = status_pipes(&mut setup).unwrap();
        for fd in [&readers.info, &readers.json_status] {
            let flags = fcntl(fd, FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);
        }
        for (fd, _) in &setup.pass {
            let flags = fcntl(fd, FcntlArg::F_GETFD).unwrap();
            assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);
            assert!(fd.as_raw_fd() >= super::super::child::FIRST_SOURCE_FD);
        }
        let targets: Vec<i32> = setup.pass.iter().map(|(_, t)| *t).collect();
        assert_eq!(targets, [INFO_FD, JSON_STATUS_FD]);
    }
}
