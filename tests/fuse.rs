//! The local data plane as pods meet it: `s3files-csi mount` (the mount.s3files-compatible
//! helper) serving an access point of an emulated file system over real FUSE. Every scenario
//! runs twice: with buckets in a local directory (the embedded default) and in a real
//! S3-compatible server on loopback (`moto_server`).

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::BIN;
use common::emulator::{ROLE, RunningEmulator};
use common::mounts::{Backend, Mounted, emulator_over, mount};
use common::s3server::S3Server;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use s3files_csi::cloud::{CreationPermissions, NewAccessPoint, NewFileSystem, PosixUser, S3Files};
use s3files_csi::mount::mountinfo;

const BUCKET: &str = "fuse-bucket";

/// The bucket as other S3 clients see it, for blocking test code.
#[derive(Clone)]
struct Bucket {
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Handle,
}

impl Bucket {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let key = ObjectPath::from(key);
        self.runtime.block_on(async {
            match self.store.get(&key).await {
                Ok(got) => Some(got.bytes().await.expect("object body").to_vec()),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("get {key}: {e}"),
            }
        })
    }

    fn put(&self, key: &str, body: &[u8]) {
        let key = ObjectPath::from(key);
        self.runtime
            .block_on(self.store.put(&key, body.to_vec().into()))
            .expect("put");
    }
}

/// An emulator whose buckets live in a local directory or in moto, with one file system
/// (bucket `fuse-bucket`, prefix `k8s/`) and one access point (uid 1234, root `/vol-a`).
struct World {
    emu: RunningEmulator,
    s3: Option<S3Server>,
    bucket: Bucket,
    fs: String,
    ap: String,
}

impl World {
    async fn start(backend: Backend) -> World {
        let (emu, s3, store) = emulator_over(backend, BUCKET).await;
        let (fs, ap) = setup(&emu).await;
        World {
            emu,
            s3,
            bucket: Bucket {
                store,
                runtime: tokio::runtime::Handle::current(),
            },
            fs,
            ap,
        }
    }

    async fn mount(&self, extra: &str) -> Mounted {
        self.mount_ap(&self.ap.clone(), extra).await
    }

    async fn mount_ap(&self, ap: &str, extra: &str) -> Mounted {
        mount(&self.emu, &self.fs, ap, extra).await
    }
}

/// Closes `f` and returns what close(2) said: `drop` would swallow a failed upload.
fn close(f: std::fs::File) -> nix::Result<()> {
    use std::os::fd::IntoRawFd;
    nix::unistd::close(f.into_raw_fd())
}

/// Why `got` is not `want`, for assertions on large bodies.
fn mismatch(got: Option<&[u8]>, want: &[u8]) -> Option<String> {
    let Some(got) = got else {
        return Some("the object is missing".into());
    };
    if got == want {
        return None;
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b);
    Some(format!(
        "{} bytes, want {}; first difference at {:?}",
        got.len(),
        want.len(),
        at
    ))
}

async fn setup(emu: &RunningEmulator) -> (String, String) {
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

async fn files_written_through_the_mount_are_objects_in_the_bucket(backend: Backend) {
    let w = World::start(backend).await;
    let m = w.mount("").await;
    let t = m.target.clone();
    let bucket = w.bucket.clone();
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
            bucket.get("k8s/vol-a/hello.txt").as_deref(),
            Some(&b"hello, s3files"[..])
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
            bucket.get("k8s/vol-a/hello.txt").as_deref(),
            Some(&b"HELLO"[..])
        );

        // Directories, rename of files and directories, unlink, rmdir.
        std::fs::create_dir_all(t.join("a/b")).expect("mkdir -p");
        std::fs::write(t.join("a/b/c.txt"), b"c").expect("write");
        std::fs::rename(t.join("a"), t.join("z")).expect("rename dir");
        assert_eq!(std::fs::read(t.join("z/b/c.txt")).expect("moved"), b"c");
        assert!(bucket.get("k8s/vol-a/z/b/c.txt").is_some());
        assert!(bucket.get("k8s/vol-a/a/b/c.txt").is_none());
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

        // Objects written to the bucket by others appear in the mount once the directory's
        // cached listing (5 s, as S3 Files shows S3 changes "within seconds") is renewed.
        bucket.put("k8s/vol-a/from-s3.txt", b"written by someone else");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let seen = loop {
            match std::fs::read(t.join("from-s3.txt")) {
                Ok(bytes) => break bytes,
                Err(e) if std::time::Instant::now() < deadline => {
                    assert_eq!(e.raw_os_error(), Some(2), "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(e) => panic!("never visible: {e}"),
            }
        };
        assert_eq!(seen, b"written by someone else");
    })
    .await
    .expect("file operations");
}

