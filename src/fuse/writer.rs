//! One open file's writes: staged locally, uploaded when the file is flushed, fsynced or
//! closed, so a reader opening the file after the writer closed it sees the data.
//!
//! A file written from empty front to back (a copy, a download) is uploaded while it is
//! written: once it passes [`MULTIPART_THRESHOLD`], each completed part goes up while the writer
//! continues, at most [`PARTS_IN_FLIGHT`] at a time. The first write that lands before what was
//! sent (a seek back, a truncate) gives that up: the started upload is aborted and the file goes
//! up whole at the flush. Either way the object exists only when the flush finishes, and a flush
//! that fails leaves the writer dirty, so the next flush, fsync or close tries again.

use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};

use super::error::FsError;
use super::objects::{Objects, Posix};
use super::staging::{MemoryBudget, Staging};

/// Uploads larger than this use multipart.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// One part of a multipart upload.
pub const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once.
pub const PARTS_IN_FLIGHT: usize = 4;

/// Where the upload of a file written from empty stands.
enum Stream {
    /// Not streaming: the flush uploads the staged bytes whole.
    Off,
    /// Streaming to `key` with `posix`; parts up to `sent` are handed to `upload`.
    On {
        key: ObjectPath,
        posix: Posix,
        upload: Option<WriteMultipart>,
        sent: u64,
    },
}

pub struct Writer {
    staging: Staging,
    dir: Arc<Path>,
    dirty: bool,
    stream: Stream,
}

impl Writer {
    /// An empty file that will become `key` with `posix`: streamed as it is written. `dirty`
    /// for a new or truncated file, whose close must write the object even when nothing was
    /// written.
    pub fn empty(
        memory: &MemoryBudget,
        dir: Arc<Path>,
        key: ObjectPath,
        posix: Posix,
        dirty: bool,
    ) -> Self {
        Writer {
            staging: Staging::new(memory),
            dir,
            dirty,
            stream: Stream::On {
                key,
                posix,
                upload: None,
                sent: 0,
            },
        }
    }

