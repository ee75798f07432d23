//! The driver's view of the S3 Files API: a small trait over the operations it uses, typed
//! errors, and the implementation on the official SDK (`cloud::aws`).
//!
//! The controller and node depend on [`S3Files`], never on the SDK, so tests can drive them
//! against the emulator through the real SDK and the error mapping stays in one place.

pub mod aws;
pub mod health;

use std::fmt;

/// Lifecycle state of a resource, as the API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LifeCycle {
    Creating,
    Available,
    Updating,
    Deleting,
    Deleted,
    Error,
    Misconfigured,
    Unknown(String),
}

impl LifeCycle {
    pub fn parse(s: &str) -> Self {
        match s {
            "creating" => LifeCycle::Creating,
            "available" => LifeCycle::Available,
            "updating" => LifeCycle::Updating,
            "deleting" => LifeCycle::Deleting,
            "deleted" => LifeCycle::Deleted,
            "error" => LifeCycle::Error,
            "misconfigured" => LifeCycle::Misconfigured,
            other => LifeCycle::Unknown(other.to_owned()),
        }
    }
}

impl fmt::Display for LifeCycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            LifeCycle::Creating => "creating",
            LifeCycle::Available => "available",
            LifeCycle::Updating => "updating",
            LifeCycle::Deleting => "deleting",
            LifeCycle::Deleted => "deleted",
            LifeCycle::Error => "error",
            LifeCycle::Misconfigured => "misconfigured",
            LifeCycle::Unknown(s) => s,
        };
        f.write_str(s)
    }
}

/// A file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSystem {
    pub id: String,
    pub arn: String,
    /// Bucket ARN, `arn:aws:s3:::name`.
    pub bucket: String,
    /// Key prefix inside the bucket; empty or ending with `/`.
    pub prefix: String,
    pub status: LifeCycle,
    pub status_message: Option<String>,
}

/// The POSIX identity every request through an access point acts as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PosixUser {
    pub uid: u32,
    pub gid: u32,
    pub secondary_gids: Vec<u32>,
}

/// Owner and mode given to an access point's root directory when it is first created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreationPermissions {
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// Octal, 3 or 4 digits, e.g. `0755`.
    pub permissions: String,
}

/// An access point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessPoint {
    pub id: String,
    pub arn: String,
    pub file_system_id: String,
    /// Present on Create/Get answers; list answers do not carry it.
    pub client_token: Option<String>,
    pub status: LifeCycle,
    pub posix_user: Option<PosixUser>,
    pub root_path: Option<String>,
    pub creation_permissions: Option<CreationPermissions>,
    pub tags: Vec<(String, String)>,
}

/// A mount target: the file system's NFS endpoint in one availability zone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountTarget {
    pub id: String,
    pub file_system_id: String,
    pub availability_zone_id: Option<String>,
    pub subnet_id: String,
    pub ipv4_address: Option<String>,
    pub status: LifeCycle,
}

/// What to create an access point with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewAccessPoint {
    pub file_system_id: String,
    /// Idempotency key: the same token with the same parameters returns the same access point.
    pub client_token: String,
    pub posix_user: Option<PosixUser>,
    pub root_path: Option<String>,
    pub creation_permissions: Option<CreationPermissions>,
    pub tags: Vec<(String, String)>,
}

/// What to create a file system with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewFileSystem {
    pub bucket_arn: String,
    pub prefix: Option<String>,
    pub role_arn: String,
    pub client_token: Option<String>,
    pub tags: Vec<(String, String)>,
}

/// Errors of the S3 Files API, by what the caller should do about them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CloudError {
    /// The resource does not exist (any more).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request conflicts with the resource's state or an earlier request.
    #[error("conflict: {message}")]
    Conflict {
        message: String,
        resource_id: Option<String>,
    },
    /// The API throttled us even after the SDK's retries.
    #[error("throttled by the S3 Files API: {0}")]
    Throttled(String),
    /// A quota is exhausted.
    #[error("quota exceeded: {0}")]
    QuotaExceeded(String),
    /// The API rejected the input.
    #[error("rejected by the S3 Files API: {0}")]
    Validation(String),
    /// The credentials lack a permission.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// Network failure, timeout or server error; retrying later may succeed.
    #[error("S3 Files API unavailable: {0}")]
    Transient(String),
    /// Anything else (misconfiguration, an unexpected answer).
    #[error("S3 Files API call failed: {0}")]
    Other(String),
}

