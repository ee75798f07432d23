//! CSI conformance: the rules of the CSI spec that this driver claims, checked against the real
//! binary over its real unix socket with a generated tonic client.
//!
//! Each test names the rule it checks. Controller and Node rules are added here as those
//! services gain methods (#4, #5).

mod common;

use common::emulator::test_config;
use common::{ControllerStack, Plugin, mount_capability};
use s3files_csi::csi::volume_capability::access_mode::Mode as AccessMode;
use s3files_csi::csi::{
    self, GetPluginCapabilitiesRequest, GetPluginInfoRequest, ProbeRequest,
    controller_client::ControllerClient, identity_client::IdentityClient, node_client::NodeClient,
    plugin_capability,
};
use tonic::Code;

/// `/bin/true` stands in for the mount helper: these rules never mount.
const NODE: &[&str] = &[
    "node",
    "--node-id",
    "conformance-node-1",
    "--zone-id",
    "use1-az1",
    "--mount-helper",
    "/bin/true",
];
/// Starts the plugin in `mode`; controller mode gets an emulator behind it.
async fn start(args: &[&str]) -> (Plugin, Option<ControllerStack>) {
    if args.first() == Some(&"controller") {
        let stack = ControllerStack::start(test_config(), &args[1..]).await;
        let plugin = Plugin::start_with_env(args, &common::emulator_env(&stack.emulator.url)).await;
        (plugin, Some(stack))
    } else {
        (Plugin::start(args).await, None)
    }
}

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
        let (plugin, _stack) = start(args).await;
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
        "--zone-id",
        "use1-az1",
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
        .filter_map(|c| match &c.r#type {
            Some(plugin_capability::Type::Service(s)) => Some(
                plugin_capability::service::Type::try_from(s.r#type).expect("known enum value"),
            ),
            Some(plugin_capability::Type::VolumeExpansion(_)) => None,
            None => panic!("capability without a type"),
        })
        .collect()
}

fn expansion(caps: &[csi::PluginCapability]) -> Option<plugin_capability::volume_expansion::Type> {
    caps.iter().find_map(|c| match &c.r#type {
        Some(plugin_capability::Type::VolumeExpansion(e)) => {
            plugin_capability::volume_expansion::Type::try_from(e.r#type).ok()
        }
        _ => None,
    })
}

#[tokio::test]
async fn controller_mode_advertises_the_controller_service_and_topology() {
    use plugin_capability::service::Type;
    let (plugin, _stack) = start(CONTROLLER).await;
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
    assert_eq!(
        expansion(&caps),
        Some(plugin_capability::volume_expansion::Type::Online),
        "resizes must work while mounted"
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
        let (plugin, _stack) = start(args).await;
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
async fn controller_methods_the_driver_does_not_offer_answer_unimplemented() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    let mut controller = ControllerClient::new(stack.plugin.channel().await);
    let statuses = [
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
        controller
            .get_snapshot(csi::GetSnapshotRequest::default())
            .await
            .expect_err("get snapshot"),
    ];
    for status in statuses {
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
        assert!(status.message().contains("not supported"), "{status:?}");
    }
    // Snapshots need a data store on S3; without one they are not advertised and say why.
    let status = controller
        .create_snapshot(csi::CreateSnapshotRequest {
            name: "s".into(),
            source_volume_id: format!("s3files:{}", stack.fs_id),
            ..Default::default()
        })
        .await
        .expect_err("no data store");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("--data-store"), "{status:?}");
}

fn rpc_types(
    caps: &[csi::ControllerServiceCapability],
) -> Vec<csi::controller_service_capability::rpc::Type> {
    caps.iter()
        .map(|c| match &c.r#type {
            Some(csi::controller_service_capability::Type::Rpc(r)) => {
                csi::controller_service_capability::rpc::Type::try_from(r.r#type).expect("known")
            }
            None => panic!("capability without a type"),
        })
        .collect()
}

#[tokio::test]
async fn controller_capabilities_match_what_the_controller_implements() {
    use csi::controller_service_capability::rpc::Type;
    let stack = ControllerStack::start(test_config(), &[]).await;
    let mut controller = ControllerClient::new(stack.plugin.channel().await);
    let caps = controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .expect("caps")
        .into_inner();
    let types = rpc_types(&caps.capabilities);
    assert!(types.contains(&Type::CreateDeleteVolume));
    assert!(types.contains(&Type::ExpandVolume));
    assert!(!types.contains(&Type::Unknown));
    // Claimed capabilities must be served, unclaimed ones need not be.
    assert!(
        !types.contains(&Type::PublishUnpublishVolume),
        "ControllerPublish is not implemented"
    );
    assert!(!types.contains(&Type::ListVolumes));
}

