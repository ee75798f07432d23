//! Where an open file's bytes wait for their upload.
//!
//! A writer's bytes are staged locally and uploaded on flush, fsync or close (see `fs`). Small
//! files are staged in memory: creating one then costs no file on the node's disk, whose
//! metadata operations (create, write, free) can cost more than a small upload on a busy disk
//! (2,000 files of 4 KiB through the mount ran at 0.62-0.66x the raw PUT rate with every file
//! on tmpfs, 0.17-0.52x with the server's and the staging files on this machine's shared disk).
//! A file that grows past
//! [`MEMORY_PER_FILE`], or finds the mount's [`MemoryBudget`] spent, moves to a file in the
//! staging directory and stays there, so memory stays bounded however many or large the files.
//!
//! A staged file may hold one [`Part`] over its file: the part of a streamed upload being
//! filled, whose bytes are written to the file only when it is complete ([`Staging::take`]).
//! The staged bytes are always the file with the part laid over it; a write that does not
//! continue the part first writes it out (a seek back, a hole), so nothing ever depends on the
//! part staying. Parts are written with direct I/O when their buffer, offset and length are
//! aligned for it: a complete part then costs the node no page cache (copying 1 GiB into newly
//! allocated page cache cost 1.8-2.5 s of system time on the benchmark machine, its direct
//! write 0.11-0.16 s).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{FcntlArg, OFlag, fcntl};

use super::part::Part;
use super::upload::{DIRECT_ALIGN, PartBuf};

/// Largest file staged in memory.
pub const MEMORY_PER_FILE: u64 = 1 << 20;

/// Memory all of one mount's staged files may hold.
#[derive(Clone, Debug)]
pub struct MemoryBudget {
    used: Arc<AtomicU64>,
    limit: u64,
}

impl MemoryBudget {
    pub fn new(limit: u64) -> Self {
        MemoryBudget {
            used: Arc::default(),
            limit,
        }
    }

    /// Bytes held now (for tests).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::SeqCst)
    }

    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used + n <= self.limit).then_some(used + n)
            })
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::SeqCst);
    }
}

enum Place {
    Memory(Vec<u8>),
    File(File),
}

/// The staged bytes of one open file.
pub struct Staging {
    place: Place,
    budget: MemoryBudget,
    /// A part over the file (only when the bytes are in a file).
    part: Option<Part>,
    /// Whether to try direct I/O for aligned parts: false once the file system refused it.
    direct: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Place::Memory(bytes) = &self.place {
            self.budget.give_back(bytes.len() as u64);
        }
    }
}

impl Staging {
    /// Empty, in memory.
    pub fn new(budget: &MemoryBudget) -> Self {
        Staging {
            place: Place::Memory(Vec::new()),
            budget: budget.clone(),
            part: None,
            direct: true,
        }
    }

    /// Whether the bytes live in memory (for tests).
    pub fn in_memory(&self) -> bool {
        matches!(self.place, Place::Memory(_))
    }

    pub fn size(&self) -> std::io::Result<u64> {
        match &self.place {
            Place::Memory(bytes) => Ok(bytes.len() as u64),
            Place::File(file) => {
                let len = file.metadata()?.len();
                Ok(self.part.as_ref().map_or(len, |p| len.max(p.end())))
            }
        }
    }

    /// Whether a part is held over the file.
    pub fn holds_part(&self) -> bool {
        self.part.is_some()
    }

    /// Holds the bytes written from `start` in `buf`, up to `limit` of them, until
    /// [`Staging::take`]. Only a file holds a part (a small file is in memory whole), and one
    /// at a time: otherwise the buffer is given back.
    pub fn hold(&mut self, start: u64, buf: PartBuf, limit: usize) {
        if matches!(self.place, Place::File(_)) && self.part.is_none() {
            self.part = Some(Part::new(start, buf, limit));
        }
    }

    /// The `len` bytes at `start`, written to the file, in their buffer when the part held is
    /// exactly those (`None`: they are in the file, read them from there).
    pub fn take(&mut self, start: u64, len: usize) -> std::io::Result<Option<PartBuf>> {
        let Some(part) = self.part.as_ref() else {
            return Ok(None);
        };
        if part.start() != start || part.bytes().len() != len {
            self.write_out()?;
            return Ok(None);
        }
        self.write_part()?;
        Ok(self.part.take().map(Part::into_buf))
    }

    /// Writes the part held to the file and lets it go.
    fn write_out(&mut self) -> std::io::Result<()> {
        self.write_part()?;
        self.part = None;
        Ok(())
    }

