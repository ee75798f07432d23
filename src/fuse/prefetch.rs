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
//! One stream is what some servers need (moto pays for each ranged GET with a copy of the whole
//! object) and what others cannot feed fast enough (s3s-fs streams a body in 4 KiB pieces and
//! tops out near 175 MiB/s; S3 gives one connection ~100 MB/s). So the stream watches its
//! reader: when the reader spends most of a window waiting for it, the stream is the
//! bottleneck, and read-ahead tries ranged GETs of [`SEGMENT`] bytes, [`PARALLEL`] at a time,
//! delivered in order through the same channel. If that window is faster the mount keeps
//! fetching in parallel from then on; if clearly not, it goes back to one stream and does not
//! try again; a close call (see [`INCONCLUSIVE`]) tries up to two more windows, and a window
//! that cannot reach [`INCONCLUSIVE`] of the stream's rate ends at that moment
//! ([`Prefetch::trial_deadline`]). A stream of at least [`FAST_ENOUGH`] is not tried. A stream's
//! first window is timed from its first piece, not from the request: on moto the reader waited
//! 253 ms of the first window's 272 ms (the server loading the object) and not at all after; on
//! s3s-fs it waited for every piece from the first one. A single stream's first window is
//! therefore short ([`FIRST_WINDOW`]): the trial begins 4 MiB into a file, and the mount knows
//! its server 20 MiB in (with a 16 MiB first window, one stream's ~73 MiB/s on s3s-fs cost about
//! 2% of a 1 GiB read).
//!
//! Memory is bounded per mount: a stream holds one share of the mount's [`Budget`] (at most
//! [`STREAM_AHEAD`] of body ahead of the reader and 16 MiB kept behind it), and a handle that
//! cannot get one reads without read-ahead. A read that jumps ahead drops the stream and fetches just
//! what it asked for; a read behind the stream is fetched alone while the stream goes on, until
//! a second read continues it (the reader went back: the stream restarts there).

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::segments::{Segment, Segments};

/// Bytes kept behind the furthest read for reads that arrive out of order. The kernel has up to
/// `max_background` (12) read-ahead requests of up to 1 MiB in flight and FUSE threads take them
/// in any order; with 4 MiB kept, a 16 MiB read-ahead window made most requests miss and reset
/// the stream, and a 1 GiB read on moto never finished (found with `read_ahead_kb` at 16384).
const KEEP_BEHIND: u64 = 16 << 20;
/// A single stream's body frames (s3s-fs sends 4 KiB, S3 up to 64 KiB) are gathered into
/// pieces of at most this, the kernel's largest read, cut where the reader's reads end (see
/// [`stream_pieces`]): a read is then a slice of one piece, not a copy out of several.
const PIECE: usize = 1 << 20;
/// Pieces a single stream's channel holds (at most [`PIECE`] each); with the one being gathered,
/// at most 16 MiB.
const CHANNEL_PIECES: usize = 15;
/// One ranged GET of a parallel stream.
pub const SEGMENT: u64 = 4 << 20;
/// Ranged GETs a parallel stream has in flight; one more finished segment waits in its channel.
pub const PARALLEL: usize = 4;
/// Most a stream holds ahead of the reader: a single stream's full channel, or a parallel
/// stream's segments in flight and the one in its channel.
pub const STREAM_AHEAD: u64 = {
    let single = 16 << 20;
    let parallel = (PARALLEL as u64 + 1) * SEGMENT;
    if single > parallel { single } else { parallel }
};
/// Budget share of one stream: what it holds ahead and what it keeps behind.
pub const STREAM_SHARE: u64 = STREAM_AHEAD + KEEP_BEHIND;
/// Bytes over which a stream judges whether its reader waits for it, and a trial of ranges
/// whether it is faster.
const WINDOW: u64 = 16 << 20;
/// A single stream's first window: whether its reader waits shows within a few pieces.
const FIRST_WINDOW: u64 = 4 << 20;
/// A parallel window must beat the single stream's last one by this much to be kept.
const PARALLEL_GAIN: f64 = 1.25;
/// A parallel window between this share of the single stream's rate and [`PARALLEL_GAIN`]
/// decides nothing: one window is 16 MiB, a tenth of a second or so, and a busy machine can
/// slow any one of them (a trial once lost at s3s-fs, where ranges run 2-2.6x one stream, and
/// the mount read at 0.42x raw). Such a trial goes on for another window, at most
/// [`TRIAL_WINDOWS`] in all. On moto ranges run at a twentieth of one stream or less.
const INCONCLUSIVE: f64 = 0.5;
/// A single stream at least this fast (bytes per second) is not put on trial even when its
/// reader waits for it. Four ranges would have to beat it by [`PARALLEL_GAIN`], past what a
/// FUSE reader takes here, and a server streaming this fast is a local one that may pay for
/// each range: moto streams at 370-900 MiB/s and serves a range at a twentieth of that, and a
/// trial its reader fell into cost 3 s of a 1 GiB read. S3 gives one stream ~100 MB/s and
/// s3s-fs ~75 MiB/s: both are tried.
const FAST_ENOUGH: f64 = (200 << 20) as f64;
const TRIAL_WINDOWS: u8 = 3;

