//! Open files and directories.
//!
//! A handle owns what one open needs: a reader its read-ahead or the small body its lookup
//! read, a writer its [`Writer`]. The table's lock is held only to find, add or remove a
//! handle; a handle's own async lock orders that handle's operations (a flush waits for the
//! write before it, and for another flush of the same handle, so that when it returns the data
//! is in the bucket).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::inodes::Kind;
use super::prefetch::Prefetch;
use super::writer::Writer;

pub enum Access {
    Read {
        /// A small file's whole content, read by the lookup before this open.
        body: Option<Bytes>,
        /// Read-ahead, for handles without a body on remote buckets.
        prefetch: Option<tokio::sync::Mutex<Prefetch>>,
    },
    Write(tokio::sync::Mutex<Writer>),
}

pub struct FileHandle {
    pub ino: u64,
    pub access: Access,
}

/// A directory's entries as `readdir` returns them: inode, kind, name.
pub type Listing = Arc<Vec<(u64, Kind, String)>>;

#[derive(Default)]
pub struct Handles {
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    /// Listings of open directories (a large directory is read in many `readdir` calls),
    /// taken at the first call.
    dirs: Mutex<HashMap<u64, Option<Listing>>>,
    next: AtomicU64,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handles {
    fn next_fh(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn open_file(&self, handle: FileHandle) -> u64 {
        let fh = self.next_fh();
        locked(&self.files).insert(fh, Arc::new(handle));
        fh
    }

    pub fn file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        locked(&self.files).get(&fh).cloned()
    }

    pub fn close_file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        locked(&self.files).remove(&fh)
    }

    /// The handles writing `ino`.
    pub fn writers_of(&self, ino: u64) -> Vec<Arc<FileHandle>> {
        locked(&self.files)
            .values()
            .filter(|h| h.ino == ino && matches!(h.access, Access::Write(_)))
            .cloned()
            .collect()
    }

    /// Whether a handle open for writing holds `ino`'s newest bytes.
    pub fn writing(&self, ino: u64) -> bool {
        locked(&self.files)
            .values()
            .any(|h| h.ino == ino && matches!(h.access, Access::Write(_)))
    }

    pub fn open_dir(&self) -> u64 {
        let fh = self.next_fh();
        locked(&self.dirs).insert(fh, None);
        fh
    }

    /// The listing an open directory took, if it took one.
    pub fn dir_listing(&self, fh: u64) -> Option<Listing> {
        locked(&self.dirs).get(&fh).cloned().flatten()
    }

    pub fn set_dir_listing(&self, fh: u64, listing: Listing) {
        if let Some(slot) = locked(&self.dirs).get_mut(&fh) {
            *slot = Some(listing);
        }
    }

    pub fn close_dir(&self, fh: u64) {
        locked(&self.dirs).remove(&fh);
    }

    /// Open files and directories (for tests and memory figures).
    pub fn len(&self) -> usize {
        locked(&self.files).len() + locked(&self.dirs).len()
    }
}
