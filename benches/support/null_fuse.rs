//! The FUSE floor: a file system that holds one file, throws away what is written to it and
//! answers reads from one buffer in memory. Writing and reading through it costs what moving
//! bytes between a process and any FUSE daemon costs on this kernel (the system calls, the
//! kernel's copies, the daemon's reads and replies on /dev/fuse) and nothing else, so its CPU
//! time per GiB is what every FUSE client adds to the S3 requests it sends.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, WriteFlags,
};

const FILE: u64 = 2;
const TTL: Duration = Duration::from_secs(60);

struct Null {
    size: u64,
    /// What every read answers with (as many bytes as asked, up to the file's end).
    data: Vec<u8>,
    direct: bool,
}

impl Null {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, perm, size) = if ino == FILE {
            (FileType::RegularFile, 0o644, self.size)
        } else {
            (FileType::Directory, 0o755, 0)
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }
}

impl Filesystem for Null {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // As the mount under test asks.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == 1 && name == "f" {
            reply.entry(&TTL, &self.attr(FILE), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&TTL, &self.attr(ino.0));
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let flags = if self.direct {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        };
        reply.opened(FileHandle(0), flags);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let n = (size as u64).min(self.size.saturating_sub(offset)) as usize;
        reply.data(&self.data[..n.min(self.data.len())]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.written(data.len() as u32);
    }
}

/// Machine CPU seconds per GiB of writing and of reading `size` bytes in 1 MiB calls through
/// the null file system at `dir` (created), with or without the page cache (`direct`).
pub fn floor(dir: &Path, size: u64, direct: bool) -> anyhow::Result<(f64, f64)> {
    std::fs::create_dir_all(dir)?;
    let fs = Null {
        size,
        data: vec![0x5a; 1 << 20],
        direct,
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("null".into())];
    config.n_threads = Some(2);
    let session = fuser::spawn_mount(fs, dir, &config)?;
    let file = dir.join("f");
    // The mount under test reads ahead 1 MiB at a time (its helper sets the knob); so does this.
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir)?.dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    let _ = std::fs::write(knob, "1024");
    let block = vec![0xa5u8; 1 << 20];
    let span = crate::Span::start();
    let mut out = std::fs::OpenOptions::new().write(true).open(&file)?;
    for _ in 0..size >> 20 {
        out.write_all(&block)?;
    }
    drop(out);
    let write = span.end(size).cpu;
    // What was written stays in the page cache (without direct I/O) and would be read from it.
    crate::drop_caches();
    let span = crate::Span::start();
    let mut input = std::fs::File::open(&file)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = input.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    anyhow::ensure!(total == size, "null read {total} of {size} bytes");
    let read = span.end(size).cpu;
    drop(input);
    drop(session);
    Ok((write.unwrap_or(f64::NAN), read.unwrap_or(f64::NAN)))
}
