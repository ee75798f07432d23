//! The CSI Controller service.
//!
//! Provisioning lands with the controller issue (#4); until then every method except
//! `ControllerGetCapabilities` answers `Unimplemented` with a message, so a CO that calls early
//! gets a clear error rather than a hang or a crash.

use tonic::{Request, Response, Status};

use crate::csi::{self, controller_server::Controller};
use crate::error::Error;
use crate::rpc;

/// The Controller service.
#[derive(Clone, Default)]
pub struct ControllerService {}

impl ControllerService {
    /// A controller with no capabilities yet.
    pub fn new() -> Self {
        Self {}
    }
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
                    request: Request<csi::$req>,
                ) -> Result<Response<csi::$resp>, Status> {
                    rpc::call($method, request, |_| async {
                        Err(Error::Unimplemented { service: $service, method: $method })
                    })
                    .await
                }
            )*
        }
    };
}
pub(crate) use csi_service_impl;

csi_service_impl! {
    impl Controller for ControllerService, service "Controller";
    implemented {
        async fn controller_get_capabilities(
            &self,
            request: Request<csi::ControllerGetCapabilitiesRequest>,
        ) -> Result<Response<csi::ControllerGetCapabilitiesResponse>, Status> {
            rpc::call("ControllerGetCapabilities", request, |_| async {
                Ok(csi::ControllerGetCapabilitiesResponse { capabilities: Vec::new() })
            })
            .await
        }
    }
    unimplemented {
        create_volume("CreateVolume", CreateVolumeRequest) -> CreateVolumeResponse;
        delete_volume("DeleteVolume", DeleteVolumeRequest) -> DeleteVolumeResponse;
        controller_publish_volume("ControllerPublishVolume", ControllerPublishVolumeRequest)
            -> ControllerPublishVolumeResponse;
        controller_unpublish_volume("ControllerUnpublishVolume", ControllerUnpublishVolumeRequest)
            -> ControllerUnpublishVolumeResponse;
        validate_volume_capabilities("ValidateVolumeCapabilities", ValidateVolumeCapabilitiesRequest)
            -> ValidateVolumeCapabilitiesResponse;
        list_volumes("ListVolumes", ListVolumesRequest) -> ListVolumesResponse;
        get_capacity("GetCapacity", GetCapacityRequest) -> GetCapacityResponse;
        create_snapshot("CreateSnapshot", CreateSnapshotRequest) -> CreateSnapshotResponse;
        delete_snapshot("DeleteSnapshot", DeleteSnapshotRequest) -> DeleteSnapshotResponse;
        list_snapshots("ListSnapshots", ListSnapshotsRequest) -> ListSnapshotsResponse;
        get_snapshot("GetSnapshot", GetSnapshotRequest) -> GetSnapshotResponse;
        controller_expand_volume("ControllerExpandVolume", ControllerExpandVolumeRequest)
            -> ControllerExpandVolumeResponse;
        controller_get_volume("ControllerGetVolume", ControllerGetVolumeRequest)
            -> ControllerGetVolumeResponse;
        controller_modify_volume("ControllerModifyVolume", ControllerModifyVolumeRequest)
            -> ControllerModifyVolumeResponse;
    }
}
