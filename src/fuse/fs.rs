//! The FUSE file system (see the module docs of `crate::fuse`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tracing::warn;

/// Marker object that keeps an empty directory.
pub const DIR_MARKER: &str = ".s3files-dir";
/// Uploads larger than this use multipart.
const MULTIPART_THRESHOLD: u64 = 16 << 20;
const TTL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
}

#[derive(Clone, Debug)]
struct Node {
    /// Relative to the root: "" for the root, "a/b.txt".
    path: String,
    kind: Kind,
    size: u64,
    mtime: SystemTime,
}

struct Open {
    ino: u64,
    /// Local staging copy for writers; `None` for read-only handles.
    staging: Option<File>,
    dirty: bool,
}

#[derive(Default)]
struct Tables {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next_ino: u64,
    handles: HashMap<u64, Open>,
    next_fh: u64,
}

/// Who owns everything and how directories are created.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub dir_mode: u16,
    pub file_mode: u16,
}

/// The file system.
pub struct ObjectFs {
    store: Arc<dyn ObjectStore>,
    /// Object key prefix of the root, without a trailing `/` ("" for the bucket root).
    root: String,
    identity: Identity,
    runtime: tokio::runtime::Handle,
    staging_dir: PathBuf,
    tables: Mutex<Tables>,
}

fn errno_of(e: &object_store::Error) -> Errno {
    match e {
        object_store::Error::NotFound { .. } => Errno::ENOENT,
        object_store::Error::AlreadyExists { .. } => Errno::EEXIST,
        _ => Errno::EIO,
    }
}

