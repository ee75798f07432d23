//! The FUSE file system (see the module docs of `crate::fuse`).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use tracing::warn;

use super::objects::{Objects, Posix, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};
use super::prefetch::{Budget, Prefetch};
use super::staging::{MemoryBudget, Staging, lock};
use super::stream::{Finished, Streaming};

/// An open file's staged bytes, shared by the requests on its handle.
type Shared = Arc<Mutex<Staging>>;

/// Marker object that keeps an empty directory and carries the directory's attributes.
pub const DIR_MARKER: &str = ".s3files-dir";
/// Uploads larger than this use multipart.
const MULTIPART_THRESHOLD: u64 = 16 << 20;
const PART_SIZE: usize = 8 << 20;
/// Memory one mount may hold in staged small files (see `staging`).
const STAGING_MEMORY: u64 = 64 << 20;
const TTL: Duration = Duration::from_secs(1);
/// Modes of files and directories whose objects carry no POSIX attributes.
const DEFAULT_FILE_MODE: u32 = 0o644;
const DEFAULT_DIR_MODE: u32 = 0o755;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

impl Kind {
    fn of(posix: &Posix) -> Kind {
        match posix.file_type() {
            S_IFDIR => Kind::Dir,
            S_IFLNK => Kind::Symlink,
            _ => Kind::File,
        }
    }

    fn file_type(self) -> FileType {
        match self {
            Kind::Dir => FileType::Directory,
            Kind::File => FileType::RegularFile,
            Kind::Symlink => FileType::Symlink,
        }
    }
}

#[derive(Clone, Debug)]
struct Node {
    /// Relative to the root: "" for the root, "a/b.txt".
    path: String,
    size: u64,
    mtime: SystemTime,
    posix: Posix,
    /// When this was read from the store (or written here).
    seen: Instant,
}

impl Node {
    fn kind(&self) -> Kind {
        Kind::of(&self.posix)
    }
}

struct Open {
    ino: u64,
    /// Local staging copy for writers; `None` for read-only handles.
    staging: Option<Shared>,
    dirty: bool,
    /// Read-ahead state of a read-only handle.
    prefetch: Option<Arc<Mutex<Prefetch>>>,
    /// A small file's whole content, read by the lookup before this open.
    body: Option<bytes::Bytes>,
    /// Upload under way while a new file is written front to back.
    stream: Option<Arc<Mutex<Streaming>>>,
    /// Held while this handle's bytes are uploaded. Flushes of one handle come concurrently:
    /// every close of a descriptor sends one, also the close-on-exec in a child another thread
    /// forked. A flush that found the handle clean while another was still uploading returned at
    /// once, and close returned before the data was in the bucket.
    uploading: Arc<Mutex<()>>,
}

/// How long a directory's listing answers lookups: names it lacks are absent, and its sizes
/// pick how a file is fetched. NFS clients of S3 Files cache directory contents similarly.
const DIR_TTL: Duration = Duration::from_secs(5);
/// Larger directories are not kept (their listings still answer `readdir`): a lookup stops
/// listing past this many names and asks for its name alone.
const DIR_CACHE_MAX: usize = 5000;
/// Directories remembered for the "second lookup lists" rule before old ones are dropped.
const LOOKED_UP_MAX: usize = 1024;
/// Sub-prefixes of one listing page checked for live objects at once.
const VERIFY_PARALLEL: usize = 16;
/// Files up to this size are read whole by the lookup that finds them through a listing, as
/// S3 Files imports the data of files under 128 KiB on first directory access.
const SMALL_FILE: u64 = 128 << 10;
/// Bytes of such files kept per mount between lookup and open.
const SMALL_BODIES_MAX: u64 = 32 << 20;

/// A name in a directory listing, its kind and size.
type Entry = (String, Kind, u64);

/// What a directory listing says about a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Listed {
    Absent,
    Dir,
    File(u64),
    /// No usable listing.
    Unknown,
}

/// A directory's names as last listed, kept current with this mount's own changes.
struct DirEntries {
    /// `None`: too large to keep.
    names: Option<HashMap<String, (Kind, u64)>>,
    until: Instant,
}

impl DirEntries {
    fn from_listing(entries: &[Entry]) -> DirEntries {
        let names = (entries.len() <= DIR_CACHE_MAX).then(|| {
            entries
                .iter()
                .map(|(n, k, size)| (n.clone(), (*k, *size)))
                .collect()
        });
        DirEntries {
            names,
            until: Instant::now() + DIR_TTL,
        }
    }

    fn too_large() -> DirEntries {
        DirEntries {
            names: None,
            until: Instant::now() + DIR_TTL,
        }
    }

    fn empty() -> DirEntries {
        DirEntries {
            names: Some(HashMap::new()),
            until: Instant::now() + DIR_TTL,
        }
    }

    fn lookup(&self, name: &str) -> Listed {
        match &self.names {
            None => Listed::Unknown,
            Some(names) => match names.get(name) {
                None => Listed::Absent,
                Some((Kind::Dir, _)) => Listed::Dir,
                Some((_, size)) => Listed::File(*size),
            },
        }
    }
}

/// A directory's entries as `readdir` returns them: inode, type, name.
type Listing = Arc<Vec<(u64, FileType, String)>>;

/// What a `setattr` asks to change.
struct Changes {
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    mtime: Option<TimeOrNow>,
    fh: Option<FileHandle>,
}

#[derive(Default)]
struct Tables {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<String, u64>,
    next_ino: u64,
    handles: HashMap<u64, Open>,
    /// Listings of open directories: a large directory is read in many `readdir` calls.
    dirs: HashMap<u64, Listing>,
    /// Listings by directory path, for lookups.
    dir_cache: HashMap<String, DirEntries>,
    /// Directories with a lookup not answered by a listing, and when (see `listed`).
    looked_up: HashMap<String, Instant>,
    /// Small files read whole by a lookup, waiting for their `open`.
    bodies: HashMap<u64, (bytes::Bytes, Instant)>,
    body_bytes: u64,
    next_fh: u64,
}

/// A user as the file system checks permissions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub groups: Groups,
}

/// Supplementary groups of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Groups {
    /// Known up front (an access point's POSIX user).
    Listed(Vec<u32>),
    /// The calling process's, read from /proc the first time a check needs them: most checks
    /// are settled by the owner or the primary group, and a lookup or create should not cost
    /// a read of /proc.
    OfProcess {
        pid: u32,
        read: std::sync::OnceLock<Vec<u32>>,
    },
}

