//! Killing an agent's whole tree: SIGTERM, a grace period, then SIGKILL.
//!
//! Targets are found three ways, because an agent can leave its group:
//! - the process group the agent was spawned in (`process_group(0)`), with
//!   `killpg`;
//! - every descendant of the agent by parent links in `/proc`;
//! - every process carrying the attempt's marker variable in its environment
//!   (it survives `setsid` and reparenting to init; only a process that
//!   clears its environment AND double-forks escapes it, and under bwrap the
//!   pid namespace, whose init dies with the sandbox, catches even that).

use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::procfs;

/// Name of the environment variable that marks an attempt's processes.
pub const MARKER_VAR: &str = "COLIBRI_ATTEMPT_MARKER";

/// The processes of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// Process group (the agent's pid).
    pub pgid: i32,
    /// Value of [`MARKER_VAR`] in the attempt's environment.
    pub marker: String,
    /// Inside a pid namespace or a jail, whose end kills every process in it.
    pub contained: bool,
    /// The agent's start time (clock ticks since boot): processes older than
    /// it cannot be of this attempt, so their environment is not read.
    pub since: u64,
    /// The kernel's fork count read right after the agent was spawned: lets
    /// [`Tree::members`] read only the processes newer than the agent.
    pub forks_at_start: Option<u64>,
}

impl Tree {
    /// Live pids of the tree now (group members, descendants, marked).
    pub fn members(&self) -> Vec<i32> {
        // Every member is newer than the agent: read only those when the
        // kernel's counters allow, else every process.
        let procs = self
            .forks_at_start
            .and_then(|forks| procfs::snapshot_since(self.pgid, forks))
            .unwrap_or_else(procfs::snapshot);
        let mut pids: Vec<i32> = procs
            .iter()
            .filter(|p| p.pgrp == self.pgid && p.is_alive())
            .map(|p| p.pid)
            .collect();
        pids.extend(procfs::descendants(&procs, self.pgid));
        pids.extend(procfs::marked(&procs, MARKER_VAR, &self.marker, self.since));
        if procs.is_empty() {
            // No procfs: the group is all we can see.
            if killpg(Pid::from_raw(self.pgid), None).is_ok() {
                pids.push(self.pgid);
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// SIGKILL to the process group only: one system call.
    pub fn kill_group(&self) {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
    }

    fn signal(&self, signal: Signal) -> Vec<i32> {
        let members = self.members();
        let _ = killpg(Pid::from_raw(self.pgid), signal);
        for pid in &members {
            let _ = kill(Pid::from_raw(*pid), signal);
        }
        members
    }

    /// SIGTERM to every member, up to `grace` for them to go, then SIGKILL
    /// until none is left (bounded: a process stuck in the kernel is logged).
    pub async fn kill(&self, grace: Duration) {
        let first = self.signal(Signal::SIGTERM);
        debug!(
            pgid = self.pgid,
            members = first.len(),
            "SIGTERM sent to the tree"
        );
        if self.wait_gone(grace).await {
            return;
        }
        let left = self.signal(Signal::SIGKILL);
        debug!(
            pgid = self.pgid,
            members = left.len(),
            "SIGKILL sent to the tree"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.wait_gone(Duration::from_millis(200)).await {
                return;
            }
            self.signal(Signal::SIGKILL);
        }
        warn!(pgid = self.pgid, left = ?self.members(), "processes survived SIGKILL");
    }

    /// Polls until the tree is empty, at most `limit`; true when empty.
    async fn wait_gone(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.members().is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
