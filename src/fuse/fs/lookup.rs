//! Finding names and reading directories and attributes.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::ObjectStoreExt;

use super::{ObjectFs, Stat, TTL};
use crate::fuse::access::{Caller, R, X};
use crate::fuse::dircache::{DIR_CACHE_MAX, Listed};
use crate::fuse::error::FsError;
use crate::fuse::handles::{DirEntry, DirReader, Listing};
use crate::fuse::inodes::{Kind, Node};
use crate::fuse::objects::{S_IFDIR, S_IFREG};

/// Files up to this size are read whole by the lookup that finds them through a listing, as
/// S3 Files imports the data of files under 128 KiB on first directory access.
pub const SMALL_FILE: u64 = 128 << 10;

/// Attribute reads of one readdirplus reply in flight at once.
const PLUS_PARALLEL: usize = 32;

/// One entry of a readdirplus reply.
pub struct PlusEntry {
    /// The offset of the entry after this one.
    pub next: u64,
    pub name: String,
    pub stat: Stat,
    /// Whether the kernel may keep these attributes.
    pub fresh: bool,
}

impl ObjectFs {
    /// Looks `name` up in directory `parent`.
    pub async fn lookup(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
    ) -> Result<Stat, FsError> {
        let user = self.user(caller);
        let dir = self.dir_node(&user, parent, X).await?;
        let path = self.child(&dir.path, name)?;
        // Files being written are known here before they reach the store.
        if let Some(ino) = self.inodes.ino_of(&path)
            && self.handles.writing(ino)
        {
            return self.stat(ino);
        }
        let name = path.rsplit('/').next().unwrap_or(&path);
        let node = self.stat_child(&dir.path, name, &path).await?;
        Ok(self.remembered(node))
    }

    /// Like [`ObjectFs::stat_path`], with what the parent's listing said: absent names are
    /// answered without a request, and a listed name costs one request: a small file is read
    /// whole (its bytes kept briefly for the `open` that usually follows), a larger one is
    /// asked for its head, a directory for its marker.
    async fn stat_child(&self, parent: &str, name: &str, path: &str) -> Result<Node, FsError> {
        match self.listed(parent, name).await {
            Listed::Absent => Err(FsError::NotFound),
            Listed::File(size) if size <= SMALL_FILE => {
                match self.objects.get_small(&self.key(path)).await {
                    Ok((meta, posix, body)) => {
                        let node = self.file_node(path, &meta, posix);
                        let ino = self.inodes.remember(node.clone());
                        self.dirs.keep_body(ino, body);
                        Ok(node)
                    }
                    // Gone since the listing, or a directory of the same name: ask in full.
                    Err(object_store::Error::NotFound { .. }) => self.stat_path(path).await,
                    Err(e) => Err(e.into()),
                }
            }
            Listed::File(_) => match self.stat_file(path).await {
                Err(FsError::NotFound) => self.stat_path(path).await,
                other => other,
            },
            Listed::Dir => self.stat_listed_dir(path).await,
            Listed::Unknown => self.stat_path(path).await,
        }
    }

    /// What a fresh listing of `parent` says about `name`, listing it first when a lookup in
    /// it came shortly before (see `dircache`).
    pub(super) async fn listed(&self, parent: &str, name: &str) -> Listed {
        if let Some(answer) = self.dirs.lookup(parent, name) {
            return answer;
        }
        if !self.dirs.worth_listing(parent) {
            return Listed::Unknown;
        }
        match self.list_entries(parent, false, Some(DIR_CACHE_MAX)).await {
            Ok(entries) => {
                self.dirs.store(parent, entries.as_deref());
                self.dirs.lookup(parent, name).unwrap_or(Listed::Unknown)
            }
            Err(_) => Listed::Unknown,
        }
    }

    /// The attributes of `ino`. The kernel asks again once its cached attributes expire: they
    /// are read from the store again then, so changes made through other mounts show.
    pub async fn getattr(&self, ino: u64) -> Result<Stat, FsError> {
        Ok(Stat {
            ino,
            node: self.fresh_node(ino).await?,
        })
    }

    pub async fn readlink(&self, ino: u64) -> Result<Bytes, FsError> {
        let node = self.node(ino)?;
        if node.kind() != Kind::Symlink {
            return Err(FsError::Invalid("not a symbolic link"));
        }
        let got = self.objects.store().get(&self.key(&node.path)).await?;
        Ok(got.bytes().await?)
    }

    /// Checks `mask` (bits R, W, X) for the caller on `ino`.
    pub async fn access(&self, caller: &Caller, ino: u64, mask: u32) -> Result<(), FsError> {
        let node = self.fresh_node(ino).await?;
        self.user(caller).check(&node.posix, mask & 7)
    }

    pub async fn opendir(&self, caller: &Caller, ino: u64) -> Result<u64, FsError> {
        self.dir_node(&self.user(caller), ino, R).await?;
        Ok(self.handles.open_dir())
    }

