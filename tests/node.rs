//! The node plugin as kubelet meets it: real mounts through a test mount helper (a tmpfs named
//! after the volume), the real binary over its socket, and the fake mounter for states a test
//! cannot make with real mounts (a dead FUSE daemon).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{Plugin, mount_capability};
use s3files_csi::csi::node_client::NodeClient;
use s3files_csi::csi::volume_capability::access_mode::Mode as AccessMode;
use s3files_csi::csi::{self};
use s3files_csi::mount::fake::FakeMounter;
use s3files_csi::mount::mountinfo;
use tonic::Code;
use tonic::transport::Channel;

const FS: &str = "fs-0123456789abcdef0";
const AP: &str = "fsap-0123456789abcdef1";

/// A mount.s3files-compatible helper: logs its arguments and mounts a tmpfs named after the
/// source; a target under a pod directory named `pod-fail` or `pod-hang` makes it fail or hang,
/// and `pod-late` makes it hang while a process outside its group mounts two seconds later (a
/// mount that completes after the node's deadline).
const HELPER: &str = r#"#!/bin/sh
src="$1"; tgt="$2"; opts=""
if [ "$3" = "-o" ]; then opts="$4"; fi
echo "$src $tgt $opts" >> "$HELPER_LOG"
case "$tgt" in */pod-fail/*) echo "mount.s3files: access denied by server" >&2; exit 32;; esac
case "$tgt" in */pod-hang/*) exec sleep 600;; esac
case "$tgt" in */pod-late/*)
  setsid sh -c "sleep 2; mount -t tmpfs -o size=1m '$src' '$tgt'" </dev/null >/dev/null 2>&1 &
  exec sleep 600;;
esac
case ",$opts," in *,ro,*) exec mount -t tmpfs -o ro,size=1m "$src" "$tgt";; esac
exec mount -t tmpfs -o size=1m "$src" "$tgt"
"#;

struct Node {
    plugin: Plugin,
    client: NodeClient<Channel>,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Node {
    async fn start(extra: &[&str]) -> Node {
        Node::start_with_env(extra, &[]).await
    }

    async fn start_with_env(extra: &[&str], env: &[(&str, String)]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let helper = dir.path().join("mount.s3files");
        std::fs::write(&helper, HELPER).expect("helper");
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let log = dir.path().join("helper.log");
        let state = dir.path().join("state");
        let mut args = vec![
            "node".to_owned(),
            "--node-id".into(),
            "node-1".into(),
            "--zone".into(),
            "us-east-1a".into(),
            "--zone-id".into(),
            "use1-az1".into(),
            "--mount-helper".into(),
            helper.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut env = env.to_vec();
        env.push(("HELPER_LOG", log.display().to_string()));
        let plugin = Plugin::start_with_env(&args, &env).await;
        let client = NodeClient::new(plugin.channel().await);
        Node {
            plugin,
            client,
            dir,
            log,
        }
    }

    /// A second plugin over the same state directory and helper, as after a restart (only the
    /// basic flags: no zone from Kubernetes, no extra settings).
    async fn restarted(&self) -> (Plugin, NodeClient<Channel>) {
        let state = self.dir.path().join("state").display().to_string();
        let helper = self.dir.path().join("mount.s3files").display().to_string();
        let fresh = Plugin::start_with_env(
            &[
                "node",
                "--node-id",
                "node-1",
                "--zone-id",
                "use1-az1",
                "--mount-helper",
                &helper,
                "--state-dir",
                &state,
            ],
            &[("HELPER_LOG", self.log.display().to_string())],
        )
        .await;
        let client = NodeClient::new(fresh.channel().await);
        (fresh, client)
    }

    fn target(&self, name: &str) -> PathBuf {
        let pod = self.dir.path().join("pods").join(name);
        std::fs::create_dir_all(&pod).expect("pod dir");
        pod.join("mount")
    }

    fn helper_calls(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

fn mounted(path: &Path) -> Option<mountinfo::MountEntry> {
    let table =
        mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo"));
    mountinfo::mount_at(&table, path).cloned()
}

fn publish(
    target: &Path,
    volume_id: &str,
    mode: AccessMode,
    readonly: bool,
    flags: &[&str],
) -> csi::NodePublishVolumeRequest {
    let mut cap = mount_capability(mode);
    if let Some(csi::volume_capability::AccessType::Mount(m)) = cap.access_type.as_mut() {
        m.mount_flags = flags.iter().map(|s| (*s).to_owned()).collect();
    }
    csi::NodePublishVolumeRequest {
        volume_id: volume_id.to_owned(),
        target_path: target.display().to_string(),
        volume_capability: Some(cap),
        readonly,
        ..Default::default()
    }
}

fn unpublish(target: &Path) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: format!("s3files:{FS}::{AP}"),
        target_path: target.display().to_string(),
    }
}

#[tokio::test]
async fn publish_mounts_once_and_unpublish_cleans_up_twice() {
    let mut node = Node::start(&[]).await;
    let target = node.target("pod-a");
    let volume = format!("s3files:{FS}::{AP}");
    node.client
        .node_publish_volume(publish(
            &target,
            &volume,
            AccessMode::MultiNodeMultiWriter,
            false,
            &["lookupcache=pos"],
        ))
        .await
        .expect("publish");
    let entry = mounted(&target).expect("mounted");
    assert_eq!(entry.fs_type, "tmpfs");
    assert_eq!(entry.source, FS);
    let calls = node.helper_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0],
        format!(
            "{FS} {} accesspoint={AP},azid=use1-az1,lookupcache=pos",
            target.display()
        )
    );

    node.client
        .node_publish_volume(publish(
            &target,
            &volume,
            AccessMode::MultiNodeMultiWriter,
            false,
            &["lookupcache=pos"],
        ))
        .await
        .expect("publish again");
    assert_eq!(node.helper_calls().len(), 1, "no second mount");

    node.client
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");
    assert!(mounted(&target).is_none());
    assert!(!target.exists(), "target removed");
    node.client
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("second unpublish succeeds");
}

#[tokio::test]
async fn publish_is_idempotent_across_a_plugin_restart() {
    let mut node = Node::start(&[]).await;
    let target = node.target("pod-restart");
    let volume = format!("s3files:{FS}::{AP}");
    node.client
        .node_publish_volume(publish(
            &target,
            &volume,
            AccessMode::SingleNodeWriter,
            false,
            &[],
        ))
        .await
        .expect("publish");
    let (_fresh, mut client) = node.restarted().await;
    client
        .node_publish_volume(publish(
            &target,
            &volume,
            AccessMode::SingleNodeWriter,
            false,
            &[],
        ))
        .await
        .expect("same publish after restart");
    let other = client
        .node_publish_volume(publish(
            &target,
            &format!("s3files:{FS}::fsap-0123456789abcdef9"),
            AccessMode::SingleNodeWriter,
            false,
            &[],
        ))
        .await
        .expect_err("another volume at the same target");
    assert_eq!(other.code(), Code::AlreadyExists);
    assert_eq!(node.helper_calls().len(), 1);
    client
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");
}

#[tokio::test]
async fn read_only_publish_gives_a_read_only_mount() {
    let mut node = Node::start(&[]).await;
    let target = node.target("pod-ro");
    node.client
        .node_publish_volume(publish(
            &target,
            &format!("s3files:{FS}:/data:{AP}"),
            AccessMode::MultiNodeReaderOnly,
            false,
            &[],
        ))
        .await
        .expect("publish");
    let entry = mounted(&target).expect("mounted");
    assert!(entry.read_only(), "{entry:?}");
    assert!(
        node.helper_calls()[0].starts_with(&format!("{FS}:/data ")),
        "{:?}",
        node.helper_calls()
    );
    let err = std::fs::write(target.join("x"), b"no").expect_err("read-only");
    assert_eq!(err.raw_os_error(), Some(30), "EROFS");
    node.client
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");
}

#[tokio::test]
async fn a_target_mounted_by_something_else_is_refused() {
    let mut node = Node::start(&[]).await;
    let target = node.target("pod-other");
    std::fs::create_dir_all(&target).expect("mkdir");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "other", &target.display().to_string()])
        .status()
        .expect("mount");
    assert!(status.success());
    let err = node
        .client
        .node_publish_volume(publish(
            &target,
            &format!("s3files:{FS}::{AP}"),
            AccessMode::SingleNodeWriter,
            false,
            &[],
        ))
        .await
        .expect_err("occupied");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("did not make"), "{err:?}");
    let _ = std::process::Command::new("umount").arg(&target).status();
}

#[tokio::test]
async fn unpublish_of_a_busy_mount_detaches_it() {
    let mut node = Node::start(&["--unmount-timeout", "2"]).await;
    let target = node.target("pod-busy");
    node.client
        .node_publish_volume(publish(
            &target,
            &format!("s3files:{FS}::{AP}"),
            AccessMode::SingleNodeWriter,
            false,
            &[],
        ))
        .await
        .expect("publish");
    // A process whose working directory is inside the mount makes umount fail with EBUSY.
    let mut holder = std::process::Command::new("sleep")
        .arg("60")
        .current_dir(&target)
        .spawn()
        .expect("holder");
    node.client
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish detaches");
    assert!(mounted(&target).is_none(), "detached from the mount table");
    assert!(!target.exists());
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        node.plugin.log().contains("detaching the mount lazily"),
        "{}",
        node.plugin.log()
    );
}

#[tokio::test]
async fn helper_failures_and_hangs_are_reported_with_stderr() {
    let mut node = Node::start(&["--mount-timeout", "1"]).await;
    let target = node.target("pod-fail");
    let failed = node
        .client
        .node_publish_volume(publish(
            &target,
            &format!("s3files:{FS}::{AP}"),
            AccessMode::SingleNodeWriter,
            false,
            &[],
        ))
        .await
        .expect_err("helper fails");
    assert_eq!(failed.code(), Code::Internal);
    assert!(
        failed.message().contains("access denied by server"),
        "{failed:?}"
    );
    let hung = node
        .client
        .node_publish_volume(publish(
            &node.target("pod-hang"),
            &format!("s3files:{FS}::{AP}"),
            AccessMode::SingleNodeWriter,
            false,
            &[],
        ))
        .await
        .expect_err("helper hangs");
    assert_eq!(hung.code(), Code::Unavailable);
    assert!(hung.message().contains("killed"), "{hung:?}");
}

#[tokio::test]
async fn bad_input_is_invalid_argument_with_the_reason() {
    let mut node = Node::start(&[]).await;
    let target = node.target("pod-bad");
    let good = format!("s3files:{FS}::{AP}");
    let mut block = publish(&target, &good, AccessMode::SingleNodeWriter, false, &[]);
    block.volume_capability.as_mut().expect("cap").access_type =
        Some(csi::volume_capability::AccessType::Block(Default::default()));
    let mut no_cap = publish(&target, &good, AccessMode::SingleNodeWriter, false, &[]);
    no_cap.volume_capability = None;
    let mut unknown_ctx = publish(&target, &good, AccessMode::SingleNodeWriter, false, &[]);
    unknown_ctx
        .volume_context
        .insert("path".into(), "/x".into());
    let mut plain_text = publish(&target, &good, AccessMode::SingleNodeWriter, false, &[]);
    plain_text
        .volume_context
        .insert("encryptInTransit".into(), "false".into());
    let mut bad_ip = publish(&target, &good, AccessMode::SingleNodeWriter, false, &[]);
    bad_ip
        .volume_context
        .insert("mounttargetip".into(), "10.0.0".into());
    let cases: Vec<(&str, csi::NodePublishVolumeRequest, &str)> = vec![
        (
            "malformed handle",
            publish(&target, "fs-123", AccessMode::SingleNodeWriter, false, &[]),
            "volume_id",
        ),
        (
            "efs handle",
            publish(
                &target,
                &format!("efs:{FS}"),
                AccessMode::SingleNodeWriter,
                false,
                &[],
            ),
            "volume_id",
        ),
        (
            "empty volume id",
            publish(&target, "", AccessMode::SingleNodeWriter, false, &[]),
            "volume_id",
        ),
        (
            "relative target",
            publish(
                Path::new("pods/x/mount"),
                &good,
                AccessMode::SingleNodeWriter,
                false,
                &[],
            ),
            "absolute",
        ),
        (
            "missing target",
            publish(
                Path::new(""),
                &good,
                AccessMode::SingleNodeWriter,
                false,
                &[],
            ),
            "target_path",
        ),
        (
            "dotdot target",
            publish(
                Path::new("/var/lib/kubelet/../../etc"),
                &good,
                AccessMode::SingleNodeWriter,
                false,
                &[],
            ),
            "..",
        ),
        ("block", block, "block"),
        ("no capability", no_cap, "volume_capability"),
        (
            "stunnel",
            publish(
                &target,
                &good,
                AccessMode::SingleNodeWriter,
                false,
                &["stunnel"],
            ),
            "stunnel",
        ),
        (
            "capath (efs-proxy has no CA directories)",
            publish(
                &target,
                &good,
                AccessMode::SingleNodeWriter,
                false,
                &["capath=/etc/ssl/certs"],
            ),
            "cafile",
        ),
        (
            "ocsp (an assertion in efs-utils)",
            publish(
                &target,
                &good,
                AccessMode::SingleNodeWriter,
                false,
                &["ocsp"],
            ),
            "OCSP",
        ),
        (
            "nfsvers=4.0",
            publish(
                &target,
                &good,
                AccessMode::SingleNodeWriter,
                false,
                &["nfsvers=4.0"],
            ),
            "4.2",
        ),
        (
            "vers=4.0",
            publish(
                &target,
                &good,
                AccessMode::SingleNodeWriter,
                false,
                &["noatime,vers=4.0"],
            ),
            "4.2",
        ),
        (
            "an option nobody knows",
            publish(
                &target,
                &good,
                AccessMode::SingleNodeWriter,
                false,
                &["noatme"],
            ),
            "not an option",
        ),
        (
            "an access point id of 18 hex digits",
            publish(
                &target,
                &format!("s3files:{FS}::fsap-0123456789abcdef12"),
                AccessMode::SingleNodeWriter,
                false,
                &[],
            ),
            "17 hex digits",
        ),
        (
            "notls",
            publish(
                &target,
                &good,
                AccessMode::SingleNodeWriter,
                false,
                &["notls"],
            ),
            "notls",
        ),
        (
            "az",
            publish(
                &target,
                &good,
                AccessMode::SingleNodeWriter,
                false,
                &["az=us-east-1a"],
            ),
            "azid",
        ),
        (
            "crossaccount",
            publish(
                &target,
                &good,
                AccessMode::SingleNodeWriter,
                false,
                &["tls,crossaccount"],
            ),
            "cross-account",
        ),
        (
            "other access point",
            publish(
                &target,
                &good,
                AccessMode::SingleNodeWriter,
                false,
                &["accesspoint=fsap-0123456789abcdef9"],
            ),
            "contradicts",
        ),
        (
            "rw on read-only",
            publish(&target, &good, AccessMode::SingleNodeWriter, true, &["rw"]),
            "rw",
        ),
        ("unknown context", unknown_ctx, "path"),
        ("encryptInTransit false", plain_text, "encryptInTransit"),
        ("bad mounttargetip", bad_ip, "mounttargetip"),
    ];
    for (what, req, expected) in cases {
        let status = node.client.node_publish_volume(req).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(expected), "{what}: {status:?}");
    }
    assert!(
        node.helper_calls().is_empty(),
        "no bad request reached the helper"
    );
    assert!(
        mounted(&target).is_none(),
        "a refused publish leaves nothing mounted"
    );
    for (what, req) in [
        (
            "no volume id",
            csi::NodeUnpublishVolumeRequest {
                volume_id: String::new(),
                target_path: target.display().to_string(),
            },
        ),
        (
            "relative target",
            csi::NodeUnpublishVolumeRequest {
                volume_id: "v".into(),
                target_path: "x/y".into(),
            },
        ),
    ] {
        let status = node
            .client
            .node_unpublish_volume(req)
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
    }
}

#[tokio::test]
async fn stats_report_usage_and_not_found() {
    let mut node = Node::start(&[]).await;
    let target = node.target("pod-stats");
    let volume = format!("s3files:{FS}::{AP}");
    node.client
        .node_publish_volume(publish(
            &target,
            &volume,
            AccessMode::SingleNodeWriter,
            false,
            &[],
        ))
        .await
        .expect("publish");
    std::fs::write(target.join("f"), vec![7u8; 64 * 1024]).expect("write");
    let stats = node
        .client
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: volume.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .expect("stats")
        .into_inner();
    let bytes = stats
        .usage
        .iter()
        .find(|u| u.unit == csi::volume_usage::Unit::Bytes as i32)
        .expect("bytes");
    assert_eq!(bytes.total, 1 << 20, "the 1 MiB tmpfs");
    assert!(bytes.used >= 64 * 1024, "{bytes:?}");
    assert!(
        stats
            .usage
            .iter()
            .any(|u| u.unit == csi::volume_usage::Unit::Inodes as i32)
    );
    assert_eq!(stats.volume_condition.map(|c| c.abnormal), Some(false));
    node.client
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");
    let gone = node
        .client
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: volume,
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .expect_err("not mounted");
    assert_eq!(gone.code(), Code::NotFound);
}

#[tokio::test]
async fn node_info_reports_zone_and_zone_id() {
    let mut node = Node::start(&[]).await;
    let info = node
        .client
        .node_get_info(csi::NodeGetInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert_eq!(info.node_id, "node-1");
    let segments = info.accessible_topology.expect("topology").segments;
    assert_eq!(segments["topology.kubernetes.io/zone"], "us-east-1a");
    assert_eq!(segments["topology.k8s.aws/zone-id"], "use1-az1");
}

#[tokio::test]
async fn probe_is_not_ready_until_the_helper_exists() {
    let plugin = Plugin::start(&[
        "node",
        "--node-id",
        "n1",
        "--zone-id",
        "use1-az1",
        "--mount-helper",
        "/nonexistent/mount.s3files",
    ])
    .await;
    let health = s3files_csi::client::health(&plugin.endpoint)
        .await
        .expect("probe answers");
    assert!(!health.ready);
    assert!(
        health
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("mount-helper")),
        "{health:?}"
    );
}

/// States real mounts cannot be put in here: a mount whose daemon died.
#[tokio::test]
async fn a_broken_mount_is_abnormal_and_republishing_replaces_it() {
    use s3files_csi::identity::{IdentityService, Mode};
    use s3files_csi::node::{NodeConfig, NodeService, NodeTopology};
    use s3files_csi::server::{Listener, Services};
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = Arc::new(FakeMounter::default());
    let node = NodeService::new(
        NodeConfig {
            node_id: "n".into(),
            topology: NodeTopology::default(),
            region: None,
            state_dir: dir.path().join("state"),
            memory_budget: None,
        },
        fake.clone(),
    );
    let listener = Listener::bind(&"tcp://127.0.0.1:0".parse().expect("endpoint"))
        .await
        .expect("bind");
    let endpoint = listener.local_endpoint().expect("endpoint");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(listener.serve(
        Services {
            identity: IdentityService::new("s3files.csi.dev".into(), Mode::Node, vec![]),
            controller: None,
            node: Some(node),
            metrics: None,
        },
        async move {
            let _ = stopped.await;
        },
        Duration::from_secs(5),
    ));
    let mut client = NodeClient::new(
        s3files_csi::client::connect(&endpoint)
            .await
            .expect("connect"),
    );
    let target = dir.path().join("mount");
    let volume = format!("s3files:{FS}::{AP}");
    client
        .node_publish_volume(publish(
            &target,
            &volume,
            AccessMode::SingleNodeWriter,
            false,
            &[],
        ))
        .await
        .expect("publish");
    fake.break_mount(&target);
    let stats = client
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: volume.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .expect("stats answer even when broken")
        .into_inner();
    let condition = stats.volume_condition.expect("condition");
    assert!(condition.abnormal);
    assert!(condition.message.contains("not connected"), "{condition:?}");
    client
        .node_publish_volume(publish(
            &target,
            &volume,
            AccessMode::SingleNodeWriter,
            false,
            &[],
        ))
        .await
        .expect("republish");
    assert_eq!(fake.mount_calls(), 2, "the broken mount was replaced");
    fake.fail_next_mount("mount.s3files: Failed to resolve file system DNS name");
    let other = dir.path().join("other");
    let err = client
        .node_publish_volume(publish(
            &other,
            &volume,
            AccessMode::SingleNodeWriter,
            false,
            &[],
        ))
        .await
        .expect_err("fails");
    assert!(err.message().contains("DNS"), "{err:?}");
    stop.send(()).expect("running");
    server.await.expect("join").expect("stopped");
}

/// Mounts a FUSE file system at `target` and closes its device at once: the kernel then
/// answers every access with ENOTCONN, exactly like a mount whose daemon died.
fn dead_fuse_mount(target: &Path) {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(target).expect("mkdir");
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .expect("/dev/fuse");
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0",
        device.as_raw_fd()
    );
    nix::mount::mount(
        Some("dead-daemon"),
        target,
        Some("fuse.dead"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .expect("mount a FUSE file system");
    drop(device);
    let err = std::fs::read_dir(target).expect_err("a dead FUSE mount does not answer");
    assert_eq!(err.raw_os_error(), Some(107), "ENOTCONN: {err}");
}

#[tokio::test]
async fn a_dead_fuse_mount_is_abnormal_replaced_on_publish_and_unpublished() {
    let mut node = Node::start(&[]).await;
    let volume = format!("s3files:{FS}::{AP}");

    // Stats on a dead mount: an answer with an abnormal condition, not an error.
    let target = node.target("pod-dead");
    dead_fuse_mount(&target);
    let stats = node
        .client
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: volume.clone(),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await
        .expect("stats")
        .into_inner();
    let condition = stats.volume_condition.expect("condition");
    assert!(condition.abnormal, "{condition:?}");

    // Unpublishing a dead mount succeeds and removes the target.
    node.client
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish a dead mount");
    assert!(mounted(&target).is_none());
    assert!(!target.exists());

    // Publishing onto a dead mount replaces it with a working one.
    let target = node.target("pod-dead-2");
    dead_fuse_mount(&target);
    node.client
        .node_publish_volume(publish(
            &target,
            &volume,
            AccessMode::SingleNodeWriter,
            false,
            &[],
        ))
        .await
        .expect("publish over a dead mount");
    let entry = mounted(&target).expect("mounted");
    assert_eq!(entry.fs_type, "tmpfs", "the working mount is on top");
    std::fs::write(target.join("ok"), b"works").expect("writable");
    node.client
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");
    assert!(mounted(&target).is_none(), "every layer peeled off");
}

/// A stand-in for amazon-efs-mount-watchdog: logs its start and stop, prints a line, and
/// leaves an orphan behind as mount.s3files leaves efs-proxy.
const WATCHDOG: &str = r#"#!/bin/sh
echo "started $$" >> "$WATCHDOG_LOG"
trap 'echo "stopped $$" >> "$WATCHDOG_LOG"; exit 0' TERM
sh -c 'sleep 1 & echo "orphan $!" >> "$WATCHDOG_LOG"'
echo "watchdog says hello"
while :; do sleep 0.1; done
"#;

fn lines_with(path: &Path, word: &str) -> Vec<i32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix(word)?.trim().parse().ok())
        .collect()
}

/// Polls `check` every 50 ms until it holds, failing after `limit` with `what`.
async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn zombies_of(parent: i32) -> Vec<i32> {
    s3files_csi::process::children_of(parent)
        .into_iter()
        .filter(|(_, state, _)| *state == 'Z')
        .map(|(pid, _, _)| pid)
        .collect()
}

#[tokio::test]
async fn the_watchdog_is_supervised_orphans_are_reaped_and_sigterm_stops_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("amazon-efs-mount-watchdog");
    std::fs::write(&script, WATCHDOG).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let log = dir.path().join("watchdog.log");
    let node = Node::start_with_env(
        &["--efs-watchdog", &script.display().to_string()],
        &[("WATCHDOG_LOG", log.display().to_string())],
    )
    .await;
    let plugin_pid = node.plugin.pid();
    eventually(Duration::from_secs(10), "the watchdog starts", || {
        !lines_with(&log, "started").is_empty() && !lines_with(&log, "orphan").is_empty()
    })
    .await;
    let first = lines_with(&log, "started")[0];
    // The orphan comes back to the plugin (a subreaper), exits after a second, and only its
    // parent can collect it: gone means the plugin reaped it.
    let orphan = lines_with(&log, "orphan")[0];
    eventually(
        Duration::from_secs(5),
        "the orphan is re-parented to the plugin",
        || {
            gone(orphan)
                || s3files_csi::process::children_of(plugin_pid)
                    .iter()
                    .any(|(pid, _, _)| *pid == orphan)
        },
    )
    .await;
    assert!(
        !gone(orphan),
        "the orphan exited before it was seen under the plugin"
    );
    eventually(Duration::from_secs(10), "the orphan is reaped", || {
        gone(orphan)
    })
    .await;

    // kill -9: the watchdog comes back, and the dead one is not left <defunct>.
    common::send_signal(first, "KILL");
    eventually(Duration::from_secs(15), "the watchdog is restarted", || {
        lines_with(&log, "started").len() >= 2
    })
    .await;
    let second = lines_with(&log, "started")[1];
    assert_ne!(first, second);
    eventually(
        Duration::from_secs(10),
        "the killed watchdog is reaped",
        || gone(first),
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "no zombie under the plugin",
        || zombies_of(plugin_pid).is_empty(),
    )
    .await;
    assert!(
        node.plugin.log().contains("watchdog says hello"),
        "the watchdog's output is logged: {}",
        node.plugin.log()
    );

    // SIGTERM: the plugin stops serving, then stops the watchdog, and exits 0.
    let Node { plugin, .. } = node;
    let (status, plugin_log) = plugin.terminate().await;
    assert!(status.success(), "{status:?}: {plugin_log}");
    assert_eq!(lines_with(&log, "stopped"), vec![second], "{plugin_log}");
    eventually(Duration::from_secs(5), "the watchdog is gone", || {
        gone(second)
    })
    .await;
}

#[tokio::test]
async fn a_watchdog_path_that_does_not_exist_is_refused_at_start() {
    let (status, _, stderr) = common::run(&[
        "node",
        "--node-id",
        "n1",
        "--zone-id",
        "use1-az1",
        "--efs-watchdog",
        "/nonexistent/amazon-efs-mount-watchdog",
        "--endpoint",
        "tcp://127.0.0.1:0",
    ]);
    assert!(!status.success());
    assert!(stderr.contains("--efs-watchdog"), "{stderr}");
}

#[tokio::test]
async fn a_mount_that_completes_after_the_timeout_is_adopted_by_the_retry() {
    let mut node = Node::start(&["--mount-timeout", "1"]).await;
    let target = node.target("pod-late");
    let volume = format!("s3files:{FS}::{AP}");
    let request = publish(&target, &volume, AccessMode::SingleNodeWriter, false, &[]);
    let err = node
        .client
        .node_publish_volume(request.clone())
        .await
        .expect_err("the helper outlives its deadline");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    eventually(Duration::from_secs(10), "the late mount appears", || {
        mounted(&target).is_some()
    })
    .await;
    // The same request again: the late mount is the one it asked for.
    node.client
        .node_publish_volume(request)
        .await
        .expect("the retry adopts the mount");
    assert_eq!(node.helper_calls().len(), 1, "no second helper run");
    // A different request for the same target is still refused.
    let other = node
        .client
        .node_publish_volume(publish(
            &target,
            &volume,
            AccessMode::SingleNodeWriter,
            true,
            &[],
        ))
        .await
        .expect_err("read-only differs");
    assert_eq!(other.code(), Code::AlreadyExists, "{other:?}");
    node.client
        .node_unpublish_volume(unpublish(&target))
        .await
        .expect("unpublish");
    assert!(mounted(&target).is_none());
}

#[tokio::test]
async fn mounts_beyond_the_proxy_memory_budget_lose_cache_then_direct_reads_then_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let overrides = dir.path().join("overrides");
    std::fs::create_dir_all(&overrides).expect("mkdir");
    // 16 MiB per proxy + a 64 MiB cache + 32 MiB of direct reads: 112 MiB a mount.
    std::fs::write(
        overrides.join("s3files-utils.conf"),
        "[proxy]\nreadahead_cache_max_memory_size_mb = 64\nread_bypass_max_in_flight_s3_bytes = 33554432\n",
    )
    .expect("fragment");
    let config_dir = dir.path().join("etc-amazon-efs");
    let mut node = Node::start(&[
        "--efs-utils-config-dir",
        &config_dir.display().to_string(),
        "--efs-utils-static-dir",
        &dir.path().join("no-package").display().to_string(),
        "--efs-utils-overrides",
        &overrides.display().to_string(),
        "--proxy-memory-budget",
        "250",
    ])
    .await;
    // The file as efs-utils reads it: with Python's configparser.
    let read = std::process::Command::new("python3")
        .arg("-c")
        .arg("import configparser, sys; c = configparser.ConfigParser(); c.read_file(open(sys.argv[1])); print(c.get('proxy', 'readahead_cache_max_memory_size_mb'))")
        .arg(config_dir.join("s3files-utils.conf"))
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&read.stdout).trim(),
        "64",
        "{read:?}"
    );
    let volume = format!("s3files:{FS}::{AP}");
    let mut targets = Vec::new();
    for name in ["pod-m1", "pod-m2", "pod-m3"] {
        let target = node.target(name);
        node.client
            .node_publish_volume(publish(
                &target,
                &volume,
                AccessMode::MultiNodeMultiWriter,
                false,
                &[],
            ))
            .await
            .expect("fits");
        targets.push(target);
    }
    let calls = node.helper_calls();
    assert!(
        !calls[0].contains("nos3readcache") && !calls[1].contains("nos3readcache"),
        "{calls:?}"
    );
    assert!(
        calls[2].contains("nos3readcache") && calls[2].contains("nodirects3read"),
        "the third mount (26 MiB left) runs with the least proxy memory: {calls:?}"
    );
    assert!(
        node.plugin.log().contains("memory budget is nearly spent"),
        "{}",
        node.plugin.log()
    );
    let full = node
        .client
        .node_publish_volume(publish(
            &node.target("pod-m4"),
            &volume,
            AccessMode::MultiNodeMultiWriter,
            false,
            &[],
        ))
        .await
        .expect_err("no room");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    assert!(full.message().contains("memoryBudgetMiB"), "{full:?}");
    // A retry of a published target is still idempotent, and an unpublish frees its share.
    node.client
        .node_publish_volume(publish(
            &targets[0],
            &volume,
            AccessMode::MultiNodeMultiWriter,
            false,
            &[],
        ))
        .await
        .expect("same publish again");
    node.client
        .node_unpublish_volume(unpublish(&targets[0]))
        .await
        .expect("unpublish");
    node.client
        .node_publish_volume(publish(
            &node.target("pod-m4"),
            &volume,
            AccessMode::MultiNodeMultiWriter,
            false,
            &[],
        ))
        .await
        .expect("room again");
    let last = node.helper_calls().pop().expect("call");
    assert!(!last.contains("nos3readcache"), "{last}");
    for t in targets.iter().skip(1).chain([&node.target("pod-m4")]) {
        node.client
            .node_unpublish_volume(unpublish(t))
            .await
            .expect("unpublish");
    }
}

#[tokio::test]
async fn read_write_once_pod_allows_one_target_on_the_node_even_across_a_restart() {
    let mut node = Node::start(&[]).await;
    let volume = format!("s3files:{FS}::{AP}");
    let (a, b) = (node.target("pod-rwop-a"), node.target("pod-rwop-b"));
    let sssw = AccessMode::SingleNodeSingleWriter;
    node.client
        .node_publish_volume(publish(&a, &volume, sssw, false, &[]))
        .await
        .expect("first target");
    node.client
        .node_publish_volume(publish(&a, &volume, sssw, false, &[]))
        .await
        .expect("the same target again is idempotent");
    for mode in [sssw, AccessMode::SingleNodeWriter] {
        let err = node
            .client
            .node_publish_volume(publish(&b, &volume, mode, false, &[]))
            .await
            .expect_err("a second target");
        assert_eq!(err.code(), Code::FailedPrecondition, "{mode:?}: {err:?}");
        assert!(err.message().contains("pod-rwop-a"), "{err:?}");
    }
    assert!(
        mounted(&b).is_none(),
        "nothing mounted at the refused target"
    );
    // Another volume is not affected.
    let other = format!("s3files:{FS}::fsap-0123456789abcdef9");
    node.client
        .node_publish_volume(publish(&b, &other, sssw, false, &[]))
        .await
        .expect("another volume");
    node.client
        .node_unpublish_volume(unpublish(&b))
        .await
        .expect("unpublish b");

    // A restarted plugin knows from its records and the mount table.
    let (_fresh, mut client) = node.restarted().await;
    let err = client
        .node_publish_volume(publish(&b, &volume, sssw, false, &[]))
        .await
        .expect_err("still published at a");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    client
        .node_unpublish_volume(unpublish(&a))
        .await
        .expect("unpublish a");
    client
        .node_publish_volume(publish(&b, &volume, sssw, false, &[]))
        .await
        .expect("free again");
    client
        .node_unpublish_volume(unpublish(&b))
        .await
        .expect("unpublish b");
}
