//! The worker library's typed errors. Failures of one attempt never surface
//! here: they become an [`broker::messages::Outcome`] in a report. These are
//! the errors that stop the worker itself.

use broker::provision::ProvisionError;

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    #[error("provisioning streams: {0}")]
    Provision(#[from] ProvisionError),
    /// A root worker confining with bwrap has no usable `agent_user`.
    #[error("agent_user: {0}")]
    AgentUser(String),
    #[error("creating the state dir {path}: {source}")]
    StateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}
