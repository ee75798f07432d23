//! A bucket for unit tests: in memory, counting what is asked of it, and optionally pacing its
//! answers the way real servers do (a body delivered at a set rate per request, a fixed cost
//! for each ranged GET).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
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
}

/// Body pieces of a paced GET.
const PIECE: usize = 64 << 10;

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
    /// HEADs (GETs of the head only).
    pub heads: AtomicUsize,
    /// Whole-object PUTs and multipart uploads started.
    pub puts: AtomicUsize,
    pub multipart_starts: AtomicUsize,
}

impl Counted {
    pub fn paced(pace: Pace) -> Self {
        Counted {
            pace,
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
        let pause = Duration::from_secs_f64(PIECE as f64 / rate as f64);
        let body = got
            .into_stream()
            .flat_map(|chunk| {
                let pieces: Vec<object_store::Result<bytes::Bytes>> = match chunk {
                    Ok(bytes) => (0..bytes.len())
                        .step_by(PIECE)
                        .map(|at| Ok(bytes.slice(at..(at + PIECE).min(bytes.len()))))
                        .collect(),
                    Err(e) => vec![Err(e)],
                };
                futures_util::stream::iter(pieces)
            })
            .then(move |piece| async move {
                tokio::time::sleep(pause).await;
                piece
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
