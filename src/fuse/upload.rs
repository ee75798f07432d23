//! Multipart uploads of one mount: every part's buffer comes from the mount's [`Parts`], which
//! bounds the memory all uploads hold together and hands sent buffers back out.
//!
//! A buffer is taken when a part starts to fill (held over staging as it is written, see
//! `part`) or when a part is read from staging, and held until its upload has finished; then it goes back
//! to the mount's free list, so a steady upload reuses a few buffers whose pages are already
//! mapped (a new 8 MiB buffer costs the kernel 2,048 zeroed pages). When the last buffer in
//! use comes back, the free list is emptied: an idle mount holds none.
//!
//! Buffers begin on a [`DIRECT_ALIGN`] boundary, so staging can write a complete part with
//! direct I/O.
//!
//! Filling parts are an optimisation and may only take a buffer while [`RESERVED`] stay free
//! for reads from staging, which wait for one: parts in flight always finish and return theirs,
//! so an upload waiting for a buffer never waits on a writer that sits on a half-filled part.

use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use object_store::{MultipartUpload, PutPayload, PutResult};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// Buffers a filling part must leave free for reads from staging.
pub const RESERVED: usize = 2;
/// Where part buffers begin: a multiple of this (the page size, which also satisfies any
/// device's direct I/O alignment up to 4 KiB sectors).
pub const DIRECT_ALIGN: usize = 4096;

/// An empty buffer of at least `size` bytes that begins on a [`DIRECT_ALIGN`] boundary.
fn aligned(size: usize) -> BytesMut {
    let mut bytes = BytesMut::with_capacity(size + DIRECT_ALIGN);
    let skip = bytes.as_ptr().align_offset(DIRECT_ALIGN);
    bytes.resize(skip, 0);
    bytes.advance(skip);
    bytes
}

/// The part buffers of one mount.
#[derive(Clone)]
pub struct Parts {
    permits: Arc<Semaphore>,
    total: usize,
    size: usize,
    free: Arc<Mutex<Vec<BytesMut>>>,
}

impl Parts {
    /// Parts of `size` bytes, as many as fit in `budget` bytes (at least [`RESERVED`] + 1).
    pub fn new(budget: u64, size: usize) -> Self {
        let total = ((budget / size as u64) as usize).max(RESERVED + 1);
        Parts {
            permits: Arc::new(Semaphore::new(total)),
            total,
            size,
            free: Arc::default(),
        }
    }

    /// Buffers not in use now.
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// A buffer, once the budget has room for it.
    pub async fn buffer(&self) -> PartBuf {
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed; should it be, the part goes without a lease.
            Err(_) => return self.unleased(),
        };
        self.leased(permit)
    }

    /// A buffer for a part filled ahead of its upload, if that leaves [`RESERVED`] free.
    pub fn spare(&self) -> Option<PartBuf> {
        if self.permits.available_permits() <= RESERVED {
            return None;
        }
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        Some(self.leased(permit))
    }

    fn leased(&self, permit: OwnedSemaphorePermit) -> PartBuf {
        let bytes = self
            .free
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop()
            .unwrap_or_else(|| aligned(self.size));
        PartBuf {
            bytes,
            lease: Some((permit, self.clone())),
        }
    }

    fn unleased(&self) -> PartBuf {
        PartBuf {
            bytes: aligned(self.size),
            lease: None,
        }
    }

    /// Takes a buffer back from a lease that ends now. The lease ends under the free list's
    /// lock, so of two buffers coming back at once one sees the other's end.
    fn give_back(&self, mut bytes: BytesMut, permit: OwnedSemaphorePermit) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        // The ending lease is still counted: is this the last buffer in use?
        if self.permits.available_permits() + 1 == self.total {
            free.clear();
        } else if bytes.capacity() >= self.size && free.len() < self.total {
            bytes.clear();
            free.push(bytes);
        }
        drop(permit);
    }
}

/// One part's buffer and its share of the mount's budget.
pub struct PartBuf {
    pub bytes: BytesMut,
    lease: Option<(OwnedSemaphorePermit, Parts)>,
}

/// The buffer goes back for reuse as its lease ends.
impl Drop for PartBuf {
    fn drop(&mut self) {
        if let Some((permit, parts)) = self.lease.take() {
            parts.give_back(std::mem::take(&mut self.bytes), permit);
        }
    }
}

/// A multipart upload with at most `in_flight` parts being sent at once.
pub struct Upload {
    upload: Box<dyn MultipartUpload>,
    tasks: JoinSet<object_store::Result<()>>,
    in_flight: usize,
}

impl Upload {
    pub fn new(upload: Box<dyn MultipartUpload>, in_flight: usize) -> Self {
        Upload {
            upload,
            tasks: JoinSet::new(),
            in_flight: in_flight.max(1),
        }
    }

