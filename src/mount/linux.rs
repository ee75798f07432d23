//! The real [`Mounter`]: runs the mount helper as a child process with a deadline, unmounts
//! with `umount2` (falling back to a lazy detach), reads `/proc/self/mountinfo`, and takes
//! `statvfs` on a blocking thread with a deadline so a hung mount never hangs the node plugin.
//!
//! The helper runs in a process group of its own: `mount` runs `mount.s3files`, which runs
//! `mount.nfs4`, and a timeout kills the whole group, not only `mount` (which would leave the
//! helper to finish the mount after the node gave up). efs-proxy starts its own session and is
//! not in the group.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use super::{FsStats, MountEntry, MountError, MountSpec, Mounter, mountinfo};
use crate::process::Children;

/// How the helper is invoked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountHelper {
    pub program: PathBuf,
    /// Arguments before `SOURCE TARGET -o OPTIONS`.
    pub leading_args: Vec<String>,
    /// Extra environment for the helper (the quickstart points it at its emulator).
    pub env: Vec<(String, String)>,
}

impl MountHelper {
    /// `mount -t s3files ...`: the system mount, which runs `/sbin/mount.s3files`.
    pub fn system() -> Self {
        MountHelper {
            program: PathBuf::from("mount"),
            leading_args: vec!["-t".into(), "s3files".into()],
            env: Vec::new(),
        }
    }

    /// A `mount.s3files`-compatible program called directly (the local helper, tests).
    pub fn program(path: impl Into<PathBuf>) -> Self {
        MountHelper {
            program: path.into(),
            leading_args: Vec::new(),
            env: Vec::new(),
        }
    }

    fn name(&self) -> String {
        self.program.display().to_string()
    }

    /// The file `mount -t s3files` would run, for the readiness check.
    fn effective_program(&self) -> PathBuf {
        if self.leading_args.first().map(String::as_str) == Some("-t")
            && self.program == Path::new("mount")
        {
            PathBuf::from("/sbin/mount.s3files")
        } else {
            self.program.clone()
        }
    }
}

/// The Linux mounter.
pub struct LinuxMounter {
    pub helper: MountHelper,
    pub mount_timeout: Duration,
    pub unmount_timeout: Duration,
    pub stat_timeout: Duration,
    /// Where the helper's pid is registered while it runs, so the orphan reaper leaves it.
    pub children: Arc<Children>,
}