fn create_request(stack: &ControllerStack, name: &str) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![mount_capability(AccessMode::MultiNodeMultiWriter)],
        parameters: stack.params(&[]),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: 5 << 30,
            limit_bytes: 0,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_volume_rejects_bad_requests_with_invalid_argument() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    let mut controller = ControllerClient::new(stack.plugin.channel().await);
    let mut no_name = create_request(&stack, "x");
    no_name.name.clear();
    let mut no_caps = create_request(&stack, "pvc-nocaps");
    no_caps.volume_capabilities.clear();
    let mut block = create_request(&stack, "pvc-block");
    block.volume_capabilities[0].access_type = Some(csi::volume_capability::AccessType::Block(
        csi::volume_capability::BlockVolume {},
    ));
    let mut no_mode = create_request(&stack, "pvc-nomode");
    no_mode.volume_capabilities[0].access_mode = None;
    let mut bad_param = create_request(&stack, "pvc-badparam");
    bad_param
        .parameters
        .insert("provisioningMode".into(), "efs-ap".into());
    let mut clone = create_request(&stack, "pvc-clone");
    clone.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: "s3files:fs-0123456789abcdef0".into(),
            },
        )),
    });
    let mut bad_capacity = create_request(&stack, "pvc-cap");
    bad_capacity.capacity_range = Some(csi::CapacityRange {
        required_bytes: 10,
        limit_bytes: 5,
    });
    for (what, req) in [
        ("empty name", no_name),
        ("no capabilities", no_caps),
        ("block", block),
        ("no access mode", no_mode),
        ("efs-ap", bad_param),
        ("clone", clone),
        ("limit below required", bad_capacity),
    ] {
        let status = controller.create_volume(req).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(!status.message().is_empty());
    }
    assert_eq!(
        stack.emulator.emulator.access_point_count(),
        0,
        "nothing created for bad requests"
    );
}

#[tokio::test]
async fn create_volume_is_idempotent_and_delete_volume_too() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    let mut controller = ControllerClient::new(stack.plugin.channel().await);
    let first = controller
        .create_volume(create_request(&stack, "pvc-idem"))
        .await
        .expect("create")
        .into_inner();
    let again = controller
        .create_volume(create_request(&stack, "pvc-idem"))
        .await
        .expect("again")
        .into_inner();
    let (v1, v2) = (first.volume.expect("volume"), again.volume.expect("volume"));
    assert_eq!(v1.volume_id, v2.volume_id);
    assert!(
        v1.volume_id
            .starts_with(&format!("s3files:{}::fsap-", stack.fs_id)),
        "{}",
        v1.volume_id
    );
    assert_eq!(v1.capacity_bytes, 5 << 30);
    let mut zones: Vec<_> = v1
        .accessible_topology
        .iter()
        .map(|t| t.segments["topology.k8s.aws/zone-id"].clone())
        .collect();
    zones.sort();
    assert_eq!(zones, ["use1-az1", "use1-az2"]);
    assert_eq!(stack.emulator.emulator.access_point_count(), 1);

    let delete = csi::DeleteVolumeRequest {
        volume_id: v1.volume_id.clone(),
        ..Default::default()
    };
    controller
        .delete_volume(delete.clone())
        .await
        .expect("delete");
    controller
        .delete_volume(delete)
        .await
        .expect("second delete succeeds");
    assert_eq!(stack.emulator.emulator.access_point_count(), 0);
    let unknown = csi::DeleteVolumeRequest {
        volume_id: "reallyfakevolumeid".into(),
        ..Default::default()
    };
    controller
        .delete_volume(unknown)
        .await
        .expect("unknown ids are already deleted");
    let empty = controller
        .delete_volume(csi::DeleteVolumeRequest::default())
        .await
        .expect_err("empty id");
    assert_eq!(empty.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn validate_volume_capabilities_follows_the_spec() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    let mut controller = ControllerClient::new(stack.plugin.channel().await);
    let volume = controller
        .create_volume(create_request(&stack, "pvc-validate"))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    let ok = controller
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: volume.volume_id.clone(),
            volume_capabilities: vec![
                mount_capability(AccessMode::SingleNodeWriter),
                mount_capability(AccessMode::MultiNodeReaderOnly),
            ],
            ..Default::default()
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(ok.confirmed.is_some(), "{ok:?}");
    let mut block = mount_capability(AccessMode::SingleNodeWriter);
    block.access_type = Some(csi::volume_capability::AccessType::Block(
        csi::volume_capability::BlockVolume {},
    ));
    let no = controller
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: volume.volume_id.clone(),
            volume_capabilities: vec![block],
            ..Default::default()
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(
        no.confirmed.is_none() && no.message.contains("block"),
        "{no:?}"
    );
    let missing = controller
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: format!("s3files:{}::fsap-0123456789abcdef0", stack.fs_id),
            volume_capabilities: vec![mount_capability(AccessMode::SingleNodeWriter)],
            ..Default::default()
        })
        .await
        .expect_err("unknown volume");
    assert_eq!(missing.code(), Code::NotFound);
    for req in [
        csi::ValidateVolumeCapabilitiesRequest {
            volume_capabilities: vec![mount_capability(AccessMode::SingleNodeWriter)],
            ..Default::default()
        },
        csi::ValidateVolumeCapabilitiesRequest {
            volume_id: volume.volume_id.clone(),
            ..Default::default()
        },
    ] {
        let status = controller
            .validate_volume_capabilities(req)
            .await
            .expect_err("invalid");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}

