//! The agent's answer on a request stream (`Reply`), as the server reads it:
//! the frame decoders under the default head limit, then what the server does
//! with a response head (`server/forward.rs`): the status through
//! `StatusCode::from_u16`, the headers through `headers::from_wire` and
//! `strip_hop_by_hop`.

#![no_main]

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use warren::headers::{from_wire, strip_hop_by_hop};
use warren_proto::{Reply, DEFAULT_MAX_HEAD_FRAME};

fuzz_target!(|data: &[u8]| {
    let Some(Reply::Head(head)) = warren_fuzz::frames::<Reply>(data, DEFAULT_MAX_HEAD_FRAME) else {
        return;
    };
    if let Ok(status) = StatusCode::from_u16(head.status) {
        assert_eq!(status.as_u16(), head.status);
    }
    let entries = head.headers.len();
    if let Ok(mut headers) = from_wire(head.headers) {
        assert_eq!(headers.len(), entries, "every entry kept, repeats too");
        strip_hop_by_hop(&mut headers);
    }
});
