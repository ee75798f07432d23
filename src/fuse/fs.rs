//! The file system's core: every operation, as async methods that take a plain [`Caller`] and
//! answer `Result<_, FsError>`, over the store and the state modules (inodes, directory cache,
//! handles), none of whose locks is held across a store call. The kernel adapter (`kernel`)
//! only converts and replies.
//!
//! Layout, as S3 Files keeps it: the file `a/b.txt` under the root `k8s/vol` is the object
//! `k8s/vol/a/b.txt`, its key the name's bytes. A directory exists while objects live under it;
//! an empty one is kept by a zero-byte marker object `<dir>/.s3files-dir` that listings hide,
//! which also carries the directory's attributes.

mod files;
mod lookup;
mod names;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;

use super::access::{Caller, Identity, User};
use super::dircache::{DirCache, Entry};
use super::error::FsError;
use super::handles::Handles;
use super::inodes::{Inodes, Kind, Node, ROOT};
use super::objects::{Objects, Posix, S_IFDIR, S_IFREG};
use super::prefetch::Budget;
use super::writer::Scratch;

pub use files::SetAttr;
pub use lookup::PlusEntry;
pub use names::RenameMode;

/// Marker object that keeps an empty directory and carries the directory's attributes.
pub const DIR_MARKER: &str = ".s3files-dir";
/// How long attributes read from the store are trusted (another mount may change them).
pub const TTL: Duration = Duration::from_secs(1);
/// Memory one mount may hold in staged small files (see `staging`).
const STAGING_MEMORY: u64 = 64 << 20;
/// Modes of files and directories whose objects carry no POSIX attributes.
const DEFAULT_FILE_MODE: u32 = 0o644;
const DEFAULT_DIR_MODE: u32 = 0o755;
/// Sub-prefixes of one listing page checked for live objects at once.
const VERIFY_PARALLEL: usize = 16;
/// S3's limit on a key, and POSIX's on a name.
const MAX_KEY: usize = 1024;
const MAX_NAME: usize = 255;

/// An inode and what is known of it, as a lookup or getattr answers.
#[derive(Clone, Debug)]
pub struct Stat {
    pub ino: u64,
    pub node: Node,
}

/// The file system over one root of a bucket.
pub struct ObjectFs {
    objects: Objects,
    /// Object key prefix of the root, without a trailing `/` ("" for the bucket root).
    root: String,
    identity: Identity,
    /// Staging and part buffers of the mount's writers.
    scratch: Scratch,
    /// Read-ahead memory and how the server is best read.
    read_ahead: Budget,
    inodes: Inodes,
    dirs: DirCache,
    handles: Handles,
    /// Key prefix of the file system's lost+found (`<prefix>.s3files-lost+found-<fs-id>`).
    lost_found: ObjectPath,
    /// Uploads that met an object changed elsewhere and went to lost+found.
    conflicts: AtomicU64,
}

impl ObjectFs {
    /// The file system at `root` of the bucket behind `objects`; the root's attributes are
    /// read from its marker (its creation permissions).
    pub async fn new(
        objects: Objects,
        root: &str,
        identity: Identity,
        staging_dir: &Path,
        prefetch_budget_bytes: u64,
        lost_found: ObjectPath,
    ) -> Self {
        let root_node = Node {
            path: String::new(),
            size: 0,
            mtime: SystemTime::now(),
            posix: Posix {
                uid: identity.default_uid,
                gid: identity.default_gid,
                mode: S_IFDIR | DEFAULT_DIR_MODE,
                ..Posix::default()
            },
            seen: Instant::now(),
            etag: None,
        };
        let mut fs = ObjectFs {
            objects,
            root: root.trim_matches('/').to_owned(),
            identity,
            scratch: Scratch::new(staging_dir, STAGING_MEMORY),
            read_ahead: Budget::new(prefetch_budget_bytes),
            inodes: Inodes::new(root_node),
            dirs: DirCache::default(),
            handles: Handles::default(),
            lost_found,
            conflicts: AtomicU64::new(0),
        };
        if let Ok(node) = fs.stat_path("").await {
            fs.inodes = Inodes::new(node);
        }
        fs
    }

    fn user(&self, caller: &Caller) -> User {
        self.identity.user(caller)
    }

    /// The object key of `path`: the names' bytes (validated by [`Self::child`]).
    fn key(&self, path: &str) -> ObjectPath {
        let raw = match (self.root.is_empty(), path.is_empty()) {
            (true, _) => path.to_owned(),
            (false, true) => self.root.clone(),
            (false, false) => format!("{}/{path}", self.root),
        };
        // Only names `child` accepted get here, which `parse` takes as they are; anything else
        // gets object_store's escaped form rather than a panic.
        ObjectPath::parse(&raw).unwrap_or_else(|_| ObjectPath::from(raw))
    }