#[tokio::test]
async fn expand_volume_succeeds_without_node_work() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    let mut controller = ControllerClient::new(stack.plugin.channel().await);
    let volume = controller
        .create_volume(create_request(&stack, "pvc-grow"))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    let grown = controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: volume.volume_id,
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 100 << 30,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("expand")
        .into_inner();
    assert_eq!(grown.capacity_bytes, 100 << 30);
    assert!(!grown.node_expansion_required);
    let status = controller
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("no capacity range");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_second_call_for_a_volume_in_flight_is_aborted() {
    let mut config = test_config();
    config.faults.operations.insert(
        "CreateAccessPoint".into(),
        s3files_csi::emulator::faults::FaultSpec {
            latency_ms: 1500,
            ..Default::default()
        },
    );
    let stack = ControllerStack::start(config, &[]).await;
    let channel = stack.plugin.channel().await;
    let mut first = ControllerClient::new(channel.clone());
    let mut second = ControllerClient::new(channel);
    // Both calls overlap: the API call inside takes 1.5 s.
    let (a, b) = tokio::join!(
        first.create_volume(create_request(&stack, "pvc-busy")),
        second.create_volume(create_request(&stack, "pvc-busy")),
    );
    let (ok, aborted) = match (a, b) {
        (Ok(ok), Err(status)) | (Err(status), Ok(ok)) => (ok, status),
        other => panic!("expected one success and one Aborted, got {other:?}"),
    };
    assert_eq!(aborted.code(), Code::Aborted, "{aborted:?}");
    assert!(aborted.message().contains("in progress"), "{aborted:?}");
    assert!(ok.into_inner().volume.is_some());
    assert_eq!(stack.emulator.emulator.access_point_count(), 1);
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
    // The plugin advertises VOLUME_ACCESSIBILITY_CONSTRAINTS: its segment is the key the
    // controller's topology uses, always (a node without a zone id does not start).
    let segments = info.accessible_topology.expect("topology").segments;
    assert_eq!(
        segments.get("topology.k8s.aws/zone-id").map(String::as_str),
        Some("use1-az1")
    );
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
async fn node_claims_only_what_it_serves() {
    use csi::node_service_capability::{Type as CapType, rpc::Type};
    let plugin = Plugin::start(NODE).await;
    let mut node = NodeClient::new(plugin.channel().await);
    let caps = node
        .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
        .await
        .expect("caps")
        .into_inner();
    let types: Vec<Type> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(CapType::Rpc(r)) => Type::try_from(r.r#type).ok(),
            None => None,
        })
        .collect();
    assert!(types.contains(&Type::GetVolumeStats));
    assert!(types.contains(&Type::VolumeCondition));
    assert!(
        !types.contains(&Type::StageUnstageVolume),
        "no staging, so NodeStage must not be claimed"
    );
    let stage = node
        .node_stage_volume(csi::NodeStageVolumeRequest::default())
        .await
        .expect_err("stage");
    assert_eq!(stage.code(), Code::Unimplemented);
    let expand = node
        .node_expand_volume(csi::NodeExpandVolumeRequest::default())
        .await
        .expect_err("expand");
    assert_eq!(expand.code(), Code::Unimplemented);
}

#[tokio::test]
async fn node_methods_validate_required_fields() {
    let plugin = Plugin::start(NODE).await;
    let mut node = NodeClient::new(plugin.channel().await);
    let statuses = [
        node.node_publish_volume(csi::NodePublishVolumeRequest::default())
            .await
            .expect_err("publish"),
        node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest::default())
            .await
            .expect_err("unpublish"),
        node.node_get_volume_stats(csi::NodeGetVolumeStatsRequest::default())
            .await
            .expect_err("stats"),
    ];
    for status in statuses {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("volume_id"), "{status:?}");
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

#[tokio::test]
async fn volume_stats_of_a_path_that_is_no_volume_is_not_found_and_of_an_empty_one_invalid() {
    let plugin = Plugin::start(NODE).await;
    let mut node = NodeClient::new(plugin.channel().await);
    let stats = |path: &str| csi::NodeGetVolumeStatsRequest {
        volume_id: "s3files:fs-0123456789abcdef0::fsap-0123456789abcdef1".into(),
        volume_path: path.into(),
        ..Default::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let not_mounted = dir.path().display().to_string();
    for path in [
        "relative/path",
        "/var/lib/kubelet/../x",
        "/nonexistent/pods/x/volumes/mount",
        not_mounted.as_str(),
    ] {
        let err = node
            .node_get_volume_stats(stats(path))
            .await
            .expect_err(path);
        assert_eq!(err.code(), Code::NotFound, "{path}: {err:?}");
    }
    let err = node
        .node_get_volume_stats(stats(""))
        .await
        .expect_err("empty");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("volume_path"), "{err:?}");
}
