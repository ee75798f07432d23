//! One open file's writes: staged locally, uploaded when the file is flushed, fsynced or
//! closed, so a reader opening the file after the writer closed it sees the data.
//!
//! A file written from empty front to back (a copy, a download) is uploaded while it is
//! written: once it passes [`MULTIPART_THRESHOLD`], each completed part goes up while the writer
//! continues, at most [`PARTS_IN_FLIGHT`] at a time, each from the buffer it was written into
//! (see `part`; part buffers come from the mount's budget, see `upload`). The first write that lands before what was
//! sent (a seek back, a truncate) gives that up: the started upload is aborted and the file goes
//! up whole at the flush. Either way the object exists only when the flush finishes, and a flush
//! that fails leaves the writer dirty, so the next flush, fsync or close tries again.
//!
//! Conflicts: S3 is the source of truth, as in S3 Files. A writer remembers what the object was
//! when it began ([`Base`]: absent, or an ETag); if another client changed or created it since,
//! the upload keeps S3's object and puts this writer's bytes under the file system's lost+found
//! prefix instead ([`Uploaded::LostAndFound`]), and this handle's later uploads go there too. A
//! new file is written with a create-only PUT (S3's `If-None-Match: *`), so a concurrent creator
//! is caught by the store itself; other uploads check the object's ETag with a HEAD first (a
//! multipart upload cannot be made conditional through `object_store`), which leaves a window
//! of that one request.

use std::path::Path;
use std::sync::Arc;

use futures_util::StreamExt;
use object_store::ObjectStoreExt;
use object_store::PutPayload;
use object_store::path::Path as ObjectPath;

use super::error::FsError;
use super::objects::{Objects, Posix};
use super::staging::{MemoryBudget, Staging};
use super::upload::{PartBuf, Parts, Upload};

/// Uploads larger than this use multipart.
pub const MULTIPART_THRESHOLD: u64 = 16 << 20;
/// One part of a multipart upload.
pub const PART_SIZE: usize = 8 << 20;
/// Parts of one upload in flight at once.
pub const PARTS_IN_FLIGHT: usize = 4;
/// Memory the part buffers of all of a mount's uploads may hold.
pub const PARTS_MEMORY: u64 = 8 * PART_SIZE as u64;

/// What a mount's writers share: staging memory, the staging directory, part buffers.
#[derive(Clone)]
pub struct Scratch {
    pub memory: MemoryBudget,
    pub dir: Arc<Path>,
    pub parts: Parts,
}

impl Scratch {
    pub fn new(dir: &Path, memory: u64) -> Self {
        Scratch {
            memory: MemoryBudget::new(memory),
            dir: dir.into(),
            parts: Parts::new(PARTS_MEMORY, PART_SIZE),
        }
    }
}

/// Where the upload of a file written from empty stands. One per open file, in place: the
/// few hundred bytes of the streaming variant are not worth a box.
#[allow(clippy::large_enum_variant)]
enum Stream {
    /// Not streaming: the flush uploads the staged bytes whole.
    Off,
    /// Streaming to `key` with `posix`; the parts before `start` are handed to `upload`.
    On {
        key: ObjectPath,
        posix: Posix,
        upload: Option<Upload>,
        start: u64,
    },
}

/// What the object was when a writer began, or at its last upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Base {
    /// Not known (attributes from a listing): no check.
    Unknown,
    /// No object: this is a new file.
    Absent,
    /// The object at this key had this ETag.
    ETag(ObjectPath, String),
}

impl Base {
    pub fn of(key: &ObjectPath, etag: Option<&str>) -> Base {
        match etag {
            Some(e) => Base::ETag(key.clone(), e.to_owned()),
            None => Base::Unknown,
        }
    }
}

/// What an upload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Uploaded {
    /// Nothing changed since the last upload.
    Clean,
    /// The object now holds `size` bytes, with ETag `etag`.
    Stored { size: u64, etag: Option<String> },
    /// The object changed elsewhere: it was kept, and these bytes went to `key`.
    LostAndFound { key: ObjectPath, size: u64 },
}

