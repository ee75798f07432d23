//! Objects with their POSIX attributes.
//!
//! A file's owner, group, mode (with the file type bits) and modification time travel with its
//! object as user metadata, under the keys s3fs uses (`uid`, `gid`, `mode` as a decimal
//! `st_mode`, `mtime` in seconds), so the same bucket shows the same owners through either tool.
//! On S3 that is `x-amz-meta-*`. `object_store`'s local directory store refuses attributes, so
//! for local buckets the same keys are kept as extended attributes of the object's file
//! (`user.s3meta.<key>`); a hard-link copy (its rename) keeps them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload,
};

/// File type bits of `st_mode`.
pub const S_IFMT: u32 = 0o170_000;
pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFLNK: u32 = 0o120_000;

const XATTR_PREFIX: &str = "user.s3meta.";

/// POSIX attributes of one file, directory or symbolic link.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Posix {
    pub uid: u32,
    pub gid: u32,
    /// Full `st_mode`: type bits and permission bits.
    pub mode: u32,
    /// Set by `touch -d` and friends; otherwise the object's last-modified time counts.
    pub mtime: Option<SystemTime>,
    /// Set by `touch -a` and friends; otherwise the modification time counts.
    pub atime: Option<SystemTime>,
    /// When the attributes last changed where that rewrote no object (a local bucket's chmod);
    /// the change time is the later of this and the object's last-modified time.
    pub ctime: Option<SystemTime>,
}

impl Posix {
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }

    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    /// As object metadata.
    pub fn to_metadata(self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("uid".into(), self.uid.to_string());
        m.insert("gid".into(), self.gid.to_string());
        m.insert("mode".into(), self.mode.to_string());
        for (key, time) in [
            ("mtime", self.mtime),
            ("atime", self.atime),
            ("ctime", self.ctime),
        ] {
            if let Some(t) = time {
                m.insert(key.into(), format_time(t));
            }
        }
        m
    }

    /// From object metadata; `None` when the object carries no complete POSIX attributes
    /// (written by something else), so the caller's defaults apply.
    pub fn from_metadata(m: &BTreeMap<String, String>) -> Option<Posix> {
        let uid = m.get("uid")?.trim().parse().ok()?;
        let gid = m.get("gid")?.trim().parse().ok()?;
        let mode: u32 = m.get("mode")?.trim().parse().ok()?;
        Some(Posix {
            uid,
            gid,
            mode,
            mtime: m.get("mtime").and_then(|v| parse_time(v)),
            atime: m.get("atime").and_then(|v| parse_time(v)),
            ctime: m.get("ctime").and_then(|v| parse_time(v)),
        })
    }
}

/// Seconds since the epoch, with nanoseconds after a point when there are any (s3fs writes
/// and reads whole seconds, and stops reading at the point).
fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    match d.subsec_nanos() {
        0 => d.as_secs().to_string(),
        ns => format!("{}.{ns:09}", d.as_secs()),
    }
}

fn parse_time(v: &str) -> Option<SystemTime> {
    let (secs, frac) = v.trim().split_once('.').unwrap_or((v.trim(), ""));
    let secs: u64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32)
    };
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

fn attributes_of(metadata: &BTreeMap<String, String>) -> Attributes {
    metadata
        .iter()
        .map(|(k, v)| {
            (
                Attribute::Metadata(k.clone().into()),
                AttributeValue::from(v.clone()),
            )
        })
        .collect()
}

/// An object store plus the POSIX attributes of its objects.
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// Set when the bucket is a local directory: attributes go to extended attributes.
    local: Option<LocalFileSystem>,
    /// S3's own listing, for requests `ObjectStore::list` cannot make (one key at most).
    paged: Option<Arc<dyn PaginatedListStore>>,
}

fn metadata_of(attributes: &Attributes) -> BTreeMap<String, String> {
    attributes
        .iter()
        .filter_map(|(k, v)| match k {
            Attribute::Metadata(name) => Some((name.to_string(), v.to_string())),
            _ => None,
        })
        .collect()
}