/// What a parallel trial window says, at `rate` against the single stream's `single`, after
/// `windows` trial windows (this one included).
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Parallel,
    Single,
    Again,
}

fn verdict(rate: f64, single: f64, windows: u8) -> Verdict {
    if rate >= single * PARALLEL_GAIN {
        Verdict::Parallel
    } else if rate >= single * INCONCLUSIVE && windows < TRIAL_WINDOWS {
        Verdict::Again
    } else {
        Verdict::Single
    }
}

/// `rate` (bytes per second) in whole MiB/s, for the log.
fn mib(rate: f64) -> f64 {
    (rate / f64::from(1 << 20)).round()
}

/// How a mount's streams fetch, as learned from its server (see the module documentation).
const UNTRIED: u8 = 0;
const SINGLE: u8 = 1;
const PARALLEL_RANGES: u8 = 2;

/// Read-ahead of one mount: its memory, in whole stream shares, and how its server is best
/// read (one stream, or ranges in parallel), shared by every open file.
#[derive(Clone)]
pub struct Budget {
    permits: Arc<Semaphore>,
    fetch: Arc<AtomicU8>,
}

impl Budget {
    pub fn new(bytes: u64) -> Self {
        Budget {
            permits: Arc::new(Semaphore::new((bytes / STREAM_SHARE) as usize)),
            fetch: Arc::new(AtomicU8::new(UNTRIED)),
        }
    }

    /// Streams that could still start.
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Whether this mount's streams fetch ranges in parallel (checked by the tests).
    pub fn parallel(&self) -> bool {
        self.fetch.load(Ordering::SeqCst) == PARALLEL_RANGES
    }

    fn fetch(&self) -> u8 {
        self.fetch.load(Ordering::SeqCst)
    }

    fn learn(&self, how: u8) {
        self.fetch.store(how, Ordering::SeqCst);
    }
}

/// A streaming GET of `start..end` (or ranged GETs of it in parallel) feeding a channel.
struct Stream {
    /// Next byte the channel will deliver.
    next: u64,
    end: u64,
    rx: mpsc::Receiver<object_store::Result<Bytes>>,
    task: JoinHandle<()>,
    parallel: bool,
    /// The window being judged: where it began, when, and how long the reader waited in it.
    window_from: u64,
    window_began: Instant,
    waited: Duration,
    /// Windows completed by this stream.
    windows: u32,
    /// Whether the window's clock runs: a single stream's starts with its first piece.
    flowing: bool,
    /// Where the reader's reads end, modulo [`PIECE`]: where a single stream cuts its pieces.
    phase: Arc<AtomicU64>,
}

