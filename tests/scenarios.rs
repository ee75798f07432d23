//! The kind e2e suite's scenarios (tests/e2e.rs), run here against the binaries directly.
//!
//! Docker cannot run on these machines, so the cluster is played by processes: `moto_server` as
//! the object store, `s3files-csi emulator` started with the chart's local-profile arguments
//! (a preset file system on a versioned bucket), one controller plugin and two node plugins in
//! different zones, each started with the flags and environment the chart gives them. The test
//! makes the CSI calls csi-provisioner and kubelet make, with the StorageClass parameters read
//! from `charts/s3files-csi-driver/values-local.yaml`, and the node plugins mount through this
//! binary installed as `mount.s3files`, as the local image does. What only a cluster can show
//! (scheduling, the API objects, ReadWriteOncePod enforcement by kubelet) stays in the kind
//! suite.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::s3server::S3Server;
use common::{BIN, Plugin, mount_capability};
use object_store::ObjectStore;
use s3files_csi::csi::controller_client::ControllerClient;
use s3files_csi::csi::node_client::NodeClient;
use s3files_csi::csi::volume_capability::access_mode::Mode as AccessMode;
use s3files_csi::csi::{self, Topology};
use s3files_csi::mount::mountinfo;
use tonic::transport::Channel;

const VALUES_LOCAL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/s3files-csi-driver/values-local.yaml"
);
/// The file system and bucket the local profile presets (`local.fileSystemId`, `local.bucket`).
const FS: &str = "fs-0000000000000000a";
const BUCKET: &str = "s3files-local";
const ZONE_KEY: &str = "topology.k8s.aws/zone-id";

/// The StorageClasses of the local profile: name -> parameters.
fn storage_classes() -> HashMap<String, HashMap<String, String>> {
    let text = std::fs::read_to_string(VALUES_LOCAL).expect("values-local.yaml");
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("values-local.yaml parses");
    let values = &docs[0];
    assert_eq!(
        values["local"]["fileSystemId"].as_str().unwrap_or(FS),
        FS,
        "the test presets the file system the profile names"
    );
    let mut classes = HashMap::new();
    for class in values["storageClasses"].as_vec().expect("storageClasses") {
        let name = class["name"].as_str().expect("class name").to_owned();
        let params = class["parameters"]
            .as_hash()
            .expect("parameters")
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().expect("key").to_owned(),
                    v.as_str().expect("parameter values are strings").to_owned(),
                )
            })
            .collect();
        classes.insert(name, params);
    }
    classes
}

use common::free_port;

/// The emulator as the chart's local profile runs it.
struct EmulatorProcess {
    child: Child,
    url: String,
    _state: tempfile::TempDir,
}

impl Drop for EmulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The driver's environment in the local profile (`s3files.env` in the chart's helpers).
fn driver_env(emulator: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL_S3FILES", emulator.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "local".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "local".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
}

struct NodeSpec {
    id: &'static str,
    zone: &'static str,
    zone_id: &'static str,
}

const NODES: [NodeSpec; 2] = [
    NodeSpec {
        id: "worker-a",
        zone: "us-east-1a",
        zone_id: "use1-az1",
    },
    NodeSpec {
        id: "worker-b",
        zone: "us-east-1b",
        zone_id: "use1-az2",
    },
];

/// One node plugin; its state directory outlives restarts, as the host path does.
struct NodePlugin {
    plugin: Option<Plugin>,
    spec: &'static NodeSpec,
    state: PathBuf,
    pods: PathBuf,
}

struct Cluster {
    _store_server: S3Server,
    bucket: Arc<dyn ObjectStore>,
    emulator: EmulatorProcess,
    controller: Plugin,
    nodes: Vec<NodePlugin>,
    /// Holds `mount.s3files`, state and pod directories.
    dir: tempfile::TempDir,
    classes: HashMap<String, HashMap<String, String>>,
}

