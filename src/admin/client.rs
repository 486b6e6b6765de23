//! A client for a server's admin API, for the commands that steer a running
//! server (`warren status`, `warren token revoke --admin-url`): one request
//! per connection, plain HTTP/1.1, bounded in time.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// Time an admin request has, connection included.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("bad admin URL {0:?}: use http://HOST:PORT")]
    BadUrl(String),
    #[error("cannot reach the admin API at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("the admin API answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
}

/// Sends `method path` (with a JSON `body`, if any) to the admin API at
/// `url` with `token`; the JSON answer of a 2xx, else the API's message.
pub async fn call(
    url: &str,
    token: &str,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, AdminClientError> {
    let uri: Uri = url
        .trim_end_matches('/')
        .parse()
        .map_err(|_| AdminClientError::BadUrl(url.into()))?;
    let (Some("http"), Some(authority)) = (uri.scheme_str(), uri.authority().cloned()) else {
        return Err(AdminClientError::BadUrl(url.into()));
    };
    let unreachable = |why: String| AdminClientError::Unreachable {
        url: url.into(),
        why,
    };
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(authority.as_str())
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, authority.as_str())
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = req
            .body(Full::new(body))
            .map_err(|e| unreachable(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok::<_, AdminClientError>((status, bytes))
    };
    let (status, bytes) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {TIMEOUT:?}")))??;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::json!({ "message": String::from_utf8_lossy(&bytes) }));
    if status.is_success() {
        Ok(value)
    } else {
        let message = value
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("no message")
            .to_string();
        Err(AdminClientError::Refused { status, message })
    }
}
