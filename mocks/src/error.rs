//! The simulator's error type: everything that can stop an engine from starting or serving.
//!
//! Request-level failures (bad JSON, unknown model, context too long) are not errors of this
//! layer: they are HTTP responses, built in [`crate::server`].

/// Why a simulated engine cannot start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A GPU, model or precision name that the catalogues do not hold.
    #[error("unknown {kind} `{name}`; known: {known}")]
    UnknownCatalogEntry {
        kind: &'static str,
        name: String,
        known: String,
    },
    /// The catalogue data files themselves are malformed (a build-time mistake).
    #[error("catalogue file {file} is invalid: {message}")]
    Catalog { file: &'static str, message: String },
    /// An engine flag with a value vLLM would refuse.
    #[error("invalid engine setting `{field}`: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    /// The model and its KV cache do not fit the memory budget (vLLM refuses to start).
    #[error("{0}")]
    DoesNotFit(String),
    /// The engine refused a request submitted in process (it can never fit, or is empty).
    #[error("the engine refused the request: {0}")]
    Refused(String),
    /// Binding or serving the HTTP listener failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl SimError {
    pub(crate) fn config(field: &'static str, message: impl Into<String>) -> Self {
        Self::Config {
            field,
            message: message.into(),
        }
    }
}
