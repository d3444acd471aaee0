//! The seccomp filters bwrap installs in the sandbox just before it runs the
//! agent (`--add-seccomp-fd`), compiled with `seccompiler` (the Firecracker
//! project's crate).
//!
//! The deny list follows Flatpak's and Codex's Linux sandbox: nothing that
//! changes mounts, namespaces or the kernel, nothing that reaches into other
//! processes (ptrace, process_vm_*), no kernel keyring, no bpf or perf, and
//! no terminal injection. Each is refused with `EPERM`, so a tool that tries
//! one sees an ordinary permission error. `clone` is refused only with a
//! namespace flag; `clone3` passes its flags in memory a filter cannot read,
//! so it is refused with `ENOSYS`, and the C library falls back to `clone`
//! (Flatpak and Chromium do the same). That needs a second program, as one
//! program has one match action.
//!
//! A program is handed to bwrap as bytes: `struct sock_filter` in the
//! machine's byte order, one after another.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Why no filter could be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SeccompError {
    #[error("seccomp: no filter for the {0} architecture")]
    Arch(&'static str),
    #[error("seccomp: {0}")]
    Compile(#[from] seccompiler::BackendError),
}

/// Syscalls refused outright (`EPERM`).
pub const DENIED: &[(&str, i64)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("syslog", libc::SYS_syslog),
    ("quotactl", libc::SYS_quotactl),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
];

/// `clone` flags that make a namespace: `clone` with any is refused.
pub const NAMESPACE_FLAGS: &[(&str, i32)] = &[
    ("CLONE_NEWNS", libc::CLONE_NEWNS),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
    ("CLONE_NEWPID", libc::CLONE_NEWPID),
    ("CLONE_NEWNET", libc::CLONE_NEWNET),
    ("CLONE_NEWTIME", 0x80),
];

/// `ioctl` requests refused: faking terminal input and the console's.
pub const DENIED_IOCTLS: &[(&str, u64)] = &[("TIOCSTI", libc::TIOCSTI), ("TIOCLINUX", 0x541C)];

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))
}

fn arg_has(index: u8, bits: u64) -> Result<SeccompRule, SeccompError> {
    let cond = SeccompCondition::new(
        index,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(bits),
        bits,
    )?;
    Ok(SeccompRule::new(vec![cond])?)
}

fn arg_is(index: u8, value: u64) -> Result<SeccompRule, SeccompError> {
    let cond = SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)?;
    Ok(SeccompRule::new(vec![cond])?)
}

/// The `EPERM` program: [`DENIED`], `clone` with [`NAMESPACE_FLAGS`],
/// `ioctl` with [`DENIED_IOCTLS`].
pub fn deny_program() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|(_, flag)| arg_has(0, *flag as u64))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let ioctl_rules = DENIED_IOCTLS
        .iter()
        .map(|(_, request)| arg_is(1, *request))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch()?,
    )?;
    Ok(filter.try_into()?)
}

/// The `ENOSYS` program: `clone3`, so that the C library uses `clone`.
pub fn clone3_program() -> Result<BpfProgram, SeccompError> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )?;
    Ok(filter.try_into()?)
}

/// Both programs as bwrap reads them, in the order they are installed.
pub fn programs() -> Result<[Vec<u8>; 2], SeccompError> {
    Ok([bytes(&deny_program()?), bytes(&clone3_program()?)])
}

/// `program` as the kernel's `struct sock_filter` array.
pub fn bytes(program: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for ins in program {
        out.extend_from_slice(&ins.code.to_ne_bytes());
        out.push(ins.jt);
        out.push(ins.jf);
        out.extend_from_slice(&ins.k.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_programs_compile_for_this_machine() {
        let [deny, clone3] = programs().unwrap();
        assert!(!deny.is_empty() && deny.len() % 8 == 0);
        assert!(!clone3.is_empty() && clone3.len() % 8 == 0);
        // The kernel takes at most 4096 instructions per program.
        assert!(deny.len() / 8 < 4096);
    }

    #[test]
    fn the_deny_list_holds_what_the_issue_names() {
        let names: Vec<&str> = DENIED.iter().map(|(n, _)| *n).collect();
        for must in [
            "mount",
            "umount2",
            "ptrace",
            "keyctl",
            "bpf",
            "perf_event_open",
            "init_module",
            "finit_module",
            "delete_module",
            "kexec_load",
            "kexec_file_load",
            "unshare",
            "setns",
        ] {
            assert!(names.contains(&must), "{must} is not denied");
        }
        let flags: i32 = NAMESPACE_FLAGS
            .iter()
            .map(|(_, f)| *f)
            .fold(0, |a, f| a | f);
        assert_eq!(flags & libc::CLONE_NEWUSER, libc::CLONE_NEWUSER);
        assert_eq!(flags & libc::CLONE_THREAD, 0, "threads must stay allowed");
    }
}
