//! Uploading a file while it is written front to back.
//!
//! Writers stage their bytes in a local file (see `fs`). For the common case, a new file written
//! sequentially, waiting for `close` to start uploading would double the time a large copy
//! takes. Once such a file passes the multipart threshold, its completed parts go up while the
//! writer continues, at most four in flight (the same backpressure as the upload at close). The
//! first write that lands before what was already sent (a seek back, a truncate) gives up: the
//! started upload is aborted and the file is uploaded whole at close, as before. Data is in the
//! bucket only when `flush`/`fsync`/`close` finishes the upload, as without streaming.

use std::sync::Mutex;

use object_store::WriteMultipart;
use object_store::path::Path as ObjectPath;

use super::objects::{Objects, Posix};
use super::staging::{Staging, lock};

/// A staging file's I/O error as the upload's.
fn staging_error(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "staging",
        source: Box::new(e),
    }
}

/// Reads `buf.len()` bytes at `offset` of the staged file, holding its lock only for the copy.
fn read_staged(staging: &Mutex<Staging>, buf: &mut [u8], offset: u64) -> object_store::Result<()> {
    lock(staging)
        .read_exact_at(buf, offset)
        .map_err(staging_error)
}

/// Where one handle's streaming upload stands.
pub struct Streaming {
    key: ObjectPath,
    posix: Posix,
    writer: Option<WriteMultipart>,
    /// Bytes handed to the upload (whole parts).
    sent: u64,
    /// Bytes staged so far.
    len: u64,
    /// False once a write went behind `sent`, or the upload finished: upload whole at close.
    viable: bool,
}

/// What a flush should do after [`Streaming::finish`].
pub enum Finished {
    /// The object is complete with `len` bytes.
    Uploaded(u64),
    /// Nothing was streamed (or it was given up): upload the staging file whole.
    UploadWhole,
}

impl Streaming {
    pub fn new(key: ObjectPath, posix: Posix) -> Self {
        Streaming {
            key,
            posix,
            writer: None,
            sent: 0,
            len: 0,
            viable: true,
        }
    }

    /// Gives up streaming: aborts what was started.
    pub async fn give_up(&mut self) {
        self.viable = false;
        if let Some(writer) = self.writer.take() {
            let _ = writer.abort().await;
        }
    }

    /// Records a write of `len` bytes at `offset` (already in `staging`) and sends the parts it
    /// completed. Errors give up streaming; the close uploads the file whole.
    pub async fn wrote(
        &mut self,
        objects: &Objects,
        staging: &Mutex<Staging>,
        offset: u64,
        len: u64,
        threshold: u64,
        part: usize,
    ) {
        if !self.viable {
            return;
        }
        if offset < self.sent {
            self.give_up().await;
            return;
        }
        self.len = self.len.max(offset + len);
        if self.len < threshold {
            return;
        }
        // Only what lies before the write position is final: a writer may still fill a hole
        // it left behind, so parts are sent up to the lowest byte not yet written in order.
        let complete = offset + len;
        while complete - self.sent >= part as u64 {
            if self.writer.is_none() {
                match objects.put_multipart(&self.key, self.posix).await {
                    Ok(upload) => {
                        self.writer = Some(WriteMultipart::new_with_chunk_size(upload, part))
                    }
                    Err(_) => {
                        self.viable = false;
                        return;
                    }
                }
            }
            let mut buf = vec![0u8; part];
            if read_staged(staging, &mut buf, self.sent).is_err() {
                self.give_up().await;
                return;
            }
            let Some(writer) = self.writer.as_mut() else {
                return;
            };
            if writer.wait_for_capacity(4).await.is_err() {
                self.give_up().await;
                return;
            }
            writer.put(buf.into());
            self.sent += part as u64;
        }
    }

    /// A truncate to `size`: below what was sent, streaming stops.
    pub async fn truncated(&mut self, size: u64) {
        if size < self.sent {
            self.give_up().await;
        } else {
            self.len = size;
        }
    }

    /// Completes the upload with the rest of `staging` if streaming is still on, for `key`
    /// with `posix` (a rename or chmod since the start means the whole file goes up again).
    pub async fn finish(
        &mut self,
        objects: &Objects,
        staging: &Mutex<Staging>,
        key: &ObjectPath,
        posix: Posix,
    ) -> object_store::Result<Finished> {
        if !self.viable || self.writer.is_none() || *key != self.key || posix != self.posix {
            self.give_up().await;
            return Ok(Finished::UploadWhole);
        }
        let total = lock(staging).size().map_err(staging_error)?;
        let Some(mut writer) = self.writer.take() else {
            return Ok(Finished::UploadWhole);
        };
        self.viable = false;
        if total < self.sent {
            let _ = writer.abort().await;
            return Ok(Finished::UploadWhole);
        }
        let mut at = self.sent;
        let chunk = 8 << 20;
        while at < total {
            let n = (total - at).min(chunk) as usize;
            let mut buf = vec![0u8; n];
            read_staged(staging, &mut buf, at)?;
            writer.wait_for_capacity(4).await?;
            writer.write(&buf);
            at += n as u64;
        }
        writer.finish().await?;
        objects.finished(key, posix);
        Ok(Finished::Uploaded(total))
    }
}
