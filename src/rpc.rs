//! The gRPC boundary shared by every CSI method.
//!
//! [`call`] opens one span per RPC (method name and volume id), logs the request with secrets
//! redacted (see `crate::csi`), turns a panic in the handler into `Internal` instead of a dropped
//! connection, logs the outcome once, and converts the crate error into a gRPC status once.

use std::fmt::Debug;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use futures_util::FutureExt;
use tonic::{Code, Request, Response, Status};
use tracing::{Instrument, debug, error, info, warn};

use crate::csi;

/// What a request says about the volume it concerns, for the per-RPC span.
pub trait RequestInfo {
    /// The volume id, for requests about an existing volume.
    fn volume_id(&self) -> &str {
        ""
    }
    /// The CO's name for a volume that is being created.
    fn volume_name(&self) -> &str {
        ""
    }
}

macro_rules! with_volume_id {
    ($($ty:ident),* $(,)?) => {
        $(impl RequestInfo for csi::$ty {
            fn volume_id(&self) -> &str { &self.volume_id }
        })*
    };
}

macro_rules! without_volume {
    ($($ty:ident),* $(,)?) => { $(impl RequestInfo for csi::$ty {})* };
}

with_volume_id!(
    DeleteVolumeRequest,
    ControllerPublishVolumeRequest,
    ControllerUnpublishVolumeRequest,
    ValidateVolumeCapabilitiesRequest,
    ControllerExpandVolumeRequest,
    ControllerGetVolumeRequest,
    ControllerModifyVolumeRequest,
    NodeStageVolumeRequest,
    NodeUnstageVolumeRequest,
    NodePublishVolumeRequest,
    NodeUnpublishVolumeRequest,
    NodeGetVolumeStatsRequest,
    NodeExpandVolumeRequest,
);

without_volume!(
    GetPluginInfoRequest,
    GetPluginCapabilitiesRequest,
    ProbeRequest,
    ListVolumesRequest,
    GetCapacityRequest,
    ControllerGetCapabilitiesRequest,
    CreateSnapshotRequest,
    DeleteSnapshotRequest,
    ListSnapshotsRequest,
    GetSnapshotRequest,
    NodeGetCapabilitiesRequest,
    NodeGetInfoRequest,
);

impl RequestInfo for csi::CreateVolumeRequest {
    fn volume_name(&self) -> &str {
        &self.name
    }
}

/// Methods that kubelet and the sidecars call on a timer; their successes log at debug only.
const QUIET: &[&str] = &[
    "GetPluginInfo",
    "GetPluginCapabilities",
    "Probe",
    "ControllerGetCapabilities",
    "NodeGetCapabilities",
    "NodeGetInfo",
    "NodeGetVolumeStats",
];

/// Serves one RPC: `handler` gets the decoded request and returns the response or a crate error.
pub async fn call<Req, Resp, F, Fut>(
    method: &'static str,
    request: Request<Req>,
    handler: F,
) -> Result<Response<Resp>, Status>
where
    Req: Debug + RequestInfo,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = crate::Result<Resp>>,
{
    let metrics = request
        .extensions()
        .get::<std::sync::Arc<crate::metrics::Metrics>>()
        .cloned();
    let req = request.into_inner();
    let span = tracing::info_span!(
        "rpc",
        method,
        volume_id = tracing::field::Empty,
        volume_name = tracing::field::Empty
    );
    if !req.volume_id().is_empty() {
        span.record("volume_id", req.volume_id());
    }
    if !req.volume_name().is_empty() {
        span.record("volume_name", req.volume_name());
    }
    async move {
        debug!(request = ?req, "request");
        let start = Instant::now();
        // The handler is invoked inside the guarded future so that a panic while building its
        // future is caught too.
        let outcome = AssertUnwindSafe(async move { handler(req).await })
            .catch_unwind()
            .await;
        let elapsed = start.elapsed();
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        let result = match outcome {
            Ok(Ok(response)) => {
                if QUIET.contains(&method) {
                    debug!(elapsed_ms, "ok");
                } else {
                    info!(elapsed_ms, "ok");
                }
                Ok(Response::new(response))
            }
            Ok(Err(err)) => {
                let status = Status::from(err);
                if is_callers_problem(status.code()) {
                    warn!(elapsed_ms, code = ?status.code(), "{}", status.message());
                } else {
                    error!(elapsed_ms, code = ?status.code(), "{}", status.message());
                }
                Err(status)
            }
            Err(panic) => {
                let what = crate::telemetry::panic_message(panic.as_ref());
                error!(elapsed_ms, panic = %what, "handler panicked");
                Err(Status::internal(crate::error::bounded(format!(
                    "internal error: the driver failed while serving {method} ({what}); \
                     see the driver log"
                ))))
            }
        };
        if let Some(metrics) = metrics {
            let code = result
                .as_ref()
                .map(|_| Code::Ok)
                .unwrap_or_else(|s| s.code());
            metrics.observe_rpc(method, code, elapsed);
        }
        result
    }
    .instrument(span)
    .await
}

/// Writes a service's trait impl: the methods given under `implemented`, plus every method under
/// `unimplemented` answering `Unimplemented` through the common RPC boundary, so early calls are
/// logged and traced like any other. (The `async_trait` attribute must see the expanded methods,
/// which is why the macro emits the whole impl block.)
macro_rules! csi_service_impl {
    (
        impl $trait:ident for $ty:ty, service $service:literal;
        implemented { $($implemented:tt)* }
        unimplemented { $($fn_name:ident($method:literal, $req:ident) -> $resp:ident;)* }
    ) => {
        #[tonic::async_trait]
        impl $trait for $ty {
            $($implemented)*
            $(
                async fn $fn_name(
                    &self,
                    request: tonic::Request<$crate::csi::$req>,
                ) -> Result<tonic::Response<$crate::csi::$resp>, tonic::Status> {
                    $crate::rpc::call($method, request, |_| async {
                        Err($crate::error::Error::Unimplemented { service: $service, method: $method })
                    })
                    .await
                }
            )*
        }
    };
}
pub(crate) use csi_service_impl;

/// Outcomes that come from the request or the CO's timing rather than from a driver fault.
fn is_callers_problem(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::FailedPrecondition
            | Code::Aborted
            | Code::OutOfRange
            | Code::Unimplemented
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[tokio::test]
    async fn a_panicking_handler_answers_internal() {
        let result: Result<Response<csi::ProbeResponse>, Status> =
            call("Probe", Request::new(csi::ProbeRequest {}), |_| async {
                panic!("boom");
            })
            .await;
        let status = result.expect_err("a panic must become an error");
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("boom"), "{}", status.message());
    }

    #[tokio::test]
    async fn handler_errors_keep_their_code_and_message() {
        let result: Result<Response<csi::DeleteVolumeResponse>, Status> = call(
            "DeleteVolume",
            Request::new(csi::DeleteVolumeRequest::default()),
            |_| async { Err(Error::invalid("volume_id", "must not be empty")) },
        )
        .await;
        let status = result.expect_err("error expected");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "invalid volume_id: must not be empty");
    }
}
