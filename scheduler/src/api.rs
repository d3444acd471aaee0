//! The scheduler's request endpoints, as a NATS micro service
//! (`$SRV.PING|INFO|STATS` discover it). Write endpoints (`create-task`,
//! `cancel`) go to the owning task and answer once the board has committed;
//! read endpoints (`list-tasks`, `show-task`, `status`, `snapshot`) query a
//! read-only connection of their own and never wait behind writes.
//!
//! Every reply fits NATS's message limit: pages are cut by bytes
//! ([`PAGE_BYTES`], [`STATUS_WORKERS_BYTES`], ...), texts are trimmed, and a
//! reply still over [`MAX_REPLY_BYTES`] is logged and answered with an
//! `internal` error instead of never arriving. Every `invalid` error names
//! its field (`limit: must be 1..1000`).

use std::path::PathBuf;

use async_nats::service::{Request, ServiceExt};
use broker::messages::api::*;
use broker::messages::{decode, decode_fields, encode, DecodeError, TaskSpec};
use broker::subjects::api as ep;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::AbortOnDropHandle;

use crate::board::BoardReader;
use crate::service::{Command, FleetView, ServiceError};

/// The running endpoints; dropping this stops them.
pub struct Api {
    _tasks: Vec<AbortOnDropHandle<()>>,
    _service: async_nats::service::Service,
}

fn invalid(message: String) -> ApiError {
    ApiError {
        kind: ApiErrorKind::Invalid,
        message,
    }
}

fn internal(message: String) -> ApiError {
    ApiError {
        kind: ApiErrorKind::Internal,
        message,
    }
}

async fn respond<T: Serialize>(req: &Request, result: Result<T, ApiError>) {
    let reply = match result {
        Ok(v) => ApiReply::Ok(v),
        Err(e) => ApiReply::Error(e),
    };
    let payload = bounded(&req.message.subject, encode(&reply));
    if let Err(error) = req.respond(Ok(payload)).await {
        tracing::warn!(subject = %req.message.subject, %error, "reply not sent");
    }
}

/// `payload`, or an `internal` error reply when it is over
/// [`MAX_REPLY_BYTES`] (logged: a reply NATS refuses would leave the client
/// waiting for a timeout with nothing said anywhere).
fn bounded(subject: &str, payload: bytes::Bytes) -> bytes::Bytes {
    if payload.len() <= MAX_REPLY_BYTES {
        return payload;
    }
    tracing::error!(
        subject,
        bytes = payload.len(),
        limit = MAX_REPLY_BYTES,
        "reply over the size limit; answering with an error"
    );
    encode(&ApiReply::<()>::Error(internal(format!(
        "reply of {} bytes is over the {MAX_REPLY_BYTES}-byte limit",
        payload.len()
    ))))
}

/// An `invalid` error for a request that did not decode, naming the field.
fn undecodable(e: DecodeError) -> ApiError {
    match e {
        DecodeError::Json(e) => invalid(format!("request: not a JSON object: {e}")),
        e => invalid(e.to_string()),
    }
}

fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ApiError> {
    let payload = if payload.is_empty() { b"{}" } else { payload };
    decode_fields(payload).map_err(undecodable)
}

/// One page of tasks, cut to `budget` bytes; `next` then points after the
/// last row kept.
fn page(
    reader: &BoardReader,
    req: &ListTasksRequest,
    budget: usize,
) -> Result<ListTasksReply, ApiError> {
    req.validate()?;
    let mut reply = reader.list(req).map_err(|e| internal(e.to_string()))?;
    for t in reply.tasks.iter_mut() {
        t.trim();
    }
    let (tasks, cut) = fit_bytes(std::mem::take(&mut reply.tasks), budget);
    if cut {
        reply.next = tasks.last().map(|t| t.task_id).or(req.after);
    }
    reply.tasks = tasks;
    Ok(reply)
}