impl Stream {
    /// Bytes per second over the current window.
    fn window_rate(&self) -> f64 {
        (self.next - self.window_from) as f64 / self.window_began.elapsed().as_secs_f64().max(1e-9)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Fetches `range` of `key` as ranged GETs of [`SEGMENT`] bytes, [`PARALLEL`] at a time,
/// each into a buffer from `buffers`, sending them in order; stops at the first error or when
/// the reader is gone.
async fn fetch_ranges(
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    range: Range<u64>,
    buffers: Segments,
    tx: mpsc::Sender<object_store::Result<Bytes>>,
) {
    let segments = (range.start..range.end)
        .step_by(SEGMENT as usize)
        .map(move |at| at..(at + SEGMENT).min(range.end));
    let mut fetched = futures_util::stream::iter(segments)
        .map(|segment| {
            // Each range is received by a task of its own: the GETs in flight go on while this
            // one waits for the reader to take a segment (a full channel), instead of the
            // server waiting for them to be polled again.
            let get = get_segment(store.clone(), key.clone(), segment, buffers.clone());
            let task = AbortOnDropHandle::new(tokio::spawn(get));
            async move {
                task.await.unwrap_or_else(|e| {
                    Err(object_store::Error::Generic {
                        store: "read-ahead",
                        source: Box::new(e),
                    })
                })
            }
        })
        .buffered(PARALLEL);
    while let Some(segment) = fetched.next().await {
        let failed = segment.is_err();
        if tx.send(segment).await.is_err() || failed {
            return;
        }
    }
}

/// `range` of `key` in one streaming GET (no range from offset 0), sent on as pieces of at
/// most [`PIECE`] that end where the reader's reads end (`phase`, modulo [`PIECE`]): the
/// kernel's read-ahead asks for 1 MiB at a time from wherever its first windows left it, and a
/// read within one piece is a slice of it, not a copy. A frame that covers a whole piece goes on
/// as it is.
async fn stream_pieces(
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    range: Range<u64>,
    buffers: Segments,
    phase: Arc<AtomicU64>,
    tx: mpsc::Sender<object_store::Result<Bytes>>,
) {
    let opts = GetOptions {
        range: (range.start > 0).then_some(GetRange::Bounded(range.clone())),
        ..Default::default()
    };
    let mut body = match store.get_opts(&key, opts).await {
        Ok(got) => got.into_stream(),
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    // Where the piece being gathered begins in the file, and its length (set as it begins).
    let mut at = range.start;
    let mut len = PIECE;
    let mut gathered: Option<Segment> = None;
    let piece_len = |at: u64| {
        let to_phase =
            (phase.load(Ordering::Relaxed) + PIECE as u64 - at % PIECE as u64) % PIECE as u64;
        if to_phase == 0 {
            PIECE
        } else {
            to_phase as usize
        }
    };
    while let Some(frame) = body.next().await {
        let mut frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        while !frame.is_empty() {
            let held = gathered.as_ref().map_or(0, |g| g.len());
            if held == 0 {
                len = piece_len(at);
            }
            let room = len - held;
            let head = frame.split_to(room.min(frame.len()));
            let piece = if held == 0 && head.len() == room {
                head
            } else {
                let g = gathered.get_or_insert_with(|| buffers.buffer(PIECE));
                g.extend_from_slice(&head);
                if head.len() < room {
                    continue;
                }
                gathered.take().map(Segment::freeze).unwrap_or_default()
            };
            at += piece.len() as u64;
            // A full channel holds the GET back: the buffer stays bounded.
            if tx.send(Ok(piece)).await.is_err() {
                return;
            }
        }
    }
    if let Some(rest) = gathered {
        let _ = tx.send(Ok(rest.freeze())).await;
    }
}

/// `range` of `key` in one GET, received into a buffer from `buffers`.
async fn get_segment(
    store: Arc<dyn ObjectStore>,
    key: ObjectPath,
    range: Range<u64>,
    buffers: Segments,
) -> object_store::Result<Bytes> {
    let mut buf = buffers.buffer((range.end - range.start) as usize);
    let opts = GetOptions {
        range: Some(GetRange::Bounded(range)),
        ..Default::default()
    };
    let mut body = store.get_opts(&key, opts).await?.into_stream();
    while let Some(frame) = body.next().await {
        buf.extend_from_slice(&frame?);
    }
    Ok(buf.freeze())
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
    /// The single stream's rate in its last window, while a parallel one is on trial.
    single_rate: Option<f64>,
    /// Parallel windows tried so far in the trial under way.
    trial_windows: u8,
    /// The object version (ETag) read: what is held of another is dropped.
    version: Option<String>,
    /// Buffers of the segments fetched in parallel.
    segments: Segments,
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
            single_rate: None,
            trial_windows: 0,
            version: None,
            segments: Segments::default(),
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
    ) -> object_store::Result<Bytes> {
        self.ranged += 1;
        store.get_range(key, range).await
    }

    /// Reads from now on are of the object's version `etag`: bytes held of an earlier one
    /// (the file was written since) are dropped.
    pub fn follow(&mut self, etag: Option<&str>) {
        if self.version.as_deref() != etag {
            self.reset();
            self.version = etag.map(str::to_owned);
        }
    }

    fn reset(&mut self) {
        self.stream = None;
        self.pending.clear();
        self.permit = None;
        self.segments.release();
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
        parallel: bool,
    ) {
        let end = size;
        self.streams += 1;
        let learned = self.budget.fetch() == PARALLEL_RANGES;
        let parallel = parallel || learned;
        let (tx, rx) = mpsc::channel(if parallel { 1 } else { CHANNEL_PIECES });
        let (store, key) = (store.clone(), key.clone());
        let phase = Arc::new(AtomicU64::new(start % PIECE as u64));
        let task = if parallel {
            // A trial fetches one window and stops: the server may pay for every range, and the
            // reader carries on with whatever the trial showed to be better.
            let fetch_end = if learned {
                end
            } else {
                end.min(start + WINDOW)
            };
            let buffers = self.segments.clone();
            tokio::spawn(fetch_ranges(store, key, start..fetch_end, buffers, tx))
        } else {
            let buffers = self.segments.clone();
            tokio::spawn(stream_pieces(
                store,
                key,
                start..end,
                buffers,
                phase.clone(),
                tx,
            ))
        };
        if !continues {
            self.pending.clear();
            self.pending_at = start;
        }
        self.stream = Some(Stream {
            next: start,
            end,
            rx,
            task,
            parallel,
            window_from: start,
            window_began: Instant::now(),
            waited: Duration::ZERO,
            windows: 0,
            flowing: parallel,
            phase,
        });
    }

    /// Judges the stream's window once it is complete (see the module documentation): a
    /// single stream its reader waited for is swapped for a parallel one on trial, and a trial
    /// is kept or given up for the mount. Returns where to restart and how, if the stream is
    /// to be replaced.
    fn judge(&mut self) -> Option<bool> {
        let stream = self.stream.as_mut()?;
        let window = if stream.windows == 0 && !stream.parallel {
            FIRST_WINDOW
        } else {
            WINDOW
        };
        if stream.next - stream.window_from < window {
            return None;
        }
        let rate = stream.window_rate();
        let starved =
            stream.waited.as_secs_f64() > stream.window_began.elapsed().as_secs_f64() / 2.0;
        stream.windows += 1;
        stream.window_from = stream.next;
        stream.window_began = Instant::now();
        stream.waited = Duration::ZERO;
        let fetch = self.budget.fetch();
        match (stream.parallel, fetch) {
            (false, UNTRIED) if starved && rate < FAST_ENOUGH && stream.next < stream.end => {
                tracing::debug!(
                    at = stream.next,
                    "read-ahead: the reader waits for its stream; trying ranged GETs"
                );
                self.single_rate = Some(rate);
                self.trial_windows = 0;
                Some(true)
            }
            (true, UNTRIED) => {
                let single = self.single_rate?;
                self.trial_windows += 1;
                match verdict(rate, single, self.trial_windows) {
                    Verdict::Parallel => {
                        tracing::info!(
                            ranges_mib_s = mib(rate),
                            stream_mib_s = mib(single),
                            "read-ahead: ranged GETs in parallel beat one stream; this mount keeps them"
                        );
                        self.single_rate = None;
                        self.budget.learn(PARALLEL_RANGES);
                        None
                    }
                    Verdict::Again if stream.next < stream.end => {
                        tracing::debug!(
                            ranges_mib_s = mib(rate),
                            stream_mib_s = mib(single),
                            "read-ahead: ranged GETs undecided against one stream; one more window"
                        );
                        Some(true)
                    }
                    // The file ended inside the trial: nothing learned.
                    Verdict::Again => None,
                    Verdict::Single => {
                        tracing::info!(
                            ranges_mib_s = mib(rate),
                            stream_mib_s = mib(single),
                            "read-ahead: one stream is as fast as ranged GETs; this mount keeps to it"
                        );
                        self.single_rate = None;
                        self.budget.learn(SINGLE);
                        Some(false)
                    }
                }
            }
            _ => None,
        }
    }

    /// When a trial of ranges under way has fallen below [`INCONCLUSIVE`] of the single
    /// stream's rate whatever arrives next: the time its whole window would take at that rate.
    /// Waiting for it to finish its window (on moto, ranges that each wait for a copy of the
    /// whole object) cost 3 s of a 1 GiB read.
    fn trial_deadline(&self) -> Option<Instant> {
        let stream = self.stream.as_ref().filter(|s| s.parallel)?;
        let single = self.single_rate?;
        let slowest = Duration::from_secs_f64(WINDOW as f64 / (single * INCONCLUSIVE));
        Some(stream.window_began + slowest)
    }

    /// Ends a trial that fell behind (see [`Prefetch::trial_deadline`]): the mount keeps to
    /// one stream.
    fn give_up_trial(&mut self) {
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        tracing::info!(
            ranges_mib_s = mib(stream.window_rate()),
            stream_mib_s = mib(self.single_rate.unwrap_or_default()),
            "read-ahead: ranged GETs fell behind one stream; this mount keeps to it"
        );
        self.single_rate = None;
        self.budget.learn(SINGLE);
    }

    /// Where what was received ends: the kept pieces, from `pending_at`.
    fn received_to(&self) -> u64 {
        self.pending_at + self.pending.iter().map(|b| b.len() as u64).sum::<u64>()
    }

    /// Reads `range` (within a file of `file_size` bytes) at `key`.
    pub async fn read(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        key: &ObjectPath,
        range: Range<u64>,
        file_size: u64,
    ) -> object_store::Result<Bytes> {
        let sequential = range.start == 0 || self.last_end == Some(range.start);
        self.last_end = Some(range.end);
        if let Some(stream) = self.stream.as_ref().filter(|_| sequential) {
            stream
                .phase
                .store(range.end % PIECE as u64, Ordering::Relaxed);
        }
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
            match self.budget.permits.clone().try_acquire_owned() {
                Ok(permit) => self.permit = Some(permit),
                // No read-ahead memory left on this mount: read just what was asked.
                Err(_) => return self.alone(store, key, range).await,
            }
            self.start(store, key, range.start, file_size, false, false);
        }
        // A read within one received piece is a slice of it; one across pieces is a copy.
        let mut out: Option<Vec<u8>> = None;
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
                if out.is_none() && pos == range.start && start + to as u64 == range.end {
                    return Ok(piece.slice(from..to));
                }
                out.get_or_insert_with(|| Vec::with_capacity((range.end - range.start) as usize))
                    .extend_from_slice(&piece[from..to]);
                pos = start + to as u64;
                continue;
            }
            // Need more: from the stream, or a new one where the last one stopped.
            let exhausted = self.stream.as_ref().is_none_or(|s| s.next >= s.end);
            if exhausted {
                let received_to = self.received_to();
                let at = received_to.max(pos);
                if at >= file_size {
                    break;
                }
                // Contiguous with what was received: keep it; otherwise start afresh there.
                self.start(store, key, at, file_size, at == received_to, false);
            }
            let deadline = self.trial_deadline();
            let Some(stream) = self.stream.as_mut() else {
                break;
            };
            let waiting = Instant::now();
            let got = match deadline {
                None => Some(stream.rx.recv().await),
                Some(at) => tokio::time::timeout_at(at, stream.rx.recv()).await.ok(),
            };
            stream.waited += waiting.elapsed();
            let Some(got) = got else {
                // The trial fell behind: one stream carries on from what was received.
                self.give_up_trial();
                self.start(store, key, self.received_to(), file_size, true, false);
                continue;
            };
            match got {
                Some(Ok(piece)) => {
                    stream.next += piece.len() as u64;
                    if !stream.flowing {
                        // A single stream's first window is timed from its first piece: the
                        // wait for the first byte (moto loads the whole object first) says
                        // nothing of how fast the stream then flows.
                        stream.flowing = true;
                        stream.window_from = stream.next;
                        stream.window_began = Instant::now();
                        stream.waited = Duration::ZERO;
                    }
                    self.pending.push_back(piece);
                    if let Some(parallel) = self.judge() {
                        // Carry on from what was received, fetched the other way.
                        self.start(store, key, self.received_to(), file_size, true, parallel);
                    }
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
        Ok(out.map(Bytes::from).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_close_trial_goes_on_and_a_clear_one_decides_at_once() {
        use super::{TRIAL_WINDOWS, Verdict, verdict};
        assert_eq!(verdict(210.0, 84.0, 1), Verdict::Parallel, "s3s-fs");
        assert_eq!(verdict(20.0, 400.0, 1), Verdict::Single, "moto");
        assert_eq!(verdict(95.0, 90.0, 1), Verdict::Again, "a slow window");
        assert_eq!(verdict(95.0, 90.0, TRIAL_WINDOWS), Verdict::Single);
        assert_eq!(verdict(120.0, 90.0, TRIAL_WINDOWS), Verdict::Parallel);
    }

    use super::*;
    use object_store::memory::InMemory;

    async fn store_with(len: usize) -> (Arc<dyn ObjectStore>, ObjectPath, Vec<u8>) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let key = ObjectPath::from("f");
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        store.put(&key, data.clone().into()).await.expect("put");
        (store, key, data)
    }

    /// The pieces [`stream_pieces`] sends for `range` of the file `f` to a reader whose reads end
    /// at `phase` modulo [`PIECE`], and their bytes.
    async fn pieces(
        store: Arc<dyn ObjectStore>,
        range: Range<u64>,
        phase: u64,
    ) -> (Vec<usize>, Vec<u8>) {
        let (tx, mut rx) = mpsc::channel(CHANNEL_PIECES);
        let key = ObjectPath::from("f");
        let phase = Arc::new(AtomicU64::new(phase));
        let task = tokio::spawn(stream_pieces(
            store,
            key,
            range,
            Segments::default(),
            phase,
            tx,
        ));
        let (mut lengths, mut bytes) = (Vec::new(), Vec::new());
        while let Some(piece) = rx.recv().await {
            let piece = piece.expect("piece");
            lengths.push(piece.len());
            bytes.extend_from_slice(&piece);
        }
        task.await.expect("stream");
        (lengths, bytes)
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_stream_cuts_its_pieces_where_the_reads_end() {
        let len = 3 * PIECE + PIECE / 2;
        let from = 300 << 10;
        // Reads ending on the file's 1 MiB blocks, and reads ending 300 KiB past them.
        let on_blocks = vec![PIECE - from, PIECE, PIECE, PIECE / 2];
        let past = vec![PIECE, PIECE, PIECE, len - from - 3 * PIECE];
        // Frames of 64 KiB, gathered (a 300 KiB start is not a multiple of them either).
        let pace = crate::fuse::test_store::Pace {
            bytes_per_second: Some(1 << 30),
            ..Default::default()
        };
        let (_, store, _, data) = paced_store(pace, len).await;
        let (lengths, bytes) = pieces(store.clone(), from as u64..len as u64, 0).await;
        assert_eq!(lengths, on_blocks);
        assert_eq!(bytes, data[from..]);
        let (lengths, bytes) = pieces(store, from as u64..len as u64, from as u64).await;
        assert_eq!(lengths, past);
        assert_eq!(bytes, data[from..]);
        // One frame holding the whole body, cut without a copy.
        let (store, _, data) = store_with(len).await;
        let (lengths, bytes) = pieces(store.clone(), 0..len as u64, 0).await;
        assert_eq!(lengths, vec![PIECE, PIECE, PIECE, PIECE / 2]);
        assert_eq!(bytes, data);
        let (lengths, _) = pieces(store, from as u64..len as u64, from as u64).await;
        assert_eq!(lengths, past);
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
        // This reader waits for the stream (nothing else slows it), which would try ranges at
        // the first window: the mount is taken to know already that one stream serves it.
        budget.learn(SINGLE);
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

    /// Reads the whole object front to back in 1 MiB requests, as the kernel does.
    async fn read_all(p: &mut Prefetch, f: (&Arc<dyn ObjectStore>, &ObjectPath, &[u8])) {
        let mib = 1u64 << 20;
        let len = f.2.len() as u64;
        let mut at = 0;
        while at < len {
            check(p, f, at, (at + mib).min(len)).await;
            at += mib;
        }
    }

    async fn paced_store(
        pace: crate::fuse::test_store::Pace,
        len: usize,
    ) -> (
        Arc<crate::fuse::test_store::Counted>,
        Arc<dyn ObjectStore>,
        ObjectPath,
        Vec<u8>,
    ) {
        let counted = Arc::new(crate::fuse::test_store::Counted::paced(pace));
        let store: Arc<dyn ObjectStore> = counted.clone();
        let key = ObjectPath::from("f");
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        store.put(&key, data.clone().into()).await.expect("put");
        (counted, store, key, data)
    }

    #[tokio::test]
    async fn a_reader_starved_by_one_stream_gets_ranges_in_parallel_and_the_mount_keeps_them() {
        use std::sync::atomic::Ordering;
        // Each GET delivers 64 MiB/s, as one connection to S3 does ~100 MB/s: parallel GETs
        // multiply it.
        let pace = crate::fuse::test_store::Pace {
            bytes_per_second: Some(64 << 20),
            per_ranged_get: Duration::ZERO,
            ..Default::default()
        };
        let (counted, store, key, data) = paced_store(pace, 72 << 20).await;
        let budget = Budget::new(4 * STREAM_SHARE);
        let mut p = Prefetch::new(&budget);
        read_all(&mut p, (&store, &key, &data)).await;
        assert!(budget.parallel(), "the parallel window won");
        // The first window (its first piece and 4 MiB) came from one stream; the rest (67.75
        // MiB) in 4 MiB ranges.
        assert_eq!(counted.whole_gets.load(Ordering::SeqCst), 1);
        assert_eq!(counted.ranged_gets.load(Ordering::SeqCst), 17);
        // The next file read on this mount fetches in parallel from the start.
        let mut q = Prefetch::new(&budget);
        read_all(&mut q, (&store, &key, &data)).await;
        assert_eq!(
            counted.whole_gets.load(Ordering::SeqCst),
            1,
            "no single stream again"
        );
        assert_eq!(counted.ranged_gets.load(Ordering::SeqCst), 17 + 18);
    }

    #[tokio::test(start_paused = true)]
    async fn ranges_in_flight_arrive_while_the_reader_is_away() {
        use std::sync::atomic::Ordering;
        let pace = crate::fuse::test_store::Pace {
            bytes_per_second: Some(64 << 20),
            per_ranged_get: Duration::ZERO,
            ..Default::default()
        };
        let (counted, store, key, data) = paced_store(pace, 40 << 20).await;
        let budget = Budget::new(4 * STREAM_SHARE);
        budget.learn(PARALLEL_RANGES);
        let mut p = Prefetch::new(&budget);
        check(&mut p, (&store, &key, &data), 0, 1 << 20).await;
        // The reader holds the first segment; the second waits in the channel, the third to
        // be sent, and the ranges after it are in flight. A reader that is slower than the
        // server (its copies, the page cache) must not hold those back.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let delivered = counted.delivered.load(Ordering::SeqCst);
        assert_eq!(
            delivered,
            (PARALLEL as u64 + 2) * SEGMENT,
            "every range in flight was received"
        );
        read_all(&mut p, (&store, &key, &data)).await;
    }

    #[tokio::test]
    async fn a_server_that_pays_for_each_range_keeps_one_stream() {
        use std::sync::atomic::Ordering;
        // As moto: the single stream is what it serves best, and every ranged GET costs it.
        // The cost is large against the trial window (16 MiB in four ranges) so the outcome
        // does not hang on timer rounding: the paced stream's 1 ms sleeps can halve its
        // measured rate on a loaded machine, and at 300 ms a range the trial then won.
        let pace = crate::fuse::test_store::Pace {
            bytes_per_second: Some(64 << 20),
            per_ranged_get: Duration::from_secs(1),
            ..Default::default()
        };
        let (counted, store, key, data) = paced_store(pace, 72 << 20).await;
        let budget = Budget::new(4 * STREAM_SHARE);
        let mut p = Prefetch::new(&budget);
        read_all(&mut p, (&store, &key, &data)).await;
        assert!(!budget.parallel(), "the parallel window lost");
        // One trial window of ranges (up to [`TRIAL_WINDOWS`] when a loaded machine slows the
        // paced stream into the inconclusive band), then one stream (ranged from where it
        // stood) to the end.
        let tried = counted.ranged_gets.load(Ordering::SeqCst);
        assert!(
            (4 + 1..=4 * usize::from(TRIAL_WINDOWS) + 1).contains(&tried),
            "{tried} ranged GETs"
        );
        // The next file does not go parallel either (it may finish a trial the first file ended
        // before deciding, no more).
        let mut q = Prefetch::new(&budget);
        read_all(&mut q, (&store, &key, &data)).await;
        assert!(!budget.parallel(), "the parallel window lost again");
        let again = counted.ranged_gets.load(Ordering::SeqCst) - tried;
        assert!(
            again <= 4 * usize::from(TRIAL_WINDOWS) + 1,
            "{again} more ranged GETs"
        );
        assert_eq!(counted.whole_gets.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_that_falls_behind_one_stream_gives_up_before_its_window_ends() {
        use std::sync::atomic::Ordering;
        // Ranges that each wait 5 s before their body, the ranged stream after the trial too.
        let pace = crate::fuse::test_store::Pace {
            bytes_per_second: Some(64 << 20),
            per_ranged_get: Duration::from_secs(5),
            ..Default::default()
        };
        let (counted, store, key, data) = paced_store(pace, 72 << 20).await;
        let budget = Budget::new(4 * STREAM_SHARE);
        let mut p = Prefetch::new(&budget);
        let began = Instant::now();
        read_all(&mut p, (&store, &key, &data)).await;
        // 72 MiB at 64 MiB/s (1.1 s), the trial's deadline (16 MiB at half that rate: 0.5 s)
        // and the ranged stream's 5 s: 6.6 s. Waiting for the trial's window would add 4.5 s.
        let took = began.elapsed();
        assert!(took < Duration::from_secs(8), "{took:?}");
        assert!(!budget.parallel(), "the trial lost");
        assert_eq!(budget.fetch(), SINGLE, "and the mount knows it");
        // The trial's four ranges, then one stream from where it stood (ranged).
        assert_eq!(counted.ranged_gets.load(Ordering::SeqCst), 4 + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_fast_enough_is_not_put_on_trial() {
        use std::sync::atomic::Ordering;
        // 1 GiB/s, in 1 MiB frames (one per millisecond): its reader waits for every frame.
        let pace = crate::fuse::test_store::Pace {
            bytes_per_second: Some(1 << 30),
            per_ranged_get: Duration::from_secs(60),
            frame: 1 << 20,
        };
        let (counted, store, key, data) = paced_store(pace, 72 << 20).await;
        let budget = Budget::new(4 * STREAM_SHARE);
        let mut p = Prefetch::new(&budget);
        read_all(&mut p, (&store, &key, &data)).await;
        assert_eq!(counted.ranged_gets.load(Ordering::SeqCst), 0);
        assert_eq!(counted.whole_gets.load(Ordering::SeqCst), 1);
        assert_eq!(budget.fetch(), UNTRIED);
    }

    #[tokio::test]
    async fn a_reader_the_stream_keeps_up_with_stays_on_one_stream() {
        use std::sync::atomic::Ordering;
        let (counted, store, key, data) =
            paced_store(crate::fuse::test_store::Pace::default(), 72 << 20).await;
        let budget = Budget::new(4 * STREAM_SHARE);
        let mut p = Prefetch::new(&budget);
        read_all(&mut p, (&store, &key, &data)).await;
        assert!(!budget.parallel());
        assert_eq!(
            counted.ranged_gets.load(Ordering::SeqCst),
            0,
            "nothing tried"
        );
        assert_eq!(counted.whole_gets.load(Ordering::SeqCst), 1);
    }
}
