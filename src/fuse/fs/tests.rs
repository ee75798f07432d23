//! The core's operations on the in-memory test store, without FUSE or root.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use super::*;
use crate::fuse::access::{Groups, Time};
use crate::fuse::dircache::{DIR_CACHE_MAX, Listed};
use crate::fuse::handles::DirEntry;
use crate::fuse::test_store::{Counted, PAGE_KEYS};

const ROOT_CALLER: Caller = Caller {
    uid: 0,
    gid: 0,
    pid: 0,
};
const ALICE: Caller = Caller {
    uid: 1000,
    gid: 1000,
    pid: 0,
};
const BOB: Caller = Caller {
    uid: 2000,
    gid: 2000,
    pid: 0,
};

/// A file system over `store` (bucket root), callers acting as themselves.
async fn fs_over(store: Arc<Counted>) -> (Arc<ObjectFs>, tempfile::TempDir) {
    fs_with(store, None).await
}

async fn fs_with(store: Arc<Counted>, user: Option<User>) -> (Arc<ObjectFs>, tempfile::TempDir) {
    fs_of(Objects::new(store, None, None).expect("objects"), user, 0).await
}

/// As [`fs_over`], with read-ahead memory for one stream.
async fn fs_reading_ahead(store: Arc<Counted>) -> (Arc<ObjectFs>, tempfile::TempDir) {
    let objects = Objects::new(store, None, None).expect("objects");
    fs_of(objects, None, crate::fuse::prefetch::STREAM_SHARE).await
}

/// As [`fs_over`], listing `store` in pages of [`PAGE_KEYS`] keys as S3 does.
async fn fs_paged(store: Arc<Counted>) -> (Arc<ObjectFs>, tempfile::TempDir) {
    let objects = Objects::new(store.clone(), None, Some(store)).expect("objects");
    fs_of(objects, None, 0).await
}

async fn fs_of(
    objects: Objects,
    user: Option<User>,
    read_ahead: u64,
) -> (Arc<ObjectFs>, tempfile::TempDir) {
    let staging = tempfile::tempdir().expect("staging");
    let identity = Identity {
        user,
        default_uid: 0,
        default_gid: 0,
    };
    let lost_found = ObjectPath::from(".s3files-lost+found-fs-test");
    let fs = ObjectFs::new(
        objects,
        "",
        identity,
        staging.path(),
        read_ahead,
        lost_found,
    )
    .await;
    (Arc::new(fs), staging)
}

async fn put(store: &Counted, key: &str, len: usize) {
    store
        .put(&ObjectPath::from(key), vec![b'x'; len].into())
        .await
        .expect("put");
}

async fn body(store: &Counted, key: &str) -> Option<Vec<u8>> {
    let got = store
        .get(&ObjectPath::parse(key).expect("key"))
        .await
        .ok()?;
    Some(got.bytes().await.expect("body").to_vec())
}

fn n(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Writes `data` to a new file `name` in the root and closes it.
async fn write_file(fs: &Arc<ObjectFs>, c: &Caller, name: &str, data: &[u8]) -> Stat {
    let (stat, fh) = fs.create(c, ROOT, n(name), 0o644).await.expect("create");
    fs.write(stat.ino, fh, 0, data, false).await.expect("write");
    fs.release(fh).await.expect("release");
    stat
}

#[tokio::test]
async fn the_first_lookup_in_a_directory_asks_for_its_name_and_the_next_ones_list_it() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    put(&store, "d/a", 10).await;
    put(&store, "d/b", 20).await;
    put(&store, "d/sub/c", 1).await;
    assert_eq!(
        fs.listed("d", "a").await,
        Listed::Unknown,
        "first lookup: no listing"
    );
    assert_eq!(store.listings.load(Ordering::SeqCst), 0);
    assert_eq!(
        fs.listed("d", "b").await,
        Listed::File(20),
        "second lookup: listed"
    );
    assert_eq!(fs.listed("d", "sub").await, Listed::Dir);
    assert_eq!(fs.listed("d", "nope").await, Listed::Absent);
    assert_eq!(
        store.listings.load(Ordering::SeqCst),
        1,
        "one listing answers all"
    );
    assert_eq!(
        store.checks.load(Ordering::SeqCst),
        0,
        "lookups check no sub-prefix"
    );
    assert_eq!(
        fs.listed("d/sub", "c").await,
        Listed::Unknown,
        "another directory starts over"
    );
}

