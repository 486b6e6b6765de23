//! Golden byte vectors, read from PROTOCOL.md §7: every example there is encoded
//! from its Rust value and compared byte for byte, and decoded back. The document
//! is the source of truth. If an example fails, the wire format changed; that
//! breaks every deployed agent, so bump `PROTOCOL_VERSION` and document the
//! change instead of editing the example. Also here: framing limits and
//! malformed input. (Codes and constants are checked in `schema.rs`.)

mod common;

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::{de::DeserializeOwned, Serialize};
use warren_proto::*;

/// One `<!-- golden: NAME -->` example: its value line and its bytes.
struct Golden {
    value: String,
    bytes: Vec<u8>,
}

/// Finds every golden example in the document. A marker is followed by the value
/// in backticks on one line, then a ```hex block: two hex digits per byte,
/// anything after `//` a comment.
fn golden_examples(doc: &str) -> BTreeMap<String, Golden> {
    const MARKER: &str = "<!-- golden: ";
    let mut found = BTreeMap::new();
    let mut lines = doc.lines().enumerate().peekable();
    while let Some((at, line)) = lines.next() {
        let Some(name) = line.trim().strip_prefix(MARKER) else {
            continue;
        };
        let name = name
            .strip_suffix("-->")
            .unwrap_or_else(|| panic!("line {}: marker not closed", at + 1))
            .trim()
            .to_string();
        let mut next = || loop {
            let (at, line) = lines
                .next()
                .unwrap_or_else(|| panic!("example {name}: document ends"));
            if !line.trim().is_empty() {
                return (at + 1, line.trim());
            }
        };
        let (at, value) = next();
        let value = value
            .strip_prefix('`')
            .and_then(|v| v.strip_suffix('`'))
            .unwrap_or_else(|| panic!("line {at}: example {name} wants its value in `backticks`"));
        let (at, fence) = next();
        assert_eq!(
            fence, "```hex",
            "line {at}: example {name} wants a ```hex block"
        );
        let mut bytes = Vec::new();
        loop {
            let (at, line) = next();
            if line == "```" {
                break;
            }
            let data = line.split("//").next().unwrap();
            for byte in data.split_whitespace() {
                assert!(
                    byte.len() == 2,
                    "line {at}: {byte:?} in example {name} is not one byte as two hex digits"
                );
                let byte = u8::from_str_radix(byte, 16)
                    .unwrap_or_else(|_| panic!("line {at}: {byte:?} in example {name} is not hex"));
                bytes.push(byte);
            }
        }
        let golden = Golden {
            value: value.to_string(),
            bytes,
        };
        assert!(
            found.insert(name.clone(), golden).is_none(),
            "example {name} appears twice"
        );
    }
    found
}

/// Checks values against the document's examples; collects every mismatch so one
/// run shows them all.
struct Checker {
    doc: BTreeMap<String, Golden>,
    checked: Vec<&'static str>,
    failures: Vec<String>,
}

impl Checker {
    fn new() -> Checker {
        Checker {
            doc: golden_examples(common::DOC),
            checked: Vec::new(),
            failures: Vec::new(),
        }
    }

    fn bytes(&self, name: &str) -> &[u8] {
        &self
            .doc
            .get(name)
            .unwrap_or_else(|| panic!("PROTOCOL.md has no example {name}"))
            .bytes
    }