pub struct Writer {
    staging: Staging,
    scratch: Scratch,
    dirty: bool,
    stream: Stream,
    base: Base,
    /// Where this writer's uploads go after a conflict.
    diverted: Option<ObjectPath>,
    /// Parts staged and taken out, not sent yet: [`Writer::send_due`] sends them.
    due: Vec<Due>,
    /// A streamed upload given up, to abort.
    abandoned: Option<Upload>,
}

/// A complete part waiting to be sent.
enum Due {
    /// In the buffer it was filled in.
    Held(PartBuf),
    /// In the staged file, at this offset.
    Staged(u64),
}

impl Writer {
    /// An empty file that will become `key` with `posix`: streamed as it is written. `dirty`
    /// for a new or truncated file, whose close must write the object even when nothing was
    /// written.
    pub fn empty(
        scratch: &Scratch,
        key: ObjectPath,
        posix: Posix,
        dirty: bool,
        base: Base,
    ) -> Self {
        Writer {
            staging: Staging::new(&scratch.memory),
            scratch: scratch.clone(),
            dirty,
            base,
            diverted: None,
            due: Vec::new(),
            abandoned: None,
            stream: Stream::On {
                key,
                posix,
                upload: None,
                start: 0,
            },
        }
    }

    /// The object at `key`, copied into staging to be changed; clean until written.
    pub async fn of_object(
        objects: &Objects,
        key: &ObjectPath,
        scratch: &Scratch,
    ) -> Result<Self, FsError> {
        let mut staging = Staging::new(&scratch.memory);
        let got = objects.store().get(key).await?;
        let base = Base::of(key, got.meta.e_tag.as_deref());
        let mut body = got.into_stream();
        let mut at = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            staging.write_at(&chunk, at, &scratch.dir)?;
            at += chunk.len() as u64;
        }
        Ok(Writer {
            staging,
            scratch: scratch.clone(),
            dirty: false,
            stream: Stream::Off,
            base,
            diverted: None,
            due: Vec::new(),
            abandoned: None,
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
    #[cfg(test)]
    pub async fn write(
        &mut self,
        objects: &Objects,
        offset: u64,
        data: &[u8],
    ) -> Result<(), FsError> {
        self.stage(offset, data)?;
        self.send_due(objects).await;
        Ok(())
    }

    /// A write's first half, which never waits: stages `data` at `offset` and takes the
    /// parts it completed out for [`Writer::send_due`], which the holder of this writer calls
    /// before letting it go. Staging reads `data` here and keeps nothing of it, so the caller
    /// can stage straight from the kernel's request.
    pub fn stage(&mut self, offset: u64, data: &[u8]) -> Result<(), FsError> {
        if let Stream::On { start, .. } = self.stream
            && offset == start
        {
            self.hold_part(start);
        }
        self.staging.write_at(data, offset, &self.scratch.dir)?;
        self.dirty = true;
        self.take_parts(offset, data);
        Ok(())
    }

    /// Holds the part beginning at `start` in a buffer while it fills, if one is spare.
    fn hold_part(&mut self, start: u64) {
        if self.staging.holds_part() {
            return;
        }
        if let Some(buf) = self.scratch.parts.spare() {
            self.staging.hold(start, buf, PART_SIZE);
        }
    }

    /// Truncates or extends to `size`.
    pub async fn set_len(&mut self, size: u64) -> Result<(), FsError> {
        self.staging.set_len(size, &self.scratch.dir)?;
        self.dirty = true;
        if let Stream::On { start, .. } = self.stream
            && size < start
        {
            self.abandon();
        }
        self.settle().await;
        Ok(())
    }

    /// Streaming's part of staging `data` at `offset`: takes out the parts the write
    /// completed. Its failures only give streaming up: the flush uploads the file whole.
    fn take_parts(&mut self, offset: u64, data: &[u8]) {
        let Stream::On { start, .. } = self.stream else {
            return;
        };
        if offset < start {
            self.abandon();
            return;
        }
        // Only what lies before the write position is final: a writer may still fill a hole
        // it left behind.
        let complete = offset + data.len() as u64;
        if complete < MULTIPART_THRESHOLD {
            return;
        }
        let mut at = start;
        while complete - at >= PART_SIZE as u64 {
            let next = at + PART_SIZE as u64;
            match self.staging.take(at, PART_SIZE) {
                Ok(Some(buf)) => self.due.push(Due::Held(buf)),
                Ok(None) => self.due.push(Due::Staged(at)),
                Err(e) => {
                    tracing::debug!(error = %e, "streaming given up: the flush uploads the file whole");
                    self.abandon();
                    return;
                }
            }
            if let Stream::On { start, .. } = &mut self.stream {
                *start = next;
            }
            // What the write put in the next part starts it (the file has those bytes too).
            if offset < next && next < complete {
                self.hold_part(next);
                let skip = (next - offset) as usize;
                if let Err(e) = self
                    .staging
                    .write_at(&data[skip..], next, &self.scratch.dir)
                {
                    tracing::debug!(error = %e, "staging the next part");
                }
            }
            at = next;
        }
    }

    /// Sends the parts staging took out, starting the upload with the first. Its failures
    /// only give streaming up, as [`Writer::take_parts`]'s do.
    pub async fn send_due(&mut self, objects: &Objects) {
        self.settle().await;
        for due in std::mem::take(&mut self.due) {
            let Stream::On {
                key, posix, upload, ..
            } = &mut self.stream
            else {
                return;
            };
            if upload.is_none() {
                match objects.put_multipart(key, *posix).await {
                    Ok(started) => *upload = Some(Upload::new(started, PARTS_IN_FLIGHT)),
                    Err(e) => {
                        tracing::debug!(%key, error = %e, "streaming upload not started");
                        self.stream = Stream::Off;
                        return;
                    }
                }
            }
            let bytes = match due {
                Due::Held(buf) => Ok(buf),
                Due::Staged(at) => {
                    Self::staged_part(&self.staging, &self.scratch.parts, at, PART_SIZE).await
                }
            };
            let Stream::On {
                upload: Some(upload),
                ..
            } = &mut self.stream
            else {
                return;
            };
            let sent = match bytes {
                Ok(bytes) => upload.send(bytes).await.map_err(FsError::from),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                tracing::debug!(error = %e, "streaming given up: the flush uploads the file whole");
                self.abandon();
                self.settle().await;
                return;
            }
        }
    }

    /// `len` staged bytes at `at`, in a part buffer.
    async fn staged_part(
        staging: &Staging,
        parts: &Parts,
        at: u64,
        len: usize,
    ) -> Result<PartBuf, FsError> {
        let mut part = parts.buffer().await;
        part.bytes.resize(len, 0);
        staging.read_exact_at(&mut part.bytes, at)?;
        Ok(part)
    }

    /// Gives streaming up: the parts not sent are dropped (staging has their bytes) and the
    /// upload is left for [`Writer::settle`] to abort.
    fn abandon(&mut self) {
        self.due.clear();
        if let Stream::On {
            upload: Some(upload),
            ..
        } = std::mem::replace(&mut self.stream, Stream::Off)
        {
            self.abandoned = Some(upload);
        }
    }

    /// Aborts the upload streaming gave up.
    async fn settle(&mut self) {
        if let Some(upload) = self.abandoned.take() {
            upload.abort().await;
        }
    }

    /// Uploads the staged bytes as `key` with `posix` if anything changed since the last
    /// upload, unless the object changed elsewhere: then they go to a new key under
    /// `lost_found`. A failure leaves the writer dirty.
    pub async fn upload(
        &mut self,
        objects: &Objects,
        key: &ObjectPath,
        posix: Posix,
        lost_found: &ObjectPath,
    ) -> Result<Uploaded, FsError> {
        if !self.dirty {
            return Ok(Uploaded::Clean);
        }
        let result = self.upload_checked(objects, key, posix, lost_found).await;
        self.dirty = result.is_err();
        result
    }

    async fn upload_checked(
        &mut self,
        objects: &Objects,
        key: &ObjectPath,
        posix: Posix,
        lost_found: &ObjectPath,
    ) -> Result<Uploaded, FsError> {
        if self.diverted.is_none() && Self::changed_elsewhere(&self.base, objects, key).await? {
            self.diverted = Some(lost_found_key(lost_found, key));
        }
        if let Some(lost) = self.diverted.clone() {
            let (size, _) = self.upload_now(objects, &lost, posix, false).await?;
            return Ok(Uploaded::LostAndFound { key: lost, size });
        }
        let only_new = self.base == Base::Absent;
        match self.upload_now(objects, key, posix, only_new).await {
            Ok((size, etag)) => {
                self.base = Base::of(key, etag.as_deref());
                Ok(Uploaded::Stored { size, etag })
            }
            // Created by someone else since this file was: theirs stays.
            Err(FsError::Exists) if only_new => {
                let lost = lost_found_key(lost_found, key);
                self.diverted = Some(lost.clone());
                let (size, _) = self.upload_now(objects, &lost, posix, false).await?;
                Ok(Uploaded::LostAndFound { key: lost, size })
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the object at `key` is no longer what this writer began from.
    async fn changed_elsewhere(
        base: &Base,
        objects: &Objects,
        key: &ObjectPath,
    ) -> Result<bool, FsError> {
        let Base::ETag(base_key, etag) = base else {
            // Absent: the create-only PUT checks; Unknown: nothing to check against.
            return Ok(false);
        };
        if base_key != key {
            // Renamed here since: the old key's version says nothing of the new one.
            return Ok(false);
        }
        match objects.head(key).await {
            Ok((meta, _)) => Ok(meta.e_tag.as_deref() != Some(etag.as_str())),
            Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    /// Uploads the staged bytes to `key`; returns the size and the new ETag.
    async fn upload_now(
        &mut self,
        objects: &Objects,
        key: &ObjectPath,
        posix: Posix,
        only_new: bool,
    ) -> Result<(u64, Option<String>), FsError> {
        self.send_due(objects).await;
        let len = self.staging.size()?;
        let stream = match std::mem::replace(&mut self.stream, Stream::Off) {
            // No part sent yet: the file goes up whole now and goes on streaming after, to the
            // key and with the attributes of this upload. A new file is often flushed before
            // its first write (a shell's `> file` closes a duplicate of the descriptor).
            Stream::On { upload: None, .. } => {
                self.stream = Stream::On {
                    key: key.clone(),
                    posix,
                    upload: None,
                    start: 0,
                };
                Stream::Off
            }
            stream => stream,
        };
        if let Stream::On {
            key: streamed_key,
            posix: streamed_posix,
            upload: Some(mut upload),
            start: sent,
        } = stream
        {
            // A rename or chmod since the upload started: the object goes up whole again.
            if streamed_key != *key || streamed_posix != posix || len < sent {
                upload.abort().await;
            } else {
                let rest = if len == sent {
                    Ok(())
                } else {
                    match self.staging.take(sent, (len - sent) as usize) {
                        Ok(Some(part)) => upload.send(part).await.map_err(FsError::from),
                        Ok(None) => {
                            let parts = &self.scratch.parts;
                            Self::send_from(&self.staging, parts, &mut upload, sent, len).await
                        }
                        Err(e) => Err(e.into()),
                    }
                };
                if let Err(e) = rest {
                    upload.abort().await;
                    return Err(e);
                }
                let done = upload.finish().await?;
                objects.finished(key, posix);
                return Ok((len, done.e_tag));
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
            let etag = objects
                .put_new_or_any(key, PutPayload::from(body), posix, only_new)
                .await?;
            return Ok((len, etag));
        }
        let started = objects.put_multipart(key, posix).await?;
        let mut upload = Upload::new(started, PARTS_IN_FLIGHT);
        if let Err(e) =
            Self::send_from(&self.staging, &self.scratch.parts, &mut upload, 0, len).await
        {
            upload.abort().await;
            return Err(e);
        }
        let done = upload.finish().await?;
        objects.finished(key, posix);
        Ok((len, done.e_tag))
    }

    /// Hands the staged bytes from `at` to `end` to `upload`, a part at a time.
    async fn send_from(
        staging: &Staging,
        parts: &Parts,
        upload: &mut Upload,
        mut at: u64,
        end: u64,
    ) -> Result<(), FsError> {
        while at < end {
            let len = (end - at).min(PART_SIZE as u64) as usize;
            let part = Self::staged_part(staging, parts, at, len).await?;
            upload.send(part).await?;
            at += len as u64;
        }
        Ok(())
    }

    /// Gives up the writer's bytes (its file was removed): a started upload is aborted and
    /// nothing is uploaded.
    pub async fn discard(&mut self) {
        self.abandon();
        self.settle().await;
        self.dirty = false;
    }
}

/// A new key under `lost_found` for this writer's version of `key`: a random hex id and the
/// file's name (at most 100 bytes of it), as S3 Files names its lost+found files.
fn lost_found_key(lost_found: &ObjectPath, key: &ObjectPath) -> ObjectPath {
    let name = key.filename().unwrap_or("file");
    let mut end = name.len().min(100);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let id = fastrand::u64(..);
    lost_found
        .clone()
        .join(format!("{id:016x}-{}", &name[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::objects::S_IFREG;
    use crate::fuse::test_store::Counted;
    use std::sync::atomic::Ordering;

    fn posix(mode: u32) -> Posix {
        Posix {
            uid: 1,
            gid: 1,
            mode: S_IFREG | mode,
            ..Posix::default()
        }
    }

    async fn body(store: &Counted, key: &ObjectPath) -> Option<Vec<u8>> {
        let got = store.get(key).await.ok()?;
        Some(got.bytes().await.expect("body").to_vec())
    }

    struct Setup {
        store: Arc<Counted>,
        objects: Objects,
        scratch: Scratch,
        lost: ObjectPath,
    }

    fn setup() -> Setup {
        let store = Arc::new(Counted::default());
        Setup {
            objects: Objects::new(store.clone(), None, None).expect("objects"),
            store,
            scratch: Scratch::new(&tempfile::tempdir().expect("dir").keep(), 1 << 20),
            lost: ObjectPath::from("lost+found"),
        }
    }

    fn size_of(u: &Uploaded) -> Option<u64> {
        match u {
            Uploaded::Stored { size, .. } => Some(*size),
            _ => None,
        }
    }

    /// Uploads `w` as `key` (mode 0644), which must succeed.
    async fn upload(t: &Setup, w: &mut Writer, key: &ObjectPath) -> Uploaded {
        w.upload(&t.objects, key, posix(0o644), &t.lost)
            .await
            .expect("upload")
    }

    /// Asserts that one multipart upload has started (while the file was being written).
    fn streamed(t: &Setup) {
        assert_eq!(
            t.store.multipart_starts.load(Ordering::SeqCst),
            1,
            "the upload started while writing"
        );
    }

    #[tokio::test]
    async fn a_file_written_in_order_streams_its_parts_and_a_seek_back_uploads_it_whole() {
        let t = setup();
        let key = ObjectPath::from("big");
        let mut w = Writer::empty(&t.scratch, key.clone(), posix(0o644), true, Base::Absent);
        let chunk = vec![7u8; 1 << 20];
        for i in 0..20u64 {
            w.write(&t.objects, i << 20, &chunk).await.expect("write");
        }
        streamed(&t);
        assert_eq!(size_of(&upload(&t, &mut w, &key).await), Some(20 << 20));
        assert_eq!(body(&t.store, &key).await.map(|b| b.len()), Some(20 << 20));
        assert_eq!(upload(&t, &mut w, &key).await, Uploaded::Clean);

        let key = ObjectPath::from("rewritten");
        let mut w = Writer::empty(&t.scratch, key.clone(), posix(0o644), true, Base::Absent);
        for i in 0..20u64 {
            w.write(&t.objects, i << 20, &chunk).await.expect("write");
        }
        w.write(&t.objects, 0, b"head").await.expect("seek back");
        w.upload(&t.objects, &key, posix(0o644), &t.lost)
            .await
            .expect("upload");
        let got = body(&t.store, &key).await.expect("object");
        assert_eq!((&got[..4], got.len()), (&b"head"[..], 20 << 20));
    }

    #[tokio::test]
    async fn staging_never_calls_the_store_and_what_it_completes_waits_for_send_due() {
        let t = setup();
        let key = ObjectPath::from("staged");
        let mut w = Writer::empty(&t.scratch, key.clone(), posix(0o644), true, Base::Absent);
        let want = varied(24 << 20, 5);
        for (i, chunk) in want.chunks(1 << 20).enumerate() {
            w.stage((i as u64) << 20, chunk).expect("stage");
        }
        assert_eq!(t.store.multipart_starts.load(Ordering::SeqCst), 0);
        assert_eq!(w.due.len(), 3, "the parts before the write position");
        w.send_due(&t.objects).await;
        assert!(w.due.is_empty());
        streamed(&t);
        assert_eq!(size_of(&upload(&t, &mut w, &key).await), Some(24 << 20));
        assert!(body(&t.store, &key).await.expect("object") == want);
    }

    #[tokio::test]
    async fn a_flush_before_the_first_write_keeps_the_file_streaming() {
        // A shell's `> file` opens the file, duplicates the descriptor and closes the first:
        // the kernel flushes the new, empty file before the command writes a byte.
        let t = setup();
        let key = ObjectPath::from("redirected");
        let mut w = Writer::empty(&t.scratch, key.clone(), posix(0o644), true, Base::Absent);
        assert_eq!(size_of(&upload(&t, &mut w, &key).await), Some(0));
        let want = varied(20 << 20, 3);
        for (i, chunk) in want.chunks(1 << 20).enumerate() {
            w.write(&t.objects, (i as u64) << 20, chunk)
                .await
                .expect("write");
        }
        streamed(&t);
        assert_eq!(size_of(&upload(&t, &mut w, &key).await), Some(20 << 20));
        assert!(body(&t.store, &key).await.expect("object") == want);
    }

    /// Bytes that differ at every offset, so a part sent from the wrong place shows.
    fn varied(len: usize, seed: u64) -> Vec<u8> {
        (0..len as u64)
            .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
            .collect()
    }

    #[tokio::test]
    async fn streamed_parts_hold_exactly_what_was_written_with_or_without_spare_buffers() {
        for spares_left in [true, false] {
            let t = setup();
            // Without spares every part is read back from staging.
            let held: Vec<_> = if spares_left {
                Vec::new()
            } else {
                std::iter::from_fn(|| t.scratch.parts.spare()).collect()
            };
            let key = ObjectPath::from("odd");
            let mut w = Writer::empty(&t.scratch, key.clone(), posix(0o644), true, Base::Absent);
            let len = 29 * (1 << 20) + 12_345;
            let mut want = varied(len, 7);
            // Writes of an odd size, so they straddle part boundaries.
            let mut at = 0;
            for chunk in want.chunks(1_000_003) {
                w.write(&t.objects, at as u64, chunk).await.expect("write");
                at += chunk.len();
            }
            // A rewrite inside the part not yet sent.
            let patch = varied(4096, 99);
            let inside = 28 << 20;
            w.write(&t.objects, inside as u64, &patch)
                .await
                .expect("patch");
            want[inside..inside + patch.len()].copy_from_slice(&patch);
            assert_eq!(t.store.multipart_starts.load(Ordering::SeqCst), 1);
            assert_eq!(
                w.read(inside as u64, 8).expect("read own write"),
                &want[inside..inside + 8]
            );
            let up = w
                .upload(&t.objects, &key, posix(0o644), &t.lost)
                .await
                .expect("upload");
            assert_eq!(size_of(&up), Some(len as u64));
            let got = body(&t.store, &key).await.expect("object");
            assert!(got == want, "object differs (spares left: {spares_left})");
            drop(held);
            assert_eq!(
                t.scratch.parts.available(),
                (PARTS_MEMORY / PART_SIZE as u64) as usize,
                "every part buffer came back"
            );
        }
    }

    #[tokio::test]
    async fn a_hole_in_a_streamed_file_reads_as_zeros_in_the_object() {
        let t = setup();
        let key = ObjectPath::from("sparse");
        let mut w = Writer::empty(&t.scratch, key.clone(), posix(0o644), true, Base::Absent);
        let head = varied(17 << 20, 1);
        w.write(&t.objects, 0, &head).await.expect("head");
        // Jump 3 MiB ahead, past the end of the part being filled.
        let tail = varied(10 << 20, 2);
        let tail_at = (20 << 20) as u64;
        w.write(&t.objects, tail_at, &tail).await.expect("tail");
        w.upload(&t.objects, &key, posix(0o644), &t.lost)
            .await
            .expect("upload");
        let got = body(&t.store, &key).await.expect("object");
        assert_eq!(got.len(), (30 << 20) as usize);
        assert!(got[..head.len()] == head[..]);
        assert!(got[head.len()..tail_at as usize].iter().all(|&b| b == 0));
        assert!(got[tail_at as usize..] == tail[..]);
    }

    #[tokio::test]
    async fn a_changed_object_is_staged_from_the_store_and_clean_until_written() {
        let t = setup();
        let key = ObjectPath::from("f");
        t.store
            .put(&key, PutPayload::from_static(b"hello"))
            .await
            .expect("put");
        let mut w = Writer::of_object(&t.objects, &key, &t.scratch)
            .await
            .expect("stage");
        assert_eq!(
            w.upload(&t.objects, &key, posix(0o600), &t.lost)
                .await
                .expect("clean"),
            Uploaded::Clean
        );
        w.write(&t.objects, 5, b" world").await.expect("append");
        assert_eq!(w.read(0, 64).expect("read"), b"hello world");
        w.set_len(4).await.expect("truncate");
        let up = w
            .upload(&t.objects, &key, posix(0o600), &t.lost)
            .await
            .expect("upload");
        assert_eq!(size_of(&up), Some(4));
        assert_eq!(body(&t.store, &key).await.as_deref(), Some(&b"hell"[..]));
        // Its own upload is the new base: the next one is no conflict.
        w.write(&t.objects, 4, b"o").await.expect("write");
        let up = w
            .upload(&t.objects, &key, posix(0o600), &t.lost)
            .await
            .expect("upload");
        assert_eq!(size_of(&up), Some(5));
    }

    #[tokio::test]
    async fn an_object_changed_or_created_elsewhere_is_kept_and_our_bytes_go_to_lost_and_found() {
        let t = setup();
        let key = ObjectPath::from("shared");
        t.store
            .put(&key, PutPayload::from_static(b"v1"))
            .await
            .expect("put");
        let mut w = Writer::of_object(&t.objects, &key, &t.scratch)
            .await
            .expect("stage");
        w.write(&t.objects, 2, b" ours").await.expect("write");
        t.store
            .put(&key, PutPayload::from_static(b"theirs"))
            .await
            .expect("another writer");
        let Uploaded::LostAndFound { key: lost, size } = w
            .upload(&t.objects, &key, posix(0o644), &t.lost)
            .await
            .expect("upload")
        else {
            panic!("no conflict seen");
        };
        assert_eq!(size, 7);
        assert_eq!(
            body(&t.store, &key).await.as_deref(),
            Some(&b"theirs"[..]),
            "S3's version stays"
        );
        assert_eq!(
            body(&t.store, &lost).await.as_deref(),
            Some(&b"v1 ours"[..])
        );
        assert!(lost.as_ref().starts_with("lost+found/") && lost.as_ref().ends_with("-shared"));
        // Later uploads of this writer follow it there.
        w.write(&t.objects, 7, b"!").await.expect("write");
        let again = w
            .upload(&t.objects, &key, posix(0o644), &t.lost)
            .await
            .expect("upload");
        assert_eq!(
            again,
            Uploaded::LostAndFound {
                key: lost.clone(),
                size: 8
            }
        );
        assert_eq!(body(&t.store, &key).await.as_deref(), Some(&b"theirs"[..]));

        // A new file that someone else created first: the create-only PUT refuses.
        let key = ObjectPath::from("new");
        let mut w = Writer::empty(&t.scratch, key.clone(), posix(0o644), true, Base::Absent);
        w.write(&t.objects, 0, b"mine").await.expect("write");
        t.store
            .put(&key, PutPayload::from_static(b"first"))
            .await
            .expect("another creator");
        let up = w
            .upload(&t.objects, &key, posix(0o644), &t.lost)
            .await
            .expect("upload");
        assert!(
            matches!(up, Uploaded::LostAndFound { size: 4, .. }),
            "{up:?}"
        );
        assert_eq!(body(&t.store, &key).await.as_deref(), Some(&b"first"[..]));
    }
}
