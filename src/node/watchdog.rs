//! Supervision of `amazon-efs-mount-watchdog`, which only the node plugin can run in its
//! container.
//!
//! efs-utils starts its watchdog through the init system, and in a container whose PID 1 is
//! this plugin it cannot (it logs `unrecognized init system` and goes on without it). The
//! watchdog is what restarts an efs-proxy that died (after a plugin restart or an upgrade,
//! without it hard NFS mounts hang), stops the efs-proxy of an unmounted volume and frees its
//! port, and renews the 3-hour TLS client certificate. So the plugin runs it as a child: started
//! before the plugin serves, restarted with a backoff whenever it exits, its output logged line
//! by line, and stopped (SIGTERM, then SIGKILL after a grace) once the plugin has stopped
//! serving.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::process::Children;

/// How the watchdog is run.
#[derive(Clone, Debug)]
pub struct WatchdogConfig {
    pub program: PathBuf,
    /// First delay before a restart; doubled after each quick exit.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A run at least this long resets the backoff.
    pub healthy_after: Duration,
    /// Time between SIGTERM and SIGKILL when stopping.
    pub stop_grace: Duration,
}

impl WatchdogConfig {
    pub fn new(program: PathBuf) -> Self {
        WatchdogConfig {
            program,
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            healthy_after: Duration::from_secs(60),
            stop_grace: Duration::from_secs(10),
        }
    }
}

/// A running supervisor; [`Watchdog::stop`] ends it and the watchdog.
pub struct Watchdog {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Watchdog {
    /// Starts the watchdog and keeps it running until [`Watchdog::stop`].
    pub fn start(config: WatchdogConfig, children: Arc<Children>) -> Watchdog {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(supervise(config, children, stopped));
        Watchdog { stop, task }
    }

    /// Stops the watchdog (SIGTERM, SIGKILL after the grace) and waits for it to exit.
    /// Stopping twice, or after the watchdog could never start, is fine.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            warn!(error = %e, "watchdog supervisor failed");
        }
    }
}

async fn supervise(
    config: WatchdogConfig,
    children: Arc<Children>,
    mut stop: watch::Receiver<bool>,
) {
    let name = config.program.display().to_string();
    let mut backoff = config.min_backoff;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut cmd = tokio::process::Command::new(&config.program);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let started = Instant::now();
        match children.spawn(&mut cmd) {
            Ok((mut child, registered)) => {
                let pid = child.id();
                info!(watchdog = %name, pid, "started the efs-utils watchdog");
                // The log tasks end at EOF, which can come long after the watchdog exits: the
                // efs-proxy processes it restarts may inherit its pipes. Nothing waits for them.
                if let Some(p) = child.stdout.take() {
                    tokio::spawn(log_lines(p, name.clone()));
                }
                if let Some(p) = child.stderr.take() {
                    tokio::spawn(log_lines(p, name.clone()));
                }
                let status = tokio::select! {
                    status = child.wait() => Some(status),
                    _ = stop.wait_for(|s| *s) => None,
                };
                let status = match status {
                    Some(status) => status,
                    None => {
                        terminate(&mut child, pid, config.stop_grace).await;
                        info!(watchdog = %name, "stopped the efs-utils watchdog");
                        drop(registered);
                        return;
                    }
                };
                drop(registered);
                match status {
                    Ok(s) => {
                        warn!(watchdog = %name, status = %s, "the efs-utils watchdog exited; restarting it")
                    }
                    Err(e) => {
                        warn!(watchdog = %name, error = %e, "lost the efs-utils watchdog; restarting it")
                    }
                }
            }
            Err(e) => {
                warn!(watchdog = %name, error = %e, "cannot start the efs-utils watchdog; retrying")
            }
        }
        if started.elapsed() >= config.healthy_after {
            backoff = config.min_backoff;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(config.max_backoff);
    }
}

/// SIGTERM, then SIGKILL once `grace` has passed; always waits for the exit.
async fn terminate(child: &mut tokio::process::Child, pid: Option<u32>, grace: Duration) {
    if let Some(pid) = pid {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        warn!(pid, "the efs-utils watchdog ignored SIGTERM; killing it");
        let _ = child.kill().await;
    }
}

async fn log_lines(pipe: impl tokio::io::AsyncRead + Unpin, name: String) {
    let mut lines = BufReader::new(pipe).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        info!(watchdog = %name, "{line}");
    }
}
