//! The segment layer of yamux streams (PROTOCOL.md §4.1) on the reading side,
//! as pure state without I/O: what to read next, what a segment header means,
//! and when the stream ending is a truncation rather than the clean end.
//! `mux::MuxRecv` does the reading; the fuzz targets (`tests/fuzz`) drive this
//! over arbitrary bytes.

/// Where a reader of a segmented stream stands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    /// Bytes left in the current segment.
    remaining: usize,
    /// The end marker was seen.
    ended: bool,
}

/// What a reader has to read next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing: the end marker was seen (a clean end).
    End,
    /// A whole 4-byte segment header; the stream ending inside it is a truncation.
    Header,
    /// More of the current segment: this many bytes are left in it.
    Body(usize),
}

/// The stream ended before the end marker: it was reset or lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

impl Segments {
    pub fn next(&self) -> Next {
        if self.ended {
            Next::End
        } else if self.remaining == 0 {
            Next::Header
        } else {
            Next::Body(self.remaining)
        }
    }

    /// Takes a segment header (4-byte big-endian length) read after
    /// [`Next::Header`]: `true` when a segment of that many bytes follows,
    /// `false` for the end marker (length 0).
    pub fn header(&mut self, header: [u8; 4]) -> bool {
        let len = u32::from_be_bytes(header) as usize;
        if len == 0 {
            self.ended = true;
            return false;
        }
        self.remaining = len;
        true
    }

    /// Takes `n` bytes of the current segment, read after [`Next::Body`] with
    /// at most that many asked for. `n == 0` (end of stream inside a segment)
    /// is a truncation; so is more than the segment holds (a reader's bug,
    /// reported rather than miscounted).
    pub fn body(&mut self, n: usize) -> Result<(), Truncated> {
        if n == 0 || n > self.remaining {
            return Err(Truncated);
        }
        self.remaining -= n;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_then_the_end_marker() {
        let mut s = Segments::default();
        assert_eq!(s.next(), Next::Header);
        assert!(s.header([0, 0, 1, 0]));
        assert_eq!(s.next(), Next::Body(256));
        s.body(200).unwrap();
        assert_eq!(s.next(), Next::Body(56));
        s.body(56).unwrap();
        assert_eq!(s.next(), Next::Header);
        assert!(!s.header([0; 4]));
        assert_eq!(s.next(), Next::End);
    }

    #[test]
    fn the_largest_header_is_a_length() {
        let mut s = Segments::default();
        assert!(s.header([0xff; 4]));
        assert_eq!(s.next(), Next::Body(u32::MAX as usize));
    }

    #[test]
    fn an_end_inside_a_segment_is_a_truncation() {
        let mut s = Segments::default();
        assert!(s.header([0, 0, 0, 3]));
        assert_eq!(s.body(0), Err(Truncated));
        assert_eq!(s.body(4), Err(Truncated));
        assert_eq!(s.next(), Next::Body(3), "a refused count changes nothing");
    }
}
