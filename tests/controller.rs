//! Provisioning as users meet it: the controller binary over its socket, the real SDK, the
//! emulator behind it, with faults and crashes.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::emulator::test_config;
use common::{ControllerStack, Plugin, emulator_env, mount_capability};
use s3files_csi::cloud::{CreationPermissions, NewAccessPoint, PosixUser, S3Files};
use s3files_csi::csi::controller_client::ControllerClient;
use s3files_csi::csi::volume_capability::access_mode::Mode as AccessMode;
use s3files_csi::csi::{self};
use s3files_csi::emulator::faults::FaultSpec;
use s3files_csi::volume::VolumeHandle;
use tonic::Code;
use tonic::transport::Channel;

/// csi-provisioner's Lease, held by one replica for an hour: a settled term.
async fn settled_lease() -> common::lease::FakeLease {
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    common::lease::FakeLease::start("kube-system", "s3files-csi-dev", "controller-0", hour_ago)
        .await
}

/// Retry flags that keep fault tests fast: standard mode, 5 ms first backoff, `attempts`.
fn quick_retries(attempts: &str) -> [&str; 6] {
    [
        "--api-retry-mode",
        "standard",
        "--api-initial-backoff",
        "0.005",
        "--api-max-attempts",
        attempts,
    ]
}

fn request(
    stack: &ControllerStack,
    name: &str,
    extra: &[(&str, &str)],
) -> csi::CreateVolumeRequest {
    csi::CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![mount_capability(AccessMode::MultiNodeMultiWriter)],
        parameters: stack.params(extra),
        ..Default::default()
    }
}

async fn create(
    client: &mut ControllerClient<Channel>,
    req: csi::CreateVolumeRequest,
) -> VolumeHandle {
    let volume = client
        .create_volume(req)
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    VolumeHandle::parse(&volume.volume_id).expect("handle")
}

