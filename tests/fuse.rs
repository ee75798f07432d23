//! The local data plane as pods meet it: `s3files-csi mount` (the mount.s3files-compatible
//! helper) serving an access point of an emulated file system over real FUSE, with the bucket
//! in a local directory.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::BIN;
use common::emulator::{ROLE, RunningEmulator, test_config};
use s3files_csi::cloud::{CreationPermissions, NewAccessPoint, NewFileSystem, PosixUser, S3Files};
use s3files_csi::mount::mountinfo;

struct Mounted {
    target: PathBuf,
    bucket_root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.target).status();
    }
}

fn is_mounted(path: &Path) -> bool {
    let table =
        mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo"));
    mountinfo::mount_at(&table, path).is_some()
}

async fn mount(emu: &RunningEmulator, fs: &str, ap: &str, extra: &str) -> Mounted {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("mnt");
    std::fs::create_dir_all(&target).expect("mkdir");
    let log = dir.path().join("mount.log");
    let options = format!("accesspoint={ap},tls,iam{extra}");
    let log2 = log.clone();
    let fs_owned = fs.to_owned();
    let status = tokio::task::spawn_blocking({
        let env = common::emulator_env(&emu.url);
        let target = target.clone();
        move || {
            Command::new(BIN)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .env("RUST_LOG", "s3files_csi=debug")
                .arg("mount")
                .arg(&fs_owned)
                .arg(&target)
                .args(["-o", &options])
                .arg("--log-file")
                .arg(&log2)
                .output()
                .expect("run the helper")
        }
    })
    .await
    .expect("join");
    assert!(
        status.status.success(),
        "helper failed: {}\n{}",
        String::from_utf8_lossy(&status.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(is_mounted(&target));
    Mounted {
        target,
        bucket_root: emu.buckets.path().join("fuse-bucket").join("k8s"),
        _dir: dir,
    }
}

async fn setup(emu: &RunningEmulator) -> (String, String) {
    let cloud = emu.cloud();
    let fs = cloud
        .create_file_system(&NewFileSystem {
            bucket_arn: "arn:aws:s3:::fuse-bucket".into(),
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
            client_token: "fuse-ap".into(),
            posix_user: Some(PosixUser {
                uid: 1234,
                gid: 5678,
                secondary_gids: vec![],
            }),
            root_path: Some("/vol-a".into()),
            creation_permissions: Some(CreationPermissions {
                owner_uid: 1234,
                owner_gid: 5678,
                permissions: "0750".into(),
            }),
            tags: vec![],
        })
        .await
        .expect("ap");
    (fs.id, ap.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_through_the_mount_are_objects_in_the_bucket() {
    let emu = RunningEmulator::start(test_config()).await;
    let (fs, ap) = setup(&emu).await;
    let m = mount(&emu, &fs, &ap, "").await;
    let t = m.target.clone();
    let root = m.bucket_root.join("vol-a");
    tokio::task::spawn_blocking(move || {
        // The root is the access point's directory, owned by its POSIX user.
        let meta = std::fs::metadata(&t).expect("stat root");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (1234, 5678, 0o750)
        );

        std::fs::write(t.join("hello.txt"), b"hello, s3files").expect("create");
        assert_eq!(
            std::fs::read(root.join("hello.txt")).expect("object"),
            b"hello, s3files"
        );

        // Overwrite in place, append, truncate.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(t.join("hello.txt"))
            .expect("open rw");
        f.seek(SeekFrom::Start(0)).expect("seek");
        f.write_all(b"HELLO").expect("overwrite");
        drop(f);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(t.join("hello.txt"))
            .expect("open append");
        f.write_all(b"!").expect("append");
        drop(f);
        assert_eq!(
            std::fs::read(t.join("hello.txt")).expect("read"),
            b"HELLO, s3files!"
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(t.join("hello.txt"))
            .expect("open")
            .set_len(5)
            .expect("truncate");
        assert_eq!(
            std::fs::read(root.join("hello.txt")).expect("object"),
            b"HELLO"
        );

        // Directories, rename of files and directories, unlink, rmdir.
        std::fs::create_dir_all(t.join("a/b")).expect("mkdir -p");
        std::fs::write(t.join("a/b/c.txt"), b"c").expect("write");
        std::fs::rename(t.join("a"), t.join("z")).expect("rename dir");
        assert_eq!(std::fs::read(t.join("z/b/c.txt")).expect("moved"), b"c");
        assert!(root.join("z/b/c.txt").is_file() && !root.join("a/b/c.txt").exists());
        std::fs::rename(t.join("z/b/c.txt"), t.join("c2.txt")).expect("rename file");
        std::fs::remove_file(t.join("c2.txt")).expect("unlink");
        assert_eq!(
            std::fs::remove_dir(t.join("z"))
                .expect_err("not empty")
                .raw_os_error(),
            Some(39)
        );
        std::fs::remove_dir(t.join("z/b")).expect("rmdir");
        std::fs::remove_dir(t.join("z")).expect("rmdir");
        let names: Vec<String> = std::fs::read_dir(&t)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        assert_eq!(names, ["hello.txt"]);

        // Objects written to the bucket by others appear in the mount.
        std::fs::write(root.join("from-s3.txt"), b"written by someone else").expect("put");
        assert_eq!(
            std::fs::read(t.join("from-s3.txt")).expect("visible"),
            b"written by someone else"
        );
    })
    .await
    .expect("file operations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_files_and_large_directories_round_trip_and_survive_a_remount() {
    let emu = RunningEmulator::start(test_config()).await;
    let (fs, ap) = setup(&emu).await;
    let m = mount(&emu, &fs, &ap, "").await;
    let t = m.target.clone();
    // 40 MiB: above the multipart threshold, streamed through a staging file.
    let data: Vec<u8> = (0..40u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let expected = data.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::write(t.join("big.bin"), &data).expect("write big");
        for i in 0..1000 {
            std::fs::write(t.join(format!("f{i:04}")), i.to_string()).expect("small");
        }
    })
    .await
    .expect("writes");
    drop(m);
    let m = mount(&emu, &fs, &ap, ",ro").await;
    let t = m.target.clone();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(t.join("big.bin")).expect("open");
        let mut back = Vec::new();
        f.read_to_end(&mut back).expect("read big");
        assert!(back == expected, "40 MiB round trip");
        let count = std::fs::read_dir(&t).expect("ls").count();
        assert_eq!(count, 1001);
        assert_eq!(
            std::fs::read_to_string(t.join("f0999")).expect("small"),
            "999"
        );
        let err = std::fs::write(t.join("nope"), b"x").expect_err("read-only mount");
        assert_eq!(err.raw_os_error(), Some(30));
    })
    .await
    .expect("reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mounts_of_one_volume_see_each_others_writes_after_close() {
    let emu = RunningEmulator::start(test_config()).await;
    let (fs, ap) = setup(&emu).await;
    let a = mount(&emu, &fs, &ap, "").await;
    let b = mount(&emu, &fs, &ap, "").await;
    let (ta, tb) = (a.target.clone(), b.target.clone());
    tokio::task::spawn_blocking(move || {
        std::fs::write(ta.join("shared.txt"), b"from a").expect("write a");
        // Attributes are cached for a second; a reader opening the file after that sees it.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(
            std::fs::read(tb.join("shared.txt")).expect("read b"),
            b"from a"
        );
    })
    .await
    .expect("shared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_onto_an_existing_file_replaces_it() {
    let emu = RunningEmulator::start(test_config()).await;
    let (fs, ap) = setup(&emu).await;
    let m = mount(&emu, &fs, &ap, "").await;
    let t = m.target.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::write(t.join("old"), b"old").expect("write");
        std::fs::write(t.join("new"), b"new").expect("write");
        // Both names are known to the mount before the rename.
        assert_eq!(std::fs::read(t.join("old")).expect("read"), b"old");
        std::fs::rename(t.join("new"), t.join("old")).expect("rename over");
        assert_eq!(std::fs::read(t.join("old")).expect("read"), b"new");
        assert!(!t.join("new").exists());
    })
    .await
    .expect("rename");
}

async fn second_user(emu: &RunningEmulator, fs: &str, uid: u32) -> String {
    emu.cloud()
        .create_access_point(&NewAccessPoint {
            file_system_id: fs.to_owned(),
            client_token: format!("fuse-ap-{uid}"),
            posix_user: Some(PosixUser {
                uid,
                gid: uid,
                secondary_gids: vec![],
            }),
            root_path: Some("/vol-a".into()),
            creation_permissions: None,
            tags: vec![],
        })
        .await
        .expect("ap")
        .id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_modes_symlinks_and_times_are_kept_and_enforced_as_the_access_point_user() {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    let emu = RunningEmulator::start(test_config()).await;
    let (fs, ap) = setup(&emu).await;
    let other_ap = second_user(&emu, &fs, 999).await;
    let m = mount(&emu, &fs, &ap, "").await;
    let other = mount(&emu, &fs, &other_ap, "").await;
    let (t, o) = (m.target.clone(), other.target.clone());
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    let result = tokio::task::spawn_blocking(move || {
        let perm = |p: &Path| std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777;
        let owner = |p: &Path| {
            let m = std::fs::symlink_metadata(p).expect("stat");
            (m.uid(), m.gid())
        };
        // This test runs as root; every operation acts as the access point's user.
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(t.join("secret"))
            .expect("create")
            .write_all(b"s")
            .expect("write");
        assert_eq!(owner(&t.join("secret")), (1234, 5678));
        assert_eq!(perm(&t.join("secret")), 0o600);
        std::fs::set_permissions(t.join("secret"), std::fs::Permissions::from_mode(0o640))
            .expect("chmod by the owner");
        assert_eq!(perm(&t.join("secret")), 0o640);
        let err = std::os::unix::fs::chown(t.join("secret"), Some(42), None)
            .expect_err("only root gives files away");
        assert_eq!(err.raw_os_error(), Some(1), "EPERM");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(t.join("private"))
            .expect("mkdir");
        std::fs::write(t.join("private/inner"), b"i").expect("write inside");
        std::os::unix::fs::symlink("private/inner", t.join("link")).expect("symlink");
        assert_eq!(
            std::fs::read_link(t.join("link")).expect("readlink"),
            Path::new("private/inner")
        );
        assert_eq!(
            std::fs::read(t.join("link")).expect("through the link"),
            b"i"
        );
        std::fs::File::options()
            .write(true)
            .open(t.join("secret"))
            .expect("open")
            .set_modified(when)
            .expect("touch -d");

        // Another access point's user (999) is refused what the modes refuse: first nothing
        // (the root is 0750), then, once the owner opens the root to others, what the files'
        // own modes refuse.
        assert_eq!(
            std::fs::metadata(o.join("secret"))
                .expect_err("0750 root")
                .raw_os_error(),
            Some(13)
        );
        std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o755)).expect("chmod root");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(owner(&o.join("private")), (1234, 5678));
        let denied = |r: std::io::Result<()>| r.expect_err("denied").raw_os_error();
        assert_eq!(
            denied(std::fs::read_dir(o.join("private")).map(|_| ())),
            Some(13)
        );
        assert_eq!(
            denied(std::fs::read(o.join("secret")).map(|_| ())),
            Some(13)
        );
        assert_eq!(
            denied(std::fs::write(o.join("x"), b"x")),
            Some(13),
            "0755 root"
        );
        assert_eq!(
            denied(std::fs::set_permissions(
                o.join("secret"),
                std::fs::Permissions::from_mode(0o777)
            )),
            Some(1)
        );
    })
    .await;
    if result.is_err() {
        for mm in [&m, &other] {
            let log = mm.target.parent().expect("dir").join("mount.log");
            eprintln!("{}", std::fs::read_to_string(log).unwrap_or_default());
        }
    }
    result.expect("posix operations");
    drop(m);
    drop(other);
    // Everything survives a remount: it lives in the bucket.
    let m = mount(&emu, &fs, &ap, "").await;
    let t = m.target.clone();
    let root = m.bucket_root.join("vol-a");
    tokio::task::spawn_blocking(move || {
        let meta = std::fs::metadata(t.join("secret")).expect("stat");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (1234, 5678, 0o640)
        );
        assert_eq!(meta.modified().expect("mtime"), when);
        let dir = std::fs::metadata(t.join("private")).expect("stat dir");
        assert!(dir.is_dir());
        assert_eq!(dir.mode() & 0o7777, 0o700);
        let link = std::fs::symlink_metadata(t.join("link")).expect("lstat");
        assert!(link.file_type().is_symlink());
        assert_eq!(
            std::fs::read(t.join("link")).expect("through the link"),
            b"i"
        );
        // In the bucket a link is an object holding its target.
        assert_eq!(
            std::fs::read(root.join("link")).expect("object"),
            b"private/inner"
        );
    })
    .await
    .expect("after remount");
}
