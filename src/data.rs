//! Deleting a volume's files through the object API, for `onDelete: delete`.
//!
//! The controller never mounts the file system (the Go EFS driver's NFS mount in the
//! controller needs instance metadata and a privileged pod): it deletes the objects under the
//! access point's root directory in the file system's bucket. Prefixes are matched by whole path
//! segments (`object_store` paths), so `vol-1/` never touches `vol-10/`. With a versioned bucket
//! (which S3 Files requires) this leaves delete markers, as `rm` through S3 Files does; older
//! versions follow the bucket's lifecycle rules.

pub mod versions;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, Checksum};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::{Error, Result};

/// Deletes a volume's files through the S3 API: what the controller needs of [`ObjectData`] for
/// `onDelete: delete`.
#[tonic::async_trait]
pub trait DataStore: Send + Sync + 'static {
    /// Deletes every object under `prefix` of `bucket` (a bucket ARN); returns how many.
    async fn delete_prefix(&self, bucket: &str, prefix: &str) -> Result<u64>;
}

/// Where bucket data lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataLocation {
    /// Amazon S3 (or an S3-compatible endpoint), credentials and region from the environment.
    S3 { endpoint: Option<String> },
    /// Bucket `b` is the directory `<root>/b` (the emulator's local buckets).
    Local { root: PathBuf },
}

impl DataLocation {
    /// `s3`, `s3:https://endpoint`, or `local:/dir`.
    pub fn parse(spec: &str) -> std::result::Result<Self, String> {
        if spec == "s3" {
            return Ok(DataLocation::S3 { endpoint: None });
        }
        if let Some(endpoint) = spec.strip_prefix("s3:") {
            return Ok(DataLocation::S3 {
                endpoint: Some(endpoint.to_owned()),
            });
        }
        if let Some(dir) = spec.strip_prefix("local:")
            && dir.starts_with('/')
        {
            return Ok(DataLocation::Local {
                root: PathBuf::from(dir),
            });
        }
        Err(format!(
            "data store {spec:?}: use s3, s3:https://ENDPOINT or local:/DIR"
        ))
    }
}

/// [`DataStore`] on `object_store`, one client per bucket.
pub struct ObjectData {
    location: DataLocation,
    /// The buckets' region; `None` leaves it to `AWS_REGION` / `AWS_DEFAULT_REGION`.
    region: Option<String>,
    stores: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl ObjectData {
    pub fn new(location: DataLocation) -> Self {
        ObjectData {
            location,
            region: None,
            stores: Mutex::new(HashMap::new()),
        }
    }

    /// Talks to S3 in `region` (the controller passes the region its S3 Files client resolved,
    /// so no bucket is looked for in object_store's default of us-east-1).
    pub fn with_region(mut self, region: Option<String>) -> Self {
        self.region = region;
        self
    }

    /// The directory of `bucket` when buckets are local directories.
    pub fn local_dir(&self, bucket: &str) -> Option<PathBuf> {
        match &self.location {
            DataLocation::Local { root } => Some(root.join(bucket)),
            DataLocation::S3 { .. } => None,
        }
    }

    /// A paginated-listing client for `bucket` when buckets are on S3.
    pub fn paginated(
        &self,
        bucket: &str,
    ) -> Result<Option<Arc<dyn object_store::list::PaginatedListStore>>> {
        match &self.location {
            DataLocation::Local { .. } => Ok(None),
            DataLocation::S3 { endpoint } => Ok(Some(Arc::new(s3_client(
                bucket,
                endpoint,
                self.region.as_deref(),
            )?))),
        }
    }

    /// The object store client for `bucket` (a bucket name), made once.
    pub fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        if let Some(s) = self
            .stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(bucket)
        {
            return Ok(s.clone());
        }
        let store: Arc<dyn ObjectStore> = match &self.location {
            DataLocation::S3 { endpoint } => {
                Arc::new(s3_client(bucket, endpoint, self.region.as_deref())?)
            }
            DataLocation::Local { root } => {
                let dir = root.join(bucket);
                Arc::new(
                    LocalFileSystem::new_with_prefix(&dir)
                        .map_err(|e| {
                            Error::Internal(format!("bucket directory {}: {e}", dir.display()))
                        })?
                        .with_automatic_cleanup(true),
                )
            }
        };
        self.stores
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(bucket.to_owned(), store.clone());
        Ok(store)
    }
}

/// An S3 client for `bucket`; credentials from the environment, the region given or else from
/// the environment.
fn s3_client(
    bucket: &str,
    endpoint: &Option<String>,
    region: Option<&str>,
) -> Result<object_store::aws::AmazonS3> {
    s3_builder(AmazonS3Builder::from_env(), bucket, endpoint, region)
        .build()
        .map_err(|e| Error::Internal(format!("S3 client for bucket {bucket}: {e}")))
}

/// `builder` (the environment's settings) for `bucket` at `endpoint`.
///
/// Uploads carry a SHA-256 checksum (`x-amz-checksum-sha256`, and `SHA256` declared when a
/// multipart upload starts) unless the environment names an algorithm
/// (`AWS_CHECKSUM_ALGORITHM`) or turns payload signing off (`AWS_UNSIGNED_PAYLOAD`). With a
/// signed payload the digest is the one SigV4 computes anyway, so the checksum costs the client
/// nothing; the server checks each part against it and keeps it with the object, as it keeps
/// the CRC32 the AWS SDKs send by default. An upload that declares no algorithm leaves the
/// server a checksum of the whole object to compute at CompleteMultipartUpload (moto copies
/// the whole object to do it).
fn s3_builder(
    builder: AmazonS3Builder,
    bucket: &str,
    endpoint: &Option<String>,
    region: Option<&str>,
) -> AmazonS3Builder {
    let unsigned = builder
        .get_config_value(&AmazonS3ConfigKey::UnsignedPayload)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let mut builder = builder.with_bucket_name(bucket);
    if builder
        .get_config_value(&AmazonS3ConfigKey::Checksum)
        .is_none()
        && !unsigned
    {
        builder = builder.with_checksum_algorithm(Checksum::SHA256);
    }
    if let Some(r) = region {
        builder = builder.with_region(r);
    }
    if let Some(e) = endpoint {
        builder = builder
            .with_endpoint(e)
            .with_allow_http(e.starts_with("http://"));
    }
    builder
}

