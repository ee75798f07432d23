//! Opening, reading, writing and changing files.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use object_store::ObjectStoreExt;
use tokio::sync::OwnedMutexGuard;

use super::{ObjectFs, Stat};
use crate::fuse::access::{Caller, R, Time, W, after_unprivileged_write};
use crate::fuse::error::FsError;
use crate::fuse::handles::{Access, FileHandle};
use crate::fuse::inodes::{Kind, Node};
use crate::fuse::objects::{Posix, S_IFREG};
use crate::fuse::prefetch::Prefetch;
use crate::fuse::writer::{Base, Uploaded, Writer};

const O_ACCMODE: i32 = 0o3;
const O_RDONLY: i32 = 0;
const O_WRONLY: i32 = 1;
const O_TRUNC: i32 = 0o1000;

/// What a setattr asks to change.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    /// The open file a `ftruncate` goes through.
    pub fh: Option<u64>,
}

impl ObjectFs {
    /// A writer that starts `node` empty (a new file when `base` is absent).
    fn writer_for(&self, node: &Node, dirty: bool, base: Option<Base>) -> Writer {
        // New bytes: the upload's time is the modification time again.
        let posix = Posix {
            mtime: None,
            ..node.posix
        };
        let key = self.key(&node.path);
        let base = base.unwrap_or_else(|| Base::of(&key, node.etag.as_deref()));
        Writer::empty(&self.scratch, key, posix, dirty, base)
    }

    /// Uploads `writer` as the file at `path` with `posix`; returns the new size and ETag when
    /// the object was written. A conflict keeps S3's object and is logged and counted.
    async fn upload_writer(
        &self,
        writer: &mut Writer,
        path: &str,
        posix: Posix,
    ) -> Result<Option<(u64, Option<String>)>, FsError> {
        match writer
            .upload(&self.objects, &self.key(path), posix, &self.lost_found)
            .await?
        {
            Uploaded::Clean => Ok(None),
            Uploaded::Stored { size, etag } => Ok(Some((size, etag))),
            Uploaded::LostAndFound { key, size } => {
                let total = self.conflicts.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::error!(
                    %path, lost_found = %key, size, conflicts_total = total,
                    "the object changed elsewhere since this file was opened: S3's version \
                     stays, this mount's bytes are in lost+found"
                );
                if let Some(ino) = self.inodes.ino_of(path) {
                    // Show S3's version at the next getattr.
                    self.inodes
                        .update(ino, |n| n.seen = Instant::now() - super::TTL);
                }
                Ok(None)
            }
        }
    }

    /// Opens `ino` with `flags` (open(2)'s); returns the handle.
    pub async fn open(&self, caller: &Caller, ino: u64, flags: i32) -> Result<u64, FsError> {
        let node = self.fresh_node(ino).await?;
        match node.kind() {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::Symlink => return Err(FsError::SymlinkOpened),
            Kind::File => {}
        }
        let access = flags & O_ACCMODE;
        let truncate = flags & O_TRUNC != 0;
        let want = match access {
            O_RDONLY => R,
            O_WRONLY => W,
            _ => R | W,
        } | if truncate { W } else { 0 };
        self.user(caller).check(&node.posix, want)?;
        let access = if access == O_RDONLY {
            let body = self.dirs.take_body(ino);
            let prefetch = (body.is_none() && !self.objects.is_local())
                .then(|| tokio::sync::Mutex::new(Prefetch::new(&self.read_ahead)));
            Access::Read {
                etag: node.etag.clone(),
                body,
                prefetch,
            }
        } else if truncate || node.size == 0 {
            if truncate {
                self.dirs.drop_body(ino);
                self.inodes.update(ino, |n| {
                    n.size = 0;
                    n.posix.mtime = None;
                });
            }
            Access::write(self.writer_for(&node, truncate, None))
        } else {
            let writer =
                Writer::of_object(&self.objects, &self.key(&node.path), &self.scratch).await?;
            Access::write(writer)
        };
        Ok(self.handles.open_file(FileHandle { ino, access }))
    }

