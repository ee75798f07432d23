//! Snapshots and clones as users meet them: a controller over the gRPC socket, the emulator,
//! moto as the versioned bucket, and FUSE mounts of the volumes through their access points.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::counting::CountingProxy;
use common::emulator::test_config;
use common::mounts::mount;
use common::s3server::S3Server;
use common::{ControllerStack, Plugin, emulator_env, mount_capability};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use s3files_csi::csi::controller_client::ControllerClient;
use s3files_csi::csi::volume_capability::access_mode::Mode as AccessMode;
use s3files_csi::csi::{self, volume_content_source};
use s3files_csi::data::versions::{S3Versions, Versions};
use s3files_csi::emulator::BucketStore;
use s3files_csi::volume::VolumeHandle;
use tonic::Code;
use tonic::transport::Channel;

const BUCKET: &str = "stack-bucket";

struct World {
    stack: ControllerStack,
    s3: S3Server,
    proxy: CountingProxy,
    args: Vec<String>,
}

impl World {
    async fn start() -> World {
        let s3 = S3Server::start().await;
        s3.create_bucket(BUCKET).await;
        let proxy = CountingProxy::start(&s3.url).await;
        let mut config = test_config();
        config.buckets = BucketStore::S3 {
            endpoint: s3.url.clone(),
        };
        let args = vec![
            "--data-store".to_owned(),
            format!("s3:{}", proxy.url),
            "--restore-wait".to_owned(),
            "1".to_owned(),
        ];
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let stack = ControllerStack::start(config, &refs).await;
        World {
            stack,
            s3,
            proxy,
            args,
        }
    }

    async fn client(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.stack.plugin.channel().await)
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        self.s3.store(BUCKET)
    }

    fn versions(&self) -> S3Versions {
        S3Versions::new(sdk(&self.s3.url))
    }

    /// Kills the controller as a crash would and starts another on the same emulator.
    async fn restart_controller(&mut self) {
        let env: Vec<(&str, String)> = emulator_env(&self.stack.emulator.url);
        let mut all = vec!["controller", "--api-rate-limit", "0"];
        all.extend(self.args.iter().map(String::as_str));
        common::send_signal(self.stack.plugin.pid(), "KILL");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let fresh = Plugin::start_with_env(&all, &env).await;
        drop(std::mem::replace(&mut self.stack.plugin, fresh));
    }
}

/// An S3 client of the test's own, with the credentials moto takes.
fn sdk(url: &str) -> aws_sdk_s3::Client {
    use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            common::s3server::ACCESS_KEY,
            common::s3server::SECRET_KEY,
            None,
            None,
            "test",
        ))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

fn volume_request(
    world: &World,
    name: &str,
    source: Option<volume_content_source::Type>,
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![mount_capability(AccessMode::MultiNodeMultiWriter)],
        parameters: world.stack.params(&[("directoryPerms", "0755")]),
        volume_content_source: source.map(|t| csi::VolumeContentSource { r#type: Some(t) }),
        ..Default::default()
    }
}

/// Retries as csi-provisioner does while a restore runs; returns the volume.
async fn create_until_done(
    client: &mut ControllerClient<Channel>,
    req: csi::CreateVolumeRequest,
) -> csi::Volume {
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        match client.create_volume(req.clone()).await {
            Ok(r) => return r.into_inner().volume.expect("volume"),
            Err(s) if matches!(s.code(), Code::Aborted | Code::Unavailable) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "restore never ended: {s:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("CreateVolume failed for good: {s:?}"),
        }
    }
}

fn snapshot_source(id: &str) -> Option<volume_content_source::Type> {
    Some(volume_content_source::Type::Snapshot(
        volume_content_source::SnapshotSource {
            snapshot_id: id.into(),
        },
    ))
}

fn volume_source(id: &str) -> Option<volume_content_source::Type> {
    Some(volume_content_source::Type::Volume(
        volume_content_source::VolumeSource {
            volume_id: id.into(),
        },
    ))
}

