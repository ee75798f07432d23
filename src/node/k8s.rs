//! What the node plugin asks Kubernetes: its own Node's zone and region labels (for topology
//! and the helper's `azid` and `region`), and the removal of the `s3files.csi.dev/agent-not-ready` taint once the
//! plugin serves, so clusters can keep pods off a node until its driver is ready.
//!
//! RBAC: `get` and `patch` on the plugin's own Node.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use tracing::{info, warn};

use super::NodeTopology;
use crate::controller::{TOPOLOGY_ZONE_ID_KEY, TOPOLOGY_ZONE_KEY};

/// The taint the node plugin removes from its Node when it is ready.
pub const NOT_READY_TAINT: &str = "s3files.csi.dev/agent-not-ready";

/// The well-known label of a Node's region.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";

/// Reads the zone name, zone id and region labels of Node `name`.
pub async fn node_topology(client: kube::Client, name: &str) -> Result<NodeTopology, kube::Error> {
    let node = Api::<Node>::all(client).get(name).await?;
    let labels = node.metadata.labels.unwrap_or_default();
    Ok(NodeTopology {
        zone: labels.get(TOPOLOGY_ZONE_KEY).cloned(),
        zone_id: labels.get(TOPOLOGY_ZONE_ID_KEY).cloned(),
        region: labels.get(REGION_LABEL).cloned(),
    })
}

/// Removes `taint` from Node `name`; returns whether it was there. The patch tests the taint
/// list it read, so a concurrent change to the Node's taints makes it fail rather than lose
/// that change; the caller retries.
pub async fn remove_taint(
    client: kube::Client,
    name: &str,
    taint: &str,
) -> Result<bool, kube::Error> {
    let api = Api::<Node>::all(client);
    let node = api.get(name).await?;
    let taints = node.spec.and_then(|s| s.taints).unwrap_or_default();
    if !taints.iter().any(|t| t.key == taint) {
        return Ok(false);
    }
    let kept: Vec<_> = taints.iter().filter(|t| t.key != taint).cloned().collect();
    let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
        { "op": "test", "path": "/spec/taints", "value": taints },
        { "op": "replace", "path": "/spec/taints", "value": kept },
    ]))
    .map_err(kube::Error::SerdeError)?;
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    Ok(true)
}

/// Keeps trying to remove the not-ready taint until it succeeds (backing off to 30 s).
pub async fn remove_taint_until_done(client: kube::Client, name: String) {
    let mut delay = Duration::from_millis(500);
    loop {
        match remove_taint(client.clone(), &name, NOT_READY_TAINT).await {
            Ok(true) => {
                info!(node = %name, taint = NOT_READY_TAINT, "removed the not-ready taint");
                return;
            }
            Ok(false) => return,
            Err(e) => warn!(node = %name, error = %e, "could not remove the not-ready taint yet"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}