#[tokio::test]
async fn a_directory_too_large_to_keep_answers_lookups_by_name() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    for i in 0..=DIR_CACHE_MAX {
        put(&store, &format!("big/f{i:05}"), 1).await;
    }
    assert_eq!(fs.listed("big", "f00000").await, Listed::Unknown);
    assert_eq!(
        fs.listed("big", "f00001").await,
        Listed::Unknown,
        "too large to keep"
    );
    assert_eq!(fs.listed("big", "f00002").await, Listed::Unknown);
    assert_eq!(
        store.listings.load(Ordering::SeqCst),
        1,
        "not listed again while fresh"
    );
    assert_eq!(
        fs.list_dir("big").await.expect("readdir").len(),
        DIR_CACHE_MAX + 1
    );
}

#[tokio::test]
async fn emptiness_is_decided_by_the_first_live_entry() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    for i in 0..40 {
        put(&store, &format!("full/d{i:02}/x"), 1).await;
    }
    put(&store, &format!("empty/{DIR_MARKER}"), 0).await;
    assert!(!fs.is_empty_dir("full").await.expect("full"));
    let checks = store.checks.load(Ordering::SeqCst);
    assert!(
        checks <= VERIFY_PARALLEL,
        "{checks} sub-directories checked to find one entry"
    );
    assert!(
        fs.is_empty_dir("empty").await.expect("empty"),
        "the marker is no entry"
    );
    assert_eq!(fs.list_dir("full").await.expect("readdir").len(), 40);
}

#[tokio::test]
async fn listed_entries_cost_one_request_each_whatever_their_kind() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    let fs = Arc::new(fs);
    for i in 0..10 {
        put(&store, &format!("d/small{i}"), 10).await;
        put(&store, &format!("d/large{i}"), 200 << 10).await;
        put(&store, &format!("d/sub{i}/x"), 1).await;
    }
    let d = fs.lookup(&ROOT_CALLER, ROOT, n("d")).await.expect("d").ino;
    let fh = fs.opendir(&ROOT_CALLER, d).await.expect("opendir");
    let names = fs.readdir(d, fh, 0).await.expect("readdir");
    assert_eq!(names.len(), 32, ". and .. and 30 entries");
    let before = (
        store.heads.load(Ordering::SeqCst),
        store.whole_gets.load(Ordering::SeqCst),
        store.checks.load(Ordering::SeqCst),
        store.listings.load(Ordering::SeqCst),
    );
    for (_, _, name) in names.iter().skip(2) {
        fs.lookup(&ROOT_CALLER, d, n(name)).await.expect("lookup");
    }
    let heads = store.heads.load(Ordering::SeqCst) - before.0;
    let gets = store.whole_gets.load(Ordering::SeqCst) - before.1;
    let checks = store.checks.load(Ordering::SeqCst) - before.2;
    let listings = store.listings.load(Ordering::SeqCst) - before.3;
    assert_eq!(
        (heads + gets + checks + listings, gets, listings),
        (30, 10, 0),
        "one request per entry (heads {heads}, gets {gets}, checks {checks})"
    );
}

#[tokio::test]
async fn names_are_object_keys_byte_for_byte() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    let fs = Arc::new(fs);
    let names = [
        "caf\u{e9}",
        "cafe\u{301}",
        "\u{fc}ber",
        "\u{6587}\u{4ef6}",
        "\u{1f600}",
        "%",
        "100%25",
        "a?b",
        "#x",
        "*",
        "<>",
        "[]",
        "{}",
        "|",
        "\\",
        "^",
        "~",
        "sp ace",
    ];
    for name in names {
        write_file(&fs, &ROOT_CALLER, name, name.as_bytes()).await;
        assert_eq!(
            body(&store, name).await.as_deref(),
            Some(name.as_bytes()),
            "key of {name:?}"
        );
    }
    // As another client would write them.
    store
        .put(
            &ObjectPath::parse("d/\u{e9}t\u{e9} 100%").expect("key"),
            "x".into(),
        )
        .await
        .expect("put");
    let fh = fs.opendir(&ROOT_CALLER, ROOT).await.expect("opendir");
    let listed: Vec<String> = fs
        .readdir(ROOT, fh, 0)
        .await
        .expect("readdir")
        .iter()
        .map(|e| e.2.clone())
        .collect();
    for name in names {
        assert!(
            listed.iter().any(|l| l == name),
            "{name:?} listed as itself: {listed:?}"
        );
    }
    let d = fs.lookup(&ROOT_CALLER, ROOT, n("d")).await.expect("d").ino;
    fs.lookup(&ROOT_CALLER, d, n("\u{e9}t\u{e9} 100%"))
        .await
        .expect("another client's name");
}