impl Groups {
    pub fn of_process(pid: u32) -> Groups {
        Groups::OfProcess {
            pid,
            read: std::sync::OnceLock::new(),
        }
    }

    fn contains(&self, gid: u32) -> bool {
        match self {
            Groups::Listed(groups) => groups.contains(&gid),
            Groups::OfProcess { pid, read } => {
                read.get_or_init(|| caller_groups(*pid)).contains(&gid)
            }
        }
    }
}

/// Whose identity operations carry.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The access point's POSIX user: every operation acts as this user, whoever the caller
    /// is, as S3 Files enforces. `None`: the caller's own ids count.
    pub user: Option<User>,
    /// Owner shown for objects that carry no POSIX attributes.
    pub default_uid: u32,
    pub default_gid: u32,
}

/// The file system.
pub struct ObjectFs {
    objects: Objects,
    /// Object key prefix of the root, without a trailing `/` ("" for the bucket root).
    root: String,
    identity: Identity,
    runtime: tokio::runtime::Handle,
    staging_dir: PathBuf,
    budget: Budget,
    /// Memory that staged small files may hold.
    memory: MemoryBudget,
    tables: Mutex<Tables>,
}

fn errno_of(e: &object_store::Error) -> Errno {
    match e {
        object_store::Error::NotFound { .. } => Errno::ENOENT,
        object_store::Error::AlreadyExists { .. } => Errno::EEXIST,
        _ => Errno::EIO,
    }
}

/// Whether `who` may access a file with attributes `p` for `want` (bits 4 read, 2 write,
/// 1 execute/search), by the owner, group and other bits, as the kernel checks.
fn permits(who: &User, p: &Posix, want: u32) -> bool {
    if who.uid == 0 {
        return want & 1 == 0 || p.file_type() == S_IFDIR || p.mode & 0o111 != 0;
    }
    let bits = if who.uid == p.uid {
        p.mode >> 6
    } else if who.gid == p.gid || who.groups.contains(p.gid) {
        p.mode >> 3
    } else {
        p.mode
    } & 7;
    bits & want == want
}

const R: u32 = 4;
const W: u32 = 2;
const X: u32 = 1;

