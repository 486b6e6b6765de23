//! Length-prefixed framing: a 4-byte big-endian payload length, then a postcard
//! payload. Every decode checks the length against a caller-given limit *before*
//! anything is allocated, so a hostile peer cannot make us reserve memory.

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Bytes in the length prefix.
pub const LEN_PREFIX: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("empty frame: every frame carries a message")]
    Empty,
    #[error("malformed frame payload: {0}")]
    Malformed(String),
    #[error("could not encode message: {0}")]
    Encode(String),
}

/// Initial buffer for an encoded frame: a request or response head with a
/// dozen ordinary headers fits.
const FIRST_CAPACITY: usize = 512;

/// Encodes `msg` as one frame (prefix + payload), refusing payloads over `limit`.
pub fn encode_frame<T: Serialize>(msg: &T, limit: usize) -> Result<Vec<u8>, FrameError> {
    // Room for a typical head up front: growing from empty costs a handful
    // of reallocations per message.
    let mut out = Vec::with_capacity(FIRST_CAPACITY);
    out.extend_from_slice(&[0u8; LEN_PREFIX]);
    out = postcard::to_extend(msg, out).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = out.len() - LEN_PREFIX;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let prefix = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, limit })?;
    out[..LEN_PREFIX].copy_from_slice(&prefix.to_be_bytes());
    Ok(out)
}

/// Reads the payload length from a frame's prefix and checks it against `limit`.
pub fn frame_len(prefix: [u8; LEN_PREFIX], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Decodes one payload (the bytes after the prefix). Trailing bytes are an error:
/// a payload is exactly one message.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    decode_payload_borrowed(payload)
}

/// Like [`decode_payload`], for a message that borrows from the payload
/// ([`OpenRef`](crate::OpenRef), [`ReplyRef`](crate::ReplyRef)): its strings and
/// header values point into `payload` instead of being copied out of it.
pub fn decode_payload_borrowed<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes(payload).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Sans-I/O decode from a buffer: `Ok(None)` when `buf` does not yet hold a whole
/// frame, else the message and how many bytes it used.
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    limit: usize,
) -> Result<Option<(T, usize)>, FrameError> {
    let Some(prefix) = buf.get(..LEN_PREFIX) else {
        return Ok(None);
    };
    let len = frame_len(prefix.try_into().expect("4 bytes"), limit)?;
    let Some(payload) = buf.get(LEN_PREFIX..LEN_PREFIX + len) else {
        return Ok(None);
    };
    Ok(Some((decode_payload(payload)?, LEN_PREFIX + len)))
}
