//! The server's admin listener: `/healthz`, `/readyz`, `/metrics`, and the
//! admin API under `/api/` behind an admin token (`warren token
//! issue-admin`; checked against stored hashes in constant time): agents and
//! their connections, nodes, rooms, tokens, disconnecting an agent and
//! revoking its token. Routes and answers only; the listener is `crate::admin`.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{
    agents::AgentLink,
    peers::{Peers, SECRET_HEADER},
    reply::{error_response, json_response},
    state::Shared,
};
use crate::{
    admin::{self, AdminFuture, AdminResponse, AdminService},
    auth,
    body::TunnelBody,
    headers::CLIENT_HEADER,
    registry::{now_ms, ConnectionRecord},
};

/// How long `/readyz` waits for the registry: under a kubelet's default
/// 1 s probe timeout, so a slow database reads as "not ready", not a
/// probe failure.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// Path of the cluster-internal request that closes an agent's connections
/// on the node it reaches. Under `/_warren/`, which the client API never
/// forwards, so no client can send it over the link.
pub(super) const CLUSTER_DISCONNECT: &str = "/_warren/cluster/disconnect";

pub(super) struct ServerAdmin(pub Arc<Shared>);

impl AdminService for ServerAdmin {
    fn call(self: Arc<Self>, req: Request<Incoming>) -> AdminFuture {
        Box::pin(async move { route(&self.0, req).await })
    }
}

async fn route(shared: &Arc<Shared>, req: Request<Incoming>) -> AdminResponse {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => admin::respond(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => admin::readiness(not_ready(shared).await),
        (&Method::GET, "/metrics") => admin::metrics(shared.metrics.render(
            &shared.agents,
            &shared.rooms,
            shared.live.metrics_top_agents(),
        )),
        (&Method::GET, "/" | "/status") => page(STATUS_HTML, "text/html; charset=utf-8"),
        (&Method::GET, "/status.js") => page(STATUS_JS, "text/javascript; charset=utf-8"),
        (_, p) if p.starts_with("/api/") => {
            if let Err(resp) = authorize(shared, &req).await {
                return resp;
            }
            api(shared, method, &path, req).await
        }
        _ => admin::error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
    }
}

/// The status page: static, polling the admin API from the browser with the
/// admin token the operator gives it (the page itself needs none).
const STATUS_HTML: &str = include_str!("admin_page/status.html");
const STATUS_JS: &str = include_str!("admin_page/status.js");

fn page(body: &'static str, content_type: &'static str) -> AdminResponse {
    let mut resp = admin::respond(StatusCode::OK, content_type, body);
    let h = resp.headers_mut();
    // Only its own script, no framing: the page holds an admin token.
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        http::HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// Why this node should not get traffic now, if it should not.
async fn not_ready(shared: &Shared) -> Option<String> {
    if *shared.stopping.borrow() {
        return Some("shutting down".into());
    }
    match tokio::time::timeout(READY_TIMEOUT, shared.registry.ping()).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("registry: {e}")),
        Err(_) => Some(format!("registry did not answer within {READY_TIMEOUT:?}")),
    }
}

/// Lets the request through only with a valid admin token.
async fn authorize(shared: &Shared, req: &Request<Incoming>) -> Result<(), AdminResponse> {
    let Some(presented) = admin::bearer(req) else {
        return Err(challenge(admin::error(
            StatusCode::UNAUTHORIZED,
            "admin_token_required",
            "the admin API needs Authorization: Bearer ADMIN_TOKEN (`warren token issue-admin`)",
        )));
    };
    let hashes = shared.registry.admin_token_hashes().await.map_err(|e| {
        warn!("admin tokens unavailable: {e}");
        admin::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_unavailable",
            "the server cannot check admin tokens right now; retry later",
        )
    })?;
    if !auth::matches_any(&hashes, presented) {
        info!(
            path = req.uri().path(),
            "admin request with a wrong token refused"
        );
        return Err(challenge(admin::error(
            StatusCode::UNAUTHORIZED,
            "bad_admin_token",
            "the admin token is not valid",
        )));
    }
    Ok(())
}

/// A 401 that says how to authenticate (RFC 9110 §11.6.1).
fn challenge(mut resp: AdminResponse) -> AdminResponse {
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer realm=\"warren admin\""),
    );
    resp
}