impl Objects {
    /// `local_dir` is the bucket's directory when `store` is a local directory store.
    /// `paged` is the same bucket's S3 client when it is on S3.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        local_dir: Option<PathBuf>,
        paged: Option<Arc<dyn PaginatedListStore>>,
    ) -> anyhow::Result<Self> {
        let local = match local_dir {
            Some(dir) => Some(LocalFileSystem::new_with_prefix(dir)?),
            None => None,
        };
        Ok(Objects {
            store,
            local,
            paged,
        })
    }

    /// Whether any object lives under `prefix/` (one key listed at most on S3).
    pub async fn has_children(&self, prefix: &ObjectPath) -> object_store::Result<bool> {
        if let Some(paged) = &self.paged {
            let opts = PaginatedListOptions {
                max_keys: Some(1),
                ..Default::default()
            };
            let listed = paged
                .list_paginated(Some(&format!("{prefix}/")), opts)
                .await?;
            return Ok(!listed.result.objects.is_empty());
        }
        let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
        match self.store.list(prefix).next().await {
            Some(Ok(_)) => Ok(true),
            Some(Err(e)) => Err(e),
            None => Ok(false),
        }
    }

    /// One page of the listing of the directory at `prefix` (`None`: the bucket root): its
    /// objects and sub-prefixes, and the token of the next page if there is one. On S3 a page
    /// is one request (up to 1,000 names); a local bucket is listed whole in one page.
    pub async fn list_page(
        &self,
        prefix: Option<&ObjectPath>,
        token: Option<String>,
    ) -> object_store::Result<(ListResult, Option<String>)> {
        match &self.paged {
            Some(paged) => {
                let prefix = prefix.map(|p| format!("{p}/"));
                let opts = PaginatedListOptions {
                    delimiter: Some("/".into()),
                    page_token: token,
                    ..Default::default()
                };
                let page = paged.list_paginated(prefix.as_deref(), opts).await?;
                Ok((page.result, page.page_token))
            }
            None => Ok((self.store.list_with_delimiter(prefix).await?, None)),
        }
    }

    /// A whole (small) object with its size, time and POSIX attributes, in one request.
    pub async fn get_small(
        &self,
        key: &ObjectPath,
    ) -> object_store::Result<(ObjectMeta, Option<Posix>, bytes::Bytes)> {
        let got = self.store.get_opts(key, GetOptions::default()).await?;
        let meta = got.meta.clone();
        let posix = match &self.local {
            Some(local) => Posix::from_metadata(&read_xattrs(local, key)),
            None => Posix::from_metadata(&metadata_of(&got.attributes)),
        };
        Ok((meta, posix, got.bytes().await?))
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Whether the bucket is a local directory: reads are plain file reads, so a ranged read
    /// per request beats a streamed body (the local store streams in 8 KiB pieces).
    pub fn is_local(&self) -> bool {
        self.local.is_some()
    }

    /// The longest last part of an object's key, in bytes: 255 on S3 (POSIX's limit for a
    /// name); a local bucket keeps each object as a file, which its store first writes as
    /// `<name>#1`, so 253 there.
    pub fn max_file_name(&self) -> usize {
        if self.local.is_some() { 253 } else { 255 }
    }

    /// Whether attributes can change without rewriting the object.
    pub fn attributes_in_place(&self) -> bool {
        self.local.is_some()
    }

    /// The object's size, time and POSIX attributes (if it has them).
    pub async fn head(
        &self,
        key: &ObjectPath,
    ) -> object_store::Result<(ObjectMeta, Option<Posix>)> {
        if let Some(local) = &self.local {
            let meta = self.store.head(key).await?;
            let posix = Posix::from_metadata(&read_xattrs(local, key));
            return Ok((meta, posix));
        }
        let got = self
            .store
            .get_opts(key, GetOptions::default().with_head(true))
            .await?;
        Ok((
            got.meta,
            Posix::from_metadata(&metadata_of(&got.attributes)),
        ))
    }

    /// Writes a whole object with its attributes; returns its ETag.
    pub async fn put(
        &self,
        key: &ObjectPath,
        payload: PutPayload,
        posix: Posix,
    ) -> object_store::Result<Option<String>> {
        self.put_new_or_any(key, payload, posix, false).await
    }

    /// Like [`Objects::put`]; with `only_new`, fails with `AlreadyExists` when the key exists
    /// (S3's `If-None-Match: *`, a create-only file on a local bucket).
    pub async fn put_new_or_any(
        &self,
        key: &ObjectPath,
        payload: PutPayload,
        posix: Posix,
        only_new: bool,
    ) -> object_store::Result<Option<String>> {
        let mode = if only_new {
            PutMode::Create
        } else {
            PutMode::Overwrite
        };
        if let Some(local) = &self.local {
            let opts = PutOptions {
                mode,
                ..Default::default()
            };
            let put = self.store.put_opts(key, payload, opts).await?;
            write_xattrs(local, key, &posix.to_metadata());
            return Ok(put.e_tag);
        }
        let opts = PutOptions {
            mode,
            attributes: attributes_of(&posix.to_metadata()),
            ..Default::default()
        };
        Ok(self.store.put_opts(key, payload, opts).await?.e_tag)
    }

    /// Starts a multipart upload that carries `posix`; call [`Objects::finished`] after it
    /// completes.
    pub async fn put_multipart(
        &self,
        key: &ObjectPath,
        posix: Posix,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let opts = if self.local.is_some() {
            PutMultipartOptions::default()
        } else {
            PutMultipartOptions {
                attributes: attributes_of(&posix.to_metadata()),
                ..Default::default()
            }
        };
        self.store.put_multipart_opts(key, opts).await
    }

    /// Completes what a multipart upload could not carry (local attributes).
    pub fn finished(&self, key: &ObjectPath, posix: Posix) {
        if let Some(local) = &self.local {
            write_xattrs(local, key, &posix.to_metadata());
        }
    }

    /// Changes the attributes of a local object in place. Returns `false` for S3, where the
    /// caller must rewrite the object (as S3 Files does: a chmod is a new object version).
    pub fn set_in_place(&self, key: &ObjectPath, posix: Posix) -> bool {
        match &self.local {
            Some(local) => {
                write_xattrs(local, key, &posix.to_metadata());
                true
            }
            None => false,
        }
    }
}

