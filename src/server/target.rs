//! Which agent a client request is for, and how to answer it: the client id
//! from the `clientId` query parameter, the `X-Warren-Client` header or a
//! `<clientId>.<base-domain>` host; the mode from `mode=` or `X-Warren-Mode`.
//! warren's own parameters are removed from what is forwarded.

use http::{header, Request, Response, StatusCode};
use warren_proto::Mode;

use super::reply::error_response;
use crate::{
    auth,
    body::TunnelBody,
    headers::{CLIENT_HEADER, MODE_HEADER},
};

/// Who a request is for, and how to answer it.
pub(super) struct Target {
    pub client_id: String,
    pub mode: Mode,
    /// Path and query to forward (warren's own parameters removed).
    pub uri: String,
}

/// Resolves the agent and the mode from the request.
pub(super) fn target<B>(
    req: &Request<B>,
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
                ("clientId", v) => {
                    if client_id.as_deref().is_some_and(|first| first != v) {
                        // Which one did the client mean? Neither is guessed,
                        // and neither is passed to the service.
                        return Err(Box::new(error_response(
                            StatusCode::BAD_REQUEST,
                            "ambiguous_client_id",
                            client_id.as_deref(),
                            "the request names clientId more than once, differently",
                        )));
                    }
                    client_id = Some(v.to_string());
                }
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
fn host<B>(req: &Request<B>) -> Option<String> {
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
