//! Read-ahead for sequential readers.
//!
//! The kernel asks for 128 KiB to 1 MiB per read; one GET per request would leave a sequential
//! reader waiting a round trip each time. A handle that reads sequentially gets one streaming
//! GET from where it is to the end of the file instead, pulled into a bounded buffer while the
//! reader consumes it: a large file takes one request. Reading from the start asks for the
//! whole object without a range, which some S3 servers serve much more cheaply (moto copies the
//! whole object for every ranged GET; measured: 2.9 ms per 128 KiB read for the first 128 MiB
//! with ranged windows, then 0.14 ms). A reader that stops early only leaves the stream's
//! buffer and the socket's in flight unread: dropping the stream closes the connection.
//!
//! Memory is bounded per mount: a stream holds one share of the mount's [`Budget`] (16 MiB of
//! buffered body ahead of the reader and 16 MiB kept behind it at most), and a handle that cannot
//! get one reads without read-ahead. A read that jumps ahead drops the stream and fetches just
//! what it asked for; a read behind the stream is fetched alone while the stream goes on, until
//! a second read continues it (the reader went back: the stream restarts there).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

/// Bytes kept behind the furthest read for reads that arrive out of order. The kernel has up to
/// `max_background` (12) read-ahead requests of up to 1 MiB in flight and FUSE threads take them
/// in any order; with 4 MiB kept, a 16 MiB read-ahead window made most requests miss and reset
/// the stream, and a 1 GiB read on moto never finished (found with `read_ahead_kb` at 16384).
const KEEP_BEHIND: u64 = 16 << 20;
/// What a stream's channel can hold ahead of the reader.
pub const STREAM_BUFFER: u64 = 16 << 20;
/// Budget share of one stream: its channel and what it keeps behind.
pub const STREAM_SHARE: u64 = STREAM_BUFFER + KEEP_BEHIND;
/// Pieces a stream's channel holds; body frames are at most 64 KiB, so at most 16 MiB.
const CHANNEL_PIECES: usize = 256;

/// Read-ahead memory of one mount, in whole stream buffers.
#[derive(Clone)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    pub fn new(bytes: u64) -> Self {
        Budget(Arc::new(Semaphore::new((bytes / STREAM_SHARE) as usize)))
    }

    /// Streams that could still start.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// A streaming GET of `start..end` feeding a channel.
struct Stream {
    /// Next byte the channel will deliver.
    next: u64,
    end: u64,
    rx: mpsc::Receiver<object_store::Result<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Read-ahead state of one open file.
pub struct Prefetch {
    budget: Budget,
    permit: Option<OwnedSemaphorePermit>,
    /// Where the previous read ended.
    last_end: Option<u64>,
    stream: Option<Stream>,
    /// Bytes received and not yet read, starting at `pending_at`.
    pending: VecDeque<Bytes>,
    pending_at: u64,
    /// Where the previous read behind the stream ended (see [`Prefetch::read`]).
    behind_end: Option<u64>,
    /// Streams started and reads served by their own ranged GET (checked by the tests).
    streams: u64,
    ranged: u64,
}

impl Prefetch {
    pub fn new(budget: &Budget) -> Self {
        Prefetch {
            budget: budget.clone(),
            permit: None,
            last_end: None,
            stream: None,
            pending: VecDeque::new(),
            pending_at: 0,
            behind_end: None,
            streams: 0,
            ranged: 0,
        }
    }

    /// Fetches `range` with its own ranged GET, outside any stream.
    async fn alone(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        key: &ObjectPath,
        range: Range<u64>,
    ) -> object_store::Result<Vec<u8>> {
        self.ranged += 1;
        Ok(store.get_range(key, range).await?.to_vec())
    }

    fn reset(&mut self) {
        self.stream = None;
        self.pending.clear();
        self.permit = None;
    }

