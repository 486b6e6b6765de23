//! A program that serves files itself and opens its own tunnel: the agent
//! embedded, no local HTTP hop (the music-server case). `GET /NAME` answers
//! the file `DIR/NAME`, with `Range` (one range: `bytes=A-B`, `A-`, `-N`),
//! `HEAD`, 404 for what is not a file under DIR, 416 for a range past the end.
//!
//!     WARREN_TOKEN=wrn_… cargo run --example embedded_files -- \
//!         tunnel.example.com:7443 music-box ./music [server.pem]
//!
//! then `curl -r 0-999 'http://SERVER/song.ogg?clientId=music-box'`.

use std::{
    io::SeekFrom,
    path::{Component, Path, PathBuf},
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use warren::{
    agent::{BoxError, LocalService},
    body::TunnelBody,
};

type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Read size: large enough that per-chunk costs vanish on bulk transfers.
const CHUNK: usize = 128 * 1024;

/// The files under `root`, as a service for an embedded agent.
pub fn file_service(root: PathBuf) -> LocalService {
    LocalService::from_fn(move |req| serve(root.clone(), req))
}

async fn serve(root: PathBuf, req: Request<TunnelBody>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD only\n");
    }
    let Some(path) = under(&root, req.uri().path()) else {
        return plain(StatusCode::NOT_FOUND, "no such file\n");
    };
    let Ok(mut file) = tokio::fs::File::open(&path).await else {
        return plain(StatusCode::NOT_FOUND, "no such file\n");
    };
    let len = match file.metadata().await {
        Ok(m) if m.is_file() => m.len(),
        _ => return plain(StatusCode::NOT_FOUND, "no such file\n"),
    };
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok());
    let (status, start, end) = match range.map(|r| parse_range(r, len)) {
        None => (StatusCode::OK, 0, len),
        Some(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(None) => {
            let mut resp = plain(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable\n");
            resp.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
            return resp;
        }
    };
    let body = if req.method() == Method::HEAD {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    } else {
        if file.seek(SeekFrom::Start(start)).await.is_err() {
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot seek\n");
        }
        let chunks =
            futures_util::stream::unfold((file, end - start), |(mut file, left)| async move {
                if left == 0 {
                    return None;
                }
                let mut buf = vec![0u8; CHUNK.min(left as usize)];
                match file.read(&mut buf).await {
                    // A file that shrank under us: an error, never a short body.
                    Ok(0) => Some((Err(BoxError::from("the file ended early")), (file, 0))),
                    Ok(n) => {
                        buf.truncate(n);
                        Some((
                            Ok(http_body::Frame::data(Bytes::from(buf))),
                            (file, left - n as u64),
                        ))
                    }
                    Err(e) => Some((Err(BoxError::from(e)), (file, 0))),
                }
            });
        StreamBody::new(chunks).boxed_unsync()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {start}-{}/{len}", end - 1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&range).expect("ascii"),
        );
    }
    resp
}

/// `url_path` as a file under `root`; `None` for anything that would leave it.
fn under(root: &Path, url_path: &str) -> Option<PathBuf> {
    let relative = Path::new(url_path.trim_start_matches('/'));
    relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| root.join(relative))
}

/// One `bytes=` range of a `len`-byte file as `[start, end)`; `None` when it
/// cannot be satisfied.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?.trim();
    let (first, last) = spec.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().ok()?, len),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.saturating_add(1).min(len),
        ),
    };
    (start < end && start < len).then_some((start, end))
}

fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp
}

#[allow(dead_code)] // the tests include this file for `file_service`
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, client_id, dir, rest @ ..] = args.as_slice() else {
        eprintln!(
            "usage: embedded_files SERVER:PORT CLIENT_ID DIR [CA.pem]  (token in WARREN_TOKEN)"
        );
        std::process::exit(2);
    };
    let token = std::env::var("WARREN_TOKEN")?;
    let trust = match rest.first() {
        Some(ca) => warren::tls::Trust::CaFile(ca.into()),
        None => warren::tls::Trust::System,
    };
    let agent = warren::agent::Agent::builder()
        .server(server)
        .client_id(client_id)
        .token(&token)
        .trust(trust)
        .serve(file_service(dir.into()))?;
    let (stop, shutdown) = warren::shutdown::channel();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.fire();
    });
    agent.run(shutdown).await?;
    Ok(())
}
