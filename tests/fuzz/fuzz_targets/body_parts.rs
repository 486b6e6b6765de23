//! A framed body (`Open::HttpWithTrailers`, PROTOCOL.md §4.2) read the way
//! `body/parts.rs` reads it: `part_start` on whatever bytes have arrived,
//! data passed over by its length, a trailers part decoded whole. Checked:
//! lengths stay within their limits before anything is taken, a data part's
//! framing is exactly what `data_prefix` writes, and a trailers part is the
//! last (decoding it as anything but trailers never happens).

#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_proto::{
    data_prefix, decode_payload_borrowed, part_start, BodyPartRef, PartStart, LEN_PREFIX,
    MAX_DATA_PART,
};

/// A small head limit, so that trailers over it are reached.
const TRAILERS_LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        match part_start(rest, TRAILERS_LIMIT) {
            Ok(None) | Err(_) => return,
            Ok(Some(PartStart::Data { skip, len })) => {
                assert!(len <= MAX_DATA_PART);
                let prefix = data_prefix(len).expect("within the limit");
                assert_eq!(prefix.as_bytes(), &rest[..skip], "the framing data_prefix writes");
                let Some(after) = rest.get(skip + len..) else {
                    return;
                };
                rest = after;
            }
            Ok(Some(PartStart::Trailers { frame })) => {
                assert!(frame <= LEN_PREFIX + TRAILERS_LIMIT);
                let Some(whole) = rest.get(LEN_PREFIX..frame) else {
                    return;
                };
                if let Ok(part) = decode_payload_borrowed::<BodyPartRef>(whole) {
                    assert!(matches!(part, BodyPartRef::Trailers(_)));
                }
                // The body's last part: a reader takes nothing after it.
                return;
            }
        }
    }
});
