//! GIDs across allocators: two controller processes on one file system, leadership handed
//! over on csi-provisioner's Lease (a fake Kubernetes API), access points made by other
//! clients, and a create of the old leader that lands after the handover.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use common::emulator::test_config;
use common::lease::FakeLease;
use common::{ControllerStack, Plugin, emulator_env, mount_capability};
use s3files_csi::cloud::{NewAccessPoint, PosixUser, S3Files};
use s3files_csi::csi::controller_client::ControllerClient;
use s3files_csi::csi::volume_capability::access_mode::Mode as AccessMode;
use s3files_csi::csi::{self};
use s3files_csi::emulator::faults::{FaultConfig, FaultSpec};
use s3files_csi::volume::VolumeHandle;
use tonic::Code;
use tonic::transport::Channel;

fn request(stack: &ControllerStack, name: &str, range: (u32, u32)) -> csi::CreateVolumeRequest {
    let (start, end) = (range.0.to_string(), range.1.to_string());
    csi::CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![mount_capability(AccessMode::MultiNodeMultiWriter)],
        parameters: stack.params(&[("gidRangeStart", &start), ("gidRangeEnd", &end)]),
        ..Default::default()
    }
}

async fn create(
    client: &mut ControllerClient<Channel>,
    req: csi::CreateVolumeRequest,
) -> Result<String, tonic::Status> {
    client
        .create_volume(req)
        .await
        .map(|r| r.into_inner().volume.expect("volume").volume_id)
}

/// The GID of the access point behind `volume_id`.
async fn gid_of(stack: &ControllerStack, volume_id: &str) -> u32 {
    let handle = VolumeHandle::parse(volume_id).expect("handle");
    stack
        .emulator
        .cloud()
        .get_access_point(handle.access_point_id.as_deref().expect("ap"))
        .await
        .expect("access point")
        .posix_user
        .expect("user")
        .gid
}

/// Live access points of the stack's file system by GID.
async fn by_gid(stack: &ControllerStack) -> HashMap<u32, Vec<String>> {
    let mut map: HashMap<u32, Vec<String>> = HashMap::new();
    for ap in stack
        .emulator
        .cloud()
        .list_access_points(&stack.fs_id)
        .await
        .expect("list")
    {
        if let Some(u) = ap.posix_user {
            map.entry(u.gid).or_default().push(ap.id);
        }
    }
    map
}

fn list_calls(stack: &ControllerStack) -> u64 {
    stack
        .emulator
        .emulator
        .faults
        .calls("ListAccessPoints", "ok")
}

/// A second controller process on the stack's emulator.
async fn second_controller(
    stack: &ControllerStack,
    args: &[&str],
    lease: Option<&FakeLease>,
) -> Plugin {
    let mut all = vec!["controller", "--api-rate-limit", "0"];
    all.extend_from_slice(args);
    let mut env = emulator_env(&stack.emulator.url);
    let flag;
    if let Some(lease) = lease {
        flag = lease.flag();
        all.extend(["--leader-lease", flag.as_str()]);
        env.push(("KUBECONFIG", lease.kubeconfig()));
    }
    Plugin::start_with_env(&all, &env).await
}