/// Retries like csi-provisioner: until the call succeeds, on any retryable code.
async fn create_until_done(
    client: &mut ControllerClient<Channel>,
    req: csi::CreateVolumeRequest,
) -> String {
    loop {
        match client.create_volume(req.clone()).await {
            Ok(r) => return r.into_inner().volume.expect("volume").volume_id,
            Err(s)
                if matches!(
                    s.code(),
                    Code::Unavailable | Code::Aborted | Code::Internal | Code::DeadlineExceeded
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(s) => panic!("CreateVolume failed for good: {s:?}"),
        }
    }
}

async fn delete_until_done(client: &mut ControllerClient<Channel>, volume_id: &str) {
    let req = csi::DeleteVolumeRequest {
        volume_id: volume_id.into(),
        ..Default::default()
    };
    loop {
        match client.delete_volume(req.clone()).await {
            Ok(_) => return,
            Err(s) if matches!(s.code(), Code::Unavailable | Code::Aborted | Code::Internal) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(s) => panic!("DeleteVolume failed for good: {s:?}"),
        }
    }
}

#[tokio::test]
async fn storage_class_parameters_shape_the_access_point() {
    // onDelete: delete needs a data store.
    let data = tempfile::tempdir().expect("tempdir");
    let store = format!("local:{}", data.path().display());
    let stack = ControllerStack::start(
        test_config(),
        &["--tags", "team=storage", "--data-store", &store],
    )
    .await;
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    let mut req = request(
        &stack,
        "pvc-11111111-2222-3333-4444-555555555555",
        &[
            ("directoryPerms", "750"),
            ("uid", "1001"),
            ("gid", "2002"),
            ("basePath", "/k8s"),
            ("subPathPattern", "${.PVC.namespace}/${.PVC.name}"),
            ("ensureUniqueDirectory", "false"),
            ("onDelete", "delete"),
        ],
    );
    req.parameters
        .insert("csi.storage.k8s.io/pvc/name".into(), "data".into());
    req.parameters
        .insert("csi.storage.k8s.io/pvc/namespace".into(), "team-a".into());
    let handle = create(&mut client, req).await;
    let ap = stack
        .emulator
        .cloud()
        .get_access_point(handle.access_point_id.as_deref().expect("ap"))
        .await
        .expect("ap");
    assert_eq!(ap.root_path.as_deref(), Some("/k8s/team-a/data"));
    assert_eq!(
        ap.posix_user,
        Some(PosixUser {
            uid: 1001,
            gid: 2002,
            secondary_gids: vec![]
        })
    );
    assert_eq!(
        ap.creation_permissions,
        Some(CreationPermissions {
            owner_uid: 1001,
            owner_gid: 2002,
            permissions: "0750".into()
        })
    );
    let tags: HashSet<(String, String)> = ap.tags.into_iter().collect();
    assert!(
        tags.contains(&("s3files.csi.dev/cluster".into(), "true".into())),
        "{tags:?}"
    );
    assert!(
        tags.contains(&("team".into(), "storage".into())),
        "{tags:?}"
    );
    assert!(
        tags.contains(&("s3files.csi.dev/on-delete".into(), "delete".into())),
        "{tags:?}"
    );
    assert_eq!(
        ap.client_token.as_deref(),
        Some("pvc-11111111-2222-3333-4444-555555555555")
    );
}

#[tokio::test]
async fn each_volume_gets_its_own_gid_from_the_range_across_restarts() {
    // As the chart runs it: in a settled leadership term, the lowest free GID, no verification.
    let lease = settled_lease().await;
    let stack = ControllerStack::start_with_lease(test_config(), &[], &lease).await;
    let params = [("gidRangeStart", "7000"), ("gidRangeEnd", "7004")];
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    let mut gids = Vec::new();
    for i in 0..3 {
        let handle = create(
            &mut client,
            request(&stack, &format!("pvc-gid-{i}"), &params),
        )
        .await;
        let ap = stack
            .emulator
            .cloud()
            .get_access_point(handle.access_point_id.as_deref().expect("ap"))
            .await
            .expect("ap");
        gids.push(ap.posix_user.expect("user").gid);
    }
    assert_eq!(gids, [7000, 7001, 7002]);

    // A new controller process learns the used GIDs from the API.
    let mut env = emulator_env(&stack.emulator.url);
    env.push(("KUBECONFIG", lease.kubeconfig()));
    let fresh = Plugin::start_with_env(
        &[
            "controller",
            "--api-rate-limit",
            "0",
            "--leader-lease",
            &lease.flag(),
        ],
        &env,
    )
    .await;
    let mut client = ControllerClient::new(fresh.channel().await);
    for i in 3..5 {
        let handle = create(
            &mut client,
            request(&stack, &format!("pvc-gid-{i}"), &params),
        )
        .await;
        let ap = stack
            .emulator
            .cloud()
            .get_access_point(handle.access_point_id.as_deref().expect("ap"))
            .await
            .expect("ap");
        gids.push(ap.posix_user.expect("user").gid);
    }
    assert_eq!(gids, [7000, 7001, 7002, 7003, 7004]);
    let full = client
        .create_volume(request(&stack, "pvc-gid-5", &params))
        .await
        .expect_err("range exhausted");
    assert_eq!(full.code(), Code::ResourceExhausted);
    assert!(full.message().contains("gidRangeStart"), "{full:?}");
}

#[tokio::test]
async fn an_access_point_left_by_an_interrupted_attempt_is_adopted() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    // What a crashed attempt leaves behind: an access point with this volume's token but
    // another GID than a restarted controller would draw.
    let orphan = stack
        .emulator
        .cloud()
        .create_access_point(&NewAccessPoint {
            file_system_id: stack.fs_id.clone(),
            client_token: "pvc-adopt".into(),
            posix_user: Some(PosixUser {
                uid: 59_999,
                gid: 59_999,
                secondary_gids: vec![],
            }),
            root_path: Some("/pvc-adopt".into()),
            creation_permissions: None,
            tags: vec![],
        })
        .await
        .expect("orphan");
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    let handle = create(&mut client, request(&stack, "pvc-adopt", &[])).await;
    assert_eq!(handle.access_point_id.as_deref(), Some(orphan.id.as_str()));
    assert_eq!(
        stack.emulator.emulator.access_point_count(),
        1,
        "no second access point"
    );
}

