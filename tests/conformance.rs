//! CSI conformance: the rules of the CSI spec that this driver claims, checked against the real
//! binary over its real unix socket with a generated tonic client.
//!
//! Each test names the rule it checks. Controller and Node rules are added here as those
//! services gain methods (#4, #5).

mod common;

use common::Plugin;
use s3files_csi::csi::{
    self, GetPluginCapabilitiesRequest, GetPluginInfoRequest, ProbeRequest,
    controller_client::ControllerClient, identity_client::IdentityClient, node_client::NodeClient,
    plugin_capability,
};
use tonic::Code;

const NODE: &[&str] = &["node", "--node-id", "conformance-node-1"];
const CONTROLLER: &[&str] = &["controller"];

/// The CSI name rule: at most 63 characters, alphanumeric at both ends, `[-.a-zA-Z0-9]` between.
fn is_csi_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'.')
}

#[tokio::test]
async fn get_plugin_info_has_a_valid_name_and_a_version_in_both_modes() {
    for args in [NODE, CONTROLLER] {
        let plugin = Plugin::start(args).await;
        let mut identity = IdentityClient::new(plugin.channel().await);
        let info = identity
            .get_plugin_info(GetPluginInfoRequest {})
            .await
            .expect("info")
            .into_inner();
        assert!(
            is_csi_name(&info.name),
            "name {:?} breaks the CSI name rule",
            info.name
        );
        assert_eq!(info.name, "s3files.csi.dev");
        assert!(
            !info.vendor_version.is_empty(),
            "vendor_version is REQUIRED"
        );
        assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    }
}

#[tokio::test]
async fn get_plugin_info_reports_the_configured_driver_name() {
    let plugin = Plugin::start(&[
        "node",
        "--node-id",
        "n1",
        "--driver-name",
        "test.s3files.example",
    ])
    .await;
    let mut identity = IdentityClient::new(plugin.channel().await);
    let info = identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.name, "test.s3files.example");
}

#[tokio::test]
async fn get_plugin_info_is_stable_across_calls() {
    let plugin = Plugin::start(NODE).await;
    let mut identity = IdentityClient::new(plugin.channel().await);
    let first = identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    let second = identity
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(first, second);
}

