//! Read-ahead for sequential readers.
//!
//! The kernel asks for at most 1 MiB per read; one GET per request would leave a sequential
//! reader waiting a round trip each time. A handle that reads sequentially gets a pipeline of
//! ranged GETs running ahead of it: chunks grow from 1 MiB to 8 MiB and up to four are in
//! flight. Memory is bounded per mount: every chunk held (in flight or fetched) takes a share of
//! the mount's [`Budget`], and a handle that cannot get one reads without read-ahead. A read that
//! jumps elsewhere drops the pipeline and fetches just what it asked for.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

const FIRST_CHUNK: u64 = 1 << 20;
const MAX_CHUNK: u64 = 8 << 20;
const MAX_IN_FLIGHT: usize = 4;
/// Fetched chunks kept behind the reader: the kernel's parallel reads arrive slightly out of
/// order.
const KEEP_BEHIND: usize = 2;

/// Read-ahead memory of one mount, counted in whole `MAX_CHUNK`s.
#[derive(Clone)]
pub struct Budget(Arc<Semaphore>);

impl Budget {
    pub fn new(bytes: u64) -> Self {
        Budget(Arc::new(Semaphore::new((bytes / MAX_CHUNK) as usize)))
    }

    /// Chunks not taken.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

struct Fetched {
    start: u64,
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

struct InFlight {
    start: u64,
    task: JoinHandle<object_store::Result<Bytes>>,
    permit: OwnedSemaphorePermit,
}

/// Read-ahead state of one open file.
pub struct Prefetch {
    budget: Budget,
    /// Where the previous read ended.
    last_end: Option<u64>,
    fetched: VecDeque<Fetched>,
    in_flight: VecDeque<InFlight>,
    /// End of the last chunk scheduled.
    scheduled_to: u64,
    next_chunk: u64,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.reset();
    }
}

impl Prefetch {
    pub fn new(budget: &Budget) -> Self {
        Prefetch {
            budget: budget.clone(),
            last_end: None,
            fetched: VecDeque::new(),
            in_flight: VecDeque::new(),
            scheduled_to: 0,
            next_chunk: FIRST_CHUNK,
        }
    }

    fn reset(&mut self) {
        for f in self.in_flight.drain(..) {
            f.task.abort();
        }
        self.fetched.clear();
        self.next_chunk = FIRST_CHUNK;
    }

    /// Whether the pipeline holds or is fetching `pos`.
    fn covers(&self, pos: u64) -> bool {
        let start = self
            .fetched
            .front()
            .map(|f| f.start)
            .or_else(|| self.in_flight.front().map(|f| f.start));
        matches!(start, Some(s) if s <= pos && pos < self.scheduled_to)
    }

    /// Schedules chunks from `scheduled_to` while budget and the in-flight cap allow.
    fn top_up(&mut self, store: &Arc<dyn ObjectStore>, key: &ObjectPath, file_size: u64) {
        while self.in_flight.len() < MAX_IN_FLIGHT && self.scheduled_to < file_size {
            let Ok(permit) = self.budget.0.clone().try_acquire_owned() else {
                break;
            };
            let start = self.scheduled_to;
            let end = (start + self.next_chunk).min(file_size);
            let (store, key) = (store.clone(), key.clone());
            let task = tokio::spawn(async move { store.get_range(&key, start..end).await });
            self.in_flight.push_back(InFlight {
                start,
                task,
                permit,
            });
            self.scheduled_to = end;
            self.next_chunk = (self.next_chunk * 2).min(MAX_CHUNK);
        }
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
        if !self.covers(range.start) {
            self.reset();
            if !sequential {
                return Ok(store.get_range(key, range).await?.to_vec());
            }
            self.scheduled_to = range.start;
            self.top_up(store, key, file_size);
            if self.in_flight.is_empty() {
                // No budget left on this mount: read without read-ahead.
                return Ok(store.get_range(key, range).await?.to_vec());
            }
        }
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        let mut pos = range.start;
        while pos < range.end {
            if let Some(f) = self
                .fetched
                .iter()
                .find(|f| f.start <= pos && pos < f.start + f.bytes.len() as u64)
            {
                let from = (pos - f.start) as usize;
                let to = ((range.end - f.start) as usize).min(f.bytes.len());
                out.extend_from_slice(&f.bytes[from..to]);
                pos = f.start + to as u64;
                continue;
            }
            let Some(next) = self.in_flight.pop_front() else {
                // Ran past the pipeline (a read beyond what was scheduled): fetch the rest.
                out.extend_from_slice(&store.get_range(key, pos..range.end).await?);
                break;
            };
            let bytes = match next.task.await {
                Ok(Ok(bytes)) => bytes,
                Ok(Err(e)) => {
                    self.reset();
                    return Err(e);
                }
                Err(join) => {
                    self.reset();
                    return Err(object_store::Error::Generic {
                        store: "prefetch",
                        source: Box::new(join),
                    });
                }
            };
            if bytes.is_empty() {
                break;
            }
            self.fetched.push_back(Fetched {
                start: next.start,
                bytes,
                _permit: next.permit,
            });
            while self.fetched.len() > KEEP_BEHIND {
                self.fetched.pop_front();
            }
            self.top_up(store, key, file_size);
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
        let budget = Budget::new(16 << 20);
        assert_eq!(budget.available(), 2);
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
            "two chunks taken by the first reader"
        );
        // The second reader gets no budget and still reads correctly.
        let got = b
            .read(&store, &key, 0..4096, len as u64)
            .await
            .expect("read");
        assert_eq!(got, data[..4096]);
        drop(a);
        assert_eq!(budget.available(), 2, "closing a file returns its share");
    }
}