    /// Writes the part held to the file, directly when it can be.
    fn write_part(&mut self) -> std::io::Result<()> {
        let (Some(part), Place::File(file)) = (self.part.as_ref(), &self.place) else {
            return Ok(());
        };
        let (data, at) = (part.bytes(), part.start());
        let aligned = |n: usize| n.is_multiple_of(DIRECT_ALIGN);
        if self.direct
            && aligned(data.as_ptr() as usize)
            && aligned(at as usize)
            && aligned(data.len())
        {
            match write_direct(file, data, at) {
                Ok(()) => return Ok(()),
                // Refused (a file system without direct I/O, or other alignment rules): the
                // page cache it is, from now on.
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => self.direct = false,
                Err(e) => return Err(e),
            }
        }
        file.write_all_at(data, at)
    }

    /// Makes room in memory for `len` bytes, or moves the bytes to a file in `dir`.
    fn reserve(&mut self, len: u64, dir: &Path) -> std::io::Result<()> {
        let Place::Memory(bytes) = &mut self.place else {
            return Ok(());
        };
        let have = bytes.len() as u64;
        if len <= have || (len <= MEMORY_PER_FILE && self.budget.take(len - have)) {
            return Ok(());
        }
        let file = tempfile::tempfile_in(dir)?;
        file.write_all_at(bytes, 0)?;
        self.budget.give_back(have);
        self.place = Place::File(file);
        Ok(())
    }

