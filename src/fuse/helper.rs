//! `s3files-csi mount`: a `mount.s3files`-compatible helper that serves an access point of an
//! emulated (or real) S3 Files file system over FUSE.
//!
//! `s3files-csi mount <fs-id>[:/path] <target> -o accesspoint=<fsap-id>[,ro][,...]` asks the
//! S3 Files API (`AWS_ENDPOINT_URL_S3FILES`) for the file system's bucket and prefix and the
//! access point's root directory and POSIX user, finds where bucket data lives (the emulator's
//! `/_emulator/storage`, or `--storage`), then serves that directory at `target`. Without
//! `--foreground` it starts itself in the background and returns once the mount is in the mount
//! table, as mount helpers do. Options of the real helper that do not apply locally (`tls`,
//! `iam`, `azid`, `region`, `mounttargetip`...) are accepted and ignored.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::access::{Groups, Identity, User};
use super::fs::{DIR_MARKER, ObjectFs};
use super::kernel::Kernel;
use super::objects::{Objects, Posix, S_IFDIR};

/// Read-ahead memory per mount.
const PREFETCH_BUDGET: u64 = 256 << 20;
const FUSE_THREADS: usize = 8;
/// Kernel read-ahead asked for on our mount (`read_ahead_kb` of its backing device). The kernel
/// gives a FUSE mount 128 KiB whatever the file system's `max_readahead` says, and copies the
/// value into each file when it is opened. Set before the first open, sequential reads arrive as
/// 1 MiB requests instead of 128 KiB (strace of the daemon's replies, 6.18 kernel); files opened
/// before it was set keep 128 KiB.
const KERNEL_READ_AHEAD_KIB: u32 = 1024;
use crate::cloud::aws::{AwsS3Files, ClientOptions};
use crate::cloud::{LifeCycle, S3Files};
use crate::data::{DataLocation, ObjectData, bucket_name};
use crate::mount::mountinfo;

/// What the helper was asked to mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountRequest {
    pub file_system_id: String,
    pub subpath: Option<String>,
    pub target: PathBuf,
    pub access_point: Option<String>,
    pub read_only: bool,
}

/// Parses `SOURCE TARGET [-o OPTIONS]` as `mount.s3files` takes them.
pub fn parse(source: &str, target: &Path, options: Option<&str>) -> anyhow::Result<MountRequest> {
    let (fs, subpath) = match source.split_once(':') {
        Some((fs, path)) => (
            fs,
            crate::volume::normalise_subpath(path).map_err(anyhow::Error::msg)?,
        ),
        None => (source, None),
    };
    if !crate::volume::is_file_system_id(fs) {
        bail!("{source:?} is not <fs-id>[:/path] (fs- and 17 to 40 hex digits)");
    }
    let mut request = MountRequest {
        file_system_id: fs.to_owned(),
        subpath,
        target: target.to_owned(),
        access_point: None,
        read_only: false,
    };
    for option in options
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
    {
        match option.split_once('=') {
            Some(("accesspoint", ap)) => {
                crate::mount::options::check_access_point_id(ap).map_err(anyhow::Error::msg)?;
                request.access_point = Some(ap.to_owned());
            }
            None if option == "ro" => request.read_only = true,
            None if option == "rw" => request.read_only = false,
            _ => {}
        }
    }
    Ok(request)
}

/// Asks the emulator where bucket data lives (`GET /_emulator/storage`).
async fn emulator_storage(endpoint: &str) -> anyhow::Result<DataLocation> {
    let (status, body) = crate::plain_http::request(endpoint, "GET", "/_emulator/storage", "")
        .await
        .with_context(|| format!("asking {endpoint} where bucket data lives"))?;
    if status != 200 {
        bail!(
            "{endpoint} did not say where bucket data lives (is it the s3files-csi emulator?); pass --storage"
        );
    }
    let value: serde_json::Value =
        serde_json::from_str(body.trim()).context("reading /_emulator/storage")?;
    match value["kind"].as_str() {
        Some("local") => Ok(DataLocation::Local {
            root: PathBuf::from(value["root"].as_str().unwrap_or("/")),
        }),
        Some("s3") => Ok(DataLocation::S3 {
            endpoint: value["endpoint"].as_str().map(str::to_owned),
        }),
        _ => bail!("unexpected storage answer {body}"),
    }
}