async fn snapshot(
    client: &mut ControllerClient<Channel>,
    name: &str,
    volume: &str,
) -> Result<csi::Snapshot, tonic::Status> {
    client
        .create_snapshot(csi::CreateSnapshotRequest {
            source_volume_id: volume.into(),
            name: name.into(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().snapshot.expect("snapshot"))
}

/// What a tree holds, file by file: kind, bytes, mode, mtime (seconds), owner.
type Tree = BTreeMap<String, (char, Vec<u8>, u32, i64, u32, u32)>;

fn tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let rel = path
                .strip_prefix(root)
                .expect("below")
                .to_string_lossy()
                .into_owned();
            let (kind, bytes) = if meta.is_dir() {
                ('d', Vec::new())
            } else {
                ('f', std::fs::read(&path).expect("read"))
            };
            let mtime = if meta.is_dir() { 0 } else { meta.mtime() };
            out.insert(
                rel,
                (
                    kind,
                    bytes,
                    meta.mode() & 0o7777,
                    mtime,
                    meta.uid(),
                    meta.gid(),
                ),
            );
            if meta.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Tree::new();
    walk(root, root, &mut out);
    out
}

/// `tree` with every owner `from` replaced by `to`.
fn owned_by(t: &Tree, from: (u32, u32), to: (u32, u32)) -> Tree {
    t.iter()
        .map(|(k, (kind, b, mode, mtime, uid, gid))| {
            let uid = if *uid == from.0 { to.0 } else { *uid };
            let gid = if *gid == from.1 { to.1 } else { *gid };
            (k.clone(), (*kind, b.clone(), *mode, *mtime, uid, gid))
        })
        .collect()
}

fn write(path: &Path, bytes: &[u8], mode: u32, mtime_secs: u64) {
    std::fs::write(path, bytes).expect("write");
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open");
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime_secs))
        .expect("utimes");
    drop(f);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn ap_of(volume: &csi::Volume) -> (String, String) {
    let h = VolumeHandle::parse(&volume.volume_id).expect("handle");
    (h.file_system_id, h.access_point_id.expect("ap"))
}

async fn owner_of(world: &World, volume: &csi::Volume) -> (u32, u32) {
    use s3files_csi::cloud::S3Files;
    let (_, ap) = ap_of(volume);
    let ap = world
        .stack
        .emulator
        .cloud()
        .get_access_point(&ap)
        .await
        .expect("ap");
    let u = ap.posix_user.expect("posix user");
    (u.uid, u.gid)
}