#[tokio::test]
async fn names_past_the_limits_answer_enametoolong_and_the_longest_legal_ones_work() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    let longest = "n".repeat(255);
    write_file(&fs, &ROOT_CALLER, &longest, b"x").await;
    fs.lookup(&ROOT_CALLER, ROOT, n(&longest))
        .await
        .expect("255 bytes");
    let too_long = "n".repeat(256);
    let errno = |r: Result<Stat, FsError>| r.err().map(|e| e.errno());
    assert_eq!(
        errno(fs.lookup(&ROOT_CALLER, ROOT, n(&too_long)).await),
        Some(fuser::Errno::ENAMETOOLONG)
    );
    assert_eq!(
        errno(fs.mkdir(&ROOT_CALLER, ROOT, n(&too_long), 0o755).await),
        Some(fuser::Errno::ENAMETOOLONG)
    );
    // Nest directories until the key limit: the deepest legal path works, one more is refused.
    let mut parent = ROOT;
    let mut depth = 0;
    loop {
        match fs
            .mkdir(&ROOT_CALLER, parent, n(&"d".repeat(200)), 0o755)
            .await
        {
            Ok(stat) => {
                parent = stat.ino;
                depth += 1;
            }
            Err(e) => {
                assert_eq!(e.errno(), fuser::Errno::ENAMETOOLONG);
                break;
            }
        }
    }
    // Five 200-byte components and their marker take 1,017 bytes; a sixth passes 1,024.
    assert_eq!(depth, 5);
    assert_eq!(
        errno(
            fs.lookup(&ROOT_CALLER, parent, n("x".repeat(255).as_str()))
                .await
        ),
        Some(fuser::Errno::ENAMETOOLONG)
    );
    write_file(&fs, &ROOT_CALLER, "ok", b"").await;
    assert_eq!(
        errno(fs.lookup(&ROOT_CALLER, ROOT, n("tab\there")).await),
        Some(fuser::Errno::EINVAL),
        "control characters"
    );
}

#[tokio::test]
async fn rename_honours_noreplace_and_refuses_exchange() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    write_file(&fs, &ROOT_CALLER, "a", b"A").await;
    write_file(&fs, &ROOT_CALLER, "b", b"B").await;
    let c = &ROOT_CALLER;
    let noreplace = fs
        .rename(c, ROOT, n("a"), ROOT, n("b"), RenameMode::NoReplace)
        .await;
    assert_eq!(
        noreplace.err().map(|e| e.errno()),
        Some(fuser::Errno::EEXIST)
    );
    let exchange = fs
        .rename(c, ROOT, n("a"), ROOT, n("b"), RenameMode::Exchange)
        .await;
    assert_eq!(
        exchange.err().map(|e| e.errno()),
        Some(fuser::Errno::EINVAL)
    );
    assert_eq!(
        body(&store, "b").await.as_deref(),
        Some(&b"B"[..]),
        "nothing changed"
    );
    fs.rename(c, ROOT, n("a"), ROOT, n("new"), RenameMode::NoReplace)
        .await
        .expect("free name");
    fs.rename(c, ROOT, n("new"), ROOT, n("b"), RenameMode::Replace)
        .await
        .expect("replace");
    assert_eq!(body(&store, "b").await.as_deref(), Some(&b"A"[..]));
    assert_eq!(body(&store, "a").await, None);
}

#[tokio::test]
async fn renaming_directories_follows_posix() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    let c = &ROOT_CALLER;
    let d = fs.mkdir(c, ROOT, n("d"), 0o755).await.expect("d").ino;
    let (f, fh) = fs.create(c, d, n("f"), 0o644).await.expect("f");
    fs.write(f.ino, fh, 0, b"data", false).await.expect("write");
    fs.release(fh).await.expect("close");
    let empty = fs
        .mkdir(c, ROOT, n("empty"), 0o700)
        .await
        .expect("empty")
        .ino;
    let full = fs.mkdir(c, ROOT, n("full"), 0o755).await.expect("full").ino;
    fs.mkdir(c, full, n("x"), 0o755).await.expect("x");
    write_file(&fs, c, "file", b"").await;
    let errno = |r: Result<(), FsError>| r.err().map(|e| e.errno());
    assert_eq!(
        errno(
            fs.rename(c, ROOT, n("d"), d, n("in"), RenameMode::Replace)
                .await
        ),
        Some(fuser::Errno::EINVAL),
        "into itself"
    );
    assert_eq!(
        errno(
            fs.rename(c, ROOT, n("d"), ROOT, n("full"), RenameMode::Replace)
                .await
        ),
        Some(fuser::Errno::ENOTEMPTY)
    );
    assert_eq!(
        errno(
            fs.rename(c, ROOT, n("d"), ROOT, n("file"), RenameMode::Replace)
                .await
        ),
        Some(fuser::Errno::ENOTDIR)
    );
    assert_eq!(
        errno(
            fs.rename(c, ROOT, n("file"), ROOT, n("d"), RenameMode::Replace)
                .await
        ),
        Some(fuser::Errno::EISDIR)
    );
    fs.rename(c, ROOT, n("d"), ROOT, n("d"), RenameMode::Replace)
        .await
        .expect("onto itself: nothing to do");
    fs.rename(c, ROOT, n("d"), ROOT, n("empty"), RenameMode::Replace)
        .await
        .expect("onto an empty directory");
    assert_eq!(body(&store, "empty/f").await.as_deref(), Some(&b"data"[..]));
    let moved = fs.lookup(c, ROOT, n("empty")).await.expect("moved");
    assert_eq!(moved.ino, d, "the moved directory keeps its inode");
    assert_eq!(
        moved.node.posix.perm(),
        0o755,
        "and its own attributes, not the target's"
    );
    assert!(
        fs.inodes.get(empty).is_none(),
        "the replaced directory is gone"
    );
    assert_eq!(fs.lookup(c, moved.ino, n("f")).await.expect("f").ino, f.ino);
}

