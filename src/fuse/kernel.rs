//! The kernel adapter: `fuser::Filesystem` over the core ([`ObjectFs`]).
//!
//! Each callback converts its arguments and starts the core's operation: one that finishes
//! without waiting is answered on the FUSE thread, one that waits goes on as a task on the
//! runtime, so no FUSE thread waits on the network. The answer logs a failure once (at debug
//! when it is the caller's doing, a warning when it is the mount's).

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use super::access::{Caller, Time};
use super::error::FsError;
use super::fs::{ObjectFs, RenameMode, SetAttr, Stat, TTL};
use super::inodes::Kind;

/// Bytes of entries a `readdirplus` answer is built for after the first. The kernel asks with
/// the reader's buffer (`ls` reads 32 KiB at a time; kernels before 6.16 ask for one page) and
/// fuser does not say how much, so the answer is built for 32 KiB: what does not fit is sent
/// in the next answer, its attributes already read. A 4 KiB answer carries about 26 entries,
/// so `ls -l` waited for the slowest of each 26 HEADs before the kernel asked for more.
const PLUS_BYTES: usize = 32 << 10;
/// The first answer, one page: the kernel reads the start of every directory with attributes,
/// also when nobody wants them (`ls -f`, `find`), and goes on with them only after lookups.
const FIRST_PLUS_BYTES: usize = 4 << 10;

pub struct Kernel {
    fs: Arc<ObjectFs>,
    runtime: tokio::runtime::Handle,
    buffers: WriteBuffers,
    /// Whether write-only opens bypass the page cache (see [`Kernel::caching`]).
    direct_writes: bool,
}

/// Buffers that carry the bytes of a write that cannot be staged at once (its file's writer
/// busy, see `ObjectFs::write_now`) from the FUSE thread to its task, reused: a write is up
/// to 1 MiB, which the allocator maps fresh each time (and the kernel zeroes) at the daemon's
/// fixed mmap threshold. At most [`WriteBuffers::KEEP`] wait for reuse.
#[derive(Clone, Default)]
struct WriteBuffers(Arc<std::sync::Mutex<Vec<Vec<u8>>>>);

impl WriteBuffers {
    const KEEP: usize = 2;

    fn copy_of(&self, data: &[u8]) -> Vec<u8> {
        let spare = self.0.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut buf = spare.unwrap_or_default();
        buf.extend_from_slice(data);
        buf
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        let mut spare = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if spare.len() < Self::KEEP {
            buf.clear();
            spare.push(buf);
        }
    }
}

impl Kernel {
    pub fn new(fs: ObjectFs, runtime: tokio::runtime::Handle) -> Self {
        Kernel {
            fs: Arc::new(fs),
            runtime,
            buffers: WriteBuffers::default(),
            direct_writes: false,
        }
    }

    /// How the kernel is to treat a file opened with `flags`. A write-only descriptor gets
    /// direct I/O: its writes come to the daemon from the writer's own buffer, instead of
    /// being copied into page-cache pages that nothing reads through it (a write-only
    /// descriptor can neither read nor be mapped); measured, the writer's system time for
    /// 1 GiB went from 0.4 s to 0.08 s. A reader of the file must still see each write, so
    /// the kernel must drop other descriptors' cached pages of what a direct write changes:
    /// direct writes are used only on kernels offering `FUSE_DIRECT_IO_ALLOW_MMAP`, taken as
    /// the sign of that generation of FUSE's direct I/O (tests/fuse.rs checks a reader
    /// against two writes through one descriptor). Every other open keeps the page cache,
    /// for read-ahead, re-reads and `mmap`.
    fn caching(&self, flags: i32) -> FopenFlags {
        if self.direct_writes && flags & nix::libc::O_ACCMODE == nix::libc::O_WRONLY {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        }
    }

    /// Runs `op` on the core and answers its result with `reply`. The operation is polled once
    /// here, on the FUSE thread: most finish without waiting (an entry, attributes or bytes
    /// already held, a write into staging) and are answered at once, without handing the
    /// request to a runtime thread and waking it. One that has to wait (a store request, a
    /// lock) goes on as a task, which polls it again with its own waker, so nothing waits on
    /// the FUSE thread.
    fn spawn<T, F, Fut>(
        &self,
        name: &'static str,
        op: F,
        reply: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) where
        T: Send + 'static,
        F: FnOnce(Arc<ObjectFs>) -> Fut,
        Fut: Future<Output = Result<T, FsError>> + Send + 'static,
    {
        let _runtime = self.runtime.enter();
        let mut fut = Box::pin(op(self.fs.clone()));
        let mut cx = Context::from_waker(Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(result) => reply(result.map_err(|e| failed(name, &e))),
            Poll::Pending => {
                self.runtime.spawn(async move {
                    let result = fut.await;
                    reply(result.map_err(|e| failed(name, &e)));
                });
            }
        }
    }
}

