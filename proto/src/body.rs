//! Framed bodies (`Open::HttpWithTrailers`), the part that runs per chunk of
//! body: a data part is an ordinary frame holding `BodyPart::Data`, but the
//! bytes are never copied through serde. A writer puts [`data_prefix`] in
//! front of the bytes it already holds; a reader learns from [`part_start`]
//! how much framing to skip and how many body bytes follow, and passes those
//! on as they arrive. Trailers parts are rare and small: they are decoded as
//! any frame ([`decode_payload_borrowed`](crate::decode_payload_borrowed)).

use crate::{frame::frame_len, FrameError, LEN_PREFIX};

/// Most body bytes in one data part (1 MiB): a reader never waits for more
/// than this before it can pass bytes on, and writers split larger chunks.
pub const MAX_DATA_PART: usize = 1 << 20;

/// `BodyPart::Data`'s variant index on the wire.
const DATA: u8 = 0;
/// `BodyPart::Trailers`'s variant index on the wire.
const TRAILERS: u8 = 1;

/// Most bytes a data part's length takes as a varint (2^20 needs 3).
const MAX_VARINT: usize = 3;

/// The bytes in front of a data part's data: the frame's length prefix, the
/// variant index, and the data's length as a varint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataPrefix {
    bytes: [u8; LEN_PREFIX + 1 + MAX_VARINT],
    len: usize,
}

impl DataPrefix {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The framing for a data part of `len` bytes, or `TooLarge` past
/// [`MAX_DATA_PART`].
pub fn data_prefix(len: usize) -> Result<DataPrefix, FrameError> {
    if len > MAX_DATA_PART {
        return Err(FrameError::TooLarge {
            len,
            limit: MAX_DATA_PART,
        });
    }
    let mut varint = [0u8; MAX_VARINT];
    let mut n = len;
    let mut used = 0;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            varint[used] = byte;
            used += 1;
            break;
        }
        varint[used] = byte | 0x80;
        used += 1;
    }
    let payload = 1 + used + len;
    let mut bytes = [0u8; LEN_PREFIX + 1 + MAX_VARINT];
    bytes[..LEN_PREFIX].copy_from_slice(&(payload as u32).to_be_bytes());
    bytes[LEN_PREFIX] = DATA;
    bytes[LEN_PREFIX + 1..LEN_PREFIX + 1 + used].copy_from_slice(&varint[..used]);
    Ok(DataPrefix {
        bytes,
        len: LEN_PREFIX + 1 + used,
    })
}

/// What the part at the start of a buffer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartStart {
    /// `skip` bytes of framing, then `len` body bytes.
    Data { skip: usize, len: usize },
    /// A trailers part of `frame` bytes, its prefix included: decode the
    /// payload (`[LEN_PREFIX..frame]`) as a `BodyPart`.
    Trailers { frame: usize },
}

