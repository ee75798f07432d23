//! The driver's S3 Files client (`cloud::aws`, the real SDK) against the emulator.

mod common;

use std::time::{Duration, Instant};

use common::emulator::{ROLE, RunningEmulator, test_config};
use s3files_csi::cloud::{
    CloudError, CreationPermissions, LifeCycle, NewAccessPoint, NewFileSystem, PosixUser, S3Files,
};

async fn file_system(cloud: &impl S3Files, bucket: &str) -> String {
    let fs = cloud
        .create_file_system(&NewFileSystem {
            bucket_arn: format!("arn:aws:s3:::{bucket}"),
            prefix: None,
            role_arn: ROLE.into(),
            client_token: None,
            tags: vec![],
        })
        .await
        .expect("create file system");
    fs.id
}

fn new_ap(fs: &str, token: &str) -> NewAccessPoint {
    NewAccessPoint {
        file_system_id: fs.into(),
        client_token: token.into(),
        posix_user: Some(PosixUser {
            uid: 1000,
            gid: 50000,
            secondary_gids: vec![50001],
        }),
        root_path: Some("/volumes/pvc-1".into()),
        creation_permissions: Some(CreationPermissions {
            owner_uid: 1000,
            owner_gid: 50000,
            permissions: "0750".into(),
        }),
        tags: vec![("s3files.csi.dev/cluster".into(), "true".into())],
    }
}

