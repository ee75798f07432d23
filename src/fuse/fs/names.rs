//! Creating, removing and renaming names.

use std::ffi::OsStr;

use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

use super::{ObjectFs, Stat};
use crate::fuse::access::{Caller, W, X};
use crate::fuse::error::FsError;
use crate::fuse::inodes::{Kind, Node};
use crate::fuse::objects::{S_IFDIR, S_IFLNK, S_IFMT, S_IFREG};

/// S3 Files' limit on a symbolic link's target.
const MAX_LINK_TARGET: usize = 4080;
/// Objects of a renamed directory moved at once.
const RENAME_PARALLEL: usize = 8;

/// What a rename does with an existing target (renameat2's flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    /// Replace it, as rename(2).
    Replace,
    /// Fail with EEXIST (RENAME_NOREPLACE).
    NoReplace,
    /// Swap the two (RENAME_EXCHANGE): an object store cannot do that atomically.
    Exchange,
}

impl ObjectFs {
    /// The parent directory (fresh, writable by `caller`) and the path of `name` in it.
    pub(super) async fn writable_child(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
    ) -> Result<(Node, String), FsError> {
        let dir = self.dir_node(&self.user(caller), parent, W | X).await?;
        let path = self.child(&dir.path, name)?;
        Ok((dir, path))
    }

