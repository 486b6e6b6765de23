//! Rooms-stream commands (`RoomCommand`, agent → server) under
//! `ROOM_FRAME_LIMIT`, as the server's rooms hub reads them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_proto::{RoomCommand, ROOM_FRAME_LIMIT};

fuzz_target!(|data: &[u8]| {
    warren_fuzz::frames::<RoomCommand>(data, ROOM_FRAME_LIMIT);
});
