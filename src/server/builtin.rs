//! warren's own endpoints under `/_warren/`: the health report and the
//! dependency-free browser client for rooms. (Room joins and the room listing
//! belong to `rooms`.)

use http::{header, HeaderValue, Response, StatusCode};

use super::{
    reply::{error_response, json_response},
    state::Shared,
};
use crate::body::{self, TunnelBody};

/// The dependency-free browser client for rooms.
const WARREN_JS: &str = include_str!("warren.js");

pub(super) fn respond(shared: &Shared, path: &str) -> Response<TunnelBody> {
    match path {
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
                "admitted": shared.admitted.load(std::sync::atomic::Ordering::Relaxed),
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
