//! How the server answers a client when it cannot carry a request through:
//! small JSON bodies `{"error": code, "clientId": id, "message": text}`, and the
//! one mapping from an agent's error kinds to HTTP statuses.

use http::{header, HeaderValue, Response, StatusCode};
use tracing::info;
use warren_proto::{ErrorKind, StreamError};

use crate::body::{self, TunnelBody};

/// A request that failed before any response: status, error code, message.
#[derive(Debug)]
pub(super) struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Failure {
            status,
            code,
            message: message.into(),
        }
    }

    /// The agent answered a stream with an error instead of a response head.
    pub fn from_agent(error: StreamError) -> Self {
        let (status, code) = match error.kind {
            ErrorKind::UpstreamUnavailable => (StatusCode::BAD_GATEWAY, "upstream_unavailable"),
            ErrorKind::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
            ErrorKind::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "agent_overloaded"),
        };
        Failure::new(status, code, error.message)
    }

    /// Logs the failure (in the request's span) and turns it into the client's answer.
    pub fn respond(self, client_id: &str) -> Response<TunnelBody> {
        info!(status = %self.status, code = self.code, "{}", self.message);
        error_response(self.status, self.code, Some(client_id), &self.message)
    }
}

/// On a warren error response (an extension, never sent): its error code, for
/// the cluster link to tell the forwarding node what happened, and for the
/// metrics.
#[derive(Clone, Copy, Debug)]
pub(super) struct FailureCode(pub &'static str);

pub(super) fn json_response(status: StatusCode, value: serde_json::Value) -> Response<TunnelBody> {
    let mut resp = Response::new(body::full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A warren error: `{"error": code, "clientId": id, "message": text}`.
pub(super) fn error_response(
    status: StatusCode,
    code: &'static str,
    client_id: Option<&str>,
    message: &str,
) -> Response<TunnelBody> {
    let mut resp = json_response(
        status,
        serde_json::json!({ "error": code, "clientId": client_id, "message": message }),
    );
    resp.extensions_mut().insert(FailureCode(code));
    resp
}
