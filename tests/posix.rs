//! The project's POSIX table (`tests/posix/cases.py`: chmod, chown, mkdir, open, unlink, rmdir,
//! rename, symlink, link/mknod, truncate, utimensat, names) run as several users against a real
//! mount, over a local bucket and over moto. The mount's access point has no POSIX user, so
//! callers act as themselves and the permission rules are the file system's. Every case must
//! pass and none may hang.

mod common;

use std::time::Duration;

use common::emulator::ROLE;
use common::mounts::{Backend, emulator_over, mount};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use s3files_csi::cloud::{CreationPermissions, NewAccessPoint, NewFileSystem, S3Files};

const BUCKET: &str = "posix-bucket";

async fn the_posix_table_passes(backend: Backend) {
    let (emu, s3, store) = emulator_over(backend, BUCKET).await;
    let _moto = s3;
    let cloud = emu.cloud();
    let fs = cloud
        .create_file_system(&NewFileSystem {
            bucket_arn: format!("arn:aws:s3:::{BUCKET}"),
            prefix: Some("k8s/".into()),
            role_arn: ROLE.into(),
            client_token: None,
            tags: vec![],
        })
        .await
        .expect("fs");
    let ap = cloud
        .create_access_point(&NewAccessPoint {
            file_system_id: fs.id.clone(),
            client_token: "posix-ap".into(),
            posix_user: None,
            root_path: Some("/posix".into()),
            creation_permissions: Some(CreationPermissions {
                owner_uid: 0,
                owner_gid: 0,
                permissions: "0777".into(),
            }),
            tags: vec![],
        })
        .await
        .expect("ap");
    let m = mount(&emu, &fs.id, &ap.id, "").await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/posix/cases.py");
    let target = m.target.clone();
    let longest_file_name = match backend {
        Backend::Local => "253",
        Backend::Moto => "255",
    };
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .arg(&target)
            .arg(longest_file_name)
            .output()
            .expect("run python3")
    });
    // Each operation has its own 20 s deadline inside the script; this bounds the whole run.
    let out = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .unwrap_or_else(|_| panic!("the POSIX table did not finish\n{}", m.log()))
        .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut failures = Vec::new();
    let mut summary = None;
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        if let Some(s) = v.get("summary") {
            summary = Some((s["passed"].as_u64(), s["failed"].as_u64()));
        } else if v["ok"] == false {
            failures.push(format!(
                "{} / {}: want {}, got {}",
                v["case"].as_str().unwrap_or(""),
                v["check"].as_str().unwrap_or(""),
                v["want"].as_str().unwrap_or(""),
                v["got"].as_str().unwrap_or("")
            ));
        }
    }
    let Some((Some(passed), Some(failed))) = summary else {
        panic!(
            "the table stopped early:\n{stdout}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            m.log()
        );
    };
    println!("{backend:?}: {passed} checks passed, {failed} failed");
    assert!(
        failures.is_empty(),
        "{failed} of {} checks failed on {backend:?}:\n{}\n--- mount log (tail) ---\n{}",
        passed + failed,
        failures.join("\n"),
        tail(&m.log(), 60)
    );
    assert!(passed > 200, "only {passed} checks ran");
    // Names are keys byte for byte, as other clients of the bucket see them.
    for name in ["caf\u{e9}", "\u{6587}\u{4ef6}", "100%25", "a?b", "#hash"] {
        let key = ObjectPath::parse(format!("k8s/posix/names/{name}")).expect("key");
        let got = store
            .get(&key)
            .await
            .unwrap_or_else(|e| panic!("object {key}: {e}"));
        assert_eq!(&got.bytes().await.expect("body")[..], name.as_bytes());
    }
}

fn tail(log: &str, lines: usize) -> String {
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_posix_table_passes_on_a_local_bucket() {
    the_posix_table_passes(Backend::Local).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_posix_table_passes_on_moto() {
    the_posix_table_passes(Backend::Moto).await
}