    /// Writes `data` at `offset`, filling any gap with zeros; files go to `dir` when they
    /// outgrow memory. A write that continues the part held goes into it (what passes its
    /// limit, to the file); any other first writes the part out.
    pub fn write_at(
        &mut self,
        mut data: &[u8],
        mut offset: u64,
        dir: &Path,
    ) -> std::io::Result<()> {
        if let Some(part) = self.part.as_mut() {
            if part.continues(offset) {
                let n = part.write(offset, data);
                (data, offset) = (&data[n..], offset + n as u64);
                if data.is_empty() {
                    return Ok(());
                }
            } else {
                self.write_out()?;
            }
        }
        let end = offset + data.len() as u64;
        self.reserve(end, dir)?;
        match &mut self.place {
            Place::Memory(bytes) => {
                if bytes.len() < end as usize {
                    bytes.resize(end as usize, 0);
                }
                bytes[offset as usize..end as usize].copy_from_slice(data);
                Ok(())
            }
            Place::File(file) => file.write_all_at(data, offset),
        }
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer at the end.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        match &self.place {
            Place::Memory(bytes) => {
                let start = (offset as usize).min(bytes.len());
                let end = (start + buf.len()).min(bytes.len());
                buf[..end - start].copy_from_slice(&bytes[start..end]);
                Ok(end - start)
            }
            Place::File(file) => {
                let Some(part) = self.part.as_ref() else {
                    return read_file(file, buf, offset);
                };
                // The file may end before the part, or hold older bytes under it.
                let n = (self.size()?.saturating_sub(offset) as usize).min(buf.len());
                let buf = &mut buf[..n];
                let read = read_file(file, buf, offset)?;
                buf[read..].fill(0);
                part.overlay(buf, offset);
                Ok(n)
            }
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if self.read_at(buf, offset)? < buf.len() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Truncates or extends (with zeros) to `len` bytes.
    pub fn set_len(&mut self, len: u64, dir: &Path) -> std::io::Result<()> {
        if let Place::Memory(bytes) = &mut self.place
            && len < bytes.len() as u64
        {
            let freed = bytes.len() as u64 - len;
            bytes.truncate(len as usize);
            self.budget.give_back(freed);
            return Ok(());
        }
        match self.part.as_mut() {
            // Cut inside the part, or before it: what it held past `len` is gone.
            Some(part) if len <= part.end() => {
                if len <= part.start() {
                    self.part = None;
                } else {
                    part.truncate(len);
                }
            }
            // Extended past it: the zeros go in the file, after the part's bytes.
            Some(_) => self.write_out()?,
            None => {}
        }
        self.reserve(len, dir)?;
        match &mut self.place {
            Place::Memory(bytes) => {
                bytes.resize(len as usize, 0);
                Ok(())
            }
            // Under a part still held, the file reads as zeros: the part lies over them.
            Place::File(file) => file.set_len(len),
        }
    }

    /// All the bytes, when they are in memory (a small file goes up in one request).
    pub fn bytes(&self) -> Option<bytes::Bytes> {
        match &self.place {
            Place::Memory(bytes) => Some(bytes::Bytes::copy_from_slice(bytes)),
            Place::File(_) => None,
        }
    }
}

/// Reads up to `buf.len()` bytes of `file` at `offset`; fewer at its end.
fn read_file(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Writes `data` at `at` with direct I/O: the file's descriptor takes `O_DIRECT` for the write.
/// The descriptor is this staging's alone and the write holds it exclusively (`&mut`), so no
/// read sees the flag.
fn write_direct(file: &File, data: &[u8], at: u64) -> std::io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(file.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(file.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_DIRECT))?;
    let written = file.write_all_at(data, at);
    fcntl(file.as_fd(), FcntlArg::F_SETFL(flags))?;
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(s: &Staging) -> Vec<u8> {
        let mut buf = vec![0u8; s.size().expect("size") as usize];
        s.read_exact_at(&mut buf, 0).expect("read");
        buf
    }

    #[test]
    fn small_files_stay_in_memory_and_large_ones_move_to_disk_with_their_bytes() {
        let dir = tempfile::tempdir().expect("dir");
        let budget = MemoryBudget::new(64 << 20);
        let mut s = Staging::new(&budget);
        s.write_at(b"hello", 0, dir.path()).expect("write");
        s.write_at(b"world", 10, dir.path())
            .expect("write past the end");
        assert!(s.in_memory());
        assert_eq!(contents(&s), b"hello\0\0\0\0\0world");
        assert_eq!(budget.used(), 15);
        // Growing past the per-file limit moves everything to a file.
        let big = vec![7u8; MEMORY_PER_FILE as usize];
        s.write_at(&big, 15, dir.path()).expect("write big");
        assert!(!s.in_memory());
        assert_eq!(budget.used(), 0, "memory given back on the move");
        let all = contents(&s);
        assert_eq!(&all[..15], b"hello\0\0\0\0\0world");
        assert_eq!(&all[15..], &big[..]);
        assert!(s.bytes().is_none());
    }

    #[test]
    fn the_mount_budget_bounds_memory_across_files() {
        let dir = tempfile::tempdir().expect("dir");
        let budget = MemoryBudget::new(100);
        let mut a = Staging::new(&budget);
        let mut b = Staging::new(&budget);
        a.write_at(&[1u8; 80], 0, dir.path()).expect("a");
        b.write_at(&[2u8; 30], 0, dir.path()).expect("b");
        assert!(a.in_memory());
        assert!(!b.in_memory(), "no room left: to disk");
        assert_eq!(contents(&b), vec![2u8; 30]);
        drop(a);
        assert_eq!(budget.used(), 0, "a dropped file gives its memory back");
    }

    #[test]
    fn truncation_shrinks_and_extends_with_zeros() {
        let dir = tempfile::tempdir().expect("dir");
        let budget = MemoryBudget::new(1 << 20);
        let mut s = Staging::new(&budget);
        s.write_at(b"abcdef", 0, dir.path()).expect("write");
        s.set_len(3, dir.path()).expect("shrink");
        assert_eq!(contents(&s), b"abc");
        assert_eq!(budget.used(), 3);
        s.set_len(5, dir.path()).expect("extend");
        assert_eq!(contents(&s), b"abc\0\0");
        assert_eq!(s.bytes().as_deref(), Some(&b"abc\0\0"[..]));
        let mut short = [0u8; 8];
        assert_eq!(s.read_at(&mut short, 2).expect("read"), 3);
        assert!(s.read_exact_at(&mut short, 0).is_err());
        s.set_len(MEMORY_PER_FILE + 1, dir.path())
            .expect("extend far");
        assert!(!s.in_memory());
        assert_eq!(s.size().expect("size"), MEMORY_PER_FILE + 1);
    }

    /// A staging file of `len` bytes of `fill`, and part buffers of `part` bytes.
    fn on_disk(
        dir: &Path,
        len: usize,
        fill: u8,
        part: usize,
    ) -> (Staging, crate::fuse::upload::Parts) {
        let mut s = Staging::new(&MemoryBudget::new(0));
        s.write_at(&vec![fill; len], 0, dir).expect("write");
        assert!(!s.in_memory());
        (s, crate::fuse::upload::Parts::new(8 * part as u64, part))
    }

    #[test]
    fn a_held_part_reads_over_the_file_and_goes_to_it_when_a_write_breaks_it() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut s, parts) = on_disk(dir.path(), 100, b'a', 64);
        s.hold(100, parts.spare().expect("spare"), 64);
        s.write_at(&[b'b'; 30], 100, dir.path())
            .expect("into the part");
        s.write_at(&[b'c'; 10], 130, dir.path())
            .expect("continues it");
        s.write_at(b"BB", 110, dir.path())
            .expect("rewrites inside it");
        assert!(s.holds_part());
        assert_eq!(s.size().expect("size"), 140);
        let mut want = [vec![b'a'; 100], vec![b'b'; 30], vec![b'c'; 10]].concat();
        want[110..112].copy_from_slice(b"BB");
        assert_eq!(contents(&s), want);
        let mut across = [0u8; 8];
        assert_eq!(s.read_at(&mut across, 96).expect("read"), 8);
        assert_eq!(&across, b"aaaabbbb");
        // A write past the part's end leaves a hole in it: the part goes to the file first.
        s.write_at(b"zz", 150, dir.path()).expect("past the part");
        assert!(!s.holds_part());
        want.resize(150, 0);
        want.extend_from_slice(b"zz");
        assert_eq!(contents(&s), want);
        assert_eq!(parts.available(), 8, "the buffer went back");
    }

