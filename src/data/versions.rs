//! The S3 calls snapshots and restores make, on the AWS SDK for S3 (`object_store` has no
//! object versions): small records, listings of object versions, server-side copies of one
//! version, and the bucket's lifecycle rules.
//!
//! Times are milliseconds since the epoch as S3 *listings* give them, so that a record's time and
//! the versions it is compared with come from the same clock at the same resolution (a HEAD's
//! `Last-Modified` has whole seconds only).

use std::collections::HashMap;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ExpirationStatus};
use futures_util::{StreamExt, TryStreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::error::{Error, Result};

/// One entry of a version listing: a version of `key`, or a delete marker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionEntry {
    pub key: String,
    pub version_id: String,
    /// Milliseconds since the epoch.
    pub modified_ms: i64,
    pub size: u64,
    pub delete_marker: bool,
}

/// One page of a version listing and where the next begins.
#[derive(Clone, Debug, Default)]
pub struct VersionPage {
    /// By key, each key's entries newest first.
    pub entries: Vec<VersionEntry>,
    /// `(key marker, version id marker)` of the next page; `None` on the last.
    pub next: Option<(String, Option<String>)>,
}

/// A lifecycle rule that deletes noncurrent versions under some prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiringRule {
    pub id: String,
    /// The rule's key prefix filter ("" for the whole bucket).
    pub prefix: String,
    pub noncurrent_days: Option<i32>,
    /// The rule is filtered by tags or sizes as well: it may or may not apply to a volume.
    pub narrower: bool,
}

/// How one object's POSIX owner changes when it is copied: objects of `from` (uid, gid)
/// become `to`'s. Other owners are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerMap {
    pub from: (u32, u32),
    pub to: (u32, u32),
}

/// The S3 operations of snapshots and restores (bucket names, not ARNs).
#[tonic::async_trait]
pub trait Versions: Send + Sync + 'static {
    /// Writes a small object.
    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<()>;
    /// The current version's bytes; `None` when there is none (or it is a delete marker).
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>>;
    /// The current version's time, from a listing; `None` when there is none.
    async fn modified_ms(&self, bucket: &str, key: &str) -> Result<Option<i64>>;
    /// Deletes the current version (a delete marker in a versioned bucket); absent is fine.
    async fn delete(&self, bucket: &str, key: &str) -> Result<()>;
    /// Current keys under `prefix`, after `start_after`, at most `max` (one request per page).
    async fn keys(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<String>>;
    /// One page of the versions and delete markers under `prefix`.
    async fn versions(
        &self,
        bucket: &str,
        prefix: &str,
        from: Option<&(String, Option<String>)>,
    ) -> Result<VersionPage>;
    /// Copies version `version` of `from` to `to` in the same bucket, keeping its metadata,
    /// with `owners` applied.
    async fn copy(
        &self,
        bucket: &str,
        from: &VersionEntry,
        to: &str,
        owners: Option<OwnerMap>,
    ) -> Result<()>;
    /// The bucket's lifecycle rules that expire noncurrent versions.
    async fn expiring_rules(&self, bucket: &str) -> Result<Vec<ExpiringRule>>;
}

/// Objects above this are copied in parts (CopyObject's limit is 5 GiB).
pub const COPY_OBJECT_LIMIT: u64 = 5 << 30;
/// One part of a multipart copy.
pub const COPY_PART_SIZE: u64 = 512 << 20;
/// Parts of one multipart copy in flight at once.
const COPY_PARTS_IN_FLIGHT: usize = 8;

/// [`Versions`] on the AWS SDK for S3.
pub struct S3Versions {
    client: Client,
    /// Above this size a copy goes in parts of `part_size`.
    single_copy_limit: u64,
    part_size: u64,
}