impl ObjectFs {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        root: &str,
        identity: Identity,
        runtime: tokio::runtime::Handle,
        staging_dir: PathBuf,
    ) -> Self {
        let mut tables = Tables {
            next_ino: 2,
            next_fh: 1,
            ..Default::default()
        };
        tables.nodes.insert(
            1,
            Node {
                path: String::new(),
                kind: Kind::Dir,
                size: 0,
                mtime: SystemTime::now(),
            },
        );
        tables.by_path.insert(String::new(), 1);
        ObjectFs {
            store,
            root: root.trim_matches('/').to_owned(),
            identity,
            runtime,
            staging_dir,
            tables: Mutex::new(tables),
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, path: &str) -> ObjectPath {
        match (self.root.is_empty(), path.is_empty()) {
            (true, _) => ObjectPath::from(path),
            (false, true) => ObjectPath::from(self.root.as_str()),
            (false, false) => ObjectPath::from(format!("{}/{path}", self.root)),
        }
    }

    fn child(parent: &str, name: &OsStr) -> Result<String, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if name.is_empty() || name.contains('/') || name == DIR_MARKER || name.len() > 255 {
            return Err(Errno::EINVAL);
        }
        Ok(if parent.is_empty() {
            name.to_owned()
        } else {
            format!("{parent}/{name}")
        })
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let (kind, perm, nlink) = match node.kind {
            Kind::Dir => (FileType::Directory, self.identity.dir_mode, 2),
            Kind::File => (FileType::RegularFile, self.identity.file_mode, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: node.size,
            blocks: node.size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm,
            nlink,
            uid: self.identity.uid,
            gid: self.identity.gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }

    fn remember(&self, node: Node) -> (u64, FileAttr) {
        let mut t = self.tables();
        let ino = match t.by_path.get(&node.path) {
            Some(ino) => *ino,
            None => {
                let ino = t.next_ino;
                t.next_ino += 1;
                t.by_path.insert(node.path.clone(), ino);
                ino
            }
        };
        let attr = self.attr(ino, &node);
        t.nodes.insert(ino, node);
        (ino, attr)
    }

    fn forget_path(&self, path: &str) {
        let mut t = self.tables();
        if let Some(ino) = t.by_path.remove(path) {
            t.nodes.remove(&ino);
        }
    }

    fn node(&self, ino: u64) -> Result<Node, Errno> {
        self.tables().nodes.get(&ino).cloned().ok_or(Errno::ENOENT)
    }

    /// Finds what is at `path` in the store: an object is a file, a non-empty prefix a directory.
    fn stat_path(&self, path: &str) -> Result<Node, Errno> {
        let key = self.key(path);
        self.runtime.block_on(async {
            match self.store.head(&key).await {
                Ok(meta) => {
                    return Ok(Node {
                        path: path.to_owned(),
                        kind: Kind::File,
                        size: meta.size,
                        mtime: meta.last_modified.into(),
                    });
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    warn!(%key, error = %e, "head failed");
                    return Err(errno_of(&e));
                }
            }
            let mut listing = self.store.list(Some(&key));
            match listing.next().await {
                Some(Ok(_)) => Ok(Node {
                    path: path.to_owned(),
                    kind: Kind::Dir,
                    size: 0,
                    mtime: SystemTime::now(),
                }),
                Some(Err(e)) => Err(errno_of(&e)),
                None => Err(Errno::ENOENT),
            }
        })
    }

    /// Uploads a staging file as the object at `path`.
    fn upload(&self, path: &str, file: &mut File) -> Result<u64, Errno> {
        let key = self.key(path);
        let len = file.seek(SeekFrom::End(0)).map_err(|_| Errno::EIO)?;
        file.seek(SeekFrom::Start(0)).map_err(|_| Errno::EIO)?;
        self.runtime.block_on(async {
            if len <= MULTIPART_THRESHOLD {
                let mut buf = Vec::with_capacity(len as usize);
                file.read_to_end(&mut buf).map_err(|_| Errno::EIO)?;
                self.store
                    .put(&key, PutPayload::from(buf))
                    .await
                    .map_err(|e| errno_of(&e))?;
            } else {
                let upload = self
                    .store
                    .put_multipart(&key)
                    .await
                    .map_err(|e| errno_of(&e))?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
                let mut chunk = vec![0u8; 8 << 20];
                loop {
                    let n = file.read(&mut chunk).map_err(|_| Errno::EIO)?;
                    if n == 0 {
                        break;
                    }
                    // Bounded memory: wait while more than a few parts are in flight.
                    writer
                        .wait_for_capacity(4)
                        .await
                        .map_err(|e| errno_of(&e))?;
                    writer.write(&chunk[..n]);
                }
                writer.finish().await.map_err(|e| errno_of(&e))?;
            }
            Ok(len)
        })
    }

    fn new_staging(&self) -> Result<File, Errno> {
        tempfile::tempfile_in(&self.staging_dir).map_err(|_| Errno::EIO)
    }

    /// Copies the object at `path` into a fresh staging file.
    fn stage_existing(&self, path: &str) -> Result<File, Errno> {
        let mut file = self.new_staging()?;
        let key = self.key(path);
        self.runtime.block_on(async {
            let got = self.store.get(&key).await.map_err(|e| errno_of(&e))?;
            let mut stream = got.into_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| errno_of(&e))?;
                file.write_all(&chunk).map_err(|_| Errno::EIO)?;
            }
            Ok::<(), Errno>(())
        })?;
        Ok(file)
    }

    fn flush_handle(&self, fh: u64) -> Result<(), Errno> {
        let (ino, mut file) = {
            let mut t = self.tables();
            let Some(open) = t.handles.get_mut(&fh) else {
                return Ok(());
            };
            if !open.dirty {
                return Ok(());
            }
            let Some(file) = open.staging.as_ref().and_then(|f| f.try_clone().ok()) else {
                return Ok(());
            };
            open.dirty = false;
            (open.ino, file)
        };
        let node = self.node(ino)?;
        let size = self.upload(&node.path, &mut file)?;
        if let Some(n) = self.tables().nodes.get_mut(&ino) {
            n.size = size;
            n.mtime = SystemTime::now();
        }
        Ok(())
    }

    fn list_dir(&self, path: &str) -> Result<Vec<(String, Kind)>, Errno> {
        let key = self.key(path);
        let prefix = if path.is_empty() && self.root.is_empty() {
            None
        } else {
            Some(&key)
        };
        let listing = self
            .runtime
            .block_on(self.store.list_with_delimiter(prefix))
            .map_err(|e| errno_of(&e))?;
        let mut entries = Vec::new();
        for dir in listing.common_prefixes {
            // A local directory store keeps emptied directories on disk (after a rename, say);
            // only a prefix with objects under it is a directory here.
            let empty = self
                .runtime
                .block_on(async { self.store.list(Some(&dir)).next().await.is_none() });
            if let Some(name) = dir.filename()
                && !empty
            {
                entries.push((name.to_owned(), Kind::Dir));
            }
        }
        for obj in listing.objects {
            if let Some(name) = obj.location.filename()
                && name != DIR_MARKER
            {
                entries.push((name.to_owned(), Kind::File));
            }
        }
        Ok(entries)
    }
}