    /// `ty` is the enum's name, which `Debug` leaves out of the value line.
    fn check<T>(&mut self, name: &'static str, ty: &str, value: &T)
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug,
    {
        self.checked.push(name);
        let Some(golden) = self.doc.get(name) else {
            self.failures.push(format!("{name}: not in PROTOCOL.md"));
            return;
        };
        let shown = format!("{ty}::{value:?}");
        if golden.value != shown {
            self.failures.push(format!(
                "{name}: the document's value is\n    {}\n  the test's is\n    {shown}",
                golden.value
            ));
        }
        let frame = encode_frame(value, 1 << 20).unwrap();
        if frame != golden.bytes {
            self.failures.push(format!(
                "{name}: {shown} encodes as\n    {}\n  the document says\n    {}",
                hex(&frame),
                hex(&golden.bytes)
            ));
        }
        match decode_frame::<T>(&golden.bytes, 1 << 20) {
            Ok(Some((back, used))) if back == *value && used == golden.bytes.len() => {}
            other => self
                .failures
                .push(format!("{name}: the document's bytes decode as {other:?}")),
        }
    }

    fn finish(self) {
        let unchecked: Vec<_> = self
            .doc
            .keys()
            .filter(|name| !self.checked.contains(&name.as_str()))
            .collect();
        let mut failures = self.failures;
        if !unchecked.is_empty() {
            failures.push(format!(
                "examples in PROTOCOL.md no test checks: {unchecked:?}"
            ));
        }
        assert!(failures.is_empty(), "\n{}\n", failures.join("\n"));
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Protocol version 1, as far as the tests need it: what an old agent sends and
/// decodes. Its Hello had five fields; the rest of `Control` is laid out as now.
mod v1 {
    use serde::{Deserialize, Serialize};
    use warren_proto::{Refusal, Welcome};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub enum Control {
        Hello(Hello),
        Welcome(Welcome),
        Refused(Refusal),
        Ping { seq: u64 },
        Pong { seq: u64 },
        GoAway { reason: String },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    pub struct Hello {
        pub version: u16,
        pub client_id: String,
        pub token: String,
        pub agent: String,
        pub capabilities: Vec<String>,
    }
}

fn v1_hello() -> v1::Control {
    v1::Control::Hello(v1::Hello {
        version: 1,
        client_id: "music".into(),
        token: "wrn_ab".into(),
        agent: "warren/0.1.0".into(),
        capabilities: vec!["rooms".into()],
    })
}

#[test]
fn every_message_kind_matches_the_document() {
    let mut checker = Checker::new();
    let examples = common::examples();
    for (name, value) in &examples.control {
        checker.check(name, "Control", value);
    }
    for (name, value) in &examples.open {
        checker.check(name, "Open", value);
    }
    for (name, value) in &examples.reply {
        checker.check(name, "Reply", value);
    }
    for (name, value) in &examples.body {
        checker.check(name, "BodyPart", value);
    }
    for (name, value) in &examples.ws {
        checker.check(name, "WsMessage", value);
    }
    for (name, value) in &examples.room_event {
        checker.check(name, "RoomEvent", value);
    }
    for (name, value) in &examples.room_command {
        checker.check(name, "RoomCommand", value);
    }
    checker.check("v1.control.hello", "Control", &v1_hello());
    checker.finish();
}

/// An owned head seen through borrowed strings and values.
fn borrow_head(h: &RequestHead) -> RequestHead<&str, &[u8]> {
    RequestHead {
        request_id: h.request_id,
        method: &h.method,
        uri: &h.uri,
        headers: borrow_headers(&h.headers),
        mode: h.mode,
        body: h.body,
    }
}

fn borrow_headers(headers: &[Header]) -> Vec<HeaderRef<'_>> {
    headers
        .iter()
        .map(|h| Header {
            name: h.name.as_str(),
            value: h.value.as_slice(),
        })
        .collect()
}

fn borrow_open(open: &Open) -> OpenRef<'_> {
    match open {
        Open::Http(h) => Open::Http(borrow_head(h)),
        Open::WebSocket(h) => Open::WebSocket(borrow_head(h)),
        Open::Rooms => Open::Rooms,
        Open::HttpWithTrailers(h) => Open::HttpWithTrailers(borrow_head(h)),
    }
}

fn borrow_reply(reply: &Reply) -> ReplyRef<'_> {
    match reply {
        Reply::Head(h) => Reply::Head(ResponseHead {
            status: h.status,
            headers: borrow_headers(&h.headers),
        }),
        Reply::Error(e) => Reply::Error(e.clone()),
    }
}

/// `OpenRef` and `ReplyRef` (what the server and agent encode and decode
/// without copying each header) are the same bytes as the owned messages.
#[test]
fn borrowed_heads_are_the_same_bytes() {
    let checker = Checker::new();
    let examples = common::examples();
    for (name, open) in &examples.open {
        let golden = checker.bytes(name);
        let view = borrow_open(open);
        assert_eq!(encode_frame(&view, 1 << 20).unwrap(), golden, "{name}");
        let decoded: OpenRef = decode_payload_borrowed(&golden[LEN_PREFIX..]).unwrap();
        assert_eq!(decoded, view, "{name}");
    }
    for (name, reply) in &examples.reply {
        let golden = checker.bytes(name);
        let view = borrow_reply(reply);
        assert_eq!(encode_frame(&view, 1 << 20).unwrap(), golden, "{name}");
        let decoded: ReplyRef = decode_payload_borrowed(&golden[LEN_PREFIX..]).unwrap();
        assert_eq!(decoded, view, "{name}");
    }
    for (name, part) in &examples.body {
        let golden = checker.bytes(name);
        let view: BodyPartRef = match part {
            BodyPart::Data(d) => BodyPart::Data(d.as_slice()),
            BodyPart::Trailers(t) => BodyPart::Trailers(borrow_headers(t)),
        };
        assert_eq!(encode_frame(&view, 1 << 20).unwrap(), golden, "{name}");
        let decoded: BodyPartRef = decode_payload_borrowed(&golden[LEN_PREFIX..]).unwrap();
        assert_eq!(decoded, view, "{name}");
    }
}

/// A data part read the fast way (prefix, then the bytes as they are) is
/// the golden frame, and a trailers part is found whole before decoding.
#[test]
fn body_parts_read_without_decoding_their_data() {
    let checker = Checker::new();
    let data = checker.bytes("body.data");
    assert_eq!(data_prefix(2).unwrap().as_bytes(), &data[..data.len() - 2]);
    assert_eq!(
        part_start(data, 0).unwrap(),
        Some(PartStart::Data { skip: 6, len: 2 })
    );
    let trailers = checker.bytes("body.trailers");
    assert_eq!(
        part_start(trailers, 64).unwrap(),
        Some(PartStart::Trailers {
            frame: trailers.len()
        })
    );
    assert!(part_start(trailers, 4).is_err(), "trailers over the limit");
}

#[test]
fn a_v1_hello_is_read_for_its_version_and_refused_in_words() {
    let checker = Checker::new();
    let old = checker.bytes("v1.control.hello");
    assert_eq!(peek_hello_version(&old[LEN_PREFIX..]), Some(1));
    assert!(
        matches!(
            decode_frame::<Control>(old, MAX_CONTROL_FRAME),
            Err(FrameError::Malformed(_))
        ),
        "a v1 Hello must not decode as this version's Hello"
    );
    let current = checker.bytes("control.hello");
    assert_eq!(
        peek_hello_version(&current[LEN_PREFIX..]),
        Some(PROTOCOL_VERSION)
    );

    // The refusal a v1 agent receives, decoded the way a v1 agent decodes it.
    let refusal = checker.bytes("control.refused_version");
    let (seen, _) = decode_frame::<v1::Control>(refusal, MAX_CONTROL_FRAME)
        .unwrap()
        .unwrap();
    assert_eq!(seen, v1::Control::Refused(Refusal::unsupported_version(1)));
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
    let frame = Checker::new().bytes("control.hello").to_vec();
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
