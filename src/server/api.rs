//! The client-facing HTTP API: finds the agent a request names (`clientId` query
//! parameter, `X-Warren-Client` header, or `<clientId>.<base-domain>` host) and
//! the response mode, then hands the request to [`super::forward`]. Also answers
//! warren's own `/_warren/…` paths. Errors are small JSON bodies naming the
//! client id and the reason.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};
use warren_proto::Mode;

use super::{cluster, forward, rooms, websocket, Shared};
use crate::{
    auth,
    body::{self, TunnelBody},
    headers::{CLIENT_HEADER, MODE_HEADER},
    shutdown::Shutdown,
};

pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener, mut shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(shared.config.max_client_connections));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Typically EMFILE: back off briefly instead of spinning.
                    warn!("accepting a client connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(%peer, limit = shared.config.max_client_connections, "client connection refused: limit reached");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let config = &shared.config;
            let service = {
                let shared = shared.clone();
                service_fn(move |req| handle(shared.clone(), peer, req))
            };
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(config.header_read_timeout)
                .max_buf_size(config.max_head_frame.max(8192))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.wait() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, "client connection ended with an error: {e}");
            }
            drop(slot);
        });
    }
}

/// Who a request is for, and how to answer it.
pub(super) struct Target {
    pub client_id: String,
    pub mode: Mode,
    /// Path and query to forward (warren's own parameters removed).
    pub uri: String,
}

async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<TunnelBody>, Infallible> {
    let path = req.uri().path();
    let joining_room = path.starts_with("/_warren/rooms/");
    if path.starts_with("/_warren/") && !joining_room {
        if path == "/_warren/rooms" {
            return Ok(match target(&req, shared.config.base_domain.as_deref()) {
                Ok(target) => rooms::list(&shared, &target.client_id).await,
                Err(resp) => *resp,
            });
        }
        return Ok(internal(&shared, &req));
    }
    let target = match target(&req, shared.config.base_domain.as_deref()) {
        Ok(t) => t,
        Err(resp) => return Ok(*resp),
    };
    let (req, target) = match serve_local(&shared, req, target, peer).await {
        Ok(resp) => return Ok(resp),
        Err(unserved) => unserved,
    };
    // Not here: another node of the cluster may hold it.
    if let Some(cluster) = &shared.cluster {
        return Ok(cluster::forward_remote(&shared, cluster, req, &target.client_id, peer).await);
    }
    Ok(not_connected(&shared, &target.client_id).await)
}

/// Serves `req` through an agent connected to this node: a room join, a
/// WebSocket pass-through or an HTTP request. Gives the request back when no
/// connection for its agent is here.
pub(super) async fn serve_local(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    target: Target,
    peer: SocketAddr,
) -> Result<Response<TunnelBody>, (Request<Incoming>, Target)> {
    if let Some(room) = req.uri().path().strip_prefix("/_warren/rooms/") {
        if !websocket::is_upgrade(&req) {
            return Ok(error_response(
                StatusCode::BAD_REQUEST,
                "websocket_expected",
                Some(&target.client_id),
                "rooms are joined with a WebSocket upgrade",
            ));
        }
        let room = room.to_string();
        return match shared.agents.pick_first(&target.client_id) {
            Some(link) => Ok(rooms::join(shared, link, req, &room, peer).await),
            None => Err((req, target)),
        };
    }
    let Some(link) = shared.agents.pick(&target.client_id) else {
        return Err((req, target));
    };
    Ok(if websocket::is_upgrade(&req) {
        websocket::pass_through(shared, link, req, target, peer).await
    } else {
        forward::forward(shared, link, req, target, peer).await
    })
}