    /// The entries of open directory `fh` from `offset` on, as many as have arrived (at least
    /// one, none at the end). The call at offset 0 starts the directory's listing (a rewind
    /// lists again), which goes on page by page in its own task while the kernel reads what
    /// arrived; later calls continue from it.
    pub async fn readdir(
        self: &Arc<Self>,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Result<Vec<DirEntry>, FsError> {
        let reader = match self.handles.dir_reader(fh) {
            Some(reader) if offset > 0 => reader,
            _ => self.start_listing(ino, fh)?,
        };
        reader.from(offset as usize).await
    }

    fn start_listing(self: &Arc<Self>, ino: u64, fh: u64) -> Result<Arc<DirReader>, FsError> {
        let node = self.node(ino)?;
        if node.kind() != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let parent = match node.path.rsplit_once('/') {
            Some((parent, _)) => self.inodes.ino_of(parent),
            None => Some(super::ROOT),
        };
        let reader = Arc::new(DirReader::new(vec![
            (ino, Kind::Dir, ".".to_owned()),
            (parent.unwrap_or(super::ROOT), Kind::Dir, "..".to_owned()),
        ]));
        let (fs, filled) = (self.clone(), Listing(reader.clone()));
        let task = tokio::spawn(async move { fs.fill(&node.path, &filled.0).await });
        reader.set_task(task.abort_handle());
        if !self.handles.set_dir_reader(fh, reader.clone()) {
            return Err(FsError::BadHandle);
        }
        Ok(reader)
    }

    /// Lists the directory at `path` into `reader`, and keeps the listing for lookups when it
    /// is small enough.
    async fn fill(&self, path: &str, reader: &DirReader) {
        let mut kept = Some(Vec::new());
        let listed = self
            .list_pages(path, true, None, |more| {
                if let Some(k) = kept.as_mut() {
                    k.extend(more.iter().cloned());
                }
                if kept.as_ref().is_some_and(|k| k.len() > DIR_CACHE_MAX) {
                    kept = None;
                }
                let entries = more
                    .into_iter()
                    .map(|(name, kind, _)| self.listed_entry(path, name, kind))
                    .collect();
                reader.push(entries);
            })
            .await;
        if listed.is_ok() {
            self.dirs.store(path, kept.as_deref());
        }
        reader.finish(listed.map(|_| ()));
    }

    /// The inode a listing shows for `name` in the directory at `dir`. A listing carries no
    /// attributes: an inode new to this mount gets placeholder ones, marked stale so they are
    /// read before they are trusted.
    fn listed_entry(&self, dir: &str, name: String, kind: Kind) -> DirEntry {
        let path = if dir.is_empty() {
            name.clone()
        } else {
            format!("{dir}/{name}")
        };
        let ino = self.inodes.ino_or_placeholder(|| Node {
            path,
            size: 0,
            mtime: SystemTime::now(),
            posix: self.default_posix(if kind == Kind::Dir { S_IFDIR } else { S_IFREG }),
            seen: Instant::now().checked_sub(TTL).unwrap_or_else(Instant::now),
            etag: None,
        });
        let kind = self.inodes.get(ino).map_or(kind, |n| n.kind());
        (ino, kind, name)
    }

    /// The entries of open directory `fh` from `offset` that fit in `bytes` of a readdirplus
    /// reply, each with its attributes, so that `ls -l` costs no lookup per name. Attributes
    /// not fresh here are read for all those entries at once (one request each, as a lookup
    /// after a listing). A caller that may not search the directory gets the names with the
    /// attributes already known, which the adapter hands over without letting the kernel keep
    /// them (`fresh` false), as do entries that could not be read.
    pub async fn readdirplus(
        self: &Arc<Self>,
        caller: &Caller,
        ino: u64,
        fh: u64,
        offset: u64,
        bytes: usize,
    ) -> Result<Vec<PlusEntry>, FsError> {
        let listing = self.readdir(ino, fh, offset).await?;
        let dir = self.node(ino)?;
        let searchable = self.user(caller).permits(&dir.posix, X);
        let mut chosen = Vec::new();
        let mut used = 0;
        for (next, (child, kind, name)) in (offset + 1..).zip(listing) {
            // fuse_entry_out (128 bytes) and fuse_dirent (24) with the name padded to 8.
            used += 152 + name.len().div_ceil(8) * 8;
            if used > bytes {
                break;
            }
            chosen.push((next, child, kind, name));
        }
        let fetched = futures_util::stream::iter(chosen)
            .map(|(next, child, kind, name)| {
                async move {
                    let known = self.inodes.get(child);
                    let dot = name == "." || name == "..";
                    let fresh = known
                        .as_ref()
                        .is_some_and(|n| !n.stale(TTL) || self.handles.writing(child));
                    if dot || fresh || !searchable {
                        let node = known?;
                        let fresh = fresh || dot;
                        return Some(PlusEntry {
                            next,
                            name,
                            stat: Stat { ino: child, node },
                            fresh,
                        });
                    }
                    let known = known?;
                    let path = known.path.clone();
                    // The listing says what it is: one request, whatever the directory's size.
                    let read = match kind {
                        Kind::Dir => self.stat_listed_dir(&path).await,
                        Kind::File | Kind::Symlink => match self.stat_file(&path).await {
                            Err(FsError::NotFound) => self.stat_path(&path).await,
                            other => other,
                        },
                    };
                    Some(match read {
                        Ok(node) => PlusEntry {
                            next,
                            name,
                            stat: self.remembered(node),
                            fresh: true,
                        },
                        // Gone or unreadable since the listing: the name stays in the page (a
                        // page with no entries would end the listing) and the kernel, keeping
                        // nothing, asks again by lookup.
                        Err(_) => PlusEntry {
                            next,
                            name,
                            stat: Stat {
                                ino: child,
                                node: known,
                            },
                            fresh: false,
                        },
                    })
                }
            })
            .buffered(PLUS_PARALLEL)
            .filter_map(|e| async move { e })
            .collect()
            .await;
        Ok(fetched)
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.close_dir(fh);
    }
}