#[tokio::test]
async fn sticky_directories_and_permissions_guard_removal() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    let alice = ALICE;
    let bob = BOB;
    let tmp = fs
        .mkdir(&ROOT_CALLER, ROOT, n("tmp"), 0o1777)
        .await
        .expect("tmp")
        .ino;
    let (f, fh) = fs
        .create(&alice, tmp, n("alices"), 0o644)
        .await
        .expect("create");
    fs.release(fh).await.expect("close");
    let errno = |r: Result<(), FsError>| r.err().map(|e| e.errno());
    assert_eq!(
        errno(fs.unlink(&bob, tmp, n("alices")).await),
        Some(fuser::Errno::EPERM)
    );
    assert_eq!(
        errno(
            fs.rename(&bob, tmp, n("alices"), tmp, n("bobs"), RenameMode::Replace)
                .await
        ),
        Some(fuser::Errno::EPERM)
    );
    let closed = fs
        .mkdir(&ROOT_CALLER, ROOT, n("closed"), 0o755)
        .await
        .expect("closed")
        .ino;
    assert_eq!(
        errno(fs.unlink(&alice, closed, n("x")).await),
        Some(fuser::Errno::EACCES)
    );
    fs.unlink(&alice, tmp, n("alices"))
        .await
        .expect("the owner may");
    assert!(fs.inodes.get(f.ino).is_none());
}

/// A direct write reaches the daemon with the kernel's request to drop set-user/group-ID when
/// the writer lacks privilege; the bits go, are stored with the data, and a privileged write
/// keeps them.
#[tokio::test]
async fn a_write_without_privilege_drops_set_ids_and_stores_the_mode() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    let bob = BOB;
    let (f, fh) = fs
        .create(&ROOT_CALLER, ROOT, n("tool"), 0o777)
        .await
        .expect("create");
    fs.release(fh).await.expect("close");
    let chmod = SetAttr {
        mode: Some(0o6777),
        ..SetAttr::default()
    };
    fs.setattr(&ROOT_CALLER, f.ino, chmod).await.expect("chmod");
    let fh = fs
        .open(&ROOT_CALLER, f.ino, nix::libc::O_WRONLY)
        .await
        .expect("root opens");
    fs.write(f.ino, fh, 0, b"root", false).await.expect("write");
    fs.release(fh).await.expect("close");
    assert_eq!(
        fs.getattr(f.ino).await.expect("stat").node.posix.perm(),
        0o6777
    );
    let fh = fs
        .open(&bob, f.ino, nix::libc::O_WRONLY)
        .await
        .expect("bob opens");
    fs.write(f.ino, fh, 0, b"bob!", true).await.expect("write");
    assert_eq!(
        fs.getattr(f.ino).await.expect("stat").node.posix.perm(),
        0o777
    );
    fs.release(fh).await.expect("close");
    let (fresh, _staging) = fs_over(store.clone()).await;
    let st = fresh
        .lookup(&ROOT_CALLER, ROOT, n("tool"))
        .await
        .expect("tool");
    assert_eq!(st.node.posix.perm(), 0o777, "the stored mode");
    assert_eq!(body(&store, "tool").await.as_deref(), Some(&b"bob!"[..]));
}