async fn large_files_and_large_directories_round_trip_and_survive_a_remount(backend: Backend) {
    let w = World::start(backend).await;
    let m = w.mount("").await;
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
    let m = w.mount(",ro").await;
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

async fn two_mounts_of_one_volume_see_each_others_writes_after_close(backend: Backend) {
    let w = World::start(backend).await;
    let a = w.mount("").await;
    let b = w.mount("").await;
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

async fn two_mounts_appending_to_one_file_lose_no_line(backend: Backend) {
    use std::os::unix::fs::OpenOptionsExt;
    let w = World::start(backend).await;
    let a = w.mount("").await;
    let b = w.mount("").await;
    let (ta, tb) = (a.target.clone(), b.target.clone());
    tokio::task::spawn_blocking(move || {
        std::fs::write(ta.join("log"), b"start\n").expect("create");
        // Past the attribute cache, so the second mount reads the file's current version.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let open = |dir: &Path| {
            std::fs::OpenOptions::new()
                .append(true)
                .custom_flags(0)
                .open(dir.join("log"))
                .expect("open for appending")
        };
        let (mut fa, mut fb) = (open(&ta), open(&tb));
        for i in 0..300 {
            writeln!(fa, "a {i}").expect("append a");
            writeln!(fb, "b {i}").expect("append b");
        }
        close(fa).expect("close a");
        close(fb).expect("close b");
    })
    .await
    .expect("appends");
    let lost_prefix = format!("k8s/.s3files-lost+found-{}", w.fs);
    use futures_util::StreamExt;
    let store = w.bucket.store.clone();
    let listed: Vec<ObjectPath> = store
        .list(Some(&ObjectPath::parse(&lost_prefix).expect("prefix")))
        .map(|o| o.expect("list").location)
        .collect()
        .await;
    assert_eq!(
        listed.len(),
        1,
        "one version in lost+found: {listed:?}\n{}",
        b.log()
    );
    let text = |key: ObjectPath| {
        let store = store.clone();
        async move {
            let got = store.get(&key).await.expect("object");
            String::from_utf8(got.bytes().await.expect("body").to_vec()).expect("utf8")
        }
    };
    let kept = text(ObjectPath::from("k8s/vol-a/log")).await;
    let lost = text(listed[0].clone()).await;
    for writer in ["a", "b"] {
        let lines = kept
            .lines()
            .chain(lost.lines())
            .filter(|l| l.starts_with(&format!("{writer} ")))
            .count();
        assert_eq!(
            lines, 300,
            "every line of writer {writer} is in the file or in lost+found"
        );
    }
    assert!(kept.starts_with("start\n") && lost.starts_with("start\n"));
    assert!(
        b.log().contains("lost+found") || a.log().contains("lost+found"),
        "the conflict is logged"
    );
}

async fn renaming_onto_an_existing_file_replaces_it(backend: Backend) {
    let w = World::start(backend).await;
    let m = w.mount("").await;
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

/// What one descriptor writes, another of the same mount reads, and overwriting a file
/// (`> file`: `open(O_TRUNC)` of a file with bytes) is no conflict with the mount's own truncation.
async fn descriptors_of_one_mount_see_each_others_writes_and_overwrites_stay(backend: Backend) {
    use std::os::unix::fs::FileExt;
    let w = World::start(backend).await;
    let m = w.mount("").await;
    let t = m.target.clone();
    tokio::task::spawn_blocking(move || {
        for size in [8 << 10, 4 << 20] {
            let path = t.join(format!("f{size}"));
            std::fs::write(&path, vec![b'a'; size]).expect("write");
            let reader = std::fs::File::open(&path).expect("open for reading");
            let mut head = [0u8; 4];
            reader.read_exact_at(&mut head, 0).expect("read");
            assert_eq!(&head, b"aaaa");
            let writer = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .expect("open for writing");
            writer.write_all_at(b"BBBB", 0).expect("write");
            writer.write_all_at(b"CCCC", 4096).expect("write");
            reader.read_exact_at(&mut head, 0).expect("read");
            assert_eq!(&head, b"BBBB", "{size}: a write not yet uploaded");
            // Again through the same descriptor, over what the reader now holds.
            writer.write_all_at(b"EEEE", 0).expect("write");
            reader.read_exact_at(&mut head, 0).expect("read");
            assert_eq!(&head, b"EEEE", "{size}: a second write over a page read");
            close(writer).expect("close the writer");
            reader.read_exact_at(&mut head, 4096).expect("read");
            assert_eq!(&head, b"CCCC", "{size}: after the writer's close");
            drop(reader);
            // Overwritten in place, twice (the second time over a version this mount wrote).
            for text in ["new", "newer"] {
                std::fs::write(&path, text).expect("overwrite");
                assert_eq!(std::fs::read(&path).expect("read back"), text.as_bytes());
            }
        }
    })
    .await
    .expect("descriptors");
    use futures_util::StreamExt;
    for size in [8 << 10, 4 << 20] {
        let got = w
            .bucket
            .store
            .get(&ObjectPath::from(format!("k8s/vol-a/f{size}")))
            .await
            .expect("object");
        assert_eq!(&got.bytes().await.expect("body")[..], b"newer");
    }
    let lost_prefix =
        ObjectPath::parse(format!("k8s/.s3files-lost+found-{}", w.fs)).expect("prefix");
    let lost: Vec<_> = w.bucket.store.list(Some(&lost_prefix)).collect().await;
    assert!(
        lost.is_empty(),
        "nothing in lost+found: {lost:?}\n{}",
        m.log()
    );
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

async fn ownership_modes_symlinks_and_times_are_kept_and_enforced_as_the_access_point_user(
    backend: Backend,
) {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    let w = World::start(backend).await;
    let other_ap = second_user(&w.emu, &w.fs, 999).await;
    let m = w.mount("").await;
    let other = w.mount_ap(&other_ap, "").await;
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
    let m = w.mount("").await;
    let t = m.target.clone();
    let bucket = w.bucket.clone();
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
            bucket.get("k8s/vol-a/link").as_deref(),
            Some(&b"private/inner"[..])
        );
    })
    .await
    .expect("after remount");
}