impl Cluster {
    async fn start() -> Cluster {
        let store_server = S3Server::start().await;
        let port = free_port();
        let emulator_url = format!("http://127.0.0.1:{port}");
        let state = tempfile::tempdir().expect("tempdir");
        let child = Command::new(BIN)
            .args([
                "emulator",
                &format!("--listen=127.0.0.1:{port}"),
                &format!("--state-dir={}", state.path().display()),
                "--ready-after=0",
                &format!("--bucket-endpoint={}", store_server.url),
                &format!("--preset-file-system={FS}=arn:aws:s3:::{BUCKET}"),
            ])
            .env("AWS_ACCESS_KEY_ID", "local")
            .env("AWS_SECRET_ACCESS_KEY", "local")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the emulator");
        let emulator = EmulatorProcess {
            child,
            url: emulator_url.clone(),
            _state: state,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the emulator did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let controller = Plugin::start_with_env(
            &[
                "controller",
                "--api-rate-limit=0",
                "--api-retry-mode=standard",
                &format!("--data-store=s3:{}", store_server.url),
            ],
            &driver_env(&emulator_url),
        )
        .await;

        let dir = tempfile::tempdir().expect("tempdir");
        // The local image installs the binary as /sbin/mount.s3files; it acts as the helper
        // when called by that name.
        let helper = dir.path().join("mount.s3files");
        std::os::unix::fs::symlink(BIN, &helper).expect("helper link");
        let mut nodes = Vec::new();
        for spec in &NODES {
            let state = dir.path().join(spec.id).join("state");
            let pods = dir.path().join(spec.id).join("pods");
            std::fs::create_dir_all(&pods).expect("pods dir");
            let mut node = NodePlugin {
                plugin: None,
                spec,
                state,
                pods,
            };
            node.plugin = Some(
                Self::start_node(&node, &helper, &emulator_url, &dir.path().join(spec.id)).await,
            );
            nodes.push(node);
        }
        Cluster {
            bucket: store_server.store(BUCKET),
            _store_server: store_server,
            emulator,
            controller,
            nodes,
            dir,
            classes: storage_classes(),
        }
    }

    /// Starts a node plugin with the chart's node flags (`--kubernetes=auto` finds no API
    /// server here, so the zone comes from flags, as instance metadata would give it).
    async fn start_node(node: &NodePlugin, helper: &Path, emulator: &str, home: &Path) -> Plugin {
        let socket = home.join("csi.sock");
        let _ = std::fs::remove_file(&socket);
        let args = [
            "node".to_owned(),
            format!("--node-id={}", node.spec.id),
            format!("--state-dir={}", node.state.display()),
            "--kubernetes=auto".to_owned(),
            format!("--zone={}", node.spec.zone),
            format!("--zone-id={}", node.spec.zone_id),
            format!("--mount-helper={}", helper.display()),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let plugin = Plugin::spawn_with_env(
            &args,
            &socket,
            tempfile::tempdir().expect("tempdir"),
            &driver_env(emulator),
        );
        plugin.wait_serving().await;
        plugin
    }

    async fn restart_node(&mut self, i: usize) {
        let old = self.nodes[i].plugin.take().expect("running");
        let _ = old.kill().await;
        let helper = self.dir.path().join("mount.s3files");
        let home = self.dir.path().join(self.nodes[i].spec.id);
        let plugin = Self::start_node(&self.nodes[i], &helper, &self.emulator.url, &home).await;
        self.nodes[i].plugin = Some(plugin);
    }

    async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.controller.channel().await)
    }

    async fn node(&self, i: usize) -> NodeClient<Channel> {
        NodeClient::new(
            self.nodes[i]
                .plugin
                .as_ref()
                .expect("running")
                .channel()
                .await,
        )
    }