#[tokio::test]
async fn create_volume_waits_until_the_access_point_is_available() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    stack.emulator.emulator.set_ready_after(0.8);
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    let handle = create(&mut client, request(&stack, "pvc-wait", &[])).await;
    let ap = stack
        .emulator
        .cloud()
        .get_access_point(handle.access_point_id.as_deref().expect("ap"))
        .await
        .expect("ap");
    assert_eq!(ap.status, s3files_csi::cloud::LifeCycle::Available);
}

#[tokio::test]
async fn a_missing_file_system_or_unreachable_zone_is_explained() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    let mut req = request(&stack, "pvc-nofs", &[]);
    req.parameters
        .insert("fileSystemId".into(), "fs-0000000000000000f".into());
    let status = client.create_volume(req).await.expect_err("no such fs");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("does not exist"), "{status:?}");

    let mut req = request(&stack, "pvc-zone", &[]);
    req.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![csi::Topology {
            segments: [("topology.k8s.aws/zone-id".to_owned(), "use1-az3".to_owned())].into(),
        }],
        preferred: vec![],
    });
    let status = client
        .create_volume(req)
        .await
        .expect_err("no mount target there");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("use1-az3"), "{status:?}");
}

/// 500 create/delete cycles under 20% throttling and 5% server errors: every volume exists
/// exactly once while it lives, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_leave_no_duplicate_and_no_leaked_access_point() {
    let mut config = test_config();
    config.faults.default = FaultSpec {
        throttle_rate: 0.2,
        error_rate: 0.05,
        ..Default::default()
    };
    let stack = ControllerStack::start(config, &quick_retries("3")).await;
    let channel = stack.plugin.channel().await;
    let workers = 8;
    let per_worker = 500 / workers + 1;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut client = ControllerClient::new(channel.clone());
        let reqs: Vec<_> = (0..per_worker)
            .map(|i| w * per_worker + i)
            .filter(|n| *n < 500)
            .map(|n| request(&stack, &format!("pvc-fault-{n:03}"), &[]))
            .collect();
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for req in reqs {
                ids.push(create_until_done(&mut client, req).await);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.expect("worker"));
    }
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 500, "500 distinct volumes");
    assert_eq!(
        stack.emulator.emulator.access_point_count(),
        500,
        "exactly one access point per volume"
    );
    assert!(
        stack
            .emulator
            .emulator
            .faults
            .calls("CreateAccessPoint", "ThrottlingException")
            > 0
    );

    let mut tasks = Vec::new();
    for chunk in ids.chunks(500 / workers + 1) {
        let mut client = ControllerClient::new(channel.clone());
        let chunk = chunk.to_vec();
        tasks.push(tokio::spawn(async move {
            for id in chunk {
                delete_until_done(&mut client, &id).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("worker");
    }
    assert_eq!(
        stack.emulator.emulator.access_point_count(),
        0,
        "no access point leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_controller_mid_burst_leaves_no_duplicates() {
    let mut config = test_config();
    config.faults.operations.insert(
        "CreateAccessPoint".into(),
        FaultSpec {
            latency_ms: 30,
            ..Default::default()
        },
    );
    let stack = ControllerStack::start(config, &[]).await;
    let names: Vec<String> = (0..60).map(|i| format!("pvc-crash-{i:02}")).collect();

    // A burst the controller dies in the middle of.
    let mut tasks = Vec::new();
    for chunk in names.chunks(10) {
        let mut client = ControllerClient::new(stack.plugin.channel().await);
        let reqs: Vec<_> = chunk.iter().map(|n| request(&stack, n, &[])).collect();
        tasks.push(tokio::spawn(async move {
            for req in reqs {
                if client.create_volume(req).await.is_err() {
                    return;
                }
            }
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while stack.emulator.emulator.access_point_count() < 15 {
        assert!(std::time::Instant::now() < deadline, "burst did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    common::send_signal(stack.plugin.pid(), "KILL");
    for t in tasks {
        let _ = t.await;
    }
    let before = stack.emulator.emulator.access_point_count();
    assert!(
        before < names.len(),
        "the kill interrupted the burst ({before} created)"
    );

    // The CO retries every volume against a restarted controller.
    let restarted = Plugin::start_with_env(
        &["controller", "--api-rate-limit", "0"],
        &emulator_env(&stack.emulator.url),
    )
    .await;
    let mut client = ControllerClient::new(restarted.channel().await);
    let mut ids = HashSet::new();
    for name in &names {
        ids.insert(create_until_done(&mut client, request(&stack, name, &[])).await);
    }
    assert_eq!(ids.len(), names.len());
    assert_eq!(
        stack.emulator.emulator.access_point_count(),
        names.len(),
        "one access point per volume, none twice"
    );
}

fn write_files(root: &std::path::Path, files: &[&str]) {
    for f in files {
        let p = root.join(f);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, b"data").expect("write");
    }
}

#[tokio::test]
async fn on_delete_delete_removes_exactly_the_volumes_files() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    let buckets = stack.emulator.buckets.path().to_owned();
    let store = format!("local:{}", buckets.display());
    let plugin = Plugin::start_with_env(
        &[
            "controller",
            "--api-rate-limit",
            "0",
            "--data-store",
            &store,
        ],
        &emulator_env(&stack.emulator.url),
    )
    .await;
    let mut client = ControllerClient::new(plugin.channel().await);
    let doomed = create(
        &mut client,
        request(&stack, "pvc-doomed", &[("onDelete", "delete")]),
    )
    .await;
    let kept = create(&mut client, request(&stack, "pvc-kept", &[])).await;
    let bucket = buckets.join("stack-bucket").join("k8s");
    write_files(
        &bucket,
        &[
            "pvc-doomed/a.txt",
            "pvc-doomed/deep/b.txt",
            "pvc-doomed-sibling/keep.txt",
            "pvc-kept/c.txt",
        ],
    );

    for handle in [&doomed, &kept] {
        client
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: handle.to_string(),
                ..Default::default()
            })
            .await
            .expect("delete");
    }
    assert!(!bucket.join("pvc-doomed/a.txt").exists());
    assert!(!bucket.join("pvc-doomed/deep/b.txt").exists());
    assert!(
        bucket.join("pvc-doomed-sibling/keep.txt").exists(),
        "a sibling with a longer name is untouched"
    );
    assert!(
        bucket.join("pvc-kept/c.txt").exists(),
        "onDelete: retain keeps the files"
    );
    assert_eq!(stack.emulator.emulator.access_point_count(), 0);
}

#[tokio::test]
async fn on_delete_delete_without_a_data_store_keeps_the_volume_and_says_why() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    // Refused up front: the PV could never be deleted.
    let refused = client
        .create_volume(request(&stack, "pvc-nostore", &[("onDelete", "delete")]))
        .await
        .expect_err("no data store");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("onDelete") && refused.message().contains("--data-store"),
        "{refused:?}"
    );
    assert_eq!(stack.emulator.emulator.access_point_count(), 0);
    // A volume created with it earlier (by a controller that had a data store) says exactly
    // what to configure and stays.
    let cloud = stack.emulator.cloud();
    let ap = cloud
        .create_access_point(&NewAccessPoint {
            file_system_id: stack.fs_id.clone(),
            client_token: "pvc-earlier".into(),
            posix_user: Some(PosixUser {
                uid: 50_000,
                gid: 50_000,
                secondary_gids: Vec::new(),
            }),
            root_path: Some("/pvc-earlier".into()),
            creation_permissions: Some(CreationPermissions {
                owner_uid: 50_000,
                owner_gid: 50_000,
                permissions: "0700".into(),
            }),
            tags: vec![("s3files.csi.dev/on-delete".into(), "delete".into())],
        })
        .await
        .expect("access point");
    let status = client
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: VolumeHandle::for_access_point(&stack.fs_id, &ap.id).to_string(),
            ..Default::default()
        })
        .await
        .expect_err("cannot honour onDelete");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("controller.dataStore")
            && status.message().contains("--data-store"),
        "{status:?}"
    );
    assert_eq!(
        stack.emulator.emulator.access_point_count(),
        1,
        "nothing deleted half-way"
    );
}

#[tokio::test]
async fn metrics_count_csi_calls_and_api_calls() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    let address = format!("127.0.0.1:{}", common::free_port());
    let plugin = Plugin::start_with_env(
        &[
            "controller",
            "--api-rate-limit",
            "0",
            "--metrics-address",
            &address,
        ],
        &emulator_env(&stack.emulator.url),
    )
    .await;
    let mut client = ControllerClient::new(plugin.channel().await);
    create(&mut client, request(&stack, "pvc-metrics", &[])).await;
    let bad = client
        .create_volume(request(&stack, "", &[]))
        .await
        .expect_err("empty name");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let (status, text) =
        common::emulator::http_request(address.parse().expect("addr"), "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    for expected in [
        r#"s3files_csi_rpc_total{method="CreateVolume",code="Ok"} 1"#,
        r#"s3files_csi_rpc_total{method="CreateVolume",code="InvalidArgument"} 1"#,
        r#"s3files_csi_api_calls_total{operation="CreateAccessPoint",outcome="ok"} 1"#,
        r#"s3files_csi_api_calls_total{operation="GetFileSystem",outcome="ok"} 1"#,
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
}

#[tokio::test]
async fn mount_options_the_helper_would_refuse_fail_at_create_and_validate() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    let with_flags = |flags: &[&str]| {
        let mut cap = mount_capability(AccessMode::MultiNodeMultiWriter);
        if let Some(csi::volume_capability::AccessType::Mount(m)) = cap.access_type.as_mut() {
            m.mount_flags = flags.iter().map(|f| (*f).to_owned()).collect();
        }
        cap
    };
    for (flags, expected) in [
        (&["ocsp"][..], "OCSP"),
        (&["capath=/etc/ssl/certs"][..], "cafile"),
        (&["noatime", "nfsvers=4.0"][..], "4.2"),
        (&["vers=4.0"][..], "4.2"),
        (&["tls,notls"][..], "notls"),
    ] {
        let mut req = request(&stack, "pvc-flags", &[]);
        req.volume_capabilities = vec![with_flags(flags)];
        let err = client.create_volume(req).await.expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{flags:?}: {err:?}");
        assert!(err.message().contains(expected), "{flags:?}: {err:?}");
    }
    // Nothing was created for the refused requests; good options provision.
    let mut req = request(&stack, "pvc-flags", &[]);
    req.volume_capabilities = vec![with_flags(&["noatime", "nfsvers=4.1", "noocsp"])];
    let handle = create(&mut client, req).await;
    let err = client
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: handle.to_string(),
            volume_capabilities: vec![with_flags(&["ocsp"])],
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("OCSP"), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_api_never_fails_the_probe_and_is_reported() {
    use s3files_csi::csi::{ProbeRequest, identity_client::IdentityClient};
    // Nothing listens on this port: every API call fails.
    let dead = format!("127.0.0.1:{}", common::free_port());
    let address = format!("127.0.0.1:{}", common::free_port());
    let plugin = Plugin::start_with_env(
        &[
            "controller",
            "--api-max-attempts",
            "1",
            "--metrics-address",
            &address,
        ],
        &emulator_env(&format!("http://{dead}")),
    )
    .await;
    let mut identity = IdentityClient::new(plugin.channel().await);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let started = std::time::Instant::now();
        let probe = identity.probe(ProbeRequest {}).await.expect("probe");
        // Well inside livenessprobe's one-second default: no API call is made.
        assert!(started.elapsed() < Duration::from_millis(500));
        let detail = probe
            .metadata()
            .get(s3files_csi::identity::DETAIL_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        assert_eq!(
            probe.into_inner().ready,
            Some(true),
            "liveness is the process"
        );
        if let Some(d) = detail.filter(|d| !d.contains("not checked yet")) {
            assert!(d.contains("s3files-api"), "{d}");
            assert!(d.contains("check the region"), "{d}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no detail reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, text) =
        common::emulator::http_request(address.parse().expect("addr"), "GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(text.contains("s3files_csi_cloud_api_reachable 0"), "{text}");
    assert!(
        plugin.log().contains("the S3 Files API is unreachable"),
        "{}",
        plugin.log()
    );
    let (status, stdout, _) = common::run(&["health", "--endpoint", &plugin.endpoint.to_string()]);
    assert!(status.success(), "health of a live controller succeeds");
    assert!(stdout.contains("s3files-api"), "{stdout}");
}

#[tokio::test]
async fn every_name_the_provisioner_can_send_provisions_into_its_own_directory() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    let cloud = stack.emulator.cloud();
    let mut roots = HashSet::new();
    for name in [&"p".repeat(128), "x", ".x", "../x", "x/y"] {
        let handle = create(&mut client, request(&stack, name, &[])).await;
        let ap = cloud
            .get_access_point(handle.access_point_id.as_deref().expect("ap"))
            .await
            .expect("access point");
        let root = ap.root_path.expect("root");
        assert!(root.len() <= 100, "{name}: {root}");
        assert!(roots.insert(root.clone()), "{name} shares {root}");
        // The retry lands on the same volume.
        let again = create(&mut client, request(&stack, name, &[])).await;
        assert_eq!(again, handle, "{name}");
    }
    for (pairs, key) in [
        (&[("basePath", "/.hidden")][..], "basePath"),
        (&[("basePath", "/my dir/$x")][..], "basePath"),
        (
            &[("subPathPattern", "../${.PV.name}")][..],
            "subPathPattern",
        ),
    ] {
        let err = client
            .create_volume(request(&stack, "pvc-bad-path", pairs))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(key), "{err:?}");
    }
}

#[tokio::test]
async fn create_again_with_other_capacity_or_parameters_is_already_exists_even_after_a_restart() {
    let mut stack = ControllerStack::start(test_config(), &[]).await;
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    let sized = |stack: &ControllerStack, gib: i64, extra: &[(&str, &str)]| {
        let mut req = request(stack, "pvc-compat", extra);
        req.capacity_range = Some(csi::CapacityRange {
            required_bytes: gib << 30,
            limit_bytes: 0,
        });
        req
    };
    let handle = create(&mut client, sized(&stack, 5, &[])).await;
    assert_eq!(
        create(&mut client, sized(&stack, 5, &[])).await,
        handle,
        "same request"
    );
    let incompatible = [
        sized(&stack, 6, &[]),
        sized(&stack, 5, &[("basePath", "/other")]),
        sized(&stack, 5, &[("directoryPerms", "750")]),
        {
            let mut r = sized(&stack, 5, &[]);
            r.volume_capabilities = vec![mount_capability(AccessMode::SingleNodeReaderOnly)];
            r
        },
    ];
    for req in &incompatible {
        let err = client
            .create_volume(req.clone())
            .await
            .expect_err("incompatible");
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        assert!(err.message().contains("pvc-compat"), "{err:?}");
    }
    // A restarted controller knows from the access point's tags.
    let args = ["controller", "--api-rate-limit", "0"];
    stack.plugin = Plugin::start_with_env(&args, &emulator_env(&stack.emulator.url)).await;
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    assert_eq!(create(&mut client, sized(&stack, 5, &[])).await, handle);
    let err = client
        .create_volume(incompatible[0].clone())
        .await
        .expect_err("incompatible after restart");
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    let listed = stack
        .emulator
        .cloud()
        .list_access_points(&stack.fs_id)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "no second access point");
}

#[tokio::test]
async fn calls_that_name_the_wrong_file_system_are_not_found() {
    use s3files_csi::cloud::{NewFileSystem, S3Files};
    let stack = ControllerStack::start(test_config(), &[]).await;
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    let handle = create(&mut client, request(&stack, "pvc-wrong-fs", &[])).await;
    let ap = handle.access_point_id.clone().expect("ap");
    let other = stack
        .emulator
        .cloud()
        .create_file_system(&NewFileSystem {
            bucket_arn: "arn:aws:s3:::other-bucket".into(),
            prefix: None,
            role_arn: common::emulator::ROLE.into(),
            client_token: None,
            tags: vec![],
        })
        .await
        .expect("second file system");
    let wrong = format!("s3files:{}::{ap}", other.id);
    let unknown_fs = "s3files:fs-0123456789abcdef7".to_owned();
    let caps = vec![mount_capability(AccessMode::MultiNodeMultiWriter)];
    for volume_id in [&wrong, &unknown_fs] {
        let err = client
            .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
                volume_id: volume_id.clone(),
                volume_capabilities: caps.clone(),
                ..Default::default()
            })
            .await
            .expect_err("validate");
        assert_eq!(err.code(), Code::NotFound, "{volume_id}: {err:?}");
        let err = client
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: volume_id.clone(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 1 << 30,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await
            .expect_err("expand");
        assert_eq!(err.code(), Code::NotFound, "{volume_id}: {err:?}");
    }
    // Deleting the volume the wrong handle names is OK (it does not exist) and deletes nothing.
    client
        .delete_volume(csi::DeleteVolumeRequest {
            volume_id: wrong.clone(),
            ..Default::default()
        })
        .await
        .expect("delete of a volume that does not exist");
    stack
        .emulator
        .cloud()
        .get_access_point(&ap)
        .await
        .expect("the access point of the other file system is still there");
    // The right handle still works for both.
    client
        .controller_expand_volume(csi::ControllerExpandVolumeRequest {
            volume_id: handle.to_string(),
            capacity_range: Some(csi::CapacityRange {
                required_bytes: 2 << 30,
                limit_bytes: 0,
            }),
            ..Default::default()
        })
        .await
        .expect("expand");
    // An id of 10,000 characters comes back cut, not as a reply too large to read.
    let long = format!("s3files:{}", "f".repeat(10_000));
    let err = client
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: long,
            volume_capabilities: caps,
            ..Default::default()
        })
        .await
        .expect_err("validate");
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().len() <= 1024, "{}", err.message().len());
}

