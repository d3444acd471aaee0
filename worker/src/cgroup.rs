//! One cgroup per attempt on Linux, holding the agent's memory and process
//! limits: cgroup v2 where the worker's own cgroup has the `memory` and
//! `pids` controllers (a systemd unit with `Delegate=`), cgroup v1's
//! `memory` and `pids` hierarchies where it does not (hosts without
//! systemd, like the CI machine, whose v2 hierarchy has no controllers).
//!
//! The attempt's cgroups are made under the worker's own ones (so a limit on
//! the worker, `MemoryMax=`, bounds its agents too) and joined by the
//! launcher between fork and exec ([`crate::supervise::child`]), so every
//! process of the sandbox is in them from its first instruction. While the
//! attempt runs the supervisor reads the kernel's counters (`oom_kill`,
//! pids `max`) and ends the attempt `failed`, naming the limit, once one
//! fired ([`fired`]). At the end every process left is killed
//! (`cgroup.kill` on v2, SIGKILL of each member on v1) and the cgroups
//! removed.
//!
//! What decides (paths, files written, which limit fired, the reason's
//! text) is pure and unit-tested; the rest is file writes.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, warn};

/// The limits one attempt's cgroup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupLimits {
    /// Bytes of memory (swap included where the kernel accounts it).
    pub memory: u64,
    /// Processes and threads.
    pub pids: u32,
}

/// Where the worker makes its attempts' cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2: the worker's own cgroup, `memory` and `pids` enabled for
    /// its children.
    V2 { base: PathBuf },
    /// cgroup v1: the worker's cgroups in the `memory` and `pids` hierarchies.
    V1 { memory: PathBuf, pids: PathBuf },
}

/// The worker's own cgroup paths, from `/proc/self/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnCgroups {
    pub unified: Option<String>,
    pub memory: Option<String>,
    pub pids: Option<String>,
}

/// Parses `/proc/self/cgroup` (`ID:CONTROLLERS:PATH` lines; v2 is `0::PATH`).
pub fn own_cgroups(text: &str) -> OwnCgroups {
    let mut own = OwnCgroups::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            own.unified = Some(path.to_string());
        }
        for c in controllers.split(',') {
            match c {
                "memory" => own.memory = Some(path.to_string()),
                "pids" => own.pids = Some(path.to_string()),
                _ => {}
            }
        }
    }
    own
}

/// `mount` joined with a cgroup path (`/a/b` under `/sys/fs/cgroup/memory`).
pub fn join(mount: &Path, cgroup: &str) -> PathBuf {
    mount.join(cgroup.trim_start_matches('/'))
}

/// The hierarchy to use: v2 when `v2_controllers` (the worker's own v2
/// cgroup's `cgroup.controllers`) has `memory` and `pids`, else v1 when
/// both v1 hierarchies are there, else none.
pub fn choose(
    own: &OwnCgroups,
    v2_mount: Option<&Path>,
    v2_controllers: Option<&str>,
    v1_root: &Path,
    v1_mounted: bool,
) -> Option<Hierarchy> {
    if let (Some(mount), Some(path), Some(controllers)) = (v2_mount, &own.unified, v2_controllers) {
        let has = |c: &str| controllers.split_whitespace().any(|x| x == c);
        if has("memory") && has("pids") {
            return Some(Hierarchy::V2 {
                base: join(mount, path),
            });
        }
    }
    if let (true, Some(memory), Some(pids)) = (v1_mounted, &own.memory, &own.pids) {
        return Some(Hierarchy::V1 {
            memory: join(&v1_root.join("memory"), memory),
            pids: join(&v1_root.join("pids"), pids),
        });
    }
    None
}

