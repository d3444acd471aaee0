//! The operator's view in tests: the scheduler's endpoints through the same
//! client the CLI uses, and polling helpers over them.

use std::time::Duration;

use broker::messages::api::*;
use broker::messages::{TaskSpec, TaskState};
use broker::subjects::api;
use broker::TaskId;
use scheduler::cli::ApiClient;

pub struct BoardClient {
    pub api: ApiClient,
}

impl BoardClient {
    pub fn new(client: async_nats::Client) -> BoardClient {
        BoardClient {
            api: ApiClient { client },
        }
    }

    pub async fn create(&self, spec: &TaskSpec) -> anyhow::Result<CreateTaskReply> {
        Ok(crate::within(
            Duration::from_secs(15),
            "create-task",
            self.api.call(api::CREATE_TASK, spec),
        )
        .await??)
    }

    pub async fn show(&self, id: &TaskId) -> anyhow::Result<TaskDetail> {
        Ok(crate::within(
            Duration::from_secs(15),
            "show-task",
            self.api.call(api::SHOW_TASK, &TaskRef { task_id: *id }),
        )
        .await??)
    }

    pub async fn status(&self) -> anyhow::Result<StatusReply> {
        Ok(crate::within(
            Duration::from_secs(15),
            "status",
            self.api.call(api::STATUS, &serde_json::json!({})),
        )
        .await??)
    }

    pub async fn list(&self, status: Option<TaskState>) -> anyhow::Result<ListTasksReply> {
        let req = ListTasksRequest {
            status,
            limit: Some(1000),
            after: None,
        };
        Ok(crate::within(
            Duration::from_secs(15),
            "list-tasks",
            self.api.call(api::LIST_TASKS, &req),
        )
        .await??)
    }

    pub async fn cancel(&self, id: &TaskId) -> anyhow::Result<CancelReply> {
        let req = CancelRequest {
            task_id: *id,
            reason: None,
        };
        Ok(crate::within(
            Duration::from_secs(15),
            "cancel",
            self.api.call(api::CANCEL, &req),
        )
        .await??)
    }

    /// Polls until the task is in `state`, returning its detail.
    pub async fn wait_state(
        &self,
        id: &TaskId,
        state: TaskState,
        limit: Duration,
    ) -> anyhow::Result<TaskDetail> {
        crate::eventually(limit, &format!("task {id} {state}"), || async move {
            self.show(id)
                .await
                .ok()
                .filter(|d| d.summary.state == state)
        })
        .await
    }

    /// Polls until `check` holds for the task.
    pub async fn wait_for(
        &self,
        id: &TaskId,
        what: &str,
        limit: Duration,
        check: impl Fn(&TaskDetail) -> bool,
    ) -> anyhow::Result<TaskDetail> {
        let check = &check;
        crate::eventually(limit, what, || async move {
            self.show(id).await.ok().filter(|d| check(d))
        })
        .await
    }
}