    /// The object at `key`, copied into staging to be changed; clean until written.
    pub async fn of_object(
        objects: &Objects,
        key: &ObjectPath,
        memory: &MemoryBudget,
        dir: Arc<Path>,
    ) -> Result<Self, FsError> {
        let mut staging = Staging::new(memory);
        let mut body = objects.store().get(key).await?.into_stream();
        let mut at = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            staging.write_at(&chunk, at, &dir)?;
            at += chunk.len() as u64;
        }
        Ok(Writer {
            staging,
            dir,
            dirty: false,
            stream: Stream::Off,
        })
    }

    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Reads the staged bytes: a writer reads its own writes.
    pub fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
        let mut buf = vec![0u8; len as usize];
        let n = self.staging.read_at(&mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Stages `data` at `offset` and sends the parts it completed.
    pub async fn write(
        &mut self,
        objects: &Objects,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FsError> {
        self.staging.write_at(data, offset, &self.dir)?;
        self.dirty = true;
        self.stream_parts(objects, offset, data.len() as u64).await;
        Ok(())
    }

    /// Truncates or extends to `size`.
    pub async fn set_len(&mut self, size: u64) -> Result<(), FsError> {
        self.staging.set_len(size, &self.dir)?;
        self.dirty = true;
        if let Stream::On { sent, .. } = &self.stream
            && size < *sent
        {
            self.give_up().await;
        }
        Ok(())
    }

    /// Streaming's part of a write of `len` bytes at `offset`. Its failures only give
    /// streaming up: the flush uploads the file whole.
    async fn stream_parts(&mut self, objects: &Objects, offset: u64, len: u64) {
        let Stream::On { sent, .. } = &self.stream else {
            return;
        };
        if offset < *sent {
            self.give_up().await;
            return;
        }
        // Only what lies before the write position is final: a writer may still fill a hole
        // it left behind.
        let complete = offset + len;
        if complete < MULTIPART_THRESHOLD {
            return;
        }
        loop {
            let Stream::On {
                key,
                posix,
                upload,
                sent,
            } = &mut self.stream
            else {
                return;
            };
            if complete - *sent < PART_SIZE as u64 {
                return;
            }
            if upload.is_none() {
                match objects.put_multipart(key, *posix).await {
                    Ok(started) => {
                        *upload = Some(WriteMultipart::new_with_chunk_size(started, PART_SIZE))
                    }
                    Err(e) => {
                        tracing::debug!(%key, error = %e, "streaming upload not started");
                        self.stream = Stream::Off;
                        return;
                    }
                }
            }
            let mut part = vec![0u8; PART_SIZE];
            let staged = self.staging.read_exact_at(&mut part, *sent);
            let Some(writer) = upload.as_mut() else {
                return;
            };
            if staged.is_err() || writer.wait_for_capacity(PARTS_IN_FLIGHT).await.is_err() {
                self.give_up().await;
                return;
            }
            writer.put(part.into());
            *sent += PART_SIZE as u64;
        }
    }

    async fn give_up(&mut self) {
        if let Stream::On {
            upload: Some(upload),
            ..
        } = std::mem::replace(&mut self.stream, Stream::Off)
        {
            let _ = upload.abort().await;
        }
    }

    /// Uploads the staged bytes as `key` with `posix` if anything changed since the last
    /// upload; returns the size uploaded. A failure leaves the writer dirty.
    pub async fn upload(
        &mut self,
        objects: &Objects,
        key: &ObjectPath,
        posix: Posix,
    ) -> Result<Option<u64>, FsError> {
        if !self.dirty {
            return Ok(None);
        }
        let result = self.upload_now(objects, key, posix).await;
        self.dirty = result.is_err();
        result.map(Some)
    }

    async fn upload_now(
        &mut self,
        objects: &Objects,
        key: &ObjectPath,
        posix: Posix,
    ) -> Result<u64, FsError> {
        let len = self.staging.size()?;
        let stream = std::mem::replace(&mut self.stream, Stream::Off);
        if let Stream::On {
            key: streamed_key,
            posix: streamed_posix,
            upload: Some(mut upload),
            sent,
        } = stream
        {
            // A rename or chmod since the upload started: the object goes up whole again.
            if streamed_key != *key || streamed_posix != posix || len < sent {
                let _ = upload.abort().await;
            } else {
                Self::send_from(&self.staging, &mut upload, sent, len).await?;
                upload.finish().await?;
                objects.finished(key, posix);
                return Ok(len);
            }
        }
        if len <= MULTIPART_THRESHOLD {
            let body = match self.staging.bytes() {
                Some(bytes) => bytes,
                None => {
                    let mut buf = vec![0u8; len as usize];
                    self.staging.read_exact_at(&mut buf, 0)?;
                    buf.into()
                }
            };
            objects.put(key, PutPayload::from(body), posix).await?;
            return Ok(len);
        }
        let started = objects.put_multipart(key, posix).await?;
        let mut upload = WriteMultipart::new_with_chunk_size(started, PART_SIZE);
        if let Err(e) = Self::send_from(&self.staging, &mut upload, 0, len).await {
            let _ = upload.abort().await;
            return Err(e);
        }
        upload.finish().await?;
        objects.finished(key, posix);
        Ok(len)
    }

    /// Hands the staged bytes from `at` to `end` to `upload`, a part at a time.
    async fn send_from(
        staging: &Staging,
        upload: &mut WriteMultipart,
        mut at: u64,
        end: u64,
    ) -> Result<(), FsError> {
        while at < end {
            let mut part = vec![0u8; (end - at).min(PART_SIZE as u64) as usize];
            staging.read_exact_at(&mut part, at)?;
            upload.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            at += part.len() as u64;
            upload.write(&part);
        }
        Ok(())
    }

    /// Gives up the writer's bytes (its file was removed): a started upload is aborted and
    /// nothing is uploaded.
    pub async fn discard(&mut self) {
        self.give_up().await;
        self.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::objects::S_IFREG;
    use crate::fuse::test_store::Counted;

    fn posix(mode: u32) -> Posix {
        Posix {
            uid: 1,
            gid: 1,
            mode: S_IFREG | mode,
            ..Posix::default()
        }
    }

    async fn body(store: &Counted, key: &ObjectPath) -> Vec<u8> {
        store
            .get(key)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body")
            .to_vec()
    }

    #[tokio::test]
    async fn a_file_written_in_order_streams_its_parts_and_a_seek_back_uploads_it_whole() {
        let store = Arc::new(Counted::default());
        let objects = Objects::new(store.clone(), None, None).expect("objects");
        let dir: Arc<Path> = tempfile::tempdir().expect("dir").keep().into();
        let memory = MemoryBudget::new(1 << 20);
        let key = ObjectPath::from("big");
        let mut w = Writer::empty(&memory, dir.clone(), key.clone(), posix(0o644), true);
        let chunk = vec![7u8; 1 << 20];
        for i in 0..20u64 {
            w.write(&objects, i << 20, &chunk).await.expect("write");
        }
        assert_eq!(
            store
                .multipart_starts
                .load(std::sync::atomic::Ordering::SeqCst),
            1,
            "the upload started while writing"
        );
        assert_eq!(
            w.upload(&objects, &key, posix(0o644))
                .await
                .expect("upload"),
            Some(20 << 20)
        );
        assert_eq!(body(&store, &key).await.len(), 20 << 20);
        assert_eq!(
            w.upload(&objects, &key, posix(0o644)).await.expect("clean"),
            None
        );

        let key = ObjectPath::from("rewritten");
        let mut w = Writer::empty(&memory, dir.clone(), key.clone(), posix(0o644), true);
        for i in 0..20u64 {
            w.write(&objects, i << 20, &chunk).await.expect("write");
        }
        w.write(&objects, 0, b"head").await.expect("seek back");
        w.upload(&objects, &key, posix(0o644))
            .await
            .expect("upload");
        let got = body(&store, &key).await;
        assert_eq!((&got[..4], got.len()), (&b"head"[..], 20 << 20));
    }

    #[tokio::test]
    async fn a_changed_object_is_staged_from_the_store_and_clean_until_written() {
        let store = Arc::new(Counted::default());
        let objects = Objects::new(store.clone(), None, None).expect("objects");
        let dir: Arc<Path> = tempfile::tempdir().expect("dir").keep().into();
        let memory = MemoryBudget::new(1 << 20);
        let key = ObjectPath::from("f");
        store
            .put(&key, PutPayload::from_static(b"hello"))
            .await
            .expect("put");
        let mut w = Writer::of_object(&objects, &key, &memory, dir)
            .await
            .expect("stage");
        assert_eq!(
            w.upload(&objects, &key, posix(0o600)).await.expect("clean"),
            None
        );
        w.write(&objects, 5, b" world").await.expect("append");
        assert_eq!(w.read(0, 64).expect("read"), b"hello world");
        w.set_len(4).await.expect("truncate");
        assert_eq!(
            w.upload(&objects, &key, posix(0o600))
                .await
                .expect("upload"),
            Some(4)
        );
        assert_eq!(body(&store, &key).await, b"hell");
    }
}