/// Finds the hierarchy on this host (see [`choose`]); on v2, gets the
/// worker's own cgroup ready to have children with controllers.
pub fn detect() -> Option<Hierarchy> {
    let root = Path::new("/sys/fs/cgroup");
    let own = own_cgroups(&std::fs::read_to_string("/proc/self/cgroup").ok()?);
    let v2_mount = [root.to_path_buf(), root.join("unified")]
        .into_iter()
        .find(|m| m.join("cgroup.controllers").is_file());
    let v2_controllers = match (&v2_mount, &own.unified) {
        (Some(m), Some(p)) => std::fs::read_to_string(join(m, p).join("cgroup.controllers")).ok(),
        _ => None,
    };
    let v1_mounted = ["memory", "pids"]
        .iter()
        .all(|c| root.join(c).join("cgroup.procs").is_file());
    let chosen = choose(
        &own,
        v2_mount.as_deref(),
        v2_controllers.as_deref(),
        root,
        v1_mounted,
    )?;
    match chosen {
        Hierarchy::V2 { base } => match enable_v2(&base) {
            Ok(()) => Some(Hierarchy::V2 { base }),
            Err(error) => {
                warn!(%error, base = %base.display(), "cgroup v2: cannot enable memory and pids for attempts");
                None
            }
        },
        Hierarchy::V1 { memory, pids } => {
            // The worker's own cgroups when it may make children there (root),
            // else the ones an administrator delegated to its user.
            let usable = |own: PathBuf, controller: &str| {
                [own, root.join(controller).join(V1_DELEGATED)]
                    .into_iter()
                    .find(|dir| can_make_children(dir))
            };
            Some(Hierarchy::V1 {
                memory: usable(memory, "memory")?,
                pids: usable(pids, "pids")?,
            })
        }
    }
}

/// The cgroup v1 dir, in each of the `memory` and `pids` hierarchies, that
/// an administrator hands to an unprivileged worker's user (`mkdir`, then
/// `chown` the dir, its `cgroup.procs` and `tasks`): see docs/CONFIG.md.
pub const V1_DELEGATED: &str = "colibri";

/// True when a child cgroup can be made (and removed) under `dir`.
fn can_make_children(dir: &Path) -> bool {
    let probe = dir.join(format!("colibri-probe-{}", std::process::id()));
    let made = std::fs::create_dir(&probe).is_ok();
    if made {
        let _ = std::fs::remove_dir(&probe);
    }
    made
}

/// The v2 "no internal processes" rule: a cgroup with processes cannot
/// give controllers to its children. The worker moves itself into a leaf
/// (`worker`) of its own cgroup, then enables `memory` and `pids` below.
fn enable_v2(base: &Path) -> io::Result<()> {
    let control = base.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control)?;
    if enabled.contains("memory") && enabled.contains("pids") {
        return Ok(());
    }
    let leaf = base.join("worker");
    std::fs::create_dir_all(&leaf)?;
    let members = std::fs::read_to_string(base.join("cgroup.procs"))?;
    for pid in members.split_whitespace() {
        // A process that exits meanwhile is no error.
        let _ = std::fs::write(leaf.join("cgroup.procs"), pid);
    }
    std::fs::write(&control, "+memory +pids")
}

/// The cgroup dir(s) of the attempt `name`.
pub fn attempt_dirs(hierarchy: &Hierarchy, name: &str) -> Vec<PathBuf> {
    match hierarchy {
        Hierarchy::V2 { base } => vec![base.join(name)],
        Hierarchy::V1 { memory, pids } => vec![memory.join(name), pids.join(name)],
    }
}

/// The files written to set `limits`, in order, each `(file, value)`; a file
/// marked optional may be missing (swap accounting off).
pub fn limit_files(
    hierarchy: &Hierarchy,
    name: &str,
    limits: CgroupLimits,
) -> Vec<(PathBuf, String, bool)> {
    let (memory, pids) = (limits.memory.to_string(), limits.pids.to_string());
    match hierarchy {
        Hierarchy::V2 { base } => {
            let dir = base.join(name);
            vec![
                (dir.join("memory.max"), memory, false),
                (dir.join("memory.swap.max"), "0".into(), true),
                (dir.join("pids.max"), pids, false),
            ]
        }
        Hierarchy::V1 {
            memory: mem_root,
            pids: pids_root,
        } => {
            let mem = mem_root.join(name);
            vec![
                (mem.join("memory.limit_in_bytes"), memory.clone(), false),
                (mem.join("memory.memsw.limit_in_bytes"), memory, true),
                (pids_root.join(name).join("pids.max"), pids, false),
            ]
        }
    }
}

/// The kernel's counters of an attempt's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Processes the OOM killer killed in the cgroup.
    pub oom_kills: u64,
    /// Forks refused at the process limit.
    pub pids_refused: u64,
}

/// `key N` in a flat-keyed cgroup file (`memory.events`, `pids.events`,
/// v1 `memory.oom_control`).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some(key))
            .then(|| words.next()?.parse().ok())
            .flatten()
    })
}