async fn api(
    shared: &Arc<Shared>,
    method: Method,
    path: &str,
    req: Request<Incoming>,
) -> AdminResponse {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(2).collect();
    let result = match (&method, parts.as_slice()) {
        (&Method::GET, ["agents"]) => agents(shared, None).await,
        (&Method::GET, ["agents", id]) => agents(shared, Some(id)).await,
        (&Method::POST, ["agents", id, "disconnect"]) => disconnect(shared, id).await,
        (&Method::GET, ["nodes"]) => nodes(shared).await,
        (&Method::GET, ["rooms"]) => Ok(rooms(shared)),
        (&Method::GET, ["tokens"]) => tokens(shared).await,
        (&Method::POST, ["tokens"]) => issue(shared, req).await,
        (&Method::DELETE, ["tokens", id]) => revoke(shared, id).await,
        (_, ["agents" | "nodes" | "rooms" | "tokens", ..]) => Err(admin::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{method} is not allowed on {path}"),
        )),
        _ => Err(admin::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such admin endpoint",
        )),
    };
    result.unwrap_or_else(|resp| resp)
}

type Answer = Result<AdminResponse, AdminResponse>;

fn registry_failed(e: impl std::fmt::Display) -> AdminResponse {
    warn!("admin API: registry query failed: {e}");
    admin::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "registry_unavailable",
        &format!("the registry did not answer: {e}"),
    )
}

fn unknown_agent(client_id: &str) -> AdminResponse {
    admin::error(
        StatusCode::NOT_FOUND,
        "unknown_agent",
        &format!("no agent is registered under client id {client_id:?}"),
    )
}

/// Every registered agent (or one) with its connections on every node; the
/// connections held here carry live figures too.
async fn agents(shared: &Shared, only: Option<&str>) -> Answer {
    let registered = shared.registry.agents().await.map_err(registry_failed)?;
    let connections = shared
        .registry
        .all_connections()
        .await
        .map_err(registry_failed)?;
    let local: std::collections::HashMap<String, Arc<AgentLink>> = shared
        .agents
        .all()
        .into_iter()
        .map(|l| (l.tunnel_ws_id.clone(), l))
        .collect();
    let list: Vec<Value> = registered
        .iter()
        .filter(|a| only.map_or(true, |id| id == a.client_id))
        .map(|a| {
            let conns: Vec<Value> = connections
                .iter()
                .filter(|c| c.client_id == a.client_id)
                .map(|c| connection(c, local.get(&c.tunnel_ws_id)))
                .collect();
            json!({
                "clientId": a.client_id,
                "connected": !conns.is_empty(),
                "clientTokens": a.client_tokens,
                "createdAt": a.created_at,
                "rotatedAt": a.rotated_at,
                "connections": conns,
            })
        })
        .collect();
    match only {
        Some(id) => match list.into_iter().next() {
            Some(agent) => Ok(admin::json(StatusCode::OK, &agent)),
            None => Err(unknown_agent(id)),
        },
        None => Ok(admin::json(StatusCode::OK, &json!({ "agents": list }))),
    }
}

fn connection(c: &ConnectionRecord, here: Option<&Arc<AgentLink>>) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let mut v = json!({
        "id": c.tunnel_ws_id,
        "node": c.node_id,
        "transport": c.transport,
        "transportNote": c.transport_note,
        "remoteAddr": c.remote_addr,
        "connectedAt": c.connected_at_ms,
    });
    if let Some(link) = here {
        let t = &link.traffic;
        v["sentBytes"] = json!(t.sent.load(Relaxed));
        v["receivedBytes"] = json!(t.received.load(Relaxed));
        v["inFlight"] = json!(t.in_flight.load(Relaxed));
        v["rttMs"] = json!(link.session.rtt().map(|d| d.as_secs_f64() * 1000.0));
    }
    v
}

/// Closes `client_id`'s connections here; how many.
pub(super) fn disconnect_here(shared: &Shared, client_id: &str, why: &str) -> usize {
    let links = shared.agents.links_of(client_id);
    for link in &links {
        link.session.close(warren_proto::CloseCode::Replaced, why);
    }
    if !links.is_empty() {
        info!(
            client_id,
            connections = links.len(),
            "agent disconnected: {why}"
        );
    }
    links.len()
}

/// Closes `client_id`'s connections here and on every other node holding one.
async fn disconnect_everywhere(shared: &Arc<Shared>, client_id: &str, why: &str) -> usize {
    let mut closed = disconnect_here(shared, client_id, why);
    if let Some(peers) = &shared.peers {
        let routes = shared
            .registry
            .routes_for(client_id, now_ms())
            .await
            .unwrap_or_default();
        for (node, addr) in routes
            .iter()
            .filter(|(node, _)| *node != shared.config.node_id)
        {
            match disconnect_on(peers, addr, client_id, why).await {
                Ok(n) => closed += n,
                Err(e) => {
                    warn!(%node, client_id, "could not disconnect the agent on that node: {e}")
                }
            }
        }
    }
    closed
}