async fn a_large_file_rewritten_behind_its_uploaded_parts_is_still_right(backend: Backend) {
    let w = World::start(backend).await;
    let m = w.mount("").await;
    let t = m.target.clone();
    let bucket = w.bucket.clone();
    tokio::task::spawn_blocking(move || {
        // 40 MiB written front to back: parts go up while it is written. Then a write lands
        // at the start, behind what was sent: the file must still come out right.
        let mut expected: Vec<u8> = (0..40u32 << 20).map(|i| (i % 253) as u8).collect();
        let mut f = std::fs::File::create(t.join("rewrite.bin")).expect("create");
        for chunk in expected.chunks(1 << 20) {
            f.write_all(chunk).expect("write");
        }
        f.seek(SeekFrom::Start(10)).expect("seek back");
        f.write_all(b"REWRITTEN").expect("rewrite");
        expected[10..19].copy_from_slice(b"REWRITTEN");
        let closed = close(f);
        let got = bucket.get("k8s/vol-a/rewrite.bin");
        if let Some(why) = mismatch(got.as_deref(), &expected) {
            panic!("rewrite.bin: {why} (close: {closed:?})\n{}", m.log());
        }
        assert_eq!(closed, Ok(()), "close failed\n{}", m.log());
        // And a plain sequential one, uploaded while written.
        let data: Vec<u8> = (0..33u32 << 20).map(|i| (i % 251) as u8).collect();
        let mut f = std::fs::File::create(t.join("stream.bin")).expect("create");
        f.write_all(&data).expect("write");
        let closed = close(f);
        let got = bucket.get("k8s/vol-a/stream.bin");
        if let Some(why) = mismatch(got.as_deref(), &data) {
            panic!("stream.bin: {why} (close: {closed:?})\n{}", m.log());
        }
        assert_eq!(closed, Ok(()), "close failed\n{}", m.log());
        drop(m);
    })
    .await
    .expect("large writes");
}

/// The helper returns with the kernel's read-ahead already raised, so the first file opened
/// reads in 1 MiB requests (the kernel copies the setting into a file when it is opened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_is_raised_before_the_helper_returns() {
    let w = World::start(Backend::Local).await;
    let m = w.mount("").await;
    let table =
        mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo"));
    let device = mountinfo::mount_at(&table, &m.target)
        .expect("mounted")
        .major_minor
        .clone();
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    let kib = std::fs::read_to_string(&knob).expect("read_ahead_kb");
    assert_eq!(kib.trim(), "1024", "{knob}\n{}", m.log());
}

