//! The agent's admin listener (`--admin-listen`): `/healthz` (the process is
//! up), `/readyz` (at least one connection to the server is up) and
//! `/metrics`. The listener itself is `crate::admin`.

use std::sync::Arc;

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use super::{slot::Slots, status::AgentStatus};
use crate::admin::{self, AdminFuture, AdminService};

pub(super) struct AgentAdmin(pub Arc<Slots>);

impl AdminService for AgentAdmin {
    fn call(self: Arc<Self>, req: Request<Incoming>) -> AdminFuture {
        let slots = &self.0;
        let resp = match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => admin::respond(StatusCode::OK, "text/plain", "ok\n"),
            (&Method::GET, "/readyz") => {
                let connected = slots
                    .status
                    .iter()
                    .any(|s| matches!(&*s.borrow(), AgentStatus::Connected { .. }));
                admin::readiness(
                    (!connected).then(|| "no connection to the server is up".to_string()),
                )
            }
            (&Method::GET, "/metrics") => {
                admin::metrics(slots.dispatch.metrics.render(&slots.status))
            }
            _ => admin::error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        };
        Box::pin(std::future::ready(resp))
    }
}
