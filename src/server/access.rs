//! Client access: an agent with client tokens (`warren token issue-client`)
//! answers only clients presenting one, as `Authorization: Bearer TOKEN` or a
//! `token` query parameter. The token is checked here, at the edge, against
//! stored hashes in constant time, and removed before the request goes on:
//! the service never sees it. Agents without client tokens are open.

use std::sync::Arc;

use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use tracing::info;

use super::{reply::error_response, state::Shared};
use crate::{auth, body::TunnelBody};

/// Checks `req` against `client_id`'s client tokens; on success the token
/// is stripped from the request (header or query). `Ok(true)`: the request
/// was changed (its target must be read again).
pub(super) async fn check<B>(
    shared: &Shared,
    req: &mut Request<B>,
    client_id: &str,
) -> Result<bool, Box<Response<TunnelBody>>> {
    let hashes = match shared.client_tokens.get(client_id) {
        Some(hashes) => hashes,
        None => match shared.registry.client_token_hashes(client_id).await {
            Ok(hashes) => {
                let hashes = Arc::new(hashes);
                shared.client_tokens.put(client_id, hashes.clone());
                hashes
            }
            Err(e) => {
                // Fail closed: an agent that may require tokens is not
                // opened up by a registry outage.
                info!(client_id, "client tokens unavailable: {e}");
                return Err(Box::new(error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "registry_unavailable",
                    Some(client_id),
                    "the server cannot check client tokens right now; retry later",
                )));
            }
        },
    };
    if hashes.is_empty() {
        return Ok(false);
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        });
    let (query_token, without_token) = take_query_token(req.uri());
    let Some(presented) = bearer.clone().or(query_token) else {
        return Err(Box::new(challenge(error_response(
            StatusCode::UNAUTHORIZED,
            "client_token_required",
            Some(client_id),
            "this agent requires a client token: Authorization: Bearer TOKEN, or ?token=TOKEN",
        ))));
    };
    if !auth::matches_any(&hashes, &presented) {
        info!(client_id, "request with a wrong client token refused");
        return Err(Box::new(challenge(error_response(
            StatusCode::UNAUTHORIZED,
            "bad_client_token",
            Some(client_id),
            "the client token is not valid for this agent",
        ))));
    }
    if bearer.is_some() {
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    if let Some(uri) = without_token {
        *req.uri_mut() = uri;
    }
    Ok(true)
}

/// A 401 that says how to authenticate (RFC 9110 §11.6.1).
fn challenge(mut resp: Response<TunnelBody>) -> Response<TunnelBody> {
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"warren\""),
    );
    resp
}

/// The `token` query parameter's value, and the URI without it (other
/// parameters byte-exact); `(None, None)` when there is none.
fn take_query_token(uri: &Uri) -> (Option<String>, Option<Uri>) {
    let Some(query) = uri.query() else {
        return (None, None);
    };
    let mut token = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("token=") {
            Some(value) if token.is_none() => {
                token = Some(value.to_string());
                false
            }
            _ => true,
        })
        .collect();
    if token.is_none() {
        return (None, None);
    }
    let path = uri.path();
    let rebuilt = if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = rebuilt.parse().ok();
    (token, Uri::from_parts(parts).ok())
}

#[cfg(test)]
mod tests {
    use super::take_query_token;

    #[test]
    fn the_token_parameter_is_taken_out_and_the_rest_kept() {
        let uri = "/a?x=1&token=wcl_1&y=2".parse().unwrap();
        let (token, rest) = take_query_token(&uri);
        assert_eq!(token.as_deref(), Some("wcl_1"));
        assert_eq!(rest.unwrap().to_string(), "/a?x=1&y=2");
        let (token, rest) = take_query_token(&"/a?token=t".parse().unwrap());
        assert_eq!(token.as_deref(), Some("t"));
        assert_eq!(rest.unwrap().to_string(), "/a");
        assert_eq!(take_query_token(&"/a?x=1".parse().unwrap()), (None, None));
    }
}
