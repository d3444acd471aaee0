//! The permission set of each role, as data. nats-server enforces these:
//! anything not allowed here is a permission violation for that connection.
//!
//! | role      | publishes                                                         | subscribes                    |
//! |-----------|-------------------------------------------------------------------|-------------------------------|
//! | worker    | own presence, reports, session events, JS API of its own consumer, config reads, transcript store (put, get) | own inbox only |
//! | scheduler | task/worker state, orders, the JetStream API, intake acks         | presence, API, `$SRV`, inbox  |
//! | operator  | submit, every API endpoint, `$SRV`, cost mode (KV put), stream reads | `colibri.>`, inbox          |
//! | observer  | read endpoints only, `$SRV` discovery, stream reads               | task/worker state, sessions, inbox |
//!
//! Every role may answer a request it received (`allow_responses`): the
//! scheduler's endpoints need it, and so do JetStream flow-control replies.
//! Every identity must connect with `--inbox-prefix` [`super::inbox_prefix`].

use super::Name;
use crate::ids::WorkerId;
use crate::provision::{
    worker_consumer_name, CONFIG_BUCKET, EVENTS_STREAM, INTAKE_STREAM, SCHEDULER_CONSUMER,
    SESSIONS_STREAM, TRANSCRIPTS_BUCKET, TRANSCRIPTS_STREAM, WORK_STREAM,
};
use crate::subjects::{self, api};

/// What an identity is for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A host running `colibri-worker`.
    Worker,
    /// The `colibri-scheduler` service.
    Scheduler,
    /// A person or tool that submits, cancels, sets the cost mode, reads everything.
    Operator,
    /// Read-only: follows events and calls the read endpoints.
    Observer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Scheduler => "scheduler",
            Role::Operator => "operator",
            Role::Observer => "observer",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Subjects one identity may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May publish to the reply subject of a message it received.
    pub allow_responses: bool,
}

/// The KV bucket's backing stream.
fn config_stream() -> String {
    format!("KV_{CONFIG_BUCKET}")
}

/// JetStream API subjects to read a stream: ephemeral (ordered) consumers,
/// their messages, and direct gets. No create, update, purge or delete of
/// the stream itself.
fn stream_reads(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
    ]
}

/// `$SRV` discovery requests (ping, info, stats), which only read.
fn service_discovery() -> Vec<String> {
    ["PING", "INFO", "STATS"]
        .iter()
        .flat_map(|verb| [format!("$SRV.{verb}"), format!("$SRV.{verb}.>")])
        .collect()
}

impl Permissions {
    /// The set for `role` named `name` (a worker's name is its worker id).
    pub fn for_role(role: Role, name: &Name) -> Permissions {
        match role {
            Role::Worker => Permissions::worker(&WorkerId::from(name.clone())),
            Role::Scheduler => Permissions::scheduler(name),
            Role::Operator => Permissions::operator(name),
            Role::Observer => Permissions::observer(name),
        }
    }

    /// A host: its own presence, reports, session events; its own consumer
    /// on the work stream, by exact name and filter (a consumer created under
    /// its name cannot filter on another worker's orders: the server checks
    /// the filter in the subject against the request); config reads; its
    /// inbox. Reports name the worker in the subject, so a host can report
    /// only as itself; the scheduler checks the body against the subject and
    /// the attempt (see the scheduler's claims module). It shares and fetches
    /// session transcripts in the transcript object store (chunks, meta and
    /// reads; no purge, so it cannot wipe the bucket).
    pub fn worker(worker: &WorkerId) -> Permissions {
        let token = worker.token();
        let consumer = worker_consumer_name(worker);
        let config = config_stream();
        let mut publish = vec![
            subjects::presence(worker),
            subjects::worker_reports(worker),
            subjects::worker_sessions(worker),
            format!("$JS.API.STREAM.INFO.{WORK_STREAM}"),
            format!("$JS.API.STREAM.INFO.{INTAKE_STREAM}"),
            format!("$JS.API.STREAM.INFO.{SESSIONS_STREAM}"),
            format!(
                "$JS.API.CONSUMER.CREATE.{WORK_STREAM}.{consumer}.{}",
                subjects::work(worker)
            ),
            format!("$JS.API.CONSUMER.INFO.{WORK_STREAM}.{consumer}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{WORK_STREAM}.{consumer}"),
            format!("$JS.ACK.{WORK_STREAM}.{consumer}.>"),
            format!("$O.{TRANSCRIPTS_BUCKET}.>"),
        ];
        publish.extend(stream_reads(&config));
        publish.extend(stream_reads(TRANSCRIPTS_STREAM));
        Permissions {
            publish,
            subscribe: vec![format!("_INBOX.{token}.>")],
            allow_responses: true,
        }
    }