/// An upload that fails is not forgotten: the next fsync sends the file again. (moto only: the
/// server is stopped under the mount and started again, empty, on the same port.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upload_is_retried_by_the_next_fsync() {
    let mut w = World::start(Backend::Moto).await;
    let m = w.mount("").await;
    let port = w.s3.as_ref().expect("moto").addr.port();
    let file = std::fs::File::create(m.target.join("kept.txt")).expect("create");
    (&file).write_all(b"not lost").expect("write");
    // The server goes away: the upload cannot succeed.
    drop(w.s3.take());
    let failed = tokio::task::spawn_blocking({
        let file = file.try_clone().expect("dup");
        move || file.sync_all()
    })
    .await
    .expect("join");
    assert!(failed.is_err(), "fsync with the server down must fail");
    // Back (empty, as moto keeps nothing): the same handle's next fsync uploads it.
    let server = S3Server::start_on(port).await;
    server.create_bucket(BUCKET).await;
    let synced = tokio::task::spawn_blocking({
        let file = file.try_clone().expect("dup");
        move || file.sync_all()
    })
    .await
    .expect("join");
    assert!(synced.is_ok(), "{synced:?}\n{}", m.log());
    let bucket = w.bucket.clone();
    let got = tokio::task::spawn_blocking(move || bucket.get("k8s/vol-a/kept.txt"))
        .await
        .expect("join");
    assert_eq!(got.as_deref(), Some(&b"not lost"[..]));
    w.s3 = Some(server);
    drop(file);
}

async fn close_waits_for_an_upload_another_close_started(backend: Backend) {
    let w = World::start(backend).await;
    let m = w.mount("").await;
    let t = m.target.clone();
    let bucket = w.bucket.clone();
    tokio::task::spawn_blocking(move || {
        // Two descriptors of one file, as after a fork: closing either flushes. The first close
        // starts the upload; the second must not return before the bytes are in the bucket.
        let data: Vec<u8> = (0..24u32 << 20).map(|i| (i % 249) as u8).collect();
        let mut f = std::fs::File::create(t.join("twice.bin")).expect("create");
        f.write_all(&data).expect("write");
        let other = f.try_clone().expect("dup");
        let first = std::thread::spawn(move || close(other));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let closed = close(f);
        let got = bucket.get("k8s/vol-a/twice.bin");
        if let Some(why) = mismatch(got.as_deref(), &data) {
            panic!("twice.bin after the second close: {why} (close: {closed:?})");
        }
        assert_eq!(first.join().expect("join"), Ok(()));
        assert_eq!(closed, Ok(()));
        drop(m);
    })
    .await
    .expect("two closes");
}

/// Aborts the FUSE connection of the mount at `target`: every call waiting on a hung daemon
/// then fails with ENOTCONN instead of hanging the test.
fn abort_connection(target: &Path) {
    // Not stat(2): that would wait on the hung daemon too. The device is in the mount table.
    let table =
        mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo"));
    let Some(minor) = mountinfo::mount_at(&table, target).and_then(|m| {
        m.major_minor
            .split_once(':')
            .map(|(_, minor)| minor.to_owned())
    }) else {
        return;
    };
    let connections = Path::new("/sys/fs/fuse/connections");
    if !connections.join(&minor).exists() {
        let _ = Command::new("mount")
            .args(["-t", "fusectl", "none"])
            .arg(connections)
            .status();
    }
    let _ = std::fs::write(connections.join(&minor).join("abort"), "1");
}

/// Many threads open, write, chmod, unlink and close one file at once: every call answers
/// within the deadline (the daemon once deadlocked when a release's upload failed because the
/// file had been unlinked).
async fn concurrent_chmod_open_unlink_and_release_of_one_file_never_hang(backend: Backend) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let w = World::start(backend).await;
    let m = w.mount("").await;
    let path = m.target.join("busy.txt");
    let (done, finished) = std::sync::mpsc::channel();
    for t in 0..8u32 {
        let (path, done) = (path.clone(), done.clone());
        std::thread::spawn(move || {
            for i in 0..40u32 {
                let opened = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .mode(0o644)
                    .open(&path);
                let Ok(mut f) = opened else { continue };
                let _ = f.write_all(format!("thread {t} round {i}\n").as_bytes());
                let mode = if (t + i) % 2 == 0 { 0o600 } else { 0o2755 };
                let _ = f.set_permissions(std::fs::Permissions::from_mode(mode));
                if (t + i) % 3 == 0 {
                    let _ = std::fs::remove_file(&path);
                }
                let _ = close(f);
            }
            let _ = done.send(t);
        });
    }
    drop(done);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut left = 8;
    while left > 0 {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        match finished.recv_timeout(wait) {
            Ok(_) => left -= 1,
            Err(_) => {
                let log = m.log();
                abort_connection(&m.target);
                panic!("{left} of 8 threads still in a file system call after 60 s\n{log}");
            }
        }
    }
    // The mount still answers.
    std::fs::write(m.target.join("after.txt"), b"alive").expect("write after the storm");
    assert_eq!(
        std::fs::read(m.target.join("after.txt")).expect("read"),
        b"alive"
    );
}

