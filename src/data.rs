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
use object_store::aws::AmazonS3Builder;
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
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(r) = region {
        builder = builder.with_region(r);
    }
    if let Some(e) = endpoint {
        builder = builder
            .with_endpoint(e)
            .with_allow_http(e.starts_with("http://"));
    }
    builder
        .build()
        .map_err(|e| Error::Internal(format!("S3 client for bucket {bucket}: {e}")))
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
