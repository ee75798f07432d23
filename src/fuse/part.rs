//! The part of a streamed upload being filled, copied in memory next to staging.
//!
//! A file written front to back goes up a part at a time while it is written (see `writer`).
//! Its bytes are staged as always (a writer may read them back or seek back over them), and
//! the part being filled is also copied into a buffer of the mount's [`Parts`] as it is
//! written, so a complete part goes up straight from memory instead of being read back from
//! staging into another buffer.
//!
//! Anything that makes the copy differ from staging (a hole left in it, a truncation into or an
//! extension past it) drops it, as does a budget with no spare buffer: that part is then read
//! from staging. The copy is only ever a shortcut to bytes staging holds.

use super::upload::{PartBuf, Parts};

/// The part that begins at `start`, and a copy of the staged bytes `start..start + len` while
/// they are contiguous from its start.
pub struct Part {
    parts: Parts,
    start: u64,
    copy: Option<PartBuf>,
}

impl Part {
    /// The first part of a file.
    pub fn new(parts: &Parts) -> Self {
        Part {
            parts: parts.clone(),
            start: 0,
            copy: None,
        }
    }

    /// Where the part begins in the file.
    pub fn start(&self) -> u64 {
        self.start
    }

    fn size(&self) -> usize {
        self.parts.size()
    }

    /// Copies what a write of `data` at `offset` put into this part. A write before the part
    /// or one that leaves a hole in it drops the copy.
    pub fn wrote(&mut self, offset: u64, data: &[u8]) {
        let size = self.size();
        let part_end = self.start + size as u64;
        if offset < self.start {
            self.copy = None;
            return;
        }
        if offset >= part_end {
            return;
        }
        if self.copy.is_none() && offset == self.start {
            self.copy = self.parts.spare();
        }
        let Some(copy) = self.copy.as_mut().map(|c| &mut c.bytes) else {
            return;
        };
        let at = (offset - self.start) as usize;
        if at > copy.len() {
            // A hole: staging reads it as zeros, the copy does not know it.
            self.copy = None;
            return;
        }
        let end = offset + data.len() as u64;
        let take = (part_end.min(end) - offset) as usize;
        let overlap = (copy.len() - at).min(take);
        copy[at..at + overlap].copy_from_slice(&data[..overlap]);
        copy.extend_from_slice(&data[overlap..take]);
    }

    /// The file was truncated or extended to `size`.
    pub fn resized(&mut self, size: u64) {
        match self.copy.as_mut() {
            Some(copy) if size >= self.start && size - self.start <= copy.bytes.len() as u64 => {
                copy.bytes.truncate((size - self.start) as usize);
            }
            _ => self.copy = None,
        }
    }

    /// The staged bytes from the part's start to `end` (the end of the file), when the copy
    /// holds exactly those.
    pub fn last(&mut self, end: u64) -> Option<PartBuf> {
        let copy = self.copy.take()?;
        (self.start + copy.bytes.len() as u64 == end).then_some(copy)
    }

    /// Ends this part and moves on to the next; returns where it began, and its bytes when the
    /// copy holds the whole part (`None`: read them from staging). `offset` and `data` are the
    /// write that completed the part: what it holds of the next part is copied.
    pub fn take(&mut self, offset: u64, data: &[u8]) -> (u64, Option<PartBuf>) {
        let size = self.size();
        let began = self.start;
        let full = self.copy.take().filter(|copy| copy.bytes.len() == size);
        self.start += size as u64;
        if offset <= self.start {
            let skip = (self.start - offset) as usize;
            if skip <= data.len() {
                self.wrote(self.start, &data[skip..]);
            }
        }
        (began, full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(part: (u64, Option<PartBuf>)) -> (u64, Option<Vec<u8>>) {
        (part.0, part.1.map(|p| p.bytes.to_vec()))
    }

    #[test]
    fn in_order_writes_fill_parts_that_come_out_whole() {
        let parts = Parts::new(8 * 8, 8);
        let mut p = Part::new(&parts);
        p.wrote(0, b"abc");
        p.wrote(3, b"defgh");
        assert_eq!(bytes(p.take(3, b"defgh")), (0, Some(b"abcdefgh".to_vec())));
        assert_eq!(p.start(), 8);
        // A write across the boundary: its rest starts the next part.
        p.wrote(8, b"ijklmn");
        p.wrote(14, b"opqrst");
        assert_eq!(
            bytes(p.take(14, b"opqrst")),
            (8, Some(b"ijklmnop".to_vec()))
        );
        p.wrote(20, b"uvwx");
        assert_eq!(bytes(p.take(20, b"uvwx")), (16, Some(b"qrstuvwx".to_vec())));
        p.wrote(24, b"yz");
        assert!(p.last(27).is_none(), "the copy does not reach the end");
        p.wrote(24, b"yz");
        assert_eq!(p.last(26).map(|b| b.bytes.to_vec()), Some(b"yz".to_vec()));
    }

    #[test]
    fn rewrites_inside_the_part_change_the_copy() {
        let parts = Parts::new(8 * 8, 8);
        let mut p = Part::new(&parts);
        p.wrote(0, b"aaaaaa");
        p.wrote(2, b"BB");
        p.wrote(5, b"CCC");
        assert_eq!(bytes(p.take(5, b"CCC")).1, Some(b"aaBBaCCC".to_vec()));
    }

    #[test]
    fn a_hole_or_a_resize_drops_the_copy_and_the_part_comes_from_staging() {
        let parts = Parts::new(8 * 8, 8);
        let mut p = Part::new(&parts);
        p.wrote(0, b"ab");
        p.wrote(4, b"efgh");
        assert_eq!(bytes(p.take(4, b"efgh")), (0, None), "hole at 2..4");
        p.wrote(8, b"12345678");
        assert_eq!(bytes(p.take(8, b"12345678")).1, Some(b"12345678".to_vec()));
        p.wrote(16, b"abcdef");
        p.resized(20);
        p.wrote(20, b"xyzw");
        assert_eq!(bytes(p.take(20, b"xyzw")).1, Some(b"abcdxyzw".to_vec()));
        p.wrote(24, b"abcd");
        p.resized(30);
        p.wrote(30, b"yz");
        assert_eq!(bytes(p.take(30, b"yz")).1, None, "extended with zeros");
        // A write that jumps past a whole part: that part is staging's.
        p.wrote(44, b"zz");
        assert_eq!(bytes(p.take(44, b"zz")), (32, None));
        assert_eq!(
            parts.available(),
            8,
            "dropped copies give their buffers back"
        );
    }

    #[test]
    fn without_a_spare_buffer_there_is_no_copy() {
        let parts = Parts::new(3 * 8, 8);
        let held: Vec<_> = (0..1).map(|_| parts.spare().expect("spare")).collect();
        let mut p = Part::new(&parts);
        p.wrote(0, b"abcdefgh");
        assert_eq!(bytes(p.take(0, b"abcdefgh")), (0, None));
        drop(held);
        p.wrote(8, b"abcdefgh");
        assert!(p.take(8, b"abcdefgh").1.is_some());
    }
}