impl ObjectFs {
    pub fn new(
        objects: Objects,
        root: &str,
        identity: Identity,
        runtime: tokio::runtime::Handle,
        staging_dir: PathBuf,
        prefetch_budget_bytes: u64,
    ) -> Self {
        let mut tables = Tables {
            next_ino: 2,
            next_fh: 1,
            ..Default::default()
        };
        let root_posix = Posix {
            uid: identity.default_uid,
            gid: identity.default_gid,
            mode: S_IFDIR | DEFAULT_DIR_MODE,
            mtime: None,
        };
        tables.nodes.insert(
            1,
            Node {
                path: String::new(),
                size: 0,
                mtime: SystemTime::now(),
                posix: root_posix,
                seen: Instant::now(),
            },
        );
        tables.by_path.insert(String::new(), 1);
        ObjectFs {
            objects,
            root: root.trim_matches('/').to_owned(),
            identity,
            runtime,
            staging_dir,
            budget: Budget::new(prefetch_budget_bytes),
            memory: MemoryBudget::new(STAGING_MEMORY),
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

    fn marker_key(&self, path: &str) -> ObjectPath {
        self.key(path).join(DIR_MARKER)
    }

    fn child(parent: &str, name: &OsStr) -> Result<String, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if name.is_empty() || name.contains('/') || name == DIR_MARKER {
            return Err(Errno::EINVAL);
        }
        Ok(if parent.is_empty() {
            name.to_owned()
        } else {
            format!("{parent}/{name}")
        })
    }

    /// Who an operation acts as.
    fn who(&self, req: &Request) -> User {
        match &self.identity.user {
            Some(user) => user.clone(),
            None => User {
                uid: req.uid(),
                gid: req.gid(),
                groups: Groups::of_process(req.pid()),
            },
        }
    }

    /// Attributes for something new `who` creates in `parent` with `mode` (type + bits).
    fn new_posix(&self, who: &User, parent: &Node, mode: u32) -> Posix {
        // A set-group-ID directory hands its group down, as on any POSIX file system.
        let gid = if parent.posix.mode & 0o2000 != 0 {
            parent.posix.gid
        } else {
            who.gid
        };
        Posix {
            uid: who.uid,
            gid,
            mode,
            mtime: None,
        }
    }

    fn default_posix(&self, type_bits: u32) -> Posix {
        Posix {
            uid: self.identity.default_uid,
            gid: self.identity.default_gid,
            mode: type_bits
                | if type_bits == S_IFDIR {
                    DEFAULT_DIR_MODE
                } else {
                    DEFAULT_FILE_MODE
                },
            mtime: None,
        }
    }

    fn check(&self, who: &User, node: &Node, want: u32) -> Result<(), Errno> {
        if permits(who, &node.posix, want) {
            Ok(())
        } else {
            tracing::debug!(path = %node.path, ?who, posix = ?node.posix, want, "permission denied");
            Err(Errno::EACCES)
        }
    }

    fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let nlink = if node.kind() == Kind::Dir { 2 } else { 1 };
        let mtime = node.posix.mtime.unwrap_or(node.mtime);
        FileAttr {
            ino: INodeNo(ino),
            size: node.size,
            blocks: node.size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind: node.kind().file_type(),
            perm: (node.posix.perm()) as u16,
            nlink,
            uid: node.posix.uid,
            gid: node.posix.gid,
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

    /// Remembers what this mount just created at `path`.
    fn created(&self, path: String, size: u64, posix: Posix) -> FileAttr {
        self.remember(Node {
            path,
            size,
            mtime: SystemTime::now(),
            posix,
            seen: Instant::now(),
        })
        .1
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

    /// The node, read again from the store if what is known is older than the attribute TTL
    /// (another mount may have changed it). A file being written here is newest locally.
    fn fresh_node(&self, ino: u64) -> Result<Node, Errno> {
        let node = self.node(ino)?;
        if node.seen.elapsed() < TTL || self.open_for_write(ino) {
            return Ok(node);
        }
        let fresh = self.stat_path(&node.path)?;
        self.update(ino, |n| *n = fresh.clone());
        Ok(fresh)
    }

    fn update(&self, ino: u64, f: impl FnOnce(&mut Node)) {
        if let Some(n) = self.tables().nodes.get_mut(&ino) {
            f(n);
        }
    }

    fn file_node(&self, path: &str, meta: &object_store::ObjectMeta, posix: Option<Posix>) -> Node {
        let mut posix = posix.unwrap_or_else(|| self.default_posix(S_IFREG));
        if posix.file_type() == S_IFDIR || posix.file_type() == 0 {
            // An object is never a directory here.
            posix.mode = S_IFREG | posix.perm();
        }
        Node {
            path: path.to_owned(),
            size: meta.size,
            mtime: meta.last_modified.into(),
            posix,
            seen: Instant::now(),
        }
    }

    /// Finds what is at `path` in the store: an object is a file (or a symbolic link, by its
    /// mode); a directory marker or any object under the prefix makes a directory, whose marker
    /// (if any) carries its attributes. The object and the marker are asked for at once; the
    /// prefix is listed (one key) only when neither exists.
    fn stat_path(&self, path: &str) -> Result<Node, Errno> {
        let key = self.key(path);
        let marker = self.marker_key(path);
        let is_root = path.is_empty() && self.root.is_empty();
        self.runtime.block_on(async {
            let (object, marker) = tokio::join!(
                async {
                    if is_root {
                        Err(object_store::Error::NotFound {
                            path: String::new(),
                            source: "the bucket root".into(),
                        })
                    } else {
                        self.objects.head(&key).await
                    }
                },
                self.objects.head(&marker)
            );
            let dir = |mtime: SystemTime, posix: Option<Posix>| {
                let mut posix = posix.unwrap_or_else(|| self.default_posix(S_IFDIR));
                posix.mode = S_IFDIR | posix.perm();
                Node {
                    path: path.to_owned(),
                    size: 0,
                    mtime,
                    posix,
                    seen: Instant::now(),
                }
            };
            match object {
                Ok((meta, posix)) => return Ok(self.file_node(path, &meta, posix)),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    warn!(%key, error = %e, "head failed");
                    return Err(errno_of(&e));
                }
            }
            match marker {
                Ok((meta, posix)) => return Ok(dir(meta.last_modified.into(), posix)),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(errno_of(&e)),
            }
            if path.is_empty()
                || self
                    .objects
                    .has_children(&key)
                    .await
                    .map_err(|e| errno_of(&e))?
            {
                Ok(dir(SystemTime::now(), None))
            } else {
                Err(Errno::ENOENT)
            }
        })
    }

    /// Like [`ObjectFs::stat_path`], with what the parent's listing said: absent names are
    /// answered without a request, and a small file is read whole by the same request that
    /// learns its attributes (its bytes are kept briefly for the `open` that usually follows).
    fn stat_child(
        &self,
        parent: &str,
        name: &str,
        path: &str,
    ) -> Result<(Node, Option<u64>), Errno> {
        match self.listed(parent, name) {
            Listed::Absent => Err(Errno::ENOENT),
            Listed::File(size) if size <= SMALL_FILE => {
                let key = self.key(path);
                match self.runtime.block_on(self.objects.get_small(&key)) {
                    Ok((meta, posix, body)) => {
                        let node = self.file_node(path, &meta, posix);
                        let (ino, _) = self.remember(node.clone());
                        self.keep_body(ino, body);
                        Ok((node, Some(ino)))
                    }
                    // Gone since the listing, or a directory of the same name: ask in full.
                    Err(object_store::Error::NotFound { .. }) => Ok((self.stat_path(path)?, None)),
                    Err(e) => Err(errno_of(&e)),
                }
            }
            _ => Ok((self.stat_path(path)?, None)),
        }
    }

    /// What a fresh listing of `parent` says about `name`, listing it first when there is
    /// none.
    fn listed(&self, parent: &str, name: &str) -> Listed {
        let now = Instant::now();
        let valid = |d: &DirEntries| now < d.until;
        let cached = {
            let t = self.tables();
            t.dir_cache
                .get(parent)
                .filter(|d| valid(d))
                .map(|d| d.lookup(name))
        };
        if let Some(answer) = cached {
            return answer;
        }
        // The first lookup in a directory asks for its one name (a path walked through it, a
        // single file opened); a second one soon after (`ls -l`, a program opening many files)
        // lists the directory, and its later lookups are answered from the listing.
        {
            let mut t = self.tables();
            let recent = t
                .looked_up
                .get(parent)
                .is_some_and(|at| now.duration_since(*at) < DIR_TTL);
            if !recent {
                if t.looked_up.len() >= LOOKED_UP_MAX {
                    t.looked_up
                        .retain(|_, at| now.duration_since(*at) < DIR_TTL);
                }
                t.looked_up.insert(parent.to_owned(), now);
                return Listed::Unknown;
            }
        }
        match self.list_entries(parent, false, Some(DIR_CACHE_MAX)) {
            Ok(entries) => {
                let d = match entries {
                    Some(entries) => DirEntries::from_listing(&entries),
                    None => DirEntries::too_large(),
                };
                let answer = d.lookup(name);
                self.tables().dir_cache.insert(parent.to_owned(), d);
                answer
            }
            Err(_) => Listed::Unknown,
        }
    }

    /// Keeps what this mount changed in the cached listing of `path`'s parent.
    fn note(&self, path: &str, entry: Option<(Kind, u64)>) {
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", path),
        };
        let mut t = self.tables();
        if let Some(d) = t.dir_cache.get_mut(parent)
            && let Some(names) = d.names.as_mut()
        {
            match entry {
                Some(e) => {
                    names.insert(name.to_owned(), e);
                }
                None => {
                    names.remove(name);
                }
            }
        }
    }

    /// Forgets cached listings at and under `path`.
    fn forget_listings(&self, path: &str) {
        let below = format!("{path}/");
        self.tables()
            .dir_cache
            .retain(|p, _| p != path && !p.starts_with(&below));
    }

    fn keep_body(&self, ino: u64, body: bytes::Bytes) {
        let mut t = self.tables();
        let now = Instant::now();
        let expired: Vec<u64> = t
            .bodies
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= TTL)
            .map(|(ino, _)| *ino)
            .collect();
        for old in expired {
            if let Some((b, _)) = t.bodies.remove(&old) {
                t.body_bytes -= b.len() as u64;
            }
        }
        if t.body_bytes + body.len() as u64 <= SMALL_BODIES_MAX {
            t.body_bytes += body.len() as u64;
            if let Some((old, _)) = t.bodies.insert(ino, (body, now)) {
                t.body_bytes -= old.len() as u64;
            }
        }
    }

    /// The bytes a lookup just read for `ino`, if still fresh.
    fn take_body(&self, ino: u64) -> Option<bytes::Bytes> {
        let mut t = self.tables();
        let (body, at) = t.bodies.remove(&ino)?;
        t.body_bytes -= body.len() as u64;
        (at.elapsed() < TTL).then_some(body)
    }

