//! The CSI Node service.
//!
//! `NodeGetInfo` and `NodeGetCapabilities` work now; mounting lands with the node issue (#5)
//! and the other methods answer `Unimplemented` with a message until then.

use tonic::{Request, Response, Status};

use crate::csi::{self, node_server::Node};
use crate::rpc;
use crate::rpc::csi_service_impl;

/// The longest node id the CSI spec allows in `NodeGetInfoResponse`.
pub const MAX_NODE_ID_BYTES: usize = 256;

/// The Node service.
#[derive(Clone)]
pub struct NodeService {
    node_id: String,
}

impl NodeService {
    /// `node_id` must already be valid (see [`validate_node_id`]).
    pub fn new(node_id: String) -> Self {
        Self { node_id }
    }
}

/// Checks a node id: non-empty, at most 256 bytes, no control characters.
pub fn validate_node_id(node_id: &str) -> Result<(), String> {
    if node_id.trim().is_empty() {
        return Err(
            "node id is empty; pass --node-id or set NODE_ID (usually spec.nodeName)".into(),
        );
    }
    if node_id.len() > MAX_NODE_ID_BYTES {
        return Err(format!(
            "node id is {} bytes, over the CSI limit of {MAX_NODE_ID_BYTES}",
            node_id.len()
        ));
    }
    if node_id.chars().any(char::is_control) {
        return Err(format!("node id {node_id:?} contains control characters"));
    }
    Ok(())
}

csi_service_impl! {
    impl Node for NodeService, service "Node";
    implemented {
        async fn node_get_info(
            &self,
            request: Request<csi::NodeGetInfoRequest>,
        ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
            rpc::call("NodeGetInfo", request, |_| async {
                Ok(csi::NodeGetInfoResponse {
                    node_id: self.node_id.clone(),
                    // Shared file systems put no per-node limit on mounts.
                    max_volumes_per_node: 0,
                    // TODO(#5): report the zone and zone id of this node.
                    accessible_topology: None,
                })
            })
            .await
        }

        async fn node_get_capabilities(
            &self,
            request: Request<csi::NodeGetCapabilitiesRequest>,
        ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
            rpc::call("NodeGetCapabilities", request, |_| async {
                Ok(csi::NodeGetCapabilitiesResponse { capabilities: Vec::new() })
            })
            .await
        }
    }
    unimplemented {
        node_stage_volume("NodeStageVolume", NodeStageVolumeRequest) -> NodeStageVolumeResponse;
        node_unstage_volume("NodeUnstageVolume", NodeUnstageVolumeRequest)
            -> NodeUnstageVolumeResponse;
        node_publish_volume("NodePublishVolume", NodePublishVolumeRequest)
            -> NodePublishVolumeResponse;
        node_unpublish_volume("NodeUnpublishVolume", NodeUnpublishVolumeRequest)
            -> NodeUnpublishVolumeResponse;
        node_get_volume_stats("NodeGetVolumeStats", NodeGetVolumeStatsRequest)
            -> NodeGetVolumeStatsResponse;
        node_expand_volume("NodeExpandVolume", NodeExpandVolumeRequest)
            -> NodeExpandVolumeResponse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_checked_against_the_spec_limit() {
        assert!(validate_node_id("ip-10-0-0-1.ec2.internal").is_ok());
        assert!(validate_node_id(&"n".repeat(256)).is_ok());
        assert!(validate_node_id(&"n".repeat(257)).is_err());
        assert!(validate_node_id("").is_err());
        assert!(validate_node_id("   ").is_err());
        assert!(validate_node_id("a\nb").is_err());
    }
}