/// The limit that fired, as the attempt's reason: memory first (an agent
/// killed by the OOM killer may also have failed to fork).
pub fn fired(counters: Counters, limits: CgroupLimits) -> Option<String> {
    if counters.oom_kills > 0 {
        return Some(format!(
            "memory limit {} reached (oom kill)",
            human_bytes(limits.memory)
        ));
    }
    if counters.pids_refused > 0 {
        return Some(format!(
            "process limit {} reached (fork refused)",
            limits.pids
        ));
    }
    None
}

/// Bytes as people write them: `4 GiB`, `512 MiB`, `1.5 GiB`, `100 bytes`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{:.1} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} bytes")
}

/// One attempt's cgroup(s), removed by [`AttemptCgroup::remove`].
#[derive(Debug, Clone)]
pub struct AttemptCgroup {
    v2: bool,
    dirs: Vec<PathBuf>,
    pub limits: CgroupLimits,
}

impl AttemptCgroup {
    /// Makes the attempt's cgroup(s) (a leftover of the same name is
    /// removed first) with `limits` set.
    pub fn create(
        hierarchy: &Hierarchy,
        name: &str,
        limits: CgroupLimits,
    ) -> io::Result<AttemptCgroup> {
        let cgroup = AttemptCgroup {
            v2: matches!(hierarchy, Hierarchy::V2 { .. }),
            dirs: attempt_dirs(hierarchy, name),
            limits,
        };
        for dir in &cgroup.dirs {
            if dir.exists() {
                cgroup.kill_all();
                let _ = std::fs::remove_dir(dir);
            }
            std::fs::create_dir(dir)?;
        }
        for (file, value, optional) in limit_files(hierarchy, name, limits) {
            match std::fs::write(&file, &value) {
                Ok(()) => {}
                Err(e) if optional && e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    cgroup.remove_now();
                    return Err(io::Error::new(
                        e.kind(),
                        format!("writing {value} to {}: {e}", file.display()),
                    ));
                }
            }
        }
        Ok(cgroup)
    }

    /// The `cgroup.procs` files the launcher joins.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The kernel's counters now.
    pub fn counters(&self) -> Counters {
        let read = |dir: &Path, file: &str, key: &str| {
            std::fs::read_to_string(dir.join(file))
                .ok()
                .and_then(|t| keyed(&t, key))
                .unwrap_or(0)
        };
        let mut c = Counters::default();
        for dir in &self.dirs {
            let memory = if self.v2 {
                "memory.events"
            } else {
                "memory.oom_control"
            };
            c.oom_kills += read(dir, memory, "oom_kill");
            c.pids_refused += read(dir, "pids.events", "max");
        }
        c
    }

    /// Which limit fired, as the attempt's reason.
    pub fn fired(&self) -> Option<String> {
        fired(self.counters(), self.limits)
    }

    fn members(&self) -> Vec<i32> {
        self.dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect()
    }

    /// Kills every process in the cgroup(s).
    pub fn kill_all(&self) {
        if self.v2 {
            for dir in &self.dirs {
                let _ = std::fs::write(dir.join("cgroup.kill"), "1");
            }
            return;
        }
        for pid in self.members() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    fn remove_now(&self) -> bool {
        self.dirs
            .iter()
            .all(|d| std::fs::remove_dir(d).is_ok() || !d.exists())
    }

    /// Kills what is left and removes the cgroup(s), waiting (at most
    /// `limit`) for the kernel to let the last processes go.
    pub async fn remove(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.kill_all();
            if self.remove_now() {
                debug!(dirs = ?self.dirs, "attempt cgroup removed");
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(dirs = ?self.dirs, members = ?self.members(), "attempt cgroup not removed");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CI_HOST: &str =
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/d1066\n1:cpu:/\n0::/\n";
    const SYSTEMD_HOST: &str = "0::/system.slice/colibri-worker.service\n";
    const LIMITS: CgroupLimits = CgroupLimits {
        memory: 4 << 30,
        pids: 512,
    };

    #[test]
    fn own_cgroups_are_read_per_controller() {
        let own = own_cgroups(CI_HOST);
        assert_eq!(own.memory.as_deref(), Some("/process_api/d1066"));
        assert_eq!(own.pids.as_deref(), Some("/"));
        assert_eq!(own.unified.as_deref(), Some("/"));
        let own = own_cgroups(SYSTEMD_HOST);
        assert_eq!(
            own.unified.as_deref(),
            Some("/system.slice/colibri-worker.service")
        );
        assert_eq!(own.memory, None);
    }

    #[test]
    fn v1_is_chosen_where_v2_has_no_controllers() {
        let own = own_cgroups(CI_HOST);
        let unified = PathBuf::from("/sys/fs/cgroup/unified");
        let got = choose(
            &own,
            Some(&unified),
            Some("hugetlb\n"),
            Path::new("/sys/fs/cgroup"),
            true,
        );
        assert_eq!(
            got,
            Some(Hierarchy::V1 {
                memory: "/sys/fs/cgroup/memory/process_api/d1066".into(),
                pids: "/sys/fs/cgroup/pids".into(),
            })
        );
        assert_eq!(
            choose(
                &own,
                Some(&unified),
                Some("hugetlb"),
                Path::new("/sys/fs/cgroup"),
                false
            ),
            None
        );
    }

    #[test]
    fn v2_is_chosen_where_memory_and_pids_are_delegated() {
        let own = own_cgroups(SYSTEMD_HOST);
        let mount = PathBuf::from("/sys/fs/cgroup");
        let got = choose(&own, Some(&mount), Some("cpu memory pids"), &mount, false);
        assert_eq!(
            got,
            Some(Hierarchy::V2 {
                base: "/sys/fs/cgroup/system.slice/colibri-worker.service".into()
            })
        );
        assert_eq!(
            choose(&own, Some(&mount), Some("cpu io"), &mount, false),
            None
        );
    }

    #[test]
    fn limit_files_per_hierarchy() {
        let v1 = Hierarchy::V1 {
            memory: "/m".into(),
            pids: "/p".into(),
        };
        let got = limit_files(&v1, "colibri_t_1", LIMITS);
        let want = vec![
            (
                PathBuf::from("/m/colibri_t_1/memory.limit_in_bytes"),
                "4294967296".to_string(),
                false,
            ),
            (
                PathBuf::from("/m/colibri_t_1/memory.memsw.limit_in_bytes"),
                "4294967296".to_string(),
                true,
            ),
            (
                PathBuf::from("/p/colibri_t_1/pids.max"),
                "512".to_string(),
                false,
            ),
        ];
        assert_eq!(got, want);
        assert_eq!(
            attempt_dirs(&v1, "a"),
            vec![PathBuf::from("/m/a"), PathBuf::from("/p/a")]
        );
        let v2 = Hierarchy::V2 { base: "/b".into() };
        let files: Vec<PathBuf> = limit_files(&v2, "a", LIMITS)
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(
            files,
            ["/b/a/memory.max", "/b/a/memory.swap.max", "/b/a/pids.max"].map(PathBuf::from)
        );
    }

    #[test]
    fn the_limit_that_fired_is_named() {
        let v2_events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n";
        assert_eq!(keyed(v2_events, "oom_kill"), Some(1));
        assert_eq!(keyed(v2_events, "oom"), Some(1));
        let v1_oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed(v1_oom, "oom_kill"), Some(2));
        assert_eq!(keyed("max 0\n", "max"), Some(0));
        assert_eq!(fired(Counters::default(), LIMITS), None);
        assert_eq!(
            fired(
                Counters {
                    oom_kills: 1,
                    pids_refused: 3
                },
                LIMITS
            )
            .as_deref(),
            Some("memory limit 4 GiB reached (oom kill)")
        );
        assert_eq!(
            fired(
                Counters {
                    oom_kills: 0,
                    pids_refused: 3
                },
                LIMITS
            )
            .as_deref(),
            Some("process limit 512 reached (fork refused)")
        );
    }

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(4 << 30), "4 GiB");
        assert_eq!(human_bytes(512 << 20), "512 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(human_bytes(100), "100 bytes");
    }

    /// The real thing where the machine has it (the CI machine: v1, root).
    #[tokio::test]
    async fn an_attempt_cgroup_limits_and_is_removed_on_this_host() {
        let Some(hierarchy) = detect() else {
            eprintln!("SKIPPED: no usable cgroup hierarchy on this host");
            return;
        };
        let name = format!("colibri_unit_{}", std::process::id());
        let cgroup = match AttemptCgroup::create(&hierarchy, &name, LIMITS) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("SKIPPED: cannot make cgroups here: {e}");
                return;
            }
        };
        for dir in attempt_dirs(&hierarchy, &name) {
            assert!(dir.is_dir(), "{}", dir.display());
        }
        assert_eq!(cgroup.counters(), Counters::default());
        cgroup.remove(Duration::from_secs(5)).await;
        for dir in attempt_dirs(&hierarchy, &name) {
            assert!(!dir.exists(), "{}", dir.display());
        }
    }
}
