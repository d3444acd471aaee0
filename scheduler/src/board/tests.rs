//! Board tests on a real SQLite file.

use broker::messages::api::ListTasksRequest;
use broker::messages::{Outcome, TaskSpec, TaskState};
use broker::{SessionId, TagSet, WorkerId};

use super::{Board, BoardReader};

fn spec(title: &str) -> TaskSpec {
    TaskSpec::command(
        title,
        TagSet::parse_lists(["linux"]).unwrap(),
        vec!["/bin/true".into()],
    )
}

#[test]
fn insert_is_idempotent_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("board.db");
    let mut board = Board::open(&path).unwrap();
    let s = spec("a");
    let tx = board.transaction().unwrap();
    assert!(tx.insert_task(&s, TaskState::Queued, None, 1).unwrap());
    assert!(!tx.insert_task(&s, TaskState::Queued, None, 2).unwrap());
    tx.commit().unwrap();
    let reader = BoardReader::open(&path).unwrap();
    assert_eq!(reader.counts().unwrap().get(&TaskState::Queued), Some(&1));
    let detail = reader.detail(&s.id).unwrap().unwrap();
    assert_eq!(detail.transitions.len(), 1);
    assert_eq!(detail.spec, s);
}

#[test]
fn lifecycle_and_pagination() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("board.db");
    let mut board = Board::open(&path).unwrap();
    let specs: Vec<_> = (0..5).map(|i| spec(&format!("t{i}"))).collect();
    let w = WorkerId::parse("w1").unwrap();
    let tx = board.transaction().unwrap();
    for s in &specs {
        tx.insert_task(s, TaskState::Queued, None, 1).unwrap();
    }
    tx.assign(&specs[0].id, 1, &w, &SessionId::new(), 2)
        .unwrap();
    tx.attempt_started(&specs[0].id, 1, &uuid::Uuid::new_v4(), 3)
        .unwrap();
    tx.attempt_ended(
        &specs[0].id,
        1,
        &super::AttemptEnd {
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            reason: None,
            usage: None,
        },
        4,
    )
    .unwrap();
    tx.set_state(&specs[0].id, TaskState::Succeeded, 1, None, 4)
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(board.load_active().unwrap().len(), 4);

    let reader = BoardReader::open(&path).unwrap();
    let counts = reader.counts().unwrap();
    assert_eq!(counts.get(&TaskState::Queued), Some(&4));
    assert_eq!(counts.get(&TaskState::Succeeded), Some(&1));
    assert_eq!(counts.get(&TaskState::Running), None);
    let page = reader
        .list(&ListTasksRequest {
            status: Some(TaskState::Queued),
            limit: Some(3),
            after: None,
        })
        .unwrap();
    assert_eq!(page.tasks.len(), 3);
    let rest = reader
        .list(&ListTasksRequest {
            status: Some(TaskState::Queued),
            limit: Some(3),
            after: page.next,
        })
        .unwrap();
    assert_eq!(rest.tasks.len(), 1);
    assert!(rest.next.is_none());
    let detail = reader.detail(&specs[0].id).unwrap().unwrap();
    assert_eq!(detail.attempts[0].outcome, Some(Outcome::Succeeded));
    let states: Vec<_> = detail.transitions.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [
            TaskState::Queued,
            TaskState::Assigned,
            TaskState::Running,
            TaskState::Succeeded
        ]
    );
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("board.db");
    let s = spec("x");
    {
        let mut board = Board::open(&path).unwrap();
        let tx = board.transaction().unwrap();
        tx.insert_task(&s, TaskState::Queued, None, 1).unwrap();
        tx.commit().unwrap();
    }
    let board = Board::open(&path).unwrap();
    assert_eq!(board.load_active().unwrap()[0].spec, s);
}

