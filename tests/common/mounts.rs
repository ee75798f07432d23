//! Mounts made by running the `s3files-csi mount` helper, as the node plugin runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use s3files_csi::mount::mountinfo;

use std::sync::Arc;

use object_store::ObjectStore;
use s3files_csi::emulator::BucketStore;

use super::BIN;
use super::emulator::{RunningEmulator, test_config};
use super::s3server::S3Server;

/// Where an emulator's bucket data lives.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// A local directory (the embedded default).
    Local,
    /// A `moto_server` on loopback.
    Moto,
}

/// An emulator whose bucket `bucket` lives on `backend`, the S3 server if any, and the bucket
/// as other clients see it.
pub async fn emulator_over(
    backend: Backend,
    bucket: &str,
) -> (RunningEmulator, Option<S3Server>, Arc<dyn ObjectStore>) {
    let mut config = test_config();
    let s3 = match backend {
        Backend::Local => None,
        Backend::Moto => {
            let server = S3Server::start().await;
            server.create_bucket(bucket).await;
            config.buckets = BucketStore::S3 {
                endpoint: server.url.clone(),
            };
            Some(server)
        }
    };
    let emu = RunningEmulator::start(config).await;
    let store: Arc<dyn ObjectStore> = match &s3 {
        Some(server) => server.store(bucket),
        None => {
            let dir = emu.buckets.path().join(bucket);
            std::fs::create_dir_all(&dir).expect("bucket dir");
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir).expect("local"))
        }
    };
    (emu, s3, store)
}

pub struct Mounted {
    pub target: PathBuf,
    pub _dir: tempfile::TempDir,
}

impl Mounted {
    /// What the FUSE daemon logged so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("mount.log")).unwrap_or_default()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.target).status();
    }
}

pub fn is_mounted(path: &Path) -> bool {
    let table =
        mountinfo::parse(&std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo"));
    mountinfo::mount_at(&table, path).is_some()
}

/// Mounts access point `ap` of file system `fs` with the helper; `extra` adds options.
pub async fn mount(emu: &RunningEmulator, fs: &str, ap: &str, extra: &str) -> Mounted {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("mnt");
    std::fs::create_dir_all(&target).expect("mkdir");
    let log = dir.path().join("mount.log");
    let options = format!("accesspoint={ap},tls,iam{extra}");
    let log2 = log.clone();
    let fs_owned = fs.to_owned();
    let status = tokio::task::spawn_blocking({
        let env = super::emulator_env(&emu.url);
        let target = target.clone();
        move || {
            Command::new(BIN)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                // object_store logs its retries at info: failures then say what the server did;
                // fuser warns of requests the file system leaves unanswered.
                .env("RUST_LOG", "s3files_csi=debug,object_store=info,fuser=warn")
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
    Mounted { target, _dir: dir }
}
