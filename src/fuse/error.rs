//! What a file system operation can fail with, and the one mapping of each failure to errno.
//!
//! The core returns [`FsError`]; the kernel adapter turns it into an errno with
//! [`FsError::errno`] and logs it once. Store failures are classified when they are converted
//! (`object_store::Error` is non-exhaustive, so that conversion needs a catch-all); the errno
//! mapping itself is exhaustive, so a new variant forces a decision.

use fuser::Errno;

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    /// The mode bits deny the access.
    #[error("permission denied")]
    Denied,
    /// Only the owner (or root) may do this.
    #[error("operation not permitted: {0}")]
    NotPermitted(&'static str),
    #[error("file name too long")]
    NameTooLong,
    #[error("invalid argument: {0}")]
    Invalid(&'static str),
    #[error("no such open file")]
    BadHandle,
    /// Opening a symbolic link itself (the kernel follows links before it opens).
    #[error("is a symbolic link")]
    SymlinkOpened,
    /// What an object store cannot hold (hard links, device nodes, fifos, sockets).
    #[error("not supported on an object store: {0}")]
    Unsupported(&'static str),
    /// A flag the mount cannot honour atomically (RENAME_EXCHANGE, RENAME_WHITEOUT).
    #[error("unsupported flag: {0}")]
    UnsupportedFlag(&'static str),
    /// The local staging file of an open file failed (a full node disk, say).
    #[error("staging: {0}")]
    Staging(#[source] std::io::Error),
    /// The store refused our credentials or the request.
    #[error("store denied the request: {0}")]
    StoreDenied(#[source] object_store::Error),
    /// Any other store failure: the network, the server, a malformed answer.
    #[error("store: {0}")]
    Store(#[source] object_store::Error),
}

impl FsError {
    pub fn errno(&self) -> Errno {
        match self {
            FsError::NotFound => Errno::ENOENT,
            FsError::Exists => Errno::EEXIST,
            FsError::NotDir => Errno::ENOTDIR,
            FsError::IsDir => Errno::EISDIR,
            FsError::NotEmpty => Errno::ENOTEMPTY,
            FsError::Denied => Errno::EACCES,
            FsError::NotPermitted(_) => Errno::EPERM,
            FsError::NameTooLong => Errno::ENAMETOOLONG,
            FsError::Invalid(_) => Errno::EINVAL,
            FsError::BadHandle => Errno::EBADF,
            FsError::SymlinkOpened => Errno::ELOOP,
            // link(2) and mknod(2) answer EPERM when "the file system does not support" the
            // kind of file; ENOSYS would read as a missing kernel feature.
            FsError::Unsupported(_) => Errno::EPERM,
            // renameat2(2): EINVAL for a flag the file system does not implement.
            FsError::UnsupportedFlag(_) => Errno::EINVAL,
            // Kept as the OS said it (ENOSPC stays ENOSPC, so `cp` says "no space left").
            FsError::Staging(e) => e.raw_os_error().map_or(Errno::EIO, Errno::from_i32),
            // Shown as a permission problem: the file's owner may fix nothing, but "permission
            // denied" points at the access point's policy or the node's credentials.
            FsError::StoreDenied(_) => Errno::EACCES,
            FsError::Store(_) => Errno::EIO,
        }
    }

    /// Whether this is the caller's doing (logged at debug) rather than the mount's (a warning).
    pub fn is_expected(&self) -> bool {
        !matches!(
            self,
            FsError::Staging(_) | FsError::StoreDenied(_) | FsError::Store(_)
        )
    }
}

impl From<object_store::Error> for FsError {
    fn from(e: object_store::Error) -> Self {
        use object_store::Error as E;
        match e {
            E::NotFound { .. } => FsError::NotFound,
            E::AlreadyExists { .. } => FsError::Exists,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => FsError::StoreDenied(e),
            // A key the store refuses (too long, a character it cannot carry).
            E::InvalidPath { .. } => FsError::Invalid("the store cannot hold this name"),
            other => FsError::Store(other),
        }
    }
}

impl From<std::io::Error> for FsError {
    fn from(e: std::io::Error) -> Self {
        FsError::Staging(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_its_errno() {
        let io = |code| FsError::Staging(std::io::Error::from_raw_os_error(code));
        let store = || object_store::Error::Generic {
            store: "test",
            source: "boom".into(),
        };
        let table = [
            (FsError::NotFound, Errno::ENOENT),
            (FsError::Exists, Errno::EEXIST),
            (FsError::NotDir, Errno::ENOTDIR),
            (FsError::IsDir, Errno::EISDIR),
            (FsError::NotEmpty, Errno::ENOTEMPTY),
            (FsError::Denied, Errno::EACCES),
            (FsError::NotPermitted("chmod"), Errno::EPERM),
            (FsError::NameTooLong, Errno::ENAMETOOLONG),
            (FsError::Invalid("x"), Errno::EINVAL),
            (FsError::BadHandle, Errno::EBADF),
            (FsError::SymlinkOpened, Errno::ELOOP),
            (FsError::Unsupported("link"), Errno::EPERM),
            (FsError::UnsupportedFlag("exchange"), Errno::EINVAL),
            (io(libc_enospc()), Errno::ENOSPC),
            (
                FsError::Staging(std::io::Error::other("no code")),
                Errno::EIO,
            ),
            (FsError::from(store()), Errno::EIO),
            (
                FsError::from(object_store::Error::NotFound {
                    path: "a".into(),
                    source: "gone".into(),
                }),
                Errno::ENOENT,
            ),
        ];
        for (error, errno) in table {
            assert_eq!(error.errno(), errno, "{error}");
        }
    }

    fn libc_enospc() -> i32 {
        nix::errno::Errno::ENOSPC as i32
    }
}
