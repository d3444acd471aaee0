//! Capability claims tied to identity: which heartbeats the scheduler
//! believes. Pure functions over data, used by the service loop before a
//! heartbeat reaches the fleet.
//!
//! A heartbeat arrives on `colibri.presence.<token>`, and nats-server lets
//! each host's identity publish only on its own token (see
//! `broker::identity::permissions`). So the subject names the sender; a
//! heartbeat is believed only if the worker id in its body has that token,
//! and, when a hosts registry is configured, only if the host is in it and
//! advertises no tag beyond what its identity allows.
//!
//! Reports travel through JetStream, which does not record the publisher, so
//! they cannot be checked this way: the scheduler accepts a report only for
//! the (task, attempt) currently placed on the worker the report names
//! (`Core::report`), and counts a report that names a different worker.

use broker::identity::registry::ClaimVerdict;
use broker::identity::Registry;
use broker::messages::Heartbeat;
use broker::subjects;

/// Why a heartbeat was not believed. Each kind has its own counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    #[error("worker {worker} sent its heartbeat on {subject}, not on its own presence subject")]
    SubjectMismatch { worker: String, subject: String },
    #[error("worker {0} is not a host in the hosts registry")]
    UnknownHost(String),
    #[error("worker {worker} advertised tags its identity does not allow: {extra:?}")]
    TagsExceed { worker: String, extra: Vec<String> },
}

impl ClaimError {
    /// The counter (`status` shows counters) this rejection increments.
    pub fn counter(&self) -> &'static str {
        match self {
            ClaimError::SubjectMismatch { .. } => "heartbeats_subject_mismatch",
            ClaimError::UnknownHost(_) => "heartbeats_unknown_host",
            ClaimError::TagsExceed { .. } => "heartbeats_tags_exceed",
        }
    }
}

/// Checks one heartbeat received on `subject`.
pub fn check_heartbeat(
    subject: &str,
    beat: &Heartbeat,
    hosts: Option<&Registry>,
) -> Result<(), ClaimError> {
    if subject != subjects::presence(&beat.worker) {
        return Err(ClaimError::SubjectMismatch {
            worker: beat.worker.to_string(),
            subject: subject.to_string(),
        });
    }
    let Some(hosts) = hosts else {
        return Ok(());
    };
    match hosts.check_claim(&beat.worker, &beat.tags) {
        ClaimVerdict::Allowed => Ok(()),
        ClaimVerdict::UnknownHost => Err(ClaimError::UnknownHost(beat.worker.to_string())),
        ClaimVerdict::TagsExceed(extra) => Err(ClaimError::TagsExceed {
            worker: beat.worker.to_string(),
            extra,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker::identity::{generate, parse_name, Entry, Role};
    use broker::{TagSet, WorkerId};

    fn beat(worker: &str, tags: &[&str]) -> Heartbeat {
        Heartbeat {
            v: 1,
            worker: WorkerId::parse(worker).unwrap(),
            host: "h".into(),
            incarnation: uuid::Uuid::new_v4(),
            version: "0".into(),
            tags: TagSet::parse_lists(tags).unwrap(),
            agents: TagSet::new(),
            slots: 1,
            running: vec![],
            interval_ms: 2000,
            leaving: false,
            cost_mode: None,
            at_ms: 0,
        }
    }

    fn registry() -> Registry {
        let mut reg = Registry::default();
        reg.add(
            parse_name("debby").unwrap(),
            Entry {
                role: Role::Worker,
                public_key: generate().unwrap().public_key().into(),
                capabilities: TagSet::parse_lists(["linux", "docker"]).unwrap(),
            },
        )
        .unwrap();
        reg.add(
            parse_name("ops").unwrap(),
            Entry {
                role: Role::Operator,
                public_key: generate().unwrap().public_key().into(),
                capabilities: TagSet::new(),
            },
        )
        .unwrap();
        reg
    }

    #[test]
    fn heartbeat_must_come_on_its_own_subject() {
        let b = beat("debby.lan", &["linux"]);
        assert_eq!(
            check_heartbeat("colibri.presence.debby_dlan", &b, None),
            Ok(())
        );
        let err = check_heartbeat("colibri.presence.domedog", &b, None).unwrap_err();
        assert_eq!(err.counter(), "heartbeats_subject_mismatch");
    }

    #[test]
    fn tags_beyond_the_identity_are_refused() {
        let reg = registry();
        let ok = beat("debby", &["linux", "docker"]);
        assert_eq!(
            check_heartbeat("colibri.presence.debby", &ok, Some(&reg)),
            Ok(())
        );
        let greedy = beat("debby", &["linux", "gpu"]);
        assert_eq!(
            check_heartbeat("colibri.presence.debby", &greedy, Some(&reg)),
            Err(ClaimError::TagsExceed {
                worker: "debby".into(),
                extra: vec!["gpu".into()]
            })
        );
        let stranger = beat("eve", &[]);
        assert_eq!(
            check_heartbeat("colibri.presence.eve", &stranger, Some(&reg))
                .unwrap_err()
                .counter(),
            "heartbeats_unknown_host"
        );
        // A user identity is not a host, whatever its name.
        let op = beat("ops", &[]);
        assert!(check_heartbeat("colibri.presence.ops", &op, Some(&reg)).is_err());
    }
}