impl Filesystem for ObjectFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = (|| {
            let parent = self.node(parent.0)?;
            let path = Self::child(&parent.path, name)?;
            // Files being written are known locally before they reach the store. (Each lock is
            // taken in its own statement: a guard living through an `if let` chain would be
            // held while `node` locks again.)
            let known = self.tables().by_path.get(&path).copied();
            if let Some(ino) = known {
                let open = self.tables().handles.values().any(|h| h.ino == ino);
                if open {
                    let node = self.node(ino)?;
                    return Ok(self.attr(ino, &node));
                }
            }
            let node = self.stat_path(&path)?;
            Ok(self.remember(node).1)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino.0) {
            Ok(node) => reply.attr(&TTL, &self.attr(ino.0, &node)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = (|| {
            let node = self.node(ino.0)?;
            if let Some(size) = size {
                if node.kind == Kind::Dir {
                    return Err(Errno::EISDIR);
                }
                let handle_file = fh.and_then(|fh| {
                    let mut t = self.tables();
                    let open = t.handles.get_mut(&fh.0)?;
                    open.dirty = true;
                    open.staging.as_ref().and_then(|f| f.try_clone().ok())
                });
                match handle_file {
                    Some(file) => file.set_len(size).map_err(|_| Errno::EIO)?,
                    None => {
                        let mut file = if node.size == 0 {
                            self.new_staging()?
                        } else {
                            self.stage_existing(&node.path)?
                        };
                        file.set_len(size).map_err(|_| Errno::EIO)?;
                        self.upload(&node.path, &mut file)?;
                    }
                }
                if let Some(n) = self.tables().nodes.get_mut(&ino.0) {
                    n.size = size;
                    n.mtime = SystemTime::now();
                }
            }
            // Ownership and mode come from the access point; chmod/chown are accepted and
            // leave them unchanged.
            let node = self.node(ino.0)?;
            Ok(self.attr(ino.0, &node))
        })();
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            let parent = self.node(parent.0)?;
            let path = Self::child(&parent.path, name)?;
            if self.stat_path(&path).is_ok() {
                return Err(Errno::EEXIST);
            }
            let marker = self.key(&format!("{path}/{DIR_MARKER}"));
            self.runtime
                .block_on(self.store.put(&marker, PutPayload::default()))
                .map_err(|e| errno_of(&e))?;
            Ok(self
                .remember(Node {
                    path,
                    kind: Kind::Dir,
                    size: 0,
                    mtime: SystemTime::now(),
                })
                .1)
        })();
        match result {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            let parent = self.node(parent.0)?;
            let path = Self::child(&parent.path, name)?;
            let node = self.stat_path(&path)?;
            if node.kind == Kind::Dir {
                return Err(Errno::EISDIR);
            }
            self.runtime
                .block_on(self.store.delete(&self.key(&path)))
                .map_err(|e| errno_of(&e))?;
            self.forget_path(&path);
            Ok(())
        })();
        answer(reply, result);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            let parent = self.node(parent.0)?;
            let path = Self::child(&parent.path, name)?;
            let node = self.stat_path(&path)?;
            if node.kind != Kind::Dir {
                return Err(Errno::ENOTDIR);
            }
            if !self.list_dir(&path)?.is_empty() {
                return Err(Errno::ENOTEMPTY);
            }
            match self.runtime.block_on(
                self.store
                    .delete(&self.key(&format!("{path}/{DIR_MARKER}"))),
            ) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(errno_of(&e)),
            }
            self.forget_path(&path);
            Ok(())
        })();
        answer(reply, result);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            let from = Self::child(&self.node(parent.0)?.path, name)?;
            let to = Self::child(&self.node(newparent.0)?.path, newname)?;
            let node = self.stat_path(&from)?;
            let moves: Vec<(ObjectPath, ObjectPath)> = match node.kind {
                Kind::File => vec![(self.key(&from), self.key(&to))],
                Kind::Dir => {
                    if let Ok(existing) = self.stat_path(&to)
                        && existing.kind == Kind::Dir
                        && !self.list_dir(&to)?.is_empty()
                    {
                        return Err(Errno::ENOTEMPTY);
                    }
                    let base = self.key(&from);
                    let objects: Vec<_> = self
                        .runtime
                        .block_on(self.store.list(Some(&base)).collect::<Vec<_>>());
                    let mut moves = Vec::new();
                    for obj in objects {
                        let obj = obj.map_err(|e| errno_of(&e))?;
                        let rest: Vec<_> = obj
                            .location
                            .prefix_match(&base)
                            .map(|p| p.collect())
                            .unwrap_or_default();
                        let mut target = self.key(&to);
                        for part in rest {
                            target = target.join(part);
                        }
                        moves.push((obj.location, target));
                    }
                    moves
                }
            };
            self.runtime.block_on(async {
                for (src, dst) in &moves {
                    self.store
                        .rename(src, dst)
                        .await
                        .map_err(|e| errno_of(&e))?;
                }
                Ok::<(), Errno>(())
            })?;
            // Paths below the old name are stale now.
            let mut t = self.tables();
            let stale: Vec<String> = t
                .by_path
                .keys()
                .filter(|p| {
                    **p == from
                        || p.starts_with(&format!("{from}/"))
                        || **p == to
                        || p.starts_with(&format!("{to}/"))
                })
                .cloned()
                .collect();
            // Take every affected entry out first, then put the moved ones back: an entry
            // that the move replaced must not remove the moved one's new name.
            let taken: Vec<(String, u64)> = stale
                .into_iter()
                .filter_map(|p| t.by_path.remove(&p).map(|ino| (p, ino)))
                .collect();
            for (p, ino) in taken {
                let moved = if p == from {
                    Some(to.clone())
                } else {
                    p.strip_prefix(&format!("{from}/"))
                        .map(|rest| format!("{to}/{rest}"))
                };
                match moved {
                    // Moved: same inode, new path.
                    Some(new_path) => {
                        if let Some(n) = t.nodes.get_mut(&ino) {
                            n.path = new_path.clone();
                        }
                        t.by_path.insert(new_path, ino);
                    }
                    // Replaced by the move: forget it.
                    None => {
                        t.nodes.remove(&ino);
                    }
                }
            }
            Ok(())
        })();
        answer(reply, result);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = (|| {
            let node = self.node(ino.0)?;
            if node.kind == Kind::Dir {
                return Err(Errno::EISDIR);
            }
            let access = flags.0 & libc_accmode();
            let writing = access != 0;
            let truncate = flags.0 & O_TRUNC != 0;
            let staging = if writing {
                Some(if truncate || node.size == 0 {
                    self.new_staging()?
                } else {
                    self.stage_existing(&node.path)?
                })
            } else {
                None
            };
            let mut t = self.tables();
            let fh = t.next_fh;
            t.next_fh += 1;
            t.handles.insert(
                fh,
                Open {
                    ino: ino.0,
                    staging,
                    dirty: truncate,
                },
            );
            Ok(fh)
        })();
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let result = (|| {
            let parent = self.node(parent.0)?;
            let path = Self::child(&parent.path, name)?;
            let staging = self.new_staging()?;
            let (ino, attr) = self.remember(Node {
                path,
                kind: Kind::File,
                size: 0,
                mtime: SystemTime::now(),
            });
            let mut t = self.tables();
            let fh = t.next_fh;
            t.next_fh += 1;
            // Dirty from the start: closing a new empty file must create the object.
            t.handles.insert(
                fh,
                Open {
                    ino,
                    staging: Some(staging),
                    dirty: true,
                },
            );
            Ok((attr, fh))
        })();
        match result {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
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
        let result = (|| {
            // A writer reads its own staged bytes.
            let staged = self
                .tables()
                .handles
                .get(&fh.0)
                .and_then(|h| h.staging.as_ref().and_then(|f| f.try_clone().ok()));
            if let Some(file) = staged {
                let mut buf = vec![0u8; size as usize];
                let n = file.read_at(&mut buf, offset).map_err(|_| Errno::EIO)?;
                buf.truncate(n);
                return Ok(buf);
            }
            let node = self.node(ino.0)?;
            if offset >= node.size {
                return Ok(Vec::new());
            }
            let end = (offset + u64::from(size)).min(node.size);
            let bytes = self
                .runtime
                .block_on(self.store.get_range(&self.key(&node.path), offset..end))
                .map_err(|e| errno_of(&e))?;
            Ok(bytes.to_vec())
        })();
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = (|| {
            let file = {
                let mut t = self.tables();
                let open = t.handles.get_mut(&fh.0).ok_or(Errno::EBADF)?;
                open.dirty = true;
                open.staging
                    .as_ref()
                    .and_then(|f| f.try_clone().ok())
                    .ok_or(Errno::EBADF)?
            };
            file.write_all_at(data, offset).map_err(|_| Errno::EIO)?;
            let end = offset + data.len() as u64;
            if let Some(n) = self.tables().nodes.get_mut(&ino.0)
                && end > n.size
            {
                n.size = end;
            }
            Ok(data.len() as u32)
        })();
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        answer(reply, self.flush_handle(fh.0));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        answer(reply, self.flush_handle(fh.0));
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
        let result = self.flush_handle(fh.0);
        self.tables().handles.remove(&fh.0);
        answer(reply, result);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = (|| {
            let node = self.node(ino.0)?;
            if node.kind != Kind::Dir {
                return Err(Errno::ENOTDIR);
            }
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".to_owned()),
                (1, FileType::Directory, "..".to_owned()),
            ];
            for (name, kind) in self.list_dir(&node.path)? {
                let path = Self::child(&node.path, OsStr::new(&name))?;
                let known = self.tables().by_path.get(&path).copied();
                let child_ino = match known {
                    // Keep what lookup learned (sizes); a listing carries no attributes.
                    Some(ino) => ino,
                    None => {
                        self.remember(Node {
                            path,
                            kind,
                            size: 0,
                            mtime: SystemTime::now(),
                        })
                        .0
                    }
                };
                let ft = if kind == Kind::Dir {
                    FileType::Directory
                } else {
                    FileType::RegularFile
                };
                entries.push((child_ino, ft, name));
            }
            Ok(entries)
        })();
        match result {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize)
                {
                    if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // An elastic file system: report 8 EiB, as NFS clients of S3 Files see.
        let blocks = 1u64 << 51;
        reply.statfs(blocks, blocks, blocks, 1 << 40, 1 << 40, 4096, 255, 4096);
    }
}

/// Answers an operation that returns no data.
fn answer(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

const O_TRUNC: i32 = 0o1000;

fn libc_accmode() -> i32 {
    0o3
}