    /// Uploads the staged bytes as the object at `path` with `posix`.
    fn upload(&self, path: &str, staging: &Mutex<Staging>, posix: Posix) -> Result<u64, Errno> {
        let key = self.key(path);
        let (len, in_memory) = {
            let staged = lock(staging);
            (staged.size().map_err(|_| Errno::EIO)?, staged.bytes())
        };
        self.runtime.block_on(async {
            if len <= MULTIPART_THRESHOLD {
                let body = match in_memory {
                    Some(bytes) => bytes,
                    None => {
                        let mut buf = vec![0u8; len as usize];
                        lock(staging)
                            .read_exact_at(&mut buf, 0)
                            .map_err(|_| Errno::EIO)?;
                        buf.into()
                    }
                };
                self.objects
                    .put(&key, PutPayload::from(body), posix)
                    .await
                    .map_err(|e| errno_of(&e))?;
            } else {
                let upload = self
                    .objects
                    .put_multipart(&key, posix)
                    .await
                    .map_err(|e| errno_of(&e))?;
                let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
                let mut at = 0;
                while at < len {
                    let mut chunk = vec![0u8; (len - at).min(PART_SIZE as u64) as usize];
                    lock(staging)
                        .read_exact_at(&mut chunk, at)
                        .map_err(|_| Errno::EIO)?;
                    // Bounded memory: wait while more than a few parts are in flight.
                    writer
                        .wait_for_capacity(4)
                        .await
                        .map_err(|e| errno_of(&e))?;
                    at += chunk.len() as u64;
                    writer.put(chunk.into());
                }
                writer.finish().await.map_err(|e| errno_of(&e))?;
                self.objects.finished(&key, posix);
            }
            Ok(len)
        })
    }

    fn new_staging(&self) -> Shared {
        Arc::new(Mutex::new(Staging::new(&self.memory)))
    }