/// The S3 Files operations the driver uses. Every method is safe to retry.
#[tonic::async_trait]
pub trait S3Files: Send + Sync + 'static {
    async fn get_file_system(&self, id: &str) -> Result<FileSystem, CloudError>;
    /// Every mount target of a file system (all pages).
    async fn list_mount_targets(
        &self,
        file_system_id: &str,
    ) -> Result<Vec<MountTarget>, CloudError>;
    async fn create_access_point(&self, new: &NewAccessPoint) -> Result<AccessPoint, CloudError>;
    async fn get_access_point(&self, id: &str) -> Result<AccessPoint, CloudError>;
    /// One page of a file system's access points, and the token of the next page.
    async fn list_access_points_page(
        &self,
        file_system_id: &str,
        next_token: Option<String>,
    ) -> Result<(Vec<AccessPoint>, Option<String>), CloudError>;
    async fn delete_access_point(&self, id: &str) -> Result<(), CloudError>;

    // Used by the quickstart and tests to set up what an administrator would.
    async fn create_file_system(&self, new: &NewFileSystem) -> Result<FileSystem, CloudError>;
    async fn create_mount_target(
        &self,
        file_system_id: &str,
        subnet_id: &str,
    ) -> Result<MountTarget, CloudError>;
    async fn delete_mount_target(&self, id: &str) -> Result<(), CloudError>;
    async fn delete_file_system(&self, id: &str) -> Result<(), CloudError>;

    /// A cheap authenticated call, for readiness: succeeds when the API answers us.
    async fn ping(&self) -> Result<(), CloudError>;

    /// The ids of every file system in the account and region (all pages).
    async fn list_file_system_ids(&self) -> Result<Vec<String>, CloudError>;

    /// Every access point of a file system, following all pages.
    async fn list_access_points(
        &self,
        file_system_id: &str,
    ) -> Result<Vec<AccessPoint>, CloudError> {
        let mut all = Vec::new();
        let mut token = None;
        loop {
            let (page, next) = self.list_access_points_page(file_system_id, token).await?;
            all.extend(page);
            match next {
                Some(t) => token = Some(t),
                None => return Ok(all),
            }
        }
    }
}

impl CloudError {
    /// A short label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            CloudError::NotFound(_) => "not_found",
            CloudError::Conflict { .. } => "conflict",
            CloudError::Throttled(_) => "throttled",
            CloudError::QuotaExceeded(_) => "quota",
            CloudError::Validation(_) => "validation",
            CloudError::AccessDenied(_) => "access_denied",
            CloudError::Transient(_) => "transient",
            CloudError::Other(_) => "other",
        }
    }
}

/// An [`S3Files`] that counts and times every call of the one it wraps.
pub struct Observed<C> {
    inner: C,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl<C> Observed<C> {
    pub fn new(inner: C, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        Observed { inner, metrics }
    }

    async fn observe<T>(
        &self,
        op: &str,
        call: impl std::future::Future<Output = Result<T, CloudError>>,
    ) -> Result<T, CloudError> {
        let start = std::time::Instant::now();
        let result = call.await;
        let outcome = result
            .as_ref()
            .map(|_| "ok")
            .unwrap_or_else(CloudError::outcome);
        self.metrics.observe_api(op, outcome, start.elapsed());
        result
    }
}

#[tonic::async_trait]
impl<C: S3Files> S3Files for Observed<C> {
    async fn get_file_system(&self, id: &str) -> Result<FileSystem, CloudError> {
        self.observe("GetFileSystem", self.inner.get_file_system(id))
            .await
    }
    async fn list_mount_targets(
        &self,
        file_system_id: &str,
    ) -> Result<Vec<MountTarget>, CloudError> {
        self.observe(
            "ListMountTargets",
            self.inner.list_mount_targets(file_system_id),
        )
        .await
    }
    async fn create_access_point(&self, new: &NewAccessPoint) -> Result<AccessPoint, CloudError> {
        self.observe("CreateAccessPoint", self.inner.create_access_point(new))
            .await
    }
    async fn get_access_point(&self, id: &str) -> Result<AccessPoint, CloudError> {
        self.observe("GetAccessPoint", self.inner.get_access_point(id))
            .await
    }
    async fn list_access_points_page(
        &self,
        file_system_id: &str,
        next_token: Option<String>,
    ) -> Result<(Vec<AccessPoint>, Option<String>), CloudError> {
        self.observe(
            "ListAccessPoints",
            self.inner
                .list_access_points_page(file_system_id, next_token),
        )
        .await
    }
    async fn delete_access_point(&self, id: &str) -> Result<(), CloudError> {
        self.observe("DeleteAccessPoint", self.inner.delete_access_point(id))
            .await
    }
    async fn create_file_system(&self, new: &NewFileSystem) -> Result<FileSystem, CloudError> {
        self.observe("CreateFileSystem", self.inner.create_file_system(new))
            .await
    }
    async fn create_mount_target(
        &self,
        file_system_id: &str,
        subnet_id: &str,
    ) -> Result<MountTarget, CloudError> {
        self.observe(
            "CreateMountTarget",
            self.inner.create_mount_target(file_system_id, subnet_id),
        )
        .await
    }
    async fn delete_mount_target(&self, id: &str) -> Result<(), CloudError> {
        self.observe("DeleteMountTarget", self.inner.delete_mount_target(id))
            .await
    }
    async fn delete_file_system(&self, id: &str) -> Result<(), CloudError> {
        self.observe("DeleteFileSystem", self.inner.delete_file_system(id))
            .await
    }
    async fn ping(&self) -> Result<(), CloudError> {
        self.observe("ListFileSystems", self.inner.ping()).await
    }

    async fn list_file_system_ids(&self) -> Result<Vec<String>, CloudError> {
        self.observe("ListFileSystems", self.inner.list_file_system_ids())
            .await
    }
}