/// `name` from `arn:aws:s3:::name`.
pub fn bucket_name(arn: &str) -> Result<&str> {
    match arn.rsplit_once(":::") {
        Some((_, name)) if !name.is_empty() && !name.contains('/') => Ok(name),
        _ => Err(Error::Internal(format!("{arn:?} is not a bucket ARN"))),
    }
}

#[tonic::async_trait]
impl DataStore for ObjectData {
    async fn delete_prefix(&self, bucket: &str, prefix: &str) -> Result<u64> {
        let name = bucket_name(bucket)?;
        let trimmed = prefix.trim_matches('/');
        if trimmed.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "refusing to delete the whole bucket {name}"
            )));
        }
        let store = self.store(name)?;
        let path = ObjectPath::from(trimmed);
        let mut listing = store.list(Some(&path));
        let mut deleted = 0u64;
        while let Some(meta) = listing.next().await {
            let meta =
                meta.map_err(|e| Error::Unavailable(format!("listing {name}/{trimmed}: {e}")))?;
            match store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => {
                    return Err(Error::Unavailable(format!(
                        "deleting {name}/{}: {e}",
                        meta.location
                    )));
                }
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_the_volume_directory_is_deleted() {
        let root = tempfile::tempdir().expect("tempdir");
        let bucket = root.path().join("b");
        for f in [
            "k8s/vol-1/a.txt",
            "k8s/vol-1/sub/b.txt",
            "k8s/vol-10/keep.txt",
            "k8s/vol-1.txt",
        ] {
            let p = bucket.join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, b"x").expect("write");
        }
        let data = ObjectData::new(DataLocation::Local {
            root: root.path().to_owned(),
        });
        let n = data
            .delete_prefix("arn:aws:s3:::b", "k8s/vol-1/")
            .await
            .expect("delete");
        assert_eq!(n, 2);
        assert!(!bucket.join("k8s/vol-1/a.txt").exists());
        assert!(bucket.join("k8s/vol-10/keep.txt").exists());
        assert!(bucket.join("k8s/vol-1.txt").exists());
        assert!(
            data.delete_prefix("arn:aws:s3:::b", "/").await.is_err(),
            "never the whole bucket"
        );
    }

    /// The head of one HTTP request to `listener`, answered with an empty 200 and an ETag.
    async fn one_request(listener: tokio::net::TcpListener) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let end = loop {
            let n = sock.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the client closed before its request ended");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < end + length {
            let n = sock.read(&mut chunk).await.expect("read body");
            assert!(n > 0, "the client closed before its body ended");
            buf.extend_from_slice(&chunk[..n]);
        }
        sock.write_all(b"HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 0\r\n\r\n")
            .await
            .expect("answer");
        head
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn builder(endpoint: &str, env: &[(AmazonS3ConfigKey, &str)]) -> AmazonS3Builder {
        let mut b = AmazonS3Builder::new()
            .with_access_key_id("key")
            .with_secret_access_key("secret");
        for (k, v) in env {
            b = b.with_config(*k, *v);
        }
        s3_builder(b, "bucket", &Some(endpoint.to_owned()), Some("us-east-1"))
    }

    #[tokio::test]
    async fn uploads_carry_the_sha256_of_their_payload() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(one_request(listener));
        let store = builder(&url, &[]).build().expect("client");
        store
            .put(&ObjectPath::from("a.txt"), "hello".into())
            .await
            .expect("put");
        let head = server.await.expect("server");
        // base64 of SHA-256("hello"), as `openssl dgst -sha256 -binary | base64` prints it.
        assert_eq!(
            header(&head, "x-amz-checksum-sha256"),
            Some("LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="),
            "{head}"
        );
    }

    #[test]
    fn the_environment_chooses_the_checksum_or_turns_it_off_with_signing() {
        let chosen = |env: &[(AmazonS3ConfigKey, &str)]| {
            builder("http://127.0.0.1:1", env).get_config_value(&AmazonS3ConfigKey::Checksum)
        };
        assert_eq!(chosen(&[]).as_deref(), Some("sha256"));
        assert_eq!(
            chosen(&[(AmazonS3ConfigKey::Checksum, "crc64nvme")]).as_deref(),
            Some("crc64nvme")
        );
        assert_eq!(
            chosen(&[(AmazonS3ConfigKey::UnsignedPayload, "true")]),
            None
        );
        assert_eq!(
            chosen(&[(AmazonS3ConfigKey::UnsignedPayload, "false")]).as_deref(),
            Some("sha256")
        );
    }

    #[test]
    fn locations_parse() {
        assert_eq!(
            DataLocation::parse("s3"),
            Ok(DataLocation::S3 { endpoint: None })
        );
        assert_eq!(
            DataLocation::parse("local:/x"),
            Ok(DataLocation::Local { root: "/x".into() })
        );
        assert!(DataLocation::parse("local:x").is_err());
        assert!(DataLocation::parse("gcs").is_err());
    }
}
