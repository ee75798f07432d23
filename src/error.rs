//! The crate error and its one mapping to gRPC status codes.
//!
//! Every CSI method returns `Result<_, Error>` from its core and converts exactly once, at the
//! gRPC boundary (`crate::rpc`). The mapping below has no wildcard arm: a new variant cannot
//! compile until someone decides which CSI code it deserves.

use tonic::{Code, Status};

/// Errors of the driver's request paths. Messages are lowercase and say what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or malformed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },

    /// The named object does not exist.
    #[error("{0} not found")]
    NotFound(String),

    /// An object with this identity exists but is incompatible with the request.
    #[error("{0}")]
    AlreadyExists(String),

    /// The request is valid but the system is not in a state to serve it.
    #[error("{0}")]
    FailedPrecondition(String),

    /// Another operation on the same volume is still running.
    #[error("an operation on volume {0} is already in progress; retry later")]
    Busy(String),

    /// Work the call started is still running (a restore); the same call later answers.
    #[error("{0}")]
    InProgress(String),

    /// A quota or finite pool (GIDs, access points) ran out.
    #[error("{0}")]
    ResourceExhausted(String),

    /// A dependency is temporarily unavailable (throttling, network); retrying may succeed.
    #[error("{0}")]
    Unavailable(String),

    /// The driver does not offer this method.
    #[error("{method} is not supported by this driver's {service} service")]
    Unimplemented {
        service: &'static str,
        method: &'static str,
    },

    /// A local system call failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },

    /// The S3 Files API failed; the variant says how.
    #[error(transparent)]
    Cloud(#[from] crate::cloud::CloudError),

    /// A bug or an unexpected state of the driver itself.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// A StorageClass parameter is wrong; `reason` says how to fix it.
    pub fn invalid_parameter(key: &str, reason: impl std::fmt::Display) -> Self {
        Error::InvalidArgument {
            field: "parameters",
            reason: format!("{key}: {reason}"),
        }
    }

    /// Shorthand for [`Error::Io`] with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The gRPC code this error is answered with.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            // CSI reserves Aborted for "an operation is pending for this volume"; the CO
            // retries with backoff.
            Error::Busy(_) => Code::Aborted,
            // The same: csi-provisioner keeps retrying a CreateVolume answered Aborted.
            Error::InProgress(_) => Code::Aborted,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            // Unavailable tells the CO the call may succeed unchanged later, which is true
            // of throttling and transient network faults.
            Error::Unavailable(_) => Code::Unavailable,
            Error::Unimplemented { .. } => Code::Unimplemented,
            // A failed syscall on the node is not the caller's fault and not known to be
            // transient; Internal makes the CO retry with backoff and surfaces the message.
            Error::Io { .. } => Code::Internal,
            Error::Internal(_) => Code::Internal,
            Error::Cloud(cloud) => {
                use crate::cloud::CloudError as C;
                match cloud {
                    C::NotFound(_) => Code::NotFound,
                    // A conflict the controller did not resolve means the object exists in a
                    // form that does not match the request.
                    C::Conflict { .. } => Code::AlreadyExists,
                    // Still throttled after the SDK's retries: the CO should back off.
                    C::Throttled(_) => Code::Unavailable,
                    C::QuotaExceeded(_) => Code::ResourceExhausted,
                    C::Validation(_) => Code::InvalidArgument,
                    // Credentials or IAM policy: an operator must act; retrying will not help.
                    C::AccessDenied(_) => Code::PermissionDenied,
                    C::Transient(_) => Code::Unavailable,
                    C::Other(_) => Code::Internal,
                }
            }
        }
    }
}

/// The longest status message sent: messages echo ids and paths from the request, and a reply
/// whose trailers are too large is refused by grpc-core clients (its default metadata limit is
/// 8 KiB), so the caller would see a transport error instead of the reason.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `message` cut to [`MAX_MESSAGE_BYTES`] at a character boundary, marked where it was cut.
pub fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES - "... (cut)".len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... (cut)", &message[..end])
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        Status::new(err.code(), bounded(err.to_string()))
    }
}

/// Result alias for the driver's request paths.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::CloudError;

    #[test]
    fn each_variant_maps_to_its_csi_code() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let table: Vec<(Error, Code)> = vec![
            (
                Error::invalid("volume_id", "must not be empty"),
                Code::InvalidArgument,
            ),
            (
                Error::NotFound("access point fsap-1".into()),
                Code::NotFound,
            ),
            (Error::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                Error::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (Error::Busy("vol-1".into()), Code::Aborted),
            (
                Error::ResourceExhausted("x".into()),
                Code::ResourceExhausted,
            ),
            (Error::Unavailable("x".into()), Code::Unavailable),
            (
                Error::Unimplemented {
                    service: "Node",
                    method: "NodeStageVolume",
                },
                Code::Unimplemented,
            ),
            (Error::io("creating /x", io), Code::Internal),
            (Error::Internal("x".into()), Code::Internal),
            (CloudError::NotFound("x".into()).into(), Code::NotFound),
            (
                CloudError::Conflict {
                    message: "x".into(),
                    resource_id: None,
                }
                .into(),
                Code::AlreadyExists,
            ),
            (CloudError::Throttled("x".into()).into(), Code::Unavailable),
            (
                CloudError::QuotaExceeded("x".into()).into(),
                Code::ResourceExhausted,
            ),
            (
                CloudError::Validation("x".into()).into(),
                Code::InvalidArgument,
            ),
            (
                CloudError::AccessDenied("x".into()).into(),
                Code::PermissionDenied,
            ),
            (CloudError::Transient("x".into()).into(), Code::Unavailable),
            (CloudError::Other("x".into()).into(), Code::Internal),
        ];
        for (err, code) in table {
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(!status.message().is_empty());
        }
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let id = "é".repeat(10_000);
        let status = Status::from(Error::NotFound(format!("volume {id}")));
        assert!(status.message().len() <= MAX_MESSAGE_BYTES);
        assert!(status.message().ends_with("... (cut)"));
        assert!(status.message().starts_with("volume é"));
        let short = Status::from(Error::NotFound("volume v".into()));
        assert_eq!(short.message(), "volume v not found");
    }

    #[test]
    fn messages_name_the_field_and_the_fix() {
        let status = Status::from(Error::invalid("volume_id", "must not be empty"));
        assert_eq!(status.message(), "invalid volume_id: must not be empty");
        let status = Status::from(Error::Busy("s3files:fs-1::fsap-2".into()));
        assert!(status.message().contains("retry later"));
    }
}