    fn marker_key(&self, path: &str) -> ObjectPath {
        self.key(path).join(DIR_MARKER)
    }

    /// The path of `name` in the directory at `parent`, if the name can be an object key.
    fn child(&self, parent: &str, name: &OsStr) -> Result<String, FsError> {
        let bytes = name.as_bytes();
        if bytes.len() > MAX_NAME {
            return Err(FsError::NameTooLong);
        }
        let name = std::str::from_utf8(bytes)
            .map_err(|_| FsError::Invalid("object keys are UTF-8: the name is not"))?;
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(FsError::Invalid("not a file name"));
        }
        if name == DIR_MARKER {
            return Err(FsError::Invalid("the directory marker's name is reserved"));
        }
        if name.chars().any(|c| c.is_ascii_control()) {
            return Err(FsError::Invalid(
                "names with control characters cannot be object keys here",
            ));
        }
        let path = if parent.is_empty() {
            name.to_owned()
        } else {
            format!("{parent}/{name}")
        };
        // The longest key under this path is a directory's marker.
        let key_len = self.root.len() + 1 + path.len() + 1 + DIR_MARKER.len();
        if key_len > MAX_KEY {
            return Err(FsError::NameTooLong);
        }
        Ok(path)
    }

    /// Checks that a file (an object, unlike a directory) may have the name ending `path`.
    fn file_name_fits(&self, path: &str) -> Result<(), FsError> {
        let name = path.rsplit('/').next().unwrap_or(path);
        if name.len() > self.objects.max_file_name() {
            return Err(FsError::NameTooLong);
        }
        Ok(())
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
            ..Posix::default()
        }
    }

    fn node(&self, ino: u64) -> Result<Node, FsError> {
        self.inodes.get(ino).ok_or(FsError::NotFound)
    }

    fn stat(&self, ino: u64) -> Result<Stat, FsError> {
        Ok(Stat {
            ino,
            node: self.node(ino)?,
        })
    }

    /// Remembers `node` and answers its stat.
    fn remembered(&self, node: Node) -> Stat {
        let ino = self.inodes.remember(node.clone());
        Stat { ino, node }
    }

    /// Remembers what this mount just created at `path`.
    fn created(&self, path: String, size: u64, posix: Posix) -> Stat {
        self.dirs.note(&path, Some((Kind::of(&posix), size)));
        self.remembered(Node {
            path,
            size,
            mtime: SystemTime::now(),
            posix,
            seen: Instant::now(),
            etag: None,
        })
    }

    /// The node, read again from the store if what is known is older than [`TTL`]. A file
    /// being written here is newest locally.
    async fn fresh_node(&self, ino: u64) -> Result<Node, FsError> {
        let node = self.node(ino)?;
        if !node.stale(TTL) || self.handles.writing(ino) {
            return Ok(node);
        }
        let fresh = match self.stat_path(&node.path).await {
            Ok(fresh) => fresh,
            Err(FsError::NotFound) if ino != ROOT => {
                self.inodes.forget_path(&node.path);
                return Err(FsError::NotFound);
            }
            Err(e) => return Err(e),
        };
        self.inodes.update(ino, |n| *n = fresh.clone());
        Ok(fresh)
    }

    /// A directory node of `ino` (fresh) that `user` may search.
    async fn dir_node(&self, user: &User, ino: u64, want: u32) -> Result<Node, FsError> {
        let dir = self.fresh_node(ino).await?;
        if dir.kind() != Kind::Dir {
            return Err(FsError::NotDir);
        }
        user.check(&dir.posix, want)?;
        Ok(dir)
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
            etag: meta.e_tag.clone(),
        }
    }

    fn dir_node_of(&self, path: &str, mtime: SystemTime, posix: Option<Posix>) -> Node {
        let mut posix = posix.unwrap_or_else(|| self.default_posix(S_IFDIR));
        posix.mode = S_IFDIR | posix.perm();
        Node {
            path: path.to_owned(),
            size: 0,
            mtime,
            posix,
            seen: Instant::now(),
            etag: None,
        }
    }

    /// A file at `path`, from its object alone (one request).
    async fn stat_file(&self, path: &str) -> Result<Node, FsError> {
        let (meta, posix) = self.objects.head(&self.key(path)).await?;
        Ok(self.file_node(path, &meta, posix))
    }

    /// A directory at `path` that a listing showed, from its marker alone (one request); one
    /// without a marker has default attributes.
    async fn stat_listed_dir(&self, path: &str) -> Result<Node, FsError> {
        match self.objects.head(&self.marker_key(path)).await {
            Ok((meta, posix)) => Ok(self.dir_node_of(path, meta.last_modified.into(), posix)),
            Err(object_store::Error::NotFound { .. }) => {
                Ok(self.dir_node_of(path, SystemTime::now(), None))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Finds what is at `path` in the store: an object is a file (or a symbolic link, by its
    /// mode); a directory marker or any object under the prefix makes a directory. The object
    /// and the marker are asked for at once; the prefix is listed (one key) only when neither
    /// exists.
    async fn stat_path(&self, path: &str) -> Result<Node, FsError> {
        let key = self.key(path);
        let marker = self.marker_key(path);
        let is_bucket_root = path.is_empty() && self.root.is_empty();
        let (object, marker) = tokio::join!(
            async {
                if is_bucket_root {
                    None
                } else {
                    Some(self.objects.head(&key).await)
                }
            },
            self.objects.head(&marker)
        );
        match object {
            Some(Ok((meta, posix))) => return Ok(self.file_node(path, &meta, posix)),
            Some(Err(object_store::Error::NotFound { .. })) | None => {}
            Some(Err(e)) => return Err(e.into()),
        }
        match marker {
            Ok((meta, posix)) => {
                return Ok(self.dir_node_of(path, meta.last_modified.into(), posix));
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        if path.is_empty() || self.objects.has_children(&key).await? {
            Ok(self.dir_node_of(path, SystemTime::now(), None))
        } else {
            Err(FsError::NotFound)
        }
    }

    /// The entries of the directory at `path` (name, kind, size), as `readdir` shows them.
    #[cfg(test)]
    async fn list_dir(&self, path: &str) -> Result<Vec<Entry>, FsError> {
        Ok(self
            .list_entries(path, true, None)
            .await?
            .unwrap_or_default())
    }

    /// Whether the directory at `path` has no entries (its marker aside). Stops at the first
    /// entry found, however large the directory.
    async fn is_empty_dir(&self, path: &str) -> Result<bool, FsError> {
        Ok(self.list_entries(path, true, Some(0)).await?.is_some())
    }

    /// Lists the directory at `path` page by page. With `verify`, a sub-prefix counts as a
    /// directory only while live objects are under it (checked concurrently): a local
    /// directory store keeps emptied directories on disk (after a rename, say), and some S3
    /// servers (moto, versioned buckets) report prefixes that hold only delete markers. Lookups
    /// skip that, as they ask for the name itself. With `limit`, listing stops once the
    /// directory is known to hold more entries than that: `None`.
    async fn list_entries(
        &self,
        path: &str,
        verify: bool,
        limit: Option<usize>,
    ) -> Result<Option<Vec<Entry>>, FsError> {
        let mut entries = Vec::new();
        let whole = self
            .list_pages(path, verify, limit, |more| entries.extend(more))
            .await?;
        Ok(whole.then_some(entries))
    }

    /// Lists the directory at `path` (see [`ObjectFs::list_entries`]), handing each page's
    /// entries to `found` as it arrives. With `limit`, stops once more than that many were
    /// found (answering false; true when the listing is whole).
    async fn list_pages(
        &self,
        path: &str,
        verify: bool,
        limit: Option<usize>,
        mut found: impl FnMut(Vec<Entry>),
    ) -> Result<bool, FsError> {
        let key = self.key(path);
        let prefix = (!(path.is_empty() && self.root.is_empty())).then_some(&key);
        let mut count = 0;
        let over = |n: usize| limit.is_some_and(|l| n > l);
        let mut token = None;
        loop {
            let (page, next) = self.objects.list_page(prefix, token).await?;
            let mut entries: Vec<Entry> = page
                .objects
                .iter()
                .filter_map(|obj| {
                    let name = obj.location.filename().filter(|n| *n != DIR_MARKER)?;
                    Some((name.to_owned(), Kind::File, obj.size))
                })
                .collect();
            let mut dirs = futures_util::stream::iter(page.common_prefixes)
                .map(|dir| async move {
                    let live = !verify || self.objects.has_children(&dir).await?;
                    Ok::<_, object_store::Error>((dir, live))
                })
                .buffered(VERIFY_PARALLEL);
            while !over(count + entries.len())
                && let Some(checked) = dirs.next().await
            {
                let (dir, live) = checked?;
                if let Some(name) = dir.filename()
                    && live
                {
                    entries.push((name.to_owned(), Kind::Dir, 0));
                }
            }
            count += entries.len();
            found(entries);
            if over(count) {
                return Ok(false);
            }
            match next {
                Some(next) => token = Some(next),
                None => return Ok(true),
            }
        }
    }

    /// Uploads that went to lost+found since the mount began.
    pub fn conflicts(&self) -> u64 {
        self.conflicts.load(Ordering::Relaxed)
    }

    /// Inodes and handles held (for tests and memory figures).
    pub fn held(&self) -> (usize, usize) {
        (self.inodes.len(), self.handles.len())
    }
}

#[cfg(test)]
mod tests;
