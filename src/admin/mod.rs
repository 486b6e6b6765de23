//! The admin listener (`--admin-listen`) shared by server and agent: a small,
//! bounded HTTP/1.1 server for `/healthz`, `/readyz`, `/metrics` and, on the
//! server, the admin API and status page. What each path answers is the
//! caller's `AdminService`; this module only accepts, bounds and shuts down.
//! Off by default; meant for loopback or a private network (the metrics and
//! probes are unauthenticated, as scrapers and kubelets expect).

use std::{
    convert::Infallible, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, info, warn};

use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry as MetricsRegistry,
};

use crate::shutdown::Shutdown;

pub mod client;

/// Admin connections served at once: a dashboard, a scraper and a few curls
/// need a handful; more are refused rather than queued.
const MAX_CONNECTIONS: usize = 32;
/// Time a client has to send its request head (and, separately, its body).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request body the admin API reads (a JSON object of a few fields).
pub const MAX_BODY: usize = 16 * 1024;

pub type AdminResponse = Response<Full<Bytes>>;
pub type AdminFuture = Pin<Box<dyn Future<Output = AdminResponse> + Send>>;

/// What the admin listener answers; one per server or agent.
pub trait AdminService: Send + Sync + 'static {
    fn call(self: Arc<Self>, req: Request<Incoming>) -> AdminFuture;
}

/// Binds the admin listener.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = crate::accept::bind(addr, 64)?;
    if !addr.ip().is_loopback() {
        warn!(%addr, "the admin listener is not on loopback: /metrics and the probes need no token, keep it on a private network");
    }
    Ok(listener)
}

/// Serves `service` on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, service: Arc<dyn AdminService>, mut shutdown: Shutdown) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "admin listener up");
    }
    loop {
        let (stream, peer) = tokio::select! {
            accepted = crate::accept::next(&listener, "admin") => accepted,
            _ = shutdown.wait() => break,
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(%peer, "admin connection refused: {MAX_CONNECTIONS} already open");
            continue;
        };
        let service = service.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let handler = service_fn(move |req| {
                let service = service.clone();
                async move { Ok::<_, Infallible>(service.call(req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), handler);
            tokio::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                _ = shutdown.wait() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(%peer, "admin connection ended with an error: {e}");
            }
        });
    }
}

/// A new metric of type `M`, registered in `registry` under `name`.
pub fn metric<M>(registry: &mut MetricsRegistry, name: &str, help: &str) -> M
where
    M: Default + Clone + prometheus_client::registry::Metric,
{
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// Counters by HTTP status class (1xx … 5xx), each resolved once, so that
/// counting a status is one atomic add and no label lookup.
pub struct ByClass([Counter; 5]);

impl ByClass {
    pub fn register(registry: &mut MetricsRegistry, name: &str, help: &str) -> ByClass {
        let family: Family<[(&'static str, &'static str); 1], Counter> =
            metric(registry, name, help);
        ByClass(
            ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .map(|class| family.get_or_create(&[("class", class)]).clone()),
        )
    }

    pub fn count(&self, status: u16) {
        if let Some(counter) = (status / 100)
            .checked_sub(1)
            .and_then(|i| self.0.get(i as usize))
        {
            counter.inc();
        }
    }
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &serde_json::Value) -> AdminResponse {
    respond(status, "application/json", value.to_string())
}

/// An error: `{"error": code, "message": text}`.
pub fn error(status: StatusCode, code: &str, message: &str) -> AdminResponse {
    json(
        status,
        &serde_json::json!({ "error": code, "message": message }),
    )
}

pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> AdminResponse {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The OpenMetrics text of a scrape.
pub fn metrics(text: String) -> AdminResponse {
    respond(
        StatusCode::OK,
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        text,
    )
}

/// `/readyz`: 200 when `problem` is `None`, else 503 saying what is wrong.
pub fn readiness(problem: Option<String>) -> AdminResponse {
    match problem {
        None => json(StatusCode::OK, &serde_json::json!({ "ready": true })),
        Some(why) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "ready": false, "reason": why }),
        ),
    }
}

/// The Bearer token of `req`, if it has one.
pub fn bearer<B>(req: &Request<B>) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Reads a JSON request body of at most [`MAX_BODY`] bytes.
pub async fn read_json(body: Incoming) -> Result<serde_json::Value, AdminResponse> {
    // Bounded in time too: a client trickling its body holds one of the
    // listener's few connections only this long.
    let read = tokio::time::timeout(HEADER_TIMEOUT, Limited::new(body, MAX_BODY).collect());
    let bytes = match read.await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(_)) => {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("the request body is over {MAX_BODY} bytes or broke off"),
            ))
        }
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                &format!("the request body did not arrive within {HEADER_TIMEOUT:?}"),
            ))
        }
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_json",
            &format!("the request body is not valid JSON: {e}"),
        )
    })
}