impl S3Versions {
    /// A client with credentials from the environment, in `region`, at `endpoint` (path-style
    /// addressing there, as S3-compatible servers expect).
    pub async fn from_env(endpoint: Option<&str>, region: Option<&str>) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r.to_owned()));
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared);
        if let Some(e) = endpoint {
            config = config.endpoint_url(e).force_path_style(true);
        }
        S3Versions::new(Client::from_conf(config.build()))
    }

    /// Over an SDK client made elsewhere.
    pub fn new(client: Client) -> Self {
        S3Versions {
            client,
            single_copy_limit: COPY_OBJECT_LIMIT,
            part_size: COPY_PART_SIZE,
        }
    }

    /// Copies objects above `limit` bytes in parts of `part_size` (tests use small ones).
    pub fn with_part_copies(mut self, limit: u64, part_size: u64) -> Self {
        self.single_copy_limit = limit;
        self.part_size = part_size.max(1);
        self
    }

    /// The metadata and headers to write on the copy of `from`: `None` to copy them unchanged.
    async fn replaced_metadata(
        &self,
        bucket: &str,
        from: &VersionEntry,
        owners: Option<OwnerMap>,
        always: bool,
    ) -> Result<Option<Headers>> {
        let needed = always || owners.is_some_and(|o| o.from != o.to);
        if !needed {
            return Ok(None);
        }
        let head = self
            .client
            .head_object()
            .bucket(bucket)
            .key(&from.key)
            .version_id(&from.version_id)
            .send()
            .await
            .map_err(|e| s3_error("HeadObject", bucket, &from.key, e))?;
        let mut metadata = head.metadata().cloned().unwrap_or_default();
        if let Some(map) = owners {
            remap_owner(&mut metadata, map);
        }
        Ok(Some(Headers {
            metadata,
            content_type: head.content_type().map(str::to_owned),
            cache_control: head.cache_control().map(str::to_owned),
            content_encoding: head.content_encoding().map(str::to_owned),
            content_disposition: head.content_disposition().map(str::to_owned),
            content_language: head.content_language().map(str::to_owned),
        }))
    }

    async fn copy_in_parts(
        &self,
        bucket: &str,
        from: &VersionEntry,
        to: &str,
        headers: Headers,
    ) -> Result<()> {
        let started = self
            .client
            .create_multipart_upload()
            .bucket(bucket)
            .key(to)
            .set_metadata(Some(headers.metadata))
            .set_content_type(headers.content_type)
            .set_cache_control(headers.cache_control)
            .set_content_encoding(headers.content_encoding)
            .set_content_disposition(headers.content_disposition)
            .set_content_language(headers.content_language)
            .send()
            .await
            .map_err(|e| s3_error("CreateMultipartUpload", bucket, to, e))?;
        let Some(upload_id) = started.upload_id().map(str::to_owned) else {
            return Err(Error::Unavailable(format!(
                "CreateMultipartUpload for {bucket}/{to} returned no upload id"
            )));
        };
        let source = copy_source(bucket, from);
        let ranges: Vec<(i32, u64, u64)> = (0..from.size.div_ceil(self.part_size))
            .map(|i| {
                let start = i * self.part_size;
                let end = (start + self.part_size).min(from.size) - 1;
                (i as i32 + 1, start, end)
            })
            .collect();
        let parts = futures_util::stream::iter(ranges)
            .map(|(number, start, end)| {
                let (source, upload_id) = (&source, &upload_id);
                async move {
                    let out = self
                        .client
                        .upload_part_copy()
                        .bucket(bucket)
                        .key(to)
                        .upload_id(upload_id)
                        .part_number(number)
                        .copy_source(source)
                        .copy_source_range(format!("bytes={start}-{end}"))
                        .send()
                        .await
                        .map_err(|e| s3_error("UploadPartCopy", bucket, &from.key, e))?;
                    let etag = out
                        .copy_part_result()
                        .and_then(|r| r.e_tag())
                        .map(str::to_owned);
                    Ok::<_, Error>(
                        CompletedPart::builder()
                            .part_number(number)
                            .set_e_tag(etag)
                            .build(),
                    )
                }
            })
            .buffered(COPY_PARTS_IN_FLIGHT)
            .try_collect::<Vec<_>>()
            .await;
        let parts = match parts {
            Ok(p) => p,
            Err(e) => {
                let _ = self
                    .client
                    .abort_multipart_upload()
                    .bucket(bucket)
                    .key(to)
                    .upload_id(&upload_id)
                    .send()
                    .await;
                return Err(e);
            }
        };
        let count = parts.len();
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(bucket)
            .key(to)
            .upload_id(&upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match completed {
            Ok(_) => Ok(()),
            // A 200 whose body the SDK cannot read (moto names its root element differently):
            // done if the object now is the upload, by its size and part count.
            Err(e) if status(&e) == Some(200) && e.code().is_none() => {
                let head = self
                    .client
                    .head_object()
                    .bucket(bucket)
                    .key(to)
                    .send()
                    .await
                    .map_err(|e| s3_error("HeadObject", bucket, to, e))?;
                let parts_of = head
                    .e_tag()
                    .and_then(|t| t.trim_matches('"').rsplit_once('-'))
                    .and_then(|(_, n)| n.parse::<usize>().ok());
                if head.content_length() == Some(from.size as i64) && parts_of == Some(count) {
                    Ok(())
                } else {
                    Err(s3_error("CompleteMultipartUpload", bucket, to, e))
                }
            }
            Err(e) => Err(s3_error("CompleteMultipartUpload", bucket, to, e)),
        }
    }
}