/// Mounts in the foreground: returns when the file system is unmounted.
pub async fn serve(request: MountRequest, storage: Option<String>) -> anyhow::Result<()> {
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3FILES").ok();
    let cloud = AwsS3Files::from_env(&ClientOptions {
        rate_limit: None,
        ..ClientOptions::default()
    })
    .await;
    let fs = cloud
        .get_file_system(&request.file_system_id)
        .await
        .context("looking up the file system")?;
    if fs.status != LifeCycle::Available {
        bail!("file system {} is {}, not available", fs.id, fs.status);
    }
    // With an access point, its POSIX user is who every operation acts as, and its creation
    // permissions shape the root directory; without one, callers act as themselves.
    let (root_path, user, creation) = match &request.access_point {
        Some(ap_id) => {
            let ap = cloud
                .get_access_point(ap_id)
                .await
                .context("looking up the access point")?;
            if ap.file_system_id != fs.id {
                bail!(
                    "access point {ap_id} belongs to {}, not {}",
                    ap.file_system_id,
                    fs.id
                );
            }
            if ap.status != LifeCycle::Available {
                bail!("access point {ap_id} is {}, not available", ap.status);
            }
            let user = ap.posix_user.as_ref().map(|u| User {
                uid: u.uid,
                gid: u.gid,
                groups: Groups::Listed(u.secondary_gids.clone()),
            });
            let creation = ap.creation_permissions.as_ref().map(|c| Posix {
                uid: c.owner_uid,
                gid: c.owner_gid,
                mode: S_IFDIR | u32::from_str_radix(&c.permissions, 8).unwrap_or(0o755) & 0o7777,
                ..Posix::default()
            });
            (ap.root_path.unwrap_or_else(|| "/".into()), user, creation)
        }
        None => ("/".to_owned(), None, None),
    };
    let identity = Identity {
        default_uid: user.as_ref().map(|u| u.uid).unwrap_or(0),
        default_gid: user.as_ref().map(|u| u.gid).unwrap_or(0),
        user,
    };
    let location = match (storage, endpoint) {
        (Some(spec), _) => DataLocation::parse(&spec).map_err(anyhow::Error::msg)?,
        (None, Some(endpoint)) => emulator_storage(&endpoint).await?,
        (None, None) => DataLocation::S3 { endpoint: None },
    };
    let data = ObjectData::new(location);
    let bucket = bucket_name(&fs.bucket)?;
    let objects = Objects::new(
        data.store(bucket)?,
        data.local_dir(bucket),
        data.paginated(bucket)?,
    )?;
    let mut root = format!("{}{}", fs.prefix, root_path.trim_start_matches('/'));
    if let Some(sub) = &request.subpath {
        root = format!(
            "{}/{}",
            root.trim_end_matches('/'),
            sub.trim_start_matches('/')
        );
    }
    let root = root.trim_matches('/').to_owned();
    // The access point's root directory is created on first use with its creation
    // permissions, as S3 Files does.
    if !root.is_empty() {
        use futures_util::StreamExt;
        let base = object_store::path::Path::from(root.as_str());
        let mut listing = objects.store().list(Some(&base));
        if listing.next().await.is_none() {
            let posix = creation.unwrap_or(Posix {
                uid: identity.default_uid,
                gid: identity.default_gid,
                mode: S_IFDIR | 0o755,
                ..Posix::default()
            });
            objects
                .put(
                    &base.clone().join(DIR_MARKER),
                    object_store::PutPayload::default(),
                    posix,
                )
                .await
                .context("creating the root directory")?;
        }
    }
    let staging = tempfile::tempdir().context("staging directory")?;
    let filesystem = Kernel::new(
        ObjectFs::new(
            objects,
            &root,
            identity,
            staging.path(),
            PREFETCH_BUDGET,
            lost_found_prefix(&fs.prefix, &fs.id),
        )
        .await,
        tokio::runtime::Handle::current(),
    );
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("s3files:{}", request.file_system_id)),
        fuser::MountOption::Subtype("s3files".into()),
        if request.read_only {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        },
    ];
    config.acl = fuser::SessionACL::All;
    // Requests block on the network: several threads keep one slow request from stalling the
    // others (the file system's tables are shared behind locks).
    config.n_threads = Some(FUSE_THREADS);
    let target = request.target.clone();
    tracing::info!(target = %target.display(), %root, "serving");
    let tune_target = target.clone();
    std::thread::spawn(move || tune_read_ahead(&tune_target));
    tokio::task::spawn_blocking(move || fuser::mount(filesystem, &target, &config))
        .await?
        .with_context(|| format!("mounting at {}", request.target.display()))?;
    drop(staging);
    Ok(())
}

