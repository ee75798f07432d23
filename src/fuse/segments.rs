//! Read-ahead buffers (ranged GETs, a single stream's pieces), reused while a file is read.
//!
//! A 4 MiB segment in a buffer of its own costs the kernel 1,024 page faults and zeroed pages
//! each time: the allocator hands a freed segment back to the kernel (it lies at the top of a
//! heap, above the trim threshold) and the next one is mapped afresh. Measured with
//! `perf record -p` on the daemon through a 1 GiB read from s3s-fs, the faults and the
//! scheduling around them were about a tenth of its CPU. A segment is instead received into a
//! buffer from [`Segments`] and handed on as [`Bytes`] that own it; when the last of those
//! (the reads the kernel was answered with, the bytes kept behind the reader) is dropped, the
//! buffer goes back to the free list. The free list holds at most [`Segments::KEEP`] buffers
//! and is emptied when no buffer is out: a file that is not being read holds none.

use std::ops::Deref;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// The segment buffers of one open file.
#[derive(Clone, Default)]
pub struct Segments(Arc<Mutex<Free>>);

#[derive(Default)]
struct Free {
    spare: Vec<Vec<u8>>,
    /// Buffers out: being filled, or owned by [`Bytes`] somewhere.
    out: usize,
}

impl Segments {
    /// Spare buffers kept: the segments in flight and the one waiting, as read-ahead runs.
    pub const KEEP: usize = super::prefetch::PARALLEL + 1;

    fn free(&self) -> std::sync::MutexGuard<'_, Free> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An empty buffer with room for `capacity` bytes.
    pub fn buffer(&self, capacity: usize) -> Segment {
        let mut free = self.free();
        free.out += 1;
        let mut buf = free.spare.pop().unwrap_or_default();
        drop(free);
        buf.clear();
        buf.reserve_exact(capacity);
        Segment {
            buf,
            home: self.clone(),
        }
    }

    /// Drops the spare buffers (buffers out still come back).
    pub fn release(&self) {
        self.free().spare.clear();
    }

    fn give_back(&self, buf: Vec<u8>) {
        let mut free = self.free();
        free.out = free.out.saturating_sub(1);
        if free.out == 0 {
            free.spare.clear();
        } else if free.spare.len() < Self::KEEP {
            free.spare.push(buf);
        }
    }

    /// Spare buffers held now (checked by the tests).
    #[cfg(test)]
    pub fn spare(&self) -> usize {
        self.free().spare.len()
    }
}

/// A buffer lent by [`Segments`]: filled, then frozen into [`Bytes`] that give it back when
/// the last of them is dropped.
pub struct Segment {
    buf: Vec<u8>,
    home: Segments,
}

impl Segment {
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl Deref for Segment {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl AsRef<[u8]> for Segment {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        self.home.give_back(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_when_its_last_bytes_go_and_an_unread_file_holds_none() {
        let segments = Segments::default();
        let mut first = segments.buffer(1 << 20);
        first.extend_from_slice(b"first");
        let first = first.freeze();
        let slice = first.slice(1..3);
        let mut second = segments.buffer(1 << 20);
        second.extend_from_slice(b"second");
        let second = second.freeze();
        let address = first.as_ptr();
        drop(first);
        assert_eq!(segments.spare(), 0, "a slice still holds the first buffer");
        assert_eq!(&slice[..], b"ir");
        drop(slice);
        assert_eq!(segments.spare(), 1, "the first buffer is back");
        let reused = segments.buffer(1 << 20);
        assert_eq!(reused.as_ptr(), address, "and is lent again");
        assert!(reused.is_empty(), "empty, whatever it held");
        drop(reused);
        assert_eq!(segments.spare(), 1);
        drop(second);
        assert_eq!(segments.spare(), 0, "nothing out: the spares are dropped");
    }

    #[test]
    fn spares_are_bounded() {
        let segments = Segments::default();
        let many: Vec<Segment> = (0..Segments::KEEP + 3)
            .map(|_| segments.buffer(16))
            .collect();
        let hold = segments.buffer(16);
        drop(many);
        assert_eq!(segments.spare(), Segments::KEEP);
        segments.release();
        assert_eq!(segments.spare(), 0);
        drop(hold);
    }
}