/// What a copy that replaces metadata must send again.
struct Headers {
    metadata: HashMap<String, String>,
    content_type: Option<String>,
    cache_control: Option<String>,
    content_encoding: Option<String>,
    content_disposition: Option<String>,
    content_language: Option<String>,
}

/// Applies `map` to POSIX owner metadata (`uid`, `gid`, as the data plane and s3fs write them).
pub fn remap_owner(metadata: &mut HashMap<String, String>, map: OwnerMap) {
    for (name, from, to) in [("uid", map.from.0, map.to.0), ("gid", map.from.1, map.to.1)] {
        if let Some(v) = metadata.get_mut(name)
            && v.trim().parse::<u32>() == Ok(from)
        {
            *v = to.to_string();
        }
    }
}

/// What `x-amz-copy-source` escapes in a key: all but unreserved characters and `/`.
const COPY_SOURCE_KEY: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

fn copy_source(bucket: &str, from: &VersionEntry) -> String {
    format!(
        "{bucket}/{}?versionId={}",
        utf8_percent_encode(&from.key, COPY_SOURCE_KEY),
        utf8_percent_encode(&from.version_id, NON_ALPHANUMERIC)
    )
}

fn millis(t: Option<&aws_sdk_s3::primitives::DateTime>) -> i64 {
    t.map_or(0, |t| {
        t.secs() * 1000 + i64::from(t.subsec_nanos() / 1_000_000)
    })
}

#[tonic::async_trait]
impl Versions for S3Versions {
    async fn put(&self, bucket: &str, key: &str, body: Vec<u8>) -> Result<()> {
        self.client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", bucket, key, e))?;
        Ok(())
    }

