//! The node's seam to the operating system: mounting through a helper, unmounting, reading the
//! mount table and the health of a mount. `linux` is the real one; `fake` keeps state in
//! memory and can inject failures, for service tests.

pub mod fake;
pub mod linux;
pub mod mountinfo;
pub mod options;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use mountinfo::MountEntry;

/// One `mount -t s3files SOURCE TARGET -o OPTIONS` to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountSpec {
    /// `fs-...` or `fs-...:/path`.
    pub source: String,
    pub target: PathBuf,
    pub options: Vec<String>,
}

/// Space and inode figures of a mounted file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStats {
    pub total_bytes: u64,
    pub available_bytes: u64,
    pub used_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
    pub used_inodes: u64,
}

/// Mount failures.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount helper {helper} is not installed")]
    HelperMissing { helper: String },
    #[error("mount helper {helper} failed ({status}): {stderr}")]
    HelperFailed {
        helper: String,
        status: String,
        stderr: String,
    },
    #[error(
        "mount helper {helper} did not finish within {timeout:?} and was killed; its stderr: {stderr}"
    )]
    HelperTimedOut {
        helper: String,
        timeout: Duration,
        stderr: String,
    },
    /// The mount exists but does not answer (dead FUSE daemon, unreachable server, stale handle).
    #[error("mount at {target} is broken: {reason}")]
    Broken { target: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// OS side effects of the node.
#[tonic::async_trait]
pub trait Mounter: Send + Sync + 'static {
    /// Runs the mount helper; returns once the mount is in place.
    async fn mount(&self, spec: &MountSpec) -> Result<(), MountError>;
    /// Unmounts `target`; a mount that does not let go in time is detached lazily, so a dead
    /// server never blocks the caller. Not mounted is success.
    async fn unmount(&self, target: &Path) -> Result<(), MountError>;
    /// The current mount table.
    async fn mounts(&self) -> Result<Vec<MountEntry>, MountError>;
    /// statfs of a mount, bounded in time; a mount that does not answer is `Broken`.
    async fn stats(&self, target: &Path) -> Result<FsStats, MountError>;
    /// Whether the mount helper can be run (for readiness).
    fn helper_available(&self) -> Result<(), String>;
}