fn read_xattrs(local: &LocalFileSystem, key: &ObjectPath) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(path) = local.path_to_filesystem(key) else {
        return out;
    };
    let Ok(names) = xattr::list(&path) else {
        return out;
    };
    for name in names {
        let Some(key) = name.to_str().and_then(|n| n.strip_prefix(XATTR_PREFIX)) else {
            continue;
        };
        if let Ok(Some(value)) = xattr::get(&path, &name)
            && let Ok(value) = String::from_utf8(value)
        {
            out.insert(key.to_owned(), value);
        }
    }
    out
}

fn write_xattrs(local: &LocalFileSystem, key: &ObjectPath, metadata: &BTreeMap<String, String>) {
    let Ok(path) = local.path_to_filesystem(key) else {
        return;
    };
    for (k, v) in metadata {
        if let Err(e) = xattr::set(&path, format!("{XATTR_PREFIX}{k}"), v.as_bytes()) {
            // A file system without user xattrs: files keep default owners and modes.
            tracing::warn!(path = %path.display(), error = %e, "cannot keep POSIX attributes");
            return;
        }
    }
    for key in ["mtime", "atime", "ctime"] {
        if !metadata.contains_key(key) {
            let _ = xattr::remove(&path, format!("{XATTR_PREFIX}{key}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_in_s3fs_form() {
        let p = Posix {
            uid: 1000,
            gid: 2000,
            mode: S_IFREG | 0o640,
            mtime: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            atime: Some(UNIX_EPOCH + Duration::new(1_600_000_000, 5)),
            ctime: None,
        };
        let m = p.to_metadata();
        assert_eq!(m["mode"], "33184", "decimal st_mode, as s3fs writes it");
        assert_eq!(m["mtime"], "1700000000");
        assert_eq!(m["atime"], "1600000000.000000005", "nanoseconds kept");
        assert_eq!(Posix::from_metadata(&m), Some(p));
        let mut partial = m.clone();
        partial.remove("gid");
        assert_eq!(Posix::from_metadata(&partial), None);
        let mut fractional = m;
        fractional.insert("mtime".into(), "1700000000.5".into());
        assert_eq!(
            Posix::from_metadata(&fractional).and_then(|p| p.mtime),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000))
        );
    }

    #[tokio::test]
    async fn local_objects_keep_attributes_across_renames() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("store"));
        let objects =
            Objects::new(store.clone(), Some(dir.path().to_owned()), None).expect("objects");
        let key = ObjectPath::from("a/b.txt");
        let posix = Posix {
            uid: 7,
            gid: 8,
            mode: S_IFREG | 0o600,
            ..Posix::default()
        };
        objects
            .put(&key, PutPayload::from_static(b"x"), posix)
            .await
            .expect("put");
        assert_eq!(objects.head(&key).await.expect("head").1, Some(posix));
        let moved = ObjectPath::from("c/d.txt");
        store.rename(&key, &moved).await.expect("rename");
        assert_eq!(objects.head(&moved).await.expect("head").1, Some(posix));
    }
}