/// Reads the start of the part at the beginning of `buf`: `Ok(None)` until
/// `buf` holds enough of it (at most 8 bytes for a data part; the whole
/// frame, up to `trailers_limit` bytes of payload, for trailers). Lengths are
/// checked before anything is allocated, as for every frame.
pub fn part_start(buf: &[u8], trailers_limit: usize) -> Result<Option<PartStart>, FrameError> {
    let Some(prefix) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let data_limit = 1 + MAX_VARINT + MAX_DATA_PART;
    // The larger of the two limits first; each variant is held to its own below.
    let len = frame_len(*prefix, data_limit.max(trailers_limit))?;
    let Some(&variant) = buf.get(LEN_PREFIX) else {
        return Ok(None);
    };
    match variant {
        DATA => {
            if len > data_limit {
                return Err(FrameError::TooLarge {
                    len,
                    limit: data_limit,
                });
            }
            let mut n = 0usize;
            for i in 0..MAX_VARINT {
                let Some(&byte) = buf.get(LEN_PREFIX + 1 + i) else {
                    return Ok(None);
                };
                n |= usize::from(byte & 0x7f) << (7 * i);
                if byte == 0 && i > 0 {
                    // Overlong (a zero continuation): one length, one encoding.
                    return Err(FrameError::Malformed(
                        "data part length not in its shortest form".into(),
                    ));
                }
                if byte & 0x80 == 0 {
                    let skip = LEN_PREFIX + 1 + i + 1;
                    if skip - LEN_PREFIX + n != len {
                        return Err(FrameError::Malformed(format!(
                            "data part says {n} bytes in a frame of {len}"
                        )));
                    }
                    return Ok(Some(PartStart::Data { skip, len: n }));
                }
            }
            Err(FrameError::Malformed(
                "data part length longer than a 1 MiB part needs".into(),
            ))
        }
        TRAILERS => {
            if len > trailers_limit {
                return Err(FrameError::TooLarge {
                    len,
                    limit: trailers_limit,
                });
            }
            Ok(Some(PartStart::Trailers {
                frame: LEN_PREFIX + len,
            }))
        }
        other => Err(FrameError::Malformed(format!(
            "unknown body part variant {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_frame, BodyPart, BodyPartRef, Header};

    /// The fast path writes exactly what serde would for `BodyPart::Data`.
    #[test]
    fn data_prefix_is_the_serde_encoding() {
        for len in [0, 1, 127, 128, 16_383, 16_384, 65_536, MAX_DATA_PART] {
            let data = vec![7u8; len];
            let framed = encode_frame(&BodyPartRef::Data(&data), usize::MAX).unwrap();
            let prefix = data_prefix(len).unwrap();
            assert_eq!(
                &framed[..prefix.as_bytes().len()],
                prefix.as_bytes(),
                "{len}"
            );
            assert_eq!(framed.len(), prefix.as_bytes().len() + len, "{len}");
            assert_eq!(
                part_start(&framed, 0).unwrap(),
                Some(PartStart::Data {
                    skip: prefix.as_bytes().len(),
                    len
                })
            );
        }
        assert!(matches!(
            data_prefix(MAX_DATA_PART + 1),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn part_start_waits_for_enough_bytes() {
        let framed = encode_frame(&BodyPartRef::Data(&[1; 300]), usize::MAX).unwrap();
        for cut in 0..7 {
            assert_eq!(part_start(&framed[..cut], 64).unwrap(), None, "{cut}");
        }
        assert!(part_start(&framed[..7], 64).unwrap().is_some());

        let trailers = BodyPart::Trailers(vec![Header {
            name: "grpc-status".to_string(),
            value: b"0".to_vec(),
        }]);
        let framed = encode_frame(&trailers, 64).unwrap();
        assert_eq!(part_start(&framed[..4], 64).unwrap(), None);
        assert_eq!(
            part_start(&framed[..5], 64).unwrap(),
            Some(PartStart::Trailers {
                frame: framed.len()
            })
        );
    }

    #[test]
    fn bad_parts_are_refused_before_allocating() {
        // Trailers over their limit, by the prefix alone.
        let big = [0x00, 0x00, 0x10, 0x00, TRAILERS];
        assert_eq!(
            part_start(&big, 1024),
            Err(FrameError::TooLarge {
                len: 4096,
                limit: 1024
            })
        );
        // A data part claiming more than a part may hold.
        let huge = [0x7f, 0xff, 0xff, 0xff, DATA];
        assert!(matches!(
            part_start(&huge, 1024),
            Err(FrameError::TooLarge { .. })
        ));
        // A data length that disagrees with the frame's.
        assert!(matches!(
            part_start(&[0x00, 0x00, 0x00, 0x05, DATA, 0x09], 64),
            Err(FrameError::Malformed(_))
        ));
        // An overlong length (119 in two bytes), which the fuzzer found.
        assert!(matches!(
            part_start(&[0x00, 0x00, 0x00, 0x7a, DATA, 0xf7, 0x00], 64),
            Err(FrameError::Malformed(_))
        ));
        // A varint that runs past three bytes.
        assert!(matches!(
            part_start(&[0x00, 0x00, 0x00, 0x09, DATA, 0x80, 0x80, 0x80, 0x01], 64),
            Err(FrameError::Malformed(_))
        ));
        // An unknown variant, and an empty frame.
        assert!(matches!(
            part_start(&[0x00, 0x00, 0x00, 0x01, 0x02], 64),
            Err(FrameError::Malformed(_))
        ));
        assert_eq!(part_start(&[0, 0, 0, 0, 0], 64), Err(FrameError::Empty));
    }
}
