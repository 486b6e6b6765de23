//! A small sample upstream: the local service the demo, the tests and the
//! benchmark put behind an agent. It serves deterministic incompressible bytes
//! (with `Range` and pacing, like an audio file), echoes requests, and can
//! misbehave on purpose (truncate, hang) so error paths can be exercised.
//!
//! Long because: one route table of small endpoints (each misbehaving in its
//! own way on purpose); split up, the list of what the sample can do is lost.
//!
//! Routes:
//! - `GET|HEAD /bytes/N[?chunk=K&delay_ms=D]`: N bytes of the pattern, `Range` aware;
//!   with `delay_ms`, paced as K-byte chunks every D ms.
//! - `POST|PUT /sha256`: `{"bytes": n, "sha256": hex}` of the request body.
//! - `ANY /echo`: the request body back, same Content-Type.
//! - `ANY /headers`: `{"method", "uri", "headers": [[name, value], …]}`.
//! - `GET /cookies`: three `Set-Cookie` headers.
//! - `GET /status/CODE`: an empty response with that status.
//! - `GET /truncate/N`: declares 2N bytes, sends N, then breaks the connection.
//! - `GET /hang`: never answers.
//! - `GET /range-check`: a page that fetches a byte range of `/bytes` (with
//!   its own query) and writes status, length, first byte and protocol.
//! - `GET /rooms-demo?room=R&clientId=ID[&auth=A]`: a page that joins room R
//!   with `/_warren/warren.js`, logs what arrives, says hello, and answers
//!   messages starting with `ping` with `pong:<message>`.
//! - `GET /ws/echo` (WebSocket): echoes text and binary messages; the text
//!   `close:CODE` makes it close with that code; picks the first subprotocol
//!   offered.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};

use crate::control::AbortOnDrop;

type SampleBody = UnsyncBoxBody<Bytes, std::io::Error>;

/// Length of the repeating pattern block. 1 MiB of PRNG output: incompressible
/// in practice, and slices of it are served without copying.
const PATTERN_LEN: usize = 1 << 20;

/// The pattern byte at every offset: `pattern()[offset % PATTERN_LEN]`.
pub fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut state: u64 = 0x5741_5252_454e_0001; // "WARREN" + 1
        let mut out = Vec::with_capacity(PATTERN_LEN);
        while out.len() < PATTERN_LEN {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        Bytes::from(out)
    })
}

/// The SHA-256 of pattern bytes `[start, start + len)`, for checking downloads.
pub fn pattern_sha256(start: u64, len: u64) -> String {
    let mut hasher = Sha256::new();
    for chunk in pattern_chunks(start, len, PATTERN_LEN) {
        hasher.update(&chunk);
    }
    hex::encode(hasher.finalize())
}

/// Zero-copy slices of the pattern covering `[start, start + len)`.
fn pattern_chunks(start: u64, len: u64, max_chunk: usize) -> impl Iterator<Item = Bytes> {
    let block = pattern().clone();
    let end = start + len;
    let mut at = start;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let offset = (at % PATTERN_LEN as u64) as usize;
        let n = ((end - at) as usize)
            .min(PATTERN_LEN - offset)
            .min(max_chunk);
        at += n as u64;
        Some(block.slice(offset..offset + n))
    })
}

/// A running sample upstream; stops when dropped.
pub struct SampleUpstream {
    addr: SocketAddr,
    stats: Arc<Stats>,
    _task: AbortOnDrop<()>,
}

/// What the sample upstream has seen, for tests that check the far end.
#[derive(Default)]
pub struct Stats {
    /// `/bytes` response bodies currently alive (not yet finished or dropped).
    pub open_bodies: AtomicUsize,
    /// Requests received.
    pub requests: AtomicUsize,
    /// Close code of the last WebSocket a client closed (0: none yet).
    pub last_ws_close: AtomicUsize,
}

/// Counts a response body as open for as long as it is alive.
struct OpenBody(Arc<Stats>);

impl OpenBody {
    fn new(stats: &Arc<Stats>) -> Self {
        stats.open_bodies.fetch_add(1, Ordering::SeqCst);
        OpenBody(stats.clone())
    }
}

impl Drop for OpenBody {
    fn drop(&mut self) {
        self.0.open_bodies.fetch_sub(1, Ordering::SeqCst);
    }
}

