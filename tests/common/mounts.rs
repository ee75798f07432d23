//! Mounts made by running the `s3files-csi mount` helper, as the node plugin runs it.

use std::path::{Path, PathBuf};
use std::process::Command;

use s3files_csi::mount::mountinfo;

use super::BIN;
use super::emulator::RunningEmulator;

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