    /// Copies the object at `path` into fresh staging.
    fn stage_existing(&self, path: &str) -> Result<Shared, Errno> {
        let staging = self.new_staging();
        let key = self.key(path);
        self.runtime.block_on(async {
            let got = self
                .objects
                .store()
                .get(&key)
                .await
                .map_err(|e| errno_of(&e))?;
            let mut stream = got.into_stream();
            let mut at = 0;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| errno_of(&e))?;
                lock(&staging)
                    .write_at(&chunk, at, &self.staging_dir)
                    .map_err(|_| Errno::EIO)?;
                at += chunk.len() as u64;
            }
            Ok::<(), Errno>(())
        })?;
        Ok(staging)
    }

    fn flush_handle(&self, fh: u64) -> Result<(), Errno> {
        let Some(uploading) = self.tables().handles.get(&fh).map(|h| h.uploading.clone()) else {
            return Ok(());
        };
        // Wait for any upload of this handle under way: when this flush returns, what was
        // written before it is in the bucket.
        let _uploading = uploading.lock().unwrap_or_else(|p| p.into_inner());
        let (ino, file, stream) = {
            let mut t = self.tables();
            let Some(open) = t.handles.get_mut(&fh) else {
                return Ok(());
            };
            if !open.dirty {
                return Ok(());
            }
            let Some(file) = open.staging.clone() else {
                return Ok(());
            };
            open.dirty = false;
            (open.ino, file, open.stream.clone())
        };
        let result = self.upload_handle(ino, file, stream);
        if result.is_err() {
            // Nothing may be lost to a failed upload: the next flush, fsync or the release
            // tries again (streaming was given up, so the file goes up whole).
            if let Some(open) = self.tables().handles.get_mut(&fh) {
                open.dirty = true;
            }
        }
        result
    }

    /// Uploads the staged bytes of an open file (see [`Self::flush_handle`]).
    fn upload_handle(
        &self,
        ino: u64,
        staging: Shared,
        stream: Option<Arc<Mutex<Streaming>>>,
    ) -> Result<(), Errno> {
        let Ok(node) = self.node(ino) else {
            // Unlinked while open: as on a local disk, its bytes go with it.
            tracing::debug!(ino, "not uploading a file unlinked while open");
            return Ok(());
        };
        let streamed = match stream {
            Some(stream) => {
                let mut stream = stream.lock().unwrap_or_else(|p| p.into_inner());
                let key = self.key(&node.path);
                self.runtime
                    .block_on(stream.finish(&self.objects, &staging, &key, node.posix))
                    .map_err(|e| errno_of(&e))?
            }
            None => Finished::UploadWhole,
        };
        let size = match streamed {
            Finished::Uploaded(size) => size,
            Finished::UploadWhole => self.upload(&node.path, &staging, node.posix)?,
        };
        self.note(&node.path, Some((Kind::File, size)));
        self.update(ino, |n| {
            n.size = size;
            n.mtime = SystemTime::now();
        });
        Ok(())
    }

    /// Whether a handle open for writing holds `ino`'s newest bytes.
    fn open_for_write(&self, ino: u64) -> bool {
        self.tables()
            .handles
            .values()
            .any(|h| h.ino == ino && h.staging.is_some())
    }

    /// Stores new attributes of `node` (at `ino`).
    fn store_posix(&self, ino: u64, node: &Node, posix: Posix) -> Result<(), Errno> {
        match node.kind() {
            Kind::Dir => {
                let key = self.marker_key(&node.path);
                self.runtime
                    .block_on(self.objects.put(&key, PutPayload::default(), posix))
                    .map_err(|e| errno_of(&e))?;
            }
            // An open writer uploads them with the data on close.
            Kind::File if self.open_for_write(ino) => {
                let mut t = self.tables();
                for h in t.handles.values_mut() {
                    if h.ino == ino && h.staging.is_some() {
                        h.dirty = true;
                    }
                }
            }
            Kind::File | Kind::Symlink => {
                let key = self.key(&node.path);
                if !self.objects.set_in_place(&key, posix) {
                    // S3 keeps user metadata immutable: write the object again, as S3 Files
                    // does (a chmod is a new object version).
                    let staging = self.stage_existing(&node.path)?;
                    self.upload(&node.path, &staging, posix)?;
                }
            }
        }
        self.update(ino, |n| n.posix = posix);
        Ok(())
    }

    /// The entries of the directory at `path` (name, kind, size), as `readdir` shows them.
    fn list_dir(&self, path: &str) -> Result<Vec<Entry>, Errno> {
        Ok(self.list_entries(path, true, None)?.unwrap_or_default())
    }

    /// Whether the directory at `path` has no entries (its marker aside). Stops at the first
    /// entry found, however large the directory.
    fn is_empty_dir(&self, path: &str) -> Result<bool, Errno> {
        Ok(self.list_entries(path, true, Some(0))?.is_some())
    }

    /// Lists the directory at `path` page by page. With `verify`, a sub-prefix counts as a
    /// directory only while live objects are under it (checked concurrently): a local
    /// directory store keeps emptied directories on disk (after a rename, say), and some S3
    /// servers (moto, versioned buckets) report prefixes that hold only delete markers. Lookups
    /// skip that, as they ask for the name itself. With `limit`, listing stops once the
    /// directory is known to hold more entries than that: `None`.
    fn list_entries(
        &self,
        path: &str,
        verify: bool,
        limit: Option<usize>,
    ) -> Result<Option<Vec<Entry>>, Errno> {
        let key = self.key(path);
        let prefix = if path.is_empty() && self.root.is_empty() {
            None
        } else {
            Some(&key)
        };
        let over = |n: usize| limit.is_some_and(|l| n > l);
        self.runtime.block_on(async {
            let mut entries = Vec::new();
            let mut token = None;
            loop {
                let (page, next) = self
                    .objects
                    .list_page(prefix, token)
                    .await
                    .map_err(|e| errno_of(&e))?;
                for obj in page.objects {
                    if let Some(name) = obj.location.filename()
                        && name != DIR_MARKER
                    {
                        entries.push((name.to_owned(), Kind::File, obj.size));
                    }
                }
                if over(entries.len()) {
                    return Ok(None);
                }
                let mut dirs = futures_util::stream::iter(page.common_prefixes)
                    .map(|dir| async move {
                        let live = !verify || self.objects.has_children(&dir).await?;
                        Ok::<_, object_store::Error>((dir, live))
                    })
                    .buffered(VERIFY_PARALLEL);
                while let Some(checked) = dirs.next().await {
                    let (dir, live) = checked.map_err(|e| errno_of(&e))?;
                    if let Some(name) = dir.filename()
                        && live
                    {
                        entries.push((name.to_owned(), Kind::Dir, 0));
                    }
                    if over(entries.len()) {
                        return Ok(None);
                    }
                }
                match next {
                    Some(next) => token = Some(next),
                    None => return Ok(Some(entries)),
                }
            }
        })
    }

    /// Parent node and the child's path, after checking `who` may change the parent.
    fn writable_parent(
        &self,
        who: &User,
        parent: INodeNo,
        name: &OsStr,
    ) -> Result<(Node, String), Errno> {
        let parent = self.fresh_node(parent.0)?;
        if parent.kind() != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        self.check(who, &parent, W | X)?;
        let path = Self::child(&parent.path, name)?;
        Ok((parent, path))
    }

    fn exists(&self, path: &str) -> Result<bool, Errno> {
        match self.stat_path(path) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn setattr_inner(&self, req: &Request, ino: u64, c: Changes) -> Result<FileAttr, Errno> {
        let Changes {
            mode,
            uid,
            gid,
            size,
            mtime,
            fh,
        } = c;
        let who = self.who(req);
        let node = self.node(ino)?;
        let owner = who.uid == 0 || who.uid == node.posix.uid;
        if let Some(size) = size {
            if node.kind() == Kind::Dir {
                return Err(Errno::EISDIR);
            }
            let handle_file = fh.and_then(|fh| {
                let mut t = self.tables();
                let open = t.handles.get_mut(&fh.0)?;
                let file = open.staging.clone()?;
                open.dirty = true;
                Some((file, open.stream.clone()))
            });
            match handle_file {
                Some((file, stream)) => {
                    lock(&file)
                        .set_len(size, &self.staging_dir)
                        .map_err(|_| Errno::EIO)?;
                    if let Some(stream) = stream {
                        let mut stream = stream.lock().unwrap_or_else(|p| p.into_inner());
                        self.runtime.block_on(stream.truncated(size));
                    }
                }
                None => {
                    self.check(&who, &node, W)?;
                    let file = if node.size == 0 {
                        self.new_staging()
                    } else {
                        self.stage_existing(&node.path)?
                    };
                    lock(&file)
                        .set_len(size, &self.staging_dir)
                        .map_err(|_| Errno::EIO)?;
                    let posix = Posix {
                        mtime: None,
                        ..node.posix
                    };
                    self.upload(&node.path, &file, posix)?;
                }
            }
            self.update(ino, |n| {
                n.size = size;
                n.mtime = SystemTime::now();
                n.posix.mtime = None;
            });
        }
        let mut posix = self.node(ino)?.posix;
        let before = posix;
        if let Some(mode) = mode {
            if !owner {
                return Err(Errno::EPERM);
            }
            posix.mode = (posix.mode & S_IFMT) | (mode & 0o7777);
        }
        if let Some(uid) = uid
            && uid != posix.uid
        {
            // Only root gives files away.
            if who.uid != 0 {
                return Err(Errno::EPERM);
            }
            posix.uid = uid;
        }
        if let Some(gid) = gid
            && gid != posix.gid
        {
            let member = who.gid == gid || who.groups.contains(gid);
            if who.uid != 0 && !(owner && member) {
                return Err(Errno::EPERM);
            }
            posix.gid = gid;
        }
        match mtime {
            Some(TimeOrNow::SpecificTime(t)) => {
                if !owner {
                    return Err(Errno::EPERM);
                }
                posix.mtime = Some(t);
            }
            Some(TimeOrNow::Now) => {
                if !owner && !permits(&who, &posix, W) {
                    return Err(Errno::EACCES);
                }
                posix.mtime = Some(SystemTime::now());
            }
            None => {}
        }
        if posix != before {
            let node = self.node(ino)?;
            self.store_posix(ino, &node, posix)?;
        }
        let node = self.node(ino)?;
        Ok(self.attr(ino, &node))
    }

    fn read_inner(&self, ino: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        // A writer reads its own staged bytes.
        let (staged, prefetch, body) = {
            let t = self.tables();
            let open = t.handles.get(&fh).ok_or(Errno::EBADF)?;
            (
                open.staging.clone(),
                open.prefetch.clone(),
                open.body.clone(),
            )
        };
        if let Some(body) = body {
            let start = (offset as usize).min(body.len());
            let end = (start + size as usize).min(body.len());
            return Ok(body[start..end].to_vec());
        }
        if let Some(staged) = staged {
            let mut buf = vec![0u8; size as usize];
            let n = lock(&staged)
                .read_at(&mut buf, offset)
                .map_err(|_| Errno::EIO)?;
            buf.truncate(n);
            return Ok(buf);
        }
        let node = self.node(ino)?;
        if offset >= node.size {
            return Ok(Vec::new());
        }
        let end = (offset + u64::from(size)).min(node.size);
        let key = self.key(&node.path);
        match prefetch {
            Some(prefetch) => {
                let mut prefetch = prefetch.lock().unwrap_or_else(|p| p.into_inner());
                self.runtime
                    .block_on(prefetch.read(self.objects.store(), &key, offset..end, node.size))
                    .map_err(|e| errno_of(&e))
            }
            None => self
                .runtime
                .block_on(self.objects.store().get_range(&key, offset..end))
                .map(|b| b.to_vec())
                .map_err(|e| errno_of(&e)),
        }
    }
}