fn hour_ago() -> SystemTime {
    SystemTime::now() - Duration::from_secs(3600)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_controllers_and_another_client_on_one_file_system_never_share_a_gid() {
    // No Lease: both controllers serve at once (as two clusters on one file system would), and
    // every GID they draw is verified.
    let stack = ControllerStack::start(test_config(), &[]).await;
    let other = second_controller(&stack, &[], None).await;
    let range = (9000, 9039);
    let mut a = ControllerClient::new(stack.plugin.channel().await);
    let mut b = ControllerClient::new(other.channel().await);
    // Both learn their views now...
    create(&mut a, request(&stack, "pvc-a-warm", range))
        .await
        .expect("a");
    create(&mut b, request(&stack, "pvc-b-warm", range))
        .await
        .expect("b");
    // ...which another client then makes stale: ten access points with GIDs in the range that
    // were free when it made them.
    let cloud = stack.emulator.cloud();
    let taken = by_gid(&stack).await;
    let free: Vec<u32> = (range.0..=range.1)
        .filter(|g| !taken.contains_key(g))
        .step_by(3)
        .take(10)
        .collect();
    for (i, gid) in free.into_iter().enumerate() {
        cloud
            .create_access_point(&NewAccessPoint {
                file_system_id: stack.fs_id.clone(),
                client_token: format!("terraform-{i}"),
                posix_user: Some(PosixUser {
                    uid: gid,
                    gid,
                    secondary_gids: vec![],
                }),
                root_path: Some(format!("/terraform-{i}")),
                creation_permissions: None,
                tags: vec![],
            })
            .await
            .expect("other client's access point");
    }
    // Twelve creates on each controller at once.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let mut client = if i % 2 == 0 { a.clone() } else { b.clone() };
        let req = request(&stack, &format!("pvc-burst-{i}"), range);
        tasks.push(tokio::spawn(async move {
            loop {
                match create(&mut client, req.clone()).await {
                    Ok(id) => return id,
                    Err(s) if matches!(s.code(), Code::Unavailable | Code::Aborted) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(s) => panic!("create: {s:?}"),
                }
            }
        }));
    }
    let mut ids = HashSet::new();
    for t in tasks {
        assert!(ids.insert(t.await.expect("task")));
    }
    let gids = by_gid(&stack).await;
    let mut shared = Vec::new();
    for (gid, aps) in gids.iter().filter(|(_, aps)| aps.len() > 1) {
        let mut tokens = Vec::new();
        for ap in aps {
            let ap = cloud.get_access_point(ap).await.expect("ap");
            tokens.push((ap.id, ap.client_token));
        }
        shared.push((gid, tokens));
    }
    assert!(
        shared.is_empty(),
        "GIDs held by two access points: {shared:?}"
    );
    eprintln!(
        "access points given up after a collision: {}",
        stack
            .emulator
            .emulator
            .faults
            .calls("DeleteAccessPoint", "ok")
    );
    assert_eq!(
        gids.values().map(Vec::len).sum::<usize>(),
        2 + 10 + 24,
        "one access point per volume, none left by a yield"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_leadership_term_is_learned_once_and_its_gids_are_not_the_old_leaders() {
    // Settling time 0: a term is trusted as soon as its view is learned, so what is measured is
    // the relearn at the handover alone.
    let lease =
        FakeLease::start("kube-system", "s3files-csi-dev", "controller-b", hour_ago()).await;
    let stack =
        ControllerStack::start_with_lease(test_config(), &["--gid-settle", "0"], &lease).await;
    let a = second_controller(&stack, &["--gid-settle", "0"], Some(&lease)).await;
    let range = (7000, 7099);
    let mut b_client = ControllerClient::new(stack.plugin.channel().await);
    let mut a_client = ControllerClient::new(a.channel().await);
    // Term 1, replica b: three volumes, one listing.
    let mut b_gids = Vec::new();
    for i in 0..3 {
        let id = create(&mut b_client, request(&stack, &format!("pvc-b-{i}"), range))
            .await
            .expect("b");
        b_gids.push(gid_of(&stack, &id).await);
    }
    assert_eq!(b_gids, [7000, 7001, 7002]);
    assert_eq!(list_calls(&stack), 1);
    // Term 2, replica a: five volumes.
    lease.set(Some(("controller-a", SystemTime::now())));
    let mut a_gids = Vec::new();
    for i in 0..5 {
        let id = create(&mut a_client, request(&stack, &format!("pvc-a-{i}"), range))
            .await
            .expect("a");
        a_gids.push(gid_of(&stack, &id).await);
    }
    assert_eq!(a_gids, [7003, 7004, 7005, 7006, 7007]);
    assert_eq!(list_calls(&stack), 2);
    // Term 3, replica b again: its view is from term 1 and misses a's five; it relearns once.
    lease.set(Some(("controller-b", SystemTime::now())));
    for i in 3..8 {
        let id = create(&mut b_client, request(&stack, &format!("pvc-b-{i}"), range))
            .await
            .expect("b");
        b_gids.push(gid_of(&stack, &id).await);
    }
    assert_eq!(b_gids[3..], [7008, 7009, 7010, 7011, 7012]);
    assert_eq!(
        list_calls(&stack),
        3,
        "one listing per term, none per create"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_of_the_old_leader_that_lands_after_the_handover_is_caught() {
    let lease =
        FakeLease::start("kube-system", "s3files-csi-dev", "controller-a", hour_ago()).await;
    // Replica a (the stack's controller) leads a settled term; b waits (default settling time).
    let stack = ControllerStack::start_with_lease(test_config(), &[], &lease).await;
    let b = second_controller(&stack, &[], Some(&lease)).await;
    let range = (7000, 7001);
    let mut a_client = ControllerClient::new(stack.plugin.channel().await);
    let mut b_client = ControllerClient::new(b.channel().await);
    create(&mut a_client, request(&stack, "pvc-warm", range))
        .await
        .expect("warm-up");
    // Every CreateAccessPoint now takes 2 s to land.
    stack.emulator.emulator.faults.set_config(FaultConfig {
        default: FaultSpec::default(),
        operations: [(
            "CreateAccessPoint".to_owned(),
            FaultSpec {
                latency_ms: 2000,
                ..Default::default()
            },
        )]
        .into(),
    });
    let straggler = {
        let mut client = a_client.clone();
        let req = request(&stack, "pvc-old-term", range);
        tokio::spawn(async move { create(&mut client, req).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The handover, while a's create is in flight.
    lease.set(Some(("controller-b", SystemTime::now())));
    tokio::time::sleep(Duration::from_millis(700)).await;
    // b learns now, before a's access point exists: 7001 looks free to b too.
    let b_result = create(&mut b_client, request(&stack, "pvc-new-term", range)).await;
    let a_id = straggler
        .await
        .expect("task")
        .expect("the old leader's create");
    assert_eq!(gid_of(&stack, &a_id).await, 7001);
    // b's term has not settled, so b checked its access point, found a's, gave its own up and
    // found the range full.
    let err = b_result.expect_err("the range is full");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    let gids = by_gid(&stack).await;
    assert_eq!(gids.len(), 2, "{gids:?}");
    assert!(gids.values().all(|aps| aps.len() == 1), "{gids:?}");
}
