//! The yamux segment reader (PROTOCOL.md §4.1): `transport::segment::Segments`
//! driven exactly as `MuxRecv::read_into` drives it (a whole 4-byte header,
//! then reads of at most `max` bytes of the segment), over a byte stream that
//! arrives in arbitrary pieces. What it yields must equal a plain reading of
//! the same bytes: the segments' bytes then a clean end at the zero-length
//! marker (nothing read past it), or an error when the stream ends first.
//!
//! Input: two bytes choose `max` (1..=65536), one byte seeds the sizes of the
//! pieces the stream arrives in, the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::transport::segment::{Next, Segments, Truncated};

/// The stream as a peer's reads see it: pieces of pseudo-random size.
struct Pipe<'a> {
    data: &'a [u8],
    at: usize,
    seed: u32,
}

impl<'a> Pipe<'a> {
    /// One read of at most `want` bytes; empty at end of stream.
    fn read(&mut self, want: usize) -> &'a [u8] {
        self.seed = self.seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let piece = 1 + (self.seed >> 16) as usize % 300;
        let n = want.min(piece).min(self.data.len() - self.at);
        let out = &self.data[self.at..self.at + n];
        self.at += n;
        out
    }

    /// `read_exact`: all of `out`, or an error when the stream ends first.
    fn read_exact(&mut self, out: &mut [u8]) -> Result<(), Truncated> {
        let mut filled = 0;
        while filled < out.len() {
            let got = self.read(out.len() - filled);
            if got.is_empty() {
                return Err(Truncated);
            }
            out[filled..filled + got.len()].copy_from_slice(got);
            filled += got.len();
        }
        Ok(())
    }
}

/// `MuxRecv::read_into` until it returns 0 (clean end) or fails.
fn adapter(pipe: &mut Pipe<'_>, max: usize) -> Result<Vec<u8>, Truncated> {
    let mut segments = Segments::default();
    let mut out = Vec::new();
    loop {
        let remaining = loop {
            match segments.next() {
                Next::End => break None,
                Next::Body(remaining) => break Some(remaining),
                Next::Header => {
                    let mut header = [0u8; 4];
                    pipe.read_exact(&mut header)?;
                    let len = u32::from_be_bytes(header) as usize;
                    let more = segments.header(header);
                    assert_eq!(more, len > 0);
                    let expected = if more { Next::Body(len) } else { Next::End };
                    assert_eq!(segments.next(), expected);
                }
            }
        };
        let Some(remaining) = remaining else {
            // Past the end nothing changes.
            assert_eq!(segments.next(), Next::End);
            return Ok(out);
        };
        assert!(remaining > 0);
        let want = max.min(remaining);
        let got = pipe.read(want);
        segments.body(got.len())?;
        let left = remaining - got.len();
        assert_eq!(
            segments.next(),
            if left == 0 {
                Next::Header
            } else {
                Next::Body(left)
            }
        );
        out.extend_from_slice(got);
    }
}

/// The same stream read plainly: segment after segment, to the marker.
/// Returns the bytes and where the marker ended.
fn reference(stream: &[u8]) -> Result<(Vec<u8>, usize), Truncated> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let header = stream.get(at..at + 4).ok_or(Truncated)?;
        at += 4;
        let len = u32::from_be_bytes(header.try_into().unwrap()) as usize;
        if len == 0 {
            return Ok((out, at));
        }
        out.extend_from_slice(stream.get(at..at + len).ok_or(Truncated)?);
        at += len;
    }
}

fuzz_target!(|data: &[u8]| {
    let [m0, m1, seed, stream @ ..] = data else {
        return;
    };
    let max = u16::from_be_bytes([*m0, *m1]) as usize + 1;
    let mut pipe = Pipe {
        data: stream,
        at: 0,
        seed: *seed as u32,
    };
    let got = adapter(&mut pipe, max);
    match reference(stream) {
        Ok((bytes, end)) => {
            assert_eq!(got, Ok(bytes), "a whole stream reads whole");
            assert_eq!(pipe.at, end, "nothing is read past the end marker");
        }
        Err(Truncated) => assert_eq!(got, Err(Truncated), "a cut stream is an error"),
    }
});
