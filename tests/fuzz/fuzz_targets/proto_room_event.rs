//! Rooms-stream events (`RoomEvent`, server → agent) under `ROOM_FRAME_LIMIT`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_proto::{RoomEvent, ROOM_FRAME_LIMIT};

fuzz_target!(|data: &[u8]| {
    warren_fuzz::frames::<RoomEvent>(data, ROOM_FRAME_LIMIT);
});
