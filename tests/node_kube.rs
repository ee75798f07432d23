//! The node plugin and Kubernetes: zone labels from its Node object and removal of its
//! not-ready taint, against a small fake API server on loopback serving real Node JSON.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use common::Plugin;
use s3files_csi::csi::{self, node_client::NodeClient};
use serde_json::{Value, json};

type Nodes = Arc<Mutex<Value>>;

fn status(code: u16, reason: &str, message: &str) -> (StatusCode, String) {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        body.to_string(),
    )
}

async fn get_node(State(node): State<Nodes>, Path(name): Path<String>) -> (StatusCode, String) {
    let node = node.lock().expect("lock").clone();
    if node["metadata"]["name"] != name {
        return status(404, "NotFound", &format!("nodes \"{name}\" not found"));
    }
    (StatusCode::OK, node.to_string())
}

async fn patch_node(
    State(node): State<Nodes>,
    Path(name): Path<String>,
    body: Bytes,
) -> (StatusCode, String) {
    let mut node = node.lock().expect("lock");
    if node["metadata"]["name"] != name {
        return status(404, "NotFound", "not found");
    }
    let patch: json_patch::Patch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return status(400, "BadRequest", &e.to_string()),
    };
    let mut updated = node.clone();
    if let Err(e) = json_patch::patch(&mut updated, &patch) {
        return status(422, "Invalid", &e.to_string());
    }
    *node = updated;
    (StatusCode::OK, node.to_string())
}

async fn fake_api(node: Nodes) -> String {
    let app = Router::new()
        .route("/api/v1/nodes/{name}", get(get_node).patch(patch_node))
        .with_state(node);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("fake api") });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_and_region_come_from_the_node_labels_and_the_taint_goes() {
    let node: Nodes = Arc::new(Mutex::new(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "node-7",
            "resourceVersion": "100",
            "labels": {"topology.kubernetes.io/zone": "us-east-1b", "topology.k8s.aws/zone-id": "use1-az2", "topology.kubernetes.io/region": "us-east-1", "kubernetes.io/os": "linux"}
        },
        "spec": {
            "providerID": "aws:///us-east-1b/i-0123456789abcdef0",
            "taints": [
                {"key": "s3files.csi.dev/agent-not-ready", "effect": "NoExecute"},
                {"key": "dedicated", "value": "storage", "effect": "NoSchedule"}
            ]
        },
        "status": {"conditions": []}
    })));
    let url = fake_api(node.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    common::write_kubeconfig(&kubeconfig, &url);
    let state = dir.path().join("state").display().to_string();
    // A helper that records its options and mounts nothing real: a tmpfs.
    let helper = dir.path().join("mount.s3files");
    let calls = dir.path().join("calls");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\necho \"$4\" >> {}\nexec mount -t tmpfs -o size=1m \"$1\" \"$2\"\n",
            calls.display()
        ),
    )
    .expect("helper");
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let plugin = Plugin::start_with_env(
        &[
            "node",
            "--node-id",
            "node-7",
            "--kubernetes",
            "on",
            "--mount-helper",
            &helper.display().to_string(),
            "--state-dir",
            &state,
        ],
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            // The environment must not be where the region comes from here.
            ("AWS_REGION", String::new()),
        ],
    )
    .await;
    let mut client = NodeClient::new(plugin.channel().await);
    let info = client
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    let segments = info.accessible_topology.expect("topology").segments;
    assert_eq!(segments["topology.kubernetes.io/zone"], "us-east-1b");
    assert_eq!(segments["topology.k8s.aws/zone-id"], "use1-az2");

    // Mounts pass region= and azid= from the labels: the real helper needs no instance metadata.
    let target = dir.path().join("pods/p1/mount");
    std::fs::create_dir_all(target.parent().expect("parent")).expect("pod dir");
    client
        .node_publish_volume(csi::NodePublishVolumeRequest {
            volume_id: "s3files:fs-0123456789abcdef0::fsap-0123456789abcdef1".into(),
            target_path: target.display().to_string(),
            volume_capability: Some(common::mount_capability(
                csi::volume_capability::access_mode::Mode::MultiNodeMultiWriter,
            )),
            ..Default::default()
        })
        .await
        .expect("publish");
    let options = std::fs::read_to_string(&calls).expect("helper ran");
    let options: Vec<&str> = options.trim().split(',').collect();
    assert!(options.contains(&"region=us-east-1"), "{options:?}");
    assert!(options.contains(&"azid=use1-az2"), "{options:?}");
    client
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: "s3files:fs-0123456789abcdef0::fsap-0123456789abcdef1".into(),
            target_path: target.display().to_string(),
        })
        .await
        .expect("unpublish");

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let taints = node.lock().expect("lock")["spec"]["taints"].clone();
        let keys: Vec<&str> = taints
            .as_array()
            .expect("taints")
            .iter()
            .filter_map(|t| t["key"].as_str())
            .collect();
        if keys == ["dedicated"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "taint not removed: {keys:?}\n{}",
            plugin.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_win_over_labels_and_a_missing_node_is_only_a_warning() {
    let node: Nodes = Arc::new(Mutex::new(
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "someone-else"}}),
    ));
    let url = fake_api(node).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig");
    common::write_kubeconfig(&kubeconfig, &url);
    let state = dir.path().join("state").display().to_string();
    let plugin = Plugin::start_with_env(
        &[
            "node",
            "--node-id",
            "node-8",
            "--kubernetes",
            "on",
            "--zone-id",
            "use1-az3",
            "--mount-helper",
            "/bin/true",
            "--state-dir",
            &state,
        ],
        &[
            ("KUBECONFIG", kubeconfig.display().to_string()),
            ("AWS_REGION", String::new()),
        ],
    )
    .await;
    let mut client = NodeClient::new(plugin.channel().await);
    let info = client
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    let segments = info.accessible_topology.expect("topology").segments;
    assert_eq!(segments["topology.k8s.aws/zone-id"], "use1-az3");
    assert!(!segments.contains_key("topology.kubernetes.io/zone"));
    assert!(
        plugin
            .log()
            .contains("could not read the Node's zone labels"),
        "{}",
        plugin.log()
    );
    assert!(
        plugin.log().contains("the node's region is unknown"),
        "{}",
        plugin.log()
    );
}