/// Resolves the agent and the mode from the request.
pub(super) fn target(
    req: &Request<Incoming>,
    base_domain: Option<&str>,
) -> Result<Target, Box<Response<TunnelBody>>> {
    let path = req.uri().path();
    let mut client_id: Option<String> = None;
    let mut mode = Mode::Stream;
    // Rebuild the query without warren's parameters, leaving the rest byte-exact.
    let mut kept: Vec<&str> = Vec::new();
    if let Some(query) = req.uri().query() {
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match (key, value) {
                ("clientId", v) if client_id.is_none() => client_id = Some(v.to_string()),
                ("mode", "blocking") => mode = Mode::Blocking,
                ("mode", "stream") => mode = Mode::Stream,
                _ => kept.push(pair),
            }
        }
    }
    if let Some(value) = req.headers().get(MODE_HEADER) {
        mode = match value.as_bytes() {
            b"blocking" => Mode::Blocking,
            b"stream" => Mode::Stream,
            _ => {
                return Err(Box::new(error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_mode",
                    None,
                    "X-Warren-Mode must be 'stream' or 'blocking'",
                )))
            }
        };
    }
    if client_id.is_none() {
        client_id = req
            .headers()
            .get(CLIENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
    }
    if client_id.is_none() {
        if let Some(base) = base_domain {
            client_id = host(req).and_then(|h| subdomain_of(&h, base));
        }
    }
    let Some(client_id) = client_id else {
        return Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "missing_client_id",
            None,
            "name the agent with the clientId query parameter, the X-Warren-Client header, or a <clientId>.<base-domain> host",
        )));
    };
    if let Err(why) = auth::check_client_id(&client_id) {
        return Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "invalid_client_id",
            Some(&client_id),
            &why,
        )));
    }
    let uri = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    Ok(Target {
        client_id,
        mode,
        uri,
    })
}

/// The request's host without port, lowercased.
fn host(req: &Request<Incoming>) -> Option<String> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    let without_port = if raw.starts_with('[') {
        raw.split_inclusive(']').next().unwrap_or(raw)
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    Some(without_port.to_ascii_lowercase())
}

fn subdomain_of(host: &str, base: &str) -> Option<String> {
    let base = base.trim_start_matches('.').to_ascii_lowercase();
    let prefix = host.strip_suffix(&base)?.strip_suffix('.')?;
    (!prefix.is_empty()).then(|| prefix.to_string())
}

/// Answer for a client id with no live connection on this node.
pub(super) async fn not_connected(shared: &Shared, client_id: &str) -> Response<TunnelBody> {
    let registered = match shared.registered.get(client_id) {
        Some(known) => Some(known),
        None => match shared.registry.token_hash(client_id).await {
            Ok(hash) => {
                shared.registered.put(client_id, hash.is_some());
                Some(hash.is_some())
            }
            Err(_) => None,
        },
    };
    match registered {
        Some(false) => error_response(
            StatusCode::NOT_FOUND,
            "unknown_agent",
            Some(client_id),
            "no agent is registered under this client id",
        ),
        _ => {
            let mut resp = error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "agent_offline",
                Some(client_id),
                "the agent is not connected right now",
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            resp
        }
    }
}

/// The dependency-free browser client for rooms.
const WARREN_JS: &str = include_str!("warren.js");

/// warren's own endpoints.
fn internal(shared: &Shared, req: &Request<Incoming>) -> Response<TunnelBody> {
    match req.uri().path() {
        "/_warren/warren.js" => {
            let mut resp = Response::new(body::full(WARREN_JS));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            );
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            );
            resp
        }
        "/_warren/health" => json_response(
            StatusCode::OK,
            serde_json::json!({
                "status": "ok",
                "node": shared.config.node_id,
                "agents": shared.agents.len(),
            }),
        ),
        _ => error_response(
            StatusCode::NOT_FOUND,
            "not_found",
            None,
            "no such warren endpoint",
        ),
    }
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<TunnelBody> {
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
    code: &str,
    client_id: Option<&str>,
    message: &str,
) -> Response<TunnelBody> {
    json_response(
        status,
        serde_json::json!({ "error": code, "clientId": client_id, "message": message }),
    )
}

#[cfg(test)]
mod tests {
    use super::subdomain_of;

    #[test]
    fn subdomains() {
        assert_eq!(
            subdomain_of("music.example.com", "example.com").as_deref(),
            Some("music")
        );
        assert_eq!(
            subdomain_of("music.example.com", ".example.com").as_deref(),
            Some("music")
        );
        assert_eq!(subdomain_of("example.com", "example.com"), None);
        assert_eq!(subdomain_of("musicexample.com", "example.com"), None);
    }
}
