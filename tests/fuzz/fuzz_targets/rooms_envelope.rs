//! The rooms backend's JSON envelope (PROTOCOL.md §6.1) as the agent reads
//! each text message from `--rooms-upstream`: `agent::rooms::parse_command`.
//! Whatever it accepts becomes a `RoomCommand` (with a payload, for `send`
//! and `broadcast`) that must cross the tunnel: it encodes under
//! `ROOM_FRAME_LIMIT` and decodes back to itself. What it refuses says why,
//! in a line for the log.

#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::agent::rooms::{parse_command, Envelope};
use warren_proto::{decode_frame, encode_frame, Payload, RoomCommand, ROOM_FRAME_LIMIT};

fuzz_target!(|data: &[u8]| {
    // Text messages are UTF-8; keep every input useful.
    let text = String::from_utf8_lossy(data);
    let payload = Payload {
        text: true,
        data: b"hi".to_vec(),
    };
    let command = match parse_command(&text) {
        Ok(Envelope::Command(command)) => {
            assert!(!matches!(
                command,
                RoomCommand::Send { .. } | RoomCommand::Broadcast { .. }
            ));
            command
        }
        Ok(Envelope::Send { conn }) => RoomCommand::Send { conn, payload },
        Ok(Envelope::Broadcast { room, except }) => RoomCommand::Broadcast {
            room,
            payload,
            except,
        },
        Err(ignored) => {
            assert!(ignored.why.starts_with("rooms backend"), "{ignored:?}");
            // Only a send or broadcast envelope owns the message after it.
            if ignored.payload_follows {
                assert!(text.contains("send") || text.contains("broadcast"));
            }
            return;
        }
    };
    let frame = encode_frame(&command, ROOM_FRAME_LIMIT).expect("a command fits its frame");
    let (back, used) = decode_frame::<RoomCommand>(&frame, ROOM_FRAME_LIMIT)
        .expect("decodes")
        .expect("whole");
    assert_eq!(used, frame.len());
    assert_eq!(back, command);
});