fn find_in_path(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// What the helper wrote to stderr. A process it left running (efs-proxy) may hold the pipe
/// open, so the read waits one second at most for the end.
async fn stderr_of(task: tokio::task::JoinHandle<String>) -> String {
    tokio::time::timeout(Duration::from_secs(1), task)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Mounter for LinuxMounter {
    async fn mount(&self, spec: &MountSpec) -> Result<(), MountError> {
        let helper = self.helper.name();
        let mut cmd = tokio::process::Command::new(&self.helper.program);
        cmd.envs(self.helper.env.iter().map(|(k, v)| (k, v)));
        cmd.args(&self.helper.leading_args)
            .arg(&spec.source)
            .arg(&spec.target);
        if !spec.options.is_empty() {
            cmd.arg("-o").arg(spec.options.join(","));
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let (mut child, _registered) =
            self.children.spawn(&mut cmd).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => MountError::HelperMissing {
                    helper: helper.clone(),
                },
                _ => MountError::Io {
                    context: format!("starting {helper}"),
                    source: e,
                },
            })?;
        let mut stderr_pipe = child.stderr.take();
        let stderr_task = tokio::spawn(async move {
            let mut buf = Vec::new();
            if let Some(pipe) = stderr_pipe.as_mut() {
                let _ = pipe.take(64 * 1024).read_to_end(&mut buf).await;
            }
            String::from_utf8_lossy(&buf).trim().to_owned()
        });
        match tokio::time::timeout(self.mount_timeout, child.wait()).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(MountError::HelperFailed {
                helper,
                status: status.to_string(),
                stderr: stderr_of(stderr_task).await,
            }),
            Ok(Err(e)) => Err(MountError::Io {
                context: format!("waiting for {helper}"),
                source: e,
            }),
            Err(_) => {
                // The whole group: mount, mount.s3files and whatever they started in it.
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                let _ = child.kill().await;
                let stderr = stderr_of(stderr_task).await;
                Err(MountError::HelperTimedOut {
                    helper,
                    timeout: self.mount_timeout,
                    stderr,
                })
            }
        }
    }

    async fn unmount(&self, target: &Path) -> Result<(), MountError> {
        let path = target.to_owned();
        let attempt = tokio::task::spawn_blocking(move || umount2(&path, MntFlags::empty()));
        let outcome = tokio::time::timeout(self.unmount_timeout, attempt).await;
        let reason = match outcome {
            Ok(Ok(Ok(()))) => return Ok(()),
            // Not a mount point (any more): nothing to do.
            Ok(Ok(Err(Errno::EINVAL))) | Ok(Ok(Err(Errno::ENOENT))) => return Ok(()),
            Ok(Ok(Err(errno))) => format!("umount failed: {errno}"),
            Ok(Err(join)) => format!("umount thread failed: {join}"),
            Err(_) => format!("umount did not return within {:?}", self.unmount_timeout),
        };
        // A dead FUSE daemon or unreachable server must not pin the pod in Terminating: detach
        // the mount now and let the kernel finish when it can.
        warn!(target = %target.display(), %reason, "detaching the mount lazily");
        let path = target.to_owned();
        match tokio::task::spawn_blocking(move || umount2(&path, MntFlags::MNT_DETACH)).await {
            Ok(Ok(())) | Ok(Err(Errno::EINVAL)) | Ok(Err(Errno::ENOENT)) => {
                info!(target = %target.display(), "detached");
                Ok(())
            }
            Ok(Err(errno)) => Err(MountError::Io {
                context: format!("detaching {} after {reason}", target.display()),
                source: std::io::Error::from(errno),
            }),
            Err(join) => Err(MountError::Io {
                context: format!("detaching {}", target.display()),
                source: std::io::Error::other(join),
            }),
        }
    }

    async fn mounts(&self) -> Result<Vec<MountEntry>, MountError> {
        let text = tokio::fs::read_to_string("/proc/self/mountinfo")
            .await
            .map_err(|e| MountError::Io {
                context: "reading /proc/self/mountinfo".into(),
                source: e,
            })?;
        Ok(mountinfo::parse(&text))
    }

    async fn stats(&self, target: &Path) -> Result<FsStats, MountError> {
        let path = target.to_owned();
        let call = tokio::task::spawn_blocking(move || nix::sys::statvfs::statvfs(&path));
        match tokio::time::timeout(self.stat_timeout, call).await {
            Ok(Ok(Ok(s))) => {
                let frag = s.fragment_size().max(1);
                let total = s.blocks() * frag;
                let available = s.blocks_available() * frag;
                let free = s.blocks_free() * frag;
                Ok(FsStats {
                    total_bytes: total,
                    available_bytes: available,
                    used_bytes: total.saturating_sub(free),
                    total_inodes: s.files(),
                    free_inodes: s.files_free(),
                    used_inodes: (s.files()).saturating_sub(s.files_free()),
                })
            }
            Ok(Ok(Err(
                errno @ (Errno::ENOTCONN
                | Errno::EIO
                | Errno::ESTALE
                | Errno::EHOSTDOWN
                | Errno::ETIMEDOUT),
            ))) => Err(MountError::Broken {
                target: target.to_owned(),
                reason: errno.desc().to_owned(),
            }),
            Ok(Ok(Err(errno))) => Err(MountError::Io {
                context: format!("statfs {}", target.display()),
                source: std::io::Error::from(errno),
            }),
            Ok(Err(join)) => Err(MountError::Io {
                context: format!("statfs {}", target.display()),
                source: std::io::Error::other(join),
            }),
            Err(_) => Err(MountError::Broken {
                target: target.to_owned(),
                reason: format!("statfs did not answer within {:?}", self.stat_timeout),
            }),
        }
    }

    fn helper_available(&self) -> Result<(), String> {
        let program = self.helper.effective_program();
        match find_in_path(&program) {
            Some(_) => Ok(()),
            None => Err(format!(
                "mount helper {} not found; install amazon-efs-utils 3.x or pass --mount-helper",
                program.display()
            )),
        }
    }
}