/// Each scenario against a local bucket directory and against moto.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Backend::Local).await
                }
            )*
        }
        mod moto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario(super::Backend::Moto).await
                }
            )*
        }
    };
}

on_both_backends!(
    files_written_through_the_mount_are_objects_in_the_bucket,
    large_files_and_large_directories_round_trip_and_survive_a_remount,
    two_mounts_of_one_volume_see_each_others_writes_after_close,
    two_mounts_appending_to_one_file_lose_no_line,
    renaming_onto_an_existing_file_replaces_it,
    descriptors_of_one_mount_see_each_others_writes_and_overwrites_stay,
    close_waits_for_an_upload_another_close_started,
    ownership_modes_symlinks_and_times_are_kept_and_enforced_as_the_access_point_user,
    a_large_file_rewritten_behind_its_uploaded_parts_is_still_right,
    concurrent_chmod_open_unlink_and_release_of_one_file_never_hang
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_as_mount_s3files_it_takes_the_mount_8_calling_convention() {
    let w = World::start(Backend::Local).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let helper = dir.path().join("mount.s3files");
    std::os::unix::fs::symlink(BIN, &helper).expect("link");
    let target = dir.path().join("mnt");
    std::fs::create_dir_all(&target).expect("mkdir");
    let env = common::emulator_env(&w.emu.url);
    let out = Command::new(&helper)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("S3FILES_MOUNT_LOG", dir.path().join("log"))
        .arg(format!("{}:/", w.fs))
        .arg(&target)
        .args(["-n", "-o", &format!("accesspoint={},tls", w.ap)])
        .output()
        .expect("run mount.s3files");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mounted = Mounted {
        target: target.clone(),
        _dir: dir,
    };
    write_reaches_the_bucket(&w, &mounted, "via-mount-8").await;
}

/// Writes `name` through `mounted` (of `w`'s access point) and checks it is an object.
async fn write_reaches_the_bucket(w: &World, mounted: &Mounted, name: &str) {
    let (t, bucket, name) = (mounted.target.clone(), w.bucket.clone(), name.to_owned());
    tokio::task::spawn_blocking(move || {
        std::fs::write(t.join(&name), b"ok").expect("write");
        assert_eq!(
            bucket.get(&format!("k8s/vol-a/{name}")).as_deref(),
            Some(&b"ok"[..])
        );
    })
    .await
    .expect("write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_mount_point_is_mounted_where_it_points() {
    let w = World::start(Backend::Local).await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("mnt")).expect("mkdir");
    let env = common::emulator_env(&w.emu.url);
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args([
            "mount",
            &w.fs,
            "mnt",
            "-o",
            &format!("accesspoint={}", w.ap),
        ])
        .arg("--log-file")
        .arg(dir.path().join("mount.log"))
        .output()
        .expect("run the helper");
    // Dropped first on failure too: the mount is detached before the directory goes.
    let mounted = Mounted {
        target: dir.path().join("mnt"),
        _dir: dir,
    };
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        mounted.log()
    );
    write_reaches_the_bucket(&w, &mounted, "relative").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_whether_a_file_is_a_terminal_is_answered_quietly() {
    let w = World::start(Backend::Local).await;
    let m = w.mount("").await;
    let t = m.target.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::write(t.join("plain"), b"x").expect("create");
        // What every Python open() and many shells ask of each file they open.
        for _ in 0..3 {
            let f = std::fs::File::open(t.join("plain")).expect("open");
            assert!(!nix::unistd::isatty(&f).expect("isatty"), "not a terminal");
        }
    })
    .await
    .expect("isatty");
    let log = m.log();
    assert!(!log.contains("ioctl"), "the mount logged ioctls:\n{log}");
}