/// Asks the node at `addr` to close `client_id`'s connections; how many it closed.
async fn disconnect_on(
    peers: &Peers,
    addr: &str,
    client_id: &str,
    why: &str,
) -> Result<usize, String> {
    let mut sender = peers.links.get(addr).await?;
    let req = Request::post(CLUSTER_DISCONNECT)
        .header(http::header::HOST, addr)
        .header(CLIENT_HEADER, client_id)
        .header(REASON_HEADER, why)
        .header(SECRET_HEADER, peers.config.secret.expose())
        .body(crate::body::empty())
        .map_err(|e| e.to_string())?;
    // One deadline for the answer, head and body.
    let exchange = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = tokio::time::timeout(NODE_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {NODE_TIMEOUT:?}"))??;
    peers.links.put(addr, sender);
    let answer: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    match answer.get("disconnected").and_then(Value::as_u64) {
        Some(n) if status.is_success() => Ok(n as usize),
        _ => Err(format!("the node answered {status}: {answer}")),
    }
}

/// Time another node has to answer a disconnect.
const NODE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Why the agent is being disconnected, on a cluster disconnect request.
const REASON_HEADER: &str = "x-warren-reason";

/// Another node's disconnect request (the secret already checked).
pub(super) fn disconnect_for_node<B>(shared: &Shared, req: &Request<B>) -> Response<TunnelBody> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let Some(client_id) = header(CLIENT_HEADER) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "missing_client_id",
            None,
            "the client id header is required",
        );
    };
    let why = header(REASON_HEADER).unwrap_or_else(|| "disconnected by the operator".into());
    let n = disconnect_here(shared, &client_id, &why);
    json_response(
        StatusCode::OK,
        json!({ "clientId": client_id, "disconnected": n }),
    )
}

async fn known(shared: &Shared, client_id: &str) -> Result<(), AdminResponse> {
    match shared.registry.token_hash(client_id).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(unknown_agent(client_id)),
        Err(e) => Err(registry_failed(e)),
    }
}

async fn disconnect(shared: &Arc<Shared>, client_id: &str) -> Answer {
    known(shared, client_id).await?;
    let n = disconnect_everywhere(shared, client_id, "disconnected by the operator").await;
    Ok(admin::json(
        StatusCode::OK,
        &json!({ "clientId": client_id, "disconnected": n }),
    ))
}

async fn nodes(shared: &Shared) -> Answer {
    let nodes = shared.registry.nodes().await.map_err(registry_failed)?;
    Ok(admin::json(
        StatusCode::OK,
        &json!({
            // A single node has no row of its own (rows are for clusters).
            "this": shared.config.node_id,
            "clustered": shared.peers.is_some(),
            "nodes": nodes,
        }),
    ))
}

fn rooms(shared: &Shared) -> AdminResponse {
    let rooms: Vec<Value> = shared
        .rooms
        .all_rooms()
        .into_iter()
        .map(|(client_id, room, members)| {
            json!({ "clientId": client_id, "room": room, "members": members })
        })
        .collect();
    admin::json(
        StatusCode::OK,
        &json!({ "node": shared.config.node_id, "rooms": rooms }),
    )
}

async fn tokens(shared: &Shared) -> Answer {
    let agents = shared.registry.agents().await.map_err(registry_failed)?;
    Ok(admin::json(StatusCode::OK, &json!({ "tokens": agents })))
}

/// `{"clientId": ID}`: issues (or rotates) that agent's token. A rotated
/// token's old value stops working at the agent's next connection; its
/// current connections stay (revoke to cut them off).
async fn issue(shared: &Shared, req: Request<Incoming>) -> Answer {
    let body = admin::read_json(req.into_body()).await?;
    let Some(client_id) = body.get("clientId").and_then(Value::as_str) else {
        return Err(admin::error(
            StatusCode::BAD_REQUEST,
            "missing_client_id",
            "the body must be {\"clientId\": \"...\"}",
        ));
    };
    match auth::issue_token(&shared.registry, client_id).await {
        Ok(token) => {
            shared.registered.put(client_id, true);
            info!(client_id, "agent token issued through the admin API");
            Ok(admin::json(
                StatusCode::CREATED,
                &json!({ "clientId": client_id, "token": token }),
            ))
        }
        Err(auth::IssueError::BadClientId(why)) => Err(admin::error(
            StatusCode::BAD_REQUEST,
            "invalid_client_id",
            &why,
        )),
        Err(auth::IssueError::Registry(e)) => Err(registry_failed(e)),
    }
}

/// Revokes `client_id`'s token and disconnects it everywhere at once; its
/// reconnections are refused (unknown client id).
async fn revoke(shared: &Arc<Shared>, client_id: &str) -> Answer {
    let removed = shared
        .registry
        .remove_agent(client_id)
        .await
        .map_err(registry_failed)?;
    if !removed {
        return Err(unknown_agent(client_id));
    }
    shared.registered.put(client_id, false);
    let n = disconnect_everywhere(shared, client_id, "token revoked by the operator").await;
    info!(client_id, disconnected = n, "agent token revoked");
    Ok(admin::json(
        StatusCode::OK,
        &json!({ "clientId": client_id, "revoked": true, "disconnected": n }),
    ))
}
