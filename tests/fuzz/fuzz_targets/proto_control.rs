//! Control-stream messages (`Control`) as the server and agent read them:
//! the frame decoders under `MAX_CONTROL_FRAME`, and `peek_hello_version`,
//! which the server runs on a Hello's payload before decoding the rest.

#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_proto::{peek_hello_version, Control, MAX_CONTROL_FRAME};

fuzz_target!(|data: &[u8]| {
    let peeked = peek_hello_version(data);
    let decoded = warren_fuzz::frames::<Control>(data, MAX_CONTROL_FRAME);
    // postcard reads over-long varints too (`80 00` is the variant index 0);
    // the peek and the decoder agree on those as well.
    match decoded {
        // A Hello of this version is read as that version by the peek.
        Some(Control::Hello(hello)) => assert_eq!(peeked, Some(hello.version)),
        // Any other message is not a Hello to the peek either.
        Some(_) => assert_eq!(peeked, None),
        None => {}
    }
});