/// A write is staged on the caller's thread when its file's writer is free (the kernel's
/// buffer is not copied); a busy writer, or set-ID bits to clear first, leave it to `write`.
#[tokio::test]
async fn a_write_is_staged_at_once_when_nothing_has_to_wait() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    let (f, fh) = fs
        .create(&ROOT_CALLER, ROOT, n("f"), 0o6777)
        .await
        .expect("create");
    let rest = {
        let request = b"hello".to_vec();
        fs.write_now(f.ino, fh, 0, &request, false)
            .expect("staged at once")
    };
    assert_eq!(rest.await.expect("write"), 5);
    let busy = fs.writer_of(fh).expect("writer").lock_owned().await;
    assert!(fs.write_now(f.ino, fh, 5, b"!", false).is_none());
    drop(busy);
    assert!(
        fs.write_now(f.ino, fh, 5, b"!", true).is_none(),
        "set-ID bits to clear"
    );
    fs.write(f.ino, fh, 5, b"!", true).await.expect("write");
    assert_eq!(
        fs.getattr(f.ino).await.expect("stat").node.posix.perm(),
        0o777
    );
    let rest = fs
        .write_now(f.ino, fh, 6, b"?", true)
        .expect("nothing to clear");
    assert_eq!(rest.await.expect("write"), 1);
    assert!(
        fs.write_now(f.ino, 9999, 0, b"x", false).is_none(),
        "no such handle"
    );
    fs.release(fh).await.expect("close");
    assert_eq!(body(&store, "f").await.as_deref(), Some(&b"hello!?"[..]));
}

#[tokio::test]
async fn chmod_chown_and_times_follow_the_rules_and_are_stored() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    let alice = ALICE;
    let bob = BOB;
    let open = fs
        .mkdir(&ROOT_CALLER, ROOT, n("open"), 0o777)
        .await
        .expect("dir")
        .ino;
    let (f, fh) = fs
        .create(&alice, open, n("f"), 0o666)
        .await
        .expect("create");
    fs.release(fh).await.expect("close");
    let mode = |m| SetAttr {
        mode: Some(m),
        ..SetAttr::default()
    };
    let errno = |r: Result<Stat, FsError>| r.err().map(|e| e.errno());
    assert_eq!(
        errno(fs.setattr(&bob, f.ino, mode(0o600)).await),
        Some(fuser::Errno::EPERM)
    );
    let st = fs
        .setattr(&alice, f.ino, mode(0o2755))
        .await
        .expect("owner chmod");
    assert_eq!(st.node.posix.perm(), 0o2755);
    let chown = SetAttr {
        gid: Some(50),
        ..SetAttr::default()
    };
    assert_eq!(
        errno(fs.setattr(&alice, f.ino, chown).await),
        Some(fuser::Errno::EPERM)
    );
    let st = fs
        .setattr(&ROOT_CALLER, f.ino, chown)
        .await
        .expect("root chown");
    assert_eq!(
        (st.node.posix.gid, st.node.posix.perm()),
        (50, 0o755),
        "chown drops set-group-ID"
    );
    let then = std::time::UNIX_EPOCH + std::time::Duration::new(1_000_000, 123);
    let at = SetAttr {
        mtime: Some(Time::At(then)),
        atime: Some(Time::At(then)),
        ..SetAttr::default()
    };
    assert_eq!(
        errno(fs.setattr(&bob, f.ino, at).await),
        Some(fuser::Errno::EPERM)
    );
    fs.setattr(&alice, f.ino, at)
        .await
        .expect("owner sets times");
    // Read back from the store, not from what this mount remembers.
    let (fresh, _staging) = fs_over(store.clone()).await;
    let open = fresh
        .lookup(&ROOT_CALLER, ROOT, n("open"))
        .await
        .expect("open")
        .ino;
    let st = fresh.lookup(&ROOT_CALLER, open, n("f")).await.expect("f");
    assert_eq!(
        (st.node.posix.mtime, st.node.posix.atime),
        (Some(then), Some(then))
    );
    assert_eq!(
        (st.node.posix.uid, st.node.posix.gid, st.node.posix.perm()),
        (1000, 50, 0o755)
    );
}

#[tokio::test]
async fn a_file_is_written_streamed_read_back_and_truncated() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    let c = &ROOT_CALLER;
    let stat = write_file(&fs, c, "f", b"hello world").await;
    let fh = fs.open(c, stat.ino, 0).await.expect("open");
    assert_eq!(
        &fs.read(stat.ino, fh, 6, 100).await.expect("read")[..],
        b"world"
    );
    fs.release(fh).await.expect("close");
    let fh = fs.open(c, stat.ino, 1).await.expect("open for writing");
    fs.write(stat.ino, fh, 5, b"!", false).await.expect("write");
    assert_eq!(
        &fs.read(stat.ino, fh, 0, 100).await.expect("own writes")[..],
        b"hello!world"
    );
    let shrink = SetAttr {
        size: Some(6),
        fh: Some(fh),
        ..SetAttr::default()
    };
    fs.setattr(c, stat.ino, shrink).await.expect("ftruncate");
    fs.release(fh).await.expect("close");
    assert_eq!(body(&store, "f").await.as_deref(), Some(&b"hello!"[..]));
    let cut = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    assert_eq!(
        fs.setattr(c, stat.ino, cut)
            .await
            .expect("truncate")
            .node
            .size,
        0
    );
    assert_eq!(body(&store, "f").await.as_deref(), Some(&b""[..]));
}

