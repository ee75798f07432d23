//! An in-memory [`Mounter`] with real state: mounts appear in its table, unmounts remove them,
//! and any path can be marked broken or made to fail, so node service tests exercise the same
//! decisions as real mounts without privileges.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{FsStats, MountEntry, MountError, MountSpec, Mounter};

#[derive(Default)]
struct State {
    mounts: BTreeMap<PathBuf, MountSpec>,
    broken: HashSet<PathBuf>,
    fail_next_mount: Option<String>,
    mount_calls: usize,
}

/// The fake mounter.
#[derive(Default)]
pub struct FakeMounter {
    state: Mutex<State>,
}

impl FakeMounter {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the mount at `target` stop answering, like a dead FUSE daemon.
    pub fn break_mount(&self, target: &Path) {
        self.state().broken.insert(target.to_owned());
    }

    /// The next mount fails with this helper stderr.
    pub fn fail_next_mount(&self, stderr: &str) {
        self.state().fail_next_mount = Some(stderr.to_owned());
    }

    /// How many times the helper ran.
    pub fn mount_calls(&self) -> usize {
        self.state().mount_calls
    }

    /// What is mounted at `target`.
    pub fn mounted(&self, target: &Path) -> Option<MountSpec> {
        self.state().mounts.get(target).cloned()
    }
}

#[tonic::async_trait]
impl Mounter for FakeMounter {
    async fn mount(&self, spec: &MountSpec) -> Result<(), MountError> {
        let mut state = self.state();
        state.mount_calls += 1;
        if let Some(stderr) = state.fail_next_mount.take() {
            return Err(MountError::HelperFailed {
                helper: "fake".into(),
                status: "exit status: 32".into(),
                stderr,
            });
        }
        state.mounts.insert(spec.target.clone(), spec.clone());
        Ok(())
    }

    async fn unmount(&self, target: &Path) -> Result<(), MountError> {
        let mut state = self.state();
        state.mounts.remove(target);
        state.broken.remove(target);
        Ok(())
    }

    async fn mounts(&self) -> Result<Vec<MountEntry>, MountError> {
        Ok(self
            .state()
            .mounts
            .values()
            .enumerate()
            .map(|(i, spec)| MountEntry {
                id: 100 + i as u32,
                parent_id: 1,
                major_minor: "0:99".into(),
                root: "/".into(),
                mount_point: spec.target.clone(),
                options: if spec.options.iter().any(|o| o == "ro") {
                    vec!["ro".into()]
                } else {
                    vec!["rw".into()]
                },
                optional: vec![],
                fs_type: "nfs4".into(),
                source: spec.source.clone(),
                super_options: spec.options.clone(),
            })
            .collect())
    }

    async fn stats(&self, target: &Path) -> Result<FsStats, MountError> {
        let state = self.state();
        if state.broken.contains(target) {
            return Err(MountError::Broken {
                target: target.to_owned(),
                reason: "transport endpoint is not connected".into(),
            });
        }
        if !state.mounts.contains_key(target) {
            return Err(MountError::Io {
                context: format!("statfs {}", target.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        Ok(FsStats {
            total_bytes: 1 << 53,
            available_bytes: (1 << 53) - 4096,
            used_bytes: 4096,
            total_inodes: 1 << 32,
            free_inodes: (1 << 32) - 1,
            used_inodes: 1,
        })
    }

    fn helper_available(&self) -> Result<(), String> {
        Ok(())
    }
}