    /// Creates and opens `name` in `parent`. The object exists once the handle is flushed.
    pub async fn create(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> Result<(Stat, u64), FsError> {
        let (dir, path) = self.writable_child(caller, parent, name).await?;
        self.file_name_fits(&path)?;
        let posix = self
            .user(caller)
            .new_posix(&dir.posix, S_IFREG | (mode & 0o7777));
        let stat = self.created(path, 0, posix);
        let writer = self.writer_for(&stat.node, true, Some(Base::Absent));
        let fh = self.handles.open_file(FileHandle {
            ino: stat.ino,
            access: Access::write(writer),
        });
        Ok((stat, fh))
    }

    /// Reads through handle `fh`. What this mount wrote is what it reads: while `ino` is open
    /// for writing here, a reader reads the newest writer's staged bytes, and once those are
    /// uploaded (the ETag changed), a body or read-ahead of the version opened is not used.
    pub async fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Bytes, FsError> {
        let handle = self.handles.file(fh).ok_or(FsError::BadHandle)?;
        let writer = match &handle.access {
            Access::Write(_) => Some(handle.clone()),
            Access::Read { .. } => self.handles.newest_writer(ino),
        };
        if let Some(writer) = writer
            && let Access::Write(writer) = &writer.access
        {
            return Ok(writer.lock().await.read(offset, size)?.into());
        }
        let Access::Read {
            etag,
            body,
            prefetch,
        } = &handle.access
        else {
            return Err(FsError::BadHandle);
        };
        let node = self.node(ino)?;
        if let Some(body) = body
            && node.etag == *etag
        {
            let start = (offset as usize).min(body.len());
            let end = (start + size as usize).min(body.len());
            return Ok(body.slice(start..end));
        }
        if offset >= node.size {
            return Ok(Bytes::new());
        }
        let end = (offset + u64::from(size)).min(node.size);
        let key = self.key(&node.path);
        match prefetch {
            Some(prefetch) => {
                let mut prefetch = prefetch.lock().await;
                prefetch.follow(node.etag.as_deref());
                let got = prefetch
                    .read(self.objects.store(), &key, offset..end, node.size)
                    .await?;
                Ok(got)
            }
            None => Ok(self.objects.store().get_range(&key, offset..end).await?),
        }
    }

    /// Writes `data` at `offset` through `fh`. `unprivileged`: the writing process lacks
    /// `CAP_FSETID` (the kernel's `FUSE_WRITE_KILL_SUIDGID`, sent with direct writes, which
    /// leave clearing set-user/group-ID to the file system), so the write drops those bits.
    pub async fn write(
        self: &Arc<Self>,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        unprivileged: bool,
    ) -> Result<u32, FsError> {
        let writer = self.writer_of(fh)?;
        if unprivileged {
            let node = self.node(ino)?;
            let mut posix = after_unprivileged_write(&node.posix);
            if posix != node.posix {
                posix.ctime = Some(SystemTime::now());
                self.store_posix(ino, &node, posix).await?;
            }
        }
        let writer = writer.lock_owned().await;
        self.staged(writer, ino, offset, data).await
    }

    /// [`ObjectFs::write`] begun on the caller's thread: when `fh`'s writer is free and the
    /// write has no set-user/group-ID bits to clear, `data` is staged now and what is left
    /// (sending the parts it completed) is returned, owning all it needs, so the caller need
    /// not keep `data`. `None`: nothing was done; the caller writes a copy with `write`.
    pub fn write_now(
        self: &Arc<Self>,
        ino: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        unprivileged: bool,
    ) -> Option<impl Future<Output = Result<u32, FsError>> + Send + 'static> {
        let writer = self.writer_of(fh).ok()?;
        if unprivileged {
            let node = self.node(ino).ok()?;
            if after_unprivileged_write(&node.posix) != node.posix {
                return None;
            }
        }
        let writer = writer.try_lock_owned().ok()?;
        Some(self.staged(writer, ino, offset, data))
    }

    pub(super) fn writer_of(&self, fh: u64) -> Result<Arc<tokio::sync::Mutex<Writer>>, FsError> {
        let handle = self.handles.file(fh).ok_or(FsError::BadHandle)?;
        match &handle.access {
            Access::Write(writer) => Ok(writer.clone()),
            Access::Read { .. } => Err(FsError::BadHandle),
        }
    }