#[tokio::test]
async fn a_reader_sees_what_another_descriptor_of_this_mount_writes() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_reading_ahead(store.clone()).await;
    let c = &ROOT_CALLER;
    // A small file (its body kept by the lookup) and one read through read-ahead.
    let small = write_file(&fs, c, "small", &[b'a'; 8192]).await;
    let big = write_file(&fs, c, "big", &vec![b'a'; 4 << 20]).await;
    // The second lookup in a directory lists it; a listed small file's lookup keeps its body.
    fs.lookup(c, ROOT, n("big")).await.expect("lookup");
    for (name, ino) in [("small", small.ino), ("big", big.ino)] {
        fs.lookup(c, ROOT, n(name)).await.expect("lookup");
        let reader = fs.open(c, ino, 0).await.expect("open for reading");
        // Read-ahead streams what follows a first read from the start.
        assert_eq!(
            &fs.read(ino, reader, 0, 4096).await.expect("read")[..4],
            b"aaaa"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        let writer = fs.open(c, ino, 1).await.expect("open for writing");
        fs.write(ino, writer, 0, b"BBBB", false)
            .await
            .expect("write");
        fs.write(ino, writer, 4096, b"CCCC", false)
            .await
            .expect("write");
        assert_eq!(
            &fs.read(ino, reader, 0, 4).await.expect("read")[..],
            b"BBBB",
            "{name}: a write not yet uploaded"
        );
        fs.release(writer).await.expect("close the writer");
        assert_eq!(
            &fs.read(ino, reader, 4096, 4).await.expect("read")[..],
            b"CCCC",
            "{name}: after the writer's upload"
        );
        assert_eq!(
            &fs.read(ino, reader, 0, 4).await.expect("read")[..],
            b"BBBB"
        );
        fs.release(reader).await.expect("close the reader");
    }
    // A body a lookup kept is of the version it read: an overwrite here (`open(O_TRUNC)`)
    // leaves it unused.
    let kept = write_file(&fs, c, "kept", b"old").await;
    fs.lookup(c, ROOT, n("kept")).await.expect("lookup");
    let writer = fs.open(c, kept.ino, 1 | 0o1000).await.expect("overwrite");
    fs.write(kept.ino, writer, 0, b"new!", false)
        .await
        .expect("write");
    fs.release(writer).await.expect("close");
    let reader = fs.open(c, kept.ino, 0).await.expect("open for reading");
    assert_eq!(
        &fs.read(kept.ino, reader, 0, 10).await.expect("read")[..],
        b"new!"
    );
}

#[tokio::test]
async fn a_file_unlinked_while_open_is_not_uploaded() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    let c = &ROOT_CALLER;
    let (stat, fh) = fs.create(c, ROOT, n("gone"), 0o644).await.expect("create");
    fs.write(stat.ino, fh, 0, b"x", false).await.expect("write");
    fs.unlink(c, ROOT, n("gone"))
        .await
        .expect("unlink before any upload");
    fs.release(fh).await.expect("close");
    assert_eq!(body(&store, "gone").await, None);
    assert_eq!(fs.held().1, 0, "no handle left");
}

#[tokio::test]
async fn objects_that_cannot_exist_answer_promptly() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    let errno = |r: Result<Stat, FsError>| r.err().map(|e| e.errno());
    assert_eq!(errno(fs.link()), Some(fuser::Errno::EPERM));
    assert_eq!(
        errno(fs.mknod(&ROOT_CALLER, ROOT, n("fifo"), 0o010644).await),
        Some(fuser::Errno::EPERM)
    );
    assert_eq!(
        errno(fs.mknod(&ROOT_CALLER, ROOT, n("dev"), 0o020644).await),
        Some(fuser::Errno::EPERM)
    );
    fs.mknod(&ROOT_CALLER, ROOT, n("plain"), 0o100600)
        .await
        .expect("a regular file");
    assert_eq!(body(&store, "plain").await.as_deref(), Some(&b""[..]));
}