    /// What is at `path`: in the store, or a file being written here that is not yet there.
    /// The store's answer also mends the parent's kept listing, which another client's change
    /// may have made stale: a name that `mkdir` found taken must not stay absent to lookups.
    async fn existing(&self, path: &str) -> Result<Option<Node>, FsError> {
        if let Some(ino) = self.inodes.ino_of(path)
            && self.handles.writing(ino)
        {
            return Ok(self.inodes.get(ino));
        }
        match self.stat_path(path).await {
            Ok(node) => {
                self.dirs.note(path, Some((node.kind(), node.size)));
                Ok(Some(node))
            }
            Err(FsError::NotFound) => {
                self.dirs.note(path, None);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The path and attributes of a new `name` in `parent` with `mode` (type and bits), after
    /// checking that the caller may create it there and that nothing has that name.
    async fn new_child(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> Result<(String, crate::fuse::objects::Posix), FsError> {
        let (dir, path) = self.writable_child(caller, parent, name).await?;
        if mode & S_IFMT != S_IFDIR {
            self.file_name_fits(&path)?;
        }
        if self.existing(&path).await?.is_some() {
            return Err(FsError::Exists);
        }
        Ok((path, self.user(caller).new_posix(&dir.posix, mode)))
    }

    pub async fn mkdir(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> Result<Stat, FsError> {
        let (path, posix) = self
            .new_child(caller, parent, name, S_IFDIR | (mode & 0o7777))
            .await?;
        self.objects
            .put(&self.marker_key(&path), PutPayload::default(), posix)
            .await?;
        self.dirs.store(&path, Some(&[]));
        Ok(self.created(path, 0, posix))
    }

    pub async fn symlink(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        target: &[u8],
    ) -> Result<Stat, FsError> {
        if target.len() > MAX_LINK_TARGET {
            return Err(FsError::NameTooLong);
        }
        let (path, posix) = self
            .new_child(caller, parent, name, S_IFLNK | 0o777)
            .await?;
        let payload = PutPayload::from(target.to_vec());
        self.objects.put(&self.key(&path), payload, posix).await?;
        Ok(self.created(path, target.len() as u64, posix))
    }

    /// Makes a regular file (what the kernel asks when `create` is not used); other kinds
    /// cannot be objects.
    pub async fn mknod(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
    ) -> Result<Stat, FsError> {
        if mode & S_IFMT != S_IFREG && mode & S_IFMT != 0 {
            return Err(FsError::Unsupported("device nodes, fifos and sockets"));
        }
        let (path, posix) = self
            .new_child(caller, parent, name, S_IFREG | (mode & 0o7777))
            .await?;
        self.objects
            .put(&self.key(&path), PutPayload::default(), posix)
            .await?;
        Ok(self.created(path, 0, posix))
    }

    pub fn link(&self) -> Result<Stat, FsError> {
        Err(FsError::Unsupported("hard links"))
    }

    pub async fn unlink(&self, caller: &Caller, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let (dir, path) = self.writable_child(caller, parent, name).await?;
        let node = self.existing(&path).await?.ok_or(FsError::NotFound)?;
        if node.kind() == Kind::Dir {
            return Err(FsError::IsDir);
        }
        self.user(caller).may_unlink(&dir.posix, &node.posix)?;
        match self.objects.store().delete(&self.key(&path)).await {
            // A file written here and not yet uploaded has no object.
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.dirs.note(&path, None);
        self.inodes.forget_path(&path);
        Ok(())
    }

    pub async fn rmdir(&self, caller: &Caller, parent: u64, name: &OsStr) -> Result<(), FsError> {
        let (dir, path) = self.writable_child(caller, parent, name).await?;
        let node = self.existing(&path).await?.ok_or(FsError::NotFound)?;
        if node.kind() != Kind::Dir {
            return Err(FsError::NotDir);
        }
        self.user(caller).may_unlink(&dir.posix, &node.posix)?;
        if !self.is_empty_dir(&path).await? {
            return Err(FsError::NotEmpty);
        }
        match self.objects.store().delete(&self.marker_key(&path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.dirs.note(&path, None);
        self.dirs.forget_under(&path);
        self.inodes.forget_path(&path);
        Ok(())
    }

    /// Renames `name` in `parent` to `new_name` in `new_parent`. A file is one copy and delete
    /// in the store; a directory one per object under it, so a large directory's rename is
    /// not atomic (as in S3 Files).
    pub async fn rename(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        mode: RenameMode,
    ) -> Result<(), FsError> {
        if mode == RenameMode::Exchange {
            return Err(FsError::UnsupportedFlag(
                "RENAME_EXCHANGE: an object store cannot swap two names at once",
            ));
        }
        let user = self.user(caller);
        let (from_dir, from) = self.writable_child(caller, parent, name).await?;
        let (to_dir, to) = self.writable_child(caller, new_parent, new_name).await?;
        // A file still being written goes up first, so that there is an object to move.
        if let Some(ino) = self.inodes.ino_of(&from) {
            for handle in self.handles.writers_of(ino) {
                self.flush_handle(&handle).await?;
            }
        }
        let node = self.stat_path(&from).await?;
        user.may_unlink(&from_dir.posix, &node.posix)?;
        if from == to {
            return Ok(());
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(FsError::Invalid("a directory cannot move into itself"));
        }
        let target = self.existing(&to).await?;
        if let Some(target) = &target {
            if mode == RenameMode::NoReplace {
                return Err(FsError::Exists);
            }
            user.may_unlink(&to_dir.posix, &target.posix)?;
        }
        let moves = match (node.kind(), target.as_ref().map(Node::kind)) {
            (Kind::Dir, Some(Kind::File | Kind::Symlink)) => return Err(FsError::NotDir),
            (Kind::File | Kind::Symlink, Some(Kind::Dir)) => return Err(FsError::IsDir),
            (Kind::File | Kind::Symlink, _) => {
                self.file_name_fits(&to)?;
                vec![(self.key(&from), self.key(&to))]
            }
            (Kind::Dir, target) => {
                if target.is_some() {
                    if !self.is_empty_dir(&to).await? {
                        return Err(FsError::NotEmpty);
                    }
                    // The moved directory brings its own attributes, or none.
                    match self.objects.store().delete(&self.marker_key(&to)).await {
                        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                // Its ".." changes: that needs write permission on it.
                if from_dir.path != to_dir.path {
                    user.check(&node.posix, W)?;
                }
                self.moves_under(&from, &to).await?
            }
        };
        futures_util::stream::iter(moves)
            .map(|(src, dst)| async move { self.objects.store().rename(&src, &dst).await })
            .buffer_unordered(RENAME_PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        self.dirs.note(&from, None);
        self.dirs.note(&to, Some((node.kind(), node.size)));
        self.dirs.forget_under(&from);
        self.dirs.forget_under(&to);
        self.inodes.renamed(&from, &to);
        Ok(())
    }

    /// Each object under directory `from` with its key under `to`.
    async fn moves_under(
        &self,
        from: &str,
        to: &str,
    ) -> Result<Vec<(ObjectPath, ObjectPath)>, FsError> {
        let base = self.key(from);
        let objects: Vec<_> = self.objects.store().list(Some(&base)).try_collect().await?;
        Ok(objects
            .into_iter()
            .map(|obj| {
                let mut target = self.key(to);
                if let Some(rest) = obj.location.prefix_match(&base) {
                    for part in rest {
                        target = target.join(part);
                    }
                }
                (obj.location, target)
            })
            .collect())
    }
}