/// Supplementary groups of the calling process (`/proc/<pid>/status`).
fn caller_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

impl Filesystem for ObjectFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Fewer, larger requests: 1 MiB writes and reads when the kernel allows them.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // The root's own attributes (its creation permissions) live in its marker.
        if let Ok(node) = self.stat_path("") {
            self.tables().nodes.insert(1, node);
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = (|| {
            let parent = self.fresh_node(parent.0)?;
            if parent.kind() != Kind::Dir {
                return Err(Errno::ENOTDIR);
            }
            self.check(&self.who(req), &parent, X)?;
            let path = Self::child(&parent.path, name)?;
            // Files being written are known locally before they reach the store. (Each lock is
            // taken in its own statement: a guard living through an `if let` chain would be
            // held while `node` locks again.)
            let known = self.tables().by_path.get(&path).copied();
            if let Some(ino) = known
                && self.open_for_write(ino)
            {
                let node = self.node(ino)?;
                return Ok(self.attr(ino, &node));
            }
            let name = name.to_str().ok_or(Errno::EINVAL)?;
            let (node, ino) = self.stat_child(&parent.path, name, &path)?;
            Ok(match ino {
                Some(ino) => self.attr(ino, &node),
                None => self.remember(node).1,
            })
        })();
        answer_entry(reply, result);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        // The kernel asks again once its cached attributes expire: answer from the store, so
        // changes made through other mounts (a chmod, a rewrite) show.
        match self.fresh_node(ino.0) {
            Ok(node) => reply.attr(&TTL, &self.attr(ino.0, &node)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let changes = Changes {
            mode,
            uid,
            gid,
            size,
            mtime,
            fh,
        };
        match self.setattr_inner(req, ino.0, changes) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let result = (|| {
            let node = self.node(ino.0)?;
            if node.kind() != Kind::Symlink {
                return Err(Errno::EINVAL);
            }
            self.runtime
                .block_on(self.objects.store().get(&self.key(&node.path)))
                .map_err(|e| errno_of(&e))
                .and_then(|got| self.runtime.block_on(got.bytes()).map_err(|e| errno_of(&e)))
        })();
        match result {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e),
        }
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
        let result = (|| {
            let who = self.who(req);
            let (parent, path) = self.writable_parent(&who, parent, name)?;
            if self.exists(&path)? {
                return Err(Errno::EEXIST);
            }
            let posix = self.new_posix(&who, &parent, S_IFDIR | (mode & !umask & 0o7777));
            self.runtime
                .block_on(
                    self.objects
                        .put(&self.marker_key(&path), PutPayload::default(), posix),
                )
                .map_err(|e| errno_of(&e))?;
            self.note(&path, Some((Kind::Dir, 0)));
            self.tables()
                .dir_cache
                .insert(path.clone(), DirEntries::empty());
            Ok(self.created(path, 0, posix))
        })();
        answer_entry(reply, result);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let result = (|| {
            let who = self.who(req);
            let (parent, path) = self.writable_parent(&who, parent, link_name)?;
            let target = target.as_os_str().as_bytes().to_vec();
            // S3 Files' limit on a link's target.
            if target.len() > 4080 {
                return Err(Errno::ENAMETOOLONG);
            }
            if self.exists(&path)? {
                return Err(Errno::EEXIST);
            }
            let posix = self.new_posix(&who, &parent, S_IFLNK | 0o777);
            let size = target.len() as u64;
            self.runtime
                .block_on(
                    self.objects
                        .put(&self.key(&path), PutPayload::from(target), posix),
                )
                .map_err(|e| errno_of(&e))?;
            self.note(&path, Some((Kind::Symlink, size)));
            Ok(self.created(path, size, posix))
        })();
        answer_entry(reply, result);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            let (_, path) = self.writable_parent(&self.who(req), parent, name)?;
            let node = self.stat_path(&path)?;
            if node.kind() == Kind::Dir {
                return Err(Errno::EISDIR);
            }
            self.runtime
                .block_on(self.objects.store().delete(&self.key(&path)))
                .map_err(|e| errno_of(&e))?;
            self.note(&path, None);
            self.forget_path(&path);
            Ok(())
        })();
        answer(reply, result);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let result = (|| {
            let (_, path) = self.writable_parent(&self.who(req), parent, name)?;
            let node = self.stat_path(&path)?;
            if node.kind() != Kind::Dir {
                return Err(Errno::ENOTDIR);
            }
            if !self.is_empty_dir(&path)? {
                return Err(Errno::ENOTEMPTY);
            }
            match self
                .runtime
                .block_on(self.objects.store().delete(&self.marker_key(&path)))
            {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(errno_of(&e)),
            }
            self.note(&path, None);
            self.forget_listings(&path);
            self.forget_path(&path);
            Ok(())
        })();
        answer(reply, result);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let result = (|| {
            let who = self.who(req);
            let (_, from) = self.writable_parent(&who, parent, name)?;
            let (_, to) = self.writable_parent(&who, newparent, newname)?;
            if to.starts_with(&format!("{from}/")) {
                return Err(Errno::EINVAL);
            }
            let node = self.stat_path(&from)?;
            let store = self.objects.store();
            let moves: Vec<(ObjectPath, ObjectPath)> = match node.kind() {
                Kind::File | Kind::Symlink => {
                    if let Ok(existing) = self.stat_path(&to)
                        && existing.kind() == Kind::Dir
                    {
                        return Err(Errno::EISDIR);
                    }
                    vec![(self.key(&from), self.key(&to))]
                }
                Kind::Dir => {
                    if let Ok(existing) = self.stat_path(&to) {
                        if existing.kind() != Kind::Dir {
                            return Err(Errno::ENOTDIR);
                        }
                        if !self.is_empty_dir(&to)? {
                            return Err(Errno::ENOTEMPTY);
                        }
                    }
                    let base = self.key(&from);
                    let objects: Vec<_> = self
                        .runtime
                        .block_on(store.list(Some(&base)).collect::<Vec<_>>());
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
                    store.rename(src, dst).await.map_err(|e| errno_of(&e))?;
                }
                Ok::<(), Errno>(())
            })?;
            self.note(&from, None);
            self.note(&to, Some((node.kind(), node.size)));
            self.forget_listings(&from);
            self.forget_listings(&to);
            // Paths below the old name are stale now.
            let mut t = self.tables();
            let under = |p: &str, base: &str| p == base || p.starts_with(&format!("{base}/"));
            let stale: Vec<String> = t
                .by_path
                .keys()
                .filter(|p| under(p, &from) || under(p, &to))
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

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let result = (|| {
            let node = self.fresh_node(ino.0)?;
            match node.kind() {
                Kind::Dir => return Err(Errno::EISDIR),
                Kind::Symlink => return Err(Errno::ELOOP),
                Kind::File => {}
            }
            let access = flags.0 & O_ACCMODE;
            let writing = access != O_RDONLY;
            let truncate = flags.0 & O_TRUNC != 0;
            let want = match access {
                O_RDONLY => R,
                O_WRONLY => W,
                _ => R | W,
            } | if truncate { W } else { 0 };
            self.check(&self.who(req), &node, want)?;
            let staging = if writing {
                Some(if truncate || node.size == 0 {
                    self.new_staging()
                } else {
                    self.stage_existing(&node.path)?
                })
            } else {
                None
            };
            let body = if writing { None } else { self.take_body(ino.0) };
            // A file written from empty can be uploaded while it is written.
            let stream = (writing && (truncate || node.size == 0)).then(|| {
                let posix = Posix {
                    mtime: None,
                    ..node.posix
                };
                Arc::new(Mutex::new(Streaming::new(self.key(&node.path), posix)))
            });
            let prefetch = (!writing && body.is_none() && !self.objects.is_local())
                .then(|| Arc::new(Mutex::new(Prefetch::new(&self.budget))));
            let mut t = self.tables();
            let fh = t.next_fh;
            t.next_fh += 1;
            t.handles.insert(
                fh,
                Open {
                    ino: ino.0,
                    staging,
                    dirty: truncate,
                    prefetch,
                    body,
                    stream,
                    uploading: Arc::default(),
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
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let result = (|| {
            let who = self.who(req);
            let (parent, path) = self.writable_parent(&who, parent, name)?;
            let staging = self.new_staging();
            let posix = self.new_posix(&who, &parent, S_IFREG | (mode & !umask & 0o7777));
            self.note(&path, Some((Kind::File, 0)));
            let stream = Arc::new(Mutex::new(Streaming::new(self.key(&path), posix)));
            let (ino, attr) = self.remember(Node {
                path,
                size: 0,
                mtime: SystemTime::now(),
                posix,
                seen: Instant::now(),
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
                    prefetch: None,
                    body: None,
                    stream: Some(stream),
                    uploading: Arc::default(),
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
        match self.read_inner(ino.0, fh.0, offset, size) {
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
            let (file, stream) = {
                let mut t = self.tables();
                let open = t.handles.get_mut(&fh.0).ok_or(Errno::EBADF)?;
                open.dirty = true;
                let file = open.staging.clone().ok_or(Errno::EBADF)?;
                (file, open.stream.clone())
            };
            lock(&file)
                .write_at(data, offset, &self.staging_dir)
                .map_err(|_| Errno::EIO)?;
            if let Some(stream) = stream {
                let mut stream = stream.lock().unwrap_or_else(|p| p.into_inner());
                self.runtime.block_on(stream.wrote(
                    &self.objects,
                    &file,
                    offset,
                    data.len() as u64,
                    MULTIPART_THRESHOLD,
                    PART_SIZE,
                ));
            }
            let end = offset + data.len() as u64;
            // New data: the upload's time is the modification time again.
            self.update(ino.0, |n| {
                n.size = n.size.max(end);
                n.posix.mtime = None;
            });
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
        // Taken out in a statement of its own: the guard of an `if let` scrutinee lives through
        // the block, and `self.node` below locks the tables again.
        let open = self.tables().handles.remove(&fh.0);
        if let Some(open) = open
            && let Err(e) = &result
        {
            // The last chance for this handle's bytes: nobody sees a release's error.
            let path = self.node(open.ino).map(|n| n.path).unwrap_or_default();
            tracing::error!(%path, error = ?e, "upload at release failed: the bucket does not have this file's last writes");
        }
        answer(reply, result);
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let result = (|| {
            let node = self.fresh_node(ino.0)?;
            if node.kind() != Kind::Dir {
                return Err(Errno::ENOTDIR);
            }
            self.check(&self.who(req), &node, R)?;
            let mut t = self.tables();
            let fh = t.next_fh;
            t.next_fh += 1;
            Ok(fh)
        })();
        match result {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let result = (|| {
            // The listing is taken once per open directory, on the first call; later calls
            // (a large directory takes many) continue from it.
            let cached = self.tables().dirs.get(&fh.0).cloned();
            if let Some(entries) = cached
                && offset > 0
            {
                return Ok(entries);
            }
            let node = self.node(ino.0)?;
            if node.kind() != Kind::Dir {
                return Err(Errno::ENOTDIR);
            }
            let mut entries = vec![
                (ino.0, FileType::Directory, ".".to_owned()),
                (1, FileType::Directory, "..".to_owned()),
            ];
            let listing = self.list_dir(&node.path)?;
            self.tables()
                .dir_cache
                .insert(node.path.clone(), DirEntries::from_listing(&listing));
            for (name, kind, _) in listing {
                let path = Self::child(&node.path, OsStr::new(&name))?;
                let known = self.tables().by_path.get(&path).copied();
                let (child_ino, kind) = match known {
                    // Keep what lookup learned; a listing carries no attributes.
                    Some(ino) => (ino, self.node(ino).map(|n| n.kind()).unwrap_or(kind)),
                    None => {
                        let type_bits = if kind == Kind::Dir { S_IFDIR } else { S_IFREG };
                        let ino = self
                            .remember(Node {
                                path,
                                size: 0,
                                mtime: SystemTime::now(),
                                posix: self.default_posix(type_bits),
                                // Placeholder attributes: read them before trusting them.
                                seen: Instant::now().checked_sub(TTL).unwrap_or_else(Instant::now),
                            })
                            .0;
                        (ino, kind)
                    }
                };
                entries.push((child_ino, kind.file_type(), name));
            }
            let entries = Arc::new(entries);
            self.tables().dirs.insert(fh.0, entries.clone());
            Ok(entries)
        })();
        match result {
            Ok(entries) => {
                for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                    if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.tables().dirs.remove(&fh.0);
        reply.ok();
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let result = self.fresh_node(ino.0).and_then(|node| {
            let want = (mask.bits() & 7) as u32;
            self.check(&self.who(req), &node, want)
        });
        answer(reply, result);
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
        // a terminal?), and the default answer logs a warning each time, which filled the
        // mount's log.
        reply.error(Errno::ENOTTY);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // An elastic file system: report 8 EiB, as NFS clients of S3 Files see.
        let blocks = 1u64 << 51;
        reply.statfs(blocks, blocks, blocks, 1 << 40, 1 << 40, 4096, 255, 4096);
    }
}

/// Answers a lookup or a creation.
fn answer_entry(reply: ReplyEntry, result: Result<FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

/// Answers an operation that returns no data.
fn answer(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

const O_ACCMODE: i32 = 0o3;
const O_RDONLY: i32 = 0;
const O_WRONLY: i32 = 1;
const O_TRUNC: i32 = 0o1000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::test_store::Counted;
    use std::sync::atomic::Ordering;

    /// A file system over `store` (bucket root), with its own runtime: its methods block on
    /// it, so tests call them from the test thread.
    fn fs_over(store: Arc<Counted>) -> (ObjectFs, tokio::runtime::Runtime, tempfile::TempDir) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let staging = tempfile::tempdir().expect("staging");
        let objects = Objects::new(store, None, None).expect("objects");
        let identity = Identity {
            user: None,
            default_uid: 0,
            default_gid: 0,
        };
        let fs = ObjectFs::new(
            objects,
            "",
            identity,
            runtime.handle().clone(),
            staging.path().to_owned(),
            0,
        );
        (fs, runtime, staging)
    }

    fn put(runtime: &tokio::runtime::Runtime, store: &Counted, key: &str, len: usize) {
        runtime
            .block_on(store.put(&ObjectPath::from(key), vec![b'x'; len].into()))
            .expect("put");
    }

    #[test]
    fn the_first_lookup_in_a_directory_asks_for_its_name_and_the_next_ones_list_it() {
        let store = Arc::new(Counted::default());
        let (fs, rt, _staging) = fs_over(store.clone());
        put(&rt, &store, "d/a", 10);
        put(&rt, &store, "d/b", 20);
        put(&rt, &store, "d/sub/c", 1);
        assert_eq!(
            fs.listed("d", "a"),
            Listed::Unknown,
            "first lookup: no listing"
        );
        assert_eq!(store.listings.load(Ordering::SeqCst), 0);
        assert_eq!(
            fs.listed("d", "b"),
            Listed::File(20),
            "second lookup: listed"
        );
        assert_eq!(fs.listed("d", "sub"), Listed::Dir);
        assert_eq!(fs.listed("d", "nope"), Listed::Absent);
        assert_eq!(
            store.listings.load(Ordering::SeqCst),
            1,
            "one listing answers all"
        );
        // Lookups do not check sub-prefixes: a lookup of the name asks for it itself.
        assert_eq!(store.checks.load(Ordering::SeqCst), 0);
        // Another directory starts over.
        assert_eq!(fs.listed("d/sub", "c"), Listed::Unknown);
    }

    #[test]
    fn a_directory_too_large_to_keep_answers_lookups_by_name() {
        let store = Arc::new(Counted::default());
        let (fs, rt, _staging) = fs_over(store.clone());
        for i in 0..=DIR_CACHE_MAX {
            put(&rt, &store, &format!("big/f{i:05}"), 1);
        }
        assert_eq!(fs.listed("big", "f00000"), Listed::Unknown);
        assert_eq!(
            fs.listed("big", "f00001"),
            Listed::Unknown,
            "too large to keep"
        );
        assert_eq!(fs.listed("big", "f00002"), Listed::Unknown);
        assert_eq!(
            store.listings.load(Ordering::SeqCst),
            1,
            "not listed again while the answer is fresh"
        );
        assert_eq!(
            fs.list_dir("big").expect("readdir").len(),
            DIR_CACHE_MAX + 1
        );
    }

    #[test]
    fn emptiness_is_decided_by_the_first_live_entry() {
        let store = Arc::new(Counted::default());
        let (fs, rt, _staging) = fs_over(store.clone());
        for i in 0..40 {
            put(&rt, &store, &format!("full/d{i:02}/x"), 1);
        }
        put(&rt, &store, &format!("empty/{DIR_MARKER}"), 0);
        assert!(!fs.is_empty_dir("full").expect("full"));
        let checks = store.checks.load(Ordering::SeqCst);
        assert!(
            checks <= VERIFY_PARALLEL,
            "{checks} sub-directories checked to find one entry"
        );
        assert!(
            fs.is_empty_dir("empty").expect("empty"),
            "the marker is no entry"
        );
        let names: Vec<String> = fs
            .list_dir("full")
            .expect("readdir")
            .into_iter()
            .map(|(n, _, _)| n)
            .collect();
        assert_eq!(names.len(), 40, "readdir still checks and shows every one");
    }

    fn posix(uid: u32, gid: u32, mode: u32) -> Posix {
        Posix {
            uid,
            gid,
            mode,
            mtime: None,
        }
    }

    #[test]
    fn permissions_follow_owner_group_other() {
        let alice = User {
            uid: 1000,
            gid: 1000,
            groups: Groups::Listed(vec![50]),
        };
        let file = posix(1000, 1000, S_IFREG | 0o640);
        assert!(permits(&alice, &file, R | W));
        assert!(!permits(&alice, &file, X));
        let shared = posix(2000, 50, S_IFREG | 0o640);
        assert!(permits(&alice, &shared, R), "supplementary group");
        assert!(!permits(&alice, &shared, W));
        let other = posix(2000, 2000, S_IFDIR | 0o755);
        assert!(permits(&alice, &other, R | X));
        assert!(!permits(&alice, &other, W));
        let root = User {
            uid: 0,
            gid: 0,
            groups: Groups::Listed(vec![]),
        };
        assert!(permits(&root, &posix(5, 5, S_IFREG), R | W));
        assert!(!permits(&root, &posix(5, 5, S_IFREG | 0o644), X));
        assert!(permits(&root, &posix(5, 5, S_IFDIR), X));
    }
}
