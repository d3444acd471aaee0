//! A snapshot of the process table from `/proc` (Linux): pid, parent,
//! process group and state of every process. Where `/proc` is absent (a
//! FreeBSD host without procfs) the snapshot is empty and the supervisor
//! relies on process groups and jails alone.

use std::fs;

/// One process, as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    pub state: char,
    /// Start time, clock ticks since boot (field 22 of `stat`).
    pub start: u64,
}

impl Proc {
    /// A zombie has exited; only its parent's wait is missing.
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the line of `/proc/PID/stat`. The command name sits in
/// parentheses and may itself hold spaces and parentheses: fields are read
/// after the last `)`.
pub fn parse_stat(line: &str) -> Option<Proc> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let pid = line[..open].trim().parse().ok()?;
    let mut rest = line.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    // Fields 6 to 21 (session ... itrealvalue), then starttime.
    let start = rest.nth(16).and_then(|s| s.parse().ok()).unwrap_or(0);
    Some(Proc {
        pid,
        ppid,
        pgrp,
        state,
        start,
    })
}

/// Every process now (empty without procfs).
pub fn snapshot() -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|s| parse_stat(&s))
        .collect()
}

/// Processes (and threads) the kernel has created since boot: the
/// `processes` line of `/proc/stat`.
pub fn forks() -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("processes "))
        .and_then(|n| n.trim().parse().ok())
}

fn read_number(path: &str) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Kernel forks that may have happened between an agent's pid being given
/// out and [`forks`] being read after its spawn (far more than can happen).
const FORKS_MARGIN: u64 = 1024;

/// Widest range of pids [`snapshot_since`] reads one by one; beyond it a
/// whole [`snapshot`] is no dearer.
const MAX_SPAN: i32 = 4096;

/// The pids given out since `first` (itself included), in order, when the
/// kernel's counters prove that no other pid can have been: pids are given
/// out cyclically upwards from the last one (`last`, below `max`, wrapping
/// to the first free pid above 300), so with fewer forks since than `max`
/// every newer process lies in the cyclic range `first..=last`.
fn pids_since(first: i32, last: i32, max: i32, forks_since: u64) -> Option<Vec<i32>> {
    if forks_since + FORKS_MARGIN >= max as u64 || first <= 0 || first >= max {
        return None;
    }
    let pids: Vec<i32> = if last >= first {
        (first..=last).collect()
    } else {
        (first..max).chain(1..=last).collect()
    };
    (pids.len() as i32 <= MAX_SPAN).then_some(pids)
}

/// Every process created since `first` was (the agent, whose descendants
/// and marked processes are all newer), read pid by pid; `None` when that
/// cannot be proven complete (see [`pids_since`]): take a [`snapshot`].
/// `forks_at_start` is [`forks`] read right after `first` was spawned.
pub fn snapshot_since(first: i32, forks_at_start: u64) -> Option<Vec<Proc>> {
    let forks_since = forks()?.checked_sub(forks_at_start)?;
    let last = read_number("/proc/sys/kernel/ns_last_pid")?;
    let max = read_number("/proc/sys/kernel/pid_max")?;
    let pids = pids_since(first, last, max, forks_since)?;
    Some(pids.into_iter().filter_map(process).collect())
}

/// The state of one process, `None` when it is gone.
pub fn process(pid: i32) -> Option<Proc> {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| parse_stat(&s))
}

/// Live descendants of `root` (not `root` itself), by parent links.
pub fn descendants(procs: &[Proc], root: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for p in procs.iter().filter(|p| p.ppid == parent && p.pid != root) {
            if !out.contains(&p.pid) {
                out.push(p.pid);
                frontier.push(p.pid);
            }
        }
    }
    out.retain(|pid| procs.iter().any(|p| p.pid == *pid && p.is_alive()));
    out
}

/// Live processes whose environment holds `VAR=value` exactly: the
/// attempt's marker survives `setsid` and reparenting.
pub fn marked(procs: &[Proc], var: &str, value: &str, since: u64) -> Vec<i32> {
    let needle = format!("{var}={value}");
    let me = std::process::id() as i32;
    procs
        .iter()
        .filter(|p| p.is_alive() && p.pid != me && p.start >= since)
        .filter(|p| {
            fs::read(format!("/proc/{}/environ", p.pid))
                .map(|env| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes()))
                .unwrap_or(false)
        })
        .map(|p| p.pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_and_parens_in_name() {
        let p = parse_stat(
            "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 93 0 0 0 0 0 0 0 20 0 1 0 5678 1000 10",
        )
        .unwrap();
        assert_eq!(
            p,
            Proc {
                pid: 1234,
                ppid: 1,
                pgrp: 1234,
                state: 'S',
                start: 5678,
            }
        );
    }

    #[test]
    fn descendants_follow_parent_links() {
        let procs = [
            Proc {
                pid: 10,
                ppid: 1,
                pgrp: 10,
                state: 'S',
                start: 0,
            },
            Proc {
                pid: 11,
                ppid: 10,
                pgrp: 10,
                state: 'S',
                start: 0,
            },
            Proc {
                pid: 12,
                ppid: 11,
                pgrp: 12,
                state: 'S',
                start: 0,
            },
            Proc {
                pid: 13,
                ppid: 11,
                pgrp: 12,
                state: 'Z',
                start: 0,
            },
            Proc {
                pid: 20,
                ppid: 1,
                pgrp: 20,
                state: 'S',
                start: 0,
            },
        ];
        let mut d = descendants(&procs, 10);
        d.sort();
        assert_eq!(d, vec![11, 12]);
    }

    #[test]
    fn pids_since_is_the_cyclic_range_when_no_full_cycle_can_have_passed() {
        assert_eq!(
            pids_since(100, 103, 32768, 3),
            Some(vec![100, 101, 102, 103])
        );
        assert_eq!(
            pids_since(32766, 2, 32768, 5),
            Some(vec![32766, 32767, 1, 2])
        );
        // Enough forks since for the pids to have gone all the way round.
        assert_eq!(pids_since(100, 103, 32768, 32768 - 1024), None);
        // Too wide to read one by one.
        assert_eq!(pids_since(100, 100 + 4096, 4_194_304, 4096), None);
        assert_eq!(pids_since(0, 10, 32768, 1), None);
    }

    /// A process that left the group and the parent links (`setsid`, its
    /// parent gone) is still found among the newer ones.
    #[test]
    fn snapshot_since_finds_an_escaped_grandchild() {
        let forks_at_start = forks().expect("/proc/stat");
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "setsid sleep 30 >/dev/null 2>&1 & echo $!"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let first = child.id() as i32;
        let out = child.wait_with_output().expect("sh ends");
        let escaped: i32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("pid");
        let found = snapshot_since(first, forks_at_start)
            .expect("few forks since: the range is provably complete");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(escaped),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert!(found.iter().any(|p| p.pid == escaped), "{found:?}");
    }

    #[test]
    fn this_process_is_visible() {
        let me = std::process::id() as i32;
        assert!(process(me).is_some_and(|p| p.is_alive()));
    }
}