#[tokio::test]
async fn a_volume_that_exists_is_created_again_when_its_gid_range_is_full() {
    let mut stack = ControllerStack::start(test_config(), &[]).await;
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    let one = [("gidRangeStart", "60000"), ("gidRangeEnd", "60000")];
    let a = create(&mut client, request(&stack, "pvc-full-a", &one)).await;
    let full = client
        .create_volume(request(&stack, "pvc-full-b", &one))
        .await
        .expect_err("the range holds one GID");
    assert_eq!(full.code(), Code::ResourceExhausted, "{full:?}");
    // csi-provisioner retries pvc-full-a after a controller restart: the learned view says the
    // range is full, and the volume needs no new GID.
    let args = ["controller", "--api-rate-limit", "0"];
    stack.plugin = Plugin::start_with_env(&args, &emulator_env(&stack.emulator.url)).await;
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    assert_eq!(
        create(&mut client, request(&stack, "pvc-full-a", &one)).await,
        a
    );
    assert_eq!(stack.emulator.emulator.access_point_count(), 1);
}

#[tokio::test]
async fn throttled_creates_that_made_nothing_hold_no_gid() {
    let stack = ControllerStack::start(
        test_config(),
        &["--api-max-attempts", "1", "--api-retry-mode", "standard"],
    )
    .await;
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    let range = [("gidRangeStart", "70000"), ("gidRangeEnd", "70001")];
    create(&mut client, request(&stack, "pvc-thr-0", &range)).await;
    let (status, body) = stack
        .emulator
        .admin(
            "PUT",
            "/_emulator/faults",
            r#"{"operations":{"CreateAccessPoint":{"throttleRate":1.0}}}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for i in 1..=5 {
        let err = client
            .create_volume(request(&stack, &format!("pvc-thr-{i}"), &range))
            .await
            .expect_err("throttled");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    }
    stack.emulator.admin("PUT", "/_emulator/faults", "{}").await;
    // Two GIDs, one live access point: the second volume still fits.
    create(&mut client, request(&stack, "pvc-thr-1", &range)).await;
    let err = client
        .create_volume(request(&stack, "pvc-thr-2", &range))
        .await
        .expect_err("now full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_lost_after_the_create_leave_no_duplicate_and_no_shared_gid() {
    let mut config = test_config();
    config.faults.operations.insert(
        "CreateAccessPoint".into(),
        FaultSpec {
            drop_rate: 0.5,
            ..Default::default()
        },
    );
    let lease = settled_lease().await;
    let stack = ControllerStack::start_with_lease(config, &quick_retries("1"), &lease).await;
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    let mut ids = HashSet::new();
    for i in 0..20 {
        let id =
            create_until_done(&mut client, request(&stack, &format!("pvc-lost-{i}"), &[])).await;
        assert!(ids.insert(id));
    }
    let listed = stack
        .emulator
        .cloud()
        .list_access_points(&stack.fs_id)
        .await
        .expect("list");
    assert_eq!(listed.len(), 20, "one access point per volume");
    let gids: HashSet<u32> = listed
        .iter()
        .filter_map(|ap| ap.posix_user.as_ref().map(|u| u.gid))
        .collect();
    assert_eq!(gids.len(), 20, "no two access points share a GID");
    // Each retry sent the request the lost call had (same GID), which the service answered with
    // the access point it made: no search for it. Two listings in all: the controller's GID
    // view and this test's own.
    let (_, metrics) = stack.emulator.admin("GET", "/metrics", "").await;
    let lists: u64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("s3files_emulator_calls_total{") && l.contains("\"ListAccessPoints\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(lists, 2, "{metrics}");
}

#[tokio::test]
async fn a_zone_whose_mount_target_is_being_deleted_is_not_offered() {
    let stack = ControllerStack::start(test_config(), &[]).await;
    let cloud = stack.emulator.cloud();
    let doomed = cloud
        .list_mount_targets(&stack.fs_id)
        .await
        .expect("list")
        .into_iter()
        .find(|m| m.availability_zone_id.as_deref() == Some("use1-az2"))
        .expect("mount target in use1-az2");
    stack.emulator.emulator.set_ready_after(30.0);
    cloud.delete_mount_target(&doomed.id).await.expect("delete");
    // Deleting for 30 s from now; new access points are ready at once again.
    stack.emulator.emulator.set_ready_after(0.0);
    let mut client = ControllerClient::new(stack.plugin.channel().await);
    let volume = client
        .create_volume(request(&stack, "pvc-zones", &[]))
        .await
        .expect("create")
        .into_inner()
        .volume
        .expect("volume");
    let zones: Vec<_> = volume
        .accessible_topology
        .iter()
        .flat_map(|t| t.segments.values().cloned())
        .collect();
    assert_eq!(
        zones,
        ["use1-az1"],
        "a deleting mount target serves no mounts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_waits_for_readiness_on_shared_listings() {
    let lease = settled_lease().await;
    let stack = ControllerStack::start_with_lease(test_config(), &[], &lease).await;
    // Each new access point is creating for 1 s: alone, a volume polls about four times.
    stack.emulator.emulator.set_ready_after(1.0);
    let client = ControllerClient::new(stack.plugin.channel().await);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut client = client.clone();
        let req = request(&stack, &format!("pvc-ready-{i}"), &[]);
        tasks.push(tokio::spawn(async move { create(&mut client, req).await }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let faults = &stack.emulator.emulator.faults;
    let gets = faults.calls("GetAccessPoint", "ok");
    let lists = faults.calls("ListAccessPoints", "ok");
    // One listing is the GID view; the rest answered readiness for every waiting volume.
    assert!(
        gets + lists <= 20,
        "{gets} GetAccessPoint and {lists} ListAccessPoints for 20 volumes"
    );
    eprintln!("{gets} GetAccessPoint and {lists} ListAccessPoints for 20 volumes");
    assert!(lists >= 2, "readiness came from listings: {lists}");
}