/// Starts the service and its endpoints.
pub async fn start(
    client: async_nats::Client,
    db: PathBuf,
    commands: mpsc::Sender<Command>,
) -> Result<Api, ServiceError> {
    let err = |e: async_nats::Error| ServiceError::Nats {
        what: "starting the request service",
        source: e,
    };
    let service = client
        .service_builder()
        .description("Colibri scheduler: tasks, workers, board")
        .start(ep::SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(err)?;
    let group = service.group(broker::subjects::API_PREFIX);
    let mut tasks = Vec::new();

    let mut create = group.endpoint(ep::CREATE_TASK).await.map_err(err)?;
    let cmds = commands.clone();
    tasks.push(spawn(async move {
        while let Some(req) = create.next().await {
            let result = match decode::<TaskSpec>(&req.message.payload) {
                Ok(spec) => ask(&cmds, |reply| Command::Create {
                    spec: Box::new(spec),
                    reply,
                })
                .await
                .and_then(|r| r),
                Err(e) => Err(undecodable(e)),
            };
            respond(&req, result).await;
        }
    }));

    let mut cancel = group.endpoint(ep::CANCEL).await.map_err(err)?;
    let cmds = commands.clone();
    tasks.push(spawn(async move {
        while let Some(req) = cancel.next().await {
            let result = match parse::<CancelRequest>(&req.message.payload) {
                Ok(r) => ask(&cmds, |reply| Command::Cancel { req: r, reply })
                    .await
                    .and_then(|r| r),
                Err(e) => Err(e),
            };
            respond(&req, result).await;
        }
    }));

    let mut list = group.endpoint(ep::LIST_TASKS).await.map_err(err)?;
    let reader = BoardReader::open(&db)?;
    tasks.push(spawn(async move {
        while let Some(req) = list.next().await {
            let result = parse::<ListTasksRequest>(&req.message.payload)
                .and_then(|r| page(&reader, &r, PAGE_BYTES));
            respond(&req, result).await;
        }
    }));

    let mut show = group.endpoint(ep::SHOW_TASK).await.map_err(err)?;
    let reader = BoardReader::open(&db)?;
    tasks.push(spawn(async move {
        while let Some(req) = show.next().await {
            let result = parse::<TaskRef>(&req.message.payload).and_then(|r| {
                match reader.detail(&r.task_id) {
                    Ok(Some(mut d)) => {
                        d.bound(PAGE_BYTES);
                        Ok(d)
                    }
                    Ok(None) => Err(ApiError {
                        kind: ApiErrorKind::NotFound,
                        message: format!("task {} does not exist", r.task_id),
                    }),
                    Err(e) => Err(internal(e.to_string())),
                }
            });
            respond(&req, result).await;
        }
    }));

    let mut status = group.endpoint(ep::STATUS).await.map_err(err)?;
    let reader = BoardReader::open(&db)?;
    let cmds = commands.clone();
    tasks.push(spawn(async move {
        while let Some(req) = status.next().await {
            let result = match parse::<StatusRequest>(&req.message.payload) {
                Ok(r) => match ask(&cmds, |reply| Command::Fleet { reply }).await {
                    Ok(fleet) => status_reply(&reader, fleet, &r),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            respond(&req, result).await;
        }
    }));

    let mut snapshot = group.endpoint(ep::SNAPSHOT).await.map_err(err)?;
    let reader = BoardReader::open(&db)?;
    let cmds = commands;
    tasks.push(spawn(async move {
        while let Some(req) = snapshot.next().await {
            let fleet = ask(&cmds, |reply| Command::Fleet { reply }).await;
            let result = match parse::<ListTasksRequest>(&req.message.payload) {
                Ok(req) => {
                    match fleet.and_then(|f| status_reply(&reader, f, &StatusRequest::default())) {
                        Ok(status) => page(
                            &reader,
                            &ListTasksRequest {
                                status: None,
                                ..req
                            },
                            PAGE_BYTES / 2,
                        )
                        .map(|l| SnapshotReply {
                            status,
                            tasks: l.tasks,
                            next: l.next,
                        }),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            respond(&req, result).await;
        }
    }));

    Ok(Api {
        _tasks: tasks,
        _service: service,
    })
}

fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(f: F) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(f))
}

async fn ask<T>(
    commands: &mpsc::Sender<Command>,
    make: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    commands
        .send(make(tx))
        .await
        .map_err(|_| internal("scheduler is stopping".into()))?;
    rx.await
        .map_err(|_| internal("scheduler is stopping".into()))
}

/// `status`: one page of workers by id and the running attempts, each cut
/// to its byte bound.
fn status_reply(
    reader: &BoardReader,
    fleet: FleetView,
    req: &StatusRequest,
) -> Result<StatusReply, ApiError> {
    let mut workers = fleet.workers;
    workers.sort_by(|a, b| a.worker.cmp(&b.worker));
    if let Some(after) = &req.workers_after {
        workers.retain(|w| w.worker > *after);
    }
    let (workers, cut) = fit_bytes(workers, STATUS_WORKERS_BYTES);
    let workers_next = cut
        .then(|| workers.last().map(|w| w.worker.clone()))
        .flatten();
    let mut running = reader.running().map_err(|e| internal(e.to_string()))?;
    for r in running.iter_mut() {
        r.trim();
    }
    let all = running.len();
    let (running, _) = fit_bytes(running, STATUS_RUNNING_BYTES);
    Ok(StatusReply {
        workers_next,
        workers,
        tasks: reader.counts().map_err(|e| internal(e.to_string()))?,
        cost_mode: fleet.cost_mode,
        running_omitted: all - running.len(),
        running,
        counters: fleet.counters,
    })
}