    /// CreateVolume as csi-provisioner sends it for a claim of `class` bound on node `i`
    /// (WaitForFirstConsumer: the node's zone comes first in the preferred topology).
    async fn provision(&self, claim: &str, class: &str, mode: AccessMode, i: usize) -> csi::Volume {
        let mut parameters = self
            .classes
            .get(class)
            .unwrap_or_else(|| panic!("no StorageClass {class} in values-local.yaml"))
            .clone();
        let pv = format!("pvc-{claim}");
        parameters.insert("csi.storage.k8s.io/pvc/name".into(), claim.into());
        parameters.insert("csi.storage.k8s.io/pvc/namespace".into(), "e2e".into());
        parameters.insert("csi.storage.k8s.io/pv/name".into(), pv.clone());
        // csi-provisioner's requisite is every node's zone; preferred starts with the zone of
        // the node the scheduler picked.
        let zone = |n: &NodeSpec| Topology {
            segments: [(ZONE_KEY.to_owned(), n.zone_id.to_owned())].into(),
        };
        let requisite: Vec<Topology> = NODES.iter().map(zone).collect();
        let mut preferred = vec![zone(&NODES[i])];
        preferred.extend(NODES.iter().filter(|n| n.id != NODES[i].id).map(zone));
        let req = csi::CreateVolumeRequest {
            name: pv,
            volume_capabilities: vec![mount_capability(mode)],
            parameters,
            accessibility_requirements: Some(csi::TopologyRequirement {
                requisite,
                preferred,
            }),
            ..Default::default()
        };
        self.controller()
            .await
            .create_volume(req)
            .await
            .expect("CreateVolume")
            .into_inner()
            .volume
            .expect("volume")
    }

    /// NodePublishVolume as kubelet sends it for pod `pod` on node `i`; returns the target.
    async fn publish(
        &self,
        i: usize,
        pod: &str,
        volume: &csi::Volume,
        mode: AccessMode,
        readonly: bool,
    ) -> PathBuf {
        let dir = self.nodes[i].pods.join(pod).join("volumes");
        std::fs::create_dir_all(&dir).expect("pod dir");
        let target = dir.join("mount");
        self.node(i)
            .await
            .node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: volume.volume_id.clone(),
                target_path: target.display().to_string(),
                volume_capability: Some(mount_capability(mode)),
                readonly,
                volume_context: volume.volume_context.clone(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|s| {
                panic!(
                    "NodePublishVolume on {}: {s:?}\n{}",
                    NODES[i].id,
                    self.nodes[i]
                        .plugin
                        .as_ref()
                        .map(Plugin::log)
                        .unwrap_or_default()
                )
            });
        target
    }

    async fn unpublish(&self, i: usize, volume: &csi::Volume, target: &Path) {
        self.node(i)
            .await
            .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: volume.volume_id.clone(),
                target_path: target.display().to_string(),
            })
            .await
            .expect("NodeUnpublishVolume");
    }

    async fn delete(&self, volume: &csi::Volume) {
        self.controller()
            .await
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: volume.volume_id.clone(),
                ..Default::default()
            })
            .await
            .expect("DeleteVolume");
    }

    /// Access point ids of the preset file system, as the emulator reports them.
    async fn access_points(&self) -> Vec<String> {
        use s3files_csi::cloud::S3Files;
        let sdk = common::emulator::sdk_client(&self.emulator.url, 3);
        s3files_csi::cloud::aws::AwsS3Files::new(sdk, None)
            .list_access_points(FS)
            .await
            .expect("ListAccessPoints")
            .into_iter()
            .map(|a| a.id)
            .collect()
    }

    /// Keys in the bucket whose object holds `needle`.
    async fn keys_holding(&self, needle: &[u8]) -> Vec<String> {
        use futures_util::StreamExt;
        use object_store::ObjectStoreExt;
        let metas: Vec<_> = self.bucket.list(None).collect().await;
        let mut keys = Vec::new();
        for meta in metas.into_iter().flatten() {
            let Ok(got) = self.bucket.get(&meta.location).await else {
                continue;
            };
            let body = got.bytes().await.expect("body");
            if body.windows(needle.len()).any(|w| w == needle) {
                keys.push(meta.location.to_string());
            }
        }
        keys
    }
}

