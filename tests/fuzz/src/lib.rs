//! What the `proto_*` fuzz targets share: one message type's decoders run over
//! arbitrary bytes, with the properties every decoded message must have.
//!
//! The input is read two ways: as one frame payload (`decode_payload`, what
//! `RecvStream::read_frame` does after the prefix) and as a stream of whole
//! frames (`decode_frame`, the sans-I/O decoder, which also runs `frame_len`).
//! Neither may panic, and whatever decodes must encode again within the same
//! limit and decode back to itself.

use std::fmt::Debug;

use serde::{de::DeserializeOwned, Serialize};
use warren_proto::{decode_frame, decode_payload, encode_frame, frame_len, LEN_PREFIX};

/// Runs both decoders of `T` over `data` with the receiver's `limit`, checks
/// what they return, and gives back the payload's message if there is one.
pub fn frames<T>(data: &[u8], limit: usize) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let payload = decode_payload::<T>(data).ok();
    if let Some(msg) = &payload {
        if data.len() <= limit {
            round_trip(msg, limit);
        }
    }

    let mut buf = data;
    loop {
        match decode_frame::<T>(buf, limit) {
            Ok(Some((msg, used))) => {
                let prefix: [u8; LEN_PREFIX] = buf[..LEN_PREFIX].try_into().unwrap();
                let len = frame_len(prefix, limit).expect("a decoded frame's prefix is valid");
                assert_eq!(
                    used,
                    LEN_PREFIX + len,
                    "a frame uses its prefix and payload"
                );
                assert!(used <= buf.len());
                // One byte short of a whole frame is "not yet", never an error.
                assert_eq!(
                    decode_frame::<T>(&buf[..used - 1], limit),
                    Ok(None),
                    "a frame's strict prefix waits for more"
                );
                round_trip(&msg, limit);
                buf = &buf[used..];
            }
            Ok(None) => {
                // Only ever for a buffer that does not hold a whole frame.
                if let Some(prefix) = buf.get(..LEN_PREFIX) {
                    let len = frame_len(prefix.try_into().unwrap(), limit)
                        .expect("an incomplete frame's prefix was accepted");
                    assert!(buf.len() < LEN_PREFIX + len, "a whole frame left undecoded");
                }
                break;
            }
            Err(_) => break,
        }
    }
    payload
}

/// A decoded message encodes within the limit it was received under (postcard's
/// encoding is never longer than what it decodes), decodes back to itself, and
/// encodes the same way again.
fn round_trip<T>(msg: &T, limit: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let frame = encode_frame(msg, limit).expect("a decoded message encodes within its limit");
    let (back, used) = decode_frame::<T>(&frame, limit)
        .expect("an encoded frame decodes")
        .expect("an encoded frame is whole");
    assert_eq!(used, frame.len());
    assert_eq!(&back, msg, "decode(encode(m)) == m");
    assert_eq!(
        encode_frame(&back, limit).unwrap(),
        frame,
        "encoding is stable"
    );
}