/// Logs a failed operation once and answers its errno.
fn failed(op: &'static str, e: &FsError) -> Errno {
    if e.is_expected() {
        tracing::debug!(op, error = %e, "failed");
    } else {
        tracing::warn!(op, error = %e, "failed");
    }
    e.errno()
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

fn attr(stat: &Stat) -> FileAttr {
    let node = &stat.node;
    let mtime = node.posix.mtime.unwrap_or(node.mtime);
    let ctime = node.posix.ctime.map_or(node.mtime, |c| c.max(node.mtime));
    FileAttr {
        ino: INodeNo(stat.ino),
        size: node.size,
        blocks: node.size.div_ceil(512),
        atime: node.posix.atime.unwrap_or(mtime),
        mtime,
        ctime,
        crtime: node.mtime,
        kind: file_type(node.kind()),
        perm: node.posix.perm() as u16,
        nlink: if node.kind() == Kind::Dir { 2 } else { 1 },
        uid: node.posix.uid,
        gid: node.posix.gid,
        rdev: 0,
        flags: 0,
        blksize: 4096,
    }
}

fn time(t: Option<TimeOrNow>) -> Option<Time> {
    t.map(|t| match t {
        TimeOrNow::Now => Time::Now,
        TimeOrNow::SpecificTime(at) => Time::At(at),
    })
}

fn entry(reply: ReplyEntry) -> impl FnOnce(Result<Stat, Errno>) {
    move |r| match r {
        Ok(stat) => reply.entry(&TTL, &attr(&stat), Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty) -> impl FnOnce(Result<(), Errno>) {
    move |r| match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn written(reply: ReplyWrite) -> impl FnOnce(Result<u32, Errno>) {
    move |r| match r {
        Ok(n) => reply.written(n),
        Err(e) => reply.error(e),
    }
}

fn opened(reply: ReplyOpen, flags: FopenFlags) -> impl FnOnce(Result<u64, Errno>) {
    move |r| match r {
        Ok(fh) => reply.opened(FileHandle(fh), flags),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Kernel {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Fewer, larger requests: 1 MiB writes and reads when the kernel allows them.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // Names with their attributes when a directory's entries are looked up (`ls -l`), plain
        // names otherwise (`ls -f`, `find`): the kernel picks per directory.
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS | fuser::InitFlags::FUSE_READDIRPLUS_AUTO,
        );
        // `open(O_TRUNC)` as one call, the open with its flag: the file starts empty in its
        // writer instead of being downloaded whole, truncated and uploaded empty first.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC);
        self.direct_writes = config
            .add_capabilities(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok();
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let (c, name) = (caller(req), name.to_owned());
        self.spawn(
            "lookup",
            move |fs| async move { fs.lookup(&c, parent.0, &name).await },
            entry(reply),
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.spawn(
            "getattr",
            move |fs| async move { fs.getattr(ino.0).await },
            move |r| match r {
                Ok(stat) => reply.attr(&TTL, &attr(&stat)),
                Err(e) => reply.error(e),
            },
        );
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let c = caller(req);
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time(atime),
            mtime: time(mtime),
            fh: fh.map(|fh| fh.0),
        };
        self.spawn(
            "setattr",
            move |fs| async move { fs.setattr(&c, ino.0, change).await },
            move |r| match r {
                Ok(stat) => reply.attr(&TTL, &attr(&stat)),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(
            "readlink",
            move |fs| async move { fs.readlink(ino.0).await },
            move |r| match r {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(e),
            },
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let (c, name) = (caller(req), name.to_owned());
        let mode = mode & !(umask & 0o777);
        self.spawn(
            "mknod",
            move |fs| async move { fs.mknod(&c, parent.0, &name, mode).await },
            entry(reply),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let (c, name) = (caller(req), name.to_owned());
        let mode = mode & !(umask & 0o777);
        self.spawn(
            "mkdir",
            move |fs| async move { fs.mkdir(&c, parent.0, &name, mode).await },
            entry(reply),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (c, name) = (caller(req), name.to_owned());
        self.spawn(
            "unlink",
            move |fs| async move { fs.unlink(&c, parent.0, &name).await },
            empty(reply),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (c, name) = (caller(req), name.to_owned());
        self.spawn(
            "rmdir",
            move |fs| async move { fs.rmdir(&c, parent.0, &name).await },
            empty(reply),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (c, name) = (caller(req), link_name.to_owned());
        let target = target.as_os_str().as_bytes().to_vec();
        self.spawn(
            "symlink",
            move |fs| async move { fs.symlink(&c, parent.0, &name, &target).await },
            entry(reply),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (c, name, new_name) = (caller(req), name.to_owned(), newname.to_owned());
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            RenameMode::Exchange
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            RenameMode::NoReplace
        } else if flags.is_empty() {
            RenameMode::Replace
        } else {
            // RENAME_WHITEOUT is for overlay file systems.
            reply.error(failed(
                "rename",
                &FsError::UnsupportedFlag("RENAME_WHITEOUT"),
            ));
            return;
        };
        self.spawn(
            "rename",
            move |fs| async move {
                fs.rename(&c, parent.0, &name, newparent.0, &new_name, mode)
                    .await
            },
            empty(reply),
        );
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        entry(reply)(self.fs.link().map_err(|e| failed("link", &e)));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let c = caller(req);
        self.spawn(
            "open",
            move |fs| async move { fs.open(&c, ino.0, flags.0).await },
            opened(reply, self.caching(flags.0)),
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (c, name) = (caller(req), name.to_owned());
        let mode = mode & !(umask & 0o777);
        let caching = self.caching(flags);
        self.spawn(
            "create",
            move |fs| async move { fs.create(&c, parent.0, &name, mode).await },
            move |r| match r {
                Ok((stat, fh)) => {
                    reply.created(&TTL, &attr(&stat), Generation(0), FileHandle(fh), caching)
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(
            "read",
            move |fs| async move { fs.read(ino.0, fh.0, offset, size).await },
            move |r| match r {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            },
        );
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let unprivileged = wf.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        // Staged from the request's own buffer when the file's writer is free; otherwise the
        // bytes are copied for the write to wait with.
        if let Some(rest) = self.fs.write_now(ino.0, fh.0, offset, data, unprivileged) {
            self.spawn("write", move |_| rest, written(reply));
            return;
        }
        let buffers = self.buffers.clone();
        let data = buffers.copy_of(data);
        self.spawn(
            "write",
            move |fs| async move {
                let written = fs.write(ino.0, fh.0, offset, &data, unprivileged).await;
                buffers.give_back(data);
                written
            },
            written(reply),
        );
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.spawn(
            "flush",
            move |fs| async move { fs.flush(fh.0).await },
            empty(reply),
        );
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(
            "fsync",
            move |fs| async move { fs.flush(fh.0).await },
            empty(reply),
        );
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(
            "release",
            move |fs| async move { fs.release(fh.0).await },
            empty(reply),
        );
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let c = caller(req);
        self.spawn(
            "opendir",
            move |fs| async move { fs.opendir(&c, ino.0).await },
            opened(reply, FopenFlags::empty()),
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.spawn(
            "readdir",
            move |fs| async move { fs.readdir(ino.0, fh.0, offset).await },
            move |r| match r {
                Ok(entries) => {
                    for (next, (ino, kind, name)) in (offset + 1..).zip(&entries) {
                        if reply.add(INodeNo(*ino), next, file_type(*kind), name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let c = caller(req);
        self.spawn(
            "readdirplus",
            move |fs| async move {
                let bytes = if offset == 0 {
                    FIRST_PLUS_BYTES
                } else {
                    PLUS_BYTES
                };
                fs.readdirplus(&c, ino.0, fh.0, offset, bytes).await
            },
            move |r| match r {
                Ok(entries) => {
                    for e in entries {
                        let ttl = if e.fresh { TTL } else { Duration::ZERO };
                        let (ino, attr) = (INodeNo(e.stat.ino), attr(&e.stat));
                        if reply.add(ino, e.next, &e.name, &ttl, &attr, Generation(0)) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let c = caller(req);
        let mask = mask.bits() as u32;
        self.spawn(
            "access",
            move |fs| async move { fs.access(&c, ino.0, mask).await },
            empty(reply),
        );
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // No ioctls, as on a plain file. Answered quietly: programs ask on every open (is it
        // a terminal?), and the default answer logs a warning each time.
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // An elastic file system: report 8 EiB, as NFS clients of S3 Files see.
        let blocks = 1u64 << 51;
        reply.statfs(blocks, blocks, blocks, 1 << 40, 1 << 40, 4096, 255, 4096);
    }
}
