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

/// A mount of the null file system, its one file `size` bytes long.
pub struct NullMount {
    file: std::path::PathBuf,
    size: u64,
    _session: fuser::BackgroundSession,
}

impl NullMount {
    /// Mounts at `dir` (created), with or without the page cache (`direct`).
    pub fn new(dir: &Path, size: u64, direct: bool) -> anyhow::Result<NullMount> {
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
        // The mount under test reads ahead 1 MiB at a time (its helper sets the knob); so does
        // this.
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(dir)?.dev();
        let knob = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            nix::sys::stat::major(dev),
            nix::sys::stat::minor(dev)
        );
        let _ = std::fs::write(knob, "1024");
        Ok(NullMount {
            file: dir.join("f"),
            size,
            _session: session,
        })
    }

    /// Writes the whole file in 1 MiB calls.
    pub fn write(&self) -> anyhow::Result<crate::Run> {
        let block = vec![0xa5u8; 1 << 20];
        let span = crate::Span::start();
        let mut out = std::fs::OpenOptions::new().write(true).open(&self.file)?;
        for _ in 0..self.size >> 20 {
            out.write_all(&block)?;
        }
        drop(out);
        Ok(span.end(self.size))
    }

    /// Reads the whole file in calls of `chunk` bytes, from nothing cached (what was written or
    /// read before would otherwise be read from the page cache).
    pub fn read(&self, chunk: usize) -> anyhow::Result<crate::Run> {
        crate::drop_caches();
        let span = crate::Span::start();
        let mut input = std::fs::File::open(&self.file)?;
        let mut buf = vec![0u8; chunk];
        let mut total = 0u64;
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        let run = span.end(self.size);
        anyhow::ensure!(
            total == self.size,
            "null read {total} of {} bytes",
            self.size
        );
        Ok(run)
    }
}

/// Machine CPU seconds per GiB of writing and of reading `size` bytes in 1 MiB calls through
/// the null file system at `dir` (created), with or without the page cache (`direct`).
pub fn floor(dir: &Path, size: u64, direct: bool) -> anyhow::Result<(f64, f64)> {
    let mount = NullMount::new(dir, size, direct)?;
    let write = mount.write()?.cpu;
    let read = mount.read(1 << 20)?.cpu;
    Ok((write.unwrap_or(f64::NAN), read.unwrap_or(f64::NAN)))
}

/// The read sizes `--floor` reads with: Go's `bufio` (4 KiB), Rust's `BufReader` and Java's
/// streams (8 KiB), coreutils' `cat` and `cp` (128 KiB), and the mount's own largest request
/// (1 MiB).
const READ_SIZES: [usize; 4] = [4 << 10, 8 << 10, 128 << 10, 1 << 20];

/// `--floor`: reads `size` bytes through the null file system in calls of each of
/// [`READ_SIZES`], with the page cache and with direct I/O (`FOPEN_DIRECT_IO`), `rounds` times
/// with the two modes in turn first, and prints each read and the medians. With the page cache
/// the kernel asks the daemon for 1 MiB at a time whatever the reader's size; with direct I/O
/// every read the reader makes is one request to the daemon, so this is what a daemon that
/// opened files for direct I/O would cost readers that read in small calls.
pub fn by_read_size(size: u64, rounds: usize) -> anyhow::Result<()> {
    println!(
        "FUSE floor of reading {} MiB by read size: MiB/s and machine CPU s/GiB",
        size >> 20
    );
    // Per mode, per read size: MiB/s and CPU s/GiB of each round.
    let mut figures = vec![vec![(Vec::new(), Vec::new()); READ_SIZES.len()]; 2];
    for round in 0..rounds {
        for m in [round % 2, 1 - round % 2] {
            let direct = m == 1;
            let dir = tempfile::tempdir()?;
            let mount = NullMount::new(&dir.path().join("null"), size, direct)?;
            for (i, &chunk) in READ_SIZES.iter().enumerate() {
                let run = mount.read(chunk)?;
                let cpu = run.cpu.unwrap_or(f64::NAN);
                println!(
                    "  round {}: {:<10} reads of {:>4} KiB: {:>7.1} MiB/s, {:.2} CPU s/GiB",
                    round + 1,
                    mode_name(direct),
                    chunk >> 10,
                    run.mbs,
                    cpu
                );
                figures[m][i].0.push(run.mbs);
                figures[m][i].1.push(cpu);
            }
        }
    }
    println!("medians of {rounds} round(s):");
    println!(
        "  {:>9} | {:>22} | {:>22} | direct / page cache",
        "read size", "page cache", "direct I/O"
    );
    for (i, &chunk) in READ_SIZES.iter().enumerate() {
        let [cached, direct] = [0, 1].map(|m| {
            let (mbs, cpu) = &figures[m][i];
            (
                crate::median(mbs.clone()).unwrap_or(f64::NAN),
                crate::median(cpu.clone()).unwrap_or(f64::NAN),
            )
        });
        println!(
            "  {:>5} KiB | {:>7.1} MiB/s {:>5.2} s/GiB | {:>7.1} MiB/s {:>5.2} s/GiB | {:.2}x speed, {:.2}x CPU",
            chunk >> 10,
            cached.0,
            cached.1,
            direct.0,
            direct.1,
            direct.0 / cached.0,
            direct.1 / cached.1
        );
    }
    Ok(())
}

/// How a null mount is named in the figures.
pub fn mode_name(direct: bool) -> &'static str {
    if direct { "direct I/O" } else { "page cache" }
}