    /// The hub's service: it provisions every stream (so it holds the whole
    /// JetStream API), publishes state events and orders, acknowledges the
    /// intake, serves the API and `$SRV`, and hears every presence.
    pub fn scheduler(name: &Name) -> Permissions {
        Permissions {
            publish: vec![
                subjects::TASK_STATE_ALL.to_string(),
                subjects::WORKER_STATE_ALL.to_string(),
                subjects::WORK_ALL.to_string(),
                "$JS.API.>".to_string(),
                format!("$JS.ACK.{INTAKE_STREAM}.{SCHEDULER_CONSUMER}.>"),
            ],
            subscribe: vec![
                subjects::PRESENCE_ALL.to_string(),
                format!("{}.>", subjects::API_PREFIX),
                "$SRV.>".to_string(),
                format!("{}.>", super::inbox_prefix(name)),
            ],
            allow_responses: true,
        }
    }

    /// A person or tool in charge: submits (request or intake), cancels,
    /// sets the cost mode, reads every subject and the event streams.
    pub fn operator(name: &Name) -> Permissions {
        let mut publish = vec![
            subjects::TASK_SUBMIT_ALL.to_string(),
            format!("{}.>", subjects::API_PREFIX),
            format!("$KV.{CONFIG_BUCKET}.>"),
            "$JS.API.INFO".to_string(),
            format!("$JS.API.STREAM.INFO.{INTAKE_STREAM}"),
        ];
        publish.extend(service_discovery());
        for stream in [EVENTS_STREAM, SESSIONS_STREAM, &config_stream()] {
            publish.extend(stream_reads(stream));
        }
        Permissions {
            publish,
            subscribe: vec![
                format!("{}.>", subjects::PREFIX),
                format!("{}.>", super::inbox_prefix(name)),
            ],
            allow_responses: true,
        }
    }

