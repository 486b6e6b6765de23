//! An in-process service for an embedded agent: the program that embeds the
//! agent answers its clients' requests itself, with no local HTTP hop. A
//! request arrives as `http::Request<TunnelBody>` (its body streaming from
//! the tunnel); the response's body streams back with the same backpressure
//! and truncation rules as an HTTP upstream's (a body that fails midway
//! resets the stream: the client sees an error, never a short body).

use std::{future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt};

use crate::body::TunnelBody;

/// Errors of a service's response body, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A service's response, its body boxed.
pub type ServiceResponse = Response<UnsyncBoxBody<Bytes, BoxError>>;
type Call = dyn Fn(Request<TunnelBody>) -> Pin<Box<dyn Future<Output = Result<ServiceResponse, String>> + Send>>
    + Send
    + Sync;

/// What answers an embedded agent's requests; cheap to clone.
#[derive(Clone)]
pub struct LocalService(Arc<Call>);

impl std::fmt::Debug for LocalService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalService(…)")
    }
}

impl LocalService {
    /// A service from an async function of the request.
    pub fn from_fn<F, Fut, B>(f: F) -> LocalService
    where
        F: Fn(Request<TunnelBody>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<B>> + Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        LocalService(Arc::new(move |req| {
            let answer = f(req);
            Box::pin(async move { Ok(answer.await.map(|b| b.map_err(Into::into).boxed_unsync())) })
        }))
    }

    /// A service from a `tower::Service` (cloned per request, as hyper does);
    /// its error becomes a 502 `upstream_unavailable` for the client.
    pub fn from_tower<S, B>(service: S) -> LocalService
    where
        S: tower_service::Service<Request<TunnelBody>, Response = Response<B>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: std::fmt::Display,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        LocalService(Arc::new(move |req| {
            let mut service = service.clone();
            Box::pin(async move {
                std::future::poll_fn(|cx| service.poll_ready(cx))
                    .await
                    .map_err(|e| e.to_string())?;
                let resp = service.call(req).await.map_err(|e| e.to_string())?;
                Ok(resp.map(|b| b.map_err(Into::into).boxed_unsync()))
            })
        }))
    }

    pub(super) async fn call(&self, req: Request<TunnelBody>) -> Result<ServiceResponse, String> {
        (self.0)(req).await
    }
}
