//! What a spawned agent launcher does between `fork` and `exec`, in this
//! order: join its attempt's cgroups, set its rlimits, take the fds meant
//! for it at fixed numbers, mark every other fd close-on-exec, drop to the
//! agent user (supplementary groups cleared, then gid, then uid) and set
//! no_new_privs.
//!
//! This is the one place in the worker with `unsafe`: `pre_exec` runs in the
//! forked child of a multi-threaded process, where only async-signal-safe
//! calls are allowed. The hook below makes plain syscalls on values prepared
//! in the parent (open fds, numbers) and allocates nothing.
//!
//! Why here and not in the parent: every fd of the worker is close-on-exec
//! from the moment it exists (the status pipes included), and a child gets
//! its own copies by `dup2` in its own fd table, so a bwrap started at the
//! same moment by another attempt can never inherit them (the leak of issue
//! 12, item 3, came from making the parent's fds inheritable for a moment).
//! The `close_range` sweep then covers fds that libraries opened without
//! `O_CLOEXEC`.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg};

/// The lowest fd number a passed fd may have in the parent, above every
/// target number, so that no `dup2` in the child overwrites a source.
pub const FIRST_SOURCE_FD: RawFd = 16;

/// The uid and gid the launcher runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// Everything the launcher does before `exec`.
#[derive(Debug, Default)]
pub struct ChildSetup {
    /// `cgroup.procs` files, opened for writing: the child writes `0` (itself).
    pub cgroups: Vec<OwnedFd>,
    /// fds the child gets, each at its target number (3, 4, ...).
    pub pass: Vec<(OwnedFd, RawFd)>,
    /// Dropped to when set (the worker runs as root).
    pub user: Option<Ids>,
    /// An rlimit layer under the cgroup: no core dumps (they would land in
    /// the work dir), and at most this many open files when set.
    pub max_open_files: Option<u64>,
}

impl ChildSetup {
    /// Passes `fd` to the child as `target` (moved above the targets first).
    pub fn pass(&mut self, fd: OwnedFd, target: RawFd) -> io::Result<()> {
        let fd = above_targets(fd)?;
        self.pass.push((fd, target));
        Ok(())
    }

    /// Installs the hook on `cmd`. The fds stay open in the parent as long
    /// as `cmd` lives: drop it right after spawning.
    pub fn install(self, cmd: &mut tokio::process::Command) {
        let first_free = self
            .pass
            .iter()
            .map(|(_, target)| target + 1)
            .max()
            .unwrap_or(3)
            .max(3);
        let raw_cgroups: Vec<RawFd> = self.cgroups.iter().map(AsRawFd::as_raw_fd).collect();
        let raw_pass: Vec<(RawFd, RawFd)> = self
            .pass
            .iter()
            .map(|(fd, target)| (fd.as_raw_fd(), *target))
            .collect();
        let max_open_files = self.max_open_files;
        let user = self.user;
        // Owned by the closure, so closed in the parent when `cmd` drops.
        let keep = (self.cgroups, self.pass);
        let hook = move || {
            let _ = &keep;
            in_child(&raw_cgroups, max_open_files, &raw_pass, first_free, user)
        };
        // SAFETY: `in_child` makes only async-signal-safe syscalls
        // (write, setrlimit, dup2, fcntl, close_range, setgroups, setgid,
        // setuid, prctl) on values prepared before the fork; it neither
        // allocates nor takes locks.
        unsafe {
            cmd.pre_exec(hook);
        }
    }
}

/// `fd` at a number at least [`FIRST_SOURCE_FD`], close-on-exec.
fn above_targets(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= FIRST_SOURCE_FD {
        return Ok(fd);
    }
    let raw = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(FIRST_SOURCE_FD)).map_err(io::Error::from)?;
    // SAFETY: `raw` was just returned by F_DUPFD_CLOEXEC and is owned by no one else.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

fn check(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Runs in the forked child. See the module docs for the order.
fn in_child(
    cgroups: &[RawFd],
    max_open_files: Option<u64>,
    pass: &[(RawFd, RawFd)],
    first_free: RawFd,
    user: Option<Ids>,
) -> io::Result<()> {
    // SAFETY (whole function): plain syscalls on fds and numbers owned by
    // this process; no allocation.
    unsafe {
        for &fd in cgroups {
            if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        check(libc::setrlimit(libc::RLIMIT_CORE, &no_core) as libc::c_long)?;
        if let Some(n) = max_open_files {
            let files = libc::rlimit {
                rlim_cur: n as libc::rlim_t,
                rlim_max: n as libc::rlim_t,
            };
            check(libc::setrlimit(libc::RLIMIT_NOFILE, &files) as libc::c_long)?;
        }
        for &(source, target) in pass {
            // The sources are all >= FIRST_SOURCE_FD > every target.
            check(libc::dup2(source, target) as libc::c_long)?;
        }
        close_others(first_free);
        if let Some(ids) = user {
            check(libc::setgroups(0, std::ptr::null()) as libc::c_long)?;
            check(libc::setgid(ids.gid) as libc::c_long)?;
            check(libc::setuid(ids.uid) as libc::c_long)?;
            if libc::getuid() == 0 || libc::geteuid() == 0 {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long)?;
    }
    Ok(())
}

/// Marks every fd from `first` on close-on-exec (closing them here would
/// also close the pipe on which the standard library reports a failed exec).
#[cfg(target_os = "linux")]
unsafe fn close_others(first: RawFd) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    let done = libc::syscall(
        libc::SYS_close_range,
        first as libc::c_uint,
        libc::c_uint::MAX,
        CLOSE_RANGE_CLOEXEC,
    );
    if done < 0 {
        // Before Linux 5.11: one by one, up to a bound.
        for fd in first..4096 {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

#[cfg(not(target_os = "linux"))]
unsafe fn close_others(first: RawFd) {
    for fd in first..4096 {
        libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    /// The fds a child sees, as `ls /proc/self/fd` lists them in it.
    async fn child_fds(setup: ChildSetup) -> Vec<i32> {
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.args(["-c", "ls /proc/$$/fd"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        setup.install(&mut cmd);
        let out = cmd.output().await.unwrap();
        let mut fds: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        fds.sort();
        fds
    }

    #[tokio::test]
    async fn a_child_gets_exactly_stdio_and_its_passed_fds() {
        // An inheritable fd the worker leaked by mistake.
        let (leak_r, _leak_w) = nix::unistd::pipe().unwrap();
        fcntl(&leak_r, FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
        let (r, _w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut setup = ChildSetup::default();
        setup.pass(r, 3).unwrap();
        let fds = child_fds(setup).await;
        // 255 is the shell's own; the rest must be 0..=3.
        let fds: Vec<i32> = fds.into_iter().filter(|fd| *fd < 200).collect();
        assert_eq!(fds, [0, 1, 2, 3]);
    }
}