    /// Read-only: the read endpoints, discovery, and task, worker and session
    /// events (live or replayed). No submit, cancel, create-task or cost mode.
    pub fn observer(name: &Name) -> Permissions {
        let mut publish: Vec<String> =
            [api::LIST_TASKS, api::SHOW_TASK, api::STATUS, api::SNAPSHOT]
                .iter()
                .map(|ep| api::subject(ep))
                .collect();
        publish.push("$JS.API.INFO".to_string());
        publish.extend(service_discovery());
        for stream in [EVENTS_STREAM, SESSIONS_STREAM] {
            publish.extend(stream_reads(stream));
        }
        Permissions {
            publish,
            subscribe: vec![
                subjects::TASK_STATE_ALL.to_string(),
                subjects::WORKER_STATE_ALL.to_string(),
                subjects::SESSION_ALL.to_string(),
                format!("{}.>", super::inbox_prefix(name)),
            ],
            allow_responses: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        super::super::parse_name(s).unwrap()
    }

    #[test]
    fn worker_set_is_exact() {
        let p = Permissions::worker(&WorkerId::parse("debby.lan").unwrap());
        assert_eq!(
            p.publish,
            [
                "colibri.presence.debby_dlan",
                "colibri.task.*.report.debby_dlan",
                "colibri.session.*.debby_dlan.>",
                "$JS.API.STREAM.INFO.COLIBRI_WORK",
                "$JS.API.STREAM.INFO.COLIBRI_INTAKE",
                "$JS.API.STREAM.INFO.COLIBRI_SESSIONS",
                "$JS.API.CONSUMER.CREATE.COLIBRI_WORK.worker-debby_dlan.colibri.work.debby_dlan",
                "$JS.API.CONSUMER.INFO.COLIBRI_WORK.worker-debby_dlan",
                "$JS.API.CONSUMER.MSG.NEXT.COLIBRI_WORK.worker-debby_dlan",
                "$JS.ACK.COLIBRI_WORK.worker-debby_dlan.>",
                "$O.colibri-transcripts.>",
                "$JS.API.STREAM.INFO.KV_colibri-config",
                "$JS.API.STREAM.MSG.GET.KV_colibri-config",
                "$JS.API.DIRECT.GET.KV_colibri-config",
                "$JS.API.DIRECT.GET.KV_colibri-config.>",
                "$JS.API.CONSUMER.CREATE.KV_colibri-config",
                "$JS.API.CONSUMER.CREATE.KV_colibri-config.>",
                "$JS.API.CONSUMER.INFO.KV_colibri-config.>",
                "$JS.API.CONSUMER.DELETE.KV_colibri-config.>",
                "$JS.API.CONSUMER.MSG.NEXT.KV_colibri-config.>",
                "$JS.API.STREAM.INFO.OBJ_colibri-transcripts",
                "$JS.API.STREAM.MSG.GET.OBJ_colibri-transcripts",
                "$JS.API.DIRECT.GET.OBJ_colibri-transcripts",
                "$JS.API.DIRECT.GET.OBJ_colibri-transcripts.>",
                "$JS.API.CONSUMER.CREATE.OBJ_colibri-transcripts",
                "$JS.API.CONSUMER.CREATE.OBJ_colibri-transcripts.>",
                "$JS.API.CONSUMER.INFO.OBJ_colibri-transcripts.>",
                "$JS.API.CONSUMER.DELETE.OBJ_colibri-transcripts.>",
                "$JS.API.CONSUMER.MSG.NEXT.OBJ_colibri-transcripts.>",
            ]
        );
        assert_eq!(p.subscribe, ["_INBOX.debby_dlan.>"]);
        assert!(p.allow_responses);
    }

    #[test]
    fn no_worker_may_submit_write_config_or_touch_streams() {
        let p = Permissions::worker(&WorkerId::parse("debby").unwrap());
        for s in &p.publish {
            assert!(!s.contains("submit"), "{s}");
            assert!(!s.starts_with("$KV."), "{s}");
            assert!(!s.starts_with("colibri.api"), "{s}");
            assert!(
                !s.contains("STREAM.CREATE") && !s.contains("STREAM.UPDATE"),
                "{s}"
            );
            assert!(
                !s.contains("STREAM.DELETE") && !s.contains("STREAM.PURGE"),
                "{s}"
            );
            assert!(!s.starts_with("$JS.API.>"), "{s}");
        }
    }

    #[test]
    fn observer_reads_but_never_commands() {
        let p = Permissions::observer(&name("watcher"));
        for s in &p.publish {
            assert!(
                !s.contains(api::CREATE_TASK) && !s.contains(api::CANCEL),
                "{s}"
            );
            assert!(!s.contains("submit") && !s.starts_with("$KV."), "{s}");
            assert!(!s.starts_with("colibri.api.>"), "{s}");
        }
        assert!(p.publish.contains(&"colibri.api.snapshot".to_string()));
        assert_eq!(
            p.subscribe,
            [
                "colibri.task.*.state",
                "colibri.worker.*.state",
                "colibri.session.>",
                "_INBOX.watcher.>"
            ]
        );
    }

    #[test]
    fn operator_and_scheduler_sets() {
        let op = Permissions::operator(&name("ops"));
        assert!(op.publish.contains(&"colibri.task.*.submit".to_string()));
        assert!(op.publish.contains(&"colibri.api.>".to_string()));
        assert!(op.publish.contains(&"$KV.colibri-config.>".to_string()));
        assert_eq!(op.subscribe, ["colibri.>", "_INBOX.ops.>"]);
        let s = Permissions::scheduler(&name("hub"));
        assert_eq!(
            s.publish,
            [
                "colibri.task.*.state",
                "colibri.worker.*.state",
                "colibri.work.>",
                "$JS.API.>",
                "$JS.ACK.COLIBRI_INTAKE.scheduler.>"
            ]
        );
        assert_eq!(
            s.subscribe,
            [
                "colibri.presence.*",
                "colibri.api.>",
                "$SRV.>",
                "_INBOX.hub.>"
            ]
        );
    }
}
