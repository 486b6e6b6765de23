//! Golden byte vectors: the exact bytes of every message kind. If one of these
//! fails, the wire format changed; that breaks every deployed agent, so bump
//! `PROTOCOL_VERSION` and document the change in PROTOCOL.md instead of
//! editing the vector.

use warren_proto::*;

fn hello() -> Control {
    Control::Hello(Hello {
        version: 2,
        client_id: "music".into(),
        token: "wrn_ab".into(),
        agent: "warren/0.1.0".into(),
        capabilities: vec!["rooms".into()],
        transport_note: "q".into(),
        replaces: Some("t-0".into()),
    })
}

fn welcome() -> Control {
    Control::Welcome(Welcome {
        tunnel_ws_id: "t-1".into(),
        node_id: "n1".into(),
        heartbeat_ms: 10_000,
        limits: Limits {
            max_head_frame: 262_144,
            max_streams: 1024,
        },
    })
}

fn request() -> Open {
    Open::Http(RequestHead {
        request_id: 7,
        method: "GET".into(),
        uri: "/a?b=1".into(),
        headers: vec![Header {
            name: "x".into(),
            value: vec![0xff],
        }],
        mode: Mode::Blocking,
        body: false,
    })
}

fn check<T>(msg: &T, golden: &str)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let frame = encode_frame(msg, 1 << 20).unwrap();
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, golden, "wire bytes of {msg:?} changed");
    let (back, used) = decode_frame::<T>(&frame, 1 << 20).unwrap().unwrap();
    assert_eq!(&back, msg);
    assert_eq!(used, frame.len());
}

#[test]
fn control_messages() {
    check(
        &hello(),
        "0000002a0002056d757369630677726e5f61620c77617272656e2f302e312e300105726f6f6d7301710103742d30",
    );
    // Variant 1; heartbeat 10000 = varint 90 4e; limits 80 80 10 and 80 08.
    check(&welcome(), "0000000f0103742d31026e31904e8080108008");
    check(
        &Control::Refused(Refusal {
            code: RefusalCode::BadToken,
            message: "no".into(),
        }),
        "000000050200026e6f",
    );
    // Variant 3 (Ping), seq 300 as the varint ac 02: frame length 3.
    check(&Control::Ping { seq: 300 }, "0000000303ac02");
    check(&Control::Pong { seq: 1 }, "000000020401");
    check(
        &Control::GoAway {
            reason: "bye".into(),
        },
        "000000050503627965",
    );
}

#[test]
fn stream_messages() {
    check(
        &request(),
        "00000014000703474554062f613f623d3101017801ff0100",
    );
    check(
        &Reply::Head(ResponseHead {
            status: 206,
            headers: vec![Header {
                name: "content-range".into(),
                value: b"bytes 0-1/2".to_vec(),
            }],
        }),
        "0000001e00ce01010d636f6e74656e742d72616e67650b627974657320302d312f32",
    );
    check(
        &Reply::Error(StreamError {
            kind: ErrorKind::UpstreamTimeout,
            message: "slow".into(),
        }),
        "00000007010104736c6f77",
    );
}

#[test]
fn codes_are_stable() {
    assert_eq!(ResetCode::Cancelled as u32, 1);
    assert_eq!(ResetCode::UpstreamAborted as u32, 2);
    assert_eq!(ResetCode::ProtocolError as u32, 3);
    assert_eq!(CloseCode::Normal as u32, 0);
    assert_eq!(CloseCode::Refused as u32, 1);
    assert_eq!(CloseCode::Timeout as u32, 2);
    assert_eq!(CloseCode::ProtocolError as u32, 3);
    assert_eq!(CloseCode::Replaced as u32, 4);
    assert_eq!(ALPN, b"warren/1");
    assert_eq!(PROTOCOL_VERSION, 2);
}

#[test]
fn limits_are_checked_before_allocating() {
    // A prefix claiming 4 GiB is refused from the prefix alone.
    assert_eq!(
        frame_len([0xff, 0xff, 0xff, 0xff], MAX_CONTROL_FRAME),
        Err(FrameError::TooLarge {
            len: u32::MAX as usize,
            limit: MAX_CONTROL_FRAME
        })
    );
    assert_eq!(frame_len([0, 0, 0, 0], 10), Err(FrameError::Empty));
    let big = Control::GoAway {
        reason: "x".repeat(100),
    };
    assert!(matches!(
        encode_frame(&big, 50),
        Err(FrameError::TooLarge { limit: 50, .. })
    ));
    assert!(matches!(
        decode_frame::<Control>(&encode_frame(&big, 1000).unwrap(), 50),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn partial_and_malformed_frames() {
    let frame = encode_frame(&hello(), MAX_CONTROL_FRAME).unwrap();
    for cut in 0..frame.len() {
        assert_eq!(
            decode_frame::<Control>(&frame[..cut], MAX_CONTROL_FRAME).unwrap(),
            None,
            "an incomplete frame ({cut} bytes) waits for more"
        );
    }
    // Unknown variant index.
    assert!(matches!(
        decode_frame::<Control>(&[0, 0, 0, 1, 0x63], MAX_CONTROL_FRAME),
        Err(FrameError::Malformed(_))
    ));
    // Trailing garbage inside a frame.
    assert!(matches!(
        decode_frame::<Control>(&[0, 0, 0, 3, 0x04, 0x01, 0x00], MAX_CONTROL_FRAME),
        Err(FrameError::Malformed(_))
    ));
    // Truncated string inside a frame.
    assert!(matches!(
        decode_frame::<Control>(&[0, 0, 0, 2, 0x05, 0x09], MAX_CONTROL_FRAME),
        Err(FrameError::Malformed(_))
    ));
}

#[test]
fn two_frames_back_to_back() {
    let mut buf = encode_frame(&Control::Ping { seq: 1 }, 64).unwrap();
    buf.extend(encode_frame(&Control::Pong { seq: 1 }, 64).unwrap());
    let (first, used) = decode_frame::<Control>(&buf, 64).unwrap().unwrap();
    assert_eq!(first, Control::Ping { seq: 1 });
    let (second, _) = decode_frame::<Control>(&buf[used..], 64).unwrap().unwrap();
    assert_eq!(second, Control::Pong { seq: 1 });
}
