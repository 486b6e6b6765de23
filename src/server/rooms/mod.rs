//! Rooms at the edge: the server terminates members' WebSockets at
//! `/_warren/rooms/{room}` and speaks to the agent on their behalf over one
//! rooms stream per agent connection. A broadcast crosses the tunnel once and is
//! fanned out here; each member has a bounded queue, and one that cannot keep
//! up is disconnected (close 4008) instead of slowing the room.

mod hub;
mod member;

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
};

use http::{Request, Response, StatusCode};
use tracing::{debug, info, Instrument};

use super::{agents::AgentLink, reply::error_response, upgrade};
use crate::{body::TunnelBody, headers};
pub(crate) use hub::RoomHub;
use member::MemberSession;

/// Room names: 1–64 of `A-Z a-z 0-9 . _ -`.
fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= 64
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `GET /_warren/rooms?clientId=ID`.
pub(crate) fn list(hub: &RoomHub, client_id: &str) -> Response<TunnelBody> {
    let rooms: Vec<serde_json::Value> = hub
        .list(client_id)
        .into_iter()
        .map(|(room, members)| serde_json::json!({ "room": room, "members": members }))
        .collect();
    let mut resp = Response::new(crate::body::full(
        serde_json::json!({ "clientId": client_id, "rooms": rooms }).to_string(),
    ));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// A client joining `room` of the agent behind `link`.
pub(crate) async fn join(
    hub: &RoomHub,
    link: Arc<AgentLink>,
    mut req: Request<TunnelBody>,
    room: &str,
    peer: SocketAddr,
) -> Response<TunnelBody> {
    let client_id = link.client_id.clone();
    let fail = |status, code: &'static str, message: &str| {
        error_response(status, code, Some(&client_id), message)
    };
    if !valid_room(room) {
        return fail(
            StatusCode::BAD_REQUEST,
            "invalid_room",
            "room names are 1-64 of A-Z a-z 0-9 . _ -",
        );
    }
    let accept = match upgrade::accept_key(&req) {
        Ok(a) => a,
        Err(why) => return fail(StatusCode::BAD_REQUEST, "bad_websocket_handshake", why),
    };
    let channel = match hub.channel(&link).await {
        Ok(c) => c,
        Err(why) => {
            info!(client_id = %client_id, "rooms unavailable: {why}");
            return fail(StatusCode::BAD_GATEWAY, "rooms_unavailable", &why);
        }
    };
    if channel.member_count() >= hub.limits.max_members_per_agent {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "rooms_full",
            "this agent's rooms are full on this node",
        );
    }
    if channel.room_size(room) >= hub.limits.max_members_per_room {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "rooms_full",
            "this room is full on this node",
        );
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    let mut client_headers = req.headers().clone();
    headers::strip_hop_by_hop(&mut client_headers);
    for name in [
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        headers::CLIENT_HEADER,
    ] {
        client_headers.remove(name);
    }
    if let Ok(ip) = http::HeaderValue::from_str(&peer.ip().to_string()) {
        client_headers.insert("x-forwarded-for", ip);
    }
    let conn = hub.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
    let member = MemberSession {
        channel,
        room: room.to_string(),
        conn,
        headers: headers::to_wire(&client_headers),
        auth: link.rooms_auth,
        limits: hub.limits.clone(),
        ws_limits: hub.ws_limits.clone(),
    };
    let span = tracing::info_span!("member", client_id = %client_id, room = %room, member = conn);
    let slot = upgrade::ConnectionSlot::of(&req);
    tokio::spawn(
        async move {
            let _slot = slot;
            match on_upgrade.await {
                Ok(upgraded) => member.run(upgraded).await,
                Err(e) => debug!("member upgrade failed: {e}"),
            }
        }
        .instrument(span),
    );
    upgrade::switching(accept, None)
}
