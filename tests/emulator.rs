//! Emulator behaviour as clients meet it: persistence across restarts and crashes, lifecycle
//! conflicts, synchronization configuration versions, policies and tags.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3files::error::ProvideErrorMetadata;
use aws_sdk_s3files::types::{ExpirationDataRule, ImportDataRule, ImportTrigger, Tag};
use common::emulator::{ROLE, RunningEmulator, sdk_client, test_config};
use common::{BIN, send_signal, wait_with_deadline};

use common::free_port;

fn spawn_emulator(port: u16, state: &std::path::Path, buckets: &std::path::Path) -> Child {
    Command::new(BIN)
        .args([
            "emulator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--ready-after",
            "0",
        ])
        .arg("--state-dir")
        .arg(state)
        .arg("--bucket-dir")
        .arg(buckets)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn emulator")
}

/// A new file system on bucket `name`; its id.
async fn file_system(c: &aws_sdk_s3files::Client, name: &str) -> String {
    c.create_file_system()
        .bucket(format!("arn:aws:s3:::{name}"))
        .role_arn(ROLE)
        .send()
        .await
        .expect("fs")
        .file_system_id()
        .expect("id")
        .to_owned()
}

async fn wait_up(client: &aws_sdk_s3files::Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.list_file_systems().send().await.is_err() {
        assert!(Instant::now() < deadline, "emulator did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn state_survives_a_crash_and_a_clean_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let buckets = dir.path().join("buckets");
    let port = free_port();
    let client = sdk_client(&format!("http://127.0.0.1:{port}"), 3);

    let mut emulator = spawn_emulator(port, &state, &buckets);
    wait_up(&client).await;
    let fs = client
        .create_file_system()
        .bucket("arn:aws:s3:::persist")
        .role_arn(ROLE)
        .send()
        .await
        .expect("fs");
    let fs_id = fs.file_system_id().expect("id").to_owned();
    assert!(
        buckets.join("persist").is_dir(),
        "the local bucket directory is created"
    );
    let mut ap_ids = Vec::new();
    for i in 0..5 {
        let ap = client
            .create_access_point()
            .file_system_id(&fs_id)
            .client_token(format!("t{i}"))
            .send()
            .await
            .expect("ap");
        ap_ids.push(ap.access_point_id().to_owned());
    }
    client
        .delete_access_point()
        .access_point_id(&ap_ids[0])
        .send()
        .await
        .expect("delete one");
    client
        .tag_resource()
        .resource_id(&fs_id)
        .tags(Tag::builder().key("team").value("a").build().expect("tag"))
        .send()
        .await
        .expect("tag");

    // A crash between requests: nothing acknowledged may be lost.
    send_signal(emulator.id() as i32, "KILL");
    wait_with_deadline(&mut emulator, Duration::from_secs(10)).await;
    let mut emulator = spawn_emulator(port, &state, &buckets);
    wait_up(&client).await;
    let listed = client
        .list_access_points()
        .file_system_id(&fs_id)
        .send()
        .await
        .expect("list");
    let mut ids: Vec<_> = listed
        .access_points()
        .iter()
        .map(|a| a.access_point_id().to_owned())
        .collect();
    ids.sort();
    let mut expected = ap_ids[1..].to_vec();
    expected.sort();
    assert_eq!(
        ids, expected,
        "the four live access points and not the deleted one"
    );
    let tags = client
        .list_tags_for_resource()
        .resource_id(&fs_id)
        .send()
        .await
        .expect("tags");
    assert_eq!(tags.tags().len(), 1);
    // The same client token still finds its access point after the restart.
    let again = client
        .create_access_point()
        .file_system_id(&fs_id)
        .client_token("t1")
        .send()
        .await
        .expect("retry");
    assert_eq!(again.access_point_id(), ap_ids[1]);

    // And a clean SIGTERM restart.
    send_signal(emulator.id() as i32, "TERM");
    let status = wait_with_deadline(&mut emulator, Duration::from_secs(10)).await;
    assert!(status.success(), "{status:?}");
    let mut emulator = spawn_emulator(port, &state, &buckets);
    wait_up(&client).await;
    let listed = client
        .list_access_points()
        .file_system_id(&fs_id)
        .send()
        .await
        .expect("list");
    assert_eq!(listed.access_points().len(), 4);
    send_signal(emulator.id() as i32, "TERM");
    wait_with_deadline(&mut emulator, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn lifecycle_rules_give_the_models_conflicts() {
    let mut config = test_config();
    config.settings.ready_after = 60.0;
    config
        .settings
        .subnet_zones
        .insert("subnet-0aaaaaaaaaaaaaaa1".into(), "use1-az1".into());
    config
        .settings
        .subnet_zones
        .insert("subnet-0aaaaaaaaaaaaaaa2".into(), "use1-az1".into());
    let emu = RunningEmulator::start(config).await;
    let c = emu.sdk();
    let fs = c
        .create_file_system()
        .bucket("arn:aws:s3:::life")
        .role_arn(ROLE)
        .send()
        .await
        .expect("fs");
    let fs_id = fs.file_system_id().expect("id").to_owned();
    assert_eq!(fs.status().map(|s| s.as_str()), Some("creating"));

    let err = c
        .create_mount_target()
        .file_system_id(&fs_id)
        .subnet_id("subnet-0aaaaaaaaaaaaaaa1")
        .send()
        .await
        .expect_err("fs still creating");
    assert_eq!(err.code(), Some("ConflictException"));
    let err = c
        .create_access_point()
        .file_system_id(&fs_id)
        .send()
        .await
        .expect_err("fs still creating");
    assert_eq!(err.code(), Some("ConflictException"));

    let same_bucket = c
        .create_file_system()
        .bucket("arn:aws:s3:::life")
        .role_arn(ROLE)
        .send()
        .await
        .expect_err("same bucket and prefix");
    assert_eq!(same_bucket.code(), Some("ConflictException"));
    emu.stop().await;

    let mut config = test_config();
    config
        .settings
        .subnet_zones
        .insert("subnet-0aaaaaaaaaaaaaaa1".into(), "use1-az1".into());
    config
        .settings
        .subnet_zones
        .insert("subnet-0aaaaaaaaaaaaaaa2".into(), "use1-az1".into());
    let emu = RunningEmulator::start(config).await;
    let c = emu.sdk();
    let fs_id = file_system(&c, "life2").await;
    let mt = c
        .create_mount_target()
        .file_system_id(&fs_id)
        .subnet_id("subnet-0aaaaaaaaaaaaaaa1")
        .send()
        .await
        .expect("first mt");
    assert_eq!(mt.availability_zone_id(), Some("use1-az1"));
    let err = c
        .create_mount_target()
        .file_system_id(&fs_id)
        .subnet_id("subnet-0aaaaaaaaaaaaaaa2")
        .send()
        .await
        .expect_err("second in the zone");
    assert_eq!(err.code(), Some("ConflictException"));
    let ap = c
        .create_access_point()
        .file_system_id(&fs_id)
        .send()
        .await
        .expect("ap");
    let by_ap = c
        .list_mount_targets()
        .access_point_id(ap.access_point_id())
        .send()
        .await
        .expect("by access point");
    assert_eq!(by_ap.mount_targets().len(), 1);
    emu.stop().await;
}

#[tokio::test]
async fn a_deleted_mount_target_is_deleting_for_a_while_and_holds_its_zone() {
    let mut config = test_config();
    config.settings.ready_after = 0.0;
    for subnet in ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2"] {
        config
            .settings
            .subnet_zones
            .insert(subnet.into(), "use1-az1".into());
    }
    let emu = RunningEmulator::start(config).await;
    let c = emu.sdk();
    let fs_id = file_system(&c, "deleting").await;
    let mt_id = c
        .create_mount_target()
        .file_system_id(&fs_id)
        .subnet_id("subnet-0aaaaaaaaaaaaaaa1")
        .send()
        .await
        .expect("mt")
        .mount_target_id()
        .to_owned();
    // Deletion takes time, as the service's does.
    emu.emulator.set_ready_after(1.0);
    c.delete_mount_target()
        .mount_target_id(&mt_id)
        .send()
        .await
        .expect("delete");
    let got = c
        .get_mount_target()
        .mount_target_id(&mt_id)
        .send()
        .await
        .expect("still there");
    assert_eq!(got.status().map(|s| s.as_str()), Some("deleting"));
    let listed = c
        .list_mount_targets()
        .file_system_id(&fs_id)
        .send()
        .await
        .expect("list");
    assert_eq!(
        listed.mount_targets()[0].status().map(|s| s.as_str()),
        Some("deleting")
    );
    c.delete_mount_target()
        .mount_target_id(&mt_id)
        .send()
        .await
        .expect("deleting again is accepted");
    let err = c
        .update_mount_target()
        .mount_target_id(&mt_id)
        .security_groups("sg-0123456789abcdef0")
        .send()
        .await
        .expect_err("being deleted");
    assert_eq!(err.code(), Some("ConflictException"), "{err:?}");
    let err = c
        .create_mount_target()
        .file_system_id(&fs_id)
        .subnet_id("subnet-0aaaaaaaaaaaaaaa2")
        .send()
        .await
        .expect_err("the zone is still taken");
    assert_eq!(err.code(), Some("ConflictException"), "{err:?}");
    let err = c
        .delete_file_system()
        .file_system_id(&fs_id)
        .send()
        .await
        .expect_err("a mount target is still there");
    assert_eq!(err.code(), Some("ConflictException"), "{err:?}");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let err = c
        .get_mount_target()
        .mount_target_id(&mt_id)
        .send()
        .await
        .expect_err("gone");
    assert_eq!(err.code(), Some("ResourceNotFoundException"), "{err:?}");
    assert!(
        c.list_mount_targets()
            .file_system_id(&fs_id)
            .send()
            .await
            .expect("list")
            .mount_targets()
            .is_empty()
    );
    emu.emulator.set_ready_after(0.0);
    c.create_mount_target()
        .file_system_id(&fs_id)
        .subnet_id("subnet-0aaaaaaaaaaaaaaa2")
        .send()
        .await
        .expect("the zone is free again");
    emu.stop().await;
}

#[tokio::test]
async fn synchronization_configuration_uses_optimistic_versions() {
    let emu = RunningEmulator::start(test_config()).await;
    let c = emu.sdk();
    let fs_id = file_system(&c, "sync").await;
    let default = c
        .get_synchronization_configuration()
        .file_system_id(&fs_id)
        .send()
        .await
        .expect("get");
    assert_eq!(default.import_data_rules()[0].size_less_than(), 131_072);
    assert_eq!(
        default.expiration_data_rules()[0].days_after_last_access(),
        30
    );
    assert_eq!(default.latest_version_number(), None);

    let rules = ImportDataRule::builder()
        .prefix("")
        .trigger(ImportTrigger::OnFileAccess)
        .size_less_than(1024)
        .build()
        .expect("rule");
    let expire = ExpirationDataRule::builder()
        .days_after_last_access(7)
        .build()
        .expect("expire");
    c.put_synchronization_configuration()
        .file_system_id(&fs_id)
        .import_data_rules(rules.clone())
        .expiration_data_rules(expire.clone())
        .send()
        .await
        .expect("first put");
    let stale = c
        .put_synchronization_configuration()
        .file_system_id(&fs_id)
        .import_data_rules(rules.clone())
        .expiration_data_rules(expire.clone())
        .send()
        .await
        .expect_err("no version on the second put");
    assert_eq!(stale.code(), Some("ConflictException"));
    let now = c
        .get_synchronization_configuration()
        .file_system_id(&fs_id)
        .send()
        .await
        .expect("get");
    assert_eq!(now.latest_version_number(), Some(1));
    c.put_synchronization_configuration()
        .file_system_id(&fs_id)
        .latest_version_number(1)
        .import_data_rules(rules)
        .expiration_data_rules(expire)
        .send()
        .await
        .expect("versioned put");
    emu.stop().await;
}

#[tokio::test]
async fn policies_and_tags_round_trip() {
    let emu = RunningEmulator::start(test_config()).await;
    let c = emu.sdk();
    let fs_id = file_system(&c, "pol").await;
    let missing = c
        .get_file_system_policy()
        .file_system_id(&fs_id)
        .send()
        .await
        .expect_err("no policy yet");
    assert_eq!(missing.code(), Some("ResourceNotFoundException"));
    let policy = r#"{"Version":"2012-10-17","Statement":[]}"#;
    c.put_file_system_policy()
        .file_system_id(&fs_id)
        .policy(policy)
        .send()
        .await
        .expect("put");
    let got = c
        .get_file_system_policy()
        .file_system_id(&fs_id)
        .send()
        .await
        .expect("get");
    assert_eq!(got.policy(), policy);
    c.delete_file_system_policy()
        .file_system_id(&fs_id)
        .send()
        .await
        .expect("delete");

    let tags: Vec<Tag> = (0..30)
        .map(|i| {
            Tag::builder()
                .key(format!("k{i:02}"))
                .value("v")
                .build()
                .expect("tag")
        })
        .collect();
    c.tag_resource()
        .resource_id(&fs_id)
        .set_tags(Some(tags))
        .send()
        .await
        .expect("tag");
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = c
            .list_tags_for_resource()
            .resource_id(&fs_id)
            .max_results(12)
            .set_next_token(token)
            .send()
            .await
            .expect("page");
        seen.extend(page.tags().iter().map(|t| t.key().to_owned()));
        token = page.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), 30);
    c.untag_resource()
        .resource_id(&fs_id)
        .tag_keys("k00")
        .tag_keys("k01")
        .send()
        .await
        .expect("untag");
    let after = c
        .list_tags_for_resource()
        .resource_id(&fs_id)
        .send()
        .await
        .expect("list");
    assert_eq!(after.tags().len(), 28);
    let too_many: Vec<Tag> = (0..25)
        .map(|i| {
            Tag::builder()
                .key(format!("x{i}"))
                .value("v")
                .build()
                .expect("tag")
        })
        .collect();
    let err = c
        .tag_resource()
        .resource_id(&fs_id)
        .set_tags(Some(too_many))
        .send()
        .await
        .expect_err("over 50 tags");
    assert_eq!(err.code(), Some("ValidationException"));
    emu.stop().await;
}

#[tokio::test]
async fn a_preset_file_system_is_ready_with_its_versioned_bucket_and_survives_restarts() {
    let store = common::s3server::S3Server::start().await;
    let state = tempfile::tempdir().expect("state");
    let port = free_port();
    let fs_id = "fs-0000000000000000a";
    let start = || {
        Command::new(BIN)
            .args(["emulator", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(state.path())
            .args(["--bucket-endpoint", &store.url])
            .args([
                "--preset-file-system",
                &format!("{fs_id}=arn:aws:s3:::preset-bucket"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn emulator")
    };
    let client = sdk_client(&format!("http://127.0.0.1:{port}"), 3);
    for round in 0..2 {
        let mut child = start();
        wait_up(&client).await;
        let fs = client
            .get_file_system()
            .file_system_id(fs_id)
            .send()
            .await
            .expect("the preset file system");
        assert_eq!(fs.status().map(|s| s.as_str()), Some("available"));
        let listed = client.list_file_systems().send().await.expect("list");
        assert_eq!(listed.file_systems().len(), 1, "round {round}: exactly one");
        let targets = client
            .list_mount_targets()
            .file_system_id(fs_id)
            .send()
            .await
            .expect("mount targets");
        let mut zones: Vec<_> = targets
            .mount_targets()
            .iter()
            .filter_map(|m| m.availability_zone_id().map(str::to_owned))
            .collect();
        zones.sort();
        assert_eq!(zones, ["use1-az1", "use1-az2", "use1-az3"]);
        let _ = child.kill();
        let _ = child.wait();
    }
    let (status, body) =
        common::emulator::http_request(store.addr, "GET", "/preset-bucket?versioning", "").await;
    assert_eq!(status, 200);
    assert!(body.contains("<Status>Enabled</Status>"), "{body}");
}

#[tokio::test]
async fn a_preset_file_system_over_local_buckets_has_its_bucket_directory() {
    let state = tempfile::tempdir().expect("state");
    let buckets = tempfile::tempdir().expect("buckets");
    let port = free_port();
    let fs_id = "fs-0000000000000000b";
    let client = sdk_client(&format!("http://127.0.0.1:{port}"), 3);
    let bucket_dir = buckets.path().join("local-preset");
    // The second start finds the file system in its state but the directory gone (a wiped
    // volume): the directory is made again, or mounts of the preset file system would fail.
    for round in 0..2 {
        let mut child = Command::new(BIN)
            .args(["emulator", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(state.path())
            .arg("--bucket-dir")
            .arg(buckets.path())
            .args([
                "--preset-file-system",
                &format!("{fs_id}=arn:aws:s3:::local-preset"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn emulator");
        wait_up(&client).await;
        assert!(bucket_dir.is_dir(), "round {round}: no bucket directory");
        let _ = child.kill();
        let _ = child.wait();
        std::fs::remove_dir_all(&bucket_dir).expect("remove the bucket directory");
    }
}