impl SampleUpstream {
    pub async fn spawn(addr: SocketAddr) -> std::io::Result<SampleUpstream> {
        // A real service's backlog, so bursts of listeners are not dropped.
        let listener = crate::accept::bind(addr, crate::accept::DEFAULT_BACKLOG)?;
        let addr = listener.local_addr()?;
        let stats = Arc::new(Stats::default());
        let task_stats = stats.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let stats = task_stats.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| route(stats.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(SampleUpstream {
            addr,
            stats,
            _task: AbortOnDrop(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

fn full(body: impl Into<Bytes>) -> SampleBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<SampleBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp
}

fn query_param<T: std::str::FromStr>(req: &Request<Incoming>, name: &str) -> Option<T> {
    req.uri()
        .query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

async fn route(
    stats: Arc<Stats>,
    req: Request<Incoming>,
) -> Result<Response<SampleBody>, Infallible> {
    stats.requests.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let resp = match (req.method().clone(), segments.as_slice()) {
        (_, [""]) => respond(
            StatusCode::OK,
            "Hello from the sample upstream behind warren.\n\
             Try /bytes/1048576, /headers, /cookies, or POST a body to /echo or /sha256.\n",
        ),
        (Method::GET | Method::HEAD, ["bytes", n]) => match n.parse::<u64>() {
            Ok(n) => bytes(&req, n, OpenBody::new(&stats)),
            Err(_) => respond(StatusCode::BAD_REQUEST, "size must be a number\n"),
        },
        (Method::POST | Method::PUT, ["sha256"]) => sha256(req).await,
        (Method::POST | Method::PUT, ["trailers"]) => trailers(req).await,
        (_, ["echo"]) => {
            let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
            let mut resp = Response::new(
                req.into_body()
                    .map_err(std::io::Error::other)
                    .boxed_unsync(),
            );
            if let Some(ct) = content_type {
                resp.headers_mut().insert(header::CONTENT_TYPE, ct);
            }
            resp
        }
        (_, ["headers"]) => {
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = serde_json::json!({
                "method": req.method().as_str(),
                "uri": req.uri().to_string(),
                "headers": headers,
            });
            let mut resp = respond(StatusCode::OK, body.to_string());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        (Method::GET, ["cookies"]) => {
            let mut resp = respond(StatusCode::OK, "three cookies\n");
            for c in ["a=1; Path=/", "b=2; Path=/", "c=3; Path=/; HttpOnly"] {
                resp.headers_mut()
                    .append(header::SET_COOKIE, HeaderValue::from_static(c));
            }
            resp
        }
        (_, ["status", code]) => match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => respond(status, Bytes::new()),
            None => respond(StatusCode::BAD_REQUEST, "bad status\n"),
        },
        (Method::GET, ["truncate", n]) => match n.parse::<u64>() {
            Ok(n) => truncated(n),
            Err(_) => respond(StatusCode::BAD_REQUEST, "size must be a number\n"),
        },
        (Method::GET, ["ws", "echo"]) => ws_echo(stats, req),
        (Method::GET, ["rooms-demo"]) => html(ROOMS_DEMO),
        (Method::GET, ["range-check"]) => html(RANGE_CHECK),
        (Method::GET | Method::HEAD, ["tone.wav"]) => tone(&req),
        (Method::GET, ["audio-check"]) => html(AUDIO_CHECK),
        (Method::GET, ["hang"]) => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => respond(StatusCode::NOT_FOUND, "no such route\n"),
    };
    Ok(resp)
}

fn html(page: &'static str) -> Response<SampleBody> {
    let mut resp = respond(StatusCode::OK, page);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// A page that fetches a byte range of `/bytes` and writes what it got
/// (status, length, first byte, the protocol the page came over) into
/// `#result`: a browser's view of the client edge, read with `--dump-dom`.
const RANGE_CHECK: &str = r#"<!doctype html>
<meta charset="utf-8"><title>warren range check</title>
<pre id="result">running</pre>
<script>
(async () => {
  const out = document.getElementById("result");
  try {
    const r = await fetch("/bytes/100000" + location.search, { headers: { Range: "bytes=1000-1999" } });
    const body = new Uint8Array(await r.arrayBuffer());
    const nav = performance.getEntriesByType("navigation")[0];
    out.textContent = `status=${r.status} length=${body.length} first=${body[0]} protocol=${nav.nextHopProtocol}`;
  } catch (e) {
    out.textContent = "error " + e;
  }
})();
</script>
"#;

/// A page that plays `/tone.wav` (muted), seeks to 25 s, and writes what
/// the player saw into `#result` (duration, where it landed, whether it has
/// the audio there and is playing, the protocol): audio with seeking
/// through the tunnel, from a browser's side.
const AUDIO_CHECK: &str = r#"<!doctype html>
<meta charset="utf-8"><title>warren audio check</title>
<pre id="result">running</pre>
<audio id="player" preload="auto" muted></audio>
<script>
(async () => {
  const out = document.getElementById("result");
  const audio = document.getElementById("player");
  const once = (name) => new Promise((ok) => audio.addEventListener(name, ok, { once: true }));
  try {
    audio.src = "/tone.wav" + location.search;
    await once("loadedmetadata");
    await audio.play();
    audio.currentTime = 25;
    await once("seeked");
    const landed = audio.currentTime;
    // Data at the new place (fetched by a range request): event-driven, as
    // headless runs timers on virtual time, not the media clock.
    if (audio.readyState < 3) await once("canplay");
    let buffered = false;
    for (let i = 0; i < audio.buffered.length; i++) {
      buffered ||= audio.buffered.start(i) <= landed && landed < audio.buffered.end(i);
    }
    const nav = performance.getEntriesByType("navigation")[0];
    out.textContent = `duration=${audio.duration.toFixed(1)} landed=${landed.toFixed(1)} ` +
      `buffered=${buffered} playing=${!audio.paused} protocol=${nav.nextHopProtocol}`;
  } catch (e) {
    out.textContent = "error " + e;
  }
})();
</script>
"#;

const ROOMS_DEMO: &str = r#"<!doctype html>
<meta charset="utf-8"><title>warren rooms demo</title>
<pre id="log">joining…</pre>
<script src="/_warren/warren.js"></script>
<script>
  const q = new URLSearchParams(location.search);
  const log = (line) => { document.getElementById("log").textContent += "\n" + line; };
  const room = warren.connect({
    room: q.get("room") || "lobby",
    clientId: q.get("clientId") || undefined,
    auth: q.get("auth") || undefined,
  });
  room.onopen = () => { log("joined"); room.send("hello from the browser"); };
  room.onmessage = (data) => {
    log(typeof data === "string" ? data : "[" + data.byteLength + " bytes]");
    if (typeof data === "string" && data.startsWith("ping")) room.send("pong:" + data);
  };
  room.onclose = (code, reason) => log("closed " + code + " " + reason);
</script>
"#;

fn ws_echo(stats: Arc<Stats>, mut req: Request<Incoming>) -> Response<SampleBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{handshake::derive_accept_key, protocol::Role, Message};
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return respond(StatusCode::BAD_REQUEST, "WebSocket upgrade expected\n");
    };
    let protocol = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|p| p.trim().to_string());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let config = crate::websocket::WsLimits::default().config();
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(config),
        )
        .await;
        while let Some(Ok(message)) = ws.next().await {
            #[allow(clippy::collapsible_match)]
            match message {
                Message::Text(t) if t.as_str().starts_with("close:") => {
                    let code = t.as_str()[6..].parse().unwrap_or(1000);
                    let _ = ws
                        .send(crate::websocket::close(code, "asked to close"))
                        .await;
                }
                Message::Text(_) | Message::Binary(_) => {
                    if ws.send(message).await.is_err() {
                        return;
                    }
                }
                Message::Close(frame) => {
                    let code = frame.map(|f| u16::from(f.code)).unwrap_or(1005);
                    stats.last_ws_close.store(code as usize, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    });
    let mut resp = respond(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("ascii"),
    );
    if let Some(p) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        h.insert("sec-websocket-protocol", p);
    }
    resp
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` (single range) against `len`.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (len.saturating_sub(n), len.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, len.checked_sub(1)?),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.min(len.checked_sub(1)?),
        ),
    };
    (start <= end && end < len).then_some((start, end))
}

fn bytes(req: &Request<Incoming>, len: u64, open: OpenBody) -> Response<SampleBody> {
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, start, count) = match range {
        None => (StatusCode::OK, 0, len),
        Some(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Some(None) => {
            let mut resp = respond(StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new());
            resp.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
            return resp;
        }
    };
    let chunk: usize = query_param(req, "chunk")
        .unwrap_or(256 * 1024)
        .clamp(1, PATTERN_LEN);
    let delay: u64 = query_param(req, "delay_ms").unwrap_or(0);
    let chunks = pattern_chunks(start, count, chunk);
    // `open` lives in the stream's state: dropped when the body ends or is
    // abandoned, which is what tests of upstream cancellation watch.
    let body: SampleBody = if delay == 0 {
        let chunks = chunks.map(move |c| {
            let _alive = &open;
            Ok(Frame::data(c))
        });
        StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync()
    } else {
        let state = (chunks, open);
        let paced = futures_util::stream::unfold(state, move |(mut chunks, open)| async move {
            let chunk = chunks.next()?;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Some((Ok(Frame::data(chunk)), (chunks, open)))
        });
        StreamBody::new(paced).boxed_unsync()
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{}/{len}", start + count - 1);
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&value).expect("ascii"),
        );
    }
    resp
}

/// Seconds of audio in `/tone.wav`: long enough (2.9 MB) that a player
/// seeking near its end asks for a range rather than having it all.
const TONE_SECONDS: u32 = 30;
/// 48 kHz, mono, 16-bit PCM.
const TONE_RATE: u32 = 48_000;

/// A 440 Hz tone as a WAV file, whole or a byte range of it (what an audio
/// element asks for when it seeks).
fn tone(req: &Request<Incoming>) -> Response<SampleBody> {
    static WAV: OnceLock<Bytes> = OnceLock::new();
    let wav = WAV.get_or_init(|| {
        let samples = TONE_SECONDS * TONE_RATE;
        let data_len = samples * 2;
        let mut out = Vec::with_capacity(44 + data_len as usize);
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data_len).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
        out.extend_from_slice(&1u16.to_le_bytes()); // PCM
        out.extend_from_slice(&1u16.to_le_bytes()); // mono
        out.extend_from_slice(&TONE_RATE.to_le_bytes());
        out.extend_from_slice(&(TONE_RATE * 2).to_le_bytes()); // bytes per second
        out.extend_from_slice(&2u16.to_le_bytes()); // block align
        out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
        out.extend_from_slice(b"data");
        out.extend_from_slice(&data_len.to_le_bytes());
        for i in 0..samples {
            let t = i as f64 / f64::from(TONE_RATE);
            let v = (t * 440.0 * std::f64::consts::TAU).sin() * 8000.0;
            out.extend_from_slice(&(v as i16).to_le_bytes());
        }
        Bytes::from(out)
    });
    let len = wav.len() as u64;
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len - 1),
        Some(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b),
        Some(None) => return respond(StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new()),
    };
    let mut resp = respond(status, wav.slice(start as usize..=end as usize));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        let value = format!("bytes {start}-{end}/{len}");
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&value).expect("ascii"),
        );
    }
    resp
}

/// Reads the body to its end and answers with its size, then trailers: the
/// request's own, echoed as `x-echo-NAME`, and `x-body-sha256` (announced
/// in `Trailer`, which an HTTP/1.1 hop needs to send them).
async fn trailers(req: Request<Incoming>) -> Response<SampleBody> {
    let mut body = req.into_body();
    let (mut hasher, mut total) = (Sha256::new(), 0u64);
    let mut theirs = http::HeaderMap::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return respond(StatusCode::BAD_REQUEST, format!("body broke off: {e}\n")),
        };
        match frame.into_data() {
            Ok(data) => {
                total += data.len() as u64;
                hasher.update(&data);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    theirs = t;
                }
            }
        }
    }
    let mut out = http::HeaderMap::new();
    for (name, value) in &theirs {
        if let Ok(echo) = header::HeaderName::from_bytes(format!("x-echo-{name}").as_bytes()) {
            out.append(echo, value.clone());
        }
    }
    let digest = hex::encode(hasher.finalize());
    out.insert(
        "x-body-sha256",
        HeaderValue::from_str(&digest).expect("hex"),
    );
    let names: Vec<&str> = out.keys().map(|k| k.as_str()).collect();
    let announce = HeaderValue::from_str(&names.join(", ")).expect("header names");
    let frames = [
        Ok(Frame::data(Bytes::from(format!("{total} bytes\n")))),
        Ok(Frame::trailers(out)),
    ];
    let mut resp =
        Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync());
    resp.headers_mut().insert(header::TRAILER, announce);
    resp
}

async fn sha256(req: Request<Incoming>) -> Response<SampleBody> {
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    total += data.len() as u64;
                    hasher.update(&data);
                }
            }
            Err(e) => return respond(StatusCode::BAD_REQUEST, format!("body broke off: {e}\n")),
        }
    }
    let body = serde_json::json!({ "bytes": total, "sha256": hex::encode(hasher.finalize()) });
    let mut resp = respond(StatusCode::OK, body.to_string());
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn truncated(n: u64) -> Response<SampleBody> {
    let data = pattern_chunks(0, n, PATTERN_LEN).map(|c| Ok(Frame::data(c)));
    let data = futures_util::stream::iter(data);
    // Pause before breaking so the head and the data surely went out first.
    let broken = futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err(std::io::Error::other(
            "sample upstream truncates on purpose",
        ))
    });
    let body = StreamBody::new(futures_util::StreamExt::chain(data, broken)).boxed_unsync();
    let mut resp = Response::new(body);
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(2 * n));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }

    #[test]
    fn pattern_chunks_cover_ranges_across_the_block_edge() {
        let start = PATTERN_LEN as u64 - 10;
        let got: Vec<u8> = pattern_chunks(start, 20, 7)
            .flat_map(|c| c.to_vec())
            .collect();
        let p = pattern();
        let want: Vec<u8> = (0..20u64)
            .map(|i| p[((start + i) % PATTERN_LEN as u64) as usize])
            .collect();
        assert_eq!(got, want);
    }
}