    /// Waits until fewer than `n` parts are in flight; the first failed part fails this.
    async fn wait_below(&mut self, n: usize) -> object_store::Result<()> {
        while self.tasks.len() >= n.max(1) {
            match self.tasks.join_next().await {
                Some(Ok(result)) => result?,
                Some(Err(e)) => {
                    return Err(object_store::Error::JoinError { source: e });
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Sends `part` (its whole buffer) as the next part, once there is room in flight.
    pub async fn send(&mut self, mut part: PartBuf) -> object_store::Result<()> {
        self.wait_below(self.in_flight).await?;
        let frozen = std::mem::take(&mut part.bytes).freeze();
        let sending = self.upload.put_part(PutPayload::from(frozen.clone()));
        self.tasks.spawn(async move {
            let result = sending.await;
            // The request no longer holds the bytes once it has finished.
            if let Ok(bytes) = frozen.try_into_mut() {
                part.bytes = bytes;
            }
            drop(part);
            result
        });
        Ok(())
    }

    /// Waits for every part and completes the upload; aborts it if a part failed.
    pub async fn finish(mut self) -> object_store::Result<PutResult> {
        let mut sent = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            let result = match joined {
                Ok(result) => result,
                Err(e) => Err(object_store::Error::JoinError { source: e }),
            };
            if sent.is_ok() {
                sent = result;
            }
        }
        if let Err(e) = sent {
            let _ = self.upload.abort().await;
            return Err(e);
        }
        match self.upload.complete().await {
            Ok(done) => Ok(done),
            Err(e) => {
                let _ = self.upload.abort().await;
                Err(e)
            }
        }
    }

    /// Stops the parts in flight and aborts the upload.
    pub async fn abort(mut self) {
        self.tasks.shutdown().await;
        let _ = self.upload.abort().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::path::Path as ObjectPath;
    use object_store::{ObjectStore, ObjectStoreExt};

    #[tokio::test]
    async fn parts_are_bounded_by_the_budget_and_their_buffers_come_back() {
        let parts = Parts::new(4 * 16, 16);
        let a = parts.buffer().await;
        let b = parts.spare().expect("room beyond the reserve");
        assert_eq!(parts.available(), 2);
        assert!(
            parts.spare().is_none(),
            "the reserve is for reads from staging"
        );
        let c = parts.buffer().await;
        let d = parts.buffer().await;
        assert_eq!(parts.available(), 0);
        let waiting = tokio::spawn({
            let parts = parts.clone();
            async move { parts.buffer().await }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "a fifth buffer waits for one to end"
        );
        let mut a = a;
        a.bytes = BytesMut::new();
        drop(a);
        let e = waiting.await.expect("fifth");
        assert!(
            parts.free.lock().expect("free").is_empty(),
            "a short buffer is not kept"
        );
        drop(e);
        assert_eq!(
            parts.free.lock().expect("free").len(),
            1,
            "kept while others are in use"
        );
        drop((b, c));
        assert_eq!(parts.free.lock().expect("free").len(), 3);
        drop(d);
        assert!(
            parts.free.lock().expect("free").is_empty(),
            "the last one empties the list"
        );
        assert_eq!(parts.available(), 4);
    }

    #[tokio::test]
    async fn an_upload_reuses_its_buffers_and_the_idle_mount_keeps_none() {
        // A store that lets go of a part once it is written (the in-memory one keeps them).
        let dir = tempfile::tempdir().expect("dir");
        let store: Arc<dyn ObjectStore> =
            Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("store"));
        let key = ObjectPath::from("big");
        let parts = Parts::new(8 * 1024, 1024);
        let mut upload = Upload::new(store.put_multipart(&key).await.expect("start"), 2);
        let mut seen = std::collections::HashSet::new();
        for i in 0..10u8 {
            let mut part = parts.buffer().await;
            seen.insert(part.bytes.as_ptr() as usize);
            assert_eq!(
                part.bytes.as_ptr() as usize % DIRECT_ALIGN,
                0,
                "part {i}: an aligned buffer, reused or new"
            );
            part.bytes.resize(1024, i);
            upload.send(part).await.expect("send");
        }
        upload.finish().await.expect("finish");
        assert!(seen.len() <= 4, "{} buffers for 10 parts", seen.len());
        assert_eq!(parts.available(), 8);
        assert!(
            parts.free.lock().expect("free").is_empty(),
            "idle: none kept"
        );
        let body = store
            .get(&key)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(body.len(), 10 * 1024);
        assert!(
            body.chunks(1024)
                .enumerate()
                .all(|(i, c)| c.iter().all(|&b| b == i as u8))
        );
    }
}