    async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let out = match self
            .client
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(s3_error("GetObject", bucket, key, e)),
        };
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| Error::Unavailable(format!("reading {bucket}/{key}: {e}")))?;
        Ok(Some(body.into_bytes().to_vec()))
    }

    async fn modified_ms(&self, bucket: &str, key: &str) -> Result<Option<i64>> {
        let out = self
            .client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(key)
            .max_keys(1)
            .send()
            .await
            .map_err(|e| s3_error("ListObjectsV2", bucket, key, e))?;
        Ok(out
            .contents()
            .iter()
            .find(|o| o.key() == Some(key))
            .map(|o| millis(o.last_modified())))
    }

    async fn delete(&self, bucket: &str, key: &str) -> Result<()> {
        match self
            .client
            .delete_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(s3_error("DeleteObject", bucket, key, e)),
        }
    }

    async fn keys(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(bucket)
                .prefix(prefix)
                .set_start_after(start_after.map(str::to_owned))
                .set_continuation_token(token.clone())
                .max_keys(max.saturating_sub(keys.len()).clamp(1, 1000) as i32)
                .send()
                .await
                .map_err(|e| s3_error("ListObjectsV2", bucket, prefix, e))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            token = out.next_continuation_token().map(str::to_owned);
            if token.is_none() || keys.len() >= max {
                return Ok(keys);
            }
        }
    }

    async fn versions(
        &self,
        bucket: &str,
        prefix: &str,
        from: Option<&(String, Option<String>)>,
    ) -> Result<VersionPage> {
        let out = self
            .client
            .list_object_versions()
            .bucket(bucket)
            .prefix(prefix)
            .set_key_marker(from.map(|f| f.0.clone()))
            .set_version_id_marker(from.and_then(|f| f.1.clone()))
            .send()
            .await
            .map_err(|e| s3_error("ListObjectVersions", bucket, prefix, e))?;
        let mut entries: Vec<VersionEntry> = out
            .versions()
            .iter()
            .map(|v| VersionEntry {
                key: v.key().unwrap_or_default().to_owned(),
                version_id: v.version_id().unwrap_or("null").to_owned(),
                modified_ms: millis(v.last_modified()),
                size: v.size().unwrap_or(0).max(0) as u64,
                delete_marker: false,
            })
            .chain(out.delete_markers().iter().map(|d| VersionEntry {
                key: d.key().unwrap_or_default().to_owned(),
                version_id: d.version_id().unwrap_or("null").to_owned(),
                modified_ms: millis(d.last_modified()),
                size: 0,
                delete_marker: true,
            }))
            .collect();
        // The SDK hands versions and delete markers over in two lists; S3 sent them by key,
        // newest first.
        entries.sort_by(|a, b| {
            a.key
                .cmp(&b.key)
                .then(b.modified_ms.cmp(&a.modified_ms))
                .then(b.delete_marker.cmp(&a.delete_marker))
        });
        let next = if out.is_truncated() == Some(true) {
            out.next_key_marker().map(|k| {
                (
                    k.to_owned(),
                    out.next_version_id_marker().map(str::to_owned),
                )
            })
        } else {
            None
        };
        Ok(VersionPage { entries, next })
    }

    async fn copy(
        &self,
        bucket: &str,
        from: &VersionEntry,
        to: &str,
        owners: Option<OwnerMap>,
    ) -> Result<()> {
        let in_parts = from.size > self.single_copy_limit;
        let headers = self
            .replaced_metadata(bucket, from, owners, in_parts)
            .await?;
        match headers {
            Some(h) if in_parts => self.copy_in_parts(bucket, from, to, h).await,
            headers => {
                let mut copy = self
                    .client
                    .copy_object()
                    .bucket(bucket)
                    .key(to)
                    .copy_source(copy_source(bucket, from));
                if let Some(h) = headers {
                    copy = copy
                        .metadata_directive(aws_sdk_s3::types::MetadataDirective::Replace)
                        .set_metadata(Some(h.metadata))
                        .set_content_type(h.content_type)
                        .set_cache_control(h.cache_control)
                        .set_content_encoding(h.content_encoding)
                        .set_content_disposition(h.content_disposition)
                        .set_content_language(h.content_language);
                }
                copy.send()
                    .await
                    .map_err(|e| s3_error("CopyObject", bucket, &from.key, e))?;
                Ok(())
            }
        }
    }

    async fn expiring_rules(&self, bucket: &str) -> Result<Vec<ExpiringRule>> {
        let out = match self
            .client
            .get_bucket_lifecycle_configuration()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if e.code() == Some("NoSuchLifecycleConfiguration") => return Ok(Vec::new()),
            Err(e) => return Err(s3_error("GetBucketLifecycleConfiguration", bucket, "", e)),
        };
        Ok(out
            .rules()
            .iter()
            .filter(|r| r.status() == &ExpirationStatus::Enabled)
            .filter_map(|r| {
                let nc = r.noncurrent_version_expiration()?;
                let filter = r.filter();
                #[allow(deprecated)]
                let prefix = filter
                    .and_then(|f| f.prefix().or_else(|| f.and().and_then(|a| a.prefix())))
                    .or(r.prefix())
                    .unwrap_or_default()
                    .to_owned();
                let narrower = filter.is_some_and(|f| {
                    f.tag().is_some()
                        || f.object_size_greater_than().is_some()
                        || f.object_size_less_than().is_some()
                        || f.and().is_some_and(|a| {
                            !a.tags().is_empty()
                                || a.object_size_greater_than().is_some()
                                || a.object_size_less_than().is_some()
                        })
                });
                Some(ExpiringRule {
                    id: r.id().unwrap_or_default().to_owned(),
                    prefix,
                    noncurrent_days: nc.noncurrent_days(),
                    narrower,
                })
            })
            .collect())
    }
}

