//! Micro-benchmarks of the wire codec: encoding and decoding request and
//! response heads (the per-request protocol cost) and control frames.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use warren_proto::*;

fn head() -> Open {
    Open::Http(RequestHead {
        request_id: 123_456,
        method: "GET".into(),
        uri: "/music/album/track-07.flac?session=abc123".into(),
        headers: [
            ("host", "tunnel.example.com"),
            (
                "user-agent",
                "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0",
            ),
            ("accept", "*/*"),
            ("range", "bytes=1048576-"),
            ("cookie", "session=0123456789abcdef0123456789abcdef"),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ]
        .iter()
        .map(|(n, v)| Header {
            name: n.to_string(),
            value: v.as_bytes().to_vec(),
        })
        .collect(),
        mode: Mode::Stream,
        body: false,
    })
}

fn reply() -> Reply {
    Reply::Head(ResponseHead {
        status: 206,
        headers: [
            ("content-type", "audio/flac"),
            ("content-length", "31457280"),
            ("content-range", "bytes 1048576-32505855/32505856"),
            ("accept-ranges", "bytes"),
            ("cache-control", "private, max-age=3600"),
        ]
        .iter()
        .map(|(n, v)| Header {
            name: n.to_string(),
            value: v.as_bytes().to_vec(),
        })
        .collect(),
    })
}

fn codec(c: &mut Criterion) {
    let head = head();
    let frame = encode_frame(&head, DEFAULT_MAX_HEAD_FRAME).unwrap();
    c.bench_function("encode request head", |b| {
        b.iter(|| encode_frame(black_box(&head), DEFAULT_MAX_HEAD_FRAME).unwrap())
    });
    c.bench_function("decode request head", |b| {
        b.iter(|| decode_frame::<Open>(black_box(&frame), DEFAULT_MAX_HEAD_FRAME).unwrap())
    });
    let reply = reply();
    let frame = encode_frame(&reply, DEFAULT_MAX_HEAD_FRAME).unwrap();
    c.bench_function("encode response head", |b| {
        b.iter(|| encode_frame(black_box(&reply), DEFAULT_MAX_HEAD_FRAME).unwrap())
    });
    c.bench_function("decode response head", |b| {
        b.iter(|| decode_frame::<Reply>(black_box(&frame), DEFAULT_MAX_HEAD_FRAME).unwrap())
    });
    let ping = encode_frame(&Control::Ping { seq: 42 }, MAX_CONTROL_FRAME).unwrap();
    c.bench_function("decode ping", |b| {
        b.iter(|| decode_frame::<Control>(black_box(&ping), MAX_CONTROL_FRAME).unwrap())
    });
}

criterion_group!(benches, codec);
criterion_main!(benches);