#[tokio::test]
async fn every_operation_the_driver_uses_works_through_the_sdk() {
    let mut config = test_config();
    config.settings.ready_after = 0.3;
    let emu = RunningEmulator::start(config).await;
    let cloud = emu.cloud();

    let fs_id = file_system(&cloud, "bucket-ops").await;
    let fs = cloud.get_file_system(&fs_id).await.expect("get fs");
    assert_eq!(
        fs.status,
        LifeCycle::Creating,
        "new file systems start creating"
    );
    assert_eq!(fs.bucket, "arn:aws:s3:::bucket-ops");
    let deadline = Instant::now() + Duration::from_secs(10);
    while cloud.get_file_system(&fs_id).await.expect("get fs").status != LifeCycle::Available {
        assert!(
            Instant::now() < deadline,
            "file system never became available"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mt = cloud
        .create_mount_target(&fs_id, "subnet-0aa11bb22cc33dd44")
        .await
        .expect("mount target");
    let mts = cloud
        .list_mount_targets(&fs_id)
        .await
        .expect("list mount targets");
    assert_eq!(mts.len(), 1);
    assert_eq!(mts[0].id, mt.id);
    assert!(
        mts[0]
            .availability_zone_id
            .as_deref()
            .is_some_and(|z| z.starts_with("use1-az"))
    );

    let ap = cloud
        .create_access_point(&new_ap(&fs_id, "pvc-1"))
        .await
        .expect("create ap");
    assert_eq!(ap.file_system_id, fs_id);
    assert_eq!(ap.client_token.as_deref(), Some("pvc-1"));
    assert_eq!(
        ap.posix_user,
        Some(PosixUser {
            uid: 1000,
            gid: 50000,
            secondary_gids: vec![50001]
        })
    );
    assert_eq!(ap.root_path.as_deref(), Some("/volumes/pvc-1"));
    assert_eq!(
        ap.creation_permissions
            .as_ref()
            .map(|c| c.permissions.as_str()),
        Some("0750")
    );
    assert_eq!(
        ap.tags,
        vec![("s3files.csi.dev/cluster".to_owned(), "true".to_owned())]
    );

    let got = cloud.get_access_point(&ap.id).await.expect("get ap");
    assert_eq!(got.id, ap.id);
    let by_arn = cloud
        .get_access_point(&ap.arn)
        .await
        .expect("get ap by ARN");
    assert_eq!(by_arn.id, ap.id);
    let listed = cloud.list_access_points(&fs_id).await.expect("list aps");
    assert_eq!(
        listed.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        [ap.id.as_str()]
    );

    let busy = cloud
        .delete_file_system(&fs_id)
        .await
        .expect_err("fs with an ap cannot go");
    assert!(matches!(busy, CloudError::Conflict { .. }), "{busy:?}");

    cloud.delete_access_point(&ap.id).await.expect("delete ap");
    let gone = cloud.get_access_point(&ap.id).await.expect_err("deleted");
    assert!(matches!(gone, CloudError::NotFound(_)), "{gone:?}");
    let again = cloud
        .delete_access_point(&ap.id)
        .await
        .expect_err("second delete");
    assert!(matches!(again, CloudError::NotFound(_)), "{again:?}");

    cloud.delete_mount_target(&mt.id).await.expect("delete mt");
    // The mount target is deleting for a while; the file system goes once it is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cloud
        .list_mount_targets(&fs_id)
        .await
        .expect("list")
        .iter()
        .any(|m| m.id == mt.id)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the mount target never went"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    cloud.delete_file_system(&fs_id).await.expect("delete fs");
    assert!(matches!(
        cloud.get_file_system(&fs_id).await,
        Err(CloudError::NotFound(_))
    ));
    emu.stop().await;
}

#[tokio::test]
async fn the_same_client_token_returns_the_same_access_point() {
    let emu = RunningEmulator::start(test_config()).await;
    let cloud = emu.cloud();
    let fs = file_system(&cloud, "bucket-token").await;
    let first = cloud
        .create_access_point(&new_ap(&fs, "pvc-same"))
        .await
        .expect("first");
    let second = cloud
        .create_access_point(&new_ap(&fs, "pvc-same"))
        .await
        .expect("retry");
    assert_eq!(first.id, second.id);
    assert_eq!(cloud.list_access_points(&fs).await.expect("list").len(), 1);

    let mut different = new_ap(&fs, "pvc-same");
    different.root_path = Some("/elsewhere".into());
    match cloud.create_access_point(&different).await {
        Err(CloudError::Conflict { resource_id, .. }) => {
            assert_eq!(resource_id.as_deref(), Some(first.id.as_str()))
        }
        other => panic!("expected a conflict naming the existing access point, got {other:?}"),
    }
    emu.stop().await;
}

#[tokio::test]
async fn listing_follows_pages_past_a_thousand_access_points() {
    let emu = RunningEmulator::start(test_config()).await;
    let cloud = emu.cloud();
    let fs = file_system(&cloud, "bucket-pages").await;
    for i in 0..1_050 {
        let mut ap = new_ap(&fs, &format!("pvc-{i}"));
        ap.root_path = Some(format!("/v/pvc-{i}"));
        cloud.create_access_point(&ap).await.expect("create");
    }
    let (first_page, next) = cloud
        .list_access_points_page(&fs, None)
        .await
        .expect("page 1");
    assert_eq!(
        first_page.len(),
        1000,
        "the driver asks for the model's largest page"
    );
    assert!(next.is_some());
    let all = cloud.list_access_points(&fs).await.expect("all pages");
    assert_eq!(all.len(), 1_050);
    let mut ids: Vec<_> = all.iter().map(|a| a.id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1_050, "no access point listed twice");
    emu.stop().await;
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried_by_the_sdk() {
    let mut config = test_config();
    config.faults.default.throttle_rate = 0.2;
    config.faults.default.error_rate = 0.05;
    let emu = RunningEmulator::start(config).await;
    // Eight attempts make a call fail only when eight dice in a row fail (p = 0.25^8 per
    // call); the dice are seeded, so the run is reproducible.
    let cloud =
        s3files_csi::cloud::aws::AwsS3Files::new(common::emulator::sdk_client(&emu.url, 8), None);
    // Setup may itself be retried; that is the point.
    let fs = file_system(&cloud, "bucket-faults").await;
    // Adaptive retry also slows the client down after each throttle, so keep the count modest.
    for _ in 0..20 {
        cloud
            .get_file_system(&fs)
            .await
            .expect("retries hide 20% throttling and 5% 5xx");
    }
    let throttled = emu
        .emulator
        .faults
        .calls("GetFileSystem", "ThrottlingException");
    let failed = emu
        .emulator
        .faults
        .calls("GetFileSystem", "InternalServerException");
    let ok = emu.emulator.faults.calls("GetFileSystem", "ok");
    assert_eq!(ok, 20);
    assert!(
        throttled > 0 && failed > 0,
        "faults were injected: {throttled} throttled, {failed} 5xx"
    );
    emu.stop().await;
}

#[tokio::test]
async fn persistent_throttling_surfaces_as_throttled() {
    let mut config = test_config();
    config.faults.operations.insert(
        "GetFileSystem".into(),
        s3files_csi::emulator::faults::FaultSpec {
            throttle_rate: 1.0,
            ..Default::default()
        },
    );
    let emu = RunningEmulator::start(config).await;
    let err = emu
        .cloud()
        .get_file_system("fs-0123456789abcdef0")
        .await
        .expect_err("always throttled");
    assert!(matches!(err, CloudError::Throttled(_)), "{err:?}");
    assert_eq!(
        emu.emulator
            .faults
            .calls("GetFileSystem", "ThrottlingException"),
        5,
        "5 attempts"
    );
    emu.stop().await;
}

#[tokio::test]
async fn validation_errors_surface_with_the_services_message() {
    let emu = RunningEmulator::start(test_config()).await;
    let err = emu
        .cloud()
        .get_file_system("fs-nothex")
        .await
        .expect_err("invalid id");
    match err {
        CloudError::Validation(message) => {
            assert!(message.contains("fileSystemId"), "{message}");
            assert!(message.starts_with("GetFileSystem:"), "{message}");
        }
        other => panic!("expected validation, got {other:?}"),
    }
    emu.stop().await;
}

#[tokio::test]
async fn the_access_point_quota_is_enforced() {
    let mut config = test_config();
    config.settings.max_access_points_per_file_system = 3;
    let emu = RunningEmulator::start(config).await;
    let cloud = emu.cloud();
    let fs = file_system(&cloud, "bucket-quota").await;
    for i in 0..3 {
        cloud
            .create_access_point(&new_ap(&fs, &format!("q{i}")))
            .await
            .expect("under quota");
    }
    let err = cloud
        .create_access_point(&new_ap(&fs, "q3"))
        .await
        .expect_err("over quota");
    assert!(matches!(err, CloudError::QuotaExceeded(_)), "{err:?}");
    emu.stop().await;
}

#[tokio::test]
async fn faults_change_at_run_time_through_the_admin_endpoint() {
    let emu = RunningEmulator::start(test_config()).await;
    let cloud = emu.cloud();
    let fs = file_system(&cloud, "bucket-admin").await;
    cloud.get_file_system(&fs).await.expect("healthy");

    let (status, body) = emu
        .admin(
            "PUT",
            "/_emulator/faults",
            r#"{"operations":{"GetFileSystem":{"errorRate":1.0}}}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let err = cloud
        .get_file_system(&fs)
        .await
        .expect_err("every call fails now");
    assert!(matches!(err, CloudError::Transient(_)), "{err:?}");
    cloud
        .get_access_point("fsap-0123456789abcdef0")
        .await
        .expect_err("not found, but not injected");

    let (status, body) = emu
        .admin("PUT", "/_emulator/faults", r#"{"default":{"errorRate":2}}"#)
        .await;
    assert_eq!(status, 400, "bad config rejected: {body}");
    assert!(body.contains("errorRate"), "{body}");

    let (status, _) = emu.admin("PUT", "/_emulator/faults", "{}").await;
    assert_eq!(status, 200);
    cloud.get_file_system(&fs).await.expect("healthy again");

    let (status, metrics) = emu.admin("GET", "/metrics", "").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(r#"s3files_emulator_calls_total{operation="GetFileSystem",outcome="InternalServerException"} 5"#),
        "{metrics}"
    );
    emu.stop().await;
}

#[tokio::test]
async fn a_dropped_answer_comes_after_the_call_was_applied() {
    let emu = RunningEmulator::start(test_config()).await;
    let cloud = emu.cloud();
    let fs = file_system(&cloud, "bucket-dropped").await;
    let (status, body) = emu
        .admin(
            "PUT",
            "/_emulator/faults",
            r#"{"operations":{"DeleteAccessPoint":{"dropRate":1.0}}}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ap = cloud
        .create_access_point(&s3files_csi::cloud::NewAccessPoint {
            file_system_id: fs.clone(),
            client_token: "drop-1".into(),
            posix_user: None,
            root_path: Some("/drop-1".into()),
            creation_permissions: None,
            tags: vec![],
        })
        .await
        .expect("not dropped");
    cloud
        .delete_access_point(&ap.id)
        .await
        .expect_err("the answer is lost");
    emu.admin("PUT", "/_emulator/faults", "{}").await;
    let err = cloud
        .get_access_point(&ap.id)
        .await
        .expect_err("but the delete happened");
    assert!(matches!(err, CloudError::NotFound(_)), "{err:?}");
    let (status, _) = emu
        .admin(
            "PUT",
            "/_emulator/faults",
            r#"{"default":{"dropRate":1.5}}"#,
        )
        .await;
    assert_eq!(status, 400, "rates above 1 are refused");
}