type Failure<E> = SdkError<E, aws_sdk_s3::config::http::HttpResponse>;

fn status<E>(e: &Failure<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

fn not_found<E: ProvideErrorMetadata>(e: &Failure<E>) -> bool {
    matches!(e.code(), Some("NoSuchKey" | "NotFound" | "NoSuchVersion")) || status(e) == Some(404)
}

/// One mapping of S3 failures to the driver's errors: what the operator must fix is
/// FailedPrecondition, a missing version names its key, the rest may pass on a retry.
fn s3_error<E>(op: &str, bucket: &str, key: &str, e: Failure<E>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = e.code().map(str::to_owned);
    let message = e
        .message()
        .map(str::to_owned)
        .unwrap_or_else(|| aws_sdk_s3::error::DisplayErrorContext(&e).to_string());
    let status = status(&e);
    let what = if key.is_empty() {
        format!("{op} on bucket {bucket}")
    } else {
        format!("{op} of {bucket}/{key}")
    };
    match (code.as_deref(), status) {
        (Some("NoSuchKey" | "NoSuchVersion" | "NotFound"), _) | (_, Some(404)) => {
            Error::NotFound(format!("{what}: {message}"))
        }
        (Some("NoSuchBucket"), _) => Error::FailedPrecondition(format!(
            "{what}: the bucket does not exist or is not visible to the controller: {message}"
        )),
        (Some("AccessDenied" | "AllAccessDisabled" | "InvalidAccessKeyId"), _) | (_, Some(403)) => {
            Error::FailedPrecondition(format!(
                "{what}: access denied ({message}); the controller's IAM role needs s3:ListBucket, \
                 s3:ListBucketVersions, s3:GetObject, s3:GetObjectVersion, s3:PutObject, \
                 s3:DeleteObject and s3:GetLifecycleConfiguration on the bucket"
            ))
        }
        (Some("InvalidObjectState"), _) => Error::FailedPrecondition(format!(
            "{what}: the object is archived and must be restored from its storage class first: {message}"
        )),
        _ => Error::Unavailable(format!(
            "{what} failed{}: {message}; retrying may succeed",
            code.map(|c| format!(" ({c})")).unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_of_the_source_volume_become_the_new_volumes() {
        let mut m: HashMap<String, String> = [
            ("uid".to_owned(), "50001".to_owned()),
            ("gid".to_owned(), "50001".to_owned()),
            ("mode".to_owned(), "33188".to_owned()),
        ]
        .into();
        let map = OwnerMap {
            from: (50001, 50001),
            to: (50002, 50003),
        };
        remap_owner(&mut m, map);
        assert_eq!(m["uid"], "50002");
        assert_eq!(m["gid"], "50003");
        assert_eq!(m["mode"], "33188");
        let mut other: HashMap<String, String> = [("uid".to_owned(), "0".to_owned())].into();
        remap_owner(&mut other, map);
        assert_eq!(other["uid"], "0", "another owner is kept");
    }

    #[test]
    fn copy_sources_escape_the_key_but_not_its_slashes() {
        let v = VersionEntry {
            key: "k8s/vol 1/é?#.txt".into(),
            version_id: "a+b/c".into(),
            modified_ms: 0,
            size: 0,
            delete_marker: false,
        };
        assert_eq!(
            copy_source("b", &v),
            "b/k8s/vol%201/%C3%A9%3F%23.txt?versionId=a%2Bb%2Fc"
        );
    }
}
