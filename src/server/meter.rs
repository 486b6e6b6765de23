//! One client request at the edge, as the metrics and the access log see
//! it: in flight from its arrival until its response body is over, its
//! status, its body bytes each way, and the access-log line at the end.

use std::{sync::Arc, time::Instant};

use http::Response;

use super::{metrics::Carried, reply::FailureCode, state::Shared};
use crate::body::TunnelBody;

/// One client request at the edge, from its arrival until its response body
/// is over (finished, failed or abandoned): in flight meanwhile, its response
/// bytes counted, and its access-log line written at the end when enabled.
pub(super) struct RequestMeter<G> {
    shared: Arc<Shared>,
    started: Instant,
    sent: u64,
    /// Kept as long as the response body (the connection's busy mark).
    _guard: G,
    access: Option<Access>,
}

/// What the access log says of a request, gathered along the way.
struct Access {
    method: http::Method,
    path: String,
    status: u16,
    request_id: Option<u64>,
    carried: Option<Carried>,
}

impl<G: Send + Unpin + 'static> RequestMeter<G> {
    pub fn start<B>(shared: &Arc<Shared>, req: &http::Request<B>, guard: G) -> Self {
        shared.metrics.started();
        // Only the path: a query may hold a client token (`?token=`).
        let access = shared.live.access_log().then(|| Access {
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            status: 0,
            request_id: None,
            carried: None,
        });
        RequestMeter {
            shared: shared.clone(),
            started: Instant::now(),
            sent: 0,
            _guard: guard,
            access,
        }
    }

    /// The response head is ready: counted, and its body metered from here.
    pub fn answered(mut self, resp: Response<TunnelBody>) -> Response<TunnelBody> {
        let error = resp.extensions().get::<FailureCode>().map(|c| c.0);
        let status = resp.status().as_u16();
        self.shared
            .metrics
            .answered(status, error, self.started.elapsed());
        if let Some(access) = self.access.as_mut() {
            access.status = status;
            access.carried = resp.extensions().get::<Carried>().cloned();
            access.request_id = resp
                .headers()
                .get(crate::headers::REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok()?.parse().ok());
        }
        resp.map(|body| crate::body::metered(body, self))
    }
}

impl<G: Send + Unpin + 'static> crate::body::Meter for RequestMeter<G> {
    fn data(&mut self, bytes: u64) {
        self.sent += bytes;
    }
}

impl<G> Drop for RequestMeter<G> {
    fn drop(&mut self) {
        self.shared.metrics.finished(self.sent);
        if let Some(a) = &self.access {
            let (client_id, transport) = match &a.carried {
                Some(c) => (c.client_id.as_str(), c.transport.as_str()),
                None => ("-", "-"),
            };
            // status 0: the client went away before any answer.
            tracing::info!(
                target: "warren::access",
                method = %a.method,
                path = %a.path,
                status = a.status,
                bytes = self.sent,
                // Whole microseconds: a duration, not float noise.
                ms = (self.started.elapsed().as_micros() as f64) / 1000.0,
                request_id = a.request_id,
                client_id,
                transport,
                "access"
            );
        }
    }
}

/// Counts a client's request body bytes as they are read (by whichever node
/// or agent they go to), added to the total when the body is done.
pub(super) struct Received {
    shared: Arc<Shared>,
    bytes: u64,
}

impl Received {
    pub fn new(shared: &Arc<Shared>) -> Self {
        Received {
            shared: shared.clone(),
            bytes: 0,
        }
    }
}

impl crate::body::Meter for Received {
    fn data(&mut self, bytes: u64) {
        self.bytes += bytes;
    }
}

impl Drop for Received {
    fn drop(&mut self) {
        self.shared.metrics.received(self.bytes);
    }
}