    /// Stages `data` in `writer` now and returns the rest of the write: sending what it
    /// completed, then the file's new size and mtime.
    fn staged(
        self: &Arc<Self>,
        mut writer: OwnedMutexGuard<Writer>,
        ino: u64,
        offset: u64,
        data: &[u8],
    ) -> impl Future<Output = Result<u32, FsError>> + Send + 'static {
        let staged = writer.stage(offset, data);
        let fs = self.clone();
        let len = data.len();
        async move {
            staged?;
            writer.send_due(&fs.objects).await;
            drop(writer);
            let end = offset + len as u64;
            fs.inodes.update(ino, |n| {
                n.size = n.size.max(end);
                n.posix.mtime = None;
            });
            Ok(len as u32)
        }
    }

    /// Uploads what `handle` wrote since its last upload; when this returns, it is in the
    /// bucket. A file unlinked while open is not uploaded: as on a local disk, its bytes go
    /// with it.
    pub(super) async fn flush_handle(&self, handle: &FileHandle) -> Result<(), FsError> {
        let Access::Write(writer) = &handle.access else {
            return Ok(());
        };
        let mut writer = writer.lock().await;
        let Some(node) = self.inodes.get(handle.ino) else {
            tracing::debug!(ino = handle.ino, "not uploading a file unlinked while open");
            writer.discard().await;
            return Ok(());
        };
        if let Some((size, etag)) = self
            .upload_writer(&mut writer, &node.path, node.posix)
            .await?
        {
            self.dirs.note(&node.path, Some((Kind::File, size)));
            self.dirs.drop_body(handle.ino);
            self.inodes.update(handle.ino, |n| {
                n.size = size;
                n.mtime = SystemTime::now();
                n.seen = Instant::now();
                n.etag = etag;
            });
        }
        Ok(())
    }

    /// A flush or fsync of handle `fh`.
    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        match self.handles.file(fh) {
            Some(handle) => self.flush_handle(&handle).await,
            None => Ok(()),
        }
    }

    /// Closes `fh`, uploading what it wrote. Nobody sees a release's error, so a failed
    /// upload here is logged as the loss it is.
    pub async fn release(&self, fh: u64) -> Result<(), FsError> {
        let result = self.flush(fh).await;
        if let Some(handle) = self.handles.close_file(fh)
            && let Err(e) = &result
        {
            let path = self
                .inodes
                .get(handle.ino)
                .map(|n| n.path)
                .unwrap_or_default();
            tracing::error!(%path, error = %e, "upload at release failed: the bucket does not have this file's last writes");
        }
        result
    }

    /// Changes size, mode, owner or times of `ino`.
    pub async fn setattr(
        &self,
        caller: &Caller,
        ino: u64,
        change: SetAttr,
    ) -> Result<Stat, FsError> {
        let user = self.user(caller);
        let node = self.fresh_node(ino).await?;
        if let Some(size) = change.size {
            if node.kind() == Kind::Dir {
                return Err(FsError::IsDir);
            }
            let handle = change.fh.and_then(|fh| self.handles.file(fh));
            match handle.as_deref().map(|h| &h.access) {
                // ftruncate: the open for writing was the permission check.
                Some(Access::Write(writer)) => writer.lock().await.set_len(size).await?,
                Some(Access::Read { .. }) => return Err(FsError::BadHandle),
                // Open for writing here (the kernel truncates an `open(O_TRUNC)` after the open,
                // with no handle): the writers hold the file's newest bytes and upload the cut
                // with them. A separate upload would be a version they did not start from, a
                // conflict at their close.
                None if self.handles.writing(ino) => {
                    user.check(&node.posix, W)?;
                    for handle in self.handles.writers_of(ino) {
                        if let Access::Write(writer) = &handle.access {
                            writer.lock().await.set_len(size).await?;
                        }
                    }
                }
                None => {
                    user.check(&node.posix, W)?;
                    let mut writer = if size == 0 || node.size == 0 {
                        self.writer_for(&node, true, None)
                    } else {
                        Writer::of_object(&self.objects, &self.key(&node.path), &self.scratch)
                            .await?
                    };
                    writer.set_len(size).await?;
                    let posix = Posix {
                        mtime: None,
                        ..node.posix
                    };
                    if let Some((_, etag)) =
                        self.upload_writer(&mut writer, &node.path, posix).await?
                    {
                        self.inodes.update(ino, |n| n.etag = etag);
                    }
                }
            }
            self.dirs.drop_body(ino);
            self.inodes.update(ino, |n| {
                n.size = size;
                n.mtime = SystemTime::now();
                n.posix.mtime = None;
            });
        }
        let node = self.node(ino)?;
        let mut posix = node.posix;
        if change.mode.is_some() || change.uid.is_some() || change.gid.is_some() {
            posix = user.change(&posix, change.mode, change.uid, change.gid)?;
        }
        if change.atime.is_some() || change.mtime.is_some() {
            posix = user.touch(&posix, change.atime, change.mtime)?;
        }
        if posix != node.posix {
            posix.ctime = Some(SystemTime::now());
            self.store_posix(ino, &node, posix).await?;
        }
        self.stat(ino)
    }

    /// Stores new attributes of `node` (at `ino`).
    async fn store_posix(&self, ino: u64, node: &Node, posix: Posix) -> Result<(), FsError> {
        let writers = self.handles.writers_of(ino);
        match node.kind() {
            Kind::Dir => {
                let payload = object_store::PutPayload::default();
                self.objects
                    .put(&self.marker_key(&node.path), payload, posix)
                    .await?;
            }
            // An open writer uploads them with the data.
            Kind::File if !writers.is_empty() => {
                for handle in writers {
                    if let Access::Write(writer) = &handle.access {
                        writer.lock().await.mark_dirty();
                    }
                }
            }
            Kind::File | Kind::Symlink => {
                let key = self.key(&node.path);
                if !self.objects.set_in_place(&key, posix) {
                    // S3 keeps user metadata immutable: write the object again, as S3 Files
                    // does (a chmod is a new object version).
                    let mut writer = Writer::of_object(&self.objects, &key, &self.scratch).await?;
                    writer.mark_dirty();
                    if let Some((_, etag)) =
                        self.upload_writer(&mut writer, &node.path, posix).await?
                    {
                        self.inodes.update(ino, |n| n.etag = etag);
                    }
                }
            }
        }
        self.inodes.update(ino, |n| n.posix = posix);
        Ok(())
    }
}
