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

use super::error::FsError;
use super::inodes::Kind;
use super::prefetch::Prefetch;
use super::writer::Writer;

/// One per open file, inside its handle's `Arc`: the read side's few hundred bytes in place
/// are not worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Access {
    Read {
        /// The object's ETag when this handle was opened: `body` is that version's.
        etag: Option<String>,
        /// A small file's whole content, read by the lookup before this open.
        body: Option<Bytes>,
        /// Read-ahead, for handles without a body on remote buckets.
        prefetch: Option<tokio::sync::Mutex<Prefetch>>,
    },
    /// Shared with a write in progress, which holds the lock from staging its bytes until
    /// their parts are sent (see `ObjectFs::write_now`).
    Write(Arc<tokio::sync::Mutex<Writer>>),
}

impl Access {
    pub fn write(writer: Writer) -> Self {
        Access::Write(Arc::new(tokio::sync::Mutex::new(writer)))
    }
}

pub struct FileHandle {
    pub ino: u64,
    pub access: Access,
}

/// One entry of an open directory: inode, kind, name.
pub type DirEntry = (u64, Kind, String);

/// Entries of `readdir` calls at most (a 32 KiB answer holds up to 1,024 short names).
const ENTRIES_PER_CALL: usize = 1024;

/// An open directory's entries, filled page by page by its listing task while `readdir` calls
/// read what has arrived: the kernel gets the first page's names (and `ls -l` their attributes)
/// while the later pages are still being listed.
pub struct DirReader {
    entries: Mutex<Vec<DirEntry>>,
    /// Entries there before the listing's (`.` and `..`): a call at offset 0 waits for more.
    head: usize,
    /// Entries arrived so far, and whether the listing ended (and whether it succeeded).
    progress: tokio::sync::watch::Sender<(usize, Option<bool>)>,
    failure: Mutex<Option<FsError>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

/// Held by a listing's task: a task that ends without finishing its listing (aborted by a
/// close or a rewind, or panicking) ends it as failed, so no `readdir` waits on it for ever.
pub struct Listing(pub Arc<DirReader>);

impl Drop for Listing {
    fn drop(&mut self) {
        self.0
            .finish(Err(FsError::Store(object_store::Error::Generic {
                store: "listing",
                source: "the directory's listing stopped before its end".into(),
            })));
    }
}

impl DirReader {
    /// Starts with `head`, the entries that come before the listing's.
    pub fn new(head: Vec<DirEntry>) -> Self {
        DirReader {
            head: head.len(),
            progress: tokio::sync::watch::Sender::new((head.len(), None)),
            entries: Mutex::new(head),
            failure: Mutex::default(),
            task: Mutex::default(),
        }
    }

    pub fn push(&self, more: Vec<DirEntry>) {
        let len = {
            let mut entries = locked(&self.entries);
            entries.extend(more);
            entries.len()
        };
        self.progress.send_modify(|p| p.0 = len);
    }

    /// The listing ended: with `Err`, what failed (for the call that reaches past it). Only
    /// the first end counts.
    pub fn finish(&self, result: Result<(), FsError>) {
        if self.progress.borrow().1.is_some() {
            return;
        }
        let ok = result.is_ok();
        if let Err(e) = result {
            *locked(&self.failure) = Some(e);
        }
        self.progress.send_modify(|p| p.1 = Some(ok));
    }

    pub fn set_task(&self, task: tokio::task::AbortHandle) {
        *locked(&self.task) = Some(task);
    }

    pub fn stop(&self) {
        if let Some(task) = locked(&self.task).take() {
            task.abort();
        }
    }

    /// Entries from `offset` on (up to [`ENTRIES_PER_CALL`]), once at least one has arrived
    /// (at offset 0, one of the listing's); none at the end of the listing. A failed or stopped
    /// listing fails the calls that reach past what it listed.
    pub async fn from(&self, offset: usize) -> Result<Vec<DirEntry>, FsError> {
        let mut progress = self.progress.subscribe();
        // The sender lives in `self`: waiting ends only by a change.
        let ended = progress
            .wait_for(|(len, end)| *len > offset.max(self.head) || end.is_some())
            .await
            .map(|p| p.1)
            .unwrap_or(Some(false));
        let entries = locked(&self.entries);
        if entries.len() <= offset && ended == Some(false) {
            // The first call past the end hears what failed; any later one that it failed.
            return Err(locked(&self.failure).take().unwrap_or_else(|| {
                FsError::Store(object_store::Error::Generic {
                    store: "listing",
                    source: "this directory's listing failed".into(),
                })
            }));
        }
        let end = entries.len().min(offset.saturating_add(ENTRIES_PER_CALL));
        Ok(entries.get(offset..end).unwrap_or_default().to_vec())
    }
}

#[derive(Default)]
pub struct Handles {
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    /// Open directories (a large directory is read in many `readdir` calls), with the
    /// listing their first call started.
    dirs: Mutex<HashMap<u64, Option<Arc<DirReader>>>>,
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

    /// The handle last opened for writing `ino`: what this mount reads of it while it is open.
    pub fn newest_writer(&self, ino: u64) -> Option<Arc<FileHandle>> {
        locked(&self.files)
            .iter()
            .filter(|(_, h)| h.ino == ino && matches!(h.access, Access::Write(_)))
            .max_by_key(|(fh, _)| **fh)
            .map(|(_, h)| h.clone())
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

    /// The listing an open directory started, if it started one.
    pub fn dir_reader(&self, fh: u64) -> Option<Arc<DirReader>> {
        locked(&self.dirs).get(&fh).cloned().flatten()
    }

    /// Gives open directory `fh` a new listing (a rewind lists again), stopping the one it had;
    /// false (and the new one stopped) when `fh` is not open.
    pub fn set_dir_reader(&self, fh: u64, reader: Arc<DirReader>) -> bool {
        let mut dirs = locked(&self.dirs);
        let Some(slot) = dirs.get_mut(&fh) else {
            drop(dirs);
            reader.stop();
            return false;
        };
        if let Some(old) = slot.replace(reader) {
            old.stop();
        }
        true
    }

    /// Closes an open directory; a listing still under way stops.
    pub fn close_dir(&self, fh: u64) {
        if let Some(Some(reader)) = locked(&self.dirs).remove(&fh) {
            reader.stop();
        }
    }

    /// Open files and directories (for tests and memory figures).
    pub fn len(&self) -> usize {
        locked(&self.files).len() + locked(&self.dirs).len()
    }
}