#[tokio::test]
async fn an_access_point_user_acts_for_every_caller() {
    let store = Arc::new(Counted::default());
    let user = User {
        uid: 1001,
        gid: 1002,
        groups: Groups::Listed(vec![]),
    };
    let (fs, _staging) = fs_with(store.clone(), Some(user)).await;
    let stranger = Caller {
        uid: 4242,
        gid: 4242,
        pid: 0,
    };
    // The bucket root is owned by the access point's defaults (uid 0 here): not writable.
    let errno = fs
        .mkdir(&stranger, ROOT, n("d"), 0o755)
        .await
        .err()
        .map(|e| e.errno());
    assert_eq!(errno, Some(fuser::Errno::EACCES));
    let root_attrs = SetAttr {
        mode: Some(0o777),
        ..SetAttr::default()
    };
    fs.setattr(&ROOT_CALLER, ROOT, root_attrs)
        .await
        .expect_err("root acts as the user too");
}

#[tokio::test]
async fn this_mounts_own_changes_are_never_conflicts_but_another_clients_are() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    let c = &ROOT_CALLER;
    let stat = write_file(&fs, c, "f", b"one").await;
    let cut = SetAttr {
        size: Some(0),
        ..SetAttr::default()
    };
    fs.setattr(c, stat.ino, cut).await.expect("truncate");
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    fs.setattr(c, stat.ino, chmod).await.expect("chmod");
    let fh = fs.open(c, stat.ino, 1).await.expect("open");
    fs.write(stat.ino, fh, 0, b"two", false)
        .await
        .expect("write");
    fs.release(fh).await.expect("close");
    assert_eq!(fs.conflicts(), 0);
    assert_eq!(body(&store, "f").await.as_deref(), Some(&b"two"[..]));
    // `open(O_TRUNC)` of a file with bytes, in the kernel's order: the open, then a truncation
    // with no handle (a shell's `> f`).
    let fh = fs.open(c, stat.ino, 1).await.expect("open");
    fs.setattr(c, stat.ino, cut).await.expect("truncate");
    fs.write(stat.ino, fh, 0, b"three", false)
        .await
        .expect("write");
    fs.release(fh).await.expect("close");
    assert_eq!(fs.conflicts(), 0);
    assert_eq!(body(&store, "f").await.as_deref(), Some(&b"three"[..]));
    let fh = fs.open(c, stat.ino, 1).await.expect("open");
    fs.write(stat.ino, fh, 5, b"!", false).await.expect("write");
    put(&store, "f", 5).await;
    fs.release(fh).await.expect("close");
    assert_eq!(fs.conflicts(), 1);
    assert_eq!(
        body(&store, "f").await.as_deref(),
        Some(&b"xxxxx"[..]),
        "theirs stays"
    );
}

#[tokio::test]
async fn readdirplus_pages_carry_attributes_read_once_per_entry() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    let fs = Arc::new(fs);
    // More than a kept listing holds, so the lookups' cache cannot answer for the entries.
    for i in 0..=DIR_CACHE_MAX {
        put(&store, &format!("d/large{i:05}"), 1).await;
    }
    put(&store, "d/sub/x", 1).await;
    let d = fs.lookup(&ROOT_CALLER, ROOT, n("d")).await.expect("d").ino;
    let fh = fs.opendir(&ROOT_CALLER, d).await.expect("opendir");
    let heads = store.heads.load(Ordering::SeqCst);
    let (mut offset, mut seen) = (0, Vec::new());
    loop {
        let page = fs
            .readdirplus(&ROOT_CALLER, d, fh, offset, 4096)
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        assert!(
            page.len() < 40,
            "a page holds what fits in 4 KiB: {}",
            page.len()
        );
        offset = last.next;
        for e in page {
            assert!(e.fresh);
            if e.name.starts_with("large") {
                assert_eq!(e.stat.node.size, 1, "{}", e.name);
            }
            if e.name == "sub" {
                assert_eq!(e.stat.node.kind(), Kind::Dir);
            }
            seen.push(e.name);
        }
    }
    assert_eq!(seen.len(), DIR_CACHE_MAX + 4, ". and .. and every entry");
    assert_eq!(
        store.heads.load(Ordering::SeqCst) - heads,
        DIR_CACHE_MAX + 2,
        "one HEAD per entry"
    );
    // The kernel keeps the page's entries for the TTL and calls no lookup for them.
}

