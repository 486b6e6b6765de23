//! What can go wrong on a session or stream, whatever carries it, and the
//! conversions from quinn's errors into it.

use std::time::Duration;

use warren_proto::FrameError;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("stream reset by peer (code {0})")]
    Reset(u64),
    #[error("stream ended before a complete frame")]
    UnexpectedEnd,
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("could not connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// quinn's connection, write and read errors, in our terms.
pub(super) fn conn_error(e: quinn::ConnectionError) -> TransportError {
    use quinn::ConnectionError as E;
    TransportError::Closed(match e {
        E::ApplicationClosed(c) => {
            let reason = String::from_utf8_lossy(&c.reason).into_owned();
            format!("closed by peer (code {}): {reason}", c.error_code)
        }
        E::LocallyClosed => "closed locally".into(),
        E::TimedOut => "peer unresponsive (idle timeout)".into(),
        other => other.to_string(),
    })
}

pub(super) fn write_error(e: quinn::WriteError) -> TransportError {
    match e {
        quinn::WriteError::Stopped(code) => TransportError::Reset(code.into_inner()),
        quinn::WriteError::ConnectionLost(e) => conn_error(e),
        other => TransportError::Closed(other.to_string()),
    }
}

pub(super) fn read_error(e: quinn::ReadError) -> TransportError {
    match e {
        quinn::ReadError::Reset(code) => TransportError::Reset(code.into_inner()),
        quinn::ReadError::ConnectionLost(e) => conn_error(e),
        other => TransportError::Closed(other.to_string()),
    }
}

/// quinn's `AsyncRead` reports resets and lost connections as `io::Error`s
/// wrapping its `ReadError`; recover the precise error where we can.
pub(super) fn io_read_error(e: std::io::Error) -> TransportError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<quinn::ReadError>())
    {
        Some(read) => read_error(read.clone()),
        None => TransportError::Io(e),
    }
}
