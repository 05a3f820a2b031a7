//! Errors of the load generator's setup. A failed request is never an error here: it is an
//! [`reports::Outcome`] that gets counted. Only what stops a run from starting or finishing is.

/// A scenario file that cannot be used. `Display` names the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: field `{field}`: {message}")]
    Invalid {
        file: String,
        field: String,
        message: String,
    },
}

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error("not enough GPU memory: {0}")]
    Capacity(String),
    #[error("could not start the simulated vLLM engine `{engine}`: {message}")]
    Engine { engine: String, message: String },
    #[error("could not start the router: {0}")]
    Router(String),
    #[error("bad target: {0}")]
    Target(String),
    #[error("could not build the HTTP client: {0}")]
    Client(String),
    #[error("could not write results to {dir}: {message}")]
    Results { dir: String, message: String },
    /// `--out` names a non-empty directory that holds no earlier tenantbench result.
    #[error("{0}")]
    OutDir(String),
    #[error("the run was interrupted")]
    Interrupted,
}

impl RunError {
    /// The process exit code DESIGN §6 gives this error: 2 for bad input, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Scenario(_)
            | RunError::Capacity(_)
            | RunError::Target(_)
            | RunError::OutDir(_) => 2,
            _ => 1,
        }
    }
}
