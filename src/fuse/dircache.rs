//! Directory listings kept for lookups, and small files' bodies read by a lookup.
//!
//! A fresh listing answers lookups: names it lacks are absent without a request, and its sizes
//! pick how a file is fetched (NFS clients of S3 Files cache directory contents similarly).
//! The first lookup in a directory asks for its one name (a path walked through it, a single
//! file opened); a second one soon after (`ls -l`, a program opening many files) lists the
//! directory. This mount's own changes are applied to kept listings. One lock guards it all,
//! held only for map operations.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::inodes::Kind;

/// How long a listing answers lookups.
pub const DIR_TTL: Duration = Duration::from_secs(5);
/// Larger directories are not kept (their listings still answer `readdir`).
pub const DIR_CACHE_MAX: usize = 5000;
/// Directories remembered for the "second lookup lists" rule before old ones are dropped.
const LOOKED_UP_MAX: usize = 1024;
/// Bytes of small files kept per mount between lookup and open.
const BODIES_MAX: u64 = 32 << 20;
/// How long such a body waits for its open.
const BODY_TTL: Duration = Duration::from_secs(1);

/// A name in a directory listing, its kind and size.
pub type Entry = (String, Kind, u64);

/// What a directory listing says about a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listed {
    Absent,
    Dir,
    File(u64),
    /// No usable listing.
    Unknown,
}

struct DirEntries {
    /// `None`: too large to keep.
    names: Option<HashMap<String, (Kind, u64)>>,
    until: Instant,
}

impl DirEntries {
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

#[derive(Default)]
struct Inner {
    dirs: HashMap<String, DirEntries>,
    looked_up: HashMap<String, Instant>,
    bodies: HashMap<u64, (Bytes, Instant)>,
    body_bytes: u64,
}

#[derive(Default)]
pub struct DirCache {
    inner: Mutex<Inner>,
}

fn split(path: &str) -> (&str, &str) {
    path.rsplit_once('/').unwrap_or(("", path))
}

impl DirCache {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a fresh listing of `parent` says of `name`; `None` when there is none.
    pub fn lookup(&self, parent: &str, name: &str) -> Option<Listed> {
        let now = Instant::now();
        self.inner()
            .dirs
            .get(parent)
            .filter(|d| now < d.until)
            .map(|d| d.lookup(name))
    }

    /// Records a lookup in `parent` that no listing answered; true when one came shortly
    /// before, so listing the directory is worth it.
    pub fn worth_listing(&self, parent: &str) -> bool {
        let now = Instant::now();
        let mut inner = self.inner();
        let recent = inner
            .looked_up
            .get(parent)
            .is_some_and(|at| now.duration_since(*at) < DIR_TTL);
        if !recent {
            if inner.looked_up.len() >= LOOKED_UP_MAX {
                inner
                    .looked_up
                    .retain(|_, at| now.duration_since(*at) < DIR_TTL);
            }
            inner.looked_up.insert(parent.to_owned(), now);
        }
        recent
    }

    /// Keeps a listing of `path` (`None`: the directory is too large to keep).
    pub fn store(&self, path: &str, entries: Option<&[Entry]>) {
        let names = entries.filter(|e| e.len() <= DIR_CACHE_MAX).map(|entries| {
            entries
                .iter()
                .map(|(n, k, size)| (n.clone(), (*k, *size)))
                .collect()
        });
        let d = DirEntries {
            names,
            until: Instant::now() + DIR_TTL,
        };
        self.inner().dirs.insert(path.to_owned(), d);
    }

    /// Applies this mount's change at `path` (`None`: removed) to the kept listing of its
    /// parent.
    pub fn note(&self, path: &str, entry: Option<(Kind, u64)>) {
        let (parent, name) = split(path);
        let mut inner = self.inner();
        if let Some(d) = inner.dirs.get_mut(parent)
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

    /// Forgets the listings at and under `path`.
    pub fn forget_under(&self, path: &str) {
        let below = format!("{path}/");
        self.inner()
            .dirs
            .retain(|p, _| p != path && !p.starts_with(&below));
    }

    /// Keeps a small file's body, read by a lookup, for the open that usually follows.
    pub fn keep_body(&self, ino: u64, body: Bytes) {
        let now = Instant::now();
        let mut inner = self.inner();
        let expired: Vec<u64> = inner
            .bodies
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= BODY_TTL)
            .map(|(ino, _)| *ino)
            .collect();
        for old in expired {
            if let Some((b, _)) = inner.bodies.remove(&old) {
                inner.body_bytes -= b.len() as u64;
            }
        }
        if inner.body_bytes + body.len() as u64 <= BODIES_MAX {
            inner.body_bytes += body.len() as u64;
            if let Some((old, _)) = inner.bodies.insert(ino, (body, now)) {
                inner.body_bytes -= old.len() as u64;
            }
        }
    }

    /// The body a lookup just read for `ino`, if still fresh.
    pub fn take_body(&self, ino: u64) -> Option<Bytes> {
        let mut inner = self.inner();
        let (body, at) = inner.bodies.remove(&ino)?;
        inner.body_bytes -= body.len() as u64;
        (at.elapsed() < BODY_TTL).then_some(body)
    }

    /// Drops a kept body (its file changed).
    pub fn drop_body(&self, ino: u64) {
        let _ = self.take_body(ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_lookup_in_a_directory_is_worth_a_listing() {
        let cache = DirCache::default();
        assert!(!cache.worth_listing("d"));
        assert!(cache.worth_listing("d"));
        assert!(!cache.worth_listing("e"), "another directory starts over");
    }

    #[test]
    fn a_kept_listing_answers_and_follows_this_mounts_changes() {
        let cache = DirCache::default();
        assert_eq!(cache.lookup("d", "a"), None);
        let entries = vec![
            ("a".to_owned(), Kind::File, 3),
            ("s".to_owned(), Kind::Dir, 0),
        ];
        cache.store("d", Some(&entries));
        assert_eq!(cache.lookup("d", "a"), Some(Listed::File(3)));
        assert_eq!(cache.lookup("d", "s"), Some(Listed::Dir));
        assert_eq!(cache.lookup("d", "x"), Some(Listed::Absent));
        cache.note("d/x", Some((Kind::File, 0)));
        cache.note("d/a", None);
        assert_eq!(cache.lookup("d", "x"), Some(Listed::File(0)));
        assert_eq!(cache.lookup("d", "a"), Some(Listed::Absent));
        cache.store("big", None);
        assert_eq!(cache.lookup("big", "a"), Some(Listed::Unknown));
        cache.forget_under("d");
        assert_eq!(cache.lookup("d", "x"), None);
    }

    #[test]
    fn bodies_are_taken_once() {
        let cache = DirCache::default();
        cache.keep_body(7, Bytes::from_static(b"hi"));
        assert_eq!(cache.take_body(7).as_deref(), Some(&b"hi"[..]));
        assert_eq!(cache.take_body(7), None);
    }
}