#[tokio::test]
async fn a_name_the_store_contradicts_is_mended_in_the_kept_listing() {
    let store = Arc::new(Counted::default());
    let (fs, _staging) = fs_over(store.clone()).await;
    put(&store, "gone", 1).await;
    // Two lookups in the root list it: "taken" absent, "gone" present.
    fs.lookup(&ROOT_CALLER, ROOT, n("x")).await.expect_err("x");
    assert_eq!(fs.listed("", "taken").await, Listed::Absent);
    assert_eq!(fs.listed("", "gone").await, Listed::File(1));
    // Another client makes "taken" and removes "gone" while the listing is fresh.
    put(&store, &format!("taken/{DIR_MARKER}"), 0).await;
    store
        .delete(&ObjectPath::from("gone"))
        .await
        .expect("delete");

    let made = fs.mkdir(&ROOT_CALLER, ROOT, n("taken"), 0o755).await;
    assert!(matches!(made, Err(FsError::Exists)), "{made:?}");
    let found = fs.lookup(&ROOT_CALLER, ROOT, n("taken")).await;
    assert_eq!(found.expect("lookup after EEXIST").node.kind(), Kind::Dir);

    let removed = fs.unlink(&ROOT_CALLER, ROOT, n("gone")).await;
    assert!(matches!(removed, Err(FsError::NotFound)), "{removed:?}");
    assert_eq!(fs.listed("", "gone").await, Listed::Absent);
}

/// A file system listing `store` in pages, and the directory `name` in its root opened.
async fn open_paged(
    store: &Arc<Counted>,
    name: &str,
) -> (Arc<ObjectFs>, tempfile::TempDir, u64, u64) {
    let (fs, staging) = fs_paged(store.clone()).await;
    let d = fs
        .lookup(&ROOT_CALLER, ROOT, n(name))
        .await
        .expect("dir")
        .ino;
    let fh = fs.opendir(&ROOT_CALLER, d).await.expect("opendir");
    (fs, staging, d, fh)
}

/// The names of open directory `fh`: `got` (its first entries), then every call's to the end.
async fn read_from(fs: &Arc<ObjectFs>, d: u64, fh: u64, got: Vec<DirEntry>) -> Vec<String> {
    let mut names: Vec<String> = got.into_iter().map(|e| e.2).collect();
    loop {
        let more = fs.readdir(d, fh, names.len() as u64).await.expect("call");
        if more.is_empty() {
            return names;
        }
        names.extend(more.into_iter().map(|e| e.2));
    }
}

#[tokio::test]
async fn a_directory_is_read_while_its_later_pages_are_listed() {
    let store = Arc::new(Counted::paged(Duration::from_millis(300)));
    for i in 0..35 {
        put(&store, &format!("d/f{i:02}"), 1).await;
    }
    put(&store, "d/sub/x", 1).await;
    let (fs, _staging, d, fh) = open_paged(&store, "d").await;
    let listings = store.listings.load(Ordering::SeqCst);

    let first = fs.readdir(d, fh, 0).await.expect("first call");
    assert_eq!(first.len(), 2 + PAGE_KEYS, ". and .. and the first page");
    assert_eq!(first[2].2, "f00");
    let names = read_from(&fs, d, fh, first).await;
    let mut expected = vec![".".to_owned(), "..".to_owned()];
    expected.extend((0..35).map(|i| format!("f{i:02}")));
    expected.push("sub".into());
    assert_eq!(names, expected, "every entry once, in order");
    assert_eq!(
        store.listings.load(Ordering::SeqCst) - listings,
        4,
        "4 pages"
    );
    // The whole listing is kept for lookups.
    assert_eq!(fs.listed("d", "nope").await, Listed::Absent);
    assert_eq!(store.listings.load(Ordering::SeqCst) - listings, 4);

    // A rewind lists again and sees what came since.
    put(&store, "d/new", 1).await;
    let again = read_from(&fs, d, fh, Vec::new()).await;
    assert!(again.iter().any(|n| n == "new"), "{again:?}");
    assert_eq!(again.len(), names.len() + 1);
    fs.releasedir(fh);
}

#[tokio::test]
async fn closing_a_directory_stops_its_listing() {
    let store = Arc::new(Counted::paged(Duration::from_millis(100)));
    for i in 0..10 * PAGE_KEYS {
        put(&store, &format!("d/f{i:03}"), 1).await;
    }
    let (fs, _staging, d, fh) = open_paged(&store, "d").await;
    let listings = store.listings.load(Ordering::SeqCst);
    let first = fs.readdir(d, fh, 0).await.expect("first call");
    assert_eq!(first.len(), 2 + PAGE_KEYS);
    // A call waiting for a later page when the directory closes fails rather than waits.
    let waiting = tokio::spawn({
        let fs = fs.clone();
        async move { fs.readdir(d, fh, 90).await }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    fs.releasedir(fh);
    let waited = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting call ends")
        .expect("task");
    assert!(matches!(waited, Err(FsError::Store(_))), "{waited:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pages = store.listings.load(Ordering::SeqCst) - listings;
    assert!(
        pages <= 2,
        "{pages} pages listed after the directory was closed"
    );
    // A call on a closed directory lists nothing.
    let closed = fs.readdir(d, fh, 0).await;
    assert!(matches!(closed, Err(FsError::BadHandle)), "{closed:?}");
}