impl Drop for Cluster {
    /// A failed test leaves no mount behind (its FUSE daemon exits once unmounted).
    fn drop(&mut self) {
        let table =
            mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
        for m in table
            .iter()
            .filter(|m| m.mount_point.starts_with(self.dir.path()))
        {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&m.mount_point)
                .status();
        }
    }
}

fn mounted(path: &Path) -> Option<mountinfo::MountEntry> {
    let table =
        mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo"));
    mountinfo::mount_at(&table, path).cloned()
}

/// Runs blocking file work off the test's runtime (the FUSE daemons are other processes, but
/// the runtime must stay free for the gRPC clients).
async fn files<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("file work")
}

/// Writes `body` to `name` under a mounted target, off the runtime.
async fn write(target: &Path, name: &str, body: &'static [u8]) {
    let path = target.join(name);
    files(move || std::fs::write(&path, body).expect("write through the mount")).await;
}

/// Reads `name` under a mounted target, off the runtime.
async fn read(target: &Path, name: &str) -> Vec<u8> {
    let path = target.join(name);
    files(move || std::fs::read(&path).expect("read through the mount")).await
}

fn access_point_of(volume: &csi::Volume) -> String {
    volume
        .volume_id
        .rsplit(':')
        .next()
        .expect("handle ends with the access point")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dynamic_claim_written_on_one_node_is_read_on_another_and_read_only_refuses_writes() {
    let c = Cluster::start().await;
    let rwx = AccessMode::MultiNodeMultiWriter;
    let volume = c.provision("shared", "s3files", rwx, 0).await;
    assert!(
        volume.volume_id.starts_with(&format!("s3files:{FS}")),
        "{}",
        volume.volume_id
    );
    let zones: Vec<_> = volume
        .accessible_topology
        .iter()
        .filter_map(|t| t.segments.get(ZONE_KEY).cloned())
        .collect();
    assert!(
        zones.contains(&"use1-az1".to_owned()) && zones.contains(&"use1-az2".to_owned()),
        "the preset file system has mount targets in every zone: {zones:?}"
    );

    let writer = c.publish(0, "writer", &volume, rwx, false).await;
    let reader = c.publish(1, "reader", &volume, rwx, false).await;
    let (w, r) = (writer.clone(), reader.clone());
    files(move || {
        std::fs::write(w.join("hello"), b"from worker-a\n").expect("write on worker-a");
        // The access point's POSIX user (uid/gid 1000 in the profile) owns what pods write.
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(w.join("hello")).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match std::fs::read(r.join("hello")) {
                Ok(got) if got == b"from worker-a\n" => break,
                other => assert!(
                    Instant::now() < deadline,
                    "worker-b never saw the file: {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        std::fs::write(r.join("reply"), b"from worker-b\n").expect("write on worker-b");
    })
    .await;

    // A read-only mount of the same claim (a pod with readOnly: true).
    let ro = c
        .publish(
            1,
            "read-only",
            &volume,
            AccessMode::MultiNodeReaderOnly,
            true,
        )
        .await;
    assert!(mounted(&ro).expect("mounted").read_only());
    let r = ro.clone();
    files(move || {
        assert_eq!(
            std::fs::read(r.join("hello")).expect("read"),
            b"from worker-a\n"
        );
        let err = std::fs::write(r.join("nope"), b"x").expect_err("read-only refuses writes");
        assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
    })
    .await;

    // ReadWriteOncePod: the driver accepts the single-writer mode (kubelet enforces one pod).
    let once = c
        .provision("once", "s3files", AccessMode::SingleNodeSingleWriter, 1)
        .await;
    let t = c
        .publish(1, "once", &once, AccessMode::SingleNodeSingleWriter, false)
        .await;
    let o = t.clone();
    files(move || {
        std::fs::write(o.join("o"), b"ok").expect("write");
        assert_eq!(std::fs::read(o.join("o")).expect("read"), b"ok");
    })
    .await;
    c.unpublish(1, &once, &t).await;

    for (i, t) in [(0, &writer), (1, &reader), (1, &ro)] {
        c.unpublish(i, &volume, t).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_volume_by_handle_shows_the_same_files() {
    let c = Cluster::start().await;
    let rwx = AccessMode::MultiNodeMultiWriter;
    let source = c.provision("source", "s3files", rwx, 0).await;
    let seed = c.publish(0, "seed", &source, rwx, false).await;
    write(&seed, "s", b"static\n").await;
    c.unpublish(0, &source, &seed).await;

    // A PersistentVolume written by hand carries only the handle: no volume context.
    let by_hand = csi::Volume {
        volume_id: source.volume_id.clone(),
        ..Default::default()
    };
    let t = c.publish(1, "static", &by_hand, rwx, false).await;
    assert_eq!(read(&t, "s").await, b"static\n");
    c.unpublish(1, &by_hand, &t).await;
    assert!(mounted(&t).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublish_unmounts_and_deleting_the_claim_removes_its_access_point_and_data() {
    let c = Cluster::start().await;
    let rwx = AccessMode::MultiNodeMultiWriter;

    // Pod deletion: kubelet unpublishes; the mount and its target are gone from the node.
    let volume = c.provision("doomed", "s3files-delete-data", rwx, 0).await;
    let t = c.publish(0, "write", &volume, rwx, false).await;
    write(&t, "bye", b"doomed bytes\n").await;
    assert!(mounted(&t).is_some());
    c.unpublish(0, &volume, &t).await;
    assert!(mounted(&t).is_none(), "still mounted after unpublish");
    assert!(!t.exists(), "the target directory is removed");
    assert_eq!(
        c.keys_holding(b"doomed bytes").await.len(),
        1,
        "the file reached the bucket"
    );

    // Claim deletion with onDelete: delete removes the access point and its files.
    let ap = access_point_of(&volume);
    assert!(c.access_points().await.contains(&ap));
    c.delete(&volume).await;
    assert!(
        !c.access_points().await.contains(&ap),
        "access point {ap} remains"
    );
    assert!(
        c.keys_holding(b"doomed bytes").await.is_empty(),
        "the volume's files remain in the bucket"
    );

    // Without onDelete the data stays (reclaimPolicy Delete removes only the access point).
    let kept = c.provision("kept", "s3files", rwx, 0).await;
    let t = c.publish(0, "keep", &kept, rwx, false).await;
    write(&t, "stay", b"kept bytes\n").await;
    c.unpublish(0, &kept, &t).await;
    c.delete(&kept).await;
    assert!(!c.access_points().await.contains(&access_point_of(&kept)));
    assert_eq!(c.keys_holding(b"kept bytes").await.len(), 1, "data kept");
    // Deleting again (a retried call) succeeds.
    c.delete(&kept).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_plugin_serves_new_mounts_and_unmounts_old_ones() {
    let mut c = Cluster::start().await;
    let rwx = AccessMode::MultiNodeMultiWriter;
    let volume = c.provision("restart", "s3files", rwx, 0).await;
    let before = c.publish(0, "before", &volume, rwx, false).await;
    write(&before, "f", b"before\n").await;

    c.restart_node(0).await;

    // kubelet retries the publish of a running pod: idempotent, nothing mounted twice.
    let again = c.publish(0, "before", &volume, rwx, false).await;
    assert_eq!(again, before);
    let table =
        mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo"));
    assert_eq!(
        table.iter().filter(|m| m.mount_point == before).count(),
        1,
        "mounted once"
    );
    // A new pod after the restart mounts and sees the data.
    let after = c.publish(0, "after", &volume, rwx, false).await;
    assert_eq!(read(&after, "f").await, b"before\n");
    // The mount made before the restart is unmounted by the new plugin.
    c.unpublish(0, &volume, &before).await;
    assert!(mounted(&before).is_none());
    c.unpublish(0, &volume, &after).await;
    assert!(mounted(&after).is_none());
}