/// Waits out the rest of the current second: S3 times versions to the second, and a change in
/// the snapshot's second may or may not be in it.
async fn next_second() {
    tokio::time::sleep(Duration::from_millis(1100)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_restores_the_tree_as_it_was_and_a_clone_the_tree_as_it_is() {
    let world = World::start().await;
    let mut client = world.client().await;
    let caps = client
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .expect("caps")
        .into_inner();
    use csi::controller_service_capability::{Type as CapType, rpc::Type};
    let rpcs: Vec<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(CapType::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect();
    for want in [
        Type::CreateDeleteSnapshot,
        Type::ListSnapshots,
        Type::CloneVolume,
    ] {
        assert!(
            rpcs.contains(&(want as i32)),
            "{want:?} not advertised: {rpcs:?}"
        );
    }

    let source = create_until_done(&mut client, volume_request(&world, "pvc-source", None)).await;
    let (fs, ap) = ap_of(&source);
    let owner = owner_of(&world, &source).await;
    {
        let m = mount(&world.stack.emulator, &fs, &ap, "").await;
        let root = &m.target;
        std::fs::create_dir_all(root.join("sub/deeper")).expect("mkdir");
        write(&root.join("a.txt"), b"first a", 0o644, 1_600_000_000);
        write(
            &root.join("b.bin"),
            &vec![7u8; 300_000],
            0o600,
            1_600_000_100,
        );
        write(
            &root.join("sub/c.sh"),
            b"#!/bin/sh\necho c\n",
            0o755,
            1_600_000_200,
        );
        write(
            &root.join("sub/deeper/é 文件.txt"),
            b"unicode",
            0o640,
            1_600_000_300,
        );
        write(&root.join("sub/empty"), b"", 0o444, 1_600_000_400);
    }
    let m = mount(&world.stack.emulator, &fs, &ap, "").await;
    let before = tree(&m.target);
    assert_eq!(before.len(), 7, "{before:?}");
    next_second().await;

    let snap = snapshot(&mut client, "snap-1", &source.volume_id)
        .await
        .expect("snapshot");
    assert!(snap.ready_to_use, "zero-copy snapshots are ready at once");
    assert_eq!(snap.source_volume_id, source.volume_id);
    let again = snapshot(&mut client, "snap-1", &source.volume_id)
        .await
        .expect("retry");
    assert_eq!(again.snapshot_id, snap.snapshot_id);
    assert_eq!(
        again.creation_time, snap.creation_time,
        "a retry is the same snapshot"
    );
    next_second().await;

    // After the snapshot: change, delete, add, chmod.
    write(
        &m.target.join("a.txt"),
        b"second a, longer",
        0o644,
        1_700_000_000,
    );
    std::fs::remove_file(m.target.join("b.bin")).expect("rm");
    write(
        &m.target.join("sub/new.txt"),
        b"added later",
        0o644,
        1_700_000_100,
    );
    std::fs::set_permissions(
        m.target.join("sub/c.sh"),
        std::fs::Permissions::from_mode(0o700),
    )
    .expect("chmod");
    let after = tree(&m.target);
    assert_ne!(after, before);

    let restored = create_until_done(
        &mut client,
        volume_request(&world, "pvc-restored", snapshot_source(&snap.snapshot_id)),
    )
    .await;
    assert_eq!(
        restored.content_source,
        Some(csi::VolumeContentSource {
            r#type: snapshot_source(&snap.snapshot_id)
        })
    );
    let new_owner = owner_of(&world, &restored).await;
    assert_ne!(new_owner, owner, "each volume has its own GID");
    let (_, rap) = ap_of(&restored);
    let rm = mount(&world.stack.emulator, &fs, &rap, "").await;
    assert_eq!(
        tree(&rm.target),
        owned_by(&before, owner, new_owner),
        "the restore is the tree at the snapshot, owned by the new volume's user"
    );
    std::fs::write(rm.target.join("sub/writable.txt"), b"x").expect("the new owner can write");

    // A retry of a finished restore answers at once with the same volume.
    let retried = create_until_done(
        &mut client,
        volume_request(&world, "pvc-restored", snapshot_source(&snap.snapshot_id)),
    )
    .await;
    assert_eq!(retried.volume_id, restored.volume_id);

    next_second().await;
    let clone = create_until_done(
        &mut client,
        volume_request(&world, "pvc-clone", volume_source(&source.volume_id)),
    )
    .await;
    let clone_owner = owner_of(&world, &clone).await;
    let (_, cap) = ap_of(&clone);
    let cm = mount(&world.stack.emulator, &fs, &cap, "").await;
    assert_eq!(tree(&cm.target), owned_by(&after, owner, clone_owner));

    // Listing: by id, by source volume, all, paged.
    let snap2 = snapshot(&mut client, "snap-2", &source.volume_id)
        .await
        .expect("second snapshot");
    let list = |req: csi::ListSnapshotsRequest| {
        let mut c = client.clone();
        async move { c.list_snapshots(req).await.map(|r| r.into_inner()) }
    };
    let by_id = list(csi::ListSnapshotsRequest {
        snapshot_id: snap.snapshot_id.clone(),
        ..Default::default()
    })
    .await
    .expect("list by id");
    assert_eq!(by_id.entries.len(), 1);
    let by_volume = list(csi::ListSnapshotsRequest {
        source_volume_id: source.volume_id.clone(),
        ..Default::default()
    })
    .await
    .expect("list by volume");
    assert_eq!(by_volume.entries.len(), 2);
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = list(csi::ListSnapshotsRequest {
            max_entries: 1,
            starting_token: token.clone(),
            ..Default::default()
        })
        .await
        .expect("page");
        assert!(page.entries.len() <= 1);
        ids.extend(
            page.entries
                .iter()
                .map(|e| e.snapshot.clone().expect("s").snapshot_id),
        );
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    let mut want = vec![snap.snapshot_id.clone(), snap2.snapshot_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    let bad_token = list(csi::ListSnapshotsRequest {
        starting_token: "nothing-like-this".into(),
        ..Default::default()
    })
    .await
    .expect_err("bad token");
    assert_eq!(bad_token.code(), Code::Aborted, "{bad_token:?}");

    // The size is measured after the call: the bytes a restore copies.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let size = loop {
        let s = list(csi::ListSnapshotsRequest {
            snapshot_id: snap.snapshot_id.clone(),
            ..Default::default()
        })
        .await
        .expect("list")
        .entries[0]
            .snapshot
            .clone()
            .expect("s")
            .size_bytes;
        if s > 0 || std::time::Instant::now() > deadline {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let file_bytes: usize = before.values().map(|v| v.1.len()).sum();
    assert_eq!(
        size as usize, file_bytes,
        "size counts file bytes (directories are empty objects)"
    );

    // Delete is idempotent and the snapshot is gone after.
    for _ in 0..2 {
        client
            .delete_snapshot(csi::DeleteSnapshotRequest {
                snapshot_id: snap2.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .expect("delete");
    }
    let gone = create_until_done_err(
        &mut client,
        volume_request(
            &world,
            "pvc-from-deleted",
            snapshot_source(&snap2.snapshot_id),
        ),
    )
    .await;
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    drop((m, rm, cm));

    // Deleting a restored volume deletes its restore record too.
    let record_key = format!(
        "k8s/.s3files-csi/restores/{}.json",
        s3files_csi::controller::client_token("pvc-restored")
    );
    let versions = world.versions();
    assert!(
        versions
            .get(BUCKET, &record_key)
            .await
            .expect("get")
            .is_some()
    );
    client
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: restored.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete the restored volume");
    assert!(
        versions
            .get(BUCKET, &record_key)
            .await
            .expect("get")
            .is_none()
    );
}

async fn create_until_done_err(
    client: &mut ControllerClient<Channel>,
    req: csi::CreateVolumeRequest,
) -> tonic::Status {
    client.create_volume(req).await.expect_err("must fail")
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_snapshot_and_source_requests_get_the_specs_codes() {
    let world = World::start().await;
    let mut client = world.client().await;
    let source = create_until_done(&mut client, volume_request(&world, "pvc-src", None)).await;
    let fs = ap_of(&source).0;
    let snap = snapshot(&mut client, "s", &source.volume_id)
        .await
        .expect("snapshot");

    let cases: Vec<(&str, csi::CreateSnapshotRequest, Code)> = vec![
        (
            "no name",
            csi::CreateSnapshotRequest {
                source_volume_id: source.volume_id.clone(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            "no source",
            csi::CreateSnapshotRequest {
                name: "x".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            "unknown volume",
            csi::CreateSnapshotRequest {
                name: "x".into(),
                source_volume_id: format!("s3files:{fs}::fsap-0123456789abcdef0"),
                ..Default::default()
            },
            Code::NotFound,
        ),
        (
            "not a handle",
            csi::CreateSnapshotRequest {
                name: "x".into(),
                source_volume_id: "vol-1".into(),
                ..Default::default()
            },
            Code::NotFound,
        ),
        (
            "same name, other volume",
            csi::CreateSnapshotRequest {
                name: "s".into(),
                source_volume_id: format!("s3files:{fs}"),
                ..Default::default()
            },
            Code::AlreadyExists,
        ),
        (
            "unknown parameter",
            csi::CreateSnapshotRequest {
                name: "y".into(),
                source_volume_id: source.volume_id.clone(),
                parameters: [("retention".to_owned(), "7d".to_owned())].into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
        (
            "parameter not a boolean",
            csi::CreateSnapshotRequest {
                name: "y".into(),
                source_volume_id: source.volume_id.clone(),
                parameters: [("refuseIfVersionsExpire".to_owned(), "yes".to_owned())].into(),
                ..Default::default()
            },
            Code::InvalidArgument,
        ),
    ];
    for (what, req, code) in cases {
        let status = client.create_snapshot(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert!(!status.message().is_empty(), "{what}");
    }

    let other_fs = "fs-0fedcba9876543210";
    let sources: Vec<(&str, Option<volume_content_source::Type>, Code)> = vec![
        (
            "malformed snapshot id",
            snapshot_source("snap-1"),
            Code::NotFound,
        ),
        (
            "unknown snapshot",
            snapshot_source(&format!("snap:{fs}:{}", "0".repeat(32))),
            Code::NotFound,
        ),
        (
            "snapshot of another file system",
            snapshot_source(&format!("snap:{other_fs}:{}", "0".repeat(32))),
            Code::InvalidArgument,
        ),
        (
            "unknown volume",
            volume_source(&format!("s3files:{fs}::fsap-0123456789abcdef0")),
            Code::NotFound,
        ),
        ("empty source", None, Code::InvalidArgument),
    ];
    for (what, src, code) in sources {
        let mut req = volume_request(&world, "pvc-bad", src);
        if req.volume_content_source.is_none() {
            req.volume_content_source = Some(csi::VolumeContentSource { r#type: None });
        }
        let status = client.create_volume(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {status:?}");
    }

    // A volume deleted since: no new snapshot or clone of it; its snapshot still restores.
    client
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: source.volume_id.clone(),
            ..Default::default()
        })
        .await
        .expect("delete");
    let status = snapshot(&mut client, "late", &source.volume_id)
        .await
        .expect_err("deleted volume");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let status = client
        .create_volume(volume_request(
            &world,
            "pvc-late-clone",
            volume_source(&source.volume_id),
        ))
        .await
        .expect_err("clone of a deleted volume");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    create_until_done(
        &mut client,
        volume_request(
            &world,
            "pvc-from-old-snapshot",
            snapshot_source(&snap.snapshot_id),
        ),
    )
    .await;
    let status = client
        .delete_snapshot(csi::DeleteSnapshotRequest::default())
        .await
        .expect_err("empty id");
    assert_eq!(status.code(), Code::InvalidArgument);
    client
        .delete_snapshot(csi::DeleteSnapshotRequest {
            snapshot_id: "not-ours".into(),
            ..Default::default()
        })
        .await
        .expect("a stranger's id has nothing of ours to delete");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lifecycle_rule_expiring_versions_warns_or_refuses() {
    let world = World::start().await;
    let mut client = world.client().await;
    let source = create_until_done(&mut client, volume_request(&world, "pvc-lc", None)).await;
    let rule = r#"<LifecycleConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Rule><ID>trim-old</ID><Filter><Prefix>k8s/</Prefix></Filter><Status>Enabled</Status><NoncurrentVersionExpiration><NoncurrentDays>7</NoncurrentDays></NoncurrentVersionExpiration></Rule></LifecycleConfiguration>"#;
    let (status, body) = s3files_csi::plain_http::request(
        &world.s3.url,
        "PUT",
        &format!("/{BUCKET}?lifecycle"),
        rule,
    )
    .await
    .expect("put lifecycle");
    assert_eq!(status, 200, "{body}");
    let refused = client
        .create_snapshot(csi::CreateSnapshotRequest {
            name: "strict".into(),
            source_volume_id: source.volume_id.clone(),
            parameters: [("refuseIfVersionsExpire".to_owned(), "true".to_owned())].into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("trim-old"), "{refused:?}");
    snapshot(&mut client, "lenient", &source.volume_id)
        .await
        .expect("warned, taken");
    let log = world.stack.plugin.log();
    assert!(log.contains("trim-old"), "the warning is logged: {log}");
}

/// Puts `n` small objects under `prefix` through the S3 API, 32 at a time.
async fn fill(store: &Arc<dyn ObjectStore>, prefix: &str, n: usize) {
    use futures_util::StreamExt;
    futures_util::stream::iter(0..n)
        .map(|i| {
            let store = store.clone();
            let key = ObjectPath::from(format!("{prefix}d{:02}/f{i:05}", i % 10));
            async move {
                store
                    .put(&key, format!("object {i}").into_bytes().into())
                    .await
                    .expect("put");
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

fn root_of(volume: &csi::Volume) -> String {
    volume.volume_context["accessPointRoot"]
        .trim_matches('/')
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_killed_halfway_resumes_in_a_restarted_controller_without_duplicates() {
    let mut world = World::start().await;
    let mut client = world.client().await;
    let source = create_until_done(&mut client, volume_request(&world, "pvc-big", None)).await;
    let src_prefix = format!("k8s/{}/", root_of(&source));
    let n = 3000;
    fill(&world.store(), &src_prefix, n).await;
    let snap = snapshot(&mut client, "big", &source.volume_id)
        .await
        .expect("snapshot");

    let req = volume_request(
        &world,
        "pvc-big-restored",
        snapshot_source(&snap.snapshot_id),
    );
    let status = client
        .create_volume(req.clone())
        .await
        .expect_err("still copying");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("copied so far"), "{status:?}");
    // Wait for the first checkpoint, then crash mid-copy.
    let versions = world.versions();
    let record_key = format!(
        "k8s/.s3files-csi/restores/{}.json",
        s3files_csi::controller::client_token("pvc-big-restored")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(body) = versions.get(BUCKET, &record_key).await.expect("get") {
            let rec: s3files_csi::controller::restore::RestoreRecord =
                serde_json::from_slice(&body).expect("record");
            if rec.after.is_some() {
                assert!(!rec.done, "killed before the end: {rec:?}");
                break;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no checkpoint");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    world.restart_controller().await;
    let mut client = world.client().await;
    let restored = create_until_done(&mut client, req).await;
    let dest_prefix = format!("k8s/{}/", root_of(&restored));

    // Every object once: one version per key, and the same keys as the source.
    let mut per_key: BTreeMap<String, usize> = BTreeMap::new();
    let mut from = None;
    loop {
        let page = versions
            .versions(BUCKET, &dest_prefix, from.as_ref())
            .await
            .expect("versions");
        for e in page.entries {
            *per_key
                .entry(e.key.trim_start_matches(&dest_prefix).to_owned())
                .or_default() += 1;
        }
        if page.next.is_none() {
            break;
        }
        from = page.next;
    }
    let src_keys: Vec<String> = versions
        .keys(BUCKET, &src_prefix, None, usize::MAX)
        .await
        .expect("keys")
        .into_iter()
        .map(|k| k.trim_start_matches(&src_prefix).to_owned())
        .collect();
    assert_eq!(per_key.len(), n);
    assert_eq!(per_key.keys().cloned().collect::<Vec<_>>(), src_keys);
    let twice: Vec<_> = per_key.iter().filter(|(_, c)| **c != 1).collect();
    assert!(twice.is_empty(), "copied more than once: {twice:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn taking_a_snapshot_costs_the_same_requests_for_10_and_10000_objects() {
    let world = World::start().await;
    let mut client = world.client().await;
    let mut counts = Vec::new();
    for (name, n) in [("pvc-ten", 10), ("pvc-tenk", 10_000)] {
        let volume = create_until_done(&mut client, volume_request(&world, name, None)).await;
        fill(&world.store(), &format!("k8s/{}/", root_of(&volume)), n).await;
        world.proxy.seen.clear();
        snapshot(&mut client, &format!("snap-{name}"), &volume.volume_id)
            .await
            .expect("snapshot");
        let during: Vec<String> = world.proxy.seen.all();
        // The size is measured afterwards, by listing versions (`?versions`).
        let own: Vec<String> = during
            .into_iter()
            .filter(|r| !r.contains("versions"))
            .collect();
        counts.push(own);
    }
    assert_eq!(counts[0].len(), counts[1].len(), "{counts:?}");
    assert!(counts[0].len() <= 6, "{:?}", counts[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn large_objects_are_copied_in_parts_with_their_metadata_and_owner_mapped() {
    use s3files_csi::data::versions::{OwnerMap, VersionEntry};
    let s3 = S3Server::start().await;
    s3.create_bucket(BUCKET).await;
    let world_versions = sdk(&s3.url);
    let body: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 251) as u8).collect();
    world_versions
        .put_object()
        .bucket(BUCKET)
        .key("src/big.bin")
        .content_type("application/x-test")
        .metadata("uid", "50001")
        .metadata("gid", "50001")
        .metadata("mode", "33188")
        .metadata("mtime", "1600000000")
        .body(body.clone().into())
        .send()
        .await
        .expect("put");
    let versions = S3Versions::new(world_versions.clone()).with_part_copies(1 << 20, 5 << 20);
    let page = versions.versions(BUCKET, "src/", None).await.expect("list");
    let entry: VersionEntry = page.entries[0].clone();
    assert_eq!(entry.size, 12 << 20);
    versions
        .copy(
            BUCKET,
            &entry,
            "dst/big.bin",
            Some(OwnerMap {
                from: (50001, 50001),
                to: (50002, 50002),
            }),
        )
        .await
        .expect("copy in parts");
    let got = world_versions
        .get_object()
        .bucket(BUCKET)
        .key("dst/big.bin")
        .send()
        .await
        .expect("get");
    assert_eq!(got.content_type(), Some("application/x-test"));
    let meta = got.metadata().cloned().unwrap_or_default();
    assert_eq!(meta.get("uid").map(String::as_str), Some("50002"));
    assert_eq!(meta.get("gid").map(String::as_str), Some("50002"));
    assert_eq!(meta.get("mode").map(String::as_str), Some("33188"));
    assert_eq!(meta.get("mtime").map(String::as_str), Some("1600000000"));
    let e_tag = got.e_tag().unwrap_or_default().to_owned();
    assert!(e_tag.contains("-3"), "three parts: {e_tag}");
    let bytes = got.body.collect().await.expect("body").into_bytes();
    assert!(bytes.as_ref() == body.as_slice(), "the bytes survive");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_missing_versions_of_the_snapshot_fails_saying_so() {
    let world = World::start().await;
    let mut client = world.client().await;
    let source = create_until_done(&mut client, volume_request(&world, "pvc-gap", None)).await;
    let prefix = format!("k8s/{}/", root_of(&source));
    fill(&world.store(), &prefix, 5).await;
    let snap = snapshot(&mut client, "gap", &source.volume_id)
        .await
        .expect("snapshot");
    // The size (and object count) is measured just after the snapshot.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = client
            .list_snapshots(csi::ListSnapshotsRequest {
                snapshot_id: snap.snapshot_id.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        if listed.entries[0].snapshot.as_ref().expect("s").size_bytes > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never measured");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What a lifecycle rule expiring versions does: the version the snapshot needs goes.
    let versions = world.versions();
    let page = versions
        .versions(BUCKET, &prefix, None)
        .await
        .expect("list");
    let victim = page.entries[2].clone();
    sdk(&world.s3.url)
        .delete_object()
        .bucket(BUCKET)
        .key(&victim.key)
        .version_id(&victim.version_id)
        .send()
        .await
        .expect("delete the version");
    let req = volume_request(
        &world,
        "pvc-gap-restored",
        snapshot_source(&snap.snapshot_id),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        match client.create_volume(req.clone()).await {
            Err(s) if s.code() == Code::Aborted => {
                assert!(std::time::Instant::now() < deadline);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => break s,
            Ok(_) => panic!("a restore missing a version must fail"),
        }
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("1 of them have no version left"),
        "{status:?}"
    );
}
