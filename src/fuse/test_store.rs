//! A bucket for unit tests: in memory, counting what is asked of it, and optionally pacing its
//! answers the way real servers do (a body delivered at a set rate per request, a fixed cost
//! for each ranged GET).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use object_store::list::{PaginatedListOptions, PaginatedListResult, PaginatedListStore};
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// How a [`Counted`] store paces GETs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pace {
    /// Each GET's body arrives at this many bytes per second (`None`: at once).
    pub bytes_per_second: Option<u64>,
    /// A ranged GET waits this long before its body, as moto copies the whole object for one.
    pub per_ranged_get: Duration,
    /// Body frames of a paced GET (0: [`FRAME`]); one arrives per pause, and tokio's timer
    /// pauses at least 1 ms, so a paced GET is at most `frame` per millisecond.
    pub frame: usize,
}

/// Body frames of a paced GET unless its [`Pace`] says otherwise.
const FRAME: usize = 64 << 10;

#[derive(Debug, Default)]
pub struct Counted {
    inner: InMemory,
    pace: Pace,
    /// `list_with_delimiter` calls: directory listings.
    pub listings: AtomicUsize,
    /// `list` calls: prefix checks.
    pub checks: AtomicUsize,
    /// GETs without and with a range.
    pub whole_gets: AtomicUsize,
    pub ranged_gets: AtomicUsize,
    /// Body bytes paced GETs have handed over.
    pub delivered: Arc<AtomicU64>,
    /// HEADs (GETs of the head only).
    pub heads: AtomicUsize,
    /// Whole-object PUTs and multipart uploads started.
    pub puts: AtomicUsize,
    pub multipart_starts: AtomicUsize,
    /// How long each page of a paginated listing takes.
    page_pause: Duration,
}

impl Counted {
    pub fn paced(pace: Pace) -> Self {
        Counted {
            pace,
            ..Default::default()
        }
    }

    /// Paginated listings whose pages take `pause` each.
    pub fn paged(pause: Duration) -> Self {
        Counted {
            page_pause: pause,
            ..Default::default()
        }
    }
}

impl std::fmt::Display for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Counted({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Counted {
    async fn put_opts(
        &self,
        location: &ObjectPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjectPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.multipart_starts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjectPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let ranged = options.range.is_some();
        if ranged {
            self.ranged_gets.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.pace.per_ranged_get).await;
        } else if options.head {
            self.heads.fetch_add(1, Ordering::SeqCst);
        } else {
            self.whole_gets.fetch_add(1, Ordering::SeqCst);
        }
        let got = self.inner.get_opts(location, options).await?;
        let Some(rate) = self.pace.bytes_per_second else {
            return Ok(got);
        };
        let (meta, range, attributes) =
            (got.meta.clone(), got.range.clone(), got.attributes.clone());
        let frame = if self.pace.frame == 0 {
            FRAME
        } else {
            self.pace.frame
        };
        let pause = Duration::from_secs_f64(frame as f64 / rate as f64);
        let delivered = self.delivered.clone();
        let body = got
            .into_stream()
            .flat_map(move |chunk| {
                let pieces: Vec<object_store::Result<bytes::Bytes>> = match chunk {
                    Ok(bytes) => (0..bytes.len())
                        .step_by(frame)
                        .map(|at| Ok(bytes.slice(at..(at + frame).min(bytes.len()))))
                        .collect(),
                    Err(e) => vec![Err(e)],
                };
                futures_util::stream::iter(pieces)
            })
            .then(move |piece| {
                let delivered = delivered.clone();
                async move {
                    tokio::time::sleep(pause).await;
                    if let Ok(bytes) = &piece {
                        delivered.fetch_add(bytes.len() as u64, Ordering::SeqCst);
                    }
                    piece
                }
            })
            .boxed();
        Ok(GetResult {
            payload: GetResultPayload::Stream(body),
            meta,
            range,
            attributes,
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjectPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjectPath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjectPath>,
    ) -> object_store::Result<ListResult> {
        self.listings.fetch_add(1, Ordering::SeqCst);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &ObjectPath,
        to: &ObjectPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

/// Pages of [`PAGE_KEYS`] keys (files and sub-prefixes in key order), as S3's ListObjectsV2
/// gives 1,000; each page waits the pause given to [`Counted::paged`] first, and counts as a
/// listing. Without a delimiter, a prefix check (counted as one).
pub const PAGE_KEYS: usize = 10;

#[async_trait::async_trait]
impl PaginatedListStore for Counted {
    async fn list_paginated(
        &self,
        prefix: Option<&str>,
        opts: PaginatedListOptions,
    ) -> object_store::Result<PaginatedListResult> {
        let dir = prefix.map(|p| ObjectPath::from(p.trim_end_matches('/')));
        if opts.delimiter.is_none() {
            // A prefix check: the first keys under it, at any depth.
            self.checks.fetch_add(1, Ordering::SeqCst);
            let objects = self
                .inner
                .list(dir.as_ref())
                .take(opts.max_keys.unwrap_or(PAGE_KEYS))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<object_store::Result<_>>()?;
            let result = ListResult {
                common_prefixes: Vec::new(),
                objects,
                extensions: Default::default(),
            };
            return Ok(PaginatedListResult {
                result,
                page_token: None,
            });
        }
        self.listings.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.page_pause).await;
        let all = self.inner.list_with_delimiter(dir.as_ref()).await?;
        let mut keys: Vec<(String, Option<ObjectMeta>)> = all
            .objects
            .into_iter()
            .map(|o| (o.location.to_string(), Some(o)))
            .chain(
                all.common_prefixes
                    .into_iter()
                    .map(|p| (format!("{p}/"), None)),
            )
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let after = opts.page_token.unwrap_or_default();
        let rest: Vec<_> = keys.into_iter().filter(|(k, _)| *k > after).collect();
        let more = rest.len() > PAGE_KEYS;
        let page: Vec<_> = rest.into_iter().take(PAGE_KEYS).collect();
        let page_token = more.then(|| page.last().map(|(k, _)| k.clone())).flatten();
        let mut result = ListResult {
            common_prefixes: Vec::new(),
            objects: Vec::new(),
            extensions: Default::default(),
        };
        for (key, meta) in page {
            match meta {
                Some(meta) => result.objects.push(meta),
                None => result
                    .common_prefixes
                    .push(ObjectPath::from(key.trim_end_matches('/'))),
            }
        }
        Ok(PaginatedListResult { result, page_token })
    }
}
