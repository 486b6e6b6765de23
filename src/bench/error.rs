//! The benchmark's one error type: what failed, in words.

#[derive(Debug, thiserror::Error)]
#[error("benchmark: {0}")]
pub struct BenchError(String);

impl BenchError {
    pub fn new(message: impl Into<String>) -> Self {
        BenchError(message.into())
    }

    /// The same error, saying what it happened to.
    pub(super) fn context(self, what: &str) -> BenchError {
        BenchError(format!("{what}: {}", self.0))
    }

    pub(super) fn io(what: &'static str) -> impl Fn(std::io::Error) -> BenchError {
        move |e| BenchError(format!("{what}: {e}"))
    }

    pub(super) fn http(what: &'static str) -> impl Fn(hyper::Error) -> BenchError {
        move |e| BenchError(format!("{what}: {e}"))
    }
}