    /// Starts a streaming GET from `start` to the end of the file; `continues` keeps what was
    /// received before it (a stream that ended early, picked up where it stopped).
    fn start(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        key: &ObjectPath,
        start: u64,
        size: u64,
        continues: bool,
    ) {
        let end = size;
        self.streams += 1;
        let (tx, rx) = mpsc::channel(CHANNEL_PIECES);
        let (store, key) = (store.clone(), key.clone());
        let task = tokio::spawn(async move {
            let range = (start > 0).then_some(GetRange::Bounded(start..end));
            let opts = GetOptions {
                range,
                ..Default::default()
            };
            let mut body = match store.get_opts(&key, opts).await {
                Ok(got) => got.into_stream(),
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(piece) = body.next().await {
                let failed = piece.is_err();
                // A full channel holds the GET back: the buffer stays bounded.
                if tx.send(piece).await.is_err() || failed {
                    return;
                }
            }
        });
        if !continues {
            self.pending.clear();
            self.pending_at = start;
        }
        self.stream = Some(Stream {
            next: start,
            end,
            rx,
            task,
        });
    }

    /// Reads `range` (within a file of `file_size` bytes) at `key`.
    pub async fn read(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        key: &ObjectPath,
        range: Range<u64>,
        file_size: u64,
    ) -> object_store::Result<Vec<u8>> {
        let sequential = range.start == 0 || self.last_end == Some(range.start);
        self.last_end = Some(range.end);
        let covered = self.stream.is_some()
            && range.start >= self.pending_at
            && range.start <= self.stream.as_ref().map_or(0, |s| s.end);
        // Behind what the stream still holds: a request the others overtook, or the reader went
        // back. The first is fetched alone and the stream goes on; a second read continuing the
        // first means the reader really is reading from there, and the stream moves with it.
        let behind = self.stream.is_some() && range.start < self.pending_at;
        let rereading = behind && self.behind_end == Some(range.start);
        self.behind_end = behind.then_some(range.end);
        if behind && !rereading {
            return self.alone(store, key, range).await;
        }
        if !covered {
            self.reset();
            if !sequential && !rereading {
                return self.alone(store, key, range).await;
            }
            match self.budget.0.clone().try_acquire_owned() {
                Ok(permit) => self.permit = Some(permit),
                // No read-ahead memory left on this mount: read just what was asked.
                Err(_) => return self.alone(store, key, range).await,
            }
            self.start(store, key, range.start, file_size, false);
        }
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        let mut pos = range.start;
        while pos < range.end {
            // Keep a little behind the reader: the kernel's parallel reads arrive slightly out
            // of order, and a read just behind must not restart the stream.
            while let Some(front) = self.pending.front() {
                let front_end = self.pending_at + front.len() as u64;
                if front_end + KEEP_BEHIND <= pos {
                    self.pending_at = front_end;
                    self.pending.pop_front();
                } else {
                    break;
                }
            }
            // The piece holding `pos`, if received.
            let mut at = self.pending_at;
            let mut found = None;
            for piece in &self.pending {
                let end = at + piece.len() as u64;
                if pos < end {
                    found = Some((at, piece.clone()));
                    break;
                }
                at = end;
            }
            if let Some((start, piece)) = found {
                let from = (pos - start) as usize;
                let to = ((range.end - start) as usize).min(piece.len());
                out.extend_from_slice(&piece[from..to]);
                pos = start + to as u64;
                continue;
            }
            // Need more: from the stream, or a new one where the last one stopped.
            let exhausted = self.stream.as_ref().is_none_or(|s| s.next >= s.end);
            if exhausted {
                let received_to =
                    self.pending_at + self.pending.iter().map(|b| b.len() as u64).sum::<u64>();
                let at = received_to.max(pos);
                if at >= file_size {
                    break;
                }
                // Contiguous with what was received: keep it; otherwise start afresh there.
                self.start(store, key, at, file_size, at == received_to);
            }
            let Some(stream) = self.stream.as_mut() else {
                break;
            };
            match stream.rx.recv().await {
                Some(Ok(piece)) => {
                    stream.next += piece.len() as u64;
                    self.pending.push_back(piece);
                }
                Some(Err(e)) => {
                    self.reset();
                    return Err(e);
                }
                None => {
                    // The GET ended early (the object shrank): serve what there is.
                    stream.next = stream.end;
                    if self.pending.is_empty() {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    async fn store_with(len: usize) -> (Arc<dyn ObjectStore>, ObjectPath, Vec<u8>) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let key = ObjectPath::from("f");
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        store.put(&key, data.clone().into()).await.expect("put");
        (store, key, data)
    }

    #[tokio::test]
    async fn sequential_and_random_reads_return_the_right_bytes() {
        let len = 30 << 20;
        let (store, key, data) = store_with(len).await;
        let budget = Budget::new(64 << 20);
        let mut p = Prefetch::new(&budget);
        let mut pos = 0u64;
        let step = 1 << 20;
        while pos < len as u64 {
            let end = (pos + step + 123).min(len as u64);
            let got = p
                .read(&store, &key, pos..end, len as u64)
                .await
                .expect("read");
            assert_eq!(got, data[pos as usize..end as usize], "at {pos}");
            pos = end;
        }
        // Slightly out of order, as the kernel's parallel reads arrive.
        for (a, b) in [
            (9u64 << 20, 10 << 20),
            (8 << 20, 9 << 20),
            (10 << 20, 11 << 20),
        ] {
            let got = p.read(&store, &key, a..b, len as u64).await.expect("read");
            assert_eq!(got, data[a as usize..b as usize]);
        }
        // A jump backwards, then forwards.
        for (a, b) in [(5u64, 1000u64), (20 << 20, (20 << 20) + 4096), (7, 9)] {
            let got = p.read(&store, &key, a..b, len as u64).await.expect("read");
            assert_eq!(got, data[a as usize..b as usize]);
        }
    }

    #[tokio::test]
    async fn memory_is_bounded_by_the_mount_budget() {
        let len = 40 << 20;
        let (store, key, data) = store_with(len).await;
        let budget = Budget::new(STREAM_SHARE);
        assert_eq!(budget.available(), 1);
        let mut a = Prefetch::new(&budget);
        let mut b = Prefetch::new(&budget);
        let got = a
            .read(&store, &key, 0..4096, len as u64)
            .await
            .expect("read");
        assert_eq!(got, data[..4096]);
        assert_eq!(
            budget.available(),
            0,
            "the first reader's stream holds the budget"
        );
        // The second reader gets no budget and still reads correctly.
        let got = b
            .read(&store, &key, 0..4096, len as u64)
            .await
            .expect("read");
        assert_eq!(got, data[..4096]);
        drop(a);
        assert_eq!(budget.available(), 1, "closing a file returns its share");
    }

    /// Reads `a..b` of the object `f` through `p` and checks the bytes.
    async fn check(
        p: &mut Prefetch,
        f: (&Arc<dyn ObjectStore>, &ObjectPath, &[u8]),
        a: u64,
        b: u64,
    ) {
        let (store, key, data) = f;
        let got = p
            .read(store, key, a..b, data.len() as u64)
            .await
            .expect("read");
        assert_eq!(got, data[a as usize..b as usize], "at {a}");
    }

    #[tokio::test]
    async fn a_read_ahead_window_in_any_order_is_served_by_one_stream() {
        // A local directory streams bodies in small pieces, as a network does (the in-memory
        // store hands over the whole object at once).
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn ObjectStore> = Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("local"),
        );
        let key = ObjectPath::from("f");
        let len = 64usize << 20;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        store.put(&key, data.clone().into()).await.expect("put");
        let budget = Budget::new(4 * STREAM_SHARE);
        let mut p = Prefetch::new(&budget);
        let mib = 1u64 << 20;
        let f = (&store, &key, &data[..]);
        for i in 0..8 {
            check(&mut p, f, i * mib, (i + 1) * mib).await;
        }
        // A 16 MiB window of 1 MiB requests, taken in a scrambled order, as FUSE threads do
        // with the kernel's parallel read-ahead.
        for i in [15u64, 0, 7, 14, 1, 8, 13, 2, 9, 12, 3, 10, 11, 4, 6, 5] {
            check(&mut p, f, (8 + i) * mib, (9 + i) * mib).await;
        }
        assert_eq!((p.streams, p.ranged), (1, 0), "one stream, no extra GET");
        // A read far behind is fetched alone; the stream goes on.
        check(&mut p, f, 0, 4096).await;
        check(&mut p, f, 24 * mib, 25 * mib).await;
        assert_eq!((p.streams, p.ranged), (1, 1));
        // Reading on from there is a reader gone back: the stream follows it.
        check(&mut p, f, 4096, mib).await;
        check(&mut p, f, mib, 2 * mib).await;
        assert_eq!(p.streams, 2);
    }
}