fn service_types(caps: &[csi::PluginCapability]) -> Vec<plugin_capability::service::Type> {
    caps.iter()
        .map(|c| match &c.r#type {
            Some(plugin_capability::Type::Service(s)) => {
                plugin_capability::service::Type::try_from(s.r#type).expect("known enum value")
            }
            other => panic!("unexpected capability {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn controller_mode_advertises_the_controller_service_and_topology() {
    use plugin_capability::service::Type;
    let plugin = Plugin::start(CONTROLLER).await;
    let mut identity = IdentityClient::new(plugin.channel().await);
    let caps = identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .expect("capabilities")
        .into_inner()
        .capabilities;
    let types = service_types(&caps);
    assert!(types.contains(&Type::ControllerService), "{types:?}");
    assert!(
        types.contains(&Type::VolumeAccessibilityConstraints),
        "{types:?}"
    );
    assert!(
        !types.contains(&Type::Unknown),
        "UNKNOWN must never be advertised"
    );
}

#[tokio::test]
async fn node_mode_does_not_claim_a_controller_service() {
    use plugin_capability::service::Type;
    let plugin = Plugin::start(NODE).await;
    let mut identity = IdentityClient::new(plugin.channel().await);
    let caps = identity
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .expect("capabilities")
        .into_inner()
        .capabilities;
    let types = service_types(&caps);
    assert!(!types.contains(&Type::ControllerService), "{types:?}");
    assert!(
        types.contains(&Type::VolumeAccessibilityConstraints),
        "{types:?}"
    );
}

#[tokio::test]
async fn probe_succeeds_and_reports_readiness_explicitly() {
    for args in [NODE, CONTROLLER] {
        let plugin = Plugin::start(args).await;
        let mut identity = IdentityClient::new(plugin.channel().await);
        let probe = identity.probe(ProbeRequest {}).await.expect("probe");
        assert_eq!(probe.into_inner().ready, Some(true));
    }
}

#[tokio::test]
async fn an_unknown_method_of_a_known_service_is_unimplemented() {
    let plugin = Plugin::start(NODE).await;
    let status = raw_unary(&plugin, "/csi.v1.Identity/GetPluginSecrets").await;
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test]
async fn a_service_the_mode_does_not_serve_is_unimplemented() {
    let plugin = Plugin::start(NODE).await;
    let mut controller = ControllerClient::new(plugin.channel().await);
    let status = controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .expect_err("node mode has no controller service");
    assert_eq!(status.code(), Code::Unimplemented);
    for path in [
        "/csi.v1.GroupController/GroupControllerGetCapabilities",
        "/csi.v1.SnapshotMetadata/GetMetadataAllocated",
    ] {
        assert_eq!(
            raw_unary(&plugin, path).await.code(),
            Code::Unimplemented,
            "{path}"
        );
    }
}

#[tokio::test]
async fn controller_methods_not_offered_yet_answer_unimplemented_with_a_message() {
    let plugin = Plugin::start(CONTROLLER).await;
    let mut controller = ControllerClient::new(plugin.channel().await);
    let caps = controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .expect("capabilities")
        .into_inner();
    assert!(caps.capabilities.iter().all(|c| c.r#type.is_some()));

    let statuses = [
        controller
            .create_volume(csi::CreateVolumeRequest::default())
            .await
            .expect_err("create"),
        controller
            .delete_volume(csi::DeleteVolumeRequest::default())
            .await
            .expect_err("delete"),
        controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await
            .expect_err("list"),
        controller
            .get_capacity(csi::GetCapacityRequest::default())
            .await
            .expect_err("capacity"),
        controller
            .controller_publish_volume(csi::ControllerPublishVolumeRequest::default())
            .await
            .expect_err("publish"),
    ];
    for status in statuses {
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
        assert!(status.message().contains("not supported"), "{status:?}");
    }
}

#[tokio::test]
async fn node_get_info_returns_the_node_id_within_the_size_limit() {
    let plugin = Plugin::start(NODE).await;
    let mut node = NodeClient::new(plugin.channel().await);
    let info = node
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.node_id, "conformance-node-1");
    assert!(info.node_id.len() <= 256);
    assert!(info.max_volumes_per_node >= 0);
}

#[tokio::test]
async fn node_capabilities_never_include_unknown() {
    let plugin = Plugin::start(NODE).await;
    let mut node = NodeClient::new(plugin.channel().await);
    let caps = node
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .expect("caps")
        .into_inner();
    for cap in caps.capabilities {
        let Some(csi::node_service_capability::Type::Rpc(rpc)) = cap.r#type else {
            panic!("capability without a type");
        };
        assert_ne!(rpc.r#type, 0, "UNKNOWN must never be advertised");
    }
}

#[tokio::test]
async fn node_methods_not_offered_yet_answer_unimplemented_with_a_message() {
    let plugin = Plugin::start(NODE).await;
    let mut node = NodeClient::new(plugin.channel().await);
    let statuses = [
        node.node_publish_volume(csi::NodePublishVolumeRequest::default())
            .await
            .expect_err("publish"),
        node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest::default())
            .await
            .expect_err("unpublish"),
        node.node_stage_volume(csi::NodeStageVolumeRequest::default())
            .await
            .expect_err("stage"),
        node.node_get_volume_stats(csi::NodeGetVolumeStatsRequest::default())
            .await
            .expect_err("stats"),
    ];
    for status in statuses {
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
        assert!(!status.message().is_empty());
    }
}

/// Calls an arbitrary gRPC path with an empty message, as a client built from another proto
/// version would.
async fn raw_unary(plugin: &Plugin, path: &'static str) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(plugin.channel().await);
    grpc.ready().await.expect("channel ready");
    let codec = tonic_prost::ProstCodec::<csi::ProbeRequest, csi::ProbeResponse>::default();
    grpc.unary(
        tonic::Request::new(csi::ProbeRequest {}),
        http::uri::PathAndQuery::from_static(path),
        codec,
    )
    .await
    .expect_err("path must not be served")
}