/// The spend ceiling is per task: a retry is told what earlier attempts used.
#[test]
fn usage_before_sums_the_earlier_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let mut board = Board::open(&dir.path().join("board.db")).unwrap();
    let s = spec("retried");
    let w = WorkerId::parse("w1").unwrap();
    let used = |tokens, cost| broker::messages::Usage {
        input_tokens: tokens,
        cost_usd: cost,
        ..Default::default()
    };
    let tx = board.transaction().unwrap();
    tx.insert_task(&s, TaskState::Queued, None, 1).unwrap();
    for (attempt, usage) in [(1, used(100, Some(0.5))), (2, used(20, None))] {
        tx.assign(&s.id, attempt, &w, &SessionId::new(), 2).unwrap();
        tx.attempt_ended(
            &s.id,
            attempt,
            &super::AttemptEnd {
                outcome: Outcome::Interrupted,
                exit_code: None,
                reason: None,
                usage: Some(&usage),
            },
            3,
        )
        .unwrap();
    }
    tx.assign(&s.id, 3, &w, &SessionId::new(), 4).unwrap();
    assert_eq!(tx.usage_before(&s.id, 1).unwrap(), used(0, None));
    assert_eq!(tx.usage_before(&s.id, 2).unwrap(), used(100, Some(0.5)));
    assert_eq!(tx.usage_before(&s.id, 3).unwrap(), used(120, Some(0.5)));
    tx.commit().unwrap();
}

#[test]
fn a_shared_transcript_is_recorded_for_its_own_session_only_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("board.db");
    let mut board = Board::open(&path).unwrap();
    let w = WorkerId::parse("home").unwrap();
    let first = spec("first");
    let session = SessionId::new();
    let tx = board.transaction().unwrap();
    tx.insert_task(&first, TaskState::Queued, None, 1).unwrap();
    tx.assign(&first.id, 1, &w, &session, 2).unwrap();
    let mut next = spec("next");
    next.continue_session = Some(session);
    tx.insert_task(&next, TaskState::Queued, None, 3).unwrap();
    tx.set_home(&next.id, &w).unwrap();
    let unshared = super::SessionHome {
        worker: w.clone(),
        share: None,
    };
    assert_eq!(tx.session_home(&session).unwrap(), Some(unshared));
    let shared = broker::messages::SharedTranscript {
        session,
        segment: 2,
        bytes: 7,
        digest: "SHA-256=x".into(),
    };
    let other = broker::messages::SharedTranscript {
        session: SessionId::new(),
        ..shared.clone()
    };
    assert!(!tx.transcript_shared(&first.id, 1, &other).unwrap());
    assert!(tx.session_home(&session).unwrap().unwrap().share.is_none());
    assert!(tx.transcript_shared(&first.id, 1, &shared).unwrap());
    // A share counts from its attempt's end, for as long as the store keeps it.
    let end = super::AttemptEnd {
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        reason: None,
        usage: None,
    };
    let month_ago = broker::time_ms::now_ms() - 30 * 24 * 3600 * 1000;
    tx.attempt_ended(&first.id, 1, &end, month_ago).unwrap();
    assert!(
        tx.session_home(&session).unwrap().unwrap().share.is_none(),
        "expired"
    );
    let now = broker::time_ms::now_ms();
    tx.attempt_ended(&first.id, 1, &end, now).unwrap();
    assert_eq!(
        tx.session_home(&session).unwrap().unwrap().share,
        Some(shared.clone())
    );
    tx.commit().unwrap();
    drop(board);

    // After a restart the waiting continuation knows the share.
    let board = Board::open(&path).unwrap();
    let active = board.load_active().unwrap();
    let row = active.iter().find(|r| r.spec.id == next.id).unwrap();
    assert_eq!(
        row.home,
        Some(super::SessionHome {
            worker: w,
            share: Some(shared.clone())
        })
    );
    let reader = BoardReader::open(&path).unwrap();
    let detail = reader.detail(&first.id).unwrap().unwrap();
    assert_eq!(detail.attempts[0].transcript, Some(shared));
}
