//! Errors the simulator can return to its embedder.

/// Failure to start or serve.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
}
