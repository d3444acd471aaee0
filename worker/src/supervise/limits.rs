//! The resource limits of a running attempt, watched: its cgroup's memory
//! and process limits (the kernel enforces them; the watch only notices
//! that one fired) and the size of its work dir (checked from outside every
//! few seconds, as no kernel limit is per directory). Crossing one ends the
//! attempt `failed` with a reason that names it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cgroup::{human_bytes, AttemptCgroup};

/// How often the cgroup's counters are read.
const COUNTERS_EVERY: Duration = Duration::from_millis(200);
/// How often the work dir is measured.
const WORKDIR_EVERY: Duration = Duration::from_secs(5);

/// What is watched for one attempt.
#[derive(Debug)]
pub struct LimitGuard {
    pub cgroup: Option<AttemptCgroup>,
    pub workdir: PathBuf,
    /// Bytes the work dir may hold.
    pub workdir_max: u64,
}

impl LimitGuard {
    /// Resolves once a limit is crossed, with the reason.
    pub async fn crossed(&self) -> String {
        let mut counters = tokio::time::interval(COUNTERS_EVERY);
        let mut measure = tokio::time::interval(WORKDIR_EVERY);
        loop {
            tokio::select! {
                _ = counters.tick() => {
                    if let Some(reason) = self.cgroup.as_ref().and_then(AttemptCgroup::fired) {
                        return reason;
                    }
                }
                _ = measure.tick() => {
                    if let Some(reason) = self.workdir_crossed().await {
                        return reason;
                    }
                }
            }
        }
    }

    /// The limit crossed by now, if any (checked once the agent ended).
    pub async fn check_now(&self) -> Option<String> {
        if let Some(reason) = self.cgroup.as_ref().and_then(AttemptCgroup::fired) {
            return Some(reason);
        }
        self.workdir_crossed().await
    }

    async fn workdir_crossed(&self) -> Option<String> {
        let dir = self.workdir.clone();
        let size = tokio::task::spawn_blocking(move || dir_size(&dir))
            .await
            .unwrap_or(0);
        workdir_reason(size, self.workdir_max)
    }

    /// Kills what is left in the cgroup and removes it.
    pub async fn release(&self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.remove(Duration::from_secs(5)).await;
        }
    }
}

/// The reason when a work dir of `size` bytes crossed `max`.
pub fn workdir_reason(size: u64, max: u64) -> Option<String> {
    (size > max).then(|| {
        format!(
            "work dir limit {} reached ({} used)",
            human_bytes(max),
            human_bytes(size)
        )
    })
}

/// Bytes in the files under `dir` (links not followed; unreadable parts
/// count as empty).
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_work_dir_over_its_limit_is_named() {
        assert_eq!(workdir_reason(10, 10), None);
        assert_eq!(
            workdir_reason(3 << 29, 1 << 30).as_deref(),
            Some("work dir limit 1 GiB reached (1.5 GiB used)")
        );
    }

    #[test]
    fn dir_size_counts_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x"), [0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("y"), [0u8; 24]).unwrap();
        assert_eq!(dir_size(dir.path()), 1024);
    }
}
