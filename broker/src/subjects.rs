//! Every subject Colibri uses, built in one place. `subjects.md` documents
//! each one: publisher, subscribers, payload, headers, stream.
//!
//! ```text
//! colibri.task.<task>.submit        client    -> scheduler  COLIBRI_INTAKE (work queue)
//! colibri.task.<task>.report.<worker> worker  -> scheduler  COLIBRI_INTAKE (work queue)
//! colibri.task.<task>.state         scheduler -> anyone     COLIBRI_EVENTS (limits)
//! colibri.worker.<worker>.state     scheduler -> anyone     COLIBRI_EVENTS (limits)
//! colibri.work.<worker>             scheduler -> worker     COLIBRI_WORK (work queue)
//! colibri.presence.<worker>         worker    -> scheduler  core NATS (heartbeats)
//! colibri.session.<session>.<worker>.<kind>  worker -> anyone  COLIBRI_SESSIONS (limits)
//! colibri.api.<endpoint>            CLI       -> scheduler  core request/reply ($SRV service)
//! ```
//!
//! `nats sub 'colibri.task.>'` shows the whole lifecycle of every task.

use crate::ids::{SessionId, TaskId, WorkerId};

pub const PREFIX: &str = "colibri";

/// Wildcard that matches every task lifecycle subject.
pub const TASK_ALL: &str = "colibri.task.>";
pub const TASK_SUBMIT_ALL: &str = "colibri.task.*.submit";
pub const TASK_REPORT_ALL: &str = "colibri.task.*.report.*";
pub const TASK_STATE_ALL: &str = "colibri.task.*.state";
pub const WORKER_STATE_ALL: &str = "colibri.worker.*.state";
pub const WORK_ALL: &str = "colibri.work.>";
pub const PRESENCE_ALL: &str = "colibri.presence.*";
pub const SESSION_ALL: &str = "colibri.session.>";
pub const API_PREFIX: &str = "colibri.api";

pub fn task_submit(task: &TaskId) -> String {
    format!("colibri.task.{task}.submit")
}
/// A worker's reports name it in the subject, where permissions can pin
/// each host to its own (the scheduler checks the body against it).
pub fn task_report(task: &TaskId, worker: &WorkerId) -> String {
    format!("colibri.task.{task}.report.{}", worker.token())
}
/// Every worker's reports on one task.
pub fn task_report_any(task: &TaskId) -> String {
    format!("colibri.task.{task}.report.*")
}
/// Subjects a worker may report on: its own.
pub fn worker_reports(worker: &WorkerId) -> String {
    format!("colibri.task.*.report.{}", worker.token())
}
pub fn task_state(task: &TaskId) -> String {
    format!("colibri.task.{task}.state")
}
/// Every lifecycle subject of one task.
pub fn task_any(task: &TaskId) -> String {
    format!("colibri.task.{task}.*")
}
pub fn worker_state(worker: &WorkerId) -> String {
    format!("colibri.worker.{}.state", worker.token())
}
pub fn work(worker: &WorkerId) -> String {
    format!("colibri.work.{}", worker.token())
}
pub fn presence(worker: &WorkerId) -> String {
    format!("colibri.presence.{}", worker.token())
}
/// The subject a worker publishes one kind of event of a session on:
/// `colibri.session.<session>.<worker>.<kind>`. The worker is in the
/// subject so that a host's permissions allow only its own sessions.
pub fn session(session: &SessionId, worker: &WorkerId, kind: &str) -> String {
    format!("colibri.session.{session}.{}.{kind}", worker.token())
}
/// One kind of event of a session, whichever worker runs it (to subscribe).
pub fn session_kind(session: &SessionId, kind: &str) -> String {
    format!("colibri.session.{session}.*.{kind}")
}
/// Every session subject `worker` may publish on.
pub fn worker_sessions(worker: &WorkerId) -> String {
    format!("colibri.session.*.{}.>", worker.token())
}
/// Every event subject of one session.
pub fn session_any(session: &SessionId) -> String {
    format!("colibri.session.{session}.>")
}

/// The scheduler's request endpoints (`colibri.api.<name>`).
pub mod api {
    pub const SERVICE_NAME: &str = "colibri-scheduler";
    pub const CREATE_TASK: &str = "create-task";
    pub const LIST_TASKS: &str = "list-tasks";
    pub const SHOW_TASK: &str = "show-task";
    pub const CANCEL: &str = "cancel";
    pub const STATUS: &str = "status";
    pub const SNAPSHOT: &str = "snapshot";

    /// Full subject of an endpoint.
    pub fn subject(endpoint: &str) -> String {
        format!("{}.{endpoint}", super::API_PREFIX)
    }
}

/// Extracts the task id from `colibri.task.<task>.<kind>`.
pub fn parse_task_subject(subject: &str) -> Option<(TaskId, &str)> {
    let mut parts = subject.split('.');
    if parts.next()? != PREFIX || parts.next()? != "task" {
        return None;
    }
    let id = parts.next()?.parse().ok()?;
    let kind = parts.next()?;
    if kind == "report" {
        // The sender's token follows (see [`report_sender`]).
        parts.next()?;
    }
    parts.next().is_none().then_some((id, kind))
}

/// The worker token a report subject names (`colibri.task.<task>.report.<worker>`).
pub fn report_sender(subject: &str) -> Option<&str> {
    let mut parts = subject.split('.');
    let ok = parts.next()? == PREFIX && parts.next()? == "task";
    parts.next()?;
    let ok = ok && parts.next()? == "report";
    let sender = parts.next()?;
    (ok && parts.next().is_none()).then_some(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_subjects_use_tokens() {
        let w = WorkerId::parse("debby.lan").unwrap();
        assert_eq!(work(&w), "colibri.work.debby_dlan");
        assert_eq!(presence(&w), "colibri.presence.debby_dlan");
    }

    #[test]
    fn task_subject_roundtrip() {
        let id = TaskId::new();
        let w = WorkerId::parse("debby.lan").unwrap();
        assert_eq!(
            parse_task_subject(&task_report(&id, &w)),
            Some((id, "report"))
        );
        assert_eq!(report_sender(&task_report(&id, &w)), Some("debby_dlan"));
        assert_eq!(
            parse_task_subject(&format!("colibri.task.{id}.report")),
            None
        );
        assert_eq!(report_sender(&task_submit(&id)), None);
        assert_eq!(parse_task_subject("colibri.task.nope.report.w"), None);
        assert_eq!(parse_task_subject("colibri.work.x"), None);
    }
}
