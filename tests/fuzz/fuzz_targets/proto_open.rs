//! The first frame of every stream the server opens to the agent (`Open`),
//! under the default head limit (the agent reads it with the limit from
//! `Welcome`). The request head's conversion is `request_head`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_proto::{Open, DEFAULT_MAX_HEAD_FRAME};

fuzz_target!(|data: &[u8]| {
    warren_fuzz::frames::<Open>(data, DEFAULT_MAX_HEAD_FRAME);
});