/// Where S3 Files keeps a file system's conflicting versions: at its root, whatever the
/// access point's root.
fn lost_found_prefix(fs_prefix: &str, fs_id: &str) -> object_store::path::Path {
    let raw = format!("{fs_prefix}.s3files-lost+found-{fs_id}");
    object_store::path::Path::parse(&raw).unwrap_or_else(|_| object_store::path::Path::from(raw))
}

/// Raises the kernel read-ahead of the mount at `target` once it appears (see
/// [`KERNEL_READ_AHEAD_KIB`]). Best effort: without a writable /sys the mount works, with
/// smaller reads.
fn tune_read_ahead(target: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let device = loop {
        let table =
            mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
        if let Some(entry) = mountinfo::mount_at(&table, target)
            && entry.fs_type.starts_with("fuse")
        {
            break entry.major_minor.clone();
        }
        if Instant::now() >= deadline {
            tracing::warn!(target = %target.display(), "mount did not appear; read-ahead not tuned");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    set_read_ahead(&device, target);
}

/// Writes [`KERNEL_READ_AHEAD_KIB`] to the read-ahead knob of the device `major:minor` mounted
/// at `target`.
fn set_read_ahead(device: &str, target: &Path) {
    // The mount shows before the FUSE handshake is done, and the handshake's reply lowers the
    // knob to what the daemon accepted (128 KiB). A stat waits for the handshake: set it after.
    let _ = std::fs::metadata(target);
    let knob = format!("/sys/class/bdi/{device}/read_ahead_kb");
    match std::fs::write(&knob, KERNEL_READ_AHEAD_KIB.to_string()) {
        Ok(()) => tracing::debug!(%knob, kib = KERNEL_READ_AHEAD_KIB, "kernel read-ahead set"),
        Err(e) => tracing::warn!(%knob, error = %e, "kernel read-ahead left at its default"),
    }
}

/// glibc malloc settings for the daemon, unless the environment sets them. With glibc's
/// default the mmap threshold climbs after the first large frees, and buffers of every size are
/// then carved from arenas that keep their pages (peak of a 1 GiB write 120-129 MiB, of the
/// read 106-121 MiB, `cargo bench --bench dataplane -- --server s3s-fs`). Fixed at 5 MiB, the
/// 1 MiB buffers of FUSE reads and writes and the 4 MiB segments of read-ahead come from the
/// heap and are reused, and the 8 MiB part buffers (which `fuse::upload` reuses itself) go back
/// to the kernel when freed: peaks 82 and 81-90 MiB. Each buffer above the threshold is a fresh
/// mapping whose pages the kernel zeroes; the daemon's CPU per GiB written and read, at 1 MiB:
/// 2.0 and 3.0 s; at 2 MiB: 1.7-1.8 and 2.5-3.3 s; at 5 MiB: 1.6-1.7 and 2.4-2.5 s, with the
/// same peaks within 10 MiB. (Fewer arenas, `MALLOC_ARENA_MAX=2`, saved no memory and slowed
/// small files by about a tenth.)
const MALLOC_TUNING: [(&str, &str); 1] = [("MALLOC_MMAP_THRESHOLD_", "5242880")];

/// What a daemon that exited wrote to its log from byte `from`: its `error:` line when it
/// wrote one, else its last lines.
fn why_it_exited(log: &[u8], from: u64) -> String {
    let ours = log.get(from as usize..).unwrap_or_default();
    let text = String::from_utf8_lossy(ours);
    if let Some(line) = text.lines().rev().find(|l| l.starts_with("error: ")) {
        return line.trim_start_matches("error: ").to_owned();
    }
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    if tail.is_empty() {
        return "it wrote nothing to its log".to_owned();
    }
    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Starts `serve` in a background process and returns once `target` is mounted.
pub async fn daemonize(args: &[String], target: &Path, log: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding this executable")?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    // Other mounts share the log: a failure shows only what this daemon wrote.
    let ours_from = log_file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut command = std::process::Command::new(exe);
    for (name, value) in MALLOC_TUNING {
        if std::env::var_os(name).is_none() {
            command.env(name, value);
        }
    }
    let mut child = command
        .args(args)
        .arg("--foreground")
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .context("starting the mount daemon")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let table =
            mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default());
        if let Some(entry) = mountinfo::mount_at(&table, target) {
            // The kernel copies the read-ahead size into each file as it is opened: set it
            // before anyone can open a file (the daemon's own tuning may come a moment later).
            set_read_ahead(&entry.major_minor, target);
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "the mount daemon exited ({status}): {}",
                why_it_exited(&std::fs::read(log).unwrap_or_default(), ours_from)
            );
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            // A mount that appeared as the daemon was killed has nobody serving it: detach it
            // rather than leave a target that answers ENOTCONN.
            let table = mountinfo::parse(
                &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            );
            if mountinfo::mount_at(&table, target).is_some() {
                let _ = nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH);
            }
            bail!("{} was not mounted within 30 s", target.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_arguments_parse_like_mount_s3files() {
        let r = parse(
            "fs-0123456789abcdef0:/data/x",
            Path::new("/mnt/t"),
            Some("tls,accesspoint=fsap-0123456789abcdef1,ro,azid=use1-az1"),
        )
        .expect("parses");
        assert_eq!(r.file_system_id, "fs-0123456789abcdef0");
        assert_eq!(r.subpath.as_deref(), Some("/data/x"));
        assert_eq!(r.access_point.as_deref(), Some("fsap-0123456789abcdef1"));
        assert!(r.read_only);
        assert!(parse("nope", Path::new("/mnt"), None).is_err());
        for bad in [
            "accesspoint=",
            "accesspoint=fsap-1",
            "tls,accesspoint=ap-0123456789abcdef1",
        ] {
            let e = parse("fs-0123456789abcdef0", Path::new("/mnt"), Some(bad)).expect_err(bad);
            assert!(
                e.to_string().contains("not an access point id"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_failed_daemon_is_explained_by_its_own_log_lines() {
        let log = b"old WARN from another mount\nerror: stale\nINFO starting\nerror: the bucket is gone\n";
        let from = b"old WARN from another mount\nerror: stale\n".len() as u64;
        assert_eq!(why_it_exited(log, from), "the bucket is gone");
        let log = b"old line\nline 1\nline 2\n";
        assert_eq!(why_it_exited(log, 9), "line 1 | line 2");
        assert_eq!(
            why_it_exited(log, log.len() as u64),
            "it wrote nothing to its log"
        );
        assert_eq!(why_it_exited(b"", 100), "it wrote nothing to its log");
    }
}
