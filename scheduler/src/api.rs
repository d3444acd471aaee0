//! The scheduler's request endpoints, as a NATS micro service
//! (`$SRV.PING|INFO|STATS` discover it). Write endpoints (`create-task`,
//! `cancel`) go to the owning task and answer once the board has committed;
//! read endpoints (`list-tasks`, `show-task`, `status`, `snapshot`) query a
//! read-only connection of their own and never wait behind writes.

use std::path::PathBuf;

use async_nats::service::{Request, ServiceExt};
use broker::messages::api::*;
use broker::messages::{decode, encode, TaskSpec};
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
    if let Err(error) = req.respond(Ok(encode(&reply))).await {
        tracing::debug!(%error, "reply not sent");
    }
}

fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ApiError> {
    if payload.is_empty() {
        return serde_json::from_slice(b"{}").map_err(|e| invalid(format!("request: {e}")));
    }
    serde_json::from_slice(payload).map_err(|e| invalid(format!("request: {e}")))
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
                Err(e) => Err(invalid(format!("task: {e}"))),
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
                .and_then(|r| reader.list(&r).map_err(|e| internal(e.to_string())));
            respond(&req, result).await;
        }
    }));

    let mut show = group.endpoint(ep::SHOW_TASK).await.map_err(err)?;
    let reader = BoardReader::open(&db)?;
    tasks.push(spawn(async move {
        while let Some(req) = show.next().await {
            let result = parse::<TaskRef>(&req.message.payload).and_then(|r| {
                match reader.detail(&r.task_id) {
                    Ok(Some(d)) => Ok(d),
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
            let result = match ask(&cmds, |reply| Command::Fleet { reply }).await {
                Ok(fleet) => status_reply(&reader, fleet),
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
                Ok(page) => match fleet.and_then(|f| status_reply(&reader, f)) {
                    Ok(status) => reader
                        .list(&ListTasksRequest {
                            status: None,
                            ..page
                        })
                        .map(|l| SnapshotReply {
                            status,
                            tasks: l.tasks,
                            next: l.next,
                        })
                        .map_err(|e| internal(e.to_string())),
                    Err(e) => Err(e),
                },
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

fn status_reply(reader: &BoardReader, fleet: FleetView) -> Result<StatusReply, ApiError> {
    Ok(StatusReply {
        workers: fleet.workers,
        tasks: reader.counts().map_err(|e| internal(e.to_string()))?,
        cost_mode: fleet.cost_mode,
        running: reader.running().map_err(|e| internal(e.to_string()))?,
        counters: fleet.counters,
    })
}