    #[test]
    fn a_write_across_the_parts_limit_puts_the_rest_in_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut s, parts) = on_disk(dir.path(), 8, b'a', 16);
        s.hold(8, parts.spare().expect("spare"), 16);
        let data: Vec<u8> = (0..40).collect();
        s.write_at(&data, 8, dir.path()).expect("write");
        assert!(s.holds_part(), "the part is full, not broken");
        assert_eq!(&contents(&s)[8..], &data[..]);
        let part = s.take(8, 16).expect("take").expect("the part, whole");
        assert_eq!(&part.bytes[..], &data[..16]);
        assert_eq!(&contents(&s)[8..], &data[..], "and in the file");
    }

    #[test]
    fn a_complete_part_is_written_to_the_file_and_handed_over_directly_when_aligned() {
        let dir = tempfile::tempdir().expect("dir");
        const PART: usize = 64 << 10;
        let (mut s, parts) = on_disk(dir.path(), PART, b'a', PART);
        for (start, fill) in [(PART as u64, b'p'), (2 * PART as u64, b'q')] {
            s.hold(start, parts.spare().expect("spare"), PART);
            s.write_at(&vec![fill; PART], start, dir.path())
                .expect("fill");
            let part = s.take(start, PART).expect("take").expect("whole");
            assert!(part.bytes.iter().all(|&b| b == fill));
            assert!((part.bytes.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN));
            drop(part);
        }
        assert!(!s.holds_part());
        let all = contents(&s);
        assert_eq!(all.len(), 3 * PART);
        assert!(all[..PART].iter().all(|&b| b == b'a'));
        assert!(all[PART..2 * PART].iter().all(|&b| b == b'p'));
        assert!(all[2 * PART..].iter().all(|&b| b == b'q'));
        // A part asked for at another start or length is written out and read from the file.
        s.hold(3 * PART as u64, parts.spare().expect("spare"), PART);
        s.write_at(b"tail", 3 * PART as u64, dir.path())
            .expect("tail");
        assert!(s.take(3 * PART as u64, PART).expect("take").is_none());
        assert!(!s.holds_part());
        assert_eq!(&contents(&s)[3 * PART..], b"tail");
    }

    #[test]
    fn a_direct_write_goes_through_and_leaves_the_descriptor_as_it_was() {
        // The test directory's file system (ext4 here) takes direct I/O.
        let dir = tempfile::tempdir().expect("dir");
        let file = tempfile::tempfile_in(dir.path()).expect("file");
        let parts = crate::fuse::upload::Parts::new(4 * 8192, 8192);
        let mut buf = parts.spare().expect("spare");
        buf.bytes.resize(8192, b'd');
        let flags = || fcntl(file.as_fd(), FcntlArg::F_GETFL).expect("flags");
        let before = flags();
        write_direct(&file, &buf.bytes, 4096).expect("direct write");
        assert_eq!(flags(), before);
        assert_eq!(before & OFlag::O_DIRECT.bits(), 0);
        let mut back = vec![0u8; 4096 + 8192];
        assert_eq!(read_file(&file, &mut back, 0).expect("read"), back.len());
        assert!(back[..4096].iter().all(|&b| b == 0));
        assert!(back[4096..].iter().all(|&b| b == b'd'));
        // Unaligned, the kernel refuses: staging then writes through the page cache.
        let err = write_direct(&file, &buf.bytes[1..], 1).expect_err("unaligned");
        assert_eq!(err.raw_os_error(), Some(nix::libc::EINVAL));
        assert_eq!(flags(), before, "restored after a refusal too");
    }

    #[test]
    fn truncating_cuts_the_held_part_and_extending_writes_it_out() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut s, parts) = on_disk(dir.path(), 10, b'a', 32);
        s.hold(10, parts.spare().expect("spare"), 32);
        s.write_at(b"0123456789", 10, dir.path()).expect("part");
        s.set_len(15, dir.path()).expect("cut inside");
        assert!(s.holds_part());
        assert_eq!(&contents(&s)[10..], b"01234");
        s.set_len(18, dir.path()).expect("extend");
        assert!(!s.holds_part(), "zeros follow the part's bytes in the file");
        assert_eq!(&contents(&s)[10..], b"01234\0\0\0");
        s.hold(18, parts.spare().expect("spare"), 32);
        s.write_at(b"xyz", 18, dir.path()).expect("part");
        s.set_len(12, dir.path()).expect("cut before the part");
        assert!(!s.holds_part());
        assert_eq!(contents(&s), b"aaaaaaaaaa01");
    }
}
