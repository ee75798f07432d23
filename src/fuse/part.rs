//! The part of a streamed upload being filled, held in memory over staging.
//!
//! A file written front to back goes up a part at a time while it is written (see `writer`).
//! The part being filled lives in a buffer of the mount's [`Parts`] rather than in the staging
//! file: when it is complete, the buffer is written to staging in one aligned write (direct
//! I/O where the file system has it, see `staging`) and handed to the upload, so the bytes of a
//! large copy cross the page cache of the node at most once instead of being copied into it
//! write by write.
//!
//! A [`Part`] only holds bytes contiguous from its start: staging decides what a write that
//! does not continue it means (see `Staging::write_at`).

use super::upload::PartBuf;

/// The bytes `start..start + len` of a file, filled up to `limit` bytes.
pub struct Part {
    start: u64,
    buf: PartBuf,
    limit: usize,
}

impl Part {
    /// An empty part beginning at `start` that holds at most `limit` bytes.
    pub fn new(start: u64, mut buf: PartBuf, limit: usize) -> Self {
        buf.bytes.clear();
        Part { start, buf, limit }
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    /// Where the bytes held end.
    pub fn end(&self) -> u64 {
        self.start + self.buf.bytes.len() as u64
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf.bytes
    }

    /// Whether a write at `offset` lands inside the part or right after its bytes.
    pub fn continues(&self, offset: u64) -> bool {
        offset >= self.start && offset <= self.end() && offset < self.start + self.limit as u64
    }

    /// Copies what of `data` at `offset` fits below the limit; `offset` must continue the part.
    /// Returns how many bytes were taken.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> usize {
        debug_assert!(self.continues(offset));
        let at = (offset - self.start) as usize;
        let take = data.len().min(self.limit - at);
        let bytes = &mut self.buf.bytes;
        let overlap = (bytes.len() - at).min(take);
        bytes[at..at + overlap].copy_from_slice(&data[..overlap]);
        bytes.extend_from_slice(&data[overlap..take]);
        take
    }

    /// Lays the part's bytes over `buf`, which holds the file from `offset`.
    pub fn overlay(&self, buf: &mut [u8], offset: u64) {
        let from = offset.max(self.start);
        let to = (offset + buf.len() as u64).min(self.end());
        if from >= to {
            return;
        }
        let (src, dst) = ((from - self.start) as usize, (from - offset) as usize);
        let n = (to - from) as usize;
        buf[dst..dst + n].copy_from_slice(&self.buf.bytes[src..src + n]);
    }

    /// Keeps the bytes before `end` (a truncation).
    pub fn truncate(&mut self, end: u64) {
        let keep = end.saturating_sub(self.start) as usize;
        self.buf.bytes.truncate(keep);
    }

    pub fn into_buf(self) -> PartBuf {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::upload::Parts;

    fn part(start: u64, limit: usize) -> (Parts, Part) {
        let parts = Parts::new(4 * 64, 64);
        let buf = parts.spare().expect("spare");
        (parts.clone(), Part::new(start, buf, limit))
    }

    #[test]
    fn writes_continue_the_part_up_to_its_limit() {
        let (_parts, mut p) = part(100, 8);
        assert!(p.continues(100) && !p.continues(99) && !p.continues(101));
        assert_eq!(p.write(100, b"abc"), 3);
        assert_eq!(p.write(103, b"defghijk"), 5, "stops at the limit");
        assert_eq!((p.bytes(), p.end()), (&b"abcdefgh"[..], 108));
        assert!(!p.continues(108), "full");
        // A rewrite inside.
        assert_eq!(p.write(102, b"CD"), 2);
        assert_eq!(p.bytes(), b"abCDefgh");
    }

    #[test]
    fn the_part_lays_its_bytes_over_a_read_and_truncates() {
        let (_parts, mut p) = part(4, 16);
        p.write(4, b"wxyz");
        let mut buf = *b"0123456789";
        p.overlay(&mut buf, 2);
        assert_eq!(&buf, b"01wxyz6789");
        let mut before = *b"ab";
        p.overlay(&mut before, 0);
        assert_eq!(&before, b"ab", "no overlap");
        p.truncate(6);
        assert_eq!(p.bytes(), b"wx");
        p.truncate(2);
        assert!(p.bytes().is_empty());
    }
}
